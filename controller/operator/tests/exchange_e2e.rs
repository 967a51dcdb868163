//! The Exchange scenario end to end: two real kube-apiservers (management + primary site,
//! and the recovery site), the site simulator standing in for KubeVirt, VolSync, the
//! snapshot controller and kubelets, and `coldsite-controller` running as a process.
//!
//! One test drives the lifecycle in order, because one controller acts on the whole
//! management cluster: protect, then a test failover with its gate, Job and webhook, then
//! its cleanup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::recovery_run::{RunPhase, StepKind, StepState};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun};
use coldsite_e2e::ControlPlane;
use coldsite_e2e::manifests::{apply, install_crds, read_documents, repo_root};
use coldsite_e2e::simulator::{self, SimConfig, Simulator, SimulatorHandle};
use hmac::{Hmac, Mac};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HMAC_KEY: &str = "e2e-webhook-key-0123456789";

/// What the test's webhook receiver saw: idempotency key, body, and whether the signature
/// matched.
type Calls = Arc<Mutex<Vec<(String, Value, bool)>>>;

/// A plain HTTP receiver that checks coldsite's signature, as a real one would.
async fn webhook_receiver() -> Result<(SocketAddr, Calls)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read headers, then the body by Content-Length.
                let (head, body) = loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            let Ok(n) = stream.read(&mut chunk).await else { return };
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (head, buf[end + 4..].to_vec());
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .map(|v| v.trim().to_owned())
                };
                let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY.as_bytes()).expect("hmac key");
                mac.update(&body);
                let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let valid = header("x-coldsite-signature").as_deref() == Some(expected.as_str());
                let key = header("x-coldsite-idempotency-key").unwrap_or_default();
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push((key, json, valid));
                let status = if valid { "200 OK" } else { "401 Unauthorized" };
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok((addr, calls))
}

struct Env {
    mgmt: &'static ControlPlane,
    rec: &'static ControlPlane,
    m: Client,
    r: Client,
    ns: String,
    test_ns: String,
    hq: String,
    dr: String,
    calls: Calls,
    _sim: SimulatorHandle,
    controller: tokio::process::Child,
    log: PathBuf,
}

fn dynamic(client: &Client, ns: &str, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn vms(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

fn vmis(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}

async fn apply_all(client: &Client, docs: &[Value], ns: &str) -> Result<()> {
    for d in docs {
        apply(client, d, ns)
            .await?
            .with_context(|| format!("applying {}", d["metadata"]["name"]))?;
    }
    Ok(())
}

/// Waits until `check` returns Some, polling; on timeout, the last state and the
/// controller's log tail make the failure readable.
async fn wait_for<T, F, Fut>(env: &Env, what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => eprintln!("waiting for {what}: {e:#}"),
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&env.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!(
                "timed out after {timeout:?} waiting for {what}\ncontroller log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The Exchange example, renamed into this test's namespace and sites.
fn exchange_docs(env_ns: &str, hq: &str, dr: &str, test_ns: &str, hook: SocketAddr) -> Result<Vec<Value>> {
    let dir = repo_root().join("examples/exchange");
    let mut out = Vec::new();
    for file in [
        "00-sites.yaml",
        "10-network-mapping.yaml",
        "20-protected-vms.yaml",
        "30-recovery-plan.yaml",
        "40-webhook-secret.yaml",
    ] {
        for mut d in read_documents(&dir.join(file))? {
            let text = serde_json::to_string(&d)?
                .replace("\"contoso-hq\"", &format!("\"{hq}\""))
                .replace("\"contoso-dr\"", &format!("\"{dr}\""));
            d = serde_json::from_str(&text)?;
            match d["kind"].as_str() {
                Some("Site") => {
                    d["spec"]["testNamespace"] = json!(test_ns);
                    let secret = if d["metadata"]["name"] == hq {
                        format!("{hq}-kubeconfig")
                    } else {
                        format!("{dr}-kubeconfig")
                    };
                    d["spec"]["cluster"]["kubeconfigSecretRef"] =
                        json!({"namespace": env_ns, "name": secret, "key": "kubeconfig"});
                    d["spec"].as_object_mut().map(|s| s.remove("storage"));
                }
                Some("RecoveryPlan") => {
                    // The simulated VMs' addresses are not reachable from here: readiness is
                    // the VM's Ready status and the guest agent, which the simulator reports.
                    for g in d["spec"]["groups"].as_array_mut().into_iter().flatten() {
                        if let Some(r) = g["readiness"].as_object_mut() {
                            r.remove("probes");
                        }
                    }
                    let hook_url = format!("http://{hook}/mount");
                    for g in d["spec"]["groups"].as_array_mut().into_iter().flatten() {
                        for a in g["post"].as_array_mut().into_iter().flatten() {
                            if a["script"]["webhook"].is_object() {
                                a["script"]["webhook"]["url"] = json!(hook_url);
                            }
                        }
                    }
                    d["spec"].as_object_mut().map(|s| s.remove("drill"));
                }
                Some("Secret") => d["stringData"]["hmac-key"] = json!(HMAC_KEY),
                _ => {}
            }
            out.push(d);
        }
    }
    Ok(out)
}

async fn setup() -> Result<Env> {
    let mgmt = ControlPlane::shared().await?;
    let rec = ControlPlane::shared_recovery().await?;
    install_crds(mgmt).await?;
    let (m, r) = (mgmt.client().await?, rec.client().await?);
    simulator::install_crds(&m).await?;
    simulator::install_crds(&r).await?;
    let ns = mgmt.create_namespace("exchange").await?;
    let test_ns = format!("{ns}-test");
    for (client, name) in [(&r, ns.as_str()), (&m, test_ns.as_str()), (&r, test_ns.as_str())] {
        apply(
            client,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            name,
        )
        .await??;
    }
    let (hq, dr) = (format!("hq-{ns}"), format!("dr-{ns}"));

    // The sites' kubeconfigs, as Secrets the Sites name.
    for (site, cp) in [(&hq, mgmt), (&dr, rec)] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{site}-kubeconfig")},
                            "stringData": {"kubeconfig": cp.kubeconfig_yaml()}});
        apply(&m, &secret, &ns).await??;
    }
    // The primary site: disks and the three VMs.
    for vm in ["dc01", "exch-mbx01", "exch-cas01"] {
        for disk in ["system", "data"] {
            let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("{vm}-{disk}")},
                             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}});
            apply(&m, &pvc, &ns).await??;
        }
    }
    let vm_docs = read_documents(&repo_root().join("examples/exchange/primary-site/virtual-machines.yaml"))?;
    apply_all(&m, &vm_docs, &ns).await?;

    let sim = Simulator::start(
        vec![(hq.clone(), m.clone()), (dr.clone(), r.clone())],
        SimConfig::default().with_namespaces([ns.clone(), test_ns.clone()]),
    );
    let (hook, calls) = webhook_receiver().await?;
    apply_all(&m, &exchange_docs(&ns, &hq, &dr, &test_ns, hook)?, &ns).await?;

    let log = mgmt.dir().join(format!("controller-{ns}.log"));
    let file = std::fs::File::create(&log)?;
    let controller = tokio::process::Command::new(env!("CARGO_BIN_EXE_coldsite-controller"))
        .env("KUBECONFIG", mgmt.kubeconfig_path())
        .env("RUST_LOG", "info,coldsite_operator=debug,kube=warn")
        .args([
            "--no-leader-election",
            "--metrics-address",
            &format!("127.0.0.1:{}", free_port()?),
        ])
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .context("starting coldsite-controller")?;
    Ok(Env {
        mgmt,
        rec,
        m,
        r,
        ns,
        test_ns,
        hq,
        dr,
        calls,
        _sim: sim,
        controller,
        log,
    })
}

async fn protected(env: &Env) -> Result<()> {
    let pvms: Api<ProtectedVM> = Api::namespaced(env.m.clone(), &env.ns);
    wait_for(
        env,
        "every ProtectedVM Ready with recovery points",
        Duration::from_secs(120),
        || async {
            let list = pvms.list(&ListParams::default()).await?;
            let ready = list.items.len() == 3
                && list.items.iter().all(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    coldsite_api::common::is_condition_true(&s.conditions, "Ready")
                        && s.recovery_points.as_ref().is_some_and(|r| r.count >= 1)
                });
            Ok(ready.then_some(()))
        },
    )
    .await?;
    // Replication is VolSync at both sites, with the key Secret on both sides.
    let rs = dynamic(
        &env.m,
        &env.ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationSource",
        "replicationsources",
    );
    let rd = dynamic(
        &env.r,
        &env.ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationDestination",
        "replicationdestinations",
    );
    ensure!(
        rs.list(&ListParams::default()).await?.items.len() == 6,
        "one ReplicationSource per disk at the primary"
    );
    ensure!(
        rd.list(&ListParams::default()).await?.items.len() == 6,
        "one ReplicationDestination per disk at the recovery site"
    );
    let source = rs.get("coldsite-dc01-system").await?;
    ensure!(
        source.data["spec"]["trigger"]["schedule"] == "*/6 * * * *",
        "schedule from the 15m RPO: {}",
        source.data["spec"]["trigger"]
    );
    let snaps = dynamic(
        &env.r,
        &env.ns,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    );
    let kept = snaps
        .list(&ListParams::default().labels("volsync.backube/do-not-delete=true"))
        .await?;
    ensure!(!kept.items.is_empty(), "recovery points are kept with do-not-delete");
    // Points accumulate as syncs go on.
    let before = kept.items.len();
    wait_for(env, "more recovery points", Duration::from_secs(60), || async {
        let n = snaps
            .list(&ListParams::default().labels("volsync.backube/do-not-delete=true"))
            .await?
            .items
            .len();
        Ok((n > before).then_some(()))
    })
    .await?;
    Ok(())
}

fn step<'a>(run: &'a RecoveryRun, id: &str) -> Option<&'a coldsite_api::recovery_run::StepStatus> {
    run.status.as_ref()?.steps.iter().find(|s| s.id == id)
}

async fn vm_step_time(pvms: &Api<ProtectedVM>, vm: &str, kind: StepKind) -> Result<chrono::DateTime<chrono::Utc>> {
    let p = pvms.get(vm).await?;
    let last = p.status.and_then(|s| s.last_run).context("no lastRun")?;
    let s = last
        .steps
        .iter()
        .find(|s| s.kind == Some(kind))
        .context("no such step")?;
    Ok(coldsite_engine::time::from_k8s(
        s.started_at.as_ref().context("not started")?,
    ))
}

async fn test_failover(env: &Env) -> Result<()> {
    let runs: Api<RecoveryRun> = Api::namespaced(env.m.clone(), &env.ns);
    let docs = read_documents(&repo_root().join("examples/exchange/runs/test-failover.yaml"))?;
    apply_all(&env.m, &docs, &env.ns).await?;
    let name = "exchange-test-1";

    // The gate holds: mailbox waits for a person, and nothing of it powers on.
    let run = wait_for(
        env,
        "the run to wait for approval",
        Duration::from_secs(120),
        || async {
            let r = runs.get(name).await?;
            Ok(
                (r.status.as_ref().and_then(|s| s.waiting_for.clone()).as_deref() == Some("confirm-ad-replication"))
                    .then_some(r),
            )
        },
    )
    .await?;
    ensure!(
        step(&run, "identity/post/verify-ad").is_some_and(|s| s.state == StepState::Succeeded),
        "the FSMO Job ran first"
    );
    let test_vms = vms(&env.r, &env.test_ns);
    let mbx = test_vms.get_opt("exch-mbx01").await?;
    ensure!(
        mbx.as_ref().is_none_or(|v| v.data["spec"]["runStrategy"] == "Halted"),
        "mailbox must not run before approval"
    );
    ensure!(env.calls.lock().unwrap().is_empty(), "the webhook waits for mailbox");
    // The Job really ran at the recovery site with its context.
    let jobs = dynamic(&env.r, &env.ns, "batch", "v1", "Job", "jobs");
    let job = jobs
        .list(&ListParams::default().labels("coldsite.io/action=verify-ad"))
        .await?;
    ensure!(job.items.len() == 1, "one verify-ad Job");
    let env_names: Vec<String> = job.items[0].data["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        env_names.contains(&"COLDSITE_CONTEXT_FILE".to_owned()),
        "context in the environment: {env_names:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        runs.get(name).await?.status.and_then(|s| s.phase) == Some(RunPhase::WaitingForApproval),
        "still waiting"
    );

    // Approve; the rest follows.
    runs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"approvals": ["confirm-ad-replication"]}})),
    )
    .await?;
    let run = wait_for(
        env,
        "the test failover to succeed",
        Duration::from_secs(180),
        || async {
            let r = runs.get(name).await?;
            match r.status.as_ref().and_then(|s| s.phase) {
                Some(RunPhase::Succeeded) => Ok(Some(r)),
                Some(RunPhase::Failed) => bail!("the run failed: {:?}", r.status.as_ref().map(|s| &s.conditions)),
                _ => Ok(None),
            }
        },
    )
    .await?;
    ensure!(
        run.status.as_ref().and_then(|s| s.rto_seconds).is_some(),
        "RTO recorded"
    );

    // Order: DC → mailbox → CAS.
    let pvms: Api<ProtectedVM> = Api::namespaced(env.m.clone(), &env.ns);
    let dc = vm_step_time(&pvms, "dc01", StepKind::PowerOn).await?;
    let mbx = vm_step_time(&pvms, "exch-mbx01", StepKind::PowerOn).await?;
    let cas = vm_step_time(&pvms, "exch-cas01", StepKind::PowerOn).await?;
    ensure!(dc < mbx && mbx < cas, "power-on order dc {dc} < mbx {mbx} < cas {cas}");

    // The webhook ran once, signed, with the context and the recovered addresses.
    let calls = env.calls.lock().unwrap().clone();
    ensure!(calls.len() == 1, "one webhook call, got {}", calls.len());
    let (key, body, valid) = &calls[0];
    ensure!(*valid, "the signature verifies");
    ensure!(key.ends_with("/mailbox/post/mount-databases"), "idempotency key {key}");
    ensure!(
        body["action"] == "mount-databases" && body["test"] == true,
        "context {body}"
    );
    // The test copies run on the isolated network with their test addresses; HQ keeps running.
    for (vm, ip) in [
        ("dc01", "10.50.1.10"),
        ("exch-mbx01", "10.50.1.20"),
        ("exch-cas01", "10.50.1.30"),
    ] {
        let copy = test_vms.get(vm).await?;
        ensure!(copy.data["spec"]["runStrategy"] == "Always", "{vm} runs");
        let network = &copy.data["spec"]["template"]["spec"]["networks"][0]["multus"]["networkName"];
        ensure!(
            network == "contoso/dr-isolated",
            "{vm} on the test network, not {network}"
        );
        let vmi = vmis(&env.r, &env.test_ns).get(vm).await?;
        let ips: Vec<&str> = vmi.data["status"]["interfaces"][0]["ipAddresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(ips.contains(&ip), "{vm} has {ip}: {ips:?}");
        let primary = vmis(&env.m, &env.ns).get_opt(vm).await?;
        ensure!(primary.is_some(), "{vm} still runs at HQ");
    }
    // The plan shows the run.
    let plan = Api::<RecoveryPlan>::namespaced(env.m.clone(), &env.ns)
        .get("exchange")
        .await?;
    ensure!(
        plan.status.and_then(|s| s.last_run).is_some_and(|l| l.name == name),
        "plan.status.lastRun"
    );

    // Deleting the run removes everything it created, at both sites.
    runs.delete(name, &DeleteParams::default()).await?;
    wait_for(
        env,
        "the run and its resources to be gone",
        Duration::from_secs(120),
        || async {
            if runs.get_opt(name).await?.is_some() {
                return Ok(None);
            }
            let left = vms(&env.r, &env.test_ns)
                .list(&ListParams::default())
                .await?
                .items
                .len()
                + Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(env.r.clone(), &env.test_ns)
                    .list(&ListParams::default())
                    .await?
                    .items
                    .len()
                + jobs
                    .list(&ListParams::default().labels("coldsite.io/run-uid"))
                    .await?
                    .items
                    .len();
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_lifecycle() -> Result<()> {
    let mut env = setup().await?;
    let result = async {
        protected(&env).await.context("protect")?;
        test_failover(&env).await.context("test failover")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = env.controller.start_kill();
    if result.is_err() {
        eprintln!("controller log: {}", env.log.display());
    }
    let _ = (&env.mgmt, &env.rec, &env.hq, &env.dr, BTreeMap::<u8, u8>::new());
    result
}
