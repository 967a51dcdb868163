//! The simulated CSI driver [`DRIVER`] and its controller sidecars, which need a storage
//! backend and so cannot run here. The real snapshot-controller and kube-controller-manager's
//! PV binder and protection controllers do the rest.
//!
//! - **external-provisioner** (followed: `pkg/controller/controller.go` of
//!   `github.com/kubernetes-csi/external-provisioner/v5`): a claim annotated
//!   `volume.kubernetes.io/storage-provisioner: <DRIVER>` without a volume gets a PV
//!   `pvc-<claim uid>` with `spec.csi`, a `claimRef` with the claim's uid, its class's
//!   reclaim policy, the claim's access modes and volume mode, and the finalizer
//!   `external-provisioner.volume.kubernetes.io/finalizer`; the PV binder binds them. A
//!   claim restoring from a VolumeSnapshot waits until the snapshot is bound and
//!   `readyToUse`, its content is of this driver, and the claim asks for at least its
//!   `restoreSize`, and is refused (it stays Pending, with a log line) when its volume mode
//!   differs from the content's `sourceVolumeMode`. The volume starts with the snapshot's
//!   data (or a cloned claim's, or none). A `Released` PV with policy `Delete` is deleted.
//! - **csi-snapshotter** (followed: `pkg/sidecar-controller` of
//!   `github.com/kubernetes-csi/external-snapshotter/v8`): a VolumeSnapshotContent of this
//!   driver with a `volumeHandle` and no status gets `snapshotHandle` (carrying the volume's
//!   data at that moment, see [`disk`](super::disk), marked quiesced when the running guest
//!   that has the volume is frozen, see [`virt_api`]), `creationTime` in
//!   nanoseconds and
//!   `restoreSize`, first with `readyToUse: false`, then after
//!   [`SimConfig::snapshot_ready_delay`](super::SimConfig::snapshot_ready_delay) (or the
//!   site's `slow_snapshots` fault) with `readyToUse: true`; a pre-provisioned content
//!   (`snapshotHandle`) is ready at once. A content being deleted that the snapshot-controller
//!   marked `volumesnapshot-being-deleted` loses its
//!   `volumesnapshotcontent-bound-protection` finalizer.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PostParams};
use serde_json::{Map, Value, json};

use super::disk::{DATA_ANNOTATION, DiskData};
use super::resources::{Kind, VIRTUAL_MACHINE_INSTANCE, VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CONTENT};
use super::util::{self, StatusAt, describe, nonempty_str_at, str_at};
use super::{Ctx, SiteState, each, kubevirt, virt_api};

/// The simulated CSI driver's name: the provisioner of the sites' StorageClasses and the
/// driver of their VolumeSnapshotClasses.
pub const DRIVER: &str = "sim.csi.coldsite.io";
const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const PV_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
const BEING_DELETED: &str = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted";
const CONTENT_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
/// On a VolumeSnapshotContent the snapshot-controller made for a group's member.
const GROUP_MEMBER: &str = "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle";
const ALLOW_MODE_CHANGE: &str = "snapshot.storage.kubernetes.io/allow-volume-mode-change";

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    provision(ctx, site, state).await?;
    delete_released(ctx, site, state).await?;
    snapshot(ctx, site, state).await
}

// ---- external-provisioner --------------------------------------------------------------

async fn provision(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let claims = ctx.cache(site).claims.all();
    let ours = claims.iter().map(AsRef::as_ref).filter(|c| {
        c.metadata.deletion_timestamp.is_none()
            && c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none_or(str::is_empty)
            && c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROVISIONER_ANNOTATION))
                .map(String::as_str)
                == Some(DRIVER)
    });
    let volumes = &ctx.cache(site).volumes;
    let pv_name = |claim: &PersistentVolumeClaim| format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default());
    // One made a moment ago and not cached yet is refused as existing.
    let unprovisioned: Vec<_> = ours
        .filter(|claim| volumes.get(None, &pv_name(claim)).is_none())
        .collect();
    each(state, unprovisioned, |claim| async move {
        let key = format!(
            "{}/{}",
            claim.metadata.namespace.as_deref().unwrap_or_default(),
            claim.metadata.name.as_deref().unwrap_or_default()
        );
        match initial_data(ctx, site, claim).await {
            Ok(Some(data)) => create_volume(ctx, site, claim, &pv_name(claim), &data)
                .await
                .with_context(|| format!("provisioning PVC {key}")),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(site = %ctx.site_name(site), "PVC {key} not provisioned yet: {e:#}");
                Ok(())
            }
        }
    })
    .await;
    Ok(())
}

/// The data a new volume starts with; `None` while its source is not ready (the real
/// provisioner retries such claims), an error for a source it refuses. A snapshot source is
/// read from the cache: the data it holds is in its content's handle, which never changes.
async fn initial_data(ctx: &Ctx, site: usize, claim: &PersistentVolumeClaim) -> Result<Option<DiskData>> {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let spec = claim.spec.clone().unwrap_or_default();
    let Some(source) = spec.data_source.as_ref() else {
        return Ok(Some(DiskData::default()));
    };
    let cache = ctx.cache(site);
    let cached =
        |kind: Kind, namespace: Option<&str>, name: &str| cache.custom(kind).and_then(|c| c.get(namespace, name));
    match (source.api_group.as_deref().unwrap_or_default(), source.kind.as_str()) {
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => {
            let Some(snapshot) = cached(VOLUME_SNAPSHOT, Some(namespace), &source.name)
                .filter(|s| s.metadata.deletion_timestamp.is_none())
            else {
                bail!("snapshot {} not found", source.name);
            };
            if snapshot.data.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
                return Ok(None);
            }
            let Some(content_name) = nonempty_str_at(&snapshot.data, "/status/boundVolumeSnapshotContentName") else {
                return Ok(None);
            };
            let Some(content) = cached(VOLUME_SNAPSHOT_CONTENT, None, content_name) else {
                return Ok(None);
            };
            restore_checks(&snapshot, &content, &spec)?;
            let handle = nonempty_str_at(&content.data, "/status/snapshotHandle")
                .with_context(|| format!("snapshot {} has no handle", source.name))?;
            DiskData::from_snapshot_handle(handle).map(Some)
        }
        ("", "PersistentVolumeClaim") => super::disk::read(&ctx.client(site), namespace, &source.name).await,
        (group, kind) => bail!("no populator for {kind}.{group} here"),
    }
}

/// external-provisioner's `getSnapshotSource` checks that a test could trip.
fn restore_checks(
    snapshot: &DynamicObject,
    content: &DynamicObject,
    claim: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec,
) -> Result<()> {
    if str_at(&content.data, "/spec/driver") != Some(DRIVER) {
        bail!("snapshot content {} is not of driver {DRIVER}", describe(content));
    }
    let request = claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| util::quantity_bytes(&q.0))
        .context("the claim requests no storage")?;
    let restore = str_at(&snapshot.data, "/status/restoreSize").and_then(util::quantity_bytes);
    if let Some(restore) = restore.filter(|r| request < *r) {
        bail!("requested volume size {request} is less than the size {restore} for the source snapshot");
    }
    let source_mode = str_at(&content.data, "/spec/sourceVolumeMode");
    let wanted = claim.volume_mode.as_deref();
    let allowed = content
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_MODE_CHANGE))
        .is_some_and(|v| v == "true");
    if let (Some(from), Some(to)) = (source_mode, wanted)
        && from != to
        && !allowed
    {
        bail!("requested volume mode {to} differs from the snapshot's source volume mode {from}");
    }
    Ok(())
}

async fn create_volume(
    ctx: &Ctx,
    site: usize,
    claim: &PersistentVolumeClaim,
    name: &str,
    data: &DiskData,
) -> Result<()> {
    let spec = claim.spec.clone().unwrap_or_default();
    let class_name = spec.storage_class_name.clone().unwrap_or_default();
    let classes: Api<StorageClass> = Api::all(ctx.client(site));
    let class = classes.get_opt(&class_name).await?;
    let policy = class
        .and_then(|c| c.reclaim_policy)
        .unwrap_or_else(|| "Delete".to_owned());
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: DRIVER, DATA_ANNOTATION: serde_json::to_string(data)?},
            "finalizers": [PV_FINALIZER],
        },
        "spec": {
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "capacity": {"storage": spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage"))},
            "csi": {"driver": DRIVER, "volumeHandle": format!("sim-volume-{}", claim.metadata.uid.as_deref().unwrap_or_default())},
            "persistentVolumeReclaimPolicy": policy,
            "storageClassName": class_name,
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": claim.metadata.uid,
            },
        },
    });
    if let Some(mode) = &spec.volume_mode {
        pv["spec"]["volumeMode"] = json!(mode);
    }
    let pv: PersistentVolume = serde_json::from_value(pv)?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client(site));
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::debug!(site = %ctx.site_name(site), "provisioned {name} for PVC {:?}", claim.metadata.name);
            Ok(())
        }
        Err(e) if util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating PV {name}")),
    }
}

/// Released volumes of this driver with policy Delete: the backend volume goes, then the
/// PV and the provisioner's finalizer.
async fn delete_released(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client(site));
    let all = ctx.cache(site).volumes.all();
    let released: Vec<_> = all
        .iter()
        .map(AsRef::as_ref)
        .filter(|pv| {
            let ours = pv
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROVISIONED_BY))
                .map(String::as_str)
                == Some(DRIVER);
            let claim_ns = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.namespace.clone());
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            let delete = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                == Some("Delete");
            ours && released && delete && claim_ns.is_some_and(|ns| ctx.in_scope(&ns))
        })
        .collect();
    each(state, released, |pv| {
        let pvs = &pvs;
        async move {
            let name = pv.metadata.name.as_deref().unwrap_or_default();
            delete_volume(pvs, pv)
                .await
                .with_context(|| format!("deleting PV {name}"))
        }
    })
    .await;
    Ok(())
}

async fn delete_volume(pvs: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<()> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_none() {
        match pvs.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    remove_finalizer(pvs, &pv.metadata, PV_FINALIZER).await
}

/// Drops one finalizer, guarded by the resourceVersion read.
pub(super) async fn remove_finalizer<K>(api: &Api<K>, meta: &kube::api::ObjectMeta, finalizer: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let current = meta.finalizers.clone().unwrap_or_default();
    if !current.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest: Vec<&String> = current.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"resourceVersion": meta.resource_version, "finalizers": rest}});
    let name = meta.name.as_deref().unwrap_or_default();
    match api.patch(name, &util::params(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing finalizer {finalizer}")),
    }
}

// ---- csi-snapshotter -------------------------------------------------------------------

async fn snapshot(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let Some(contents) = ctx.cached(VOLUME_SNAPSHOT_CONTENT, site) else {
        return Ok(());
    };
    let api = &VOLUME_SNAPSHOT_CONTENT.all(ctx.client(site));
    let ours: Vec<_> = contents
        .iter()
        .map(AsRef::as_ref)
        .filter(|c| {
            str_at(&c.data, "/spec/driver") == Some(DRIVER)
                && str_at(&c.data, "/spec/volumeSnapshotRef/namespace").is_some_and(|ns| ctx.in_scope(ns))
        })
        .collect();
    each(state, ours, |content| async move {
        let result = if content.metadata.deletion_timestamp.is_none() {
            cut(ctx, site, state, api, content).await
        } else if content
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(BEING_DELETED))
        {
            remove_finalizer(api, &content.metadata, CONTENT_FINALIZER).await
        } else {
            Ok(())
        };
        result.with_context(|| describe(content))
    })
    .await;
    Ok(())
}

/// Every PV of a site by its CSI volume handle, from one fresh LIST: one etcd revision, so
/// one instant of all their data.
pub(super) async fn volumes_by_handle(ctx: &Ctx, site: usize) -> Result<HashMap<String, PersistentVolume>> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client(site));
    Ok(pvs
        .list(&Default::default())
        .await
        .context("listing PVs")?
        .items
        .into_iter()
        .filter_map(|pv| {
            let handle = pv.spec.as_ref()?.csi.as_ref()?.volume_handle.clone();
            Some((handle, pv))
        })
        .collect())
}

/// Takes the snapshot a content asks for, or reports a pre-provisioned one.
async fn cut(
    ctx: &Ctx,
    site: usize,
    state: &SiteState,
    api: &Api<DynamicObject>,
    content: &DynamicObject,
) -> Result<()> {
    if content.data.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let uid = content.metadata.uid.clone().unwrap_or_default();
    let mut status = Map::new();
    if let Some(handle) = nonempty_str_at(&content.data, "/spec/source/snapshotHandle") {
        // Pre-provisioned: the backend snapshot exists; report it as the sidecar's
        // ListSnapshots call would.
        DiskData::from_snapshot_handle(handle)?;
        status.insert("snapshotHandle".into(), json!(handle));
        status.insert("readyToUse".into(), json!(true));
        status.insert("creationTime".into(), json!(now_nanos()));
        return util::patch_status(api, content, status, StatusAt::Subresource)
            .await
            .map(|_| ());
    }
    let Some(volume_handle) = nonempty_str_at(&content.data, "/spec/source/volumeHandle") else {
        return Ok(());
    };
    if content.data.pointer("/status/snapshotHandle").is_none() {
        if is_group_member(content) {
            // Cut with its group; the snapshot-controller fills in its status.
            return Ok(());
        }
        let pv = volume(ctx, site, volume_handle).await?;
        if queued(ctx, site, state, &pv, &uid) {
            return Ok(());
        }
        let mut data = DiskData::of_pv(&pv)?;
        if let Some(frozen) = guest_frozen(ctx, site, &pv).await? {
            data.quiesced = frozen;
        }
        status.insert("snapshotHandle".into(), json!(data.snapshot_handle(&uid)));
        status.insert("readyToUse".into(), json!(false));
        status.insert("creationTime".into(), json!(now_nanos()));
        if let Some(bytes) = capacity_bytes(&pv) {
            status.insert("restoreSize".into(), json!(bytes));
        }
        util::patch_status(api, content, status, StatusAt::Subresource).await?;
        state.since(&format!("snapshot:{uid}"));
        return Ok(());
    }
    if state.since(&format!("snapshot:{uid}")) >= snapshot_ready_delay(ctx, site) {
        status.insert("readyToUse".into(), json!(true));
        status.insert("error".into(), Value::Null);
        util::patch_status(api, content, status, StatusAt::Subresource).await?;
    }
    Ok(())
}

/// The PV of a volume handle, read fresh: its data is what the snapshot holds.
async fn volume(ctx: &Ctx, site: usize, handle: &str) -> Result<PersistentVolume> {
    let cached = ctx.cache(site).volumes.matching(|pv| {
        pv.spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .is_some_and(|c| c.volume_handle == handle)
    });
    let name = cached
        .first()
        .and_then(|pv| pv.metadata.name.clone())
        .with_context(|| format!("volume {handle} not found"))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client(site));
    pvs.get(&name).await.with_context(|| format!("reading PV {name}"))
}

/// Whether the snapshot-controller made this content for a member of a VolumeGroupSnapshot.
fn is_group_member(content: &DynamicObject) -> bool {
    content
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(GROUP_MEMBER))
}

/// How long a cut snapshot takes to become ready at a site.
/// Whether a snapshot of this volume still waits in the backend's queue (the
/// `queued_snapshots` fault of its claim).
fn queued(ctx: &Ctx, site: usize, state: &SiteState, pv: &PersistentVolume, uid: &str) -> bool {
    let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let (namespace, name) = claim
        .map(|c| {
            (
                c.namespace.clone().unwrap_or_default(),
                c.name.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    ctx.faults()
        .queued_snapshots(ctx.site_name(site), &namespace, &name)
        .is_some_and(|delay| state.since(&format!("queued:{uid}")) < delay)
}

fn snapshot_ready_delay(ctx: &Ctx, site: usize) -> std::time::Duration {
    ctx.faults()
        .slow_snapshots(ctx.site_name(site))
        .unwrap_or(ctx.config.snapshot_ready_delay)
}

/// A volume's size in bytes, for a snapshot's `restoreSize`.
pub(super) fn capacity_bytes(pv: &PersistentVolume) -> Option<i64> {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| util::quantity_bytes(&q.0))
        .filter(|b| *b > 0)
}

/// Whether the guest that has a volume attached has its filesystems frozen; `None` when no
/// running guest has it (the data is at rest, as consistent as what wrote it). The guests
/// that mount it are found in the cache; whether one is frozen is read fresh.
pub(super) async fn guest_frozen(ctx: &Ctx, site: usize, pv: &PersistentVolume) -> Result<Option<bool>> {
    let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(None);
    };
    let (Some(ns), Some(name)) = (claim.namespace.as_deref(), claim.name.as_deref()) else {
        return Ok(None);
    };
    let mounting = ctx.cached(VIRTUAL_MACHINE_INSTANCE, site).unwrap_or_default();
    let api = VIRTUAL_MACHINE_INSTANCE.namespaced(ctx.client(site), ns);
    for vmi in mounting
        .iter()
        .filter(|v| v.metadata.namespace.as_deref() == Some(ns) && kubevirt::claims(&v.data).iter().any(|c| c == name))
    {
        let vmi_name = vmi.metadata.name.as_deref().unwrap_or_default();
        let fresh = api.get_opt(vmi_name).await.context("reading a VMI")?;
        if let Some(vmi) = fresh.filter(|v| str_at(&v.data, "/status/phase") == Some("Running")) {
            return Ok(Some(virt_api::frozen(&vmi.data)));
        }
    }
    Ok(None)
}

fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or_default()
}
