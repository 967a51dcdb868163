//! A protected VM's place in the disaster-recovery cycle: which run actions fit where it
//! stands, which way each moves it, and where a run leaves it, from what the run's steps
//! did to it. Pure; the operator, the plugin and the simulation all decide with it.
//!
//! ```text
//!            planned | failover            commit            reprotect
//! Protected@primary ──────────▶ FailedOver@recovery ──▶ Committed ──▶ Protected@recovery
//!      ▲                        (replication paused)                  (replicating home)
//!      │ reprotect                                                           │ failback
//!      └────────── Committed ◀── FailedOver@primary ◀────────────────────────┘
//! ```
//!
//! A test failover leaves the VM where it is. A run that fails or is cancelled half-way
//! leaves each VM where its own steps left it: a VM started at the target has moved; one that
//! was not started there stays where it was (stopped, if a planned action stopped it), and
//! the same action fits again: a retry adopts what the failed run left at the target.

use coldsite_api::RunAction;
use coldsite_api::protected_vm::{ProtectionPhase, ReplicationDirection};

use crate::model::Direction;

/// One of a plan's two sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Primary,
    Recovery,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Recovery,
            Side::Recovery => Side::Primary,
        }
    }

    /// The side a run in `direction` starts from.
    pub fn source_of(direction: Direction) -> Side {
        match direction {
            Direction::Forward => Side::Primary,
            Direction::Reverse => Side::Recovery,
        }
    }
}

/// Where a VM stands between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub phase: ProtectionPhase,
    /// Where the VM runs (or last ran, if a run stopped it half-way).
    pub active: Side,
    pub direction: ReplicationDirection,
    /// The site it replicates to holds a recovery point of it.
    pub has_points: bool,
}

impl Standing {
    /// A VM whose protection is being set up, at its primary.
    pub fn new() -> Self {
        Self {
            phase: ProtectionPhase::Enabling,
            active: Side::Primary,
            direction: ReplicationDirection::PrimaryToRecovery,
            has_points: false,
        }
    }

    /// Replicating from where it runs to the other site.
    pub fn replicating_from(active: Side) -> ReplicationDirection {
        match active {
            Side::Primary => ReplicationDirection::PrimaryToRecovery,
            Side::Recovery => ReplicationDirection::RecoveryToPrimary,
        }
    }
}

impl Standing {
    /// Where a ProtectedVM's status says it stands; `recovery_site` tells the sides apart.
    pub fn of(status: &coldsite_api::protected_vm::ProtectedVMStatus, recovery_site: &str) -> Self {
        Self {
            phase: status.phase.unwrap_or_default(),
            active: if status.active_site.as_deref() == Some(recovery_site) {
                Side::Recovery
            } else {
                Side::Primary
            },
            direction: status.replication_direction.unwrap_or_default(),
            has_points: status.recovery_points.as_ref().is_some_and(|p| p.count > 0),
        }
    }
}

impl Default for Standing {
    fn default() -> Self {
        Self::new()
    }
}

/// The sites and plan names refusals are written with.
#[derive(Clone, Copy, Debug)]
pub struct Names<'a> {
    pub plan: &'a str,
    pub primary: &'a str,
    pub recovery: &'a str,
}

impl Names<'_> {
    fn site(&self, side: Side) -> &str {
        match side {
            Side::Primary => self.primary,
            Side::Recovery => self.recovery,
        }
    }
}

/// The plugin's verb for an action.
pub fn verb(action: RunAction) -> &'static str {
    match action {
        RunAction::TestFailover => "test",
        RunAction::PlannedFailover => "planned",
        RunAction::Failover => "failover",
        RunAction::Commit => "commit",
        RunAction::Reprotect => "reprotect",
        RunAction::Failback => "failback",
        RunAction::ChangeRecoveryPoint => "repoint",
    }
}

/// The actions that fit a standing, in the order an operator would take them.
pub fn fitting(s: &Standing) -> Vec<RunAction> {
    use ProtectionPhase as P;
    use RunAction as A;
    match (s.phase, s.active) {
        (P::Protected, Side::Primary) if s.has_points => vec![A::TestFailover, A::PlannedFailover, A::Failover],
        (P::Protected, Side::Recovery) if s.has_points => vec![A::TestFailover, A::Failback],
        // Only a forward failover restored its disks from a point that another can replace.
        (P::FailedOver, Side::Recovery) => vec![A::ChangeRecoveryPoint, A::Commit, A::Reprotect],
        (P::FailedOver, Side::Primary) => vec![A::Commit, A::Reprotect],
        (P::Committed, _) => vec![A::Reprotect],
        _ => Vec::new(),
    }
}

/// How a standing reads in a refusal: `FailedOver at dr (replication paused)`.
fn describe(s: &Standing, names: &Names<'_>) -> String {
    let at = names.site(s.active);
    let how = match (s.phase, s.direction) {
        (ProtectionPhase::Enabling, _) | (ProtectionPhase::Protected, _) if !s.has_points => {
            "with no recovery point yet".to_owned()
        }
        (ProtectionPhase::FailingOver | ProtectionPhase::FailingBack | ProtectionPhase::Reprotecting, _) => {
            "while a run moves it".to_owned()
        }
        (_, ReplicationDirection::Paused) => "with replication paused".to_owned(),
        (_, _) => format!("replicating to {}", names.site(s.active.other())),
    };
    format!("{:?} at {at} ({how})", s.phase)
}

/// The direction a run of `action` takes for a VM standing like this, or why it does not fit:
/// the VM's state and the command that fits.
pub fn admit(vm: &str, s: &Standing, action: RunAction, names: &Names<'_>) -> Result<Direction, String> {
    if fitting(s).contains(&action) {
        return Ok(direction_of(action, s.active));
    }
    let what = match action {
        RunAction::TestFailover => "a test failover needs a VM that replicates, with a recovery point".to_owned(),
        RunAction::PlannedFailover | RunAction::Failover => format!(
            "a {} moves VMs protected at {} to {}",
            verb(action),
            names.primary,
            names.recovery
        ),
        RunAction::Commit => "commit follows a failover".to_owned(),
        RunAction::ChangeRecoveryPoint => format!(
            "a repoint changes the recovery point of VMs failed over to {}, before commit",
            names.recovery
        ),
        RunAction::Reprotect => "reprotect follows a failover".to_owned(),
        RunAction::Failback => format!(
            "a failback brings VMs that run at {} and replicate home back to {}",
            names.recovery, names.primary
        ),
    };
    let next: Vec<String> = fitting(s)
        .iter()
        .map(|a| format!("kubectl coldsite {} {}", verb(*a), names.plan))
        .collect();
    let hint = match s.phase {
        ProtectionPhase::Enabling | ProtectionPhase::Protected if next.is_empty() => {
            "wait until it has a recovery point (kubectl coldsite status)".to_owned()
        }
        ProtectionPhase::Error => "see its Ready condition (kubectl coldsite status)".to_owned(),
        _ if next.is_empty() => "nothing fits now".to_owned(),
        _ => format!("what fits now: {}", next.join(", or ")),
    };
    Err(format!("VM {vm} is {}: {what}; {hint}", describe(s, names)))
}

/// The direction a run of `action` takes for a whole plan: every VM must fit it, and all
/// must go the same way. `Err` lists every VM that does not fit.
pub fn admit_plan<'a>(
    action: RunAction,
    vms: impl IntoIterator<Item = (&'a str, &'a Standing)>,
    names: &Names<'_>,
) -> Result<Direction, Vec<String>> {
    let mut refusals = Vec::new();
    let mut ways: Vec<(&str, Direction)> = Vec::new();
    for (vm, s) in vms {
        match admit(vm, s, action, names) {
            Ok(d) => ways.push((vm, d)),
            Err(why) => refusals.push(why),
        }
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let Some(&(_, first)) = ways.first() else {
        return Err(vec![format!("RecoveryPlan {} has no VMs", names.plan)]);
    };
    let apart: Vec<&str> = ways.iter().filter(|(_, d)| *d != first).map(|(vm, _)| *vm).collect();
    if !apart.is_empty() {
        return Err(vec![format!(
            "the VMs of plan {} are not all on the same side for a {}: {} go the other way than {}; \
             bring them to one side first",
            names.plan,
            verb(action),
            crate::listing::some_of(&apart),
            ways[0].0
        )]);
    }
    Ok(first)
}

/// Which way an action goes for a VM active at `active`: failover-type actions leave it,
/// commit and reprotect stay with it.
pub fn direction_of(action: RunAction, active: Side) -> Direction {
    let away = |side: Side| match side {
        Side::Primary => Direction::Forward,
        Side::Recovery => Direction::Reverse,
    };
    match action {
        RunAction::Commit | RunAction::Reprotect | RunAction::ChangeRecoveryPoint => away(active.other()),
        _ => away(active),
    }
}

/// What a run's steps did to one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmOutcome {
    /// The step that moves it succeeded: power-on at the target (failovers), reverse
    /// replication (reprotect), commit.
    pub completed: bool,
}

/// The phase a VM shows while a run of `action` holds it.
pub fn during(action: RunAction) -> Option<ProtectionPhase> {
    match action {
        RunAction::PlannedFailover | RunAction::Failover | RunAction::ChangeRecoveryPoint => {
            Some(ProtectionPhase::FailingOver)
        }
        RunAction::Failback => Some(ProtectionPhase::FailingBack),
        RunAction::Reprotect => Some(ProtectionPhase::Reprotecting),
        RunAction::TestFailover | RunAction::Commit => None,
    }
}

/// Where a finished run of `action` in `direction` leaves a VM.
pub fn after_run(s: Standing, action: RunAction, direction: Direction, outcome: VmOutcome) -> Standing {
    if action == RunAction::TestFailover || !outcome.completed {
        return s;
    }
    let target = Side::source_of(direction).other();
    match action {
        RunAction::PlannedFailover | RunAction::Failover | RunAction::Failback | RunAction::ChangeRecoveryPoint => {
            Standing {
                phase: ProtectionPhase::FailedOver,
                active: target,
                direction: ReplicationDirection::Paused,
                has_points: false,
            }
        }
        RunAction::Commit => Standing {
            phase: ProtectionPhase::Committed,
            ..s
        },
        RunAction::Reprotect => Standing {
            phase: ProtectionPhase::Protected,
            direction: Standing::replicating_from(s.active),
            has_points: false,
            ..s
        },
        RunAction::TestFailover => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: Names<'static> = Names {
        plan: "exchange",
        primary: "hq",
        recovery: "dr",
    };

    fn protected(active: Side) -> Standing {
        Standing {
            phase: ProtectionPhase::Protected,
            active,
            direction: Standing::replicating_from(active),
            has_points: true,
        }
    }

    fn run(s: Standing, action: RunAction) -> Standing {
        let direction = admit("vm", &s, action, &NAMES).unwrap_or_else(|e| panic!("{action:?}: {e}"));
        let mut after = after_run(s, action, direction, VmOutcome { completed: true });
        // Replication delivers a point before the next action.
        after.has_points = after.phase == ProtectionPhase::Protected;
        after
    }

    #[test]
    fn a_full_cycle_comes_home() {
        let mut s = protected(Side::Primary);
        for action in [
            RunAction::PlannedFailover,
            RunAction::Commit,
            RunAction::Reprotect,
            RunAction::Failback,
            RunAction::Reprotect,
        ] {
            s = run(s, action);
        }
        assert_eq!(s, protected(Side::Primary));
        assert_eq!(admit("vm", &s, RunAction::Failover, &NAMES), Ok(Direction::Forward));
    }

    #[test]
    fn a_test_goes_the_way_replication_goes() {
        assert_eq!(
            admit("vm", &protected(Side::Primary), RunAction::TestFailover, &NAMES),
            Ok(Direction::Forward)
        );
        assert_eq!(
            admit("vm", &protected(Side::Recovery), RunAction::TestFailover, &NAMES),
            Ok(Direction::Reverse)
        );
    }

    #[test]
    fn the_issues_sequence_is_refused_where_it_went_wrong() {
        // planned, commit, reprotect; then a second reprotect and a planned failover must be
        // refused, each naming the state and what fits.
        let mut s = protected(Side::Primary);
        for action in [RunAction::PlannedFailover, RunAction::Commit, RunAction::Reprotect] {
            s = run(s, action);
        }
        let again = admit("dc01", &s, RunAction::Reprotect, &NAMES).unwrap_err();
        assert!(
            again.contains("VM dc01 is Protected at dr (replicating to hq)"),
            "{again}"
        );
        assert!(again.contains("kubectl coldsite failback exchange"), "{again}");
        let planned = admit("dc01", &s, RunAction::PlannedFailover, &NAMES).unwrap_err();
        assert!(planned.contains("moves VMs protected at hq to dr"), "{planned}");
        assert!(planned.contains("kubectl coldsite failback exchange"), "{planned}");
    }

    #[test]
    fn a_failover_that_did_not_start_the_copy_leaves_the_vm_and_can_be_retried() {
        let stopped_not_started = VmOutcome { completed: false };
        let s = after_run(
            protected(Side::Primary),
            RunAction::PlannedFailover,
            Direction::Forward,
            stopped_not_started,
        );
        assert_eq!(s, protected(Side::Primary));
        assert_eq!(
            admit("vm", &s, RunAction::PlannedFailover, &NAMES),
            Ok(Direction::Forward)
        );
        assert_eq!(admit("vm", &s, RunAction::Failover, &NAMES), Ok(Direction::Forward));
    }

    #[test]
    fn a_failover_is_repointed_only_before_commit_and_stays_where_it_went() {
        let failed_over = run(protected(Side::Primary), RunAction::Failover);
        assert_eq!(
            admit("vm", &failed_over, RunAction::ChangeRecoveryPoint, &NAMES),
            Ok(Direction::Forward)
        );
        let repointed = run(failed_over, RunAction::ChangeRecoveryPoint);
        assert_eq!(repointed, failed_over);
        let halted_half_way = after_run(
            failed_over,
            RunAction::ChangeRecoveryPoint,
            Direction::Forward,
            VmOutcome { completed: false },
        );
        assert_eq!(
            halted_half_way, failed_over,
            "a repoint that did not start the VM may be retried"
        );

        let committed = run(failed_over, RunAction::Commit);
        let why = admit("mbx", &committed, RunAction::ChangeRecoveryPoint, &NAMES).unwrap_err();
        assert!(
            why.contains("VM mbx is Committed at dr") && why.contains("before commit"),
            "{why}"
        );
        assert!(why.contains("kubectl coldsite reprotect exchange"), "{why}");
        // After a failback the disks at home are the originals, not restored from a point.
        let home = run(run(committed, RunAction::Reprotect), RunAction::Failback);
        assert!(admit("mbx", &home, RunAction::ChangeRecoveryPoint, &NAMES).is_err());
    }

    #[test]
    fn a_plan_moves_as_one() {
        let home = protected(Side::Primary);
        let away = run(protected(Side::Primary), RunAction::PlannedFailover);
        let both = [("dc01", &home), ("mbx", &home)];
        assert_eq!(admit_plan(RunAction::Failover, both, &NAMES), Ok(Direction::Forward));
        let split = [("dc01", &home), ("mbx", &away)];
        let why = admit_plan(RunAction::PlannedFailover, split, &NAMES).unwrap_err();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("VM mbx is FailedOver at dr"), "{why:?}");
        let empty: [(&str, &Standing); 0] = [];
        assert!(admit_plan(RunAction::Commit, empty, &NAMES).is_err());
    }

    #[test]
    fn a_vm_without_a_point_waits_for_one() {
        let why = admit("vm", &Standing::new(), RunAction::Failover, &NAMES).unwrap_err();
        assert!(
            why.contains("no recovery point yet") && why.contains("wait until"),
            "{why}"
        );
    }

    #[test]
    fn every_refusal_names_the_vm_its_state_and_a_way_on() {
        use ProtectionPhase as P;
        let all = RunAction::ALL;
        for phase in [
            P::Enabling,
            P::Protected,
            P::FailedOver,
            P::Committed,
            P::FailingOver,
            P::Error,
        ] {
            for active in [Side::Primary, Side::Recovery] {
                let s = Standing {
                    phase,
                    active,
                    direction: ReplicationDirection::Paused,
                    has_points: true,
                };
                for action in all {
                    if let Err(why) = admit("vm7", &s, action, &NAMES) {
                        assert!(why.starts_with(&format!("VM vm7 is {phase:?} at ")), "{why}");
                        assert!(
                            why.contains("kubectl coldsite") || why.contains("nothing fits"),
                            "{why}"
                        );
                    }
                }
            }
        }
    }
}
