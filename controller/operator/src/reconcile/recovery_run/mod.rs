//! RecoveryRun: admits a run against where its VMs stand and claims them, drives the
//! engine's executor against the KubeVirt fabric (one driver pass per reconcile), and
//! persists the records: group- and action-level steps in the run's status, each VM's steps
//! in its ProtectedVM's `status.lastRun`. A finalizer removes what a test failover created.
//!
//! Stages: [`admission`] (pure: wait, refuse, or go which way), [`claims`], the driver pass,
//! [`persist`] and [`status`]; [`cleanup`] on deletion.

pub mod admission;
pub mod claims;
pub mod cleanup;
pub mod persist;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::condition;
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction, Site};
use coldsite_engine::driver::{Driver, Limits, NoCrash, RunContext};
use coldsite_engine::executor::{Executor, RunInputs};
use coldsite_engine::fabric::RunRef;
use coldsite_engine::lifecycle::Names;
use coldsite_engine::model::{Direction, PlanModel};
use coldsite_engine::planner::{self, PlanOptions};
use coldsite_engine::time::to_k8s;
use coldsite_engine::validate::{self, Inventory, Severity};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use self::admission::Admission;
use crate::conditions::{self, Desired};
use crate::context::{Context, RunMemory};
use crate::error::{Error, Result};
use crate::kubevirt::fabric::KubeVirtFabric;

pub const FINALIZER: &str = "coldsite.io/cleanup";
/// The field manager of `ProtectedVM.status.lastRun`, apart from the VM's own reconciler.
pub const RUN_MANAGER: &str = "coldsite-controller-runs";

pub async fn reconcile(run: Arc<RecoveryRun>, ctx: Arc<Context>) -> Result<Action> {
    super::finalized(
        run,
        ctx,
        FINALIZER,
        |o, c| async move { apply(&o, &c).await },
        |o, c| async move { cleanup::cleanup(&o, &c).await },
    )
    .await
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

/// Sets the run's Succeeded condition (and phase) and writes the status.
async fn write_condition(
    run: &RecoveryRun,
    ctx: &Context,
    phase: RunPhase,
    reason: &str,
    message: String,
) -> Result<()> {
    let mut status = run.status.clone().unwrap_or_default();
    let now = to_k8s(Utc::now());
    status.phase = Some(phase);
    if phase.is_finished() {
        status.completion_time = Some(now.clone());
    }
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
    let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    crate::status::apply(&api, &run.name_any(), None, run.status.as_ref(), &status).await?;
    Ok(())
}

async fn fail_before_start(run: &RecoveryRun, ctx: &Context, reason: &str, message: String) -> Result<Action> {
    ctx.event(run, true, reason, "Start", message.clone()).await;
    write_condition(run, ctx, RunPhase::Failed, reason, message).await?;
    Ok(Action::await_change())
}

/// A run that has not started waits, saying for what.
async fn wait(run: &RecoveryRun, ctx: &Context, reason: &str, message: String) -> Result<Action> {
    write_condition(run, ctx, RunPhase::Pending, reason, message).await?;
    Ok(Action::requeue(Duration::from_secs(5)))
}

async fn apply(run: &RecoveryRun, ctx: &Context) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    if admission::finished(run) {
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
    let started = run.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some();
    if !started && let Some(action) = earlier_test_holds(run, ctx).await? {
        return Ok(action);
    }
    if let Some(action) = hold_for_changed_plan(run, ctx, &plan).await? {
        return Ok(action);
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
    if !started {
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

    // Admit against where the VMs stand, and claim them.
    let direction = match admit(run, ctx, &plan, &model, &inv).await? {
        Ok(direction) => direction,
        Err(action) => return Ok(action),
    };
    let source_down = run.spec.source_down || site_down(&inv, model.sites(direction).0.name.as_str(), Utc::now());
    let exec = Execution {
        run,
        ctx,
        digest: plan_digest(&plan),
        fabric: &fabric,
        pvms: &inv.protected_vms,
    };
    exec.pass(model, direction, source_down).await
}

/// Decides whether the run may go, claims its VMs if so: the direction, or what to do
/// instead (wait, or end refused).
async fn admit(
    run: &RecoveryRun,
    ctx: &Context,
    plan: &RecoveryPlan,
    model: &PlanModel,
    inv: &Inventory,
) -> Result<std::result::Result<Direction, Action>> {
    let ns = run.namespace().unwrap_or_default();
    let mut names_in_order: Vec<&str> = model.vms.iter().map(|v| v.name.as_str()).collect();
    names_in_order.sort_unstable();
    let vms: Vec<(&str, Option<&ProtectedVM>)> = names_in_order
        .iter()
        .map(|n| (*n, inv.protected_vms.get(&(ns.clone(), (*n).to_owned()))))
        .collect();
    let names = Names {
        plan: &run.spec.plan,
        primary: &plan.spec.primary_site,
        recovery: &plan.spec.recovery_site,
    };
    // Releasing touches only the VMs this run holds.
    let plan_vms: Vec<&ProtectedVM> = vms.iter().filter_map(|(_, p)| *p).collect();
    let (run_name, run_uid) = (run.name_any(), run.uid().unwrap_or_default());
    let started = run.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some();
    if run.spec.cancel && !started {
        claims::release(ctx, &plan_vms, &run_name, &run_uid, RunPhase::Cancelled).await?;
        write_condition(
            run,
            ctx,
            RunPhase::Cancelled,
            "Cancelled",
            "cancelled before it started".into(),
        )
        .await?;
        return Ok(Err(Action::await_change()));
    }
    match admission::decide(run, &vms, &names) {
        Admission::Wait { reason, message } => Ok(Err(wait(run, ctx, reason, message).await?)),
        Admission::Refuse { reason, message } => {
            claims::release(ctx, &plan_vms, &run_name, &run_uid, RunPhase::Failed).await?;
            Ok(Err(fail_before_start(run, ctx, reason, message).await?))
        }
        Admission::Go { direction, claim, done } => {
            let to_claim: Vec<(&ProtectedVM, bool)> = claim
                .iter()
                .filter_map(|n| {
                    inv.protected_vms
                        .get(&(ns.clone(), n.clone()))
                        .map(|p| (p, done.contains(n)))
                })
                .collect();
            if to_claim.is_empty() {
                return Ok(Ok(direction));
            }
            // The pass works from the VMs as claimed (with the steps a claim takes over): it
            // reads them again first.
            claims::claim_all(ctx, &to_claim, run).await?;
            Ok(Err(Action::requeue(Duration::from_secs(1))))
        }
    }
}

/// Whether a site counts as down: unreachable for its `spec.downAfter` by its `Reachable`
/// condition. A site that merely answers slowly is never down.
pub fn site_down(inv: &Inventory, site: &str, now: DateTime<Utc>) -> bool {
    let Some(site) = inv.sites.get(site) else {
        return false;
    };
    counts_as_down(site, now)
}

/// See [`site_down`].
pub fn counts_as_down(site: &Site, now: DateTime<Utc>) -> bool {
    let grace = coldsite_engine::model::parse_duration(&site.spec.down_after).unwrap_or(Duration::from_secs(300));
    let conditions = site
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    coldsite_api::common::find_condition(conditions, condition::REACHABLE).is_some_and(|c| {
        c.status == "False"
            && coldsite_engine::time::from_k8s(&c.last_transition_time)
                + coldsite_engine::executor::chrono_duration(grace)
                <= now
    })
}

/// A test failover's copies live in the target site's test namespace under the source VMs'
/// names: the next test of the plan waits until the previous one is cleaned up.
async fn earlier_test_holds(run: &RecoveryRun, ctx: &Context) -> Result<Option<Action>> {
    if run.spec.action != RunAction::TestFailover {
        return Ok(None);
    }
    let ns = run.namespace().unwrap_or_default();
    let runs = crate::inventory::runs(ctx, &ns).await?;
    let earlier = runs.into_iter().find(|r| {
        r.spec.plan == run.spec.plan
            && r.uid() != run.uid()
            && r.spec.action == RunAction::TestFailover
            && r.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some()
    });
    let Some(other) = earlier else {
        return Ok(None);
    };
    let message = format!(
        "the test copies of run {0} are still at the recovery site; this test starts once {0} is deleted \
         (kubectl coldsite cleanup {0})",
        other.name_any()
    );
    Ok(Some(wait(run, ctx, "WaitingForCleanup", message).await?))
}

/// A run follows the plan it started with: while the plan differs, nothing new starts.
async fn hold_for_changed_plan(run: &RecoveryRun, ctx: &Context, plan: &RecoveryPlan) -> Result<Option<Action>> {
    let old = run.status.clone().unwrap_or_default();
    let digest = plan_digest(plan);
    let Some(started) = old.plan_digest.as_ref().filter(|_| old.start_time.is_some()) else {
        return Ok(None);
    };
    if *started == digest || run.spec.cancel {
        return Ok(None);
    }
    let message = format!(
        "RecoveryPlan {} changed during the run; nothing new starts until it is restored, or set spec.cancel",
        run.spec.plan
    );
    let held = coldsite_api::common::find_condition(&old.conditions, condition::SUCCEEDED)
        .is_some_and(|c| c.reason == "PlanChanged");
    if !held {
        ctx.event(run, true, "PlanChanged", "Hold", message.clone()).await;
    }
    let phase = old.phase.unwrap_or(RunPhase::Running);
    write_condition(run, ctx, phase, "PlanChanged", message).await?;
    Ok(Some(Action::requeue(Duration::from_secs(15))))
}

/// One driver pass of an admitted run, and what it records.
struct Execution<'a> {
    run: &'a RecoveryRun,
    ctx: &'a Context,
    digest: String,
    fabric: &'a KubeVirtFabric,
    pvms: &'a std::collections::BTreeMap<(String, String), ProtectedVM>,
}

impl Execution<'_> {
    /// Plans the graph, resumes the executor where the records say the run stands, and runs
    /// one pass.
    async fn pass(&self, model: PlanModel, direction: Direction, source_down: bool) -> Result<Action> {
        let run = self.run;
        let uid = run.uid().unwrap_or_default();
        let graph = planner::plan(
            &model,
            PlanOptions {
                action: run.spec.action,
                direction,
                shutdown_source: run.spec.shutdown_source,
            },
        );
        let run_ref = RunRef {
            namespace: run.namespace().unwrap_or_default(),
            name: run.name_any(),
            uid: uid.clone(),
            action: run.spec.action,
            direction,
        };
        let rctx = RunContext::new(model, run_ref, run.spec.recovery_point.clone()).with_source_down(source_down);
        let memory = self
            .ctx
            .runs
            .lock()
            .ok()
            .and_then(|m| m.get(&uid).cloned())
            .filter(|m| m.records.len() == graph.len())
            .unwrap_or_else(|| RunMemory {
                records: persist::persisted(&graph, run, self.pvms),
                polls: Vec::new(),
            });
        let before = memory.records;
        let old = run.status.clone().unwrap_or_default();
        let executor = Executor::resume(&graph, before.clone(), old.phase == Some(RunPhase::CleaningUp));
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
        let limits = Limits {
            concurrency: self.ctx.settings.concurrency,
        };
        let mut driver =
            Driver::new(&rctx, executor, self.fabric, persist::Unsaved, NoCrash, limits).with_schedule(memory.polls);
        driver
            .pass(now, &inputs)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let wakeup = driver.next_wakeup();
        let ex = driver.executor();
        let outcome = Outcome {
            after: ex.records().to_vec(),
            phase: ex.phase(),
            waiting: ex.waiting_for().into_iter().map(str::to_owned).collect(),
            progress: ex.progress(),
            polls: driver.schedule(),
        };
        self.record(&graph, &rctx, &before, outcome, now, wakeup).await
    }

    /// Cleans up a cancelled test, persists the records and events, and says when to look
    /// again.
    async fn record(
        &self,
        graph: &planner::StepGraph,
        rctx: &RunContext,
        before: &[coldsite_engine::executor::StepRecord],
        mut outcome: Outcome,
        now: DateTime<Utc>,
        wakeup: Option<DateTime<Utc>>,
    ) -> Result<Action> {
        let (run, ctx) = (self.run, self.ctx);
        let uid = run.uid().unwrap_or_default();
        // A cancelled test cleans up before it counts as cancelled.
        let mut cleaned = false;
        if outcome.phase == RunPhase::Cancelled && run.spec.action == RunAction::TestFailover {
            cleaned = cleanup::remove_test_resources(self.fabric, rctx).await?;
            if !cleaned {
                outcome.phase = RunPhase::CleaningUp;
            }
        }
        let phase = outcome.phase;
        if let Ok(mut m) = ctx.runs.lock() {
            if phase.is_finished() {
                m.remove(&uid);
            } else {
                let memory = RunMemory {
                    records: outcome.after.clone(),
                    polls: std::mem::take(&mut outcome.polls),
                };
                m.insert(uid.clone(), memory);
            }
        }
        let old = run.status.clone().unwrap_or_default();
        let mut st = status::build_status(
            graph,
            &rctx.plan,
            &outcome.after,
            &old,
            phase,
            &outcome.waiting,
            outcome.progress,
            &approvers(run),
            now,
            run.metadata.generation,
        );
        st.plan_digest = old.plan_digest.clone().or(Some(self.digest.clone()));
        status::report(ctx, run, graph, before, &outcome.after, &st, &old).await;
        let ns = run.namespace().unwrap_or_default();
        // VMs first: a run whose status says it ended has recorded every VM's part.
        persist::write_vm_parts(ctx, &ns, graph, rctx, self.pvms, &outcome.after, run, phase).await?;
        let api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &ns);
        crate::status::apply(&api, &run.name_any(), None, run.status.as_ref(), &st).await?;
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
}

/// What one pass left.
struct Outcome {
    after: Vec<coldsite_engine::executor::StepRecord>,
    phase: RunPhase,
    waiting: Vec<String>,
    progress: (usize, usize),
    /// When the pass would ask each running step next.
    polls: coldsite_engine::driver::PollSchedule,
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
