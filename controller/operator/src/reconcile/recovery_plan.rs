//! RecoveryPlan: `Valid` from the cross-object checks, `Ready` from its VMs' protection, the
//! latest run, and scheduled drills: test failovers created on the plan's cron, cleaned up
//! after `keepFor`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::{condition, is_condition_true};
use coldsite_api::recovery_plan::{DrillSchedule, DrillSummary, RecoveryPlanStatus, RunSummary};
use coldsite_api::recovery_run::{RecoveryRunSpec, RecoveryRunStatus, RunPhase};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::model::PlanModel;
use coldsite_engine::validate::{self, Inventory, Problem, Severity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::{Error, Result};

/// Label on runs a drill schedule created.
pub const DRILL_LABEL: &str = "coldsite.io/drill";
/// Label on every run naming its plan, for listing.
pub const PLAN_LABEL: &str = "coldsite.io/plan";
/// How often at most the changes of its VMs' protection reconcile a plan, by its size: a
/// pass reads the whole namespace, some 0.6 ms per VM (3 s at 5,000), so passes take at most
/// about a quarter of the time, and a plan's Ready and counts lag its VMs by up to 10 s.
pub fn protection_pass_floor(plan: &RecoveryPlan) -> Duration {
    const PER_VM: Duration = Duration::from_millis(2);
    const MOST: Duration = Duration::from_secs(10);
    let vms: usize = plan.spec.groups.iter().map(|g| g.vms.len()).sum();
    PER_VM.saturating_mul(u32::try_from(vms).unwrap_or(u32::MAX)).min(MOST)
}

/// Pure: the next drill time after `since`, from a five-field cron or an @-macro, in UTC.
pub fn next_drill(schedule: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    coldsite_engine::schedule::next_fire(schedule, since)
}

/// What a drill schedule asks for at `now`.
#[derive(Debug, PartialEq)]
pub struct DrillDecision {
    /// Drills to delete: finished longer than keepFor ago, or replaced by the one starting.
    pub delete: Vec<String>,
    /// Start a drill for this tick.
    pub start: Option<DateTime<Utc>>,
    /// When to look again: the next tick or the next expiry, within a minute.
    pub requeue: Duration,
}

/// Pure: the drills to delete and to start. `drills` are the plan's drill runs, `can_start`
/// says the plan is valid and no run of it is in progress.
pub fn plan_drills(
    drill: &DrillSchedule,
    drills: &[&RecoveryRun],
    last_drill: Option<&DrillSummary>,
    plan_created: Option<DateTime<Utc>>,
    can_start: bool,
    now: DateTime<Utc>,
) -> DrillDecision {
    let soon = |t: DateTime<Utc>, cap: Duration| (t - now).to_std().unwrap_or(cap).clamp(Duration::from_secs(1), cap);
    let keep = coldsite_engine::model::parse_duration(&drill.keep_for).unwrap_or(Duration::from_secs(3600));
    let mut requeue = Duration::from_secs(60);
    let live: Vec<&RecoveryRun> = drills
        .iter()
        .copied()
        .filter(|d| d.meta().deletion_timestamp.is_none())
        .collect();
    let mut delete = Vec::new();
    for d in &live {
        let expires = d
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| coldsite_engine::time::from_k8s(t) + coldsite_engine::executor::chrono_duration(keep));
        match expires {
            Some(e) if e <= now => delete.push(d.name_any()),
            Some(e) => requeue = soon(e, requeue),
            None => {}
        }
    }
    // Expired drills are deleted, so the last one's start in status counts too: else the
    // tick it ran for would come due again.
    let since = drills
        .iter()
        .filter_map(|d| d.metadata.creation_timestamp.as_ref())
        .map(coldsite_engine::time::from_k8s)
        .chain(last_drill.map(|d| coldsite_engine::time::from_k8s(&d.time)))
        .max()
        .or(plan_created)
        .unwrap_or(now);
    let mut start = None;
    match next_drill(&drill.schedule, since).filter(|_| !drill.suspend) {
        // The new drill's test copies replace the last one's: a test waits until the
        // previous test is gone.
        Some(due) if due <= now && can_start => {
            for d in &live {
                if !delete.contains(&d.name_any()) {
                    delete.push(d.name_any());
                }
            }
            start = Some(due);
        }
        Some(due) if due <= now => {}
        Some(due) => requeue = soon(due, requeue),
        None => {}
    }
    DrillDecision { delete, start, requeue }
}

fn summary(run: &RecoveryRun) -> RunSummary {
    let s = run.status.clone().unwrap_or_default();
    RunSummary {
        name: run.name_any(),
        action: Some(run.spec.action),
        phase: s.phase,
        start_time: s.start_time,
        completion_time: s.completion_time,
        rto_seconds: s.rto_seconds,
    }
}

/// The newest successful test failover among the plan's runs and the one recorded before
/// (whose run may have been cleaned up since), by completion time.
fn last_successful_test(recorded: Option<&RunSummary>, runs: &[RecoveryRun]) -> Option<RunSummary> {
    let finished = |r: &RunSummary| r.completion_time.as_ref().map(|t| t.0);
    runs.iter()
        .filter(|r| r.spec.action == RunAction::TestFailover)
        .map(summary)
        .filter(|r| r.phase == Some(RunPhase::Succeeded) && r.completion_time.is_some())
        .chain(recorded.cloned())
        .max_by_key(|r| finished(r))
}

/// How the plan's VMs stand: its Ready condition, how many VMs it names, and the oldest
/// newest point among them.
struct Protection {
    ready: Desired<'static>,
    vms: usize,
    worst_rpo: Option<i64>,
}

/// Pure: Ready when the plan is valid and every VM is protected and within its RPO.
fn protection(plan: &RecoveryPlan, inv: &Inventory, valid: bool) -> Protection {
    let ns = plan.namespace().unwrap_or_default();
    let vms: Vec<&String> = plan.spec.groups.iter().flat_map(|g| &g.vms).collect();
    let mut not_ready = Vec::new();
    let mut worst_rpo: Option<i64> = None;
    for vm in &vms {
        let pvm: Option<&ProtectedVM> = inv.protected_vms.get(&(ns.clone(), (*vm).clone()));
        let st = pvm.and_then(|p| p.status.as_ref());
        if let Some(age) = st
            .and_then(|s| s.replication.as_ref())
            .and_then(|r| r.current_rpo_seconds)
        {
            worst_rpo = Some(worst_rpo.map_or(age, |w| w.max(age)));
        }
        if !st.is_some_and(|s| {
            is_condition_true(&s.conditions, condition::READY) && is_condition_true(&s.conditions, condition::RPO_MET)
        }) {
            not_ready.push(vm.as_str());
        }
    }
    let ok = valid && not_ready.is_empty();
    let message = if ok {
        format!("all {} VM(s) protected within their RPO", vms.len())
    } else if !valid {
        "the plan is not valid".to_owned()
    } else {
        format!(
            "not protected within RPO: {} of {} VM(s): {}",
            not_ready.len(),
            vms.len(),
            coldsite_engine::listing::some_of(&not_ready)
        )
    };
    Protection {
        ready: Desired {
            type_: condition::READY,
            ok,
            reason: if ok { "Protected" } else { "NotProtected" },
            message,
        },
        vms: vms.len(),
        worst_rpo,
    }
}

pub async fn reconcile(plan: Arc<RecoveryPlan>, ctx: Arc<Context>) -> Result<Action> {
    let ns = plan.namespace().unwrap_or_default();
    let name = plan.name_any();
    let now = Utc::now();
    let t = coldsite_engine::time::to_k8s(now);
    let generation = plan.metadata.generation;
    let fabric = ctx.fabric(&plan.spec.primary_site, &plan.spec.recovery_site).await?;
    let inv = crate::inventory::load(&ctx, &ns, &fabric, crate::inventory::Scope::Namespace).await?;
    let mut status: RecoveryPlanStatus = plan.status.clone().unwrap_or_default();

    let (valid, message) = validity(&validate::validate_plan(&plan, &inv));
    let was_valid =
        coldsite_api::common::find_condition(&status.conditions, condition::VALID).map(|c| c.status == "True");
    let reason = if valid { "Valid" } else { "InvalidPlan" };
    let desired = Desired {
        type_: condition::VALID,
        ok: valid,
        reason,
        message: message.clone(),
    };
    conditions::set(&mut status.conditions, desired, generation, t.clone());
    if was_valid != Some(valid) {
        ctx.event(plan.as_ref(), !valid, reason, "Validate", message).await;
    }

    let protection = protection(&plan, &inv, valid);
    conditions::set(&mut status.conditions, protection.ready, generation, t.clone());
    status.vm_count = Some(protection.vms as i32);
    status.estimated_rpo_seconds = protection.worst_rpo;

    let mut runs: Vec<RecoveryRun> = crate::inventory::runs(&ctx, &ns)
        .await?
        .into_iter()
        .filter(|r| r.spec.plan == name)
        .collect();
    runs.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    let plan_vms = plan.spec.groups.iter().flat_map(|g| &g.vms);
    let pvms = plan_vms.filter_map(|vm| inv.protected_vms.get(&(ns.clone(), vm.clone())));
    record_runs(&mut status, &runs, pvms, &t);
    // Proven when a test last succeeded; until one has, since the plan exists.
    let proven = status
        .last_successful_test
        .as_ref()
        .and_then(|r| r.completion_time.as_ref())
        .or(plan.metadata.creation_timestamp.as_ref());
    if let Some(t) = proven {
        ctx.metrics
            .plan_proven_timestamp_seconds
            .with_label_values(&[&ns, &name])
            .set(t.0.as_second() as f64);
    }
    let requeue = match plan.spec.drill.as_ref() {
        Some(drill) => run_drills(&ctx, &plan, drill, &runs, &status, valid, now).await?,
        None => Duration::from_secs(60),
    };
    status.observed_generation = generation;
    let api: Api<RecoveryPlan> = Api::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(&api, &name, None, plan.status.as_ref(), &status).await?;
    Ok(Action::requeue(requeue))
}

/// Pure: whether the plan is valid, and the Valid condition's message: its size and
/// warnings, or its errors, each with its field.
fn validity(validated: &std::result::Result<(PlanModel, Vec<Problem>), Vec<Problem>>) -> (bool, String) {
    match validated {
        Ok((m, warnings)) => {
            let mut text = format!("{} VM(s) in {} group(s)", m.vms.len(), m.groups.len());
            if !warnings.is_empty() {
                let messages: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
                text.push_str(&format!("; {} warning(s): {}", warnings.len(), messages.join("; ")));
            }
            (true, text)
        }
        Err(problems) => {
            let errors: Vec<String> = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            (false, errors.join("; "))
        }
    }
}

fn is_drill(run: &RecoveryRun) -> bool {
    run.labels().get(DRILL_LABEL).is_some_and(|v| v == "true")
}

fn is_finished(run: &RecoveryRun) -> bool {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(RunPhase::is_finished)
}

/// Pure: the plan's latest run, latest successful test and latest finished drill, from its
/// runs oldest first and the plan's ProtectedVMs.
fn record_runs<'a>(
    status: &mut RecoveryPlanStatus,
    runs: &[RecoveryRun],
    pvms: impl IntoIterator<Item = &'a ProtectedVM>,
    now: &Time,
) {
    status.last_run = runs.last().map(summary);
    status.last_successful_test = last_successful_test(status.last_successful_test.as_ref(), runs);
    let Some(d) = runs.iter().rev().find(|r| is_drill(r) && is_finished(r)) else {
        return;
    };
    let s = d.status.clone().unwrap_or_default();
    let name = d.name_any();
    // The VMs' records of the drill go when a later run claims them: keep what was read.
    let recorded_rpo = status
        .last_drill
        .as_ref()
        .filter(|l| l.run.as_deref() == Some(name.as_str()))
        .and_then(|l| l.rpo_seconds);
    status.last_drill = Some(DrillSummary {
        // A drill refused before it started is dated by its creation.
        time: s
            .start_time
            .clone()
            .or_else(|| d.metadata.creation_timestamp.clone())
            .unwrap_or_else(|| now.clone()),
        rpo_seconds: drill_rpo(d, pvms).or(recorded_rpo),
        run: Some(name),
        result: format!("{:?}", s.phase.unwrap_or_default()),
        rto_seconds: s.rto_seconds,
        message: drill_message(&s),
    });
}

/// The drill's worst RPO: how old, at its start, the oldest recovery point it restored was,
/// from the VMs that still record it as their last run.
fn drill_rpo<'a>(run: &RecoveryRun, pvms: impl IntoIterator<Item = &'a ProtectedVM>) -> Option<i64> {
    let start = run.status.as_ref()?.start_time.as_ref()?;
    let uid = run.uid()?;
    pvms.into_iter()
        .filter_map(|p| p.status.as_ref()?.last_run.as_ref())
        .filter(|l| l.run_uid.as_deref() == Some(uid.as_str()))
        .filter_map(|l| l.recovery_point.as_ref())
        .map(|point| (start.0.as_second() - point.0.as_second()).max(0))
        .max()
}

/// Why a drill did not succeed: its failed step's message, or for one that ended before its
/// first step (refused, or cancelled), its Succeeded condition's.
fn drill_message(s: &RecoveryRunStatus) -> Option<String> {
    if s.phase == Some(RunPhase::Succeeded) {
        return None;
    }
    let step = s
        .steps
        .iter()
        .find(|x| x.state == coldsite_api::recovery_run::StepState::Failed)
        .and_then(|x| x.message.clone());
    step.or_else(|| {
        coldsite_api::common::find_condition(&s.conditions, condition::SUCCEEDED)
            .filter(|c| c.status == "False" && !c.message.is_empty())
            .map(|c| format!("{}: {}", c.reason, c.message))
    })
}

/// Drills: one per cron tick, kept for keepFor after they finish (suspended or not). When
/// to look again.
async fn run_drills(
    ctx: &Context,
    plan: &RecoveryPlan,
    drill: &DrillSchedule,
    runs: &[RecoveryRun],
    status: &RecoveryPlanStatus,
    valid: bool,
    now: DateTime<Utc>,
) -> Result<Duration> {
    let drills: Vec<&RecoveryRun> = runs.iter().filter(|r| is_drill(r)).collect();
    let busy = runs.iter().any(|r| !is_finished(r));
    let plan_created = plan
        .metadata
        .creation_timestamp
        .as_ref()
        .map(coldsite_engine::time::from_k8s);
    let decision = plan_drills(
        drill,
        &drills,
        status.last_drill.as_ref(),
        plan_created,
        valid && !busy,
        now,
    );
    let runs_api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    for name in decision.delete {
        // The cache of runs may still show a drill deleted a moment ago.
        match runs_api.delete(&name, &DeleteParams::background()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            r => {
                r.map_err(Error::kube("deleting a drill past keepFor or replaced"))?;
            }
        }
    }
    if let Some(due) = decision.start {
        create_drill(&runs_api, plan, due, &drill.auto_approve).await?;
        let message = format!("scheduled test failover for {due}");
        ctx.event(plan, false, "DrillStarted", "Drill", message).await;
    }
    Ok(decision.requeue)
}

async fn create_drill(
    api: &Api<RecoveryRun>,
    plan: &RecoveryPlan,
    due: DateTime<Utc>,
    approvals: &[String],
) -> Result<()> {
    let name = crate::kubevirt::objects::dns_name(&format!("{}-drill-{}", plan.name_any(), due.format("%Y%m%d%H%M")));
    let mut run = RecoveryRun::new(
        &name,
        RecoveryRunSpec {
            plan: plan.name_any(),
            action: RunAction::TestFailover,
            recovery_point: Default::default(),
            shutdown_source: true,
            approvals: approvals.to_vec(),
            cancel: false,
            source_down: false,
        },
    );
    run.metadata.namespace = plan.namespace();
    run.metadata.labels = Some(
        [
            (DRILL_LABEL.to_owned(), "true".to_owned()),
            (PLAN_LABEL.to_owned(), plan.name_any()),
        ]
        .into(),
    );
    run.metadata.owner_references = plan.controller_owner_ref(&()).map(|o| vec![o]);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube {
            what: format!("creating drill {name}"),
            source: e,
        }),
    }
}

/// What a plan's Ready reads from a ProtectedVM: its Ready and RpoMet conditions. Changes
/// of this hash, not every status write, requeue the plans that name it.
pub fn protection_state(pvm: &ProtectedVM) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    for type_ in [condition::READY, condition::RPO_MET] {
        let c = pvm
            .status
            .as_ref()
            .and_then(|s| coldsite_api::common::find_condition(&s.conditions, type_));
        c.map(|c| (&c.status, &c.reason)).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// The plans of the ProtectedVM's namespace whose groups name it.
pub fn plans_naming(plans: &Store<RecoveryPlan>, pvm: &ProtectedVM) -> Vec<ObjectRef<RecoveryPlan>> {
    let (ns, name) = (pvm.namespace(), pvm.name_any());
    plans
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.spec.groups.iter().any(|g| g.vms.contains(&name)))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm(name: &str, ready: &str, rpo_met: &str, last_sync: &str) -> ProtectedVM {
        let cond = |t: &str, s: &str| serde_json::json!({"type": t, "status": s, "reason": format!("R{s}"), "message": "", "lastTransitionTime": "2026-11-26T00:00:00Z"});
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"vm": {"name": name}, "primarySite": "hq", "recoverySite": "dr", "networkMapping": "m",
                     "replication": {"rpo": "15m", "retention": "24h"}},
            "status": {"conditions": [cond("Ready", ready), cond("RpoMet", rpo_met)],
                       "replication": {"health": "Healthy", "lastSyncTime": last_sync}},
        }))
        .unwrap()
    }

    fn test_run(name: &str, action: &str, phase: &str, completed: Option<&str>) -> RecoveryRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"plan": "p", "action": action},
            "status": {"phase": phase, "completionTime": completed},
        }))
        .unwrap()
    }

    #[test]
    fn the_last_successful_test_outlives_its_run_and_only_a_newer_success_replaces_it() {
        let runs = [
            test_run("t1", "TestFailover", "Succeeded", Some("2026-11-01T10:00:00Z")),
            test_run("t2", "TestFailover", "Succeeded", Some("2026-11-02T10:00:00Z")),
            test_run("t3", "TestFailover", "Failed", Some("2026-11-03T10:00:00Z")),
            test_run("f1", "PlannedFailover", "Succeeded", Some("2026-11-04T10:00:00Z")),
            test_run("t4", "TestFailover", "Running", None),
        ];
        let best = last_successful_test(None, &runs).unwrap();
        assert_eq!(best.name, "t2", "failed, running and non-test runs do not count");
        // t2 is cleaned up: the record stays; an older success does not replace it.
        let kept = last_successful_test(Some(&best), &runs[..1]).unwrap();
        assert_eq!(kept.name, "t2");
        assert_eq!(last_successful_test(Some(&best), &[]).unwrap().name, "t2");
        let newer = test_run("t5", "TestFailover", "Succeeded", Some("2026-11-20T10:00:00Z"));
        assert_eq!(last_successful_test(Some(&best), &[newer]).unwrap().name, "t5");
        assert!(last_successful_test(None, &runs[2..]).is_none());
    }

    #[test]
    fn a_plan_records_its_latest_run_and_its_latest_finished_drill() {
        let drill = |name: &str, phase: &str| {
            let mut r = test_run(name, "TestFailover", phase, None);
            r.labels_mut().insert(DRILL_LABEL.into(), "true".into());
            r
        };
        let runs = [
            drill("d1", "Succeeded"),
            drill("d2", "Failed"),
            test_run("t1", "TestFailover", "Succeeded", Some("2026-11-02T10:00:00Z")),
            drill("d3", "Running"),
        ];
        let mut status = RecoveryPlanStatus::default();
        record_runs(&mut status, &runs, [], &coldsite_engine::time::to_k8s(Utc::now()));
        assert_eq!(status.last_run.map(|r| r.name).as_deref(), Some("d3"));
        let last = status.last_drill.expect("a finished drill");
        assert_eq!(
            (last.run.as_deref(), last.result.as_str()),
            (Some("d2"), "Failed"),
            "the running drill is not yet a result"
        );
        assert_eq!(last.message, None, "d2 says nothing of why");
        assert_eq!(status.last_successful_test.map(|r| r.name).as_deref(), Some("t1"));
    }

    fn finished_drill(name: &str, status: serde_json::Value) -> RecoveryRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-12-05T03:00:00Z", "labels": {DRILL_LABEL: "true"}},
            "spec": {"plan": "p", "action": "TestFailover"}, "status": status,
        }))
        .unwrap()
    }

    fn last_drill(status: &mut RecoveryPlanStatus, run: RecoveryRun, pvms: &[ProtectedVM]) -> DrillSummary {
        record_runs(status, &[run], pvms, &coldsite_engine::time::to_k8s(Utc::now()));
        status.last_drill.clone().expect("a finished drill")
    }

    #[test]
    fn a_failed_drill_says_why_whether_a_step_failed_or_it_never_started() {
        let refused = serde_json::json!({"phase": "Failed", "conditions": [{"type": "Succeeded",
            "status": "False", "reason": "ActionDoesNotFit", "message": "VM dc01 has no recovery point",
            "lastTransitionTime": "2026-12-05T03:00:01Z"}]});
        let mut status = RecoveryPlanStatus::default();
        let last = last_drill(&mut status, finished_drill("d", refused.clone()), &[]);
        assert_eq!(
            last.message.as_deref(),
            Some("ActionDoesNotFit: VM dc01 has no recovery point")
        );
        assert_eq!(
            last.time.0.to_string(),
            "2026-12-05T03:00:00Z",
            "dated by its creation, not by when the plan was last looked at"
        );
        let mut step = refused;
        step["steps"] = serde_json::json!([{"id": "identity/vm/dc01/restore-disks", "state": "Failed",
                                            "message": "no VolumeSnapshot ready"}]);
        let last = last_drill(&mut status, finished_drill("d", step), &[]);
        assert_eq!(
            last.message.as_deref(),
            Some("no VolumeSnapshot ready"),
            "the step says more"
        );
        let succeeded = serde_json::json!({"phase": "Succeeded", "conditions": [{"type": "Succeeded",
            "status": "True", "reason": "Succeeded", "message": "all steps done",
            "lastTransitionTime": "2026-12-05T03:01:25Z"}]});
        assert_eq!(
            last_drill(&mut status, finished_drill("d", succeeded), &[]).message,
            None
        );
    }

    #[test]
    fn a_drill_records_the_age_of_the_oldest_point_it_restored_and_keeps_it() {
        let held = |vm: &str, run: &str, point: &str| {
            let mut p = pvm(vm, "True", "True", point);
            p.status.as_mut().unwrap().last_run = Some(
                serde_json::from_value(serde_json::json!({"run": run, "runUid": format!("uid-{run}"),
                                                          "recoveryPoint": point}))
                .unwrap(),
            );
            p
        };
        let started = serde_json::json!({"phase": "Succeeded", "startTime": "2026-12-05T03:10:00Z"});
        let pvms = [
            held("a", "d", "2026-12-05T03:05:00Z"),
            held("b", "d", "2026-12-05T03:08:00Z"),
            held("c", "other", "2026-12-05T01:00:00Z"),
        ];
        let mut status = RecoveryPlanStatus::default();
        let last = last_drill(&mut status, finished_drill("d", started.clone()), &pvms);
        assert_eq!(
            last.rpo_seconds,
            Some(300),
            "a's point, 5 minutes old; c is another run's"
        );
        assert_eq!(last.time.0.to_string(), "2026-12-05T03:10:00Z");
        // A later run claims the VMs: the drill's figure stays.
        let claimed = [held("a", "later", "2026-12-05T04:00:00Z")];
        let last = last_drill(&mut status, finished_drill("d", started.clone()), &claimed);
        assert_eq!(last.rpo_seconds, Some(300));
        // A new drill starts from its own VMs' records.
        let last = last_drill(&mut status, finished_drill("d2", started), &claimed);
        assert_eq!(last.rpo_seconds, None);
    }

    #[test]
    fn plans_follow_changes_of_protection_not_each_sync() {
        let base = protection_state(&pvm("a", "True", "True", "2026-11-26T10:00:00Z"));
        assert_eq!(
            base,
            protection_state(&pvm("a", "True", "True", "2026-11-26T10:05:00Z")),
            "a sync alone"
        );
        assert_ne!(
            base,
            protection_state(&pvm("a", "False", "True", "2026-11-26T10:00:00Z"))
        );
        assert_ne!(
            base,
            protection_state(&pvm("a", "True", "False", "2026-11-26T10:00:00Z"))
        );
    }

    #[test]
    fn ready_names_ten_unprotected_vms_and_counts_the_rest() {
        let names: Vec<String> = (0..30).map(|i| format!("vm{i:02}")).collect();
        let plan: RecoveryPlan = serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryPlan",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"primarySite": "hq", "recoverySite": "dr", "groups": [{"name": "g", "vms": names}]},
        }))
        .unwrap();
        let mut inv = Inventory::default();
        for (i, name) in names.iter().enumerate() {
            let ready = if i % 2 == 0 { "True" } else { "False" };
            inv.protected_vms.insert(
                ("ns".into(), name.clone()),
                pvm(name, ready, "True", "2026-11-26T10:00:00Z"),
            );
        }
        let p = protection(&plan, &inv, true);
        assert!(!p.ready.ok);
        assert_eq!(
            p.ready.message,
            "not protected within RPO: 15 of 30 VM(s): vm01, vm03, vm05, vm07, vm09, vm11, vm13, vm15, vm17, vm19 \
             and 5 more"
        );
        assert_eq!(p.vms, 30);
        assert_eq!(protection(&plan, &inv, false).ready.message, "the plan is not valid");
        for pvm in inv.protected_vms.values_mut() {
            *pvm = super::tests::pvm(&pvm.name_any(), "True", "True", "2026-11-26T10:00:00Z");
        }
        let all = protection(&plan, &inv, true);
        assert!(all.ready.ok, "{}", all.ready.message);
    }

    #[test]
    fn a_protected_vm_requeues_the_plans_of_its_namespace_that_name_it() {
        let plan = |name: &str, ns: &str, vms: &[&str]| -> RecoveryPlan {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryPlan",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"primarySite": "hq", "recoverySite": "dr", "groups": [{"name": "g", "vms": vms}]},
            }))
            .unwrap()
        };
        let mut writer = kube::runtime::reflector::store::Writer::<RecoveryPlan>::default();
        for p in [
            plan("names-it", "ns", &["a", "b"]),
            plan("other", "ns", &["c"]),
            plan("elsewhere", "ns2", &["a"]),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(p));
        }
        let refs = plans_naming(&writer.as_reader(), &pvm("a", "True", "True", "2026-11-26T10:00:00Z"));
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["names-it"]);
    }

    #[test]
    fn a_plans_protection_passes_are_spaced_by_its_size() {
        let sized = |vms: usize| -> RecoveryPlan {
            let names: Vec<String> = (0..vms).map(|i| format!("vm{i}")).collect();
            serde_json::from_value(serde_json::json!({
                "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryPlan",
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"primarySite": "hq", "recoverySite": "dr",
                         "groups": [{"name": "a", "vms": &names[..vms / 2]}, {"name": "b", "vms": &names[vms / 2..]}]},
            }))
            .unwrap()
        };
        assert_eq!(
            protection_pass_floor(&sized(3)),
            Duration::from_millis(6),
            "a small plan follows at once"
        );
        assert_eq!(protection_pass_floor(&sized(1_000)), Duration::from_secs(2));
        assert_eq!(protection_pass_floor(&sized(5_000)), Duration::from_secs(10));
        assert_eq!(
            protection_pass_floor(&sized(20_000)),
            Duration::from_secs(10),
            "at most"
        );
    }

    #[test]
    fn drills_follow_the_cron() {
        let since = DateTime::parse_from_rfc3339("2026-11-26T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = next_drill("0 3 * * 6", since).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-28T03:00:00+00:00");
        assert!(next_drill("@daily", since).is_some());
        assert!(next_drill("every saturday", since).is_none());
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(cron: &str, keep_for: &str, suspend: bool) -> DrillSchedule {
        serde_json::from_value(serde_json::json!({"schedule": cron, "keepFor": keep_for, "suspend": suspend})).unwrap()
    }

    fn drill_run(name: &str, created: &str, completed: Option<&str>) -> RecoveryRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"plan": "p", "action": "TestFailover"},
            "status": {"phase": if completed.is_some() { "Succeeded" } else { "Running" }, "completionTime": completed},
        }))
        .unwrap()
    }

    #[test]
    fn a_tick_starts_one_drill_and_replaces_the_kept_one() {
        let d = schedule("0 3 * * *", "2h", false);
        let old = drill_run("p-drill-1", "2026-11-25T03:00:01Z", Some("2026-11-25T03:20:00Z"));
        // Before the tick: nothing to do; look again within a minute.
        let before = plan_drills(&d, &[&old], None, None, true, at("2026-11-26T02:59:30Z"));
        assert_eq!(before.start, None);
        assert!(before.delete.contains(&"p-drill-1".to_owned()), "expired after 2h");
        assert_eq!(before.requeue, Duration::from_secs(30));
        // At the tick: start, and the earlier drill goes.
        let due = plan_drills(&d, &[&old], None, None, true, at("2026-11-26T03:00:05Z"));
        assert_eq!(due.start, Some(at("2026-11-26T03:00:00Z")));
        assert_eq!(due.delete, ["p-drill-1"]);
        // A run in progress or an invalid plan: nothing starts.
        let busy = plan_drills(&d, &[&old], None, None, false, at("2026-11-26T03:00:05Z"));
        assert_eq!(busy.start, None);
    }

    #[test]
    fn a_tick_does_not_come_due_again_after_its_drill_was_deleted() {
        let d = schedule("0 3 * * *", "1h", false);
        let last = DrillSummary {
            time: coldsite_engine::time::to_k8s(at("2026-11-26T03:00:02Z")),
            run: Some("p-drill-202611260300".into()),
            result: "Succeeded".into(),
            rto_seconds: None,
            rpo_seconds: None,
            message: None,
        };
        let created = Some(at("2026-11-20T00:00:00Z"));
        let later = plan_drills(&d, &[], Some(&last), created, true, at("2026-11-26T05:00:00Z"));
        assert_eq!(later.start, None, "the 03:00 tick ran already");
        let without_status = plan_drills(&d, &[], None, created, true, at("2026-11-26T05:00:00Z"));
        assert!(without_status.start.is_some(), "the check above is not vacuous");
    }

    #[test]
    fn suspended_drills_still_expire() {
        let d = schedule("* * * * *", "20s", true);
        let done = drill_run("p-drill-1", "2026-11-26T03:00:01Z", Some("2026-11-26T03:01:00Z"));
        let running = drill_run("p-drill-2", "2026-11-26T03:01:05Z", None);
        let x = plan_drills(&d, &[&done, &running], None, None, true, at("2026-11-26T03:01:10Z"));
        assert_eq!(x.start, None);
        assert!(x.delete.is_empty());
        assert_eq!(x.requeue, Duration::from_secs(10), "at the expiry");
        let x = plan_drills(&d, &[&done, &running], None, None, true, at("2026-11-26T03:01:30Z"));
        assert_eq!(x.delete, ["p-drill-1"]);
        assert_eq!(x.start, None);
    }
}
