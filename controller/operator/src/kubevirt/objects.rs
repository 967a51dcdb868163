//! Pure builders for the objects the KubeVirt fabric creates at sites: VolSync replication,
//! restored PVCs, recovered VirtualMachines. Names are deterministic, so creating again
//! finds the first one; labels carry the ProtectedVM and the run.

use std::collections::BTreeMap;

use coldsite_engine::fabric::{RecoveredNic, Recovery};
pub use coldsite_engine::names::dns_name;
use serde_json::{Map, Value, json};

use super::dynamic::str_at;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const PROTECTED_VM: &str = "coldsite.io/protected-vm";
pub const DISK: &str = "coldsite.io/disk";
pub const RUN_UID: &str = "coldsite.io/run-uid";
/// On a VirtualMachine: the uid of the run that last started it.
pub const STARTED_BY: &str = "coldsite.io/started-by-run";
pub const POINT: &str = "coldsite.io/recovery-point";
pub const APP_CONSISTENT: &str = "coldsite.io/app-consistent";
/// On an adopted point: the shape of the disk it copies, so a restore makes the same disk
/// even when the source site is gone.
pub const VOLUME_MODE: &str = "coldsite.io/volume-mode";
pub const ACCESS_MODES: &str = "coldsite.io/access-modes";
pub const CAPACITY: &str = "coldsite.io/capacity";
/// On a point kept before reprotect overwrote the disk: which run, and why.
pub const SAFETY: &str = "coldsite.io/safety";
pub const DO_NOT_DELETE: &str = "volsync.backube/do-not-delete";
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// The short form of a run UID that names the run's objects.
pub fn run_tag(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_lowercase()
}

pub fn replication_name(disk: &str) -> String {
    dns_name(&format!("coldsite-{disk}"))
}

/// The name of the Service and the Job VolSync makes for a ReplicationDestination's rsync-TLS
/// mover: its prefix and the destination's name, or the CRC-32 of the name when that is too
/// long (`internal/controller/utils/utils.go` of VolSync).
pub fn volsync_destination_mover(destination: &str) -> String {
    const PREFIX: &str = "volsync-rsync-tls-dst-";
    if PREFIX.len() + destination.len() <= 63 {
        format!("{PREFIX}{destination}")
    } else {
        format!("{PREFIX}{:08x}", crc32fast::hash(destination.as_bytes()))
    }
}

/// The temporary VolumeSnapshot VolSync cuts of a ReplicationSource's PVC for one sync
/// (`internal/controller/mover/rsynctls/mover.go` of VolSync: prefix, owner, direction).
pub fn volsync_source_snapshot(source: &str) -> String {
    format!("volsync-{source}-src")
}

/// The PVC a ReplicationDestination's rsync-TLS mover writes into: the one it was given, or
/// one VolSync makes (the same file of VolSync: prefix, owner, direction).
pub fn volsync_destination_pvc(destination: &Value) -> String {
    match destination
        .pointer("/spec/rsyncTLS/destinationPVC")
        .and_then(Value::as_str)
    {
        Some(given) => given.to_owned(),
        None => format!(
            "volsync-{}-dst",
            destination
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
    }
}

/// The annotation on a destination's PVC naming the VolumeSnapshot VolSync cuts of it after
/// a sync (`internal/controller/volumehandler/volumehandler.go` of VolSync).
pub const VOLSYNC_SNAPSHOT_NAME: &str = "volsync.backube/snapname";

pub fn rsync_secret_name(pvm: &str) -> String {
    dns_name(&format!("coldsite-{pvm}-rsync"))
}

/// Selects what coldsite labels for a ProtectedVM at a site: copies of VM manifests,
/// replication objects, recovery points.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}=coldsite,{PROTECTED_VM}")
}

/// The ConfigMap at the recovery site that keeps a copy of the source VM's manifest, so an
/// unplanned failover can recreate it while the primary is gone.
pub fn source_copy_name(pvm: &str) -> String {
    dns_name(&format!("coldsite-{pvm}-source"))
}

fn labels(pvm: &str, extra: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(MANAGED_BY.into(), json!("coldsite"));
    m.insert(PROTECTED_VM.into(), json!(pvm));
    for (k, v) in extra {
        m.insert((*k).into(), json!(v));
    }
    Value::Object(m)
}

/// The shape of a disk, carried from the source PVC to its copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskShape {
    pub capacity: String,
    pub access_modes: Vec<String>,
    /// `Filesystem` or `Block`.
    pub volume_mode: String,
}

impl DiskShape {
    /// The shape of a PVC: its bound capacity (else its request), access modes and volume
    /// mode. `Err` names what is missing.
    pub fn of_pvc(pvc: &Value) -> Result<Self, String> {
        let capacity = str_at(pvc, "/status/capacity/storage")
            .or_else(|| str_at(pvc, "/spec/resources/requests/storage"))
            .ok_or("it requests no storage size")?;
        let access_modes: Vec<String> = pvc
            .pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if access_modes.is_empty() {
            return Err("it has no access modes".into());
        }
        Ok(Self {
            capacity: capacity.to_owned(),
            access_modes,
            volume_mode: str_at(pvc, "/spec/volumeMode").unwrap_or("Filesystem").to_owned(),
        })
    }

    /// The annotations that record the shape on a recovery point.
    pub fn annotations(&self) -> Value {
        json!({
            CAPACITY: self.capacity,
            ACCESS_MODES: self.access_modes.join(","),
            VOLUME_MODE: self.volume_mode,
        })
    }

    /// The shape recorded on a recovery point.
    pub fn of_point(snapshot: &Value) -> Option<Self> {
        let annotation = |key: &str| snapshot.pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1")));
        let text = |key: &str| annotation(key).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            capacity: text(CAPACITY)?,
            access_modes: text(ACCESS_MODES)?.split(',').map(str::to_owned).collect(),
            volume_mode: text(VOLUME_MODE)?,
        })
    }
}

/// Where replication of one disk lands, and how its snapshots are made.
pub struct DestinationSpec<'a> {
    pub namespace: &'a str,
    pub pvm: &'a str,
    pub disk: &'a str,
    pub shape: &'a DiskShape,
    pub storage_class: Option<&'a str>,
    pub snapshot_class: Option<&'a str>,
    /// How the other site's movers reach this destination.
    pub service: &'a coldsite_api::site::SiteReplication,
    /// Reuse an existing PVC as the destination (reprotect), so only changes move.
    pub destination_pvc: Option<&'a str>,
    /// Pause until this manual trigger (the final sync of a planned action).
    pub manual: Option<&'a str>,
}

pub fn replication_destination(d: &DestinationSpec<'_>) -> Value {
    let mut rsync = json!({
        "copyMethod": "Snapshot",
        "capacity": d.shape.capacity,
        "accessModes": d.shape.access_modes,
        "volumeMode": d.shape.volume_mode,
        "keySecret": rsync_secret_name(d.pvm),
        "serviceType": d.service.service_type.as_str(),
    });
    if !d.service.service_annotations.is_empty() {
        rsync["serviceAnnotations"] = json!(d.service.service_annotations);
    }
    if let Some(sc) = d.storage_class {
        rsync["storageClassName"] = json!(sc);
    }
    if let Some(vsc) = d.snapshot_class {
        rsync["volumeSnapshotClassName"] = json!(vsc);
    }
    if let Some(pvc) = d.destination_pvc {
        rsync["destinationPVC"] = json!(pvc);
    }
    let mut spec = json!({ "rsyncTLS": rsync });
    if let Some(m) = d.manual {
        spec["trigger"] = json!({ "manual": m });
    }
    json!({
        "apiVersion": "volsync.backube/v1alpha1",
        "kind": "ReplicationDestination",
        "metadata": {
            "name": replication_name(d.disk),
            "namespace": d.namespace,
            "labels": labels(d.pvm, &[(DISK, d.disk)]),
        },
        "spec": spec,
    })
}

/// The sending side of one disk.
pub struct SourceSpec<'a> {
    pub namespace: &'a str,
    pub pvm: &'a str,
    pub disk: &'a str,
    pub address: &'a str,
    pub schedule: Option<&'a str>,
    pub manual: Option<&'a str>,
    pub storage_class: Option<&'a str>,
    pub snapshot_class: Option<&'a str>,
    /// Copy this claim as it is (`copyMethod: Direct`) instead of a snapshot VolSync cuts of
    /// the disk: the disk's [cut claim](cut_claim_name) from a group snapshot.
    pub cut: Option<&'a str>,
}

pub fn replication_source(s: &SourceSpec<'_>) -> Value {
    let mut rsync = json!({
        "keySecret": rsync_secret_name(s.pvm),
        "address": s.address,
        "copyMethod": if s.cut.is_some() { "Direct" } else { "Snapshot" },
    });
    if let Some(sc) = s.storage_class {
        rsync["storageClassName"] = json!(sc);
    }
    if let Some(vsc) = s.snapshot_class {
        rsync["volumeSnapshotClassName"] = json!(vsc);
    }
    let trigger = match (s.manual, s.schedule) {
        (Some(m), _) => json!({ "manual": m }),
        (None, Some(cron)) => json!({ "schedule": cron }),
        (None, None) => json!({}),
    };
    json!({
        "apiVersion": "volsync.backube/v1alpha1",
        "kind": "ReplicationSource",
        "metadata": {
            "name": replication_name(s.disk),
            "namespace": s.namespace,
            "labels": labels(s.pvm, &[(DISK, s.disk)]),
        },
        "spec": {
            "sourcePVC": s.cut.unwrap_or(s.disk),
            "trigger": trigger,
            "rsyncTLS": rsync,
        },
    })
}

/// The pre-shared key VolSync's rsync-TLS movers use, in the format they read.
pub fn rsync_secret(namespace: &str, pvm: &str, psk_hex: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": rsync_secret_name(pvm),
            "namespace": namespace,
            "labels": labels(pvm, &[]),
        },
        "type": "Opaque",
        "stringData": { "psk.txt": format!("volsync:{psk_hex}") },
    })
}

/// A disk restored from a snapshot for a run.
pub struct RestoredPvc<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub pvm: &'a str,
    pub run_uid: &'a str,
    pub snapshot: &'a str,
    pub shape: &'a DiskShape,
    pub storage_class: Option<&'a str>,
    pub point: &'a str,
}

/// The spec of a claim of `shape` restored from `snapshot`.
fn restore_spec(shape: &DiskShape, snapshot: &str, storage_class: Option<&str>) -> Value {
    let mut spec = json!({
        "accessModes": shape.access_modes,
        "volumeMode": shape.volume_mode,
        "resources": { "requests": { "storage": shape.capacity } },
        "dataSource": { "apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": snapshot },
    });
    if let Some(sc) = storage_class {
        spec["storageClassName"] = json!(sc);
    }
    spec
}

pub fn restored_pvc(p: &RestoredPvc<'_>) -> Value {
    let spec = restore_spec(p.shape, p.snapshot, p.storage_class);
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": labels(p.pvm, &[(RUN_UID, p.run_uid)]),
            "annotations": { POINT: p.point },
        },
        "spec": spec,
    })
}

/// On a claim restored from a group snapshot's member: which disk it is the cut of.
pub const CUT_OF: &str = "coldsite.io/cut-of";
/// On a cut claim, a source copying it and a point made from it: the group snapshot that cut
/// it, so points of one instant are told from others and a stale cut is never copied.
pub const GROUP_SNAPSHOT: &str = "coldsite.io/group-snapshot";

/// The claim a disk's group snapshot member is restored into for VolSync to copy.
pub fn cut_claim_name(disk: &str) -> String {
    dns_name(&format!("{disk}-coldsite-cut"))
}

/// What a disk's cut claim is made from.
pub struct CutClaim<'a> {
    pub namespace: &'a str,
    pub pvm: &'a str,
    pub disk: &'a str,
    /// The group snapshot and its member VolumeSnapshot of this disk.
    pub group: &'a str,
    pub member: &'a str,
    /// The disk's own claim.
    pub source: &'a Value,
}

/// The claim holding a disk as a group snapshot cut it: restored from the member snapshot,
/// in the disk's own shape and storage class, labelled so unprotect finds it.
pub fn cut_claim(c: &CutClaim<'_>) -> Result<Value, String> {
    let CutClaim {
        namespace,
        pvm,
        disk,
        group,
        member,
        source,
    } = *c;
    let shape = DiskShape::of_pvc(source)?;
    let spec = restore_spec(&shape, member, str_at(source, "/spec/storageClassName"));
    Ok(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": cut_claim_name(disk),
            "namespace": namespace,
            "labels": labels(pvm, &[(CUT_OF, disk)]),
            "annotations": { GROUP_SNAPSHOT: group },
        },
        "spec": spec,
    }))
}

/// A copy of a snapshot in another namespace, for test failovers into the test namespace:
/// a pre-provisioned VolumeSnapshotContent on the same storage snapshot, and a
/// VolumeSnapshot bound to it.
pub struct SnapshotCopy<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub pvm: &'a str,
    pub run_uid: &'a str,
    pub driver: &'a str,
    pub handle: &'a str,
    pub class: Option<&'a str>,
    /// The mode of the volume the snapshot was taken of, which a restore must match.
    pub volume_mode: &'a str,
}

pub fn snapshot_copy(c: &SnapshotCopy<'_>) -> (Value, Value) {
    let SnapshotCopy {
        namespace,
        name,
        pvm,
        run_uid,
        driver,
        handle,
        class,
        volume_mode,
    } = *c;
    let content_name = dns_name(&format!("coldsite-{}-{name}", run_tag(run_uid)));
    let mut content = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": { "name": content_name, "labels": labels(pvm, &[(RUN_UID, run_uid)]) },
        "spec": {
            "deletionPolicy": "Retain",
            "driver": driver,
            "source": { "snapshotHandle": handle },
            "sourceVolumeMode": volume_mode,
            "volumeSnapshotRef": { "namespace": namespace, "name": name },
        },
    });
    if let Some(c) = class {
        content["spec"]["volumeSnapshotClassName"] = json!(c);
    }
    let snapshot = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": { "name": name, "namespace": namespace, "labels": labels(pvm, &[(RUN_UID, run_uid)]) },
        "spec": { "source": { "volumeSnapshotContentName": content_name } },
    });
    (content, snapshot)
}

/// A snapshot of a disk kept before reprotect writes over it.
pub struct SafetySnapshot<'a> {
    pub namespace: &'a str,
    pub pvm: &'a str,
    pub disk: &'a str,
    pub run_uid: &'a str,
    pub class: Option<&'a str>,
    pub shape: &'a DiskShape,
    /// When it is taken, as the point's time.
    pub taken: &'a str,
}

/// A recovery point of the disk as it is, labelled and annotated like the points replication
/// makes, so it lists and restores like them.
pub fn safety_snapshot(s: &SafetySnapshot<'_>) -> Value {
    let mut annotations = s.shape.annotations();
    annotations[POINT] = json!(s.taken);
    annotations[APP_CONSISTENT] = json!("false");
    annotations[SAFETY] = json!(format!("kept before reprotect {} replicated over the disk", s.run_uid));
    let mut spec = json!({"source": {"persistentVolumeClaimName": s.disk}});
    if let Some(class) = s.class {
        spec["volumeSnapshotClassName"] = json!(class);
    }
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": dns_name(&format!("coldsite-safety-{}-{}", run_tag(s.run_uid), s.disk)),
            "namespace": s.namespace,
            "labels": labels(s.pvm, &[(DISK, s.disk)]),
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// Sets a VM's run strategy. KubeVirt refuses `runStrategy` beside the deprecated
/// `spec.running`, which many VMs still use, so the patch removes it.
pub fn run_strategy_patch(strategy: &str) -> Value {
    json!({"spec": {"running": null, "runStrategy": strategy}})
}

/// Starts a VM for the run `run_uid`, marked as that run's: fencing spares it while the run
/// holds the VM, and halts any other copy there.
pub fn started_patch(run_uid: &str) -> Value {
    let mut patch = run_strategy_patch("Always");
    patch["metadata"] = json!({"annotations": {STARTED_BY: run_uid}});
    patch
}

/// The run that made this object (its [`RUN_UID`] label).
pub fn made_by_run(object: &Value) -> Option<&str> {
    object.pointer("/metadata/labels")?.get(RUN_UID)?.as_str()
}

/// The run that started this VM, as [`started_patch`] marked it.
pub fn started_by(vm: &Value) -> Option<&str> {
    vm.pointer("/metadata/annotations")?.get(STARTED_BY)?.as_str()
}

/// The recovered VirtualMachine, from the source's manifest: halted, disks on the restored
/// PVCs, networks mapped, MACs kept, cloud-init network data rewritten with the new
/// addresses, CPU and memory overridden if asked.
pub fn recovered_vm(source: &Value, req: &Recovery<'_>) -> Result<Value, String> {
    let vm = req.vm;
    let mut spec = source
        .get("spec")
        .cloned()
        .ok_or("the source VirtualMachine has no spec")?;
    let obj = spec
        .as_object_mut()
        .ok_or("the source VirtualMachine's spec is not an object")?;
    obj.remove("running");
    obj.remove("dataVolumeTemplates");
    obj.insert("runStrategy".into(), json!("Halted"));
    let template = spec
        .pointer_mut("/template/spec")
        .and_then(Value::as_object_mut)
        .ok_or("the source VirtualMachine has no spec.template.spec")?;
    restored_volumes(template, req.network_data);
    mapped_networks(template, req.nics);
    if let Some(cpu) = vm.cpu {
        template.entry("domain").or_insert_with(|| json!({}))["cpu"]["cores"] = json!(cpu);
    }
    if let Some(memory) = &vm.memory {
        let domain = template.entry("domain").or_insert_with(|| json!({}));
        domain["memory"]["guest"] = json!(memory);
        if domain.pointer("/resources/requests/memory").is_some() {
            domain["resources"]["requests"]["memory"] = json!(memory);
        }
    }
    let mut labels = source.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
    labels[MANAGED_BY] = json!("coldsite");
    labels[PROTECTED_VM] = json!(vm.name);
    labels[RUN_UID] = json!(req.run.uid);
    Ok(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": vm.vm_name,
            "namespace": req.namespace,
            "labels": labels,
            "annotations": {
                "coldsite.io/recovered-from": format!("{}/{}/{}", req.source.name, vm.vm_namespace, vm.vm_name),
                "coldsite.io/run": req.run.name,
            },
        },
        "spec": spec,
    }))
}

/// A recovered VM's volumes: each disk the claim restored under its name (a DataVolume
/// becomes that claim: the data is already there; a claim keeps its own settings, such as
/// `readOnly`), and cloud-init's network data the one for the target site's addresses.
fn restored_volumes(template: &mut Map<String, Value>, network_data: &str) {
    let Some(volumes) = template.get_mut("volumes").and_then(Value::as_array_mut) else {
        return;
    };
    for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(Value::Object(dv)) = v.remove("dataVolume") {
            let mut claim = Map::new();
            claim.insert("claimName".into(), dv.get("name").cloned().unwrap_or_default());
            if let Some(h) = dv.get("hotpluggable") {
                claim.insert("hotpluggable".into(), h.clone());
            }
            v.insert("persistentVolumeClaim".into(), Value::Object(claim));
        }
        for source in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
            if let Some(ci) = v.get_mut(source).and_then(Value::as_object_mut) {
                ci.remove("networkDataBase64");
                ci.remove("networkDataSecretRef");
                ci.insert("networkData".into(), json!(network_data));
            }
        }
    }
}

/// A recovered VM's networks, each on the target site's network its mapping names (the pod
/// network, or a Multus one), and its interfaces keeping their MACs.
fn mapped_networks(template: &mut Map<String, Value>, nics: &[RecoveredNic]) {
    let mapped: BTreeMap<&str, &str> = nics.iter().map(|n| (n.name.as_str(), n.network.as_str())).collect();
    let networks = template.get_mut("networks").and_then(Value::as_array_mut);
    for n in networks.into_iter().flatten() {
        let name = n.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some(target) = mapped.get(name).copied() else {
            continue;
        };
        let Some(o) = n.as_object_mut() else { continue };
        o.remove("pod");
        o.remove("multus");
        if target == "pod" {
            o.insert("pod".into(), json!({}));
        } else {
            o.insert("multus".into(), json!({ "networkName": target }));
        }
    }
    let interfaces = template
        .get_mut("domain")
        .and_then(|d| d.get_mut("devices"))
        .and_then(|d| d.get_mut("interfaces"))
        .and_then(Value::as_array_mut);
    for i in interfaces.into_iter().flatten() {
        let name = i.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(mac) = nics.iter().find(|n| n.name == name).and_then(|n| n.mac.clone())
            && i.get("macAddress").is_none()
        {
            i["macAddress"] = json!(mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_vm_runs_on_the_restored_claims_and_the_mapped_networks() {
        let mut template = json!({
            "volumes": [
                {"name": "root", "dataVolume": {"name": "db01-root"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "db01-data", "readOnly": false}},
                {"name": "iso", "persistentVolumeClaim": {"claimName": "db01-iso", "readOnly": true}},
                {"name": "extra", "dataVolume": {"name": "db01-extra", "hotpluggable": true}},
                {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config", "networkDataBase64": "b2xk"}},
            ],
            "networks": [{"name": "lan", "multus": {"networkName": "hq/lan"}}, {"name": "mgmt", "pod": {}},
                         {"name": "other", "pod": {}}],
            "domain": {"devices": {"interfaces": [{"name": "lan", "bridge": {}},
                                                  {"name": "mgmt", "masquerade": {}, "macAddress": "02:00:00:00:00:09"}]}},
        });
        let nic = |name: &str, network: &str, mac: &str| RecoveredNic {
            name: name.into(),
            mac: Some(mac.into()),
            network: network.into(),
            plan: coldsite_engine::reip::NicPlan::dhcp(name),
        };
        let nics = [
            nic("lan", "dr/lan", "02:00:00:00:00:01"),
            nic("mgmt", "pod", "02:00:00:00:00:02"),
        ];
        let spec = template.as_object_mut().expect("an object");
        restored_volumes(spec, "version: 2");
        mapped_networks(spec, &nics);
        assert_eq!(
            template["volumes"],
            json!([
                {"name": "root", "persistentVolumeClaim": {"claimName": "db01-root"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "db01-data", "readOnly": false}},
                {"name": "iso", "persistentVolumeClaim": {"claimName": "db01-iso", "readOnly": true}},
                {"name": "extra", "persistentVolumeClaim": {"claimName": "db01-extra", "hotpluggable": true}},
                {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config", "networkData": "version: 2"}},
            ])
        );
        // Each mapped network moves; one the mapping does not name stays as it was.
        assert_eq!(
            template["networks"],
            json!([{"name": "lan", "multus": {"networkName": "dr/lan"}}, {"name": "mgmt", "pod": {}},
                   {"name": "other", "pod": {}}])
        );
        // A MAC the VM sets itself is kept.
        let macs: Vec<&str> = template["domain"]["devices"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["macAddress"].as_str())
            .collect();
        assert_eq!(macs, ["02:00:00:00:00:01", "02:00:00:00:00:09"]);
    }

    #[test]
    fn volsync_names_its_destination_service_as_upstream_does() {
        assert_eq!(
            volsync_destination_mover("coldsite-dc01-system"),
            "volsync-rsync-tls-dst-coldsite-dc01-system"
        );
        let long = volsync_destination_mover(&"d".repeat(50));
        assert_eq!(long.len(), "volsync-rsync-tls-dst-".len() + 8, "{long}");
    }

    #[test]
    fn a_destination_writes_into_the_pvc_it_was_given_else_one_volsync_names() {
        let made = json!({"metadata": {"name": "coldsite-disk"}, "spec": {"rsyncTLS": {}}});
        assert_eq!(volsync_destination_pvc(&made), "volsync-coldsite-disk-dst");
        let given = json!({"metadata": {"name": "coldsite-disk"}, "spec": {"rsyncTLS": {"destinationPVC": "disk"}}});
        assert_eq!(volsync_destination_pvc(&given), "disk");
    }

    #[test]
    fn a_disk_keeps_its_shape_from_source_to_point() {
        let pvc = json!({
            "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block", "resources": {"requests": {"storage": "20Gi"}}},
            "status": {"capacity": {"storage": "21Gi"}},
        });
        let shape = DiskShape::of_pvc(&pvc).unwrap();
        assert_eq!(
            shape,
            DiskShape {
                capacity: "21Gi".into(),
                access_modes: vec!["ReadWriteMany".into()],
                volume_mode: "Block".into()
            }
        );
        let point = json!({"metadata": {"annotations": shape.annotations()}});
        assert_eq!(DiskShape::of_point(&point), Some(shape.clone()));
        let rd = replication_destination(&DestinationSpec {
            namespace: "ns",
            pvm: "dc01",
            disk: "dc01-system",
            shape: &shape,
            storage_class: None,
            snapshot_class: None,
            service: &coldsite_api::site::SiteReplication::default(),
            destination_pvc: None,
            manual: None,
        });
        assert_eq!(rd["spec"]["rsyncTLS"]["volumeMode"], "Block");
        assert_eq!(rd["spec"]["rsyncTLS"]["accessModes"], json!(["ReadWriteMany"]));
        assert_eq!(rd["spec"]["rsyncTLS"]["serviceType"], "LoadBalancer");
        let no_size = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        assert!(DiskShape::of_pvc(&no_size).unwrap_err().contains("storage size"));
    }

    #[test]
    fn source_follows_a_manual_trigger_over_its_schedule() {
        let s = replication_source(&SourceSpec {
            namespace: "ns",
            pvm: "dc01",
            disk: "dc01-system",
            address: "addr",
            schedule: Some("*/7 * * * *"),
            manual: Some("run-1"),
            storage_class: None,
            snapshot_class: Some("snap"),
            cut: None,
        });
        assert_eq!(s["spec"]["trigger"], json!({"manual": "run-1"}));
        assert_eq!(s["spec"]["rsyncTLS"]["copyMethod"], "Snapshot");
        assert_eq!(s["spec"]["rsyncTLS"]["keySecret"], "coldsite-dc01-rsync");
    }

    #[test]
    fn a_disk_cut_as_a_group_is_copied_as_it_is_from_its_cut_claim() {
        let source = json!({"spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                                     "storageClassName": "fast",
                                     "resources": {"requests": {"storage": "20Gi"}}}});
        let claim = cut_claim(&CutClaim {
            namespace: "ns",
            pvm: "db",
            disk: "db-log",
            group: "coldsite-db-1800000000",
            member: "snapshot-abc",
            source: &source,
        })
        .unwrap();
        assert_eq!(claim["metadata"]["name"], "db-log-coldsite-cut");
        assert_eq!(claim["metadata"]["labels"][CUT_OF], "db-log");
        assert_eq!(
            claim["metadata"]["annotations"][GROUP_SNAPSHOT],
            "coldsite-db-1800000000"
        );
        assert_eq!(claim["spec"]["dataSource"]["name"], "snapshot-abc");
        assert_eq!(claim["spec"]["volumeMode"], "Block");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        let s = replication_source(&SourceSpec {
            namespace: "ns",
            pvm: "db",
            disk: "db-log",
            address: "addr",
            schedule: None,
            manual: Some("grp1800000000-7"),
            storage_class: None,
            snapshot_class: None,
            cut: Some("db-log-coldsite-cut"),
        });
        assert_eq!(s["spec"]["sourcePVC"], "db-log-coldsite-cut");
        assert_eq!(s["spec"]["rsyncTLS"]["copyMethod"], "Direct");
        assert_eq!(s["spec"]["trigger"], json!({"manual": "grp1800000000-7"}));
    }
}
