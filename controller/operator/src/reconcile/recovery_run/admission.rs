//! Admission of a run, before anything changes: may it start now, must it wait, or does it
//! not fit its VMs at all? Pure.
//!
//! A run owns its VMs through claims: its name and UID in each ProtectedVM's
//! `status.lastRun`, written with the VM's resourceVersion as a precondition (see
//! [`claims`](super::claims)), so that of two runs racing for a VM exactly one wins, whatever
//! their plans. VMs are claimed in name order, so two runs waiting for each other never deadlock. A run
//! that waits says which run it waits for.

use coldsite_api::protected_vm::ProtectedVMStatus;
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RecoveryRun, RunAction};
use coldsite_engine::lifecycle::{self, Names, Standing};
use coldsite_engine::model::Direction;
use coldsite_engine::standing;
use kube::ResourceExt;

/// What the run may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not yet: the condition's reason and message say why and for whom.
    Wait { reason: &'static str, message: String },
    /// Never: the action does not fit where the VMs stand.
    Refuse { reason: &'static str, message: String },
    /// Go this way, once these VMs (in this order) are claimed; an earlier run already moved
    /// those in `done`, and this run takes over their steps.
    Go {
        direction: Direction,
        claim: Vec<String>,
        done: Vec<String>,
    },
}

/// How a VM is held, as its status tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold<'a> {
    /// By this run.
    Ours,
    /// By nobody: this run held it and has ended.
    Ended,
    /// By another run still going: its name.
    Other(&'a str),
    /// By nobody, but the outcome of its last run is not recorded in its standing yet.
    Settling(&'a str),
    Free,
}

/// Who holds a VM, for the run with `uid`.
pub fn hold<'a>(status: &'a ProtectedVMStatus, uid: &str) -> Hold<'a> {
    let Some(last) = &status.last_run else {
        return Hold::Free;
    };
    let this = last.run_uid.as_deref() == Some(uid);
    match last.phase {
        None if this => Hold::Ours,
        Some(_) if this => Hold::Ended,
        None => Hold::Other(&last.run),
        Some(_) if !this && status.applied_run != last.run_uid && last.action.is_some_and(moves) => {
            Hold::Settling(&last.run)
        }
        Some(_) => Hold::Free,
    }
}

/// Actions whose outcome changes where a VM stands.
fn moves(action: RunAction) -> bool {
    action != RunAction::TestFailover
}

/// Decides, from the plan's VMs in name order (a missing ProtectedVM is `None`).
pub fn decide(run: &RecoveryRun, vms: &[(&str, Option<&ProtectedVM>)], names: &Names<'_>) -> Admission {
    let uid = run.uid().unwrap_or_default();
    let mut statuses = Vec::new();
    let mut claim = Vec::new();
    for (name, pvm) in vms {
        let Some(pvm) = pvm else {
            return Admission::Wait {
                reason: "ProtectedVMMissing",
                message: format!("ProtectedVM {name} does not exist"),
            };
        };
        let status = pvm.status.clone().unwrap_or_default();
        match hold(&status, &uid) {
            Hold::Other(by) => {
                return Admission::Wait {
                    reason: "Queued",
                    message: format!("waiting for run {by}, which holds VM {name}"),
                };
            }
            Hold::Settling(by) => {
                return Admission::Wait {
                    reason: "Queued",
                    message: format!("waiting for VM {name} to record where run {by} left it"),
                };
            }
            // A run that ended for its VMs, read again before its own status says so (a stale
            // copy, or it stopped in between), resumes from its records to finish.
            Hold::Ours | Hold::Ended => {}
            Hold::Free => claim.push((*name).to_owned()),
        }
        statuses.push((*name, status));
    }
    // VMs this run already holds were admitted when it claimed them; the others must fit (or
    // have been moved that way by an earlier run), and go the same way.
    let (unclaimed, held): (Vec<_>, Vec<_>) = statuses.iter().partition(|(n, _)| claim.iter().any(|c| c == n));
    // Failovers and failbacks go one way whatever the VMs they hold (some may have moved
    // already); the others go by where their VMs stand.
    let recorded = recorded_direction(run, names)
        .or_else(|| standing::moving(run.spec.action))
        .or_else(|| {
            held.first()
                .map(|(_, s)| lifecycle::direction_of(run.spec.action, Standing::of(s, names.recovery).active))
        });
    let fitted = (!unclaimed.is_empty()).then(|| {
        standing::admit(
            run.spec.action,
            unclaimed.iter().map(|(n, s)| (*n, s)),
            names,
            !held.is_empty(),
        )
    });
    let refuse = |message: String| Admission::Refuse {
        reason: "ActionDoesNotFit",
        message,
    };
    match (recorded, fitted) {
        (_, Some(Err(refusals))) => refuse(refusals.join("; ")),
        (Some(d), Some(Ok(a))) if d != a.direction => refuse(format!(
            "the plan's VMs no longer all go the same way for this {}: bring them to one side first",
            run.spec.action
        )),
        (_, Some(Ok(a))) => Admission::Go {
            direction: a.direction,
            claim,
            done: a.done,
        },
        (Some(direction), None) => Admission::Go {
            direction,
            claim,
            done: Vec::new(),
        },
        (None, None) => refuse(format!("RecoveryPlan {} has no VMs", names.plan)),
    }
}

/// The direction the run took when it claimed its first VMs, from its status.
pub fn recorded_direction(run: &RecoveryRun, names: &Names<'_>) -> Option<Direction> {
    let source = run.status.as_ref()?.source_site.as_deref()?;
    Some(if source == names.primary {
        Direction::Forward
    } else {
        Direction::Reverse
    })
}

/// Whether the run has finished.
pub fn finished(run: &RecoveryRun) -> bool {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(RunPhase::is_finished)
}

#[cfg(test)]
mod tests {
    use coldsite_api::protected_vm::{ProtectionPhase, RecoveryPointsStatus, ReplicationDirection, VmRunStatus};
    use serde_json::json;

    use super::*;

    const NAMES: Names<'static> = Names {
        plan: "exchange",
        primary: "hq",
        recovery: "dr",
    };

    fn run(uid: &str, action: RunAction) -> RecoveryRun {
        serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": format!("run-{uid}"), "namespace": "ns", "uid": uid},
            "spec": {"plan": "exchange", "action": action},
        }))
        .unwrap()
    }

    fn vm(active: &str, phase: ProtectionPhase, last: Option<VmRunStatus>, applied: Option<&str>) -> ProtectedVM {
        let mut p: ProtectedVM = serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "metadata": {"name": "vm", "namespace": "ns"},
            "spec": {"vm": {"name": "vm"}, "primarySite": "hq", "recoverySite": "dr", "networkMapping": "m",
                     "replication": {"rpo": "15m", "retention": "24h"}},
        }))
        .unwrap();
        p.status = Some(ProtectedVMStatus {
            phase: Some(phase),
            active_site: Some(active.into()),
            replication_direction: Some(if active == "hq" {
                ReplicationDirection::PrimaryToRecovery
            } else {
                ReplicationDirection::RecoveryToPrimary
            }),
            recovery_points: Some(RecoveryPointsStatus {
                count: 3,
                ..Default::default()
            }),
            last_run: last,
            applied_run: applied.map(str::to_owned),
            ..Default::default()
        });
        p
    }

    fn held_by(uid: &str, phase: Option<RunPhase>) -> Option<VmRunStatus> {
        Some(VmRunStatus {
            run: format!("run-{uid}"),
            run_uid: Some(uid.into()),
            action: Some(RunAction::PlannedFailover),
            phase,
            ..Default::default()
        })
    }

    #[test]
    fn a_free_plan_is_claimed_in_order_and_goes_its_way() {
        let a = vm("hq", ProtectionPhase::Protected, None, None);
        let b = vm(
            "hq",
            ProtectionPhase::Protected,
            held_by("old", Some(RunPhase::Succeeded)),
            Some("old"),
        );
        let got = decide(
            &run("u1", RunAction::PlannedFailover),
            &[("a", Some(&a)), ("b", Some(&b))],
            &NAMES,
        );
        assert_eq!(
            got,
            Admission::Go {
                direction: Direction::Forward,
                claim: vec!["a".into(), "b".into()],
                done: vec![],
            }
        );
    }

    #[test]
    fn a_vm_held_by_another_run_makes_it_wait_naming_that_run() {
        let a = vm("hq", ProtectionPhase::Protected, held_by("other", None), None);
        let Admission::Wait { message, .. } = decide(&run("u1", RunAction::TestFailover), &[("a", Some(&a))], &NAMES)
        else {
            panic!("a held VM must wait");
        };
        assert!(message.contains("run-other") && message.contains("VM a"), "{message}");
    }

    #[test]
    fn the_outcome_of_the_last_run_is_recorded_before_the_next_starts() {
        let a = vm(
            "hq",
            ProtectionPhase::Protected,
            held_by("old", Some(RunPhase::Succeeded)),
            None,
        );
        assert!(matches!(
            decide(&run("u1", RunAction::Reprotect), &[("a", Some(&a))], &NAMES),
            Admission::Wait { .. }
        ));
    }

    #[test]
    fn an_action_that_does_not_fit_is_refused_naming_the_vm() {
        let a = vm("dr", ProtectionPhase::Protected, None, None);
        let Admission::Refuse { message, .. } =
            decide(&run("u1", RunAction::PlannedFailover), &[("a", Some(&a))], &NAMES)
        else {
            panic!("a planned failover of a VM that runs at DR must be refused");
        };
        assert!(message.contains("VM a is Protected at dr"), "{message}");
        assert!(message.contains("kubectl coldsite failback exchange"), "{message}");
    }

    #[test]
    fn a_run_that_ended_for_its_vms_is_not_admitted_again() {
        // A stale copy of the run, read before its own status said it ended, must not be
        // refused against where it has just moved the VMs: it resumes and finishes.
        let a = vm(
            "dr",
            ProtectionPhase::FailedOver,
            held_by("u1", Some(RunPhase::Succeeded)),
            Some("u1"),
        );
        let mut r = run("u1", RunAction::PlannedFailover);
        r.status = Some(coldsite_api::recovery_run::RecoveryRunStatus {
            source_site: Some("hq".into()),
            ..Default::default()
        });
        assert_eq!(
            decide(&r, &[("a", Some(&a))], &NAMES),
            Admission::Go {
                direction: Direction::Forward,
                claim: vec![],
                done: vec![],
            }
        );
    }

    #[test]
    fn vms_already_held_are_not_checked_again() {
        // Claimed while Protected; its status now shows the run's phase.
        let a = vm("hq", ProtectionPhase::FailingOver, held_by("u1", None), None);
        let b = vm("hq", ProtectionPhase::Protected, None, None);
        let got = decide(
            &run("u1", RunAction::PlannedFailover),
            &[("a", Some(&a)), ("b", Some(&b))],
            &NAMES,
        );
        assert_eq!(
            got,
            Admission::Go {
                direction: Direction::Forward,
                claim: vec!["b".into()],
                done: vec![],
            }
        );
    }

    #[test]
    fn a_retry_holding_a_vm_an_earlier_run_moved_still_goes_forward() {
        // dc01 (first by name) already runs at DR; the retry holds it and the others.
        let mut a = vm("dr", ProtectionPhase::FailingOver, held_by("u1", None), Some("old"));
        if let Some(last) = a.status.as_mut().and_then(|s| s.last_run.as_mut()) {
            last.action = Some(RunAction::Failover);
        }
        let b = vm("hq", ProtectionPhase::FailingOver, held_by("u1", None), None);
        let got = decide(
            &run("u1", RunAction::Failover),
            &[("a", Some(&a)), ("b", Some(&b))],
            &NAMES,
        );
        assert_eq!(
            got,
            Admission::Go {
                direction: Direction::Forward,
                claim: vec![],
                done: vec![],
            }
        );
    }
}
