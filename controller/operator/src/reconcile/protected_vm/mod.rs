//! ProtectedVM: where the VM stands in the disaster-recovery cycle, replication from where it
//! runs to the other site with recovery points kept and pruned, and fencing: its copy at the
//! other site is kept halted, and halted first when that site answers again. A finalizer
//! removes replication when protection ends.
//!
//! Besides its own changes, a ProtectedVM is reconciled when its VM or its replication objects
//! change at either site ([`triggers`]); at rest it is looked at again by its RPO, else every 30 s.
//!
//! Stages: [`standing`] (pure: settle the last run's outcome, see who holds the VM), fence,
//! replicate (with app-consistent syncs on their interval) or pause, [`status`] (pure), write.

pub mod cleanup;
pub mod status;
pub mod triggers;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coldsite_api::ProtectedVM;
use coldsite_api::protected_vm::{ProtectedVMSpec, ProtectedVMStatus, ReplicationDirection};
use coldsite_api::recovery_run::RunPhase;
use coldsite_engine::fabric::{FabricError, ReplicationState};
use coldsite_engine::lifecycle::Side;
use coldsite_engine::model::{SiteModel, VmModel};
use coldsite_engine::rpo;
use coldsite_engine::validate::{self, Severity};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use self::status::Observed;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kubevirt::app_consistent::AppSync;
use crate::kubevirt::fabric::{Fence, KubeVirtFabric};
use crate::kubevirt::group_cut;
use coldsite_engine::standing::{self, Claim, Halt, Settled};

pub use self::status::health;

pub const FINALIZER: &str = "coldsite.io/protection";
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// How often a VM waiting for replication looks again while both sites' watches announce
/// its replication objects' changes: those reconcile it as the sync moves, and the look only
/// refreshes why it waits. At 5,000 VMs waiting at once, looks every [`CHECK_EVERY`] took
/// all the API servers had.
const WAITING_LOOK: Duration = Duration::from_secs(120);

/// How soon a VM looks again while the storage cuts its newest point, at first and at most,
/// when the sites' watches do not announce the cut: a point not seen is a VM not reported
/// protected. In between, a quarter of the wait so far, so that storage slow to cut
/// thousands of snapshots is not asked thousands of times more. Announced, the most.
const CUT_LOOK: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));
/// How often a VM whose copy could not be fenced looks again: the other site may be back.
const FENCE_RETRY: Duration = Duration::from_secs(5);
/// How often a VM looks again while an app-consistent sync is under way.
const APP_SYNC_RETRY: Duration = Duration::from_secs(1);
/// How often a VM looks again while a group round without a freeze is under way.
const ROUND_RETRY: Duration = Duration::from_secs(3);

pub async fn reconcile(pvm: Arc<ProtectedVM>, ctx: Arc<Context>) -> Result<Action> {
    super::finalized(
        pvm,
        ctx,
        FINALIZER,
        |o, c| async move { apply(&o, &c).await },
        |o, c| async move { cleanup::cleanup(&o, &c).await },
    )
    .await
}

/// The two sites by side.
struct Sides {
    primary: SiteModel,
    recovery: SiteModel,
}

impl Sides {
    fn of(&self, side: Side) -> &SiteModel {
        match side {
            Side::Primary => &self.primary,
            Side::Recovery => &self.recovery,
        }
    }
}

async fn apply(pvm: &ProtectedVM, ctx: &Context) -> Result<Action> {
    let ns = pvm.namespace().unwrap_or_default();
    let spec = &pvm.spec;
    let now = Utc::now();
    let fabric = ctx.fabric(&spec.primary_site, &spec.recovery_site).await?;
    let inv = crate::inventory::load(
        ctx,
        &ns,
        &fabric,
        crate::inventory::Scope::Vms(std::slice::from_ref(pvm)),
    )
    .await?;
    let old = pvm.status.clone().unwrap_or_default();
    let has_points = old.recovery_points.as_ref().is_some_and(|p| p.count > 0);
    let settled = standing::settle(&old, &spec.recovery_site, has_points);
    if let Some(claim) = &settled.claim
        && release_if_gone(ctx, pvm, claim).await?
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let sides = Sides {
        primary: SiteModel::of(&spec.primary_site, inv.sites.get(&spec.primary_site)),
        recovery: SiteModel::of(&spec.recovery_site, inv.sites.get(&spec.recovery_site)),
    };
    let (model, cut_set) = model_and_cut_set(ctx, pvm, &inv, &fabric).await?;
    // Fencing comes before any other write at the other site.
    let fences = match &model {
        Ok(vm) => fence_all(ctx, &fabric, pvm, vm, &settled, &sides).await,
        Err(_) => Vec::new(),
    };
    let fenced = fences.iter().all(|(_, f)| f.is_ok());
    let Protection {
        replication,
        problem,
        app,
    } = match &model {
        Err(text) => Protection::problem("InvalidSpec", text.clone()),
        Ok(vm) if settled.claim.is_some() => {
            leave_to_the_run(&fabric, pvm, vm, sides.of(settled.resting.active)).await;
            Protection::default()
        }
        Ok(_) if !fenced => Protection::default(),
        Ok(vm) => protect(&fabric, &settled, vm, cut_set.as_ref(), &sides).await,
    };
    let rpo = coldsite_engine::model::parse_duration(&spec.replication.rpo).unwrap_or(Duration::from_secs(900));
    // At rest: no run holds it, nothing is wrong, and no app-consistent syncs to drive.
    let at_rest = settled.claim.is_none()
        && problem.is_none()
        && model.as_ref().is_ok_and(|vm| vm.app_consistent_interval.is_none());
    let look_again = next_look(at_rest, sync_announced(ctx, spec), replication.as_ref(), rpo, now);
    let observed = Observed {
        settled: &settled,
        replication: replication.as_ref(),
        problem,
        fences,
        sites: (&spec.primary_site, &spec.recovery_site),
        rpo,
        rpo_text: &spec.replication.rpo,
        now,
        generation: pvm.metadata.generation,
        app: app.as_ref(),
        app_interval: spec.replication.app_consistent_interval.as_deref(),
        disk_cut: match (&model, replication.is_some()) {
            (Ok(vm), true) => Some(disk_cut(vm, sides.of(settled.resting.active))),
            _ => None,
        },
    };
    let (status, ready) = status::build(&old, &observed);
    report_app_sync(ctx, pvm, app.as_ref(), sides.of(settled.resting.active)).await;
    if write_status(ctx, pvm, &old, &status).await? == crate::status::Written::Stale {
        // Reconciled from an object a write behind: again, from the newer one, which alone
        // tells whether the phase changed (no Event twice for one change).
        return Ok(Action::requeue(APP_SYNC_RETRY));
    }
    report(ctx, pvm, &old, &status, &ready, &observed).await;
    Ok(Action::requeue(requeue_after(app.as_ref(), fenced, look_again)))
}

/// Whether both sites' watches announce the steps of the VM's syncs.
fn sync_announced(ctx: &Context, spec: &ProtectedVMSpec) -> bool {
    [&spec.primary_site, &spec.recovery_site]
        .into_iter()
        .all(|site| ctx.sites.watch(site).is_some_and(|w| w.follows_replication()))
}

/// How the VM's disks are cut at the source it replicates from.
fn disk_cut<'a>(vm: &'a VmModel, source: &'a SiteModel) -> status::DiskCut<'a> {
    status::DiskCut {
        disks: vm.disks.len(),
        source: &source.name,
        class: source.group_snapshot_class.as_deref(),
        cut_with: &vm.cut_with,
    }
}

/// When to reconcile again: soon while an app-consistent sync or a fence is under way, else
/// at the look the VM's protection asks for.
fn requeue_after(app: Option<&AppSync>, fenced: bool, look_again: Duration) -> Duration {
    match app {
        // A frozen guest waits for the next look: it is thawed as soon as its snapshots are cut.
        Some(AppSync::Busy | AppSync::Done { .. }) => APP_SYNC_RETRY,
        Some(AppSync::Round | AppSync::CutFailed(_)) => ROUND_RETRY,
        _ if !fenced => FENCE_RETRY,
        Some(AppSync::Error(_)) => FENCE_RETRY,
        _ => look_again,
    }
}

/// The VM's model with the consistency group it is cut with, or its spec's errors; and the
/// group's members when this VM drives the group's rounds.
async fn model_and_cut_set(
    ctx: &Context,
    pvm: &ProtectedVM,
    inv: &validate::Inventory,
    fabric: &KubeVirtFabric,
) -> Result<(std::result::Result<VmModel, String>, Option<GroupMembers>)> {
    let ns = pvm.namespace().unwrap_or_default();
    let mut vm = match validate::vm_model(pvm, inv) {
        Ok((vm, _)) => vm,
        Err(problems) => return Ok((Err(errors_of(&problems)), None)),
    };
    vm.cut_with = crate::inventory::cut_with(ctx, &ns, &vm.name).await?;
    let cut_set = if vm.in_consistency_group() && vm.round_driver() == vm.name {
        Some(crate::inventory::cut_set(ctx, &ns, fabric, &vm).await?)
    } else {
        None
    };
    Ok((Ok(vm), cut_set))
}

/// A consistency group's members as models, or why one cannot be cut.
type GroupMembers = std::result::Result<Vec<VmModel>, String>;

/// Writes the status over the object it was built from. `lastRun` belongs to the runs (their
/// field manager): this reconciler never writes it, or a run's claim could not clear what an
/// earlier run left there.
async fn write_status(
    ctx: &Context,
    pvm: &ProtectedVM,
    was: &ProtectedVMStatus,
    mine: &ProtectedVMStatus,
) -> Result<crate::status::Written> {
    let mine = ProtectedVMStatus {
        last_run: None,
        ..mine.clone()
    };
    let was = ProtectedVMStatus {
        last_run: None,
        ..was.clone()
    };
    let api: Api<ProtectedVM> = Api::namespaced(ctx.client.clone(), &pvm.namespace().unwrap_or_default());
    let version = pvm.resource_version().unwrap_or_default();
    crate::status::apply(
        &api,
        &pvm.name_any(),
        Some(&version),
        Some(&old_for_compare(&was, &mine)),
        &mine,
    )
    .await
}

/// When to look again if nothing changes. A VM at rest that replicates with a point is looked
/// at by its RPO ([`rpo::next_look`]): changes to it and to its copies at the sites trigger a
/// reconcile on their own. One at rest that waits for its first point, every [`WAITING_LOOK`]
/// while the sites' watches announce its sync's progress (`watched`); while its newest point
/// is being cut, by [`CUT_LOOK`]. Anything else, every [`CHECK_EVERY`].
fn next_look(
    at_rest: bool,
    watched: bool,
    replication: Option<&ReplicationState>,
    rpo: Duration,
    now: chrono::DateTime<Utc>,
) -> Duration {
    match (at_rest, replication) {
        (
            true,
            Some(ReplicationState {
                point_cut_since: Some(synced),
                ..
            }),
        ) => match watched {
            true => CUT_LOOK.1,
            false => ((now - *synced).to_std().unwrap_or_default() / 4).clamp(CUT_LOOK.0, CUT_LOOK.1),
        },
        (
            true,
            Some(ReplicationState {
                established: true,
                last_sync: Some(newest),
                ..
            }),
        ) => rpo::next_look(rpo, *newest, now),
        (true, Some(_)) if watched => WAITING_LOOK,
        _ => CHECK_EVERY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpo_age_alone_is_no_status_write_but_a_sync_or_a_change_of_health_is() {
        let status = |health: &str, last_sync: &str, age: i64| -> ProtectedVMStatus {
            serde_json::from_value(serde_json::json!({"phase": "Protected",
                "replication": {"health": health, "lastSyncTime": last_sync, "currentRpoSeconds": age}}))
            .unwrap()
        };
        let written = status("Healthy", "2026-12-05T03:00:00Z", 10);
        let unchanged = |new: &ProtectedVMStatus| old_for_compare(&written, new) == *new;
        assert!(
            unchanged(&status("Healthy", "2026-12-05T03:00:00Z", 290)),
            "4m40s later"
        );
        assert!(
            !unchanged(&status("Degraded", "2026-12-05T03:00:00Z", 301)),
            "past the RPO"
        );
        assert!(!unchanged(&status("Healthy", "2026-12-05T03:05:00Z", 4)), "a sync");
        let mut point = status("Healthy", "2026-12-05T03:00:00Z", 200);
        point.recovery_points = Some(coldsite_api::protected_vm::RecoveryPointsStatus {
            count: 2,
            ..Default::default()
        });
        assert!(!unchanged(&point), "a point more");
    }

    #[test]
    fn a_vm_at_rest_looks_by_its_rpo_with_a_point_and_waits_on_the_watches_without_one() {
        let now = Utc::now();
        let day = Duration::from_secs(24 * 3600);
        let replicating = |last_sync| ReplicationState {
            established: true,
            last_sync,
            ..ReplicationState::default()
        };
        let with_point = replicating(Some(now));
        for watched in [true, false] {
            assert_eq!(
                next_look(true, watched, Some(&with_point), day, now),
                Duration::from_secs(300)
            );
            // Held by a run, in trouble, or driving app-consistent syncs: the regular look.
            assert_eq!(next_look(false, watched, Some(&with_point), day, now), CHECK_EVERY);
            // Paused after a failover: nothing announces its way back.
            assert_eq!(next_look(true, watched, None, day, now), CHECK_EVERY);
        }
        // No point yet, or replication not set up: the watches bring its progress, when up.
        let waiting = ReplicationState::default();
        for r in [&replicating(None), &waiting] {
            assert_eq!(next_look(true, true, Some(r), day, now), WAITING_LOOK);
            assert_eq!(next_look(true, false, Some(r), day, now), CHECK_EVERY);
        }
        assert_eq!(next_look(false, true, Some(&waiting), day, now), CHECK_EVERY);
        // The storage cuts its newest point, first or not: unwatched, soon, and less often the
        // longer the cut takes; watched, the cut is announced, and the look is a fallback.
        for r in [replicating(None), with_point] {
            for (waited, look) in [(0, 5.0), (30, 7.5), (100, 25.0), (600, 60.0)] {
                let cutting = ReplicationState {
                    point_cut_since: Some(now - chrono::TimeDelta::seconds(waited)),
                    ..r.clone()
                };
                assert_eq!(
                    next_look(true, false, Some(&cutting), day, now),
                    Duration::from_secs_f64(look)
                );
                assert_eq!(next_look(true, true, Some(&cutting), day, now), CUT_LOOK.1);
            }
        }
    }
}

/// A run holds the VM: replication is its to drive, and a guest coldsite froze is thawed.
async fn leave_to_the_run(fabric: &KubeVirtFabric, pvm: &ProtectedVM, vm: &VmModel, source: &SiteModel) {
    if let Err(e) = fabric.thaw_for_run(vm, source).await {
        tracing::warn!(protected_vm = %pvm.name_any(), error = %e.message, "could not thaw the guest for the run");
    }
}

/// Halts the copies that must not run, as [`standing::halts`] says; how each was found.
async fn fence_all(
    ctx: &Context,
    fabric: &KubeVirtFabric,
    pvm: &ProtectedVM,
    vm: &VmModel,
    settled: &Settled,
    sides: &Sides,
) -> Vec<(Side, std::result::Result<Fence, String>)> {
    let mut fences = Vec::new();
    for halt in standing::halts(settled) {
        let found = fence(ctx, fabric, pvm, vm, sides.of(halt.side), &halt).await;
        fences.push((halt.side, found));
    }
    fences
}

/// Halts the VM's copy at `site` as `halt` says, reading it from the site's watch when there
/// is one.
async fn fence(
    ctx: &Context,
    fabric: &KubeVirtFabric,
    pvm: &ProtectedVM,
    vm: &VmModel,
    site: &SiteModel,
    halt: &Halt,
) -> std::result::Result<Fence, String> {
    let cached = ctx
        .sites
        .watch(&site.name)
        .and_then(|w| w.vm(&vm.vm_namespace, &vm.vm_name));
    let found = fabric
        .fence(site, vm, halt.spare.as_deref(), cached)
        .await
        .map_err(|e| e.message)?;
    if found == Fence::JustHalted {
        let why = match &halt.spare {
            Some(_) => "a run holds the VM and did not start that copy",
            None => "the VM does not run there",
        };
        let note = format!(
            "the copy of {}/{} at {} was running or starting; halted it: {why}",
            vm.vm_namespace, vm.vm_name, site.name
        );
        tracing::warn!(protected_vm = %pvm.name_any(), site = %site.name, "fenced");
        ctx.metrics.fenced.with_label_values(&[site.name.as_str()]).inc();
        ctx.event(pvm, true, "Fenced", "Fence", note).await;
    }
    Ok(found)
}

/// What protecting the VM came to.
#[derive(Default)]
struct Protection {
    /// Replication as it stands, when the VM replicates.
    replication: Option<ReplicationState>,
    /// Why protection cannot proceed: a bounded reason and a message.
    problem: Option<(&'static str, String)>,
    /// This reconcile's step of an app-consistent sync.
    app: Option<AppSync>,
}

impl Protection {
    fn problem(reason: &'static str, message: String) -> Self {
        Self {
            problem: Some((reason, message)),
            ..Self::default()
        }
    }
}

/// Replication from where the VM runs to the other site, with its app-consistent syncs (its
/// group rounds, with its consistency group's `cut_set` when it drives them), or, while it
/// is paused after a failover, nothing flowing into the disks it runs on.
async fn protect(
    fabric: &KubeVirtFabric,
    settled: &Settled,
    vm: &VmModel,
    cut_set: Option<&GroupMembers>,
    sides: &Sides,
) -> Protection {
    let active = settled.resting.active;
    let (source, target) = (sides.of(active), sides.of(active.other()));
    if settled.resting.direction == ReplicationDirection::Paused {
        return match fabric.stop_replication_into(source, target, vm).await {
            Ok(()) => Protection::default(),
            Err(e) => Protection::problem(reason_of(&e), e.message),
        };
    }
    let reverse = active == Side::Recovery;
    let state = match fabric.replicate(vm, source, target, reverse, Utc::now()).await {
        Ok(state) => state,
        Err(e) => return Protection::problem(reason_of(&e), e.message),
    };
    // A VM without app-consistent points costs no reads for them, unless one is under way.
    // A VM cut as a group takes all its points, app-consistent ones too, in group rounds.
    let group = group_cut::applies(vm, source);
    let app_syncs = group || vm.app_consistent_interval.is_some() || state.app_sync_under_way;
    let app = match (state.established && app_syncs, group) {
        (false, _) => None,
        // Another member of its consistency group drives the rounds that cut its disks.
        (true, true) if vm.round_driver() != vm.name => group_cut::abandon_own_round(fabric, vm, source, target)
            .await
            .err()
            .map(Err),
        (true, true) => Some(group_round(fabric, vm, cut_set, source, target, &state.points).await),
        (true, false) => Some(
            fabric
                .app_consistent_sync(vm, source, target, &state.points, Utc::now())
                .await,
        ),
    }
    .map(|r| r.unwrap_or_else(|e| AppSync::Error(e.message)));
    Protection {
        replication: Some(state),
        problem: None,
        app,
    }
}

/// One step of the group rounds the VM drives: of its own disks, or of its consistency group's.
async fn group_round(
    fabric: &KubeVirtFabric,
    vm: &VmModel,
    cut_set: Option<&GroupMembers>,
    source: &SiteModel,
    target: &SiteModel,
    points: &[coldsite_engine::fabric::RecoveryPoint],
) -> std::result::Result<AppSync, FabricError> {
    let members = match cut_set {
        None => std::slice::from_ref(vm),
        Some(Ok(members)) => members.as_slice(),
        Some(Err(why)) => return Err(FabricError::permanent(why.clone())),
    };
    let Some(set) = group_cut::CutSet::new(members) else {
        return Ok(AppSync::Idle);
    };
    fabric.group_sync(&set, source, target, points, Utc::now()).await
}

/// The metric for what an app-consistent sync came to, counted once per sync, and an Event
/// for each freeze, each point and each group snapshot that failed.
async fn report_app_sync(ctx: &Context, pvm: &ProtectedVM, app: Option<&AppSync>, source: &SiteModel) {
    let (result, event) = match app {
        Some(AppSync::FreezeFailed(why)) => (
            None,
            Some((
                true,
                "FreezeFailed",
                format!("{why}; this sync's point is crash-consistent"),
            )),
        ),
        Some(AppSync::Done {
            app_consistent: true, ..
        }) => (
            Some("app_consistent"),
            Some((
                false,
                "AppConsistentPoint",
                "a recovery point was cut with the guest's filesystems frozen".to_owned(),
            )),
        ),
        Some(AppSync::Done {
            app_consistent: false,
            froze: true,
        }) => (
            Some("crash_consistent"),
            Some((
                true,
                "CrashConsistentPoint",
                "the app-consistent sync's point is crash-consistent: its disks were not all cut inside one freeze"
                    .to_owned(),
            )),
        ),
        // The freeze failed, and its Event said so.
        Some(AppSync::Done { froze: false, .. }) => (Some("unfrozen"), None),
        Some(AppSync::CutFailed(why)) => (
            None,
            Some((
                true,
                "GroupSnapshotFailed",
                format!("{why}; this round's disks are cut one by one"),
            )),
        ),
        _ => (None, None),
    };
    if let Some(result) = result {
        ctx.metrics
            .app_consistent_syncs
            .with_label_values(&[source.name.as_str(), result])
            .inc();
        tracing::info!(protected_vm = %pvm.name_any(), site = %source.name, result, "app-consistent sync");
    }
    if let Some((warning, reason, note)) = event {
        ctx.event(pvm, warning, reason, "Protect", note).await;
    }
}

/// Ends a claim whose run is gone (deleted while it ran), or ended without recording it
/// here (it stopped between its own status and its VMs'): nothing else would. The runs'
/// cache says whether to look; the API server confirms before a claim is released.
async fn release_if_gone(ctx: &Context, pvm: &ProtectedVM, claim: &Claim) -> Result<bool> {
    let ns = pvm.namespace().unwrap_or_default();
    if let Some(stores) = ctx.stores() {
        let cached = stores
            .runs
            .get(&kube::runtime::reflector::ObjectRef::new(&claim.run).within(&ns));
        if ended(cached.as_deref(), claim).is_none() {
            return Ok(false);
        }
    }
    let run = Api::<coldsite_api::RecoveryRun>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&claim.run)
        .await
        .map_err(Error::kube("reading the run that holds the VM"))?;
    let Some(phase) = ended(run.as_ref(), claim) else {
        return Ok(false);
    };
    tracing::info!(protected_vm = %pvm.name_any(), run = %claim.run, ?phase, "the run holding this VM has ended; releasing it");
    crate::reconcile::recovery_run::claims::release(ctx, &[pvm], &claim.run, &claim.uid, phase).await?;
    Ok(true)
}

/// How the claim's run ended, or None while it runs: a run of that name but another UID is
/// a new run, and the claimant is gone (cancelled).
fn ended(run: Option<&coldsite_api::RecoveryRun>, claim: &Claim) -> Option<RunPhase> {
    match run.filter(|r| r.uid().as_deref() == Some(claim.uid.as_str())) {
        None => Some(RunPhase::Cancelled),
        Some(r) => r.status.as_ref().and_then(|s| s.phase).filter(|p| p.is_finished()),
    }
}

/// Metrics, and an Event when the phase or readiness changed.
async fn report(
    ctx: &Context,
    pvm: &ProtectedVM,
    old: &ProtectedVMStatus,
    status: &ProtectedVMStatus,
    ready: &(bool, &'static str, String),
    o: &Observed<'_>,
) {
    let (ns, name) = (pvm.namespace().unwrap_or_default(), pvm.name_any());
    let labels = [ns.as_str(), name.as_str()];
    let rep = status.replication.clone().unwrap_or_default();
    ctx.metrics
        .vm_rpo_target_seconds
        .with_label_values(&labels)
        .set(o.rpo.as_secs_f64());
    if let Some(a) = rep.current_rpo_seconds {
        ctx.metrics.vm_rpo_seconds.with_label_values(&labels).set(a as f64);
    }
    let healthy = rep.health == coldsite_api::protected_vm::ReplicationHealth::Healthy;
    ctx.metrics
        .vm_replication_healthy
        .with_label_values(&labels)
        .set(if healthy { 1.0 } else { 0.0 });
    let was_ready = coldsite_api::common::is_condition_true(&old.conditions, coldsite_api::common::condition::READY);
    if old.phase != status.phase || was_ready != ready.0 {
        let phase = status.phase.unwrap_or_default();
        tracing::info!(protected_vm = %name, namespace = %ns, ?phase, ready = ready.0, reason = ready.1, "protection");
        let warning = !ready.0 && o.problem.is_some();
        ctx.event(pvm, warning, ready.1, "Protect", format!("{phase:?}: {}", ready.2))
            .await;
    }
}

/// Status writes skip a change of the RPO age alone: it moves by the second, so a VM syncing
/// every RPO would rewrite its status several times a sync for it. The age is written with the
/// status's other changes (a sync, a point, health, a condition); `lastSyncTime` dates it, and
/// the `Last Sync` printer column and `coldsite_vm_rpo_seconds` show it live.
fn old_for_compare(old: &ProtectedVMStatus, new: &ProtectedVMStatus) -> ProtectedVMStatus {
    let mut same = old.clone();
    if let (Some(a), Some(b)) = (&mut same.replication, &new.replication) {
        a.current_rpo_seconds = b.current_rpo_seconds;
    }
    same
}

/// The spec's errors in one message, each naming its field.
fn errors_of(problems: &[validate::Problem]) -> String {
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn reason_of(e: &FabricError) -> &'static str {
    match e.kind {
        coldsite_engine::fabric::FailureKind::Unreachable => "SiteUnreachable",
        coldsite_engine::fabric::FailureKind::Transient => "ReplicationRetrying",
        coldsite_engine::fabric::FailureKind::Permanent => "ReplicationFailed",
    }
}
