//! RecoveryPlan: `Valid` from the cross-object checks, `Ready` from its VMs' protection, the
//! latest run, and scheduled drills: test failovers created on the plan's cron, cleaned up
//! after `keepFor`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::{condition, is_condition_true};
use coldsite_api::recovery_plan::{DrillSummary, RecoveryPlanStatus, RunSummary};
use coldsite_api::recovery_run::{RecoveryRunSpec, RunPhase};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::validate::{self, Severity};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::{Error, Result};

/// Label on runs a drill schedule created.
pub const DRILL_LABEL: &str = "coldsite.io/drill";
/// Label on every run naming its plan, for listing.
pub const PLAN_LABEL: &str = "coldsite.io/plan";

/// Pure: the next drill time after `since`, from a five-field cron or an @-macro, in UTC.
pub fn next_drill(schedule: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    croner::Cron::from_str(schedule)
        .ok()?
        .find_next_occurrence(&since, false)
        .ok()
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

pub async fn reconcile(plan: Arc<RecoveryPlan>, ctx: Arc<Context>) -> Result<Action> {
    let ns = plan.namespace().unwrap_or_default();
    let name = plan.name_any();
    let now = Utc::now();
    let t = coldsite_engine::time::to_k8s(now);
    let generation = plan.metadata.generation;
    let fabric = ctx.fabric(&plan.spec.primary_site, &plan.spec.recovery_site).await?;
    let inv = crate::inventory::load(&ctx, &ns, &fabric).await?;
    let mut status: RecoveryPlanStatus = plan.status.clone().unwrap_or_default();

    let validated = validate::validate_plan(&plan, &inv);
    let (valid, message) = match &validated {
        Ok((m, warnings)) => {
            let mut text = format!("{} VM(s) in {} group(s)", m.vms.len(), m.groups.len());
            if !warnings.is_empty() {
                text.push_str(&format!(
                    "; {} warning(s): {}",
                    warnings.len(),
                    warnings
                        .iter()
                        .map(|w| w.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            (true, text)
        }
        Err(problems) => (
            false,
            problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let was_valid =
        coldsite_api::common::find_condition(&status.conditions, condition::VALID).map(|c| c.status == "True");
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::VALID,
            ok: valid,
            reason: if valid { "Valid" } else { "InvalidPlan" },
            message: message.clone(),
        },
        generation,
        t.clone(),
    );
    if was_valid != Some(valid) {
        ctx.event(
            plan.as_ref(),
            !valid,
            if valid { "Valid" } else { "InvalidPlan" },
            "Validate",
            message,
        )
        .await;
    }

    // Ready: every VM protected and within its RPO.
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
    let ready = valid && not_ready.is_empty();
    let ready_message = if ready {
        format!("all {} VM(s) protected within their RPO", vms.len())
    } else if !valid {
        "the plan is not valid".to_owned()
    } else {
        format!("not protected within RPO: {}", not_ready.join(", "))
    };
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::READY,
            ok: ready,
            reason: if ready { "Protected" } else { "NotProtected" },
            message: ready_message,
        },
        generation,
        t.clone(),
    );
    status.vm_count = Some(vms.len() as i32);
    status.estimated_rpo_seconds = worst_rpo;

    // The latest run and the latest drill.
    let runs_api: Api<RecoveryRun> = Api::namespaced(ctx.client.clone(), &ns);
    let mut runs: Vec<RecoveryRun> = runs_api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing RecoveryRuns"))?
        .into_iter()
        .filter(|r| r.spec.plan == name)
        .collect();
    runs.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    status.last_run = runs.last().map(summary);
    let drills: Vec<&RecoveryRun> = runs
        .iter()
        .filter(|r| r.labels().get(DRILL_LABEL).is_some_and(|v| v == "true"))
        .collect();
    if let Some(d) = drills.iter().rev().find(|r| {
        r.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RunPhase::is_finished)
    }) {
        let s = d.status.clone().unwrap_or_default();
        status.last_drill = Some(DrillSummary {
            time: s.start_time.clone().unwrap_or_else(|| t.clone()),
            run: Some(d.name_any()),
            result: format!("{:?}", s.phase.unwrap_or_default()),
            rto_seconds: s.rto_seconds,
            rpo_seconds: None,
            message: s
                .steps
                .iter()
                .find(|x| x.state == coldsite_api::recovery_run::StepState::Failed)
                .and_then(|x| x.message.clone()),
        });
    }

    // Drills: one per cron tick, kept for keepFor after they finish (suspended or not).
    let mut requeue = Duration::from_secs(60);
    if let Some(drill) = plan.spec.drill.as_ref() {
        let keep = coldsite_engine::model::parse_duration(&drill.keep_for).unwrap_or(Duration::from_secs(3600));
        for d in drills.iter().filter(|d| d.meta().deletion_timestamp.is_none()) {
            let Some(expires) = d
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| coldsite_engine::time::from_k8s(t) + coldsite_engine::executor::chrono_duration(keep))
            else {
                continue;
            };
            if expires <= now {
                runs_api
                    .delete(&d.name_any(), &DeleteParams::background())
                    .await
                    .map_err(Error::kube("deleting an expired drill"))?;
            } else {
                requeue = requeue.min((expires - now).to_std().unwrap_or(requeue).max(Duration::from_secs(1)));
            }
        }
        // Expired drills are deleted, so the last one's start in status counts too: else
        // the tick it ran for would come due again.
        let since = drills
            .iter()
            .filter_map(|d| d.metadata.creation_timestamp.clone())
            .chain(status.last_drill.as_ref().map(|d| d.time.clone()))
            .map(|t| coldsite_engine::time::from_k8s(&t))
            .max()
            .or_else(|| {
                plan.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(coldsite_engine::time::from_k8s)
            })
            .unwrap_or(now);
        match next_drill(&drill.schedule, since).filter(|_| !drill.suspend) {
            Some(due) if due <= now => {
                let busy = runs.iter().any(|r| {
                    !r.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(RunPhase::is_finished)
                });
                if valid && !busy {
                    // The next drill replaces the last one's test copies: a test waits
                    // until the previous test is gone.
                    for d in drills.iter().filter(|d| d.meta().deletion_timestamp.is_none()) {
                        runs_api
                            .delete(&d.name_any(), &DeleteParams::background())
                            .await
                            .map_err(Error::kube("deleting the previous drill"))?;
                    }
                    create_drill(&runs_api, &plan, due, &drill.auto_approve).await?;
                    ctx.event(
                        plan.as_ref(),
                        false,
                        "DrillStarted",
                        "Drill",
                        format!("scheduled test failover for {due}"),
                    )
                    .await;
                }
            }
            Some(due) => {
                requeue = requeue
                    .min((due - now).to_std().unwrap_or(requeue))
                    .max(Duration::from_secs(1))
            }
            None => {}
        }
    }
    status.observed_generation = generation;
    let api: Api<RecoveryPlan> = Api::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(&api, &name, plan.status.as_ref(), &status).await?;
    Ok(Action::requeue(requeue))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
