//! The Exchange example on real API servers, shared by the end-to-end tests and the demo:
//! the sites with their kubeconfig Secrets, the example's objects renamed into one
//! namespace, the primary site's disks and VMs, the site simulator, a webhook receiver
//! that checks signatures, and `coldsite-controller` as a child process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::ControlPlane;
use crate::manifests::{apply, install_crds, read_documents, repo_root};
use crate::simulator::{SimConfig, Simulator, SimulatorHandle};

/// The key the example's webhook is signed with in tests and the demo.
pub const HMAC_KEY: &str = "e2e-webhook-key-0123456789";

/// Where each role runs. The management cluster may share a server with a site.
pub struct Topology<'a> {
    pub management: &'a ControlPlane,
    pub primary: &'a ControlPlane,
    pub recovery: &'a ControlPlane,
}

/// One webhook call as the receiver saw it.
#[derive(Clone, Debug)]
pub struct WebhookCall {
    pub idempotency_key: String,
    pub body: Value,
    pub signature_valid: bool,
}

/// A webhook receiver on loopback that verifies a call as the README tells receivers to:
/// the HMAC-SHA256 of `v1:<timestamp>:<idempotency key>:<body>` and a timestamp at most 5
/// minutes old. It records each call and answers 401 to a bad or stale signature.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<WebhookCall>>>,
}

impl WebhookReceiver {
    pub async fn start(key: &'static str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls: Arc<Mutex<Vec<WebhookCall>>> = Arc::default();
        let seen = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(receive(req, key, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, calls })
    }

    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

async fn receive(req: Request<Incoming>, key: &str, seen: &Mutex<Vec<WebhookCall>>) -> Response<Full<Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (signature, idempotency_key, timestamp) = (
        header("x-coldsite-signature"),
        header("x-coldsite-idempotency-key").unwrap_or_default(),
        header("x-coldsite-timestamp").unwrap_or_default(),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 300);
    let valid = fresh
        && Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map(|mut mac| {
                mac.update(format!("v1:{timestamp}:{idempotency_key}:").as_bytes());
                mac.update(&body);
                signature.as_deref() == Some(format!("v1={}", hex::encode(mac.finalize().into_bytes())).as_str())
            })
            .unwrap_or(false);
    if let Ok(mut calls) = seen.lock() {
        calls.push(WebhookCall {
            idempotency_key,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            signature_valid: valid,
        });
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    response
}

/// An API for a kind the tests have no Rust type for.
pub fn dynamic(client: &Client, ns: &str, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub fn virtual_machines(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

pub fn volume_snapshots(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}

/// A site's VolSync ReplicationSources in `ns`.
pub fn replication_sources(c: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        c,
        ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationSource",
        "replicationsources",
    )
}

/// A site's VolSync ReplicationDestinations in `ns`.
pub fn replication_destinations(c: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        c,
        ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationDestination",
        "replicationdestinations",
    )
}

pub fn virtual_machine_instances(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}

/// The example's objects, renamed into `ns` and the sites `hq` and `dr`: Site kubeconfig
/// Secrets in `ns`, the webhook pointed at `hook`, and readiness without network probes,
/// since simulated VMs have no reachable addresses.
pub fn example_docs(ns: &str, hq: &str, dr: &str, hook: SocketAddr) -> Result<Vec<Value>> {
    let dir = repo_root().join("examples/exchange");
    let mut out = Vec::new();
    for file in [
        "00-sites.yaml",
        "10-network-mapping.yaml",
        "20-protected-vms.yaml",
        "30-recovery-plan.yaml",
        "40-webhook-secret.yaml",
    ] {
        for d in read_documents(&dir.join(file))? {
            let text = serde_json::to_string(&d)?
                .replace("\"contoso-hq\"", &format!("\"{hq}\""))
                .replace("\"contoso-dr\"", &format!("\"{dr}\""));
            let mut d: Value = serde_json::from_str(&text)?;
            match d["kind"].as_str() {
                Some("Site") => {
                    let name = d["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                    d["spec"]["cluster"]["kubeconfigSecretRef"] =
                        json!({"namespace": ns, "name": format!("{name}-kubeconfig"), "key": "kubeconfig"});
                    if let Some(spec) = d["spec"].as_object_mut() {
                        spec.remove("storage");
                    }
                }
                Some("RecoveryPlan") => {
                    for g in d["spec"]["groups"].as_array_mut().into_iter().flatten() {
                        if let Some(r) = g["readiness"].as_object_mut() {
                            r.remove("probes");
                        }
                        for a in g["post"].as_array_mut().into_iter().flatten() {
                            if a["script"]["webhook"].is_object() {
                                a["script"]["webhook"]["url"] = json!(format!("http://{hook}/mount"));
                            }
                        }
                    }
                    if let Some(spec) = d["spec"].as_object_mut() {
                        spec.remove("drill");
                    }
                }
                Some("Secret") => d["stringData"]["hmac-key"] = json!(HMAC_KEY),
                _ => {}
            }
            out.push(d);
        }
    }
    Ok(out)
}

/// The Exchange example, set up and protected by nobody yet: start a controller next.
pub struct Scenario {
    pub management: Client,
    pub primary: Client,
    pub recovery: Client,
    pub ns: String,
    pub test_ns: String,
    pub hq: String,
    pub dr: String,
    pub webhook: WebhookReceiver,
    pub simulator: SimulatorHandle,
}

impl Scenario {
    /// The namespace coldsite makes at each site for the scripts of the plan's namespace.
    pub fn scripts_ns(&self) -> String {
        coldsite_engine::names::scripts_namespace(&self.ns)
    }

    pub async fn set_up(top: &Topology<'_>, prefix: &str) -> Result<Self> {
        install_crds(top.management).await?;
        let management = top.management.client().await?;
        let (primary, recovery) = (top.primary.client().await?, top.recovery.client().await?);
        tokio::try_join!(top.primary.ensure_site(), top.recovery.ensure_site())?;
        let ns = top.management.create_namespace(prefix).await?;
        let test_ns = coldsite_engine::names::test_namespace(&ns);
        for client in [&management, &primary, &recovery] {
            for name in [&ns, &test_ns] {
                apply(
                    client,
                    &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
                    name,
                )
                .await??;
            }
        }
        let (hq, dr) = (format!("hq-{ns}"), format!("dr-{ns}"));
        for (site, cp) in [(&hq, top.primary), (&dr, top.recovery)] {
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{site}-kubeconfig")},
                                "stringData": {"kubeconfig": cp.kubeconfig_yaml()}});
            apply(&management, &secret, &ns).await??;
        }
        for vm in VMS {
            for disk in DISKS {
                let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("{vm}-{disk}")},
                                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}});
                apply(&primary, &pvc, &ns).await??;
            }
        }
        for vm in read_documents(&repo_root().join("examples/exchange/primary-site/virtual-machines.yaml"))? {
            apply(&primary, &vm, &ns).await??;
        }
        let mut sites = vec![top.primary.sim_site(&hq).await?, top.recovery.sim_site(&dr).await?];
        let own_server = |cp: &ControlPlane| cp.kubeconfig_path() != top.management.kubeconfig_path();
        if own_server(top.primary) && own_server(top.recovery) {
            sites.push(top.management.sim_management(&format!("management-{ns}")).await?);
        }
        let simulator = Simulator::start(
            sites,
            SimConfig::default().with_namespaces([
                ns.clone(),
                test_ns.clone(),
                coldsite_engine::names::scripts_namespace(&ns),
            ]),
        );
        let webhook = WebhookReceiver::start(HMAC_KEY).await?;
        for d in example_docs(&ns, &hq, &dr, webhook.addr)? {
            apply(&management, &d, &ns)
                .await?
                .with_context(|| format!("applying {}", d["metadata"]["name"]))?;
        }
        Ok(Self {
            management,
            primary,
            recovery,
            ns,
            test_ns,
            hq,
            dr,
            webhook,
            simulator,
        })
    }
}

/// The example's VMs and their disks.
pub const VMS: [&str; 3] = ["dc01", "exch-mbx01", "exch-cas01"];
const DISKS: [&str; 2] = ["system", "data"];

impl Scenario {
    /// Sets every ProtectedVM's RPO (the sync schedule follows: `2m` syncs every minute).
    pub async fn set_rpo(&self, rpo: &str) -> Result<()> {
        self.set_replication(json!({ "rpo": rpo })).await
    }

    /// Merges `replication` into every example VM's `spec.replication`.
    pub async fn set_replication(&self, replication: Value) -> Result<()> {
        let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(self.management.clone(), &self.ns);
        for vm in VMS {
            let patch = json!({"spec": {"replication": replication}});
            pvms.patch(vm, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                .await
                .with_context(|| format!("setting the replication of {vm}"))?;
        }
        Ok(())
    }

    /// A VM's disk snapshots at `site`, read from the storage: how many are marked
    /// app-consistent, and how many crash-consistent ones hold an image cut while the guest
    /// ran. Fails if one marked app-consistent holds an image cut while the guest was not
    /// frozen. (A crash-consistent point may hold a frozen image on some disks: a sync whose
    /// disks were not all cut inside one freeze.)
    pub async fn points_by_consistency(&self, site: &str, vm: &str) -> Result<(usize, usize)> {
        let client = if site == self.dr { &self.recovery } else { &self.primary };
        let snapshots = crate::simulator::resources::VOLUME_SNAPSHOT.namespaced(client.clone(), &self.ns);
        let list = snapshots
            .list(&kube::api::ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}")))
            .await?;
        let (mut app, mut crash) = (0, 0);
        for snap in &list.items {
            let name = snap.metadata.name.clone().unwrap_or_default();
            let marked = kube::ResourceExt::annotations(snap)
                .get("coldsite.io/app-consistent")
                .map(String::as_str)
                == Some("true");
            let data = self.simulator.read_snapshot(site, &self.ns, &name).await?;
            anyhow::ensure!(
                data.quiesced || !marked,
                "point {name} of {vm} at {site} is marked app-consistent, but its image was cut while the guest ran"
            );
            if marked {
                app += 1;
            } else if !data.quiesced {
                crash += 1;
            }
        }
        Ok((app, crash))
    }

    /// A guest write to every disk of each example VM running at `site`; the write ids by VM.
    pub async fn write_vms(&self, site: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let mut writes = std::collections::BTreeMap::new();
        for vm in VMS {
            writes.insert(vm.to_owned(), self.simulator.guest_write(site, &self.ns, vm).await?);
        }
        Ok(writes)
    }

    /// Fails unless each VM's disks at `site` hold its write (or, with `present: false`, do
    /// not).
    pub async fn disks_hold(
        &self,
        site: &str,
        writes: &std::collections::BTreeMap<String, String>,
        present: bool,
    ) -> Result<()> {
        for (vm, write) in writes {
            for disk in DISKS {
                let claim = format!("{vm}-{disk}");
                let data = self
                    .simulator
                    .read_disk(site, &self.ns, &claim)
                    .await?
                    .with_context(|| format!("{claim} is not bound at {site}"))?;
                anyhow::ensure!(
                    data.contains(write) == present,
                    "{claim} at {site} {} write {write}: it holds {:?}",
                    if present { "lacks" } else { "holds" },
                    data.writes
                );
            }
        }
        Ok(())
    }

    /// Whether each VM's newest recovery point at `site` holds its write in `writes`, on every
    /// disk: a point's time says when its sync ended, not when its data was taken.
    pub async fn newest_points_hold(
        &self,
        site: &str,
        writes: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool> {
        let (client, _) = self.site_of(site)?;
        for (vm, write) in writes {
            for disk in DISKS {
                let selector = format!("coldsite.io/protected-vm={vm},coldsite.io/disk={vm}-{disk}");
                let points = volume_snapshots(client, &self.ns)
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await?;
                let newest = points
                    .items
                    .iter()
                    .filter_map(|p| {
                        let t = p.metadata.annotations.as_ref()?.get("coldsite.io/recovery-point")?;
                        Some((t.clone(), p.metadata.name.clone()?))
                    })
                    .max();
                let Some((_, name)) = newest else {
                    return Ok(false);
                };
                if !self
                    .simulator
                    .read_snapshot(site, &self.ns, &name)
                    .await?
                    .contains(write)
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The site client and name for a site name in status.
    fn site_of(&self, name: &str) -> Result<(&Client, &str)> {
        if name == self.hq {
            Ok((&self.primary, &self.hq))
        } else if name == self.dr {
            Ok((&self.recovery, &self.dr))
        } else {
            anyhow::bail!("unknown site {name}")
        }
    }

    /// Status is the truth: checks each ProtectedVM's active site and replication direction
    /// against what the sites show. Its VM never runs at the other site, and runs at the
    /// active one when `running`; replication sources sit at the active site and
    /// destinations at the other while it replicates, and no destination is at the active
    /// site while it is paused.
    pub async fn check_truth(&self, running: bool) -> Result<()> {
        for vm in VMS {
            self.check_vm_truth(vm, Some(running)).await?;
        }
        Ok(())
    }

    /// [`Self::check_truth`] for one VM; `running: None` leaves open whether it runs at its
    /// active site.
    pub async fn check_vm_truth(&self, vm: &str, running: Option<bool>) -> Result<()> {
        use coldsite_api::protected_vm::ReplicationDirection as D;
        let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(self.management.clone(), &self.ns);
        let st = pvms.get(vm).await?.status.unwrap_or_default();
        let active = st.active_site.clone().context("no activeSite")?;
        let other = if active == self.hq {
            self.dr.clone()
        } else {
            self.hq.clone()
        };
        let (here, _) = self.site_of(&active)?;
        let (there, _) = self.site_of(&other)?;
        anyhow::ensure!(
            !vm_runs(there, &self.ns, vm).await?,
            "{vm} runs at {other}, but status says {active}"
        );
        if let Some(running) = running {
            anyhow::ensure!(
                vm_runs(here, &self.ns, vm).await? == running,
                "{vm} at {active}: running is not {running} ({:?})",
                st.phase
            );
        }
        let (sources_here, dests_here, dests_there) = (
            replication_objects(replication_sources(here, &self.ns), vm).await?,
            replication_objects(replication_destinations(here, &self.ns), vm).await?,
            replication_objects(replication_destinations(there, &self.ns), vm).await?,
        );
        let direction = st.replication_direction.unwrap_or_default();
        let want_source_here = matches!(
            (direction, active == self.hq),
            (D::PrimaryToRecovery, true) | (D::RecoveryToPrimary, false)
        );
        match direction {
            D::Paused => anyhow::ensure!(
                dests_here == 0,
                "{vm} is paused at {active}, yet a destination writes into it there"
            ),
            _ => {
                anyhow::ensure!(
                    want_source_here,
                    "{vm}: direction {direction:?} does not start at {active}"
                );
                anyhow::ensure!(
                    sources_here == 2 && dests_there == 2 && dests_here == 0,
                    "{vm} replicates {direction:?}: expected sources at {active} and destinations at {other}"
                );
            }
        }
        Ok(())
    }

    /// Creates a RecoveryRun of the example's plan.
    pub async fn create_run(&self, name: &str, action: &str, approvals: &[&str]) -> Result<()> {
        self.create_run_to(name, action, approvals, json!("Latest")).await
    }

    /// A run that restores `recovery_point` (`Latest`, `LatestAppConsistent`, `{time}`).
    pub async fn create_run_to(
        &self,
        name: &str,
        action: &str,
        approvals: &[&str],
        recovery_point: Value,
    ) -> Result<()> {
        let run: coldsite_api::RecoveryRun = serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"plan": "exchange", "action": action, "approvals": approvals, "recoveryPoint": recovery_point},
        }))?;
        Api::<coldsite_api::RecoveryRun>::namespaced(self.management.clone(), &self.ns)
            .create(&kube::api::PostParams::default(), &run)
            .await?;
        Ok(())
    }

    /// Waits until a run succeeds; fails at once if it fails.
    pub async fn run_to_end(&self, name: &str, timeout: Duration) -> Result<coldsite_api::RecoveryRun> {
        use coldsite_api::recovery_run::RunPhase;
        let runs: Api<coldsite_api::RecoveryRun> = Api::namespaced(self.management.clone(), &self.ns);
        let outcome = wait_for(&format!("run {name} to succeed"), timeout, || async {
            let r = runs.get(name).await?;
            match r.status.as_ref().and_then(|s| s.phase) {
                Some(RunPhase::Succeeded) => Ok(Some(r)),
                Some(RunPhase::Failed) => {
                    anyhow::bail!("run {name} failed: {:?}", r.status.as_ref().map(|s| &s.conditions))
                }
                _ => Ok(None),
            }
        })
        .await;
        let run = match outcome {
            Ok(r) => r,
            Err(e) => return Err(e.context(self.where_run_stands(name).await)),
        };
        self.settled(&run).await?;
        Ok(run)
    }

    /// Waits until every VM's status records where `run` left it: the ProtectedVM reconciler
    /// settles a run's outcome just after the run ends.
    pub async fn settled(&self, run: &coldsite_api::RecoveryRun) -> Result<()> {
        use kube::ResourceExt;
        let uid = run.uid();
        let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(self.management.clone(), &self.ns);
        wait_for(
            &format!("the VMs to record where run {} left them", run.name_any()),
            Duration::from_secs(60),
            || async {
                for vm in VMS {
                    let st = pvms.get(vm).await?.status.unwrap_or_default();
                    if st.applied_run != uid {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await
    }

    /// The steps of a run that have not succeeded, its own and its VMs', for failures.
    pub async fn where_run_stands(&self, name: &str) -> String {
        use coldsite_api::recovery_run::StepState;
        let runs: Api<coldsite_api::RecoveryRun> = Api::namespaced(self.management.clone(), &self.ns);
        let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(self.management.clone(), &self.ns);
        let mut out = Vec::new();
        if let Ok(r) = runs.get(name).await {
            let st = r.status.unwrap_or_default();
            let conditions: Vec<&String> = st.conditions.iter().map(|c| &c.message).collect();
            out.push(format!("run {name}: {:?} {conditions:?}", st.phase));
            for s in st.steps.iter().filter(|s| s.state != StepState::Succeeded) {
                out.push(format!(
                    "  {} {:?} {}",
                    s.id,
                    s.state,
                    s.message.clone().unwrap_or_default()
                ));
            }
        }
        if let Ok(list) = pvms.list(&kube::api::ListParams::default()).await {
            for p in list.items {
                for s in p.status.and_then(|s| s.last_run).map(|l| l.steps).unwrap_or_default() {
                    if s.state != StepState::Succeeded {
                        out.push(format!(
                            "  {} {:?} attempts {} {}",
                            s.id,
                            s.state,
                            s.attempts,
                            s.message.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        out.join("\n")
    }

    /// Deletes a test run and waits until it is gone with everything it created at DR:
    /// test VMs, restored PVCs, snapshot copies and Jobs.
    pub async fn delete_test_run(&self, name: &str, timeout: Duration) -> Result<()> {
        use k8s_openapi::api::core::v1::PersistentVolumeClaim;
        use kube::api::{DeleteParams, ListParams};
        let runs: Api<coldsite_api::RecoveryRun> = Api::namespaced(self.management.clone(), &self.ns);
        runs.delete(name, &DeleteParams::default()).await?;
        let (r, test_ns) = (&self.recovery, self.test_ns.as_str());
        let snapshots = volume_snapshots(r, test_ns);
        let jobs = dynamic(r, &self.scripts_ns(), "batch", "v1", "Job", "jobs");
        let all = ListParams::default();
        wait_for("the test run and everything it created to be gone", timeout, || async {
            if runs.get_opt(name).await?.is_some() {
                return Ok(None);
            }
            let left = virtual_machines(r, test_ns).list(&all).await?.items.len()
                + Api::<PersistentVolumeClaim>::namespaced(r.clone(), test_ns)
                    .list(&all)
                    .await?
                    .items
                    .len()
                + snapshots.list(&all).await?.items.len()
                + jobs
                    .list(&ListParams::default().labels("coldsite.io/run-uid"))
                    .await?
                    .items
                    .len();
            Ok((left == 0).then_some(()))
        })
        .await
    }

    /// Waits until the three VMs are Ready with at least one recovery point each.
    pub async fn wait_protected(&self, timeout: Duration) -> Result<()> {
        let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(self.management.clone(), &self.ns);
        wait_for("every ProtectedVM Ready with recovery points", timeout, || async {
            let list = pvms.list(&kube::api::ListParams::default()).await?;
            let ready = list.items.len() == 3
                && list.items.iter().all(|p| {
                    let st = p.status.clone().unwrap_or_default();
                    coldsite_api::common::is_condition_true(&st.conditions, "Ready")
                        && st.recovery_points.as_ref().is_some_and(|r| r.count >= 1)
                });
            Ok(ready.then_some(()))
        })
        .await
    }
}

/// `coldsite-controller` as a child process, logging to a file; killed when dropped.
pub struct ControllerProcess {
    child: tokio::process::Child,
    pub log: PathBuf,
    pub metrics: SocketAddr,
}

impl ControllerProcess {
    pub fn start(binary: &Path, kubeconfig: &Path, log: PathBuf, extra: &[&str]) -> Result<Self> {
        let metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = tokio::process::Command::new(binary)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["--metrics-address", &metrics.to_string()])
            .args(extra)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child, log, metrics })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, as a node failure would: no chance to clean up.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::log_tail(&self.log, lines)
    }

    /// Its /metrics text; empty when it does not answer.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.metrics).await else {
            return String::new();
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text
    }

    /// The sum of the series whose line starts with `prefix` (a name, or a name with its
    /// labels); -1 when the controller does not answer.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.metrics_text().await;
        if text.is_empty() {
            return -1.0;
        }
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Whether a VM's instance runs at a site.
pub async fn vm_runs(c: &Client, ns: &str, vm: &str) -> Result<bool> {
    Ok(virtual_machine_instances(c, ns)
        .get_opt(vm)
        .await?
        .is_some_and(|v| v.data["status"]["phase"] == "Running"))
}

/// How many of a VM's VolSync objects a site has, of the kind `api` lists.
async fn replication_objects(api: Api<DynamicObject>, vm: &str) -> Result<usize> {
    Ok(api
        .list(&kube::api::ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}")))
        .await?
        .items
        .len())
}

/// Polls `check` until it yields; on timeout the error carries `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
