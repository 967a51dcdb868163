//! The run's status, built from its records (pure), and the Events and metrics of its
//! transitions.

use chrono::{DateTime, Utc};
use coldsite_api::RecoveryRun;
use coldsite_api::common::condition;
use coldsite_api::recovery_run::{ApprovalRecord, GroupProgress, RecoveryRunStatus, RunPhase, StepState};
use coldsite_engine::executor::StepRecord;
use coldsite_engine::model::PlanModel;
use coldsite_engine::planner::StepGraph;
use coldsite_engine::time::to_k8s;
use kube::ResourceExt;

use super::persist::status_of;
use crate::conditions::{self, Desired};
use crate::context::Context;

/// Pure: the run's status from its records.
#[allow(clippy::too_many_arguments)]
pub fn build_status(
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
pub async fn report(
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
