//! Where a ProtectedVM stands, from its status: the outcome of its last run settled into its
//! standing (once), whether a run holds it now, and which of its copies must be halted. Pure;
//! the controller records what this decides, and the cycle simulation checks it.

use crate::lifecycle::{self, Names, Side, Standing, VmOutcome};
use crate::model::Direction;
use coldsite_api::RunAction;
use coldsite_api::protected_vm::{ProtectedVMStatus, ProtectionPhase, VmRunStatus};
use coldsite_api::recovery_run::{StepKind, StepState};

/// A run that holds the VM now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub run: String,
    pub uid: String,
    pub action: RunAction,
    /// The site side the run moves the VM away from, for actions that move it.
    pub source: Option<Side>,
    /// The run has stopped the VM at its source, or found it down there.
    pub source_stopped: bool,
    /// The run has started the VM at its target (or took over an earlier run's start).
    pub target_started: bool,
}

/// The VM's standing and what to record about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Where it stands when no run holds it.
    pub resting: Standing,
    /// The phase to show: the run's phase while one holds it.
    pub shown: ProtectionPhase,
    pub applied_run: Option<String>,
    pub resting_phase: Option<ProtectionPhase>,
    pub claim: Option<Claim>,
}

/// Which way a run of `action` moves VMs; None for actions that keep them where they are.
pub fn moving(action: RunAction) -> Option<Direction> {
    match action {
        RunAction::PlannedFailover | RunAction::Failover => Some(Direction::Forward),
        RunAction::Failback => Some(Direction::Reverse),
        _ => None,
    }
}

/// What a finished run did to the VM, from its steps.
pub fn outcome(last: &VmRunStatus) -> VmOutcome {
    let key = match last.action {
        Some(RunAction::Reprotect) => StepKind::ReverseReplication,
        Some(RunAction::Commit) => StepKind::Commit,
        _ => StepKind::PowerOn,
    };
    VmOutcome {
        completed: last
            .steps
            .iter()
            .any(|s| s.kind == Some(key) && s.state == StepState::Succeeded),
    }
}

fn claim_of(last: &VmRunStatus) -> Option<Claim> {
    if last.phase.is_some() {
        return None;
    }
    let action = last.action?;
    Some(Claim {
        run: last.run.clone(),
        uid: last.run_uid.clone().unwrap_or_default(),
        action,
        source: moving(action).map(Side::source_of),
        source_stopped: last.steps.iter().any(|s| {
            matches!(s.kind, Some(StepKind::PowerOff | StepKind::CheckSource)) && s.state == StepState::Succeeded
        }),
        target_started: outcome(last).completed,
    })
}

/// Settles the VM's status: a finished run's outcome moves its standing once; a run that
/// holds it shows its phase.
pub fn settle(status: &ProtectedVMStatus, recovery_site: &str, has_points: bool) -> Settled {
    let mut resting = Standing::of(status, recovery_site);
    resting.phase = status.resting_phase.or(status.phase).unwrap_or_default();
    resting.has_points = has_points;
    let mut applied_run = status.applied_run.clone();
    let mut claim = None;
    if let Some(last) = &status.last_run {
        claim = claim_of(last);
        let finished = last.phase.is_some();
        if finished
            && applied_run != last.run_uid
            && let Some(action) = last.action
        {
            let direction = moving(action).unwrap_or(Direction::Forward);
            resting = lifecycle::after_run(resting, action, direction, outcome(last));
            applied_run = last.run_uid.clone();
        }
    }
    let during = claim.as_ref().and_then(|c| lifecycle::during(c.action));
    Settled {
        shown: during.unwrap_or(resting.phase),
        resting_phase: during.map(|_| resting.phase),
        resting,
        applied_run,
        claim,
    }
}

/// Whether an earlier run of the same action already moved this VM, for a new run of
/// `action` to take it as done: a retry of a run that moved some VMs and not
/// others. The earlier run's outcome must be settled, and nothing may have happened since.
pub fn moved_by_earlier(status: &ProtectedVMStatus, action: RunAction, recovery_site: &str) -> bool {
    let (Some(direction), Some(last)) = (moving(action), status.last_run.as_ref()) else {
        return false;
    };
    let settled = last.phase.is_some() && status.applied_run == last.run_uid;
    if !settled || last.action != Some(action) || !outcome(last).completed {
        return false;
    }
    let s = Standing::of(status, recovery_site);
    s.phase == ProtectionPhase::FailedOver && s.active == Side::source_of(direction).other()
}

/// A run admitted for a plan's VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub direction: Direction,
    /// VMs an earlier run of the same movement already moved: the run takes over their steps.
    pub done: Vec<String>,
}

/// Admits a run of `action` for VMs by their statuses: each must fit it or have been moved
/// that way already by an earlier run, some must still need it (among these, or the VMs the
/// run `holds_others` already), and all go one way. `Err` lists why not, VM by VM.
pub fn admit<'a>(
    action: RunAction,
    vms: impl IntoIterator<Item = (&'a str, &'a ProtectedVMStatus)>,
    names: &Names<'_>,
    holds_others: bool,
) -> Result<Admitted, Vec<String>> {
    let mut done = Vec::new();
    let mut todo = Vec::new();
    for (vm, status) in vms {
        let standing = Standing::of(status, names.recovery);
        if moved_by_earlier(status, action, names.recovery) {
            done.push((vm, standing));
        } else {
            todo.push((vm, standing));
        }
    }
    if todo.is_empty()
        && holds_others
        && let Some(direction) = moving(action)
        && !done.is_empty()
    {
        return Ok(Admitted {
            direction,
            done: done.into_iter().map(|(vm, _)| vm.to_owned()).collect(),
        });
    }
    if todo.is_empty() {
        // Nothing left to move: the refusals say where the VMs are and what fits.
        return lifecycle::admit_plan(action, done.iter().map(|(vm, s)| (*vm, s)), names).map(|direction| Admitted {
            direction,
            done: Vec::new(),
        });
    }
    // What fits goes the way the action moves VMs, the way the done ones went.
    let direction = lifecycle::admit_plan(action, todo.iter().map(|(vm, s)| (*vm, s)), names)?;
    Ok(Admitted {
        direction,
        done: done.into_iter().map(|(vm, _)| vm.to_owned()).collect(),
    })
}

/// A copy to halt: the VM's copy at `side`, unless the run `spare` started it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Halt {
    pub side: Side,
    /// The uid of the run whose copy this is, if it started one there.
    pub spare: Option<String>,
}

/// The copies that must be halted. While a run moves the VM: at the target, until the run has
/// started the VM there, everything but what that run started (a copy an earlier, failed run
/// left must not boot when its site returns), and at the source, once the run has stopped
/// the VM there (or found the site down) or started it at the target. Otherwise the copy at the side the VM does not run at; a test's copies live
/// elsewhere, in the test namespace.
pub fn halts(s: &Settled) -> Vec<Halt> {
    match &s.claim {
        Some(Claim {
            source: Some(source),
            source_stopped,
            target_started,
            uid,
            ..
        }) => {
            let mut halts = Vec::new();
            if !*target_started {
                halts.push(Halt {
                    side: source.other(),
                    spare: Some(uid.clone()),
                });
            }
            if *source_stopped || *target_started {
                halts.push(Halt {
                    side: *source,
                    spare: None,
                });
            }
            halts
        }
        _ => vec![Halt {
            side: s.resting.active.other(),
            spare: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use coldsite_api::protected_vm::ReplicationDirection;
    use coldsite_api::recovery_run::{RunPhase, StepStatus};

    use super::*;

    fn step(kind: StepKind, state: StepState) -> StepStatus {
        StepStatus {
            id: format!("{kind:?}"),
            kind: Some(kind),
            state,
            started_at: Some(crate::time::to_k8s(chrono::Utc::now())),
            ..StepStatus::default()
        }
    }

    fn protected_at_hq() -> ProtectedVMStatus {
        ProtectedVMStatus {
            phase: Some(ProtectionPhase::Protected),
            active_site: Some("hq".into()),
            replication_direction: Some(ReplicationDirection::PrimaryToRecovery),
            ..ProtectedVMStatus::default()
        }
    }

    fn last(action: RunAction, phase: Option<RunPhase>, steps: Vec<StepStatus>) -> Option<VmRunStatus> {
        Some(VmRunStatus {
            run: "r1".into(),
            run_uid: Some("u1".into()),
            action: Some(action),
            phase,
            steps,
            ..VmRunStatus::default()
        })
    }

    #[test]
    fn a_failover_shows_while_it_runs_and_moves_the_vm_once_done() {
        let mut st = protected_at_hq();
        st.last_run = last(
            RunAction::Failover,
            None,
            vec![step(StepKind::PowerOff, StepState::Succeeded)],
        );
        let s = settle(&st, "dr", true);
        assert_eq!(s.shown, ProtectionPhase::FailingOver);
        assert_eq!(s.resting_phase, Some(ProtectionPhase::Protected));
        let claim = s.claim.expect("held");
        assert!(claim.source_stopped && claim.source == Some(Side::Primary));

        // Recorded: the status now shows FailingOver, and the run ends with the VM started.
        st.phase = Some(ProtectionPhase::FailingOver);
        st.resting_phase = Some(ProtectionPhase::Protected);
        st.last_run = last(
            RunAction::Failover,
            Some(RunPhase::Succeeded),
            vec![
                step(StepKind::PowerOff, StepState::Succeeded),
                step(StepKind::PowerOn, StepState::Succeeded),
            ],
        );
        let s = settle(&st, "dr", false);
        assert_eq!(s.resting.phase, ProtectionPhase::FailedOver);
        assert_eq!(s.resting.active, Side::Recovery);
        assert_eq!(s.applied_run.as_deref(), Some("u1"));
        assert!(s.claim.is_none() && s.resting_phase.is_none());
    }

    #[test]
    fn a_failover_that_never_started_the_copy_leaves_the_vm_where_it_was() {
        let mut st = protected_at_hq();
        st.phase = Some(ProtectionPhase::FailingOver);
        st.resting_phase = Some(ProtectionPhase::Protected);
        st.last_run = last(
            RunAction::PlannedFailover,
            Some(RunPhase::Cancelled),
            vec![
                step(StepKind::PowerOff, StepState::Succeeded),
                step(StepKind::FinalSync, StepState::Running),
            ],
        );
        let s = settle(&st, "dr", true);
        assert_eq!(s.resting.phase, ProtectionPhase::Protected);
        assert_eq!(s.resting.active, Side::Primary);
        assert_eq!(s.shown, ProtectionPhase::Protected);
    }

    #[test]
    fn an_outcome_is_applied_once() {
        let mut st = protected_at_hq();
        st.phase = Some(ProtectionPhase::FailedOver);
        st.active_site = Some("dr".into());
        st.replication_direction = Some(ReplicationDirection::Paused);
        st.applied_run = Some("u1".into());
        st.last_run = last(
            RunAction::Failover,
            Some(RunPhase::Succeeded),
            vec![step(StepKind::PowerOn, StepState::Succeeded)],
        );
        let s = settle(&st, "dr", false);
        assert_eq!(s.resting.phase, ProtectionPhase::FailedOver);
        assert_eq!(s.resting.active, Side::Recovery);
    }

    #[test]
    fn a_moving_run_halts_all_but_its_own_copy_at_the_target_and_the_source_once_stopped() {
        let mut status = protected_at_hq();
        status.last_run = last(RunAction::Failover, None, vec![]);
        let spare = |side| Halt {
            side,
            spare: Some("u1".into()),
        };
        assert_eq!(halts(&settle(&status, "dr", true)), vec![spare(Side::Recovery)]);
        status.last_run = last(
            RunAction::Failover,
            None,
            vec![step(StepKind::PowerOff, StepState::Succeeded)],
        );
        let plain = |side| Halt { side, spare: None };
        assert_eq!(
            halts(&settle(&status, "dr", true)),
            vec![spare(Side::Recovery), plain(Side::Primary)]
        );
        // Once the run ends, only the side the VM left.
        status.last_run = last(
            RunAction::Failover,
            Some(RunPhase::Succeeded),
            vec![step(StepKind::PowerOn, StepState::Succeeded)],
        );
        assert_eq!(halts(&settle(&status, "dr", true)), vec![plain(Side::Primary)]);
        // A test failover's copies are elsewhere: the copy at the recovery site stays halted.
        status = protected_at_hq();
        status.last_run = last(RunAction::TestFailover, None, vec![]);
        assert_eq!(halts(&settle(&status, "dr", true)), vec![plain(Side::Recovery)]);
    }

    #[test]
    fn a_retry_takes_over_what_an_earlier_run_moved_and_moves_the_rest() {
        let names = Names {
            plan: "exchange",
            primary: "hq",
            recovery: "dr",
        };
        // The failed failover started dc01 at DR, not mbx01.
        let mut moved = protected_at_hq();
        moved.phase = Some(ProtectionPhase::FailedOver);
        moved.active_site = Some("dr".into());
        moved.replication_direction = Some(ReplicationDirection::Paused);
        moved.last_run = last(
            RunAction::Failover,
            Some(RunPhase::Failed),
            vec![step(StepKind::PowerOn, StepState::Succeeded)],
        );
        moved.applied_run = Some("u1".into());
        let mut stayed = protected_at_hq();
        stayed.recovery_points = Some(coldsite_api::protected_vm::RecoveryPointsStatus {
            count: 2,
            ..Default::default()
        });
        stayed.last_run = last(
            RunAction::Failover,
            Some(RunPhase::Failed),
            vec![step(StepKind::PowerOn, StepState::Failed)],
        );
        stayed.applied_run = Some("u1".into());
        let vms = [("dc01", &moved), ("mbx01", &stayed)];
        let retried = Ok(Admitted {
            direction: Direction::Forward,
            done: vec!["dc01".into()],
        });
        assert_eq!(admit(RunAction::Failover, vms, &names, false), retried);
        // Not by another action (its steps differ), nor before the earlier outcome is settled.
        assert!(admit(RunAction::PlannedFailover, vms, &names, false).is_err());
        moved.applied_run = None;
        assert!(
            admit(
                RunAction::Failover,
                [("dc01", &moved), ("mbx01", &stayed)],
                &names,
                false
            )
            .is_err()
        );
        moved.applied_run = Some("u1".into());
        // When every VM has moved there is nothing to retry: the refusals say what fits...
        let refusals = admit(RunAction::Failover, [("dc01", &moved)], &names, false).expect_err("all moved");
        assert!(refusals[0].contains("kubectl coldsite commit exchange"), "{refusals:?}");
        // ...unless the run already holds the VMs still to move.
        assert_eq!(admit(RunAction::Failover, [("dc01", &moved)], &names, true), retried);
    }
}
