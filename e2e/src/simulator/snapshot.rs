//! Simulated CSI snapshot controller (external-snapshotter) with a CSI driver that
//! snapshots instantly.
//!
//! A VolumeSnapshot of a Bound PVC gets a VolumeSnapshotContent named
//! `snapcontent-<snapshot uid>` (as the real controller names them) and its status:
//! `boundVolumeSnapshotContentName`, `creationTime`, `readyToUse: true` and
//! `restoreSize` (the PVC's capacity, else its request, else 10Gi). A snapshot of a
//! missing or unbound PVC, or naming a VolumeSnapshotClass that does not exist, gets
//! `readyToUse: false` and `status.error` instead, and is retried. Without a class name
//! the default class (annotation `snapshot.storage.kubernetes.io/is-default-class`) is
//! used, else a built-in driver [`SIM_DRIVER`]. A snapshot of a pre-provisioned content
//! (`spec.source.volumeSnapshotContentName`) binds to it. Contents with
//! `deletionPolicy: Delete` whose snapshot is gone are deleted. The real controller's
//! finalizers are not simulated.

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::Utc;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Map, Value, json};

use super::resources::{VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CLASS, VOLUME_SNAPSHOT_CONTENT};
use super::util::{self, StatusAt, describe, k8s_time, key_of, nonempty_str_at, str_at};
use super::{Ctx, SiteState};

/// The CSI driver name used when no VolumeSnapshotClass applies.
pub const SIM_DRIVER: &str = "sim.csi.coldsite.io";
const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
const DEFAULT_RESTORE_SIZE: &str = "10Gi";

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &mut SiteState) -> Result<()> {
    let Some(snapshots) = ctx.list(VOLUME_SNAPSHOT, site).await? else {
        return Ok(());
    };
    let mut classes: Option<Vec<DynamicObject>> = None;
    for snapshot in &snapshots {
        let done = snapshot.data.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true)
            && str_at(&snapshot.data, "/status/boundVolumeSnapshotContentName").is_some();
        if done || snapshot.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if classes.is_none() {
            classes = Some(ctx.list(VOLUME_SNAPSHOT_CLASS, site).await?.unwrap_or_default());
        }
        let classes = classes.as_deref().unwrap_or_default();
        if let Err(e) = bind(ctx, site, snapshot, classes).await {
            state.errors.push(e.context(format!("binding {}", describe(snapshot))));
        }
    }
    let live: HashMap<String, String> = snapshots
        .iter()
        .map(|s| (key_of(s), s.metadata.uid.clone().unwrap_or_default()))
        .collect();
    if let Err(e) = delete_orphaned_contents(ctx, site, &live).await {
        state.errors.push(e);
    }
    Ok(())
}

/// Records a problem on the snapshot (once per distinct message) and leaves it unready.
async fn report_error(api: &Api<DynamicObject>, snapshot: &DynamicObject, message: &str) -> Result<()> {
    if str_at(&snapshot.data, "/status/error/message") == Some(message) {
        return Ok(());
    }
    let mut desired = Map::new();
    desired.insert("readyToUse".into(), json!(false));
    desired.insert(
        "error".into(),
        json!({"message": message, "time": k8s_time(Utc::now())}),
    );
    util::patch_status(api, snapshot, desired, StatusAt::Subresource).await?;
    Ok(())
}

async fn bind(ctx: &Ctx, site: usize, snapshot: &DynamicObject, classes: &[DynamicObject]) -> Result<()> {
    let client = ctx.client(site);
    let namespace = snapshot.metadata.namespace.as_deref().unwrap_or_default();
    let name = snapshot.metadata.name.as_deref().unwrap_or_default();
    let uid = snapshot.metadata.uid.clone().unwrap_or_default();
    let api = VOLUME_SNAPSHOT.namespaced(client.clone(), namespace);
    let contents = VOLUME_SNAPSHOT_CONTENT.all(client.clone());

    if let Some(content_name) = nonempty_str_at(&snapshot.data, "/spec/source/volumeSnapshotContentName") {
        let Some(content) = contents
            .get_opt(content_name)
            .await
            .with_context(|| format!("reading VolumeSnapshotContent {content_name}"))?
        else {
            return report_error(
                &api,
                snapshot,
                &format!("VolumeSnapshotContent {content_name} not found"),
            )
            .await;
        };
        let mut desired = Map::new();
        desired.insert("boundVolumeSnapshotContentName".into(), json!(content_name));
        desired.insert("readyToUse".into(), json!(true));
        desired.insert("error".into(), Value::Null);
        if let Some(bytes) = content.data.pointer("/status/restoreSize").and_then(Value::as_i64) {
            desired.insert("restoreSize".into(), json!(bytes.to_string()));
        }
        let created = content
            .data
            .pointer("/status/creationTime")
            .and_then(Value::as_i64)
            .map(chrono::DateTime::from_timestamp_nanos)
            .unwrap_or_else(Utc::now);
        desired.insert("creationTime".into(), json!(k8s_time(created)));
        util::patch_status(&api, snapshot, desired, StatusAt::Subresource).await?;
        return Ok(());
    }

    let Some(pvc_name) = nonempty_str_at(&snapshot.data, "/spec/source/persistentVolumeClaimName") else {
        return report_error(
            &api,
            snapshot,
            "spec.source names neither a PVC nor a VolumeSnapshotContent",
        )
        .await;
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(pvc) = pvcs
        .get_opt(pvc_name)
        .await
        .with_context(|| format!("reading PVC {namespace}/{pvc_name}"))?
    else {
        return report_error(
            &api,
            snapshot,
            &format!("failed to get PersistentVolumeClaim \"{pvc_name}\": not found"),
        )
        .await;
    };
    let pvc_status = pvc.status.clone().unwrap_or_default();
    if pvc_status.phase.as_deref() != Some("Bound") {
        return report_error(
            &api,
            snapshot,
            &format!("the PVC {pvc_name} is not yet bound to a volume, will not take a snapshot"),
        )
        .await;
    }
    let class = match nonempty_str_at(&snapshot.data, "/spec/volumeSnapshotClassName") {
        Some(wanted) => match classes.iter().find(|c| c.metadata.name.as_deref() == Some(wanted)) {
            Some(class) => Some(class),
            None => {
                return report_error(
                    &api,
                    snapshot,
                    &format!("volumesnapshotclass.snapshot.storage.k8s.io \"{wanted}\" not found"),
                )
                .await;
            }
        },
        None => classes.iter().find(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        }),
    };
    let driver = class.and_then(|c| str_at(&c.data, "/driver")).unwrap_or(SIM_DRIVER);
    let policy = class
        .and_then(|c| str_at(&c.data, "/deletionPolicy"))
        .unwrap_or("Delete");
    let restore_size = pvc_status
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .map(|q| q.0.clone())
        .unwrap_or_else(|| DEFAULT_RESTORE_SIZE.to_owned());
    let now = Utc::now();

    let content_name = format!("snapcontent-{uid}");
    if contents
        .get_opt(&content_name)
        .await
        .with_context(|| format!("reading VolumeSnapshotContent {content_name}"))?
        .is_none()
    {
        let mut content = VOLUME_SNAPSHOT_CONTENT.object(&content_name);
        let mut spec = json!({
            "deletionPolicy": policy,
            "driver": driver,
            "source": {"volumeHandle": format!("sim-volume-{}", pvc.metadata.uid.clone().unwrap_or_default())},
            "volumeSnapshotRef": {
                "apiVersion": VOLUME_SNAPSHOT.api_version(),
                "kind": VOLUME_SNAPSHOT.kind,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
        });
        if let Some(class) = class.and_then(|c| c.metadata.name.as_deref()) {
            spec["volumeSnapshotClassName"] = json!(class);
        }
        content.data = json!({"spec": spec});
        let created = match contents.create(&PostParams::default(), &content).await {
            Ok(created) => created,
            Err(e) if util::is_conflict(&e) => contents.get(&content_name).await?,
            Err(e) => {
                return Err(e).with_context(|| format!("creating VolumeSnapshotContent {content_name}"));
            }
        };
        let mut status = Map::new();
        status.insert(
            "creationTime".into(),
            json!(now.timestamp_nanos_opt().unwrap_or_default()),
        );
        status.insert("readyToUse".into(), json!(true));
        status.insert("snapshotHandle".into(), json!(format!("sim-snapshot-{uid}")));
        if let Some(bytes) = util::quantity_bytes(&restore_size) {
            status.insert("restoreSize".into(), json!(bytes));
        }
        util::patch_status(&contents, &created, status, StatusAt::Subresource).await?;
    }

    let mut desired = Map::new();
    desired.insert("boundVolumeSnapshotContentName".into(), json!(content_name));
    if str_at(&snapshot.data, "/status/creationTime").is_none() {
        desired.insert("creationTime".into(), json!(k8s_time(now)));
    }
    desired.insert("readyToUse".into(), json!(true));
    desired.insert("restoreSize".into(), json!(restore_size));
    desired.insert("error".into(), Value::Null);
    util::patch_status(&api, snapshot, desired, StatusAt::Subresource).await?;
    tracing::debug!(site = %ctx.site_name(site), "{} is ready to use", describe(snapshot));
    Ok(())
}

/// Deletes contents with `deletionPolicy: Delete` whose snapshot (in scope) is gone.
async fn delete_orphaned_contents(ctx: &Ctx, site: usize, live: &HashMap<String, String>) -> Result<()> {
    let Some(contents) = ctx.list(VOLUME_SNAPSHOT_CONTENT, site).await? else {
        return Ok(());
    };
    let client = ctx.client(site);
    for content in contents {
        if content.metadata.deletion_timestamp.is_some()
            || str_at(&content.data, "/spec/deletionPolicy") != Some("Delete")
        {
            continue;
        }
        let Some(reference) = content.data.pointer("/spec/volumeSnapshotRef") else {
            continue;
        };
        let (Some(namespace), Some(name), Some(uid)) = (
            nonempty_str_at(reference, "/namespace"),
            nonempty_str_at(reference, "/name"),
            nonempty_str_at(reference, "/uid"),
        ) else {
            continue; // not bound yet
        };
        if !ctx.in_scope(namespace) || live.get(&format!("{namespace}/{name}")).map(String::as_str) == Some(uid) {
            continue;
        }
        // The list may be older than the snapshot: look again before deleting.
        let current = VOLUME_SNAPSHOT
            .namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .with_context(|| format!("reading VolumeSnapshot {namespace}/{name}"))?;
        if current.is_some_and(|s| s.metadata.uid.as_deref() == Some(uid)) {
            continue;
        }
        let content_name = content.metadata.name.clone().unwrap_or_default();
        match VOLUME_SNAPSHOT_CONTENT
            .all(client.clone())
            .delete(&content_name, &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::debug!("deleted VolumeSnapshotContent {content_name}: its snapshot is gone"),
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting VolumeSnapshotContent {content_name}"));
            }
        }
    }
    Ok(())
}
