//! The ProtectedVM's status from what the reconcile observed: its standing, replication,
//! recovery points and the fencing of its copy at the other site. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::condition;
use coldsite_api::protected_vm::{
    Consistency, LISTED_POINTS, PointStatus, ProtectedVMStatus, ProtectionPhase, RecoveryPointsStatus,
    ReplicationDirection, ReplicationHealth, ReplicationStatus,
};
use coldsite_engine::fabric::ReplicationState;
use coldsite_engine::lifecycle::Side;

use crate::conditions::{self, Desired};
use crate::kubevirt::app_consistent::AppSync;
use crate::kubevirt::fabric::Fence;
use coldsite_engine::standing::Settled;

/// Pure: replication health from the last sync and the RPO.
pub fn health(
    now: DateTime<Utc>,
    last_sync: Option<DateTime<Utc>>,
    rpo: Duration,
    paused: bool,
) -> (ReplicationHealth, Option<i64>) {
    if paused {
        return (ReplicationHealth::Paused, None);
    }
    let Some(age) = coldsite_engine::rpo::current_rpo(now, last_sync) else {
        return (ReplicationHealth::Unknown, None);
    };
    let rpo = rpo.as_secs() as i64;
    let h = if age <= rpo {
        ReplicationHealth::Healthy
    } else if age <= 2 * rpo {
        ReplicationHealth::Degraded
    } else {
        ReplicationHealth::Stalled
    };
    (h, Some(age))
}

/// What one reconcile saw.
pub struct Observed<'a> {
    pub settled: &'a Settled,
    /// Replication as it stands, when the VM replicates.
    pub replication: Option<&'a ReplicationState>,
    /// Why protection cannot proceed: a bounded reason and a message.
    pub problem: Option<(&'static str, String)>,
    /// The copies that must not run, by side: how fencing found each, or why it could not
    /// look. Empty when the spec is invalid.
    pub fences: Vec<(Side, Result<Fence, String>)>,
    /// The site of each side, for messages.
    pub sites: (&'a str, &'a str),
    pub rpo: Duration,
    pub rpo_text: &'a str,
    pub now: DateTime<Utc>,
    pub generation: Option<i64>,
    /// What this reconcile's app-consistent sync came to, when it ran.
    pub app: Option<&'a AppSync>,
    /// `spec.replication.appConsistentInterval`.
    pub app_interval: Option<&'a str>,
    /// How the VM's disks are cut at the site it replicates from, when it replicates.
    pub disk_cut: Option<DiskCut<'a>>,
}

/// How a VM's disks are cut at the source of its replication.
pub struct DiskCut<'a> {
    pub disks: usize,
    pub source: &'a str,
    /// The source Site's `volumeGroupSnapshotClassName`.
    pub class: Option<&'a str>,
    /// The consistency group's members, the VM among them, when it is in one.
    pub cut_with: &'a [String],
}

impl Observed<'_> {
    fn site(&self, side: Side) -> &str {
        match side {
            Side::Primary => self.sites.0,
            Side::Recovery => self.sites.1,
        }
    }
}

/// The status, and whether the VM is Ready with the reason and message.
pub fn build(old: &ProtectedVMStatus, o: &Observed<'_>) -> (ProtectedVMStatus, (bool, &'static str, String)) {
    let mut status = old.clone();
    let s = o.settled;
    let mut resting = s.resting;
    let paused = resting.direction == ReplicationDirection::Paused;
    // Points counted for the other direction are not points at the new target.
    if old.replication_direction.is_some_and(|d| d != resting.direction) {
        status.recovery_points = None;
    }
    if let Some(state) = o.replication {
        let (h, age) = health(o.now, state.last_sync, o.rpo, paused);
        status.replication = Some(ReplicationStatus {
            health: if state.established {
                h
            } else {
                ReplicationHealth::Unknown
            },
            last_sync_time: state.last_sync.map(coldsite_engine::time::to_k8s),
            current_rpo_seconds: age,
            bytes_transferred: state.bytes_transferred,
        });
        status.recovery_points = Some(points(state));
        if resting.phase == ProtectionPhase::Enabling && state.established && state.last_sync.is_some() {
            resting.phase = ProtectionPhase::Protected;
        }
    } else if paused {
        status.replication = Some(ReplicationStatus {
            health: ReplicationHealth::Paused,
            ..status.replication.clone().unwrap_or_default()
        });
    }
    // An invalid spec shows as Error without losing the VM's place in the cycle.
    let shown = match &o.problem {
        _ if s.claim.is_some() => s.shown,
        Some(("InvalidSpec", _)) => ProtectionPhase::Error,
        _ => resting.phase,
    };
    status.phase = Some(shown);
    status.resting_phase = (shown != resting.phase).then_some(resting.phase);
    status.applied_run = s.applied_run.clone();
    status.active_site = Some(o.site(resting.active).to_owned());
    status.replication_direction = Some(resting.direction);
    let ready = ready(&status, o, resting.phase);
    set_conditions(&mut status, o, paused, &ready);
    status.observed_generation = o.generation;
    (status, ready)
}

fn points(state: &ReplicationState) -> RecoveryPointsStatus {
    let points = &state.points;
    RecoveryPointsStatus {
        count: points.len() as i32,
        oldest: points.first().map(|p| coldsite_engine::time::to_k8s(p.time)),
        latest: points.last().map(|p| coldsite_engine::time::to_k8s(p.time)),
        latest_app_consistent: points
            .iter()
            .rev()
            .find(|p| p.app_consistent)
            .map(|p| coldsite_engine::time::to_k8s(p.time)),
        points: points
            .iter()
            .rev()
            .take(LISTED_POINTS)
            .map(|p| PointStatus {
                time: coldsite_engine::time::to_k8s(p.time),
                consistency: Consistency::of(p.app_consistent),
                one_instant: p.one_instant,
            })
            .collect(),
    }
}

fn rpo_met(status: &ProtectedVMStatus, rpo: Duration) -> bool {
    status
        .replication
        .as_ref()
        .and_then(|r| r.current_rpo_seconds)
        .is_some_and(|a| a <= rpo.as_secs() as i64)
}

fn ready(status: &ProtectedVMStatus, o: &Observed<'_>, phase: ProtectionPhase) -> (bool, &'static str, String) {
    let replicating = o.replication.is_some_and(|s| s.established);
    let waiting = o
        .replication
        .map(|s| s.waiting.join("; "))
        .filter(|w| !w.is_empty())
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    let active = o.site(o.settled.resting.active);
    let other = o.site(o.settled.resting.active.other());
    match (&o.problem, phase) {
        (Some((reason, message)), _) => (false, reason, message.clone()),
        (None, _) if o.settled.claim.is_some() => (
            false,
            "RunInProgress",
            format!(
                "run {} holds this VM",
                o.settled.claim.as_ref().map(|c| c.run.as_str()).unwrap_or_default()
            ),
        ),
        (None, ProtectionPhase::FailedOver | ProtectionPhase::Committed) => (
            false,
            "FailedOver",
            format!("runs at {active}; replication is paused until a reprotect replicates it to {other}"),
        ),
        (None, _) if !replicating => (false, "Enabling", format!("replication is being set up{waiting}")),
        (None, _) if !rpo_met(status, o.rpo) => (
            false,
            "RpoNotMet",
            match status.replication.as_ref().and_then(|r| r.last_sync_time.as_ref()) {
                Some(t) => format!("newest recovery point from {}, older than the RPO {}", t.0, o.rpo_text),
                None => format!("no recovery point yet{waiting}"),
            },
        ),
        (None, _) => (
            true,
            "Protected",
            format!("replicating from {active} to {other}; RPO met"),
        ),
    }
}

fn set_conditions(
    status: &mut ProtectedVMStatus,
    o: &Observed<'_>,
    paused: bool,
    ready: &(bool, &'static str, String),
) {
    let t = coldsite_engine::time::to_k8s(o.now);
    let replicating = o.replication.is_some_and(|s| s.established) && !paused;
    let rpo_met = rpo_met(status, o.rpo);
    // Messages name the newest point's time, not its age, so they do not change by the second.
    let newest = status.replication.as_ref().and_then(|r| r.last_sync_time.as_ref());
    let mut desired = vec![
        Desired {
            type_: condition::READY,
            ok: ready.0,
            reason: ready.1,
            message: ready.2.clone(),
        },
        Desired {
            type_: condition::REPLICATING,
            ok: replicating,
            reason: match (replicating, paused) {
                (true, _) => "Replicating",
                (false, true) => "Paused",
                (false, false) => "NotEstablished",
            },
            message: format!("{:?}", o.settled.resting.direction),
        },
        Desired {
            type_: condition::RPO_MET,
            ok: rpo_met,
            reason: if rpo_met { "WithinRpo" } else { "RpoExceeded" },
            message: match newest {
                Some(t) => format!("writes since {} at risk, RPO {}", t.0, o.rpo_text),
                None => "no recovery point yet".into(),
            },
        },
    ];
    if !o.fences.is_empty() {
        desired.push(fenced(o));
    }
    if let Some(d) = app_consistent(status, o.app, o.app_interval) {
        desired.push(d);
    }
    if o.app_interval.is_none() {
        status.conditions.retain(|c| c.type_ != condition::APP_CONSISTENT);
    }
    match o.disk_cut.as_ref().filter(|c| c.disks > 1 || !c.cut_with.is_empty()) {
        Some(cut) => {
            let newest = o.replication.and_then(|r| r.points.last());
            desired.push(disks_consistent(cut, o.app, newest.map(|p| p.one_instant)))
        }
        None => status.conditions.retain(|c| c.type_ != condition::DISKS_CONSISTENT),
    }
    for d in desired {
        conditions::set(&mut status.conditions, d, o.generation, t.clone());
    }
}

/// The `AppConsistent` condition of a VM with `appConsistentInterval`: how its latest
/// app-consistent sync went. Between syncs the last outcome stands.
fn app_consistent(
    status: &ProtectedVMStatus,
    app: Option<&AppSync>,
    interval: Option<&str>,
) -> Option<Desired<'static>> {
    let interval = interval?;
    let shown = coldsite_api::common::find_condition(&status.conditions, condition::APP_CONSISTENT);
    let has_point = status
        .recovery_points
        .as_ref()
        .is_some_and(|p| p.latest_app_consistent.is_some());
    let frozen = || {
        (
            true,
            "Frozen",
            format!(
                "the newest app-consistent point was cut with the guest's filesystems frozen; one every {interval}"
            ),
        )
    };
    let (ok, reason, message) = match app {
        Some(AppSync::FreezeFailed(why)) => (
            false,
            "FreezeFailed",
            format!("{why}; that point is crash-consistent, and the guest is tried again in {interval}"),
        ),
        Some(AppSync::Error(why)) => (false, "SyncError", why.clone()),
        Some(AppSync::Done {
            app_consistent: false,
            froze: true,
        }) => (
            false,
            "NotAllDisksFrozen",
            "the disks were not all cut inside one freeze; that point is crash-consistent".to_owned(),
        ),
        Some(AppSync::Done {
            app_consistent: true, ..
        }) => frozen(),
        // A member of a consistency group learns of its group's freezes from its points alone.
        _ if has_point && shown.is_none_or(|c| c.reason == "Pending") => frozen(),
        _ if shown.is_some() => return None,
        _ => (
            false,
            "Pending",
            format!(
                "no app-consistent point yet: the guest is frozen for one once replication has a point, then every {interval}"
            ),
        ),
    };
    Some(Desired {
        type_: condition::APP_CONSISTENT,
        ok,
        reason,
        message,
    })
}

/// The `DisksConsistent` condition of a VM with several disks or in a consistency group: cut
/// together by a group snapshot, or each on its own (and how to change that), and with
/// which VMs. `newest_one_instant`: whether the newest point holds every disk from one
/// instant, when there is a point.
fn disks_consistent(
    cut: &DiskCut<'_>,
    outcome: Option<&AppSync>,
    newest_one_instant: Option<bool>,
) -> Desired<'static> {
    let mut d = disks_alone(cut, outcome, newest_one_instant);
    if let Some(driver) = cut.cut_with.first() {
        d.message.push_str(&format!(
            "; with its consistency group: {} (rounds driven by {driver}, whose Events say how they go)",
            coldsite_engine::listing::some_of(cut.cut_with)
        ));
    }
    d
}

fn disks_alone(cut: &DiskCut<'_>, outcome: Option<&AppSync>, newest_one_instant: Option<bool>) -> Desired<'static> {
    let (ok, reason, message) = match (cut.class, outcome, newest_one_instant) {
        (Some(_), Some(AppSync::CutFailed(why)), _) => (
            false,
            "CutFailed",
            format!("{why}; this round's disks are cut one by one"),
        ),
        (Some(class), _, Some(false)) => (
            false,
            "PerDiskPoint",
            format!(
                "the newest point holds its {} disks cut one by one: the group snapshot of its round at {} \
                 failed (see the controller's log); VolumeGroupSnapshotClass {class} is tried again next round",
                cut.disks, cut.source
            ),
        ),
        (Some(class), _, _) => (
            true,
            "GroupSnapshot",
            format!(
                "its {} disks are cut at one instant at {} (VolumeGroupSnapshotClass {class})",
                cut.disks, cut.source
            ),
        ),
        (None, _, _) => (
            false,
            "NoGroupSnapshotClass",
            format!(
                "its {} disks are cut one by one, so a crash-consistent point may hold them at different \
                 instants; set spec.storage.volumeGroupSnapshotClassName on Site {} to cut them together",
                cut.disks, cut.source
            ),
        ),
    };
    Desired {
        type_: condition::DISKS_CONSISTENT,
        ok,
        reason,
        message,
    }
}

/// The `Fenced` condition: are the copies that must not run halted?
fn fenced(o: &Observed<'_>) -> Desired<'static> {
    let mut ok = true;
    let mut reason = "NoCopy";
    let mut notes = Vec::new();
    for (side, found) in &o.fences {
        let site = o.site(*side);
        notes.push(match found {
            Ok(Fence::NoCopy) => format!("no copy of the VM at {site}"),
            Ok(Fence::Halted) => format!("the copy at {site} is halted"),
            Ok(Fence::JustHalted) => format!("the copy at {site} was running or starting, and coldsite halted it"),
            Ok(Fence::Spared) => format!("the copy at {site} is the one the run in progress started"),
            Err(why) => format!(
                "cannot confirm the copy at {site} is halted ({why}); coldsite halts it as soon as {site} answers"
            ),
        });
        match found {
            Err(_) => {
                ok = false;
                reason = "SiteUnreachable";
            }
            Ok(Fence::NoCopy) => {}
            Ok(_) if ok => reason = "Halted",
            Ok(_) => {}
        }
    }
    Desired {
        type_: condition::FENCED,
        ok,
        reason,
        message: notes.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_consistent_shows_the_latest_syncs_outcome_until_the_next() {
        let mut status = ProtectedVMStatus::default();
        let now = coldsite_engine::time::to_k8s(Utc::now());
        let show = |status: &mut ProtectedVMStatus, app: Option<&AppSync>| {
            if let Some(d) = app_consistent(status, app, Some("1h")) {
                conditions::set(&mut status.conditions, d, None, now.clone());
            }
            let c = coldsite_api::common::find_condition(&status.conditions, condition::APP_CONSISTENT).cloned();
            c.map(|c| (c.status, c.reason, c.message))
        };
        let (ok, reason, _) = show(&mut status, Some(&AppSync::Idle)).unwrap();
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "Pending"));
        let failed = AppSync::FreezeFailed("virt-api refused: guest agent is not connected (500)".into());
        let (ok, reason, message) = show(&mut status, Some(&failed)).unwrap();
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "FreezeFailed"));
        assert!(
            message.contains("guest agent is not connected") && message.contains("crash-consistent"),
            "{message}"
        );
        // The failed sync's crash-consistent point, and the reconciles after it, keep it.
        let unfrozen = AppSync::Done {
            app_consistent: false,
            froze: false,
        };
        for app in [Some(&unfrozen), Some(&AppSync::Busy), Some(&AppSync::Idle), None] {
            assert_eq!(show(&mut status, app).unwrap().1, "FreezeFailed");
        }
        let done = AppSync::Done {
            app_consistent: true,
            froze: true,
        };
        let (ok, reason, _) = show(&mut status, Some(&done)).unwrap();
        assert_eq!((ok.as_str(), reason.as_str()), ("True", "Frozen"));
        assert_eq!(app_consistent(&status, Some(&done), None).map(|d| d.reason), None);
    }

    #[test]
    fn health_follows_the_rpo() {
        let now = Utc::now();
        let rpo = Duration::from_secs(900);
        let ago = |s: i64| Some(now - chrono::TimeDelta::seconds(s));
        assert_eq!(health(now, ago(60), rpo, false), (ReplicationHealth::Healthy, Some(60)));
        assert_eq!(health(now, ago(1000), rpo, false).0, ReplicationHealth::Degraded);
        assert_eq!(health(now, ago(5000), rpo, false).0, ReplicationHealth::Stalled);
        assert_eq!(health(now, None, rpo, false).0, ReplicationHealth::Unknown);
        assert_eq!(health(now, ago(60), rpo, true).0, ReplicationHealth::Paused);
    }

    #[test]
    fn disks_consistent_follows_the_class_the_cut_and_the_newest_point() {
        let with = DiskCut {
            disks: 2,
            source: "hq",
            class: Some("groups"),
            cut_with: &[],
        };
        let without = DiskCut { class: None, ..with };
        let verdict = |cut: &DiskCut<'_>, outcome: Option<&AppSync>, newest| {
            let d = disks_consistent(cut, outcome, newest);
            (d.ok, d.reason)
        };
        let no_class = disks_consistent(&without, None, Some(false));
        assert_eq!((no_class.ok, no_class.reason), (false, "NoGroupSnapshotClass"));
        assert!(
            no_class
                .message
                .contains("spec.storage.volumeGroupSnapshotClassName on Site hq")
        );
        assert_eq!(verdict(&with, None, Some(true)), (true, "GroupSnapshot"));
        assert_eq!(verdict(&with, None, None), (true, "GroupSnapshot"), "no point yet");
        let failed = AppSync::CutFailed("group snapshot ns/g at hq was not ready within 120s".into());
        assert_eq!(verdict(&with, Some(&failed), Some(true)), (false, "CutFailed"));
        // After the failed round, its per-disk point is the newest: still said, until a cut.
        assert_eq!(
            verdict(&with, Some(&AppSync::Round), Some(false)),
            (false, "PerDiskPoint")
        );
        assert_eq!(
            verdict(&with, Some(&AppSync::Idle), Some(true)),
            (true, "GroupSnapshot")
        );
        // A one-disk member of a consistency group: cut with the others, which it names.
        let members = ["app01".to_owned(), "db01".to_owned()];
        let member = DiskCut {
            disks: 1,
            cut_with: &members,
            ..with
        };
        let d = disks_consistent(&member, None, Some(true));
        assert_eq!((d.ok, d.reason), (true, "GroupSnapshot"));
        assert!(
            d.message.ends_with(
                "with its consistency group: app01, db01 (rounds driven by app01, whose Events say how they go)"
            ),
            "{}",
            d.message
        );
    }
}
