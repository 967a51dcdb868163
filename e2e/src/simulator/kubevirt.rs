//! KubeVirt's virt-controller and virt-handler, which need nodes: VirtualMachines run
//! VirtualMachineInstances according to `spec.runStrategy` (or the deprecated
//! `spec.running`), each VMI gets a virt-launcher pod that mounts its PVCs (the simulated
//! kubelet runs it once they are bound), and a VMI "boots" `SimConfig::boot_delay` after its
//! pod runs: Running, Ready, `AgentConnected`, interfaces with the IPs of its cloud-init
//! network data. Followed: `pkg/virt-controller/watch/vm/vm.go` (`syncRunStrategy`) of
//! `kubevirt.io/kubevirt` v1.7.0. The finalizers KubeVirt puts on VMs and VMIs are not
//! simulated.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use anyhow::{Context, Result};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Map, Value, json};

use super::cache::SiteCache;
use super::netdata::{self, SpecInterface};
use super::resources::{VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE};
use super::util::{self, StatusAt, condition, describe, key_of, str_at};
use super::virt_api;
use super::{Ctx, NODE_NAME, SiteState, each, lock};

/// What `spec.runStrategy` (or the older `spec.running`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
    /// `Manual`: the simulator neither starts nor stops the VM.
    AsIs,
}

fn want(vm: &DynamicObject) -> Want {
    match str_at(&vm.data, "/spec/runStrategy") {
        Some("Always" | "RerunOnFailure" | "Once") => Want::Running,
        Some("Halted") => Want::Stopped,
        Some(_) => Want::AsIs,
        None => match vm.data.pointer("/spec/running").and_then(Value::as_bool) {
            Some(true) => Want::Running,
            _ => Want::Stopped,
        },
    }
}

/// A VMI as the VM controller sees it after this pass.
#[derive(Debug, Clone)]
struct VmiView {
    uid: String,
    phase: String,
    ready: bool,
    unschedulable: bool,
    deleting: bool,
    controlled_by: Option<String>,
}

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let Some(vmis) = ctx.cached(VIRTUAL_MACHINE_INSTANCE, site) else {
        return Ok(());
    };
    let views = Mutex::new(HashMap::new());
    each(state, vmis.iter().map(AsRef::as_ref).collect(), |vmi| {
        let views = &views;
        async move {
            let view = advance_vmi(ctx, site, state, vmi).await?;
            lock(views).insert(key_of(vmi), view);
            Ok(())
        }
    })
    .await;
    let Some(vms) = ctx.cached(VIRTUAL_MACHINE, site) else {
        return Ok(());
    };
    let views = views.into_inner().unwrap_or_else(|e| e.into_inner());
    let views = &views;
    let vms = vms.iter().map(AsRef::as_ref).collect();
    each(state, vms, |vm| reconcile_vm(ctx, site, vm, views.get(&key_of(vm)))).await;
    Ok(())
}

fn controller_uid(object: &DynamicObject) -> Option<String> {
    object
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// virt-handler's unfreeze timer: a guest nobody thawed thaws by itself at its
/// `unfreezeTimeout`. Checked again on a fresh read: the cache may not show a newer freeze.
async fn thaw_if_due(ctx: &Ctx, site: usize, vmi: &DynamicObject) -> Result<()> {
    if !virt_api::thaw_due(vmi, chrono::Utc::now()) {
        return Ok(());
    }
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let api = VIRTUAL_MACHINE_INSTANCE.namespaced(ctx.client(site), namespace);
    let fresh = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {}", describe(vmi)))?;
    if !fresh.is_some_and(|vmi| virt_api::thaw_due(&vmi, chrono::Utc::now())) {
        return Ok(());
    }
    api.patch(name, &util::params(), &kube::api::Patch::Merge(&virt_api::thaw_patch()))
        .await
        .with_context(|| format!("thawing {}", describe(vmi)))?;
    tracing::info!(site = %ctx.site_name(site), "{}: unfreezeTimeout passed; the guest thawed", describe(vmi));
    Ok(())
}

/// Moves a VMI along `Pending → Scheduling → Running` and reports what its guest shows.
async fn advance_vmi(ctx: &Ctx, site: usize, state: &SiteState, vmi: &DynamicObject) -> Result<VmiView> {
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let current = vmi.data.get("status");
    let conditions = current.and_then(|s| s.get("conditions"));
    let mut view = VmiView {
        uid: uid.clone(),
        phase: current
            .and_then(|s| str_at(s, "/phase"))
            .unwrap_or("Pending")
            .to_owned(),
        ready: false,
        unschedulable: false,
        deleting: vmi.metadata.deletion_timestamp.is_some(),
        controlled_by: controller_uid(vmi),
    };
    if view.deleting || matches!(view.phase.as_str(), "Succeeded" | "Failed") {
        return Ok(view);
    }
    let site_name = ctx.site_name(site).to_owned();
    thaw_if_due(ctx, site, vmi).await?;
    let (boot_failure, no_agent, slow_boot) = {
        let faults = ctx.faults();
        (
            faults.boot_failure(&site_name, namespace, name),
            faults.no_agent(&site_name, namespace, name),
            faults.slow_boot(&site_name, namespace, name),
        )
    };
    let delay = slow_boot.unwrap_or(ctx.config.boot_delay);
    let launched = !boot_failure && ensure_launcher(ctx, site, vmi).await?;
    let booted = launched && state.since(&format!("vmi:{uid}")) >= delay;
    let mut desired = Map::new();
    if boot_failure {
        view.phase = "Scheduling".into();
        view.unschedulable = true;
        desired.insert("phase".into(), json!("Scheduling"));
        desired.insert(
            "conditions".into(),
            json!([
                condition(
                    conditions,
                    "PodScheduled",
                    false,
                    "Unschedulable",
                    "0/1 nodes are available: simulated boot failure (coldsite site simulator fault)"
                ),
                condition(
                    conditions,
                    "Ready",
                    false,
                    "GuestNotRunning",
                    "Guest VM is not reported as running"
                ),
            ]),
        );
        desired.insert("interfaces".into(), Value::Null);
        desired.insert("nodeName".into(), Value::Null);
    } else if !booted {
        view.phase = "Scheduling".into();
        desired.insert("phase".into(), json!("Scheduling"));
        desired.insert(
            "conditions".into(),
            json!([condition(
                conditions,
                "Ready",
                false,
                "GuestNotRunning",
                "Guest VM is not reported as running"
            )]),
        );
    } else {
        let network_data = network_data(ctx.cache(site), namespace, &vmi.data)?;
        let ethernets = match network_data.as_deref().map(netdata::parse_ethernets) {
            Some(Ok(ethernets)) => ethernets,
            Some(Err(why)) => {
                tracing::debug!(vmi = %key_of(vmi), "no guest IPs: {why}");
                Vec::new()
            }
            None => Vec::new(),
        };
        let nics = spec_interfaces(&vmi.data);
        let vmi_key = key_of(vmi);
        let interfaces =
            netdata::interface_status(&nics, &ethernets, !no_agent, |nic| generated_mac(&vmi_key, &nic.name));
        let mut list = vec![condition(conditions, "Ready", true, "", "")];
        if !no_agent {
            list.push(condition(conditions, "AgentConnected", true, "", ""));
        }
        view.phase = "Running".into();
        view.ready = true;
        desired.insert("phase".into(), json!("Running"));
        desired.insert("nodeName".into(), json!(NODE_NAME));
        desired.insert("interfaces".into(), json!(interfaces));
        desired.insert("conditions".into(), json!(list));
        if no_agent {
            desired.insert("guestOSInfo".into(), Value::Null);
        } else {
            desired.insert(
                "guestOSInfo".into(),
                json!({"id": "coldsite-sim", "name": "Simulated guest (coldsite site simulator)"}),
            );
        }
    }
    let api = VIRTUAL_MACHINE_INSTANCE.namespaced(ctx.client(site), namespace);
    // Like upstream, VMIs have no status subresource.
    if util::patch_status(&api, vmi, desired, StatusAt::Object).await? {
        tracing::debug!(site = %site_name, "{} is {}", describe(vmi), view.phase);
    }
    Ok(view)
}

/// The virt-launcher pod of a VMI (as virt-controller makes it: labels `kubevirt.io:
/// virt-launcher` and `kubevirt.io/created-by: <vmi uid>`, owned by the VMI, mounting its
/// PVCs); true once the simulated kubelet runs it.
async fn ensure_launcher(ctx: &Ctx, site: usize, vmi: &DynamicObject) -> Result<bool> {
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().context("VMI without uid")?;
    let mut hasher = DefaultHasher::new();
    uid.hash(&mut hasher);
    let pod_name = format!("virt-launcher-{name}-{:05x}", hasher.finish() & 0xfffff);
    if let Some(pod) = ctx.cache(site).pods.get(Some(namespace), &pod_name) {
        return Ok(pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client(site), namespace);
    let volumes: Vec<Value> = volume_claims(&vmi.data)
        .into_iter()
        .map(|(volume, claim)| json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}))
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": pod_name, "namespace": namespace,
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": uid, "vm.kubevirt.io/name": name},
            "ownerReferences": [{"apiVersion": VIRTUAL_MACHINE_INSTANCE.api_version(), "kind": VIRTUAL_MACHINE_INSTANCE.kind,
                                 "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.7.0",
                            "command": ["/usr/bin/virt-launcher-monitor"]}],
            "volumes": volumes,
        },
    }))?;
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(false),
        Err(e) if util::is_conflict(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating pod {namespace}/{pod_name}")),
    }
}

/// `(volume, claim)` of each PVC or DataVolume volume of a VMI.
fn volume_claims(vmi: &Value) -> Vec<(String, String)> {
    vmi.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let claim = str_at(v, "/persistentVolumeClaim/claimName").or_else(|| str_at(v, "/dataVolume/name"))?;
            Some((str_at(v, "/name")?.to_owned(), claim.to_owned()))
        })
        .collect()
}

/// The claims a VMI's disks are on.
pub(crate) fn claims(vmi: &Value) -> Vec<String> {
    volume_claims(vmi).into_iter().map(|(_, claim)| claim).collect()
}

/// `spec.domain.devices.interfaces[]` of a VMI (or VM template) spec.
fn spec_interfaces(data: &Value) -> Vec<SpecInterface> {
    data.pointer("/spec/domain/devices/interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|nic| {
            Some(SpecInterface {
                name: str_at(nic, "/name")?.to_owned(),
                mac: util::nonempty_str_at(nic, "/macAddress").map(str::to_owned),
            })
        })
        .collect()
}

/// A stable MAC for a NIC without `macAddress`, in libvirt's `52:54:00` range.
fn generated_mac(vmi: &str, nic: &str) -> String {
    let mut hasher = DefaultHasher::new();
    (vmi, nic).hash(&mut hasher);
    let b = hasher.finish().to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// The cloud-init network data of the first `cloudInitNoCloud` or `cloudInitConfigDrive`
/// volume that has any: `networkData`, `networkDataBase64` or `networkDataSecretRef`.
fn network_data(cache: &SiteCache, namespace: &str, data: &Value) -> Result<Option<String>> {
    let volumes = data
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for volume in volumes {
        let Some(source) = volume
            .get("cloudInitNoCloud")
            .or_else(|| volume.get("cloudInitConfigDrive"))
        else {
            continue;
        };
        if let Some(text) = util::nonempty_str_at(source, "/networkData") {
            return Ok(Some(text.to_owned()));
        }
        if let Some(b64) = util::nonempty_str_at(source, "/networkDataBase64") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .context("decoding networkDataBase64")?;
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        if let Some(secret) = util::nonempty_str_at(source, "/networkDataSecretRef/name") {
            let text = cache.secrets.get(Some(namespace), secret).and_then(|secret| {
                let data = secret.data.as_ref()?;
                ["networkdata", "networkData"]
                    .iter()
                    .find_map(|k| data.get(*k))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            return Ok(text);
        }
    }
    Ok(None)
}

async fn reconcile_vm(ctx: &Ctx, site: usize, vm: &DynamicObject, vmi: Option<&VmiView>) -> Result<()> {
    if vm.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let namespace = vm.metadata.namespace.as_deref().unwrap_or_default();
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(ctx.client(site), namespace);
    let want = want(vm);
    // A VMI controlled by an older VM of the same name waits for the garbage collector.
    let ours = vmi.filter(|v| v.controlled_by.as_deref().is_none_or(|owner| owner == uid));
    let mut vmi_state = ours.cloned();
    match (want, ours) {
        (Want::Running, None) if vmi.is_none() => {
            create_vmi(&vmis, vm).await?;
            tracing::info!(site = %ctx.site_name(site), "{}: started a VirtualMachineInstance", describe(vm));
            vmi_state = Some(VmiView {
                uid: String::new(),
                phase: "Pending".into(),
                ready: false,
                unschedulable: false,
                deleting: false,
                controlled_by: Some(uid.to_owned()),
            });
        }
        // Always and RerunOnFailure restart a failed VMI; Once does not.
        (Want::Running, Some(v))
            if !v.deleting && v.phase == "Failed" && str_at(&vm.data, "/spec/runStrategy") != Some("Once") =>
        {
            delete_vmi(&vmis, name, &v.uid).await?;
        }
        (Want::Stopped, Some(v)) if !v.deleting => {
            delete_vmi(&vmis, name, &v.uid).await?;
            tracing::info!(site = %ctx.site_name(site), "{}: stopped its VirtualMachineInstance", describe(vm));
            vmi_state = Some(VmiView {
                deleting: true,
                ..v.clone()
            });
        }
        _ => {}
    }
    let conditions = vm.data.pointer("/status/conditions");
    let (printable, ready, created, reason, message) = match &vmi_state {
        None if want == Want::Running => ("Starting", false, false, "VMINotExists", "VMI does not exist"),
        None => ("Stopped", false, false, "VMINotExists", "VMI does not exist"),
        Some(v) if v.deleting => ("Stopping", false, true, "GuestNotRunning", "VMI is being deleted"),
        Some(v) if v.unschedulable => (
            "ErrorUnschedulable",
            false,
            true,
            "GuestNotRunning",
            "Guest VM is not reported as running",
        ),
        Some(v) if v.phase == "Running" => ("Running", v.ready, true, "", ""),
        Some(v) if v.phase == "Succeeded" => ("Stopped", false, true, "GuestNotRunning", "VMI has stopped"),
        Some(v) if v.phase == "Failed" => ("CrashLoopBackOff", false, true, "GuestNotRunning", "VMI failed"),
        Some(_) => (
            "Starting",
            false,
            true,
            "GuestNotRunning",
            "Guest VM is not reported as running",
        ),
    };
    let mut desired = Map::new();
    desired.insert("printableStatus".into(), json!(printable));
    desired.insert("ready".into(), json!(ready));
    desired.insert("created".into(), json!(created));
    desired.insert(
        "conditions".into(),
        json!([condition(conditions, "Ready", ready, reason, message)]),
    );
    if let Some(generation) = vm.metadata.generation {
        desired.insert("observedGeneration".into(), json!(generation));
        desired.insert("desiredGeneration".into(), json!(generation));
    }
    let vms = VIRTUAL_MACHINE.namespaced(ctx.client(site), namespace);
    util::patch_status(&vms, vm, desired, StatusAt::Subresource).await?;
    Ok(())
}

async fn create_vmi(vmis: &Api<DynamicObject>, vm: &DynamicObject) -> Result<()> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let template = vm.data.pointer("/spec/template").cloned().unwrap_or_default();
    let mut vmi = VIRTUAL_MACHINE_INSTANCE.object(name);
    vmi.metadata.namespace = vm.metadata.namespace.clone();
    vmi.metadata.labels = template
        .pointer("/metadata/labels")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    vmi.metadata.annotations = template
        .pointer("/metadata/annotations")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    vmi.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: VIRTUAL_MACHINE.api_version(),
        kind: VIRTUAL_MACHINE.kind.into(),
        name: name.into(),
        uid: vm.metadata.uid.clone().context("VM without uid")?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    vmi.data = json!({
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": {"phase": "Pending"},
    });
    match vmis.create(&PostParams::default(), &vmi).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating VirtualMachineInstance for {}", describe(vm))),
    }
}

async fn delete_vmi(vmis: &Api<DynamicObject>, name: &str, uid: &str) -> Result<()> {
    let params = DeleteParams {
        preconditions: (!uid.is_empty()).then(|| kube::api::Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match vmis.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting VirtualMachineInstance {name}")),
    }
}

/// A power loss at a site: every guest stops at once. Running VMIs end `Failed` and their
/// launcher pods go, as a site's nodes would leave them; KubeVirt restarts per run strategy
/// once the site is back. Returns how many guests stopped.
pub(crate) async fn power_loss(ctx: &Ctx, site: usize) -> Result<usize> {
    let vmis = ctx.list(VIRTUAL_MACHINE_INSTANCE, site).await?.unwrap_or_default();
    let mut stopped = 0;
    for vmi in vmis.iter().filter(|v| {
        !matches!(str_at(&v.data, "/status/phase"), Some("Succeeded" | "Failed"))
            && v.metadata.deletion_timestamp.is_none()
    }) {
        let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
        let api = VIRTUAL_MACHINE_INSTANCE.namespaced(ctx.client(site), namespace);
        let mut desired = Map::new();
        desired.insert("phase".into(), json!("Failed"));
        desired.insert(
            "conditions".into(),
            json!([condition(
                None,
                "Ready",
                false,
                "PowerLoss",
                "the site lost power (coldsite site simulator)"
            )]),
        );
        desired.insert("interfaces".into(), Value::Null);
        util::patch_status(&api, vmi, desired, StatusAt::Object).await?;
        stopped += 1;
    }
    let pods: Vec<Pod> = ctx.list_typed(site).await?;
    for pod in pods.iter().filter(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubevirt.io"))
            .map(String::as_str)
            == Some("virt-launcher")
    }) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client(site), namespace);
        let gone = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &gone)
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(e).context("deleting a launcher pod"),
        }
    }
    Ok(stopped)
}
