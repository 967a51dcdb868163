//! The simulated CSI driver's group snapshots: the part of the csi-snapshotter sidecar that
//! cuts VolumeGroupSnapshots on a storage backend (followed:
//! `pkg/sidecar-controller/groupsnapshot_helper.go` of
//! `github.com/kubernetes-csi/external-snapshotter/v8`). The real snapshot-controller, with
//! its `CSIVolumeGroupSnapshot` gate on, does the rest: it makes the
//! VolumeGroupSnapshotContent from the claims the group selects and, once this has cut it,
//! one VolumeSnapshot and VolumeSnapshotContent per volume, marked as members.
//!
//! - A VolumeGroupSnapshotContent of [`DRIVER`] with `spec.source.volumeHandles` and no
//!   status gets its `volumeGroupSnapshotHandle`, `creationTime` and a
//!   `volumeSnapshotInfoList` of one snapshot per volume. Every volume's data is read from one
//!   LIST of the PVs, one revision of etcd: all members hold one instant, which is what a group
//!   snapshot promises and separate snapshots do not. The group is ready at once, as the
//!   drivers that cut group snapshots (hostpath, Ceph) report it: the snapshot-controller of
//!   v8.4 makes the members again while a group is not ready, and fails on the ones it made.
//! - A content being deleted that the snapshot-controller marked
//!   `volumegroupsnapshot-being-deleted` has its group snapshot deleted from the backend
//!   (its status loses the handle) and then loses its `volumegroupsnapshotcontent-bound-protection`
//!   finalizer. Members are deleted as single snapshots (see [`csi`]).

use std::collections::HashMap;

use anyhow::{Result, bail};
use chrono::Utc;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DynamicObject};
use serde_json::{Map, Value, json};

use super::csi::{self, DRIVER};
use super::disk::DiskData;
use super::resources::VOLUME_GROUP_SNAPSHOT_CONTENT;
use super::util::{self, StatusAt, describe, str_at};
use super::{Ctx, SiteState};

const BEING_DELETED: &str = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted";
const BEING_CREATED: &str = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-created";
const FINALIZER: &str = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection";

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let Some(contents) = ctx.cached(VOLUME_GROUP_SNAPSHOT_CONTENT, site) else {
        return Ok(());
    };
    let api = VOLUME_GROUP_SNAPSHOT_CONTENT.all(ctx.client(site));
    let mut volumes: Option<HashMap<String, PersistentVolume>> = None;
    for content in contents.iter().map(AsRef::as_ref).filter(|c| {
        str_at(&c.data, "/spec/driver") == Some(DRIVER)
            && str_at(&c.data, "/spec/volumeGroupSnapshotRef/namespace").is_some_and(|ns| ctx.in_scope(ns))
    }) {
        let result = if content.metadata.deletion_timestamp.is_some() {
            delete(&api, content).await
        } else if content.data.pointer("/status/volumeGroupSnapshotHandle").is_none() {
            if volumes.is_none() {
                volumes = Some(csi::volumes_by_handle(ctx, site).await?);
            }
            cut(ctx, site, &api, content, volumes.as_ref().unwrap_or(&HashMap::new())).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            state.error(e.context(describe(content)));
        }
    }
    Ok(())
}

/// Cuts every volume of the group from the one reading of the PVs in `volumes`.
async fn cut(
    ctx: &Ctx,
    site: usize,
    api: &Api<DynamicObject>,
    content: &DynamicObject,
    volumes: &HashMap<String, PersistentVolume>,
) -> Result<()> {
    let Some(handles) = content
        .data
        .pointer("/spec/source/volumeHandles")
        .and_then(Value::as_array)
    else {
        return Ok(());
    };
    let uid = content.metadata.uid.clone().unwrap_or_default();
    let now = Utc::now();
    let mut members = Vec::new();
    for handle in handles.iter().filter_map(Value::as_str) {
        let Some(pv) = volumes.get(handle) else {
            bail!("volume {handle} not found");
        };
        let mut data = DiskData::of_pv(pv)?;
        if let Some(frozen) = csi::guest_frozen(ctx, site, pv).await? {
            data.quiesced = frozen;
        }
        let mut member = json!({
            "volumeHandle": handle,
            "snapshotHandle": data.snapshot_handle(&format!("{uid}-{handle}")),
            "creationTime": now.timestamp_nanos_opt().unwrap_or_default(),
            "readyToUse": true,
        });
        if let Some(bytes) = csi::capacity_bytes(pv) {
            member["restoreSize"] = json!(bytes);
        }
        members.push(member);
    }
    let mut status = Map::new();
    status.insert(
        "volumeGroupSnapshotHandle".into(),
        json!(format!("sim-group-snapshot.{uid}")),
    );
    status.insert(
        "creationTime".into(),
        json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    status.insert("readyToUse".into(), json!(true));
    status.insert("volumeSnapshotInfoList".into(), Value::Array(members));
    util::patch_status(api, content, status, StatusAt::Subresource)
        .await
        .map(|_| ())
}

/// Deletes the group snapshot from the backend, then lets the content go.
async fn delete(api: &Api<DynamicObject>, content: &DynamicObject) -> Result<()> {
    let annotated = |key: &str| {
        content
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(key))
    };
    if !annotated(BEING_DELETED) || annotated(BEING_CREATED) {
        return Ok(());
    }
    let policy = str_at(&content.data, "/spec/deletionPolicy");
    if policy == Some("Delete") && content.data.pointer("/status/volumeGroupSnapshotHandle").is_some() {
        let mut status = Map::new();
        for field in [
            "volumeGroupSnapshotHandle",
            "readyToUse",
            "creationTime",
            "volumeSnapshotInfoList",
        ] {
            status.insert(field.into(), Value::Null);
        }
        // The next pass sees the handle gone and removes the finalizer, as upstream's does.
        return util::patch_status(api, content, status, StatusAt::Subresource)
            .await
            .map(|_| ());
    }
    csi::remove_finalizer(api, &content.metadata, FINALIZER).await
}
