//! The run's records where they are kept: group- and action-level steps in the run's
//! status, each VM's steps in its ProtectedVM's `status.lastRun` (written only by the run
//! that claimed the VM, and only when they changed).

use std::collections::{BTreeMap, HashMap};

use coldsite_api::protected_vm::{Consistency, VmRunStatus};
use coldsite_api::recovery_run::{RunPhase, StepStatus};
use coldsite_api::{ProtectedVM, RecoveryRun};
use coldsite_engine::driver::{DriverError, RunContext, RunStore};
use coldsite_engine::executor::StepRecord;
use coldsite_engine::fabric::RecoveryPoint;
use coldsite_engine::model::PlanModel;
use coldsite_engine::planner::{StepGraph, StepIdx, vm_of_step_id};
use coldsite_engine::time::{from_k8s, to_k8s};
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;

use crate::context::Context;
use crate::error::Result;

/// Collects nothing: the reconciler persists the whole picture after the pass.
pub struct Unsaved;

impl RunStore for Unsaved {
    async fn save(&mut self, _: &StepGraph, _: StepIdx, _: &StepRecord) -> Result<(), DriverError> {
        Ok(())
    }
}

pub fn record_of(s: &StepStatus) -> StepRecord {
    StepRecord {
        state: s.state,
        attempts: s.attempts.max(0) as u32,
        started_at: s.started_at.as_ref().map(from_k8s),
        finished_at: s.finished_at.as_ref().map(from_k8s),
        next_attempt_at: s.next_attempt_at.as_ref().map(from_k8s),
        message: s.message.clone(),
        point: s.recovery_point.as_ref().map(|t| RecoveryPoint {
            time: from_k8s(t),
            app_consistent: s.recovery_point_consistency.is_some_and(Consistency::is_app),
            one_instant: s.recovery_point_one_instant,
        }),
    }
}

pub fn status_of(graph: &StepGraph, plan: &PlanModel, i: StepIdx, r: &StepRecord) -> StepStatus {
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
        recovery_point: r.point.as_ref().map(|p| to_k8s(p.time)),
        recovery_point_consistency: r.point.as_ref().map(|p| Consistency::of(p.app_consistent)),
        recovery_point_one_instant: r.point.as_ref().is_some_and(|p| p.one_instant),
        next_attempt_at: r.next_attempt_at.map(to_k8s),
        message: r.message.clone(),
    }
}

/// The records as persisted: run-level steps from the run, VM steps from the VMs.
pub fn persisted(
    graph: &StepGraph,
    run: &RecoveryRun,
    pvms: &BTreeMap<(String, String), ProtectedVM>,
) -> Vec<StepRecord> {
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

/// Each VM's steps go to its ProtectedVM's `status.lastRun`, which this run claimed, written
/// only when they changed; the run's phase there, once it has finished, ends the claim.
#[allow(clippy::too_many_arguments)]
pub async fn write_vm_parts(
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
    let mut writes = Vec::new();
    for (vm, steps) in per_vm {
        let Some(pvm) = pvms.get(&(ns.to_owned(), vm.to_owned())) else {
            continue;
        };
        let current = pvm.status.as_ref().and_then(|s| s.last_run.as_ref());
        // Only the run that claimed a VM writes its part.
        if current.is_none_or(|c| c.run_uid.as_deref() != Some(uid.as_str())) {
            continue;
        }
        let restore = steps
            .iter()
            .find(|s| s.kind == Some(coldsite_api::recovery_run::StepKind::RestoreDisks));
        let recovery_point = restore.and_then(|s| s.recovery_point.clone());
        let recovery_point_consistency = restore.and_then(|s| s.recovery_point_consistency);
        let part = VmRunStatus {
            run: run.name_any(),
            run_uid: Some(uid.clone()),
            action: Some(run.spec.action),
            phase: phase.is_finished().then_some(phase),
            recovery_point,
            recovery_point_consistency,
            recovery_point_one_instant: restore.is_some_and(|s| s.recovery_point_one_instant),
            steps,
            replaced_point: current.and_then(|c| c.replaced_point.clone()),
        };
        if !crate::status::unchanged(current, &part) {
            writes.push((pvm, part));
        }
    }
    // A group's VMs change together (powered on, ready): written side by side, not one by one.
    let writes: Vec<_> = writes
        .into_iter()
        .map(|(pvm, part)| async move { super::claims::write_part(ctx, pvm, &part, None).await })
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(ctx.settings.concurrency.max(1))
        .try_collect::<Vec<bool>>()
        .await?;
    Ok(())
}
