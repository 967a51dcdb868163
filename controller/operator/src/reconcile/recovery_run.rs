//! RecoveryRun: drives the engine's executor against the KubeVirt fabric, one driver pass
//! per reconcile, and persists the records: group- and action-level steps in the run's
//! status, each VM's steps in its ProtectedVM's `status.lastRun`. A finalizer removes what a
//! test failover created.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::condition;
use coldsite_api::protected_vm::VmRunStatus;
use coldsite_api::recovery_plan::ScriptSite;
use coldsite_api::recovery_run::{ApprovalRecord, GroupProgress, RecoveryRunStatus, RunPhase, StepState, StepStatus};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::driver::{Driver, DriverError, Limits, NoCrash, RunContext, RunStore};
use coldsite_engine::executor::{Executor, RunInputs, StepRecord};
use coldsite_engine::fabric::{Fabric, Progress, RunRef};
use coldsite_engine::model::{Direction, PlanModel};
use coldsite_engine::planner::{self, PlanOptions, StepGraph, StepIdx, vm_of_step_id};
use coldsite_engine::time::{from_k8s, to_k8s};
use coldsite_engine::validate::{self, Severity};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::{Error, Result};

pub const FINALIZER: &str = "coldsite.io/cleanup";
/// The field manager of `ProtectedVM.status.lastRun`, apart from the VM's own reconciler.
pub const RUN_MANAGER: &str = "coldsite-controller-runs";

/// Collects nothing: the reconciler persists the whole picture after the pass.
struct Unsaved;

impl RunStore for Unsaved {
    async fn save(&mut self, _: &StepGraph, _: StepIdx, _: &StepRecord) -> Result<(), DriverError> {
        Ok(())
    }
}

pub async fn reconcile(run: Arc<RecoveryRun>, ctx: Arc<Context>) -> Result<Action> {
    super::finalized(
        run,
        ctx,
        FINALIZER,
        |o, c| async move { apply(&o, &c).await },
        |o, c| async move { cleanup(&o, &c).await },
    )
    .await
}

fn record_of(s: &StepStatus) -> StepRecord {
    StepRecord {
        state: s.state,
        attempts: s.attempts.max(0) as u32,
        started_at: s.started_at.as_ref().map(from_k8s),
        finished_at: s.finished_at.as_ref().map(from_k8s),
        next_attempt_at: s.next_attempt_at.as_ref().map(from_k8s),
        message: s.message.clone(),
        point: s.recovery_point.as_ref().map(from_k8s),
    }
}

fn status_of(graph: &StepGraph, plan: &PlanModel, i: StepIdx, r: &StepRecord) -> StepStatus {
    let def = &graph.steps[i];
    StepStatus {
        id: def.id.clone(),
        group: def.group.map(|g| plan.groups[g].name.clone()),
        kind: Some(def.kind),
        target: match (def.vm, def.action) {
            (Some(v), _) => Some(plan.vms[v].name.clone()),
            (None, Some(a)) => Some(a.resolve(plan).name.clone()),
            (None, None) => None,
        },
        state: r.state,
        attempts: r.attempts as i32,
        started_at: r.started_at.map(to_k8s),
        finished_at: r.finished_at.map(to_k8s),
        recovery_point: r.point.map(to_k8s),
        next_attempt_at: r.next_attempt_at.map(to_k8s),
        message: r.message.clone(),
    }
}

/// The records as persisted: run-level steps from the run, VM steps from the VMs.
fn persisted(graph: &StepGraph, run: &RecoveryRun, pvms: &BTreeMap<(String, String), ProtectedVM>) -> Vec<StepRecord> {
    let uid = run.uid().unwrap_or_default();
    let mut by_id: HashMap<&str, &StepStatus> = HashMap::new();
    if let Some(s) = &run.status {
        for step in &s.steps {
            by_id.insert(&step.id, step);
        }
    }
    for p in pvms.values() {
        if let Some(last) = p.status.as_ref().and_then(|s| s.last_run.as_ref())
            && last.run_uid.as_deref() == Some(uid.as_str())
        {
            for step in &last.steps {
                by_id.insert(&step.id, step);
            }
        }
    }
    graph
        .steps
        .iter()
        .map(|d| by_id.get(d.id.as_str()).map(|s| record_of(s)).unwrap_or_default())
        .collect()
}

/// Each approval with the field manager that added it, as managedFields tell.
fn approvers(run: &RecoveryRun) -> Vec<(String, Option<String>)> {
    let managed = run.metadata.managed_fields.clone().unwrap_or_default();
    run.spec
        .approvals
        .iter()
        .map(|a| {
            let by = managed.iter().find_map(|m| {
                // Set items appear in fieldsV1 as keys `v:"<item>"`.
                let key = format!("v:{}", serde_json::to_string(a).ok()?);
                let owns = m
                    .fields_v1
                    .as_ref()?
                    .0
                    .pointer("/f:spec/f:approvals")?
                    .get(&key)
                    .is_some();
                owns.then(|| m.manager.clone()).flatten()
            });
            (a.clone(), by)
        })
        .collect()
}

/// A short digest of the plan's spec, to notice a plan edited under a running run.
fn plan_digest(plan: &RecoveryPlan) -> String {
    use sha2::Digest;
    let spec = serde_json::to_vec(&plan.spec).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&spec)[..8])
}

/// Which way a run moves VMs: failback reverses; commit and reprotect follow where the VMs
/// run now.
fn direction(action: RunAction, plan: &RecoveryPlan, pvms: &BTreeMap<(String, String), ProtectedVM>) -> Direction {
    let at_recovery = pvms
        .values()
        .find(|p| plan.spec.groups.iter().any(|g| g.vms.contains(&p.name_any())))
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.active_site.as_deref())
        == Some(plan.spec.recovery_site.as_str());
    match action {
        RunAction::Failback => Direction::Reverse,
        RunAction::Commit | RunAction::Reprotect if !at_recovery => Direction::Reverse,
        _ => Direction::Forward,
    }
}

async fn fail_before_start(run: &RecoveryRun, ctx: &Context, reason: &str, message: String) -> Result<Action> {
    let mut status = run.status.clone().unwrap_or_default();
    let now = to_k8s(Utc::now());
    status.phase = Some(RunPhase::Failed);
    status.completion_time = Some(now.clone());
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::SUCCEEDED,
            ok: false,
            reason,
            message: message.clone(),
        },
        run.metadata.generation,
        now,
    );
    ctx.event(run, true, reason, "Start", message).await;
    let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    crate::status::apply(&api, &run.name_any(), run.status.as_ref(), &status).await?;
    Ok(Action::await_change())
}

async fn apply(run: &RecoveryRun, ctx: &Context) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let uid = run.uid().unwrap_or_default();
    let old = run.status.clone().unwrap_or_default();
    if old.phase.is_some_and(RunPhase::is_finished) {
        return Ok(Action::await_change());
    }
    let Some(plan) = Api::<RecoveryPlan>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&run.spec.plan)
        .await
        .map_err(Error::kube("reading the plan"))?
    else {
        return fail_before_start(
            run,
            ctx,
            "PlanNotFound",
            format!("RecoveryPlan {ns}/{} does not exist", run.spec.plan),
        )
        .await;
    };

    // One run at a time per plan: a later run waits for an earlier one still going.
    let runs: Vec<RecoveryRun> = Api::<RecoveryRun>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing RecoveryRuns"))?
        .into_iter()
        .filter(|r| r.spec.plan == run.spec.plan && r.uid() != run.uid())
        .collect();
    let earlier_active = runs.iter().find(|r| {
        !r.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RunPhase::is_finished)
            && r.metadata.creation_timestamp.as_ref().map(|t| t.0)
                < run.metadata.creation_timestamp.as_ref().map(|t| t.0)
    });
    // A test failover's copies live in the recovery site's test namespace under the source
    // VMs' names: the next test waits until the previous one is cleaned up.
    let earlier_test = (run.spec.action == RunAction::TestFailover)
        .then(|| {
            runs.iter().find(|r| {
                r.spec.action == RunAction::TestFailover
                    && r.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some()
            })
        })
        .flatten();
    let wait = match (earlier_active, earlier_test) {
        (Some(other), _) => Some((
            "Queued",
            format!("waiting for run {} of the same plan to finish", other.name_any()),
        )),
        (None, Some(other)) => Some((
            "WaitingForCleanup",
            format!(
                "the test copies of run {0} are still at the recovery site; this test starts once {0} is deleted \
                 (kubectl coldsite cleanup {0})",
                other.name_any()
            ),
        )),
        (None, None) => None,
    };
    if let Some((reason, message)) = wait
        && old.start_time.is_none()
    {
        let mut status = old.clone();
        status.phase = Some(RunPhase::Pending);
        let now = to_k8s(Utc::now());
        conditions::set(
            &mut status.conditions,
            Desired {
                type_: condition::SUCCEEDED,
                ok: false,
                reason,
                message,
            },
            run.metadata.generation,
            now,
        );
        let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &ns);
        crate::status::apply(&api, &name, run.status.as_ref(), &status).await?;
        return Ok(Action::requeue(Duration::from_secs(15)));
    }

    // A run follows the plan it started with: while the plan differs, nothing new starts.
    let digest = plan_digest(&plan);
    if let Some(started) = old.plan_digest.as_ref().filter(|_| old.start_time.is_some())
        && *started != digest
        && !run.spec.cancel
    {
        let message = format!(
            "RecoveryPlan {} changed during the run; nothing new starts until it is restored, or set spec.cancel",
            run.spec.plan
        );
        let mut status = old.clone();
        let held = coldsite_api::common::find_condition(&status.conditions, condition::SUCCEEDED)
            .is_some_and(|c| c.reason == "PlanChanged");
        conditions::set(
            &mut status.conditions,
            Desired {
                type_: condition::SUCCEEDED,
                ok: false,
                reason: "PlanChanged",
                message: message.clone(),
            },
            run.metadata.generation,
            to_k8s(Utc::now()),
        );
        if !held {
            ctx.event(run, true, "PlanChanged", "Hold", message).await;
        }
        let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &ns);
        crate::status::apply(&api, &name, run.status.as_ref(), &status).await?;
        return Ok(Action::requeue(Duration::from_secs(15)));
    }

    // Dereference and validate.
    let fabric = ctx.fabric(&plan.spec.primary_site, &plan.spec.recovery_site).await?;
    let inv = crate::inventory::load(ctx, &ns, &fabric, crate::inventory::Scope::Namespace).await?;
    let model = match validate::validate_plan(&plan, &inv) {
        Ok((model, _)) => model,
        Err(problems) => {
            let text: Vec<String> = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            return fail_before_start(run, ctx, "InvalidPlan", text.join("; ")).await;
        }
    };

    // Approvals that name no manual action of the plan leave the real gates waiting; said
    // once, as the run starts (spec.approvals can only grow, so it cannot be mended).
    if old.start_time.is_none() {
        for p in validate::validate_run(run, &plan) {
            ctx.event(
                run,
                true,
                "ApprovalHasNoEffect",
                "Start",
                format!("{}: {}", p.field, p.message),
            )
            .await;
        }
    }

    // Plan the graph and resume the executor where the records say the run stands.
    let dir = direction(run.spec.action, &plan, &inv.protected_vms);
    let options = PlanOptions {
        action: run.spec.action,
        direction: dir,
        shutdown_source: run.spec.shutdown_source,
    };
    let graph = planner::plan(&model, options);
    let run_ref = RunRef {
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        action: run.spec.action,
        direction: dir,
    };
    let rctx = RunContext::new(model, run_ref, run.spec.recovery_point.clone());
    let cached = ctx
        .runs
        .lock()
        .ok()
        .and_then(|m| m.get(&uid).cloned())
        .filter(|r| r.len() == graph.len());
    let before = cached.unwrap_or_else(|| persisted(&graph, run, &inv.protected_vms));
    let cancelled = old.phase == Some(RunPhase::CleaningUp);
    let executor = Executor::resume(&graph, before.clone(), cancelled);
    let mut inputs = RunInputs {
        approvals: run.spec.approvals.iter().cloned().collect(),
        cancel: run.spec.cancel,
    };
    if run
        .labels()
        .get(super::recovery_plan::DRILL_LABEL)
        .is_some_and(|v| v == "true")
    {
        inputs.approvals.extend(rctx.plan.auto_approve.iter().cloned());
    }
    let now = Utc::now();
    let mut driver = Driver::new(
        &rctx,
        executor,
        &fabric,
        Unsaved,
        NoCrash,
        Limits {
            concurrency: ctx.settings.concurrency,
        },
    );
    driver
        .pass(now, &inputs)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let ex = driver.executor();
    let after = ex.records().to_vec();
    let mut phase = ex.phase();
    let waiting: Vec<String> = ex.waiting_for().into_iter().map(str::to_owned).collect();
    let (done, total) = ex.progress();
    let wakeup = driver.next_wakeup();

    // A cancelled test cleans up before it counts as cancelled.
    let mut cleaned = false;
    if phase == RunPhase::Cancelled && run.spec.action == RunAction::TestFailover {
        cleaned = remove_test_resources(&fabric, &rctx).await?;
        if !cleaned {
            phase = RunPhase::CleaningUp;
        }
    }
    if let Ok(mut m) = ctx.runs.lock() {
        if phase.is_finished() {
            m.remove(&uid);
        } else {
            m.insert(uid.clone(), after.clone());
        }
    }

    // Status: the run's own steps, and each VM's part in its ProtectedVM.
    let mut status = build_status(
        &graph,
        &rctx.plan,
        &after,
        &old,
        phase,
        &waiting,
        (done, total),
        &approvers(run),
        now,
        run.metadata.generation,
    );
    status.plan_digest = old.plan_digest.clone().or(Some(digest));
    report(ctx, run, &graph, &before, &after, &status, &old).await;
    let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(&api, &name, run.status.as_ref(), &status).await?;
    write_vm_parts(ctx, &ns, &graph, &rctx, &inv.protected_vms, &after, run, phase).await?;

    if phase.is_finished() {
        return Ok(Action::await_change());
    }
    if phase == RunPhase::CleaningUp && !cleaned {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let wait = wakeup
        .map(|t| (t - now).to_std().unwrap_or_default())
        .unwrap_or(Duration::from_secs(30));
    Ok(Action::requeue(
        wait.clamp(Duration::from_millis(500), Duration::from_secs(30)),
    ))
}

/// Pure: the run's status from its records.
#[allow(clippy::too_many_arguments)]
fn build_status(
    graph: &StepGraph,
    plan: &PlanModel,
    records: &[StepRecord],
    old: &RecoveryRunStatus,
    phase: RunPhase,
    waiting: &[String],
    (done, total): (usize, usize),
    approvals: &[(String, Option<String>)],
    now: DateTime<Utc>,
    generation: Option<i64>,
) -> RecoveryRunStatus {
    let mut s = old.clone();
    let (source, target) = plan.sites(graph.direction);
    s.phase = Some(phase);
    s.source_site = Some(source.name.clone());
    s.target_site = Some(target.name.clone());
    let started = records.iter().filter_map(|r| r.started_at).min();
    s.start_time = s.start_time.clone().or_else(|| started.map(to_k8s));
    if phase.is_finished() {
        let end = records.iter().filter_map(|r| r.finished_at).max().unwrap_or(now);
        s.completion_time = Some(to_k8s(end));
        if let Some(start) = started {
            s.rto_seconds = Some((end - start).num_seconds());
        }
    }
    s.progress = Some(format!("{done}/{total}"));
    s.waiting_for = (!waiting.is_empty()).then(|| waiting.join(","));
    s.steps = graph
        .steps
        .iter()
        .enumerate()
        .filter(|(_, d)| d.vm.is_none())
        .map(|(i, _)| status_of(graph, plan, i, &records[i]))
        .collect();
    s.groups = plan
        .groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let mut p = GroupProgress {
                name: g.name.clone(),
                total: g.vms.len() as i32,
                ..GroupProgress::default()
            };
            for &vm in &g.vms {
                let Some(ready) = graph
                    .vm_step(vm, coldsite_api::recovery_run::StepKind::VmReady)
                    .or_else(|| graph.steps.iter().position(|d| d.vm == Some(vm) && d.group == Some(gi)))
                else {
                    continue;
                };
                let vm_steps = graph.steps.iter().enumerate().filter(|(_, d)| d.vm == Some(vm));
                let any_failed = vm_steps.clone().any(|(i, _)| records[i].state == StepState::Failed);
                let any_started = vm_steps.clone().any(|(i, _)| records[i].started_at.is_some());
                match records[ready].state {
                    _ if any_failed => p.failed += 1,
                    StepState::Succeeded => p.succeeded += 1,
                    _ if any_started => p.running += 1,
                    _ => p.pending += 1,
                }
            }
            p
        })
        .collect();
    for (a, by) in approvals {
        let passed = graph
            .steps
            .iter()
            .enumerate()
            .find(|(_, d)| d.approval.as_deref() == Some(a.as_str()));
        if let Some((i, _)) = passed
            && records[i].state == StepState::Succeeded
            && !s.approvals.iter().any(|r| &r.action == a)
        {
            s.approvals.push(ApprovalRecord {
                action: a.clone(),
                observed_at: to_k8s(records[i].finished_at.unwrap_or(now)),
                by: by.clone(),
            });
        }
    }
    let (ok, reason, message) = match phase {
        RunPhase::Succeeded => (true, "Succeeded", format!("all {total} steps done")),
        RunPhase::Failed => {
            let failed = graph
                .steps
                .iter()
                .zip(records)
                .find(|(_, r)| r.state == StepState::Failed);
            (
                false,
                "StepFailed",
                failed
                    .map(|(d, r)| format!("{}: {}", d.id, r.message.clone().unwrap_or_default()))
                    .unwrap_or_default(),
            )
        }
        RunPhase::Cancelled => (false, "Cancelled", "cancelled; steps already running finished".into()),
        RunPhase::WaitingForApproval => (
            false,
            "WaitingForApproval",
            format!("approve in spec.approvals: {}", waiting.join(", ")),
        ),
        _ => (false, "Running", format!("{done}/{total} steps done")),
    };
    conditions::set(
        &mut s.conditions,
        Desired {
            type_: condition::SUCCEEDED,
            ok,
            reason,
            message,
        },
        generation,
        to_k8s(now),
    );
    s.observed_generation = generation;
    s
}

/// Events for step transitions of group- and action-level steps and failed VM steps, and
/// metrics for finished steps and runs.
async fn report(
    ctx: &Context,
    run: &RecoveryRun,
    graph: &StepGraph,
    before: &[StepRecord],
    after: &[StepRecord],
    status: &RecoveryRunStatus,
    old: &RecoveryRunStatus,
) {
    for (i, def) in graph.steps.iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        if b.state == a.state {
            continue;
        }
        if a.state.is_terminal()
            && let (Some(s), Some(f)) = (a.started_at, a.finished_at)
        {
            ctx.metrics
                .step_seconds
                .with_label_values(&[&format!("{:?}", def.kind)])
                .observe((f - s).num_milliseconds() as f64 / 1000.0);
        }
        let vm_step = def.vm.is_some();
        let (warning, reason) = match a.state {
            StepState::Running if !vm_step => (false, "StepStarted"),
            StepState::WaitingForApproval => (false, "WaitingForApproval"),
            StepState::Succeeded if !vm_step && !def.kind.is_barrier() => (false, "StepSucceeded"),
            StepState::Succeeded if def.kind == coldsite_api::recovery_run::StepKind::Ready => (false, "GroupReady"),
            StepState::Failed => (true, "StepFailed"),
            StepState::FailedContinued => (true, "StepFailedContinued"),
            _ => continue,
        };
        let note = match &a.message {
            Some(m) => format!("{}: {m}", def.id),
            None => def.id.clone(),
        };
        tracing::info!(run = %run.name_any(), step = %def.id, state = ?a.state, message = a.message.as_deref().unwrap_or(""), "step");
        ctx.event(run, warning, reason, "Step", note).await;
    }
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let waiting = status.phase == Some(RunPhase::WaitingForApproval) || status.waiting_for.is_some();
    let since = graph
        .steps
        .iter()
        .zip(after)
        .filter(|(_, r)| r.state == StepState::WaitingForApproval)
        .filter_map(|(_, r)| r.started_at)
        .min();
    let gauge = ctx
        .metrics
        .run_waiting_for_approval_seconds
        .with_label_values(&[&ns, &name]);
    gauge.set(if waiting {
        since.map_or(0.0, |s| (Utc::now() - s).num_seconds() as f64)
    } else {
        0.0
    });
    if status.phase.is_some_and(RunPhase::is_finished) && !old.phase.is_some_and(RunPhase::is_finished) {
        let phase = format!("{:?}", status.phase.unwrap_or_default());
        ctx.metrics
            .runs
            .with_label_values(&[run.spec.action.as_str(), &phase])
            .inc();
        if let Some(rto) = status.rto_seconds {
            ctx.metrics
                .run_rto_seconds
                .with_label_values(&[&ns, &run.spec.plan, run.spec.action.as_str()])
                .set(rto as f64);
        }
        let _ = ctx
            .metrics
            .run_waiting_for_approval_seconds
            .remove_label_values(&[&ns, &name]);
        ctx.event(
            run,
            phase != "Succeeded",
            &format!("Run{phase}"),
            "Finish",
            format!("{} {phase}; RTO {}s", run.spec.action, status.rto_seconds.unwrap_or(0)),
        )
        .await;
    }
}

/// Each VM's steps go to its ProtectedVM's `status.lastRun`, written only when they changed.
#[allow(clippy::too_many_arguments)]
async fn write_vm_parts(
    ctx: &Context,
    ns: &str,
    graph: &StepGraph,
    rctx: &RunContext,
    pvms: &BTreeMap<(String, String), ProtectedVM>,
    records: &[StepRecord],
    run: &RecoveryRun,
    phase: RunPhase,
) -> Result<()> {
    let uid = run.uid().unwrap_or_default();
    let mut per_vm: BTreeMap<&str, Vec<StepStatus>> = BTreeMap::new();
    for (i, def) in graph.steps.iter().enumerate() {
        if let Some(vm) = vm_of_step_id(&def.id) {
            per_vm
                .entry(vm)
                .or_default()
                .push(status_of(graph, &rctx.plan, i, &records[i]));
        }
    }
    let api: Api<ProtectedVM> = Api::namespaced(ctx.client.clone(), ns);
    for (vm, steps) in per_vm {
        let touched = steps.iter().any(|s| s.started_at.is_some());
        let current = pvms
            .get(&(ns.to_owned(), vm.to_owned()))
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.last_run.clone());
        if !touched
            && current
                .as_ref()
                .is_none_or(|c| c.run_uid.as_deref() != Some(uid.as_str()))
        {
            continue;
        }
        let point = steps
            .iter()
            .find(|s| s.kind == Some(coldsite_api::recovery_run::StepKind::RestoreDisks))
            .and_then(|s| s.recovery_point.clone());
        let part = VmRunStatus {
            run: run.name_any(),
            run_uid: Some(uid.clone()),
            action: Some(run.spec.action),
            phase: phase.is_finished().then_some(phase),
            recovery_point: point,
            steps,
        };
        if current.as_ref() == Some(&part) {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "status": {"lastRun": part},
        });
        api.patch_status(vm, &PatchParams::apply(RUN_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("writing ProtectedVM {vm} status.lastRun")))?;
    }
    Ok(())
}

/// Deletes what the test created at both sites; true once nothing is left.
async fn remove_test_resources<F: Fabric>(fabric: &F, rctx: &RunContext) -> Result<bool> {
    let (source, target) = rctx.plan.sites(rctx.run.direction);
    let mut done = true;
    for site in [target, source] {
        match fabric.delete_test_resources(&rctx.run, site).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => done = false,
            Err(e) => {
                return Err(Error::Site {
                    site: site.name.clone(),
                    message: format!("cleaning up the test: {}", e.message),
                });
            }
        }
    }
    Ok(done)
}

/// On deletion: a test failover removes everything it created, at every site, before the
/// run goes. Other runs leave their effects: they are the recovery.
async fn cleanup(run: &RecoveryRun, ctx: &Context) -> Result<Action> {
    let uid = run.uid().unwrap_or_default();
    if let Ok(mut m) = ctx.runs.lock() {
        m.remove(&uid);
    }
    if run.spec.action != RunAction::TestFailover || run.status.as_ref().and_then(|s| s.start_time.as_ref()).is_none() {
        return Ok(Action::await_change());
    }
    let ns = run.namespace().unwrap_or_default();
    let plan = Api::<RecoveryPlan>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&run.spec.plan)
        .await
        .map_err(Error::kube("reading the plan"))?;
    let (primary, recovery) = match (&plan, &run.status) {
        (Some(p), _) => (p.spec.primary_site.clone(), p.spec.recovery_site.clone()),
        (None, Some(s)) => (
            s.source_site.clone().unwrap_or_default(),
            s.target_site.clone().unwrap_or_default(),
        ),
        (None, None) => return Ok(Action::await_change()),
    };
    let fabric = ctx.fabric(&primary, &recovery).await?;
    let run_ref = RunRef {
        namespace: ns,
        name: run.name_any(),
        uid,
        action: run.spec.action,
        direction: Direction::Forward,
    };
    let mut left = false;
    for (site, model) in [(&recovery, &fabric.recovery), (&primary, &fabric.primary)] {
        match fabric.delete_test_resources(&run_ref, model).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => left = true,
            Err(e) => {
                return Err(Error::Site {
                    site: site.clone(),
                    message: format!("cleaning up the test: {}", e.message),
                });
            }
        }
    }
    // Scripts on the management cluster, for plans with some that run in a test (the chart
    // grants listing there only in the namespaces of such plans).
    let management_scripts = plan.as_ref().is_some_and(|p| {
        p.spec
            .groups
            .iter()
            .flat_map(|g| g.pre.iter().chain(&g.post))
            .filter(|a| a.when.is_empty() || a.when.iter().any(|k| k.matches(RunAction::TestFailover)))
            .any(|a| {
                a.script
                    .as_ref()
                    .is_some_and(|s| s.site == Some(ScriptSite::Management))
            })
    });
    if management_scripts {
        match fabric.delete_management_scripts(&run_ref).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => left = true,
            Err(e) => {
                return Err(Error::Fabric(format!(
                    "cleaning up the test's scripts on the management cluster: {}",
                    e.message
                )));
            }
        }
    }
    if left {
        // The finalizer stays until the next pass finds nothing.
        return Err(Error::Fabric("test resources are being deleted".into()));
    }
    ctx.event(
        run,
        false,
        "CleanedUp",
        "Cleanup",
        "everything the test created was removed".into(),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_are_attributed_to_the_manager_that_added_them() {
        let run: RecoveryRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": "r", "managedFields": [
                {"manager": "kubectl-create", "operation": "Update", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:plan": {}, "f:action": {}}}},
                {"manager": "kubectl-coldsite:alice", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:approvals": {"v:\"confirm-ad-replication\"": {}}}}},
            ]},
            "spec": {"plan": "exchange", "action": "TestFailover", "approvals": ["confirm-ad-replication", "other"]},
        }))
        .unwrap();
        assert_eq!(
            approvers(&run),
            vec![
                (
                    "confirm-ad-replication".to_owned(),
                    Some("kubectl-coldsite:alice".to_owned())
                ),
                ("other".to_owned(), None)
            ]
        );
    }
}
