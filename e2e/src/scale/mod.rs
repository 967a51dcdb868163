//! The scale bench's world: three real control planes (management, HQ, DR), each auditing
//! coldsite's requests; an identity for coldsite at each; N one-disk VMs at HQ with their
//! ProtectedVMs; a plan of dependent groups over them. The site simulator and the
//! controller run as processes of their own, so their CPU is told apart.

pub mod audit;
pub mod process_stats;
pub mod report;
pub mod rto;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::chart::{request_token, token_kubeconfig, write_kubeconfig};
use crate::exchange::{dynamic, virtual_machines};
use crate::manifests::{apply, install_crds};
use crate::{ControlPlane, ControlPlaneOptions};

/// Where everything of the bench lives, on every cluster.
pub const NS: &str = "scale";
const MANAGER: &str = "coldsite-scale";

/// One cluster of the bench, with coldsite's identity and the audit log of its requests.
pub struct Cluster {
    pub cp: ControlPlane,
    pub admin: Client,
    /// A kubeconfig for coldsite's identity there.
    pub coldsite_kubeconfig: String,
    pub audit_log: PathBuf,
}

impl Cluster {
    /// A control plane whose API server audits coldsite's identity, which gets
    /// cluster-admin: the bench measures load, not permissions.
    pub async fn start(name: &str, dir: &Path) -> Result<Self> {
        let policy = dir.join(format!("{name}-audit-policy.yaml"));
        let audit_log = dir.join(format!("{name}-audit.log"));
        std::fs::write(&policy, audit::policy())?;
        let mut options = ControlPlaneOptions::new(name);
        options.extra_apiserver_args = vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-maxsize=0".into(),
        ];
        let cp = ControlPlane::start(options).await?;
        let admin = cp.client().await?;
        for o in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "coldsite-system"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coldsite", "namespace": "coldsite-system"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "coldsite-scale"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": "coldsite", "namespace": "coldsite-system"}]}),
        ] {
            apply(&admin, &o, "coldsite-system").await??;
        }
        let token = request_token(&admin, "coldsite-system", "coldsite", 86_400).await?;
        let coldsite_kubeconfig = token_kubeconfig(&cp, "coldsite", &token)?;
        Ok(Self {
            cp,
            admin,
            coldsite_kubeconfig,
            audit_log,
        })
    }

    /// Writes coldsite's kubeconfig for this cluster into `dir`.
    pub fn write_coldsite_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}-coldsite.kubeconfig", self.cp.name()));
        write_kubeconfig(&path, &self.coldsite_kubeconfig)?;
        Ok(path)
    }
}

/// The name of the i-th VM.
pub fn vm_name(i: usize) -> String {
    format!("vm{i:05}")
}

/// Sites, the network mapping and the kubeconfig Secrets on the management cluster. Sites on
/// a `shared_network` expose replication destinations as ClusterIP Services.
pub async fn install_coldsite_objects(mgmt: &Cluster, hq: &Cluster, dr: &Cluster, shared_network: bool) -> Result<()> {
    install_crds(&mgmt.cp).await?;
    let service_type = if shared_network { "ClusterIP" } else { "LoadBalancer" };
    for (site, c) in [("hq", hq), ("dr", dr)] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{site}-kubeconfig")},
                            "stringData": {"kubeconfig": c.coldsite_kubeconfig}});
        apply(&mgmt.admin, &secret, "coldsite-system").await??;
        let s = json!({"apiVersion": "coldsite.io/v1alpha1", "kind": "Site", "metadata": {"name": site},
            "spec": {"cluster": {"kubeconfigSecretRef": {"namespace": "coldsite-system",
                                 "name": format!("{site}-kubeconfig"), "key": "kubeconfig"}},
                     "replication": {"serviceType": service_type}}});
        apply(&mgmt.admin, &s, NS).await??;
    }
    let mapping = json!({"apiVersion": "coldsite.io/v1alpha1", "kind": "NetworkMapping",
        "metadata": {"name": "hq-to-dr"},
        "spec": {"sourceSite": "hq", "targetSite": "dr", "networks": [{
            "source": {"network": "scale/lan"}, "target": {"network": "scale/dr-lan"},
            "test": {"network": "scale/dr-isolated"},
            "subnets": [{"source": "10.0.0.0/16", "target": "10.50.0.0/16", "gateway": "10.50.0.1"}]}]}});
    apply(&mgmt.admin, &mapping, NS).await??;
    Ok(())
}

/// N one-disk VMs at HQ, each with a static address, `parallel` writes at a time.
pub async fn create_vms(hq: &Client, n: usize, parallel: usize) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(hq.clone(), NS);
    let vms = virtual_machines(hq, NS);
    let params = PatchParams::apply(MANAGER).force();
    stream::iter(0..n)
        .map(|i| {
            let (pvcs, vms, params) = (&pvcs, &vms, &params);
            async move {
                let name = vm_name(i);
                let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("{name}-disk")},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}))?;
                pvcs.patch(&format!("{name}-disk"), params, &Patch::Apply(&pvc)).await?;
                let vm: kube::api::DynamicObject = serde_json::from_value(vm_manifest(i))?;
                vms.patch(&name, params, &Patch::Apply(&vm)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await
        .context("creating the VMs at HQ")
}

fn vm_manifest(i: usize) -> Value {
    let name = vm_name(i);
    let (hi, lo) = (i / 250, i % 250 + 2);
    let mac = format!("02:5c:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
    let network_data = format!(
        "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"{mac}\"\n    set-name: lan\n    \
         addresses: [10.0.{hi}.{lo}/16]\n    routes:\n      - to: default\n        via: 10.0.0.1\n"
    );
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {
                "disks": [{"name": "disk", "disk": {"bus": "virtio"}}, {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "lan", "bridge": {}, "macAddress": mac}]},
                "memory": {"guest": "1Gi"}},
            "networks": [{"name": "lan", "multus": {"networkName": "scale/lan"}}],
            "volumes": [
                {"name": "disk", "persistentVolumeClaim": {"claimName": format!("{name}-disk")}},
                {"name": "cloudinit", "cloudInitNoCloud": {"networkData": network_data}}]}}}})
}

/// How often the VMs sync and how long their points are kept, as a ProtectedVM says them.
#[derive(Clone, Copy, Debug)]
pub struct Replication<'a> {
    pub rpo: &'a str,
    pub retention: &'a str,
}

/// The N ProtectedVMs, `parallel` writes at a time.
pub async fn protect(mgmt: &Client, n: usize, parallel: usize, replication: Replication<'_>) -> Result<()> {
    let pvms = dynamic(mgmt, NS, "coldsite.io", "v1alpha1", "ProtectedVM", "protectedvms");
    let params = PatchParams::apply(MANAGER).force();
    stream::iter(0..n)
        .map(|i| {
            let (pvms, params) = (&pvms, &params);
            async move {
                let name = vm_name(i);
                let pvm: kube::api::DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM", "metadata": {"name": name},
                    "spec": {"vm": {"name": name}, "primarySite": "hq", "recoverySite": "dr",
                             "networkMapping": "hq-to-dr", "replication": {"rpo": replication.rpo, "retention": replication.retention}}}))?;
                pvms.patch(&name, params, &Patch::Apply(&pvm)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await
        .context("creating the ProtectedVMs")
}

/// A plan of `groups` groups, each depending on the one before, over the N VMs.
pub async fn plan(mgmt: &Client, n: usize, groups: usize) -> Result<()> {
    let per = n.div_ceil(groups.max(1));
    let groups: Vec<Value> = (0..n)
        .collect::<Vec<_>>()
        .chunks(per.max(1))
        .enumerate()
        .map(|(g, vms)| json!({"name": format!("g{g:02}"), "vms": vms.iter().map(|&i| vm_name(i)).collect::<Vec<_>>()}))
        .collect();
    let plan = json!({"apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryPlan", "metadata": {"name": "scale"},
                      "spec": {"primarySite": "hq", "recoverySite": "dr", "groups": groups}});
    apply(mgmt, &plan, NS).await??;
    Ok(())
}

/// How many of the VMs' disks at HQ are Bound.
pub async fn count_bound_disks(hq: &Client) -> Result<usize> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(hq.clone(), NS);
    let list = pvcs.list(&Default::default()).await?;
    let bound = |p: &&PersistentVolumeClaim| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    Ok(list.items.iter().filter(bound).count())
}

/// How many ProtectedVMs show `phase`.
pub async fn count_phase(mgmt: &Client, phase: &str) -> Result<usize> {
    let pvms = dynamic(mgmt, NS, "coldsite.io", "v1alpha1", "ProtectedVM", "protectedvms");
    let list = pvms.list(&Default::default()).await?;
    Ok(list.items.iter().filter(|p| p.data["status"]["phase"] == phase).count())
}

/// The largest serialized object among those listed, as (kind/name, bytes).
pub fn largest<'a>(
    objects: impl IntoIterator<Item = (&'a str, &'a kube::api::DynamicObject)>,
) -> Option<(String, usize)> {
    objects
        .into_iter()
        .map(|(kind, o)| {
            let bytes = serde_json::to_vec(o).map(|v| v.len()).unwrap_or_default();
            (format!("{kind}/{}", o.metadata.name.clone().unwrap_or_default()), bytes)
        })
        .max_by_key(|(_, b)| *b)
}

/// Polls `check` every `every` until it answers, or fails after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = check().await? {
            return Ok(Some(t));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}
