//! Simulated VolSync rsync-TLS movers with the `Snapshot` copy method.
//!
//! Like VolSync's state machine, a ReplicationSource syncs once when created, then on
//! each tick of `spec.trigger.schedule` (on the compressed clock, see
//! [`cron`](super::cron)), or whenever `spec.trigger.manual` differs from
//! `status.lastManualSync` (`manual` wins over `schedule`), or back to back without a
//! trigger. While a sync runs, `status.lastSyncStartTime` is set and `Synchronizing` is
//! `True`. Differences from the real movers: no data moves, no mover Jobs, Services or
//! source-side temporary snapshots and PVCs are created, and the destination's image is
//! taken before the source reports completion (VolSync's source may finish first).

use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PostParams};
use serde_json::{Map, Value, json};

use super::cron::Schedule;
use super::resources::{REPLICATION_DESTINATION, REPLICATION_SOURCE, VOLUME_SNAPSHOT};
use super::util::{self, StatusAt, condition, describe, go_duration, k8s_time, nonempty_str_at, parse_time, str_at};
use super::{Ctx, SiteState};

/// A destination VolumeSnapshot with this label (any value; coldsite uses `"true"`) is
/// not deleted when a newer image replaces it; VolSync only drops its ownership.
pub const DO_NOT_DELETE_LABEL: &str = "volsync.backube/do-not-delete";
/// Label VolSync puts on what it creates: the owning VolSync object's uid.
pub const OWNED_LABEL: &str = "volsync.backube/owned";
/// Label VolSync puts on per-iteration objects to clean up.
const CLEANUP_LABEL: &str = "volsync.backube/cleanup";
/// Annotation on the destination PVC that holds the name of the snapshot being taken.
const SNAPNAME_ANNOTATION: &str = "volsync.backube/snapname";
const SYNCHRONIZING: &str = "Synchronizing";

/// The `status.rsyncTLS.address` the simulator publishes for a ReplicationDestination:
/// `volsync-rsync-tls-dst-<name>.<namespace>.svc.<site>`, unique across sites (VolSync
/// publishes the address of its Service `volsync-rsync-tls-dst-<name>`).
pub fn destination_address(site: &str, namespace: &str, name: &str) -> String {
    format!("volsync-rsync-tls-dst-{name}.{namespace}.svc.{site}")
}

/// The PVC a destination receives into.
fn destination_pvc(rd: &DynamicObject) -> (String, bool) {
    match nonempty_str_at(&rd.data, "/spec/rsyncTLS/destinationPVC") {
        Some(pvc) => (pvc.to_owned(), true),
        None => (
            format!("volsync-{}-dst", rd.metadata.name.as_deref().unwrap_or_default()),
            false,
        ),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    Manual(String),
    Schedule(String),
    Continuous,
}

fn trigger(object: &DynamicObject) -> Trigger {
    if let Some(tag) = nonempty_str_at(&object.data, "/spec/trigger/manual") {
        Trigger::Manual(tag.to_owned())
    } else if let Some(cron) = nonempty_str_at(&object.data, "/spec/trigger/schedule") {
        Trigger::Schedule(cron.to_owned())
    } else {
        Trigger::Continuous
    }
}

/// The `Synchronizing` condition of an idle (not syncing) object, as VolSync sets it.
fn idle_condition(previous: Option<&Value>, trigger: &Trigger) -> Value {
    match trigger {
        Trigger::Manual(_) => condition(
            previous,
            SYNCHRONIZING,
            false,
            "WaitingForManual",
            "Waiting for manual trigger",
        ),
        Trigger::Schedule(_) => condition(
            previous,
            SYNCHRONIZING,
            false,
            "WaitingForSchedule",
            "Waiting for next scheduled synchronization",
        ),
        Trigger::Continuous => syncing_condition(previous),
    }
}

fn syncing_condition(previous: Option<&Value>) -> Value {
    condition(
        previous,
        SYNCHRONIZING,
        true,
        "SyncInProgress",
        "Synchronization in-progress",
    )
}

fn error_condition(previous: Option<&Value>, message: &str) -> Value {
    condition(previous, SYNCHRONIZING, false, "Error", message)
}

fn owner_reference(object: &DynamicObject, kind: super::Kind) -> Result<OwnerReference> {
    Ok(OwnerReference {
        api_version: kind.api_version(),
        kind: kind.kind.into(),
        name: object.metadata.name.clone().unwrap_or_default(),
        uid: object
            .metadata
            .uid
            .clone()
            .with_context(|| format!("{} has no uid", describe(object)))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

impl Ctx {
    /// The real time at which a schedule next fires after `after`; `Err` if it does not
    /// parse.
    fn next_sync(&self, cron: &str, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
        let schedule: Schedule = cron.parse()?;
        Ok(self.clock.next_fire(&schedule, after))
    }
}

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &mut SiteState) -> Result<()> {
    if let Some(destinations) = ctx.list(REPLICATION_DESTINATION, site).await? {
        for rd in &destinations {
            if let Err(e) = reconcile_destination(ctx, site, rd).await {
                state.errors.push(e.context(format!("reconciling {}", describe(rd))));
            }
        }
    }
    if let Some(sources) = ctx.list(REPLICATION_SOURCE, site).await? {
        for rs in &sources {
            if let Err(e) = reconcile_source(ctx, site, state, rs).await {
                state.errors.push(e.context(format!("reconciling {}", describe(rs))));
            }
        }
    }
    Ok(())
}

// ---- destination ----------------------------------------------------------------------

/// Publishes a destination's address and key Secret and provides its PVC.
async fn reconcile_destination(ctx: &Ctx, site: usize, rd: &DynamicObject) -> Result<()> {
    if rd.metadata.deletion_timestamp.is_some() || rd.data.pointer("/spec/rsyncTLS").is_none() {
        return Ok(());
    }
    let client = ctx.client(site);
    let namespace = rd.metadata.namespace.as_deref().unwrap_or_default();
    let name = rd.metadata.name.as_deref().unwrap_or_default();
    let uid = rd.metadata.uid.clone().unwrap_or_default();
    let status = rd.data.get("status");
    let conditions = status.and_then(|s| s.get("conditions"));
    let mut desired = Map::new();
    let trigger = trigger(rd);

    let problem = match ensure_destination_pvc(ctx, site, rd).await? {
        Some(problem) => Some(problem),
        None => {
            // The volume is there: listen, publish the address and the key.
            let mut rsync = json!({"address": destination_address(ctx.site_name(site), namespace, name)});
            let key = ensure_key_secret(&client, rd, namespace, name, &uid).await?;
            let problem = match key {
                Ok(secret) => {
                    rsync["keySecret"] = json!(secret);
                    None
                }
                Err(problem) => Some(problem),
            };
            desired.insert("rsyncTLS".into(), rsync);
            problem
        }
    };
    let cond = match &problem {
        Some(message) => error_condition(conditions, message),
        None => match &trigger {
            // Its manual sync happened: it waits for the next tag.
            Trigger::Manual(tag) if status.and_then(|s| str_at(s, "/lastManualSync")) == Some(tag) => {
                idle_condition(conditions, &trigger)
            }
            _ => syncing_condition(conditions),
        },
    };
    desired.insert("conditions".into(), json!([cond]));
    if let Trigger::Schedule(cron) = &trigger {
        let last = status.and_then(|s| str_at(s, "/lastSyncTime")).and_then(parse_time);
        if let Some(last) = last
            && let Ok(next) = ctx.next_sync(cron, last)
        {
            desired.insert("nextSyncTime".into(), json!(next.map(k8s_time)));
        }
    }
    let api = REPLICATION_DESTINATION.namespaced(client, namespace);
    util::patch_status(&api, rd, desired, StatusAt::Subresource).await?;
    relinquish_kept(ctx, site, rd).await
}

/// Makes sure the destination PVC exists; `Some(message)` when it cannot.
async fn ensure_destination_pvc(ctx: &Ctx, site: usize, rd: &DynamicObject) -> Result<Option<String>> {
    let namespace = rd.metadata.namespace.as_deref().unwrap_or_default();
    let (pvc_name, provided) = destination_pvc(rd);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client(site), namespace);
    if pvcs
        .get_opt(&pvc_name)
        .await
        .with_context(|| format!("reading PVC {namespace}/{pvc_name}"))?
        .is_some()
    {
        return Ok(None);
    }
    if provided {
        return Ok(Some(format!("persistentvolumeclaims \"{pvc_name}\" not found")));
    }
    let rsync = rd.data.pointer("/spec/rsyncTLS").cloned().unwrap_or_default();
    let access_modes = rsync
        .get("accessModes")
        .filter(|m| m.as_array().is_some_and(|a| !a.is_empty()));
    let Some(access_modes) = access_modes else {
        return Ok(Some("accessModes must be provided when destinationPVC is not".into()));
    };
    let Some(capacity) = rsync.get("capacity").filter(|c| !c.is_null()) else {
        return Ok(Some("capacity must be provided when destinationPVC is not".into()));
    };
    let uid = rd.metadata.uid.clone().unwrap_or_default();
    let mut spec = json!({
        "accessModes": access_modes,
        "resources": {"requests": {"storage": capacity}},
        "volumeMode": "Filesystem",
    });
    if let Some(class) = nonempty_str_at(&rsync, "/storageClassName") {
        spec["storageClassName"] = json!(class);
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": pvc_name,
            "namespace": namespace,
            "labels": {OWNED_LABEL: uid},
            "ownerReferences": [owner_reference(rd, REPLICATION_DESTINATION)?],
        },
        "spec": spec,
    }))
    .context("building the destination PVC")?;
    match pvcs.create(&PostParams::default(), &pvc).await {
        Ok(_) => {
            tracing::info!(site = %ctx.site_name(site), "{}: created PVC {pvc_name} to receive data", describe(rd));
            Ok(None)
        }
        Err(e) if util::is_conflict(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("creating PVC {namespace}/{pvc_name}")),
    }
}

/// The key Secret's name, created when VolSync would (`Err(message)` when a named one is
/// missing).
async fn ensure_key_secret(
    client: &kube::Client,
    rd: &DynamicObject,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Result<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(named) = nonempty_str_at(&rd.data, "/spec/rsyncTLS/keySecret") {
        let exists = secrets
            .get_opt(named)
            .await
            .with_context(|| format!("reading Secret {namespace}/{named}"))?
            .is_some();
        return Ok(if exists {
            Ok(named.to_owned())
        } else {
            Err(format!("secrets \"{named}\" not found"))
        });
    }
    let secret_name = format!("volsync-rsync-tls-{name}");
    if secrets
        .get_opt(&secret_name)
        .await
        .with_context(|| format!("reading Secret {namespace}/{secret_name}"))?
        .is_some()
    {
        return Ok(Ok(secret_name));
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": secret_name,
            "namespace": namespace,
            "labels": {OWNED_LABEL: uid},
            "ownerReferences": [owner_reference(rd, REPLICATION_DESTINATION)?],
        },
        // A stand-in, not a secret: the simulator moves no data.
        "stringData": {"psk.txt": format!("volsync:{}", pseudo_key(uid))},
    }))
    .context("building the key Secret")?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Ok(secret_name)),
        Err(e) if util::is_conflict(&e) => Ok(Ok(secret_name)),
        Err(e) => Err(e).with_context(|| format!("creating Secret {namespace}/{secret_name}")),
    }
}

/// 128 hex digits derived from `seed` and the clock: shaped like VolSync's pre-shared
/// key, with no cryptographic value.
fn pseudo_key(seed: &str) -> String {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    (0..8u8)
        .map(|i| {
            let mut hasher = DefaultHasher::new();
            (seed, now, i).hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

// ---- source ---------------------------------------------------------------------------

async fn reconcile_source(ctx: &Ctx, site: usize, state: &mut SiteState, rs: &DynamicObject) -> Result<()> {
    if rs.metadata.deletion_timestamp.is_some() || rs.data.pointer("/spec/rsyncTLS").is_none() {
        return Ok(());
    }
    let client = ctx.client(site);
    let namespace = rs.metadata.namespace.as_deref().unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let api = REPLICATION_SOURCE.namespaced(client.clone(), namespace);
    let status = rs.data.get("status");
    let conditions = status.and_then(|s| s.get("conditions"));
    let trigger = trigger(rs);
    let now = Utc::now();
    let last_sync = status.and_then(|s| str_at(s, "/lastSyncTime")).and_then(parse_time);
    let started = status.and_then(|s| str_at(s, "/lastSyncStartTime")).map(str::to_owned);

    let Some(started) = started else {
        // Idle: is a sync due?
        let mut desired = Map::new();
        let due = match (&trigger, last_sync) {
            (_, None) => true, // VolSync syncs once as soon as the object exists
            (Trigger::Manual(tag), Some(_)) => status.and_then(|s| str_at(s, "/lastManualSync")) != Some(tag.as_str()),
            (Trigger::Schedule(cron), Some(last)) => match ctx.next_sync(cron, last) {
                Ok(next) => {
                    desired.insert("nextSyncTime".into(), json!(next.map(k8s_time)));
                    next.is_some_and(|next| now >= next)
                }
                Err(why) => {
                    desired.insert(
                        "conditions".into(),
                        json!([error_condition(conditions, &format!("invalid schedule: {why}"))]),
                    );
                    util::patch_status(&api, rs, desired, StatusAt::Subresource).await?;
                    return Ok(());
                }
            },
            (Trigger::Continuous, Some(_)) => true,
        };
        if due {
            desired.insert("lastSyncStartTime".into(), json!(k8s_time(now)));
            desired.insert("conditions".into(), json!([syncing_condition(conditions)]));
            util::patch_status(&api, rs, desired, StatusAt::Subresource).await?;
            tracing::debug!(site = %ctx.site_name(site), "{}: sync started", describe(rs));
        } else {
            desired.insert("conditions".into(), json!([idle_condition(conditions, &trigger)]));
            util::patch_status(&api, rs, desired, StatusAt::Subresource).await?;
        }
        return Ok(());
    };

    // A sync is running.
    let site_name = ctx.site_name(site).to_owned();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let elapsed = state.since(&format!("sync:{uid}:{started}"));
    let stalled = ctx.faults().stalled(&site_name, namespace, name)
        || rs.data.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
    if stalled || elapsed < ctx.config.sync_duration {
        return Ok(());
    }
    let mut waiting = Map::new();
    let source_pvc = nonempty_str_at(&rs.data, "/spec/sourcePVC").unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    if source_pvc.is_empty()
        || pvcs
            .get_opt(source_pvc)
            .await
            .with_context(|| format!("reading PVC {namespace}/{source_pvc}"))?
            .is_none()
    {
        let message = format!("persistentvolumeclaims \"{source_pvc}\" not found");
        waiting.insert("conditions".into(), json!([error_condition(conditions, &message)]));
        util::patch_status(&api, rs, waiting, StatusAt::Subresource).await?;
        return Ok(());
    }
    waiting.insert("conditions".into(), json!([syncing_condition(conditions)]));
    let Some(address) = nonempty_str_at(&rs.data, "/spec/rsyncTLS/address") else {
        util::patch_status(&api, rs, waiting, StatusAt::Subresource).await?;
        return Ok(()); // the mover keeps trying to connect
    };
    let Some((dest_site, rd)) = find_destination(ctx, address).await else {
        util::patch_status(&api, rs, waiting, StatusAt::Subresource).await?;
        return Ok(());
    };
    let started_at = parse_time(&started).unwrap_or(now);
    let Some(image) = take_image(ctx, dest_site, &rd, started_at).await? else {
        util::patch_status(&api, rs, waiting, StatusAt::Subresource).await?;
        return Ok(());
    };

    // Done: record it as VolSync's state machine does.
    let now = Utc::now();
    let finished = k8s_time(now);
    let mut desired = Map::new();
    desired.insert("lastSyncTime".into(), json!(finished));
    desired.insert(
        "lastSyncDuration".into(),
        json!(go_duration((now - started_at).to_std().unwrap_or_default())),
    );
    desired.insert("lastSyncStartTime".into(), Value::Null);
    desired.insert(
        "latestMoverStatus".into(),
        json!({"result": "Successful", "logs": "coldsite site simulator: no data moved"}),
    );
    let next = match &trigger {
        Trigger::Schedule(cron) => parse_time(&finished)
            .and_then(|t| ctx.next_sync(cron, t).ok().flatten())
            .map(k8s_time),
        _ => None,
    };
    desired.insert("nextSyncTime".into(), json!(next));
    desired.insert(
        "lastManualSync".into(),
        match &trigger {
            Trigger::Manual(tag) => json!(tag),
            _ => Value::Null,
        },
    );
    desired.insert("conditions".into(), json!([idle_condition(conditions, &trigger)]));
    util::patch_status(&api, rs, desired, StatusAt::Subresource).await?;
    tracing::info!(
        site = %site_name,
        "{}: synced to {} at site {} as VolumeSnapshot {image}",
        describe(rs),
        describe(&rd),
        ctx.site_name(dest_site)
    );
    Ok(())
}

/// The destination publishing `address`, at any site that answers.
async fn find_destination(ctx: &Ctx, address: &str) -> Option<(usize, DynamicObject)> {
    for site in 0..ctx.sites.len() {
        match ctx.list(REPLICATION_DESTINATION, site).await {
            Ok(Some(destinations)) => {
                if let Some(rd) = destinations
                    .into_iter()
                    .find(|rd| str_at(&rd.data, "/status/rsyncTLS/address") == Some(address))
                {
                    return Some((site, rd));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("looking for destination {address}: {e:#}"),
        }
    }
    None
}

/// Takes the destination's point-in-time image, one step per call: name it (on the PVC,
/// as VolSync does), create the VolumeSnapshot, wait until it is bound, then publish it
/// as `latestImage` and retire the previous one. Returns the image's name when done.
async fn take_image(ctx: &Ctx, site: usize, rd: &DynamicObject, started_at: DateTime<Utc>) -> Result<Option<String>> {
    let client = ctx.client(site);
    let namespace = rd.metadata.namespace.as_deref().unwrap_or_default();
    let rd_uid = rd.metadata.uid.clone().unwrap_or_default();
    let (pvc_name, _) = destination_pvc(rd);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(pvc) = pvcs
        .get_opt(&pvc_name)
        .await
        .with_context(|| format!("reading PVC {namespace}/{pvc_name}"))?
    else {
        return Ok(None);
    };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if !bound {
        return Ok(None);
    }
    let snapshots = VOLUME_SNAPSHOT.namespaced(client.clone(), namespace);
    let annotated = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SNAPNAME_ANNOTATION))
        .cloned();
    let snap_name = match annotated {
        Some(name) => name,
        None => {
            let name = format!("{pvc_name}-{}", Utc::now().format("%Y%m%d%H%M%S"));
            if snapshots
                .get_opt(&name)
                .await
                .with_context(|| format!("reading VolumeSnapshot {namespace}/{name}"))?
                .is_some()
            {
                return Ok(None); // names have one-second resolution: try again next second
            }
            let patch = json!({"metadata": {"annotations": {SNAPNAME_ANNOTATION: name}}});
            pvcs.patch(&pvc_name, &util::params(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("annotating PVC {namespace}/{pvc_name}"))?;
            name
        }
    };
    let snapshot = snapshots
        .get_opt(&snap_name)
        .await
        .with_context(|| format!("reading VolumeSnapshot {namespace}/{snap_name}"))?;
    let Some(snapshot) = snapshot else {
        let mut snap = VOLUME_SNAPSHOT.object(&snap_name);
        snap.metadata.namespace = Some(namespace.to_owned());
        snap.metadata.labels = Some([(OWNED_LABEL.to_owned(), rd_uid.clone())].into());
        snap.metadata.owner_references = Some(vec![owner_reference(rd, REPLICATION_DESTINATION)?]);
        let mut spec = json!({"source": {"persistentVolumeClaimName": pvc_name}});
        if let Some(class) = nonempty_str_at(&rd.data, "/spec/rsyncTLS/volumeSnapshotClassName") {
            spec["volumeSnapshotClassName"] = json!(class);
        }
        snap.data = json!({"spec": spec});
        match snapshots.create(&PostParams::default(), &snap).await {
            Ok(_) => {}
            Err(e) if util::is_conflict(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating VolumeSnapshot {namespace}/{snap_name}"));
            }
        }
        return Ok(None);
    };
    let ready = snapshot.metadata.deletion_timestamp.is_none()
        && str_at(&snapshot.data, "/status/boundVolumeSnapshotContentName").is_some()
        && snapshot.data.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(false);
    if !ready {
        return Ok(None);
    }

    // Publish the new image.
    let status = rd.data.get("status");
    let conditions = status.and_then(|s| s.get("conditions"));
    let previous = status
        .and_then(|s| s.get("latestImage"))
        .filter(|image| str_at(image, "/kind") == Some("VolumeSnapshot"))
        .and_then(|image| str_at(image, "/name"))
        .map(str::to_owned);
    if let Some(previous) = previous.as_deref().filter(|p| *p != snap_name)
        && !mark_for_cleanup(&snapshots, namespace, previous, &rd_uid).await?
    {
        return Ok(None); // it changed under us: look again next pass
    }
    let trigger = trigger(rd);
    let now = Utc::now();
    let finished = k8s_time(now);
    let mut desired = Map::new();
    desired.insert(
        "latestImage".into(),
        json!({"apiGroup": VOLUME_SNAPSHOT.group, "kind": VOLUME_SNAPSHOT.kind, "name": snap_name}),
    );
    desired.insert("lastSyncTime".into(), json!(finished));
    desired.insert(
        "lastSyncDuration".into(),
        json!(go_duration((now - started_at).to_std().unwrap_or_default())),
    );
    desired.insert(
        "latestMoverStatus".into(),
        json!({"result": "Successful", "logs": "coldsite site simulator: no data moved"}),
    );
    if let Trigger::Manual(tag) = &trigger {
        desired.insert("lastManualSync".into(), json!(tag));
        desired.insert("conditions".into(), json!([idle_condition(conditions, &trigger)]));
    }
    let destinations = REPLICATION_DESTINATION.namespaced(client.clone(), namespace);
    util::patch_status(&destinations, rd, desired, StatusAt::Subresource).await?;

    clean_up(&snapshots, namespace, &rd_uid, &snap_name).await?;
    let patch = json!({"metadata": {"annotations": {SNAPNAME_ANNOTATION: null}}});
    pvcs.patch(&pvc_name, &util::params(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("removing the snapshot annotation of PVC {namespace}/{pvc_name}"))?;
    Ok(Some(snap_name))
}

fn has_label(snapshot: &DynamicObject, key: &str) -> bool {
    snapshot.metadata.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

/// Labels a replaced image `volsync.backube/cleanup: <destination uid>`, as VolSync does
/// before it publishes the new one, unless it is labelled [`DO_NOT_DELETE_LABEL`].
/// `false` when the snapshot changed meanwhile (try again later).
async fn mark_for_cleanup(snapshots: &Api<DynamicObject>, namespace: &str, name: &str, rd_uid: &str) -> Result<bool> {
    let Some(old) = snapshots
        .get_opt(name)
        .await
        .with_context(|| format!("reading VolumeSnapshot {namespace}/{name}"))?
    else {
        return Ok(true);
    };
    if has_label(&old, DO_NOT_DELETE_LABEL) || has_label(&old, CLEANUP_LABEL) {
        return Ok(true);
    }
    let patch = json!({"metadata": {
        "resourceVersion": old.metadata.resource_version,
        "labels": {CLEANUP_LABEL: rd_uid},
    }});
    match snapshots.patch(name, &util::params(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(true),
        Err(e) if util::is_not_found(&e) => Ok(true),
        Err(e) if util::is_conflict(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("marking VolumeSnapshot {namespace}/{name} for cleanup")),
    }
}

/// Deletes the images marked for cleanup by this destination, except `latest` and those
/// labelled [`DO_NOT_DELETE_LABEL`] since, which it gives up instead. Idempotent: what a
/// failure leaves behind goes at the next sync.
async fn clean_up(snapshots: &Api<DynamicObject>, namespace: &str, rd_uid: &str, latest: &str) -> Result<()> {
    let marked = snapshots
        .list(&ListParams::default().labels(&format!("{CLEANUP_LABEL}={rd_uid}")))
        .await
        .with_context(|| format!("listing VolumeSnapshots to clean up in {namespace}"))?;
    for old in marked.items {
        let name = old.metadata.name.clone().unwrap_or_default();
        if name == latest || old.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if has_label(&old, DO_NOT_DELETE_LABEL) {
            relinquish(snapshots, &old, rd_uid).await?;
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: old.metadata.resource_version.clone(),
            }),
            ..DeleteParams::background()
        };
        match snapshots.delete(&name, &params).await {
            Ok(_) => tracing::debug!("deleted replaced VolumeSnapshot {namespace}/{name}"),
            // Gone, or changed since listed (perhaps labelled do-not-delete): next time.
            Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting VolumeSnapshot {namespace}/{name}"));
            }
        }
    }
    Ok(())
}

/// Gives up a snapshot labelled [`DO_NOT_DELETE_LABEL`]: removes the destination's
/// ownerReference and VolSync's labels, so that neither VolSync nor the garbage
/// collector deletes it (VolSync does this on every reconcile of the destination).
async fn relinquish(snapshots: &Api<DynamicObject>, snapshot: &DynamicObject, rd_uid: &str) -> Result<()> {
    let owners: Vec<&OwnerReference> = snapshot
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.uid != rd_uid)
        .collect();
    let owned = snapshot
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == rd_uid);
    if !owned && !has_label(snapshot, OWNED_LABEL) && !has_label(snapshot, CLEANUP_LABEL) {
        return Ok(());
    }
    let name = snapshot.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {
        "resourceVersion": snapshot.metadata.resource_version,
        "labels": {OWNED_LABEL: null, CLEANUP_LABEL: null},
        "ownerReferences": if owners.is_empty() { Value::Null } else { json!(owners) },
    }});
    match snapshots.patch(&name, &util::params(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!("kept VolumeSnapshot {name}: labelled {DO_NOT_DELETE_LABEL}");
            Ok(())
        }
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("relinquishing VolumeSnapshot {name}")),
    }
}

/// Gives up every snapshot of this destination that is labelled [`DO_NOT_DELETE_LABEL`].
async fn relinquish_kept(ctx: &Ctx, site: usize, rd: &DynamicObject) -> Result<()> {
    let namespace = rd.metadata.namespace.as_deref().unwrap_or_default();
    let rd_uid = rd.metadata.uid.clone().unwrap_or_default();
    let snapshots = VOLUME_SNAPSHOT.namespaced(ctx.client(site), namespace);
    let kept = match snapshots.list(&ListParams::default().labels(DO_NOT_DELETE_LABEL)).await {
        Ok(list) => list.items,
        Err(e) if util::is_not_found(&e) => return Ok(()), // no snapshot CRD here
        Err(e) => return Err(e).context("listing kept VolumeSnapshots"),
    };
    for snapshot in &kept {
        let ours = snapshot
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == rd_uid)
            || [OWNED_LABEL, CLEANUP_LABEL].iter().any(|key| {
                snapshot
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(*key))
                    .is_some_and(|v| *v == rd_uid)
            });
        if ours {
            relinquish(&snapshots, snapshot, &rd_uid).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_per_site() {
        assert_eq!(
            destination_address("recovery", "ns", "db"),
            "volsync-rsync-tls-dst-db.ns.svc.recovery"
        );
        assert_ne!(
            destination_address("a", "ns", "db"),
            destination_address("b", "ns", "db")
        );
        assert_eq!(pseudo_key("x").len(), 128);
    }

    #[test]
    fn manual_wins_over_schedule() {
        let mut rs = REPLICATION_SOURCE.object("rs");
        rs.data = json!({"spec": {"trigger": {"manual": "t1", "schedule": "*/5 * * * *"}}});
        assert_eq!(trigger(&rs), Trigger::Manual("t1".into()));
        rs.data = json!({"spec": {"trigger": {"schedule": "*/5 * * * *"}}});
        assert_eq!(trigger(&rs), Trigger::Schedule("*/5 * * * *".into()));
        rs.data = json!({"spec": {}});
        assert_eq!(trigger(&rs), Trigger::Continuous);
    }
}
