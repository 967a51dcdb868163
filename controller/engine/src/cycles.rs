//! Many disaster-recovery cycles in a model of two sites: random operator commands (wrong
//! ones too), a primary that loses power and comes back, runs that fail half-way and are
//! retried. The decisions are the controller's own functions: admission
//! ([`standing::admit`]), where a finished run leaves each VM ([`standing::settle`]),
//! and which copies to halt ([`standing::halts`]); the sites, the runs' steps and
//! replication are modelled, with one run at a time, atomic claims and no stale reads (the
//! races of claims and caches are the end-to-end tests' part). Invariants are checked after
//! every event, and a violation names the seed and the history that led to it.

use coldsite_api::RunAction;
use coldsite_api::protected_vm::{
    ProtectedVMStatus, ProtectionPhase, RecoveryPointsStatus, ReplicationDirection, VmRunStatus,
};
use coldsite_api::recovery_run::{RunPhase, StepKind, StepState, StepStatus};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lifecycle::{Names, Side};
use crate::model::Direction;
use crate::standing::{self, Settled};

const PRIMARY: &str = "hq";
const RECOVERY: &str = "dr";
const NAMES: Names<'static> = Names {
    plan: "plan",
    primary: PRIMARY,
    recovery: RECOVERY,
};
/// Ticks a copy takes to boot when its site comes back.
const BOOT: u64 = 2;

fn idx(side: Side) -> usize {
    match side {
        Side::Primary => 0,
        Side::Recovery => 1,
    }
}

/// A VM's copy at one site: its VirtualMachine and whether its guest runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SiteCopy {
    exists: bool,
    /// `runStrategy: Always`.
    always: bool,
    running: bool,
    boots_at: Option<u64>,
    /// The run that started it.
    started_by: Option<String>,
    /// The newest guest write its disks hold.
    data: u32,
}

#[derive(Clone, Debug)]
struct Vm {
    name: String,
    copies: [SiteCopy; 2],
    /// Replication from this side into the other.
    flow: Option<Side>,
    /// The newest guest write each side's newest recovery point holds; 0 for none.
    points: [u32; 2],
    /// Guest writes so far.
    writes: u32,
    /// What the controller records.
    status: ProtectedVMStatus,
}

/// Where one VM is in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// A repoint halts the copy it replaces.
    Halt,
    Stop,
    Sync,
    Start,
    /// Waits for the started copy's guest to run.
    Boot,
    Act,
    Done,
    Failed,
}

#[derive(Clone, Debug)]
struct Run {
    uid: String,
    action: RunAction,
    direction: Direction,
    source_down: bool,
    stages: Vec<Stage>,
    waited: u32,
}

/// What the simulation did, for a failure's report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub events: Vec<String>,
    pub runs: usize,
    pub refused: usize,
    pub moves: usize,
    /// Runs that took over VMs an earlier run of the same movement had moved.
    pub retries: usize,
    /// VMs a repoint restarted at the recovery site from a point restored anew.
    pub repoints: usize,
    /// Planned runs that started a copy without every write made before the source stopped.
    pub lost: Vec<String>,
}

struct World {
    tick: u64,
    up: [bool; 2],
    vms: Vec<Vm>,
    run: Option<Run>,
    rng: ChaCha8Rng,
    report: Report,
    next_uid: u64,
}

/// Simulates `events` events for a plan of `vms` VMs; `Err` names the violated invariant.
pub fn simulate(seed: u64, vms: usize, events: usize) -> Result<Report, String> {
    let mut w = World::new(seed, vms);
    for _ in 0..events {
        let event = w.event();
        w.report.events.push(format!("t{} {event}", w.tick));
        w.advance();
        if let Err(why) = w.check() {
            let state: Vec<String> = w
                .vms
                .iter()
                .map(|v| format!("{} {:?} flow {:?} points {:?}", v.name, v.copies, v.flow, v.points))
                .collect();
            return Err(format!(
                "seed {seed}: {why}\nhistory:\n  {}\nsites up {:?}, run {:?}\n  {}",
                w.report.events.join("\n  "),
                w.up,
                w.run.as_ref().map(|r| (&r.action, &r.stages)),
                state.join("\n  ")
            ));
        }
    }
    Ok(w.report)
}

impl World {
    fn new(seed: u64, n: usize) -> Self {
        let vms = (0..n)
            .map(|i| Vm {
                name: format!("vm{i}"),
                copies: [
                    SiteCopy {
                        exists: true,
                        always: true,
                        running: true,
                        boots_at: None,
                        started_by: None,
                        data: 1,
                    },
                    SiteCopy::default(),
                ],
                flow: None,
                points: [0, 0],
                writes: 1,
                status: ProtectedVMStatus::default(),
            })
            .collect();
        let mut w = World {
            tick: 0,
            up: [true, true],
            vms,
            run: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            report: Report::default(),
            next_uid: 0,
        };
        for _ in 0..3 {
            w.advance();
        }
        w
    }

    /// One random event: a command, the primary leaving or returning, or time passing.
    fn event(&mut self) -> String {
        match self.rng.random_range(0..10) {
            0 if self.up[0] => {
                self.power_loss();
                "the primary loses power".into()
            }
            1 if !self.up[0] => {
                self.up[0] = true;
                for vm in &mut self.vms {
                    let c = &mut vm.copies[0];
                    if c.exists && c.always {
                        c.boots_at = Some(self.tick + BOOT);
                    }
                }
                "the primary comes back".into()
            }
            2..=5 => {
                let action = RunAction::ALL[self.rng.random_range(0..RunAction::ALL.len())];
                self.command(action)
            }
            _ => "time passes".into(),
        }
    }

    fn power_loss(&mut self) {
        self.up[0] = false;
        for vm in &mut self.vms {
            vm.copies[0].running = false;
            vm.copies[0].boots_at = None;
        }
    }

    /// An operator command, admitted as the controller admits it.
    fn command(&mut self, action: RunAction) -> String {
        if self.run.is_some() {
            return format!("{action:?} waits for the run in progress");
        }
        let fits = standing::admit(
            action,
            self.vms.iter().map(|v| (v.name.as_str(), &v.status)),
            &NAMES,
            false,
        );
        let admitted = match fits {
            Ok(a) => a,
            Err(_) => {
                self.report.refused += 1;
                return format!("{action:?} refused");
            }
        };
        self.next_uid += 1;
        let uid = format!("run{}", self.next_uid);
        let source_down = action == RunAction::Failover && !self.up[0];
        let first = match action {
            RunAction::PlannedFailover | RunAction::Failover | RunAction::Failback => Stage::Stop,
            RunAction::ChangeRecoveryPoint => Stage::Halt,
            _ => Stage::Act,
        };
        let mut stages = Vec::new();
        for vm in &mut self.vms {
            let done = admitted.done.contains(&vm.name);
            // The claim takes over the steps an earlier run completed for a VM it moved.
            let steps = match &vm.status.last_run {
                Some(last) if done => last.steps.clone(),
                _ => Vec::new(),
            };
            vm.status.last_run = Some(VmRunStatus {
                run: uid.clone(),
                run_uid: Some(uid.clone()),
                action: Some(action),
                steps,
                ..VmRunStatus::default()
            });
            stages.push(if done { Stage::Done } else { first });
        }
        let direction = admitted.direction;
        self.run = Some(Run {
            uid,
            action,
            direction,
            source_down,
            stages,
            waited: 0,
        });
        self.report.runs += 1;
        self.report.retries += usize::from(!admitted.done.is_empty());
        format!("{action:?} starts ({direction:?}), taking over {:?}", admitted.done)
    }

    fn settled(&self, vm: &Vm) -> Settled {
        let active = if vm.status.active_site.as_deref() == Some(RECOVERY) {
            Side::Recovery
        } else {
            Side::Primary
        };
        standing::settle(&vm.status, RECOVERY, vm.points[idx(active.other())] > 0)
    }

    /// A tick: boots, the run's next steps, then the controller's reconcile of every VM.
    fn advance(&mut self) {
        self.tick += 1;
        for vm in &mut self.vms {
            for c in &mut vm.copies {
                if c.boots_at.is_some_and(|t| t <= self.tick) {
                    c.boots_at = None;
                    c.running = c.always;
                }
            }
            // The guest writes wherever it runs.
            for c in &mut vm.copies {
                if c.running {
                    vm.writes += 1;
                    c.data = vm.writes;
                }
            }
        }
        self.step_run();
        for i in 0..self.vms.len() {
            self.reconcile(i);
        }
    }
}

/// The run's steps, as the executor would take them.
impl World {
    fn step_run(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        // The run records its end on the pass after its last step, as the controller does.
        if run.stages.iter().all(|s| matches!(s, Stage::Done | Stage::Failed)) {
            self.finish(&run);
            return;
        }
        let source = Side::source_of(run.direction);
        let target = source.other();
        let mut waiting = false;
        for i in 0..self.vms.len() {
            let fail = self.rng.random_bool(0.03);
            let stage = run.stages[i];
            let next = self.stage(&run, i, stage, source, target, fail);
            waiting |= next == stage && stage != Stage::Done && stage != Stage::Failed;
            run.stages[i] = next;
        }
        run.waited += u32::from(waiting);
        if run.waited > 6 {
            // A step's deadline: what still waits fails.
            for s in &mut run.stages {
                if *s != Stage::Done {
                    *s = Stage::Failed;
                }
            }
        }
        self.run = Some(run);
    }

    fn stage(&mut self, run: &Run, i: usize, stage: Stage, source: Side, target: Side, fail: bool) -> Stage {
        let planned = run.action.is_planned();
        let vm = &mut self.vms[i];
        match stage {
            Stage::Stop if !self.up[idx(source)] => {
                if run.source_down {
                    stopped(vm);
                    Stage::Start
                } else {
                    Stage::Stop
                }
            }
            Stage::Stop => {
                let c = &mut vm.copies[idx(source)];
                c.always = false;
                c.running = false;
                c.boots_at = None;
                stopped(vm);
                if planned { Stage::Sync } else { Stage::Start }
            }
            Stage::Halt if !self.up[idx(target)] || fail => Stage::Failed,
            Stage::Halt => {
                let c = &mut vm.copies[idx(target)];
                c.always = false;
                c.running = false;
                c.boots_at = None;
                Stage::Start
            }
            Stage::Sync if !self.up[0] || !self.up[1] => Stage::Sync,
            // A final sync takes a while: long enough for a returning site to boot what it holds.
            Stage::Sync if self.rng.random_bool(0.5) => Stage::Sync,
            Stage::Sync => {
                vm.points[idx(target)] = vm.copies[idx(source)].data;
                if fail { Stage::Failed } else { Stage::Start }
            }
            Stage::Start if !self.up[idx(target)] || fail => Stage::Failed,
            // Nothing is restored over a copy that runs.
            Stage::Start if vm.points[idx(target)] == 0 || vm.copies[idx(target)].running => Stage::Failed,
            Stage::Start => {
                self.start(run, i, source, target);
                Stage::Boot
            }
            Stage::Boot if !self.up[idx(target)] => Stage::Failed,
            Stage::Boot if vm.copies[idx(target)].running => {
                if run.action == RunAction::ChangeRecoveryPoint {
                    self.report.repoints += 1;
                } else {
                    self.report.moves += 1;
                }
                Stage::Done
            }
            Stage::Act => self.act(run, i, fail),
            s => s,
        }
    }

    /// Starts the VM's copy at the target from the newest point there.
    fn start(&mut self, run: &Run, i: usize, source: Side, target: Side) {
        let vm = &mut self.vms[i];
        // What flowed into the target ends here: a planned run's final sync leaves a manual
        // trigger, an unplanned one restores onto disks of their own.
        if vm.flow == Some(source) {
            vm.flow = None;
        }
        let data = vm.points[idx(target)];
        let stopped_at = vm.copies[idx(source)].data;
        if run.action.is_planned() && data != stopped_at {
            self.report.lost.push(format!(
                "{} starts at {target:?} from write {data}, but stopped at {source:?} after write {stopped_at}",
                vm.name
            ));
        }
        vm.copies[idx(target)] = SiteCopy {
            exists: true,
            always: true,
            running: false,
            boots_at: Some(self.tick + BOOT),
            started_by: Some(run.uid.clone()),
            data,
        };
    }

    /// Commit, reprotect and test: one step each.
    fn act(&mut self, run: &Run, i: usize, fail: bool) -> Stage {
        if fail {
            return Stage::Failed;
        }
        if run.action != RunAction::Reprotect {
            return Stage::Done;
        }
        // Reprotect: back to the side the VM left, which must answer and must not run it.
        let old = Side::source_of(run.direction);
        let vm = &mut self.vms[i];
        if !self.up[0] || !self.up[1] || vm.copies[idx(old)].running {
            return Stage::Failed;
        }
        vm.flow = Some(old.other());
        Stage::Done
    }

    /// Records each VM's part, as the run's last pass writes it into `status.lastRun`.
    fn finish(&mut self, run: &Run) {
        let key = match run.action {
            RunAction::Reprotect => StepKind::ReverseReplication,
            RunAction::Commit => StepKind::Commit,
            _ => StepKind::PowerOn,
        };
        let failed = run.stages.contains(&Stage::Failed);
        for (vm, stage) in self.vms.iter_mut().zip(&run.stages) {
            let state = if *stage == Stage::Done {
                StepState::Succeeded
            } else {
                StepState::Failed
            };
            let step = StepStatus {
                id: format!("{}/{key:?}", vm.name),
                kind: Some(key),
                state,
                started_at: Some(crate::time::to_k8s(chrono::DateTime::UNIX_EPOCH)),
                ..StepStatus::default()
            };
            let mut steps = vm.status.last_run.take().map(|l| l.steps).unwrap_or_default();
            steps.push(step);
            vm.status.last_run = Some(VmRunStatus {
                run: run.uid.clone(),
                run_uid: Some(run.uid.clone()),
                action: Some(run.action),
                phase: Some(if failed { RunPhase::Failed } else { RunPhase::Succeeded }),
                steps,
                ..VmRunStatus::default()
            });
        }
    }
}

/// Records a run's stop-source step as the run's pass writes it into `status.lastRun`.
fn stopped(vm: &mut Vm) {
    if let Some(last) = &mut vm.status.last_run {
        last.steps.push(StepStatus {
            id: format!("{}/stop-source", vm.name),
            kind: Some(StepKind::PowerOff),
            state: StepState::Succeeded,
            started_at: Some(crate::time::to_k8s(chrono::DateTime::UNIX_EPOCH)),
            ..StepStatus::default()
        });
    }
}

/// The ProtectedVM reconcile: settle, fence, replicate or pause, record.
impl World {
    fn reconcile(&mut self, i: usize) {
        let settled = self.settled(&self.vms[i]);
        for halt in standing::halts(&settled) {
            let c = &mut self.vms[i].copies[idx(halt.side)];
            if self.up[idx(halt.side)] && (halt.spare.is_none() || c.started_by != halt.spare) {
                c.always = false;
                c.running = false;
                c.boots_at = None;
            }
        }
        let resting = settled.resting;
        let (active, other) = (resting.active, resting.active.other());
        let up = self.up;
        let vm = &mut self.vms[i];
        if settled.claim.is_none() {
            if resting.direction == ReplicationDirection::Paused {
                vm.flow = None;
            } else if up[0] && up[1] && !vm.copies[idx(other)].running {
                vm.flow = Some(active);
                vm.points[idx(other)] = vm.copies[idx(active)].data;
            }
        }
        let mut phase = resting.phase;
        if phase == ProtectionPhase::Enabling && vm.points[idx(other)] > 0 && vm.flow.is_some() {
            phase = ProtectionPhase::Protected;
        }
        let st = &mut vm.status;
        st.phase = Some(if settled.claim.is_some() { settled.shown } else { phase });
        st.resting_phase = settled.resting_phase;
        st.applied_run = settled.applied_run.clone();
        st.active_site = Some(if active == Side::Primary { PRIMARY } else { RECOVERY }.to_owned());
        st.replication_direction = Some(resting.direction);
        st.recovery_points = Some(RecoveryPointsStatus {
            count: i32::from(vm.points[idx(other)] > 0),
            ..RecoveryPointsStatus::default()
        });
    }
}

/// The invariants, after every event.
impl World {
    fn check(&self) -> Result<(), String> {
        for (i, vm) in self.vms.iter().enumerate() {
            let [p, r] = &vm.copies;
            if p.running && r.running {
                return Err(format!("split brain: {} runs at both sites", vm.name));
            }
            if let Some(from) = vm.flow
                && vm.copies[idx(from.other())].running
            {
                return Err(format!(
                    "{} replicates into the disks of its running copy at {:?}",
                    vm.name,
                    from.other()
                ));
            }
            if let Some(run) = &self.run
                && run.stages[i] == Stage::Sync
                && vm.copies[idx(Side::source_of(run.direction).other())].running
            {
                return Err(format!(
                    "{}'s final sync writes into the disks of a running copy",
                    vm.name
                ));
            }
            if let Some(loss) = self.report.lost.first() {
                return Err(format!("a planned run lost writes: {loss}"));
            }
            let held = vm.status.last_run.as_ref().is_some_and(|l| l.phase.is_none());
            if held != self.run.is_some() {
                return Err(format!(
                    "{} is held by {held} runs, but one runs: {}",
                    vm.name,
                    self.run.is_some()
                ));
            }
            self.truthful(vm)?;
        }
        Ok(())
    }

    /// Status is the truth: where the VM runs is where its status says it is active, and
    /// it replicates the way status says.
    fn truthful(&self, vm: &Vm) -> Result<(), String> {
        if vm.status.last_run.as_ref().is_some_and(|l| l.phase.is_none()) {
            return Ok(());
        }
        let active = if vm.status.active_site.as_deref() == Some(RECOVERY) {
            Side::Recovery
        } else {
            Side::Primary
        };
        if vm.copies[idx(active.other())].running {
            return Err(format!(
                "{} runs at {:?}, but its status says {active:?}",
                vm.name,
                active.other()
            ));
        }
        let direction = vm.status.replication_direction.unwrap_or_default();
        let flowing = match vm.flow {
            Some(Side::Primary) => ReplicationDirection::PrimaryToRecovery,
            Some(Side::Recovery) => ReplicationDirection::RecoveryToPrimary,
            None => ReplicationDirection::Paused,
        };
        if direction == ReplicationDirection::Paused && flowing != ReplicationDirection::Paused {
            return Err(format!("{} is paused, yet replicates {flowing:?}", vm.name));
        }
        if flowing != ReplicationDirection::Paused && direction != flowing {
            return Err(format!(
                "{} replicates {flowing:?}, but its status says {direction:?}",
                vm.name
            ));
        }
        Ok(())
    }
}
