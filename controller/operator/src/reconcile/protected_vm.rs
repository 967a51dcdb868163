//! ProtectedVM: replication from the active site to the other, recovery points kept and
//! pruned, and a status that tells the current RPO. A finalizer removes replication when
//! protection ends.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::common::condition;
use coldsite_api::protected_vm::{
    ProtectedVMStatus, ProtectionPhase, RecoveryPointsStatus, ReplicationDirection, ReplicationHealth,
    ReplicationStatus,
};
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RunAction};
use coldsite_engine::fabric::{FabricError, ReplicationState};
use coldsite_engine::model::SiteModel;
use coldsite_engine::validate::{self, Severity};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kubevirt::dynamic::{
    CONFIG_MAP, REPLICATION_DESTINATION, REPLICATION_SOURCE, SECRET, VOLUME_SNAPSHOT, str_at,
};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::PROTECTED_VM;

pub const FINALIZER: &str = "coldsite.io/protection";
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Where the VM stands between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub phase: ProtectionPhase,
    /// True when the VM runs at the recovery site.
    pub at_recovery: bool,
    pub direction: ReplicationDirection,
}

impl Standing {
    fn of(status: &ProtectedVMStatus, recovery_site: &str) -> Self {
        Standing {
            phase: status.phase.unwrap_or_default(),
            at_recovery: status.active_site.as_deref() == Some(recovery_site),
            direction: status.replication_direction.unwrap_or_default(),
        }
    }
}

/// Pure: how a finished run moves the VM.
pub fn after_run(cur: Standing, action: RunAction, succeeded: bool) -> Standing {
    if !succeeded {
        return cur;
    }
    match action {
        RunAction::TestFailover => cur,
        RunAction::PlannedFailover | RunAction::Failover => Standing {
            phase: ProtectionPhase::FailedOver,
            at_recovery: true,
            direction: ReplicationDirection::Paused,
        },
        RunAction::Failback => Standing {
            phase: ProtectionPhase::FailedOver,
            at_recovery: false,
            direction: ReplicationDirection::Paused,
        },
        RunAction::Commit => Standing {
            phase: ProtectionPhase::Committed,
            ..cur
        },
        RunAction::Reprotect => Standing {
            phase: ProtectionPhase::Protected,
            at_recovery: cur.at_recovery,
            direction: if cur.at_recovery {
                ReplicationDirection::RecoveryToPrimary
            } else {
                ReplicationDirection::PrimaryToRecovery
            },
        },
    }
}

/// Pure: the phase shown while a run is under way.
fn during_run(action: RunAction) -> Option<ProtectionPhase> {
    match action {
        RunAction::PlannedFailover | RunAction::Failover => Some(ProtectionPhase::FailingOver),
        RunAction::Reprotect => Some(ProtectionPhase::Reprotecting),
        RunAction::Failback => Some(ProtectionPhase::FailingBack),
        RunAction::TestFailover | RunAction::Commit => None,
    }
}

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

pub async fn reconcile(pvm: Arc<ProtectedVM>, ctx: Arc<Context>) -> Result<Action> {
    super::finalized(
        pvm,
        ctx,
        FINALIZER,
        |o, c| async move { apply(&o, &c).await },
        |o, c| async move { cleanup(&o, &c).await },
    )
    .await
}

async fn apply(pvm: &ProtectedVM, ctx: &Context) -> Result<Action> {
    let ns = pvm.namespace().unwrap_or_default();
    let name = pvm.name_any();
    let spec = &pvm.spec;
    let now = Utc::now();
    let fabric = ctx.fabric(&spec.primary_site, &spec.recovery_site).await?;
    let inv = crate::inventory::load(ctx, &ns, &fabric, crate::inventory::Scope::Vm(pvm)).await?;
    let old = pvm.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = pvm.metadata.generation;
    let t = coldsite_engine::time::to_k8s(now);

    // Where the VM stands: advanced by runs that finished since the last look.
    let mut standing = Standing::of(&old, &spec.recovery_site);
    if old.phase.is_none() {
        standing.phase = ProtectionPhase::Enabling;
    }
    let mut run_in_progress = false;
    if let Some(last) = &old.last_run
        && let Some(action) = last.action
    {
        match last.phase {
            Some(phase) if phase.is_finished() && old.applied_run != last.run_uid => {
                standing = after_run(standing, action, phase == RunPhase::Succeeded);
                status.applied_run = last.run_uid.clone();
            }
            None => {
                run_in_progress = during_run(action).is_some();
                if let Some(p) = during_run(action) {
                    standing.phase = p;
                }
            }
            _ => {}
        }
    }
    status.active_site = Some(if standing.at_recovery {
        spec.recovery_site.clone()
    } else {
        spec.primary_site.clone()
    });
    status.replication_direction = Some(standing.direction);

    let model = validate::vm_model(pvm, &inv);
    let rpo = coldsite_engine::model::parse_duration(&spec.replication.rpo).unwrap_or(Duration::from_secs(900));
    let (replication, problem): (Option<ReplicationState>, Option<(&str, String)>) = match &model {
        Err(problems) => {
            let text: Vec<String> = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            (None, Some(("InvalidSpec", text.join("; "))))
        }
        Ok(_) if run_in_progress || standing.direction == ReplicationDirection::Paused => (None, None),
        Ok((vm, _)) => {
            let (primary, recovery) = (
                SiteModel::of(&spec.primary_site, inv.sites.get(&spec.primary_site)),
                SiteModel::of(&spec.recovery_site, inv.sites.get(&spec.recovery_site)),
            );
            let (source, target, reuse) = match standing.direction {
                ReplicationDirection::RecoveryToPrimary => (&recovery, &primary, true),
                _ => (&primary, &recovery, false),
            };
            match fabric.replicate(vm, source, target, reuse, now).await {
                Ok(state) => (Some(state), None),
                Err(e) => (None, Some((reason_of(&e), e.message))),
            }
        }
    };
    let paused = standing.direction == ReplicationDirection::Paused;
    if let Some(state) = &replication {
        let (h, age) = health(now, state.last_sync, rpo, paused);
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
        let points = &state.points;
        status.recovery_points = Some(RecoveryPointsStatus {
            count: points.len() as i32,
            oldest: points.first().map(|p| coldsite_engine::time::to_k8s(p.time)),
            latest: points.last().map(|p| coldsite_engine::time::to_k8s(p.time)),
            latest_app_consistent: points
                .iter()
                .rev()
                .find(|p| p.app_consistent)
                .map(|p| coldsite_engine::time::to_k8s(p.time)),
        });
        if standing.phase == ProtectionPhase::Enabling && state.established && state.last_sync.is_some() {
            standing.phase = ProtectionPhase::Protected;
        }
    } else if paused {
        status.replication = Some(ReplicationStatus {
            health: ReplicationHealth::Paused,
            ..status.replication.clone().unwrap_or_default()
        });
    }
    if problem.as_ref().is_some_and(|(r, _)| *r == "InvalidSpec") {
        standing.phase = ProtectionPhase::Error;
    }
    status.phase = Some(standing.phase);

    let rep = status.replication.clone().unwrap_or_default();
    let rpo_met = rep.current_rpo_seconds.is_some_and(|a| a <= rpo.as_secs() as i64);
    let replicating = replication.as_ref().is_some_and(|s| s.established) && !paused;
    // What the platform says is in the way of a first sync.
    let waiting = replication
        .as_ref()
        .map(|s| s.waiting.join("; "))
        .filter(|w| !w.is_empty())
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    let (ready, ready_reason, ready_message) = match (&problem, standing.phase) {
        (Some((reason, message)), _) => (false, *reason, message.clone()),
        (None, ProtectionPhase::FailedOver | ProtectionPhase::Committed) => (
            false,
            "FailedOver",
            "running at the other site; replication is paused until Reprotect".to_owned(),
        ),
        (None, _) if run_in_progress => (false, "RunInProgress", "a recovery run is moving this VM".to_owned()),
        (None, _) if !replicating => (false, "Enabling", format!("replication is being set up{waiting}")),
        (None, _) if !rpo_met => (
            false,
            "RpoNotMet",
            match rep.current_rpo_seconds {
                Some(age) => format!("last sync {age}s ago, RPO {}", spec.replication.rpo),
                None => format!("the first sync has not completed{waiting}"),
            },
        ),
        (None, _) => (
            true,
            "Protected",
            format!(
                "replicating to {}; RPO met",
                if standing.at_recovery {
                    &spec.primary_site
                } else {
                    &spec.recovery_site
                }
            ),
        ),
    };
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::READY,
            ok: ready,
            reason: ready_reason,
            message: ready_message.clone(),
        },
        generation,
        t.clone(),
    );
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::REPLICATING,
            ok: replicating,
            reason: if replicating {
                "Replicating"
            } else if paused {
                "Paused"
            } else {
                "NotEstablished"
            },
            message: format!("{:?}", standing.direction),
        },
        generation,
        t.clone(),
    );
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::RPO_MET,
            ok: rpo_met,
            reason: if rpo_met { "WithinRpo" } else { "RpoExceeded" },
            message: match rep.current_rpo_seconds {
                Some(a) => format!("{a}s of data at risk, RPO {}", spec.replication.rpo),
                None => "no completed sync yet".into(),
            },
        },
        generation,
        t,
    );
    status.observed_generation = generation;

    let labels = [ns.as_str(), name.as_str()];
    ctx.metrics
        .vm_rpo_target_seconds
        .with_label_values(&labels)
        .set(rpo.as_secs_f64());
    if let Some(a) = rep.current_rpo_seconds {
        ctx.metrics.vm_rpo_seconds.with_label_values(&labels).set(a as f64);
    }
    ctx.metrics
        .vm_replication_healthy
        .with_label_values(&labels)
        .set(if rep.health == ReplicationHealth::Healthy {
            1.0
        } else {
            0.0
        });
    if old.phase != status.phase || coldsite_api::common::is_condition_true(&old.conditions, condition::READY) != ready
    {
        tracing::info!(protected_vm = %name, namespace = %ns, phase = ?standing.phase, ready, reason = ready_reason, "protection");
        ctx.event(
            pvm,
            !ready && problem.is_some(),
            ready_reason,
            "Protect",
            format!("{:?}: {ready_message}", standing.phase),
        )
        .await;
    }
    // Compare without the heartbeat-like RPO age, so a healthy VM is not rewritten each check
    // unless its RPO bucket moved.
    let api: Api<ProtectedVM> = Api::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(&api, &name, old_for_compare(&old, &status).as_ref(), &status).await?;
    Ok(Action::requeue(CHECK_EVERY))
}

/// Status writes skip changes of the RPO age alone within a minute, so an idle, healthy VM
/// costs one write a minute at most.
fn old_for_compare(old: &ProtectedVMStatus, new: &ProtectedVMStatus) -> Option<ProtectedVMStatus> {
    let (a, b) = (old.replication.as_ref()?, new.replication.as_ref()?);
    let close = match (a.current_rpo_seconds, b.current_rpo_seconds) {
        (Some(x), Some(y)) => (x - y).abs() < 60,
        (x, y) => x == y,
    };
    if close && a.health == b.health && a.last_sync_time == b.last_sync_time {
        let mut same = old.clone();
        same.replication = new.replication.clone();
        return Some(same);
    }
    Some(old.clone())
}

fn reason_of(e: &FabricError) -> &'static str {
    match e.kind {
        coldsite_engine::fabric::FailureKind::Unreachable => "SiteUnreachable",
        coldsite_engine::fabric::FailureKind::Transient => "ReplicationRetrying",
        coldsite_engine::fabric::FailureKind::Permanent => "ReplicationFailed",
    }
}

/// Removes replication objects and recovery points at both sites.
async fn cleanup(pvm: &ProtectedVM, ctx: &Context) -> Result<Action> {
    let spec = &pvm.spec;
    let ns = spec
        .vm
        .namespace
        .clone()
        .or_else(|| pvm.namespace())
        .unwrap_or_default();
    let fabric: KubeVirtFabric = ctx.fabric(&spec.primary_site, &spec.recovery_site).await?;
    let selector = format!("{PROTECTED_VM}={}", pvm.name_any());
    let mut gone = Vec::new();
    for site_name in [&spec.primary_site, &spec.recovery_site] {
        // A Site deleted from coldsite (a site lost for good) is not waited for: what
        // replication left there stays there.
        if ctx.site(site_name).await?.is_none() {
            gone.push(site_name.as_str());
            continue;
        }
        let site = fabric.site(site_name).map_err(|e| Error::Site {
            site: site_name.clone(),
            message: format!("cannot remove replication: {}", e.message),
        })?;
        for kind in [
            REPLICATION_SOURCE,
            REPLICATION_DESTINATION,
            VOLUME_SNAPSHOT,
            SECRET,
            CONFIG_MAP,
        ] {
            for o in site
                .list(kind, Some(&ns), &selector)
                .await
                .map_err(|e| Error::Fabric(e.message))?
            {
                let name = str_at(&o, "/metadata/name").unwrap_or_default();
                site.delete(kind, Some(&ns), name)
                    .await
                    .map_err(|e| Error::Fabric(e.message))?;
            }
        }
    }
    let note = if gone.is_empty() {
        "replication and recovery points removed at both sites".to_owned()
    } else {
        format!(
            "replication and recovery points removed; Site {} no longer exists, so nothing was removed there",
            gone.join(" and ")
        )
    };
    ctx.event(pvm, !gone.is_empty(), "ProtectionRemoved", "Unprotect", note)
        .await;
    ctx.metrics
        .forget_vm(&pvm.namespace().unwrap_or_default(), &pvm.name_any());
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_move_the_vm() {
        let start = Standing {
            phase: ProtectionPhase::Protected,
            at_recovery: false,
            direction: ReplicationDirection::PrimaryToRecovery,
        };
        let over = after_run(start, RunAction::PlannedFailover, true);
        assert_eq!(
            over,
            Standing {
                phase: ProtectionPhase::FailedOver,
                at_recovery: true,
                direction: ReplicationDirection::Paused
            }
        );
        assert_eq!(after_run(start, RunAction::TestFailover, true), start);
        assert_eq!(after_run(start, RunAction::Failover, false), start);
        let back = after_run(over, RunAction::Reprotect, true);
        assert_eq!(back.direction, ReplicationDirection::RecoveryToPrimary);
        let home = after_run(back, RunAction::Failback, true);
        assert!(!home.at_recovery);
        assert_eq!(
            after_run(home, RunAction::Reprotect, true).direction,
            ReplicationDirection::PrimaryToRecovery
        );
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
}
