//! Application-consistent recovery points (`spec.replication.appConsistentInterval`): on the
//! interval, one sync of every disk of the VM through VolSync's manual triggers, with the
//! guest's filesystems frozen through KubeVirt's `freeze` subresource while VolSync cuts the
//! source snapshots, and thawed as soon as they are cut.
//!
//! The sync follows the [final sync's protocol](super::final_sync) with the tag prefix
//! [`TAG`]: destinations first, then, once every destination listens, the guest is frozen
//! and all sources are tagged together. The tag of each source frozen for is recorded on it
//! ([`FROZEN_FOR`]), so a point is marked app-consistent only when every disk's snapshot was
//! cut inside one freeze. The freeze is bounded even if coldsite stops mid-way: KubeVirt
//! thaws the guest after [`UNFREEZE_TIMEOUT`].
//!
//! A freeze that fails (no guest agent, a timeout) does not stop the sync: it yields a
//! crash-consistent point, and the failure is reported. Everything this needs to resume
//! lives at the sites (triggers, annotations, the VMI's `fsFreezeStatus`), so a restart
//! picks up where it stopped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_engine::fabric::{FabricError, RecoveryPoint};
use coldsite_engine::model::{SiteModel, VmModel};
use serde_json::{Value, json};

use super::dynamic::{
    JOB, REPLICATION_DESTINATION, REPLICATION_SOURCE, SiteApi, VMI, VOLUME_SNAPSHOT, parse_time, str_at,
};
use super::fabric::KubeVirtFabric;
use super::final_sync::{self, Next};
use super::objects;

/// The prefix of the manual triggers of app-consistent syncs (`app-<resourceVersion>`).
pub const TAG: &str = "app";
/// On a ReplicationSource: the tag of the sync whose snapshot was cut with the guest frozen.
pub const FROZEN_FOR: &str = "coldsite.io/frozen-for";
/// On a ReplicationSource frozen for: when the guest was frozen, for the freeze's duration.
pub const FROZEN_AT: &str = "coldsite.io/frozen-at";
/// On the first disk's ReplicationDestination: when the latest app-consistent sync began,
/// so a guest that cannot be frozen is tried once an interval, not at every reconcile.
pub const ATTEMPTED: &str = "coldsite.io/app-consistent-attempt";
/// KubeVirt's backstop: a guest nobody thaws thaws by itself after this long.
pub const UNFREEZE_TIMEOUT: &str = "60s";

/// Whether a manual trigger belongs to an app-consistent sync.
pub fn is_tag(trigger: &str) -> bool {
    trigger.strip_prefix(TAG).is_some_and(|rest| rest.starts_with('-'))
}

fn tag_on(object: &Value) -> Option<&str> {
    str_at(object, "/spec/trigger/manual").filter(|t| is_tag(t))
}

/// Whether a source's tagged sync was frozen for: its snapshot is cut with the guest frozen.
fn frozen_for_its_tag(rs: &Value) -> bool {
    tag_on(rs).is_some() && annotation(rs, FROZEN_FOR) == tag_on(rs)
}

pub(super) fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    str_at(object, &format!("/metadata/annotations/{}", key.replace('/', "~1")))
}

/// Pure: whether a new app-consistent sync is due, given the newest app-consistent point and
/// the start of the latest attempt.
pub fn due(
    interval: Duration,
    newest: Option<DateTime<Utc>>,
    attempted: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    let last = newest.max(attempted);
    last.is_none_or(|t| now.signed_duration_since(t).to_std().unwrap_or_default() >= interval)
}

/// Pure: whether the source snapshot of a source's tagged sync is cut. VolSync makes it
/// (`volsync-<source>-src`) after the sync starts and deletes it only after recording the
/// sync done, so a snapshot with a creation time, or a finished sync, means it is. The
/// previous sync's snapshot may still be going (deleted, held by the snapshot-controller's
/// finalizers) as this sync starts, under the same name: that one does not count, or the
/// guest would be thawed before this sync's snapshot is cut.
pub fn source_cut(rs: &Value, snapshot: Option<&Value>) -> bool {
    let done = tag_on(rs).is_some_and(|t| str_at(rs, "/status/lastManualSync") == Some(t));
    let running = str_at(rs, "/status/lastSyncStartTime").is_some_and(|t| !t.is_empty());
    let this_syncs = |s: &Value| {
        s.pointer("/status/creationTime").is_some_and(|t| !t.is_null())
            && s.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null)
    };
    done || (running && snapshot.is_some_and(this_syncs))
}

/// What to do with the sources of an app-consistent sync next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStep {
    /// Some destination does not listen yet, or a sync is under way.
    Wait,
    /// Every destination listens: freeze the guest and tag every source inside the freeze.
    FreezeAndTagAll,
    /// A step was interrupted with some sources tagged: tag the rest, frozen for if the guest
    /// still is.
    TagRest,
}

/// Pure: the sources' next step, from each disk's [`Next`] and whether any source is tagged.
/// No source is tagged before every one can be, or the disks' snapshots would be cut at
/// different moments, outside the freeze.
pub fn source_step(steps: &[Next], any_tagged: bool) -> SourceStep {
    let ready = steps.iter().filter(|n| matches!(n, Next::TagSource { .. })).count();
    if ready == 0 {
        SourceStep::Wait
    } else if any_tagged {
        SourceStep::TagRest
    } else if ready < steps.len() {
        SourceStep::Wait
    } else {
        SourceStep::FreezeAndTagAll
    }
}

/// What one step of a VM's app-consistent sync found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSync {
    /// None is due, or the VM has no interval.
    Idle,
    /// One is under way: look again soon.
    Busy,
    /// A [group round](super::group_cut) with no guest frozen is under way: its objects'
    /// changes wake the VM, and a look every few seconds is enough.
    Round,
    /// A group round's group snapshot failed (why): the round goes on disk by disk.
    CutFailed(String),
    /// The guest could not be frozen; the sync goes on and yields a crash-consistent point.
    FreezeFailed(String),
    /// Its points are adopted: app-consistent if every disk was cut inside the freeze;
    /// `froze` whether any was (none after a failed freeze, already reported).
    Done { app_consistent: bool, froze: bool },
    /// The sites could not be read or written; tried again at the next reconcile.
    Error(String),
}

/// One disk's replication objects as read.
struct DiskEnds {
    disk: String,
    rs: Value,
    rd: Option<Value>,
    job: Option<Value>,
}

impl DiskEnds {
    fn tagged(&self) -> bool {
        tag_on(&self.rs).is_some() || self.rd.as_ref().and_then(tag_on).is_some()
    }

    fn next(&self) -> Next {
        final_sync::next(
            TAG,
            &final_sync::Ends {
                source: &self.rs,
                destination: self.rd.as_ref(),
                destination_job: self.job.as_ref(),
            },
        )
    }
}

impl KubeVirtFabric {
    /// One step of the VM's app-consistent sync from `source` to `target`, where `points`
    /// are the VM's points at the target.
    pub async fn app_consistent_sync(
        &self,
        vm: &VmModel,
        source: &SiteModel,
        target: &SiteModel,
        points: &[RecoveryPoint],
        now: DateTime<Utc>,
    ) -> Result<AppSync, FabricError> {
        let (src, dst) = (self.site(&source.name)?, self.site(&target.name)?);
        // At rest, the sites' watches show it: no sync under way and none due; nothing is read.
        if let Some(watched) = watched_disks(src, dst, vm)
            && !needs_work(&watched, vm.app_consistent_interval, points, now)
        {
            return Ok(AppSync::Idle);
        }
        let disks = read_disks(src, dst, vm).await?;
        let under_way = disks.iter().any(DiskEnds::tagged);
        let Some(interval) = vm.app_consistent_interval else {
            if under_way {
                finish(src, dst, vm, &disks).await?;
            }
            return Ok(AppSync::Idle);
        };
        let runs_due = !under_way
            && due_for(&disks, interval, points, now)
            && self.vmi_running(src, &vm.vm_namespace, &vm.vm_name).await?;
        if !under_way && !runs_due {
            return Ok(AppSync::Idle);
        }
        let steps: Vec<Next> = disks.iter().map(DiskEnds::next).collect();
        if steps.iter().all(|n| *n == Next::Adopt) {
            return self.adopt(src, dst, vm, &disks).await;
        }
        let names: Vec<&str> = disks.iter().map(|d| d.disk.as_str()).collect();
        tag_destinations(dst, vm, &names, &steps, Some(now)).await?;
        let to_tag: Vec<(&DiskEnds, &Next)> = disks
            .iter()
            .zip(&steps)
            .filter(|(_, n)| matches!(n, Next::TagSource { .. }))
            .collect();
        let any_tagged = disks.iter().any(|d| tag_on(&d.rs).is_some());
        let outcome = match source_step(&steps, any_tagged) {
            SourceStep::Wait => AppSync::Busy,
            SourceStep::TagRest => {
                let frozen = guest_frozen(src, Guest::of(vm)).await?;
                tag_sources(src, vm, &to_tag, frozen, now).await?;
                AppSync::Busy
            }
            SourceStep::FreezeAndTagAll => {
                let (frozen, outcome) = match freeze(src, Guest::of(vm)).await {
                    Ok(()) => (true, AppSync::Busy),
                    Err(why) => (false, AppSync::FreezeFailed(why)),
                };
                tag_sources(src, vm, &to_tag, frozen, now).await?;
                outcome
            }
        };
        self.thaw_when_cut(src, vm).await?;
        Ok(outcome)
    }

    /// Thaws the guest once every source frozen for has its snapshot cut, and every source
    /// is tagged: a source whose tag did not take (it changed as it was tagged) is tagged at
    /// the next pass, inside the freeze still, or the point would be crash-consistent. A guest
    /// frozen by someone else (no source frozen for) is theirs to thaw; KubeVirt thaws one
    /// nobody does after [`UNFREEZE_TIMEOUT`].
    async fn thaw_when_cut(&self, src: &SiteApi, vm: &VmModel) -> Result<(), FabricError> {
        let ns = vm.vm_namespace.as_str();
        if !guest_frozen(src, Guest::of(vm)).await? {
            return Ok(());
        }
        let mut sources = Vec::new();
        for disk in &vm.disks {
            let name = objects::replication_name(disk);
            let Some(rs) = src.get(REPLICATION_SOURCE, Some(ns), &name).await? else {
                continue;
            };
            let snapshot = match frozen_for_its_tag(&rs) {
                true => {
                    src.get(VOLUME_SNAPSHOT, Some(ns), &objects::volsync_source_snapshot(&name))
                        .await?
                }
                false => None,
            };
            sources.push((rs, snapshot));
        }
        match to_thaw(&sources, Utc::now()) {
            Some(ours) => self.thaw(src, vm, &ours).await,
            None => Ok(()),
        }
    }

    /// A run took the VM over in the middle of an app-consistent sync: the guest coldsite
    /// froze is thawed now, not at KubeVirt's backstop, for the run may hold the VM for hours.
    /// Only VMs with app-consistent points cost a read, and an unreachable source (the run
    /// may be an unplanned failover from it) none.
    pub async fn thaw_for_run(&self, vm: &VmModel, source: &SiteModel) -> Result<(), FabricError> {
        let (Some(_), Ok(src)) = (vm.app_consistent_interval, self.site(&source.name)) else {
            return Ok(());
        };
        if !guest_frozen(src, Guest::of(vm)).await? {
            return Ok(());
        }
        if super::group_cut::applies(vm, source) {
            return self.thaw_group_for_run(src, vm).await;
        }
        for disk in &vm.disks {
            let name = objects::replication_name(disk);
            let rs = src.get(REPLICATION_SOURCE, Some(&vm.vm_namespace), &name).await?;
            if let Some(rs) = rs.filter(frozen_for_its_tag) {
                return self.thaw(src, vm, &[rs]).await;
            }
        }
        Ok(())
    }

    /// Thaws the guest coldsite froze for `sources`, and records how long it was frozen.
    async fn thaw(&self, src: &SiteApi, vm: &VmModel, sources: &[Value]) -> Result<(), FabricError> {
        let since = sources
            .iter()
            .filter_map(|rs| annotation(rs, FROZEN_AT).and_then(parse_time))
            .min();
        self.unfreeze(src, Guest::of(vm), since).await
    }

    /// Thaws the guest coldsite froze at `since`, and records how long it was frozen.
    pub(super) async fn unfreeze(
        &self,
        src: &SiteApi,
        guest: Guest<'_>,
        since: Option<DateTime<Utc>>,
    ) -> Result<(), FabricError> {
        src.vmi_subresource(guest.namespace, guest.name, "unfreeze", &json!({}))
            .await
            .map_err(|e| super::dynamic::classify(&src.site, "thawing the guest", e))?;
        let seconds = since.map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        if let Some(seconds) = seconds {
            self.freeze_seconds
                .with_label_values(&[src.site.as_str()])
                .observe(seconds);
        }
        tracing::info!(vm = %guest.name, namespace = %guest.namespace, site = %src.site, frozen_seconds = ?seconds, "guest thawed");
        Ok(())
    }

    /// Adopts every disk's point of the sync, then hands the disks back to the schedule.
    async fn adopt(
        &self,
        src: &SiteApi,
        dst: &SiteApi,
        vm: &VmModel,
        disks: &[DiskEnds],
    ) -> Result<AppSync, FabricError> {
        self.thaw_when_cut(src, vm).await?;
        let frozen: Vec<bool> = disks.iter().map(|d| frozen_for_its_tag(&d.rs)).collect();
        let app_consistent = frozen.iter().all(|f| *f);
        for d in disks {
            // A VM's point is app-consistent only if all its disks are.
            if self.adopt_latest(dst, vm, &d.disk, app_consistent).await?.is_none() {
                return Ok(AppSync::Busy);
            }
        }
        finish(src, dst, vm, disks).await?;
        Ok(AppSync::Done {
            app_consistent,
            froze: frozen.contains(&true),
        })
    }
}

/// Pure: with the guest frozen, the sources frozen for once the guest may be thawed: every
/// one frozen for has its snapshot cut, and every source is tagged, or [`RETAG_WITHIN`] has
/// passed (a source whose tag did not take, as it changed when tagged, is tagged inside the
/// freeze at the next pass; a guest is not kept frozen longer for it). `None` to keep it
/// frozen, or when coldsite froze it for none (someone else's freeze).
fn to_thaw(sources: &[(Value, Option<Value>)], now: DateTime<Utc>) -> Option<Vec<Value>> {
    let ours: Vec<&(Value, Option<Value>)> = sources.iter().filter(|(rs, _)| frozen_for_its_tag(rs)).collect();
    let frozen_at = ours
        .iter()
        .filter_map(|(rs, _)| annotation(rs, FROZEN_AT).and_then(parse_time))
        .min();
    let retagging = frozen_at.is_some_and(|t| now.signed_duration_since(t).to_std().unwrap_or_default() < RETAG_WITHIN);
    if retagging && sources.iter().any(|(rs, _)| tag_on(rs).is_none()) {
        return None;
    }
    let cut = ours.iter().all(|(rs, snapshot)| source_cut(rs, snapshot.as_ref()));
    (cut && !ours.is_empty()).then(|| ours.into_iter().map(|(rs, _)| rs.clone()).collect())
}

/// How long a freeze waits for a source whose tag did not take.
const RETAG_WITHIN: Duration = Duration::from_secs(5);

/// Pure: whether a VM with these points is due an app-consistent sync, by the disks read.
fn due_for(disks: &[DiskEnds], interval: Duration, points: &[RecoveryPoint], now: DateTime<Utc>) -> bool {
    let newest = points.iter().rev().find(|p| p.app_consistent).map(|p| p.time);
    let attempted = disks
        .first()
        .and_then(|d| d.rd.as_ref())
        .and_then(|rd| annotation(rd, ATTEMPTED))
        .and_then(parse_time);
    !points.is_empty() && due(interval, newest, attempted, now)
}

/// Pure: whether an app-consistent sync is under way or due, by the disks read.
fn needs_work(disks: &[DiskEnds], interval: Option<Duration>, points: &[RecoveryPoint], now: DateTime<Utc>) -> bool {
    disks.iter().any(DiskEnds::tagged) || interval.is_some_and(|i| due_for(disks, i, points, now))
}

/// The disks' replication objects as the sites' watches show them (no mover Jobs); `None`
/// when a watch has not listed them or lacks one.
fn watched_disks(src: &SiteApi, dst: &SiteApi, vm: &VmModel) -> Option<Vec<DiskEnds>> {
    let ns = vm.vm_namespace.as_str();
    vm.disks
        .iter()
        .map(|disk| {
            let name = objects::replication_name(disk);
            Some(DiskEnds {
                disk: disk.clone(),
                rs: src.watched(REPLICATION_SOURCE, ns, &name)??,
                rd: dst.watched(REPLICATION_DESTINATION, ns, &name)?,
                job: None,
            })
        })
        .collect()
}

async fn read_disks(src: &SiteApi, dst: &SiteApi, vm: &VmModel) -> Result<Vec<DiskEnds>, FabricError> {
    let ns = vm.vm_namespace.as_str();
    let mut disks = Vec::new();
    for disk in &vm.disks {
        let name = objects::replication_name(disk);
        let Some(rs) = src.get(REPLICATION_SOURCE, Some(ns), &name).await? else {
            return Err(FabricError::transient(format!(
                "VM {}: no ReplicationSource for disk {disk} yet",
                vm.name
            )));
        };
        disks.push(DiskEnds {
            disk: disk.clone(),
            rs,
            rd: dst.get(REPLICATION_DESTINATION, Some(ns), &name).await?,
            job: dst
                .get(JOB, Some(ns), &objects::volsync_destination_mover(&name))
                .await?,
        });
    }
    Ok(disks)
}

/// A VM's guest at a site: what freezes and thaws act on.
#[derive(Clone, Copy)]
pub(super) struct Guest<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> Guest<'a> {
    pub fn of(vm: &'a VmModel) -> Self {
        Self {
            namespace: &vm.vm_namespace,
            name: &vm.vm_name,
        }
    }
}

pub(super) async fn guest_frozen(src: &SiteApi, guest: Guest<'_>) -> Result<bool, FabricError> {
    Ok(src
        .get(VMI, Some(guest.namespace), guest.name)
        .await?
        .is_some_and(|v| str_at(&v, "/status/fsFreezeStatus") == Some("frozen")))
}

pub(super) async fn freeze(src: &SiteApi, guest: Guest<'_>) -> Result<(), String> {
    let body = json!({ "unfreezeTimeout": UNFREEZE_TIMEOUT });
    src.vmi_subresource(guest.namespace, guest.name, "freeze", &body)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => format!(
                "virt-api at {} refused to freeze the guest: {} ({})",
                src.site, s.message, s.code
            ),
            other => format!("virt-api at {} did not freeze the guest: {other}", src.site),
        })?;
    tracing::info!(vm = %guest.name, namespace = %guest.namespace, site = %src.site, "guest frozen for an app-consistent point");
    Ok(())
}

/// Tags the destinations the protocol says to; the first disk's records when the sync began.
/// Tags each disk's destination `steps` ask for; with `attempted`, the first disk's records
/// when the sync was tried.
pub(super) async fn tag_destinations(
    dst: &SiteApi,
    vm: &VmModel,
    disks: &[&str],
    steps: &[Next],
    attempted: Option<DateTime<Utc>>,
) -> Result<(), FabricError> {
    for (i, (disk, step)) in disks.iter().zip(steps).enumerate() {
        let Next::TagDestination { tag } = step else {
            continue;
        };
        let mut patch = json!({"spec": {"trigger": {"manual": tag}}});
        if let Some(at) = attempted.filter(|_| i == 0) {
            patch["metadata"] = json!({"annotations": {ATTEMPTED: at.to_rfc3339()}});
        }
        merge_destination(dst, vm, disk, &patch).await?;
    }
    Ok(())
}

/// A merge patch to a disk's ReplicationDestination.
pub(super) async fn merge_destination(
    dst: &SiteApi,
    vm: &VmModel,
    disk: &str,
    patch: &Value,
) -> Result<(), FabricError> {
    let name = objects::replication_name(disk);
    dst.merge(REPLICATION_DESTINATION, Some(&vm.vm_namespace), &name, patch)
        .await?;
    Ok(())
}

/// Tags each source at the version judged, recording whether the guest was frozen for it.
async fn tag_sources(
    src: &SiteApi,
    vm: &VmModel,
    to_tag: &[(&DiskEnds, &Next)],
    frozen: bool,
    now: DateTime<Utc>,
) -> Result<(), FabricError> {
    for (d, step) in to_tag {
        let Next::TagSource { tag, source_version } = step else {
            continue;
        };
        let (frozen_for, frozen_at) = match frozen {
            true => (Some(tag.as_str()), Some(now.to_rfc3339())),
            false => (None, None),
        };
        let patch = json!({"metadata": {"annotations": {FROZEN_FOR: frozen_for, FROZEN_AT: frozen_at}},
                           "spec": {"trigger": {"manual": tag}}});
        let name = objects::replication_name(&d.disk);
        src.merge_at_version(
            REPLICATION_SOURCE,
            Some(&vm.vm_namespace),
            &name,
            source_version,
            &patch,
        )
        .await?;
    }
    Ok(())
}

/// Ends the sync: manual triggers off, so the schedule drives the disks again.
async fn finish(src: &SiteApi, dst: &SiteApi, vm: &VmModel, disks: &[DiskEnds]) -> Result<(), FabricError> {
    let ns = vm.vm_namespace.as_str();
    for d in disks {
        let name = objects::replication_name(&d.disk);
        if tag_on(&d.rs).is_some() {
            let patch = json!({"metadata": {"annotations": {FROZEN_FOR: null, FROZEN_AT: null}},
                               "spec": {"trigger": {"manual": null}}});
            src.merge(REPLICATION_SOURCE, Some(ns), &name, &patch).await?;
        }
        if d.rd.as_ref().and_then(tag_on).is_some() {
            merge_destination(dst, vm, &d.disk, &json!({"spec": {"trigger": {"manual": null}}})).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap()
    }

    #[test]
    fn due_once_an_interval_after_the_newest_point_or_attempt() {
        let hour = Duration::from_secs(3600);
        assert!(due(hour, None, None, at(0)));
        assert!(!due(hour, Some(at(0)), None, at(59)));
        assert!(due(hour, Some(at(0)), None, at(60)));
        // A failed attempt waits an interval too, so a guest without an agent is not frozen
        // at every reconcile.
        assert!(!due(hour, Some(at(0)), Some(at(30)), at(60)));
        assert!(due(hour, Some(at(0)), Some(at(30)), at(90)));
    }

    #[test]
    fn a_vm_needs_app_consistent_work_while_a_sync_is_under_way_or_one_is_due() {
        let hour = Duration::from_secs(3600);
        let disk = |trigger: Option<&str>, attempted: Option<DateTime<Utc>>| DiskEnds {
            disk: "d".into(),
            rs: json!({"spec": {"trigger": {"manual": trigger}}}),
            rd: Some(json!({"metadata": {"annotations": {ATTEMPTED: attempted.map(|t| t.to_rfc3339())}}})),
            job: None,
        };
        let point = |minutes, app_consistent| RecoveryPoint {
            time: at(minutes),
            app_consistent,
            one_instant: false,
        };
        let rest = [disk(None, Some(at(0)))];
        assert!(!needs_work(&rest, Some(hour), &[point(0, true)], at(30)));
        assert!(
            needs_work(&rest, Some(hour), &[point(0, true)], at(61)),
            "an interval on"
        );
        assert!(
            !needs_work(&[disk(None, Some(at(50)))], Some(hour), &[point(0, true)], at(61)),
            "attempted since: a guest that cannot be frozen is tried once an interval"
        );
        assert!(
            !needs_work(&rest, Some(hour), &[], at(61)),
            "no point yet: replication first"
        );
        let never = [disk(None, None)];
        assert!(
            needs_work(&never, Some(hour), &[point(0, false)], at(1)),
            "no app point, never attempted"
        );
        assert!(!needs_work(&rest, None, &[point(0, false)], at(600)), "no interval");
        let tagged = [disk(Some("app-42"), Some(at(0)))];
        assert!(
            needs_work(&tagged, None, &[point(0, true)], at(1)),
            "under way: finished even without an interval"
        );
    }

    #[test]
    fn no_source_is_tagged_before_every_destination_listens() {
        let tag = || Next::TagSource {
            tag: "app-9".into(),
            source_version: "9".into(),
        };
        // One disk's destination listens, the other's mover is not up yet: tagging the first
        // now would cut its snapshot unfrozen, and the point would be crash-consistent.
        assert_eq!(source_step(&[tag(), Next::Wait], false), SourceStep::Wait);
        assert_eq!(source_step(&[tag(), tag()], false), SourceStep::FreezeAndTagAll);
        assert_eq!(source_step(&[Next::Wait, Next::Wait], false), SourceStep::Wait);
        // A step that tagged one source and failed on the other is finished, not waited on.
        assert_eq!(source_step(&[Next::Wait, tag()], true), SourceStep::TagRest);
    }

    #[test]
    fn tags_of_app_consistent_syncs_are_told_from_runs() {
        assert!(is_tag("app-123"));
        assert!(!is_tag("apple-1") && !is_tag("app") && !is_tag("5f1c-app-1"));
    }

    #[test]
    fn a_source_is_cut_once_its_snapshot_has_a_time_or_its_sync_is_done() {
        let rs = |start: Option<&str>, last: Option<&str>| {
            json!({"spec": {"trigger": {"manual": "app-7"}},
                   "status": {"lastSyncStartTime": start, "lastManualSync": last}})
        };
        let cut = json!({"status": {"creationTime": "2026-12-01T00:00:00Z"}});
        let uncut = json!({"status": {}});
        assert!(!source_cut(&rs(None, None), None));
        assert!(!source_cut(&rs(Some("t"), None), Some(&uncut)));
        // A snapshot left from an earlier sync does not count before this one starts.
        assert!(!source_cut(&rs(None, None), Some(&cut)));
        assert!(source_cut(&rs(Some("t"), None), Some(&cut)));
        assert!(source_cut(&rs(None, Some("app-7")), None));
        // The previous sync's snapshot, still going as this sync starts: not this sync's cut.
        let going = json!({"metadata": {"deletionTimestamp": "2026-12-01T00:00:01Z"},
                           "status": {"creationTime": "2026-12-01T00:00:00Z"}});
        assert!(!source_cut(&rs(Some("t"), None), Some(&going)));
    }

    #[test]
    fn the_guest_is_thawed_once_every_source_is_tagged_and_every_frozen_one_cut() {
        let rs = |tag: Option<&str>, frozen_for: Option<&str>| {
            json!({"metadata": {"annotations": {FROZEN_FOR: frozen_for, FROZEN_AT: at(0).to_rfc3339()}},
                   "spec": {"trigger": {"manual": tag}},
                   "status": {"lastSyncStartTime": "t"}})
        };
        let cut = Some(json!({"status": {"creationTime": "2026-12-01T00:00:00Z"}}));
        let frozen = |tag| (rs(Some(tag), Some(tag)), cut.clone());
        let soon = at(0) + chrono::Duration::seconds(2);
        let later = at(0) + chrono::Duration::seconds(6);
        let thawed = |sources: &[(Value, Option<Value>)], now| to_thaw(sources, now).map(|v| v.len());
        assert_eq!(thawed(&[frozen("app-1"), frozen("app-2")], soon), Some(2));
        // The second disk's tag did not take: it is tagged inside this freeze, unless that
        // takes longer than a guest is kept frozen for it.
        let untagged = (rs(None, None), None);
        assert_eq!(thawed(&[frozen("app-1"), untagged.clone()], soon), None);
        assert_eq!(thawed(&[frozen("app-1"), untagged], later), Some(1));
        // A frozen source whose snapshot is not cut yet.
        let uncut = (rs(Some("app-2"), Some("app-2")), None);
        assert_eq!(thawed(&[frozen("app-1"), uncut], later), None);
        // Tagged after a failed freeze, or frozen by someone else: not coldsite's to thaw.
        assert_eq!(thawed(&[(rs(Some("app-1"), None), None)], later), None);
    }
}
