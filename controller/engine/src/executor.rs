//! The executor: a state machine over a step graph. From the persisted step records, the
//! observations since the last call and the time, it decides which steps start. It does no
//! I/O, so a controller that crashes resumes from the records exactly where the run stood.
//! Each call costs O(steps that changed), not O(all steps).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::recovery_run::{RunPhase, StepKind, StepState};

use crate::fabric::RecoveryPoint;
use crate::planner::{OnFailure, StepGraph, StepIdx};

/// What is persisted of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepRecord {
    pub state: StepState,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub message: Option<String>,
    /// The recovery point a restore used or a final sync produced.
    pub point: Option<RecoveryPoint>,
}

/// What a person has said about the run.
#[derive(Clone, Debug, Default)]
pub struct RunInputs {
    pub approvals: BTreeSet<String>,
    pub cancel: bool,
}

/// How an attempt of a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `note` explains a success that needs one, such as an unreachable site taken as down.
    Done {
        point: Option<RecoveryPoint>,
        note: Option<String>,
    },
    Failed {
        message: String,
        retryable: bool,
    },
    /// Still going, held up by something the step waits out (a source site that does not
    /// answer but does not count as down yet): the message says so.
    Waiting {
        message: String,
    },
}

/// The result of one attempt, as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub step: StepIdx,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Drive this attempt of the step until it ends, then report an [`Observation`].
    /// Re-issued after a restart for steps that were running: fabric calls are idempotent.
    Start { step: StepIdx, attempt: u32 },
    /// Stop driving the step: it timed out or the run was cancelled.
    Abandon { step: StepIdx },
}

/// Why a run stops starting steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    Failed(StepIdx),
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry,
    Deadline,
}

/// Retries wait 5 s, 10 s, 20 s, … up to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    Duration::from_secs(5u64.saturating_mul(1 << exp)).min(Duration::from_secs(300))
}

pub struct Executor<'g> {
    graph: &'g StepGraph,
    records: Vec<StepRecord>,
    /// Dependencies of each step not yet done.
    unmet: Vec<u32>,
    /// Steps whose dependencies are done and that may start now.
    ready: Vec<StepIdx>,
    timers: BinaryHeap<Reverse<(DateTime<Utc>, StepIdx, Timer)>>,
    waiting: BTreeSet<StepIdx>,
    running: BTreeSet<StepIdx>,
    restarts: Vec<StepIdx>,
    halt: Option<Halt>,
    terminal: usize,
    dirty: Vec<StepIdx>,
    is_dirty: Vec<bool>,
    finalized: bool,
}

impl<'g> Executor<'g> {
    /// A fresh run.
    pub fn new(graph: &'g StepGraph) -> Self {
        Self::resume(graph, vec![StepRecord::default(); graph.len()], false)
    }

    /// A run from its persisted records. Steps that were running start again with the same
    /// attempt number; the calls they make find what the first try did.
    pub fn resume(graph: &'g StepGraph, records: Vec<StepRecord>, halted_by_cancel: bool) -> Self {
        let n = graph.len();
        let mut ex = Executor {
            graph,
            records,
            unmet: vec![0; n],
            ready: Vec::new(),
            timers: BinaryHeap::new(),
            waiting: BTreeSet::new(),
            running: BTreeSet::new(),
            restarts: Vec::new(),
            halt: halted_by_cancel.then_some(Halt::Cancelled),
            terminal: 0,
            dirty: Vec::new(),
            is_dirty: vec![false; n],
            finalized: false,
        };
        for i in 0..n {
            let def = &graph.steps[i];
            ex.unmet[i] = def
                .deps
                .iter()
                .filter(|&&d| !ex.records[d].state.lets_successors_run())
                .count() as u32;
            let r = &ex.records[i];
            match r.state {
                s if s.is_terminal() => {
                    ex.terminal += 1;
                    if s == StepState::Failed && def.on_failure == OnFailure::FailRun && ex.halt.is_none() {
                        ex.halt = Some(Halt::Failed(i));
                    }
                }
                StepState::Running => {
                    ex.running.insert(i);
                    ex.restarts.push(i);
                    ex.arm_deadline(i);
                }
                StepState::WaitingForApproval => {
                    ex.waiting.insert(i);
                    ex.arm_deadline(i);
                }
                _ => {
                    if ex.unmet[i] == 0 {
                        match r.next_attempt_at {
                            Some(t) => ex.timers.push(Reverse((t, i, Timer::Retry))),
                            None => ex.ready.push(i),
                        }
                        if r.started_at.is_some() {
                            ex.arm_deadline(i);
                        }
                    }
                }
            }
        }
        // Start in graph order, which is the plan's order.
        ex.ready.reverse();
        ex
    }

    pub fn graph(&self) -> &StepGraph {
        self.graph
    }

    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    pub fn record(&self, step: StepIdx) -> &StepRecord {
        &self.records[step]
    }

    pub fn halt(&self) -> Option<Halt> {
        self.halt
    }

    /// Steps changed since the last call, in the order they changed.
    pub fn take_dirty(&mut self) -> Vec<StepIdx> {
        for &i in &self.dirty {
            self.is_dirty[i] = false;
        }
        std::mem::take(&mut self.dirty)
    }

    /// Manual actions now waiting for approval, by name.
    pub fn waiting_for(&self) -> Vec<&str> {
        self.waiting
            .iter()
            .filter_map(|&i| self.graph.steps[i].approval.as_deref())
            .collect()
    }

    /// The earliest time something is due: a retry or a deadline.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    pub fn is_finished(&self) -> bool {
        self.finalized
    }

    pub fn phase(&self) -> RunPhase {
        if self.finalized {
            return match self.halt {
                Some(Halt::Cancelled) => RunPhase::Cancelled,
                Some(Halt::Failed(_)) => RunPhase::Failed,
                None => RunPhase::Succeeded,
            };
        }
        if self.terminal == 0 && self.running.is_empty() && self.waiting.is_empty() {
            RunPhase::Pending
        } else if !self.waiting.is_empty() && self.running.is_empty() {
            RunPhase::WaitingForApproval
        } else {
            RunPhase::Running
        }
    }

    /// Steps done of all.
    pub fn progress(&self) -> (usize, usize) {
        (self.terminal, self.records.len())
    }

    /// One decision: apply what happened, then start what may start.
    pub fn advance(
        &mut self,
        now: DateTime<Utc>,
        inputs: &RunInputs,
        observations: impl IntoIterator<Item = Observation>,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        for step in std::mem::take(&mut self.restarts) {
            if self.records[step].state == StepState::Running {
                commands.push(Command::Start {
                    step,
                    attempt: self.records[step].attempts,
                });
            }
        }
        for o in observations {
            self.observe(o, now);
        }
        if inputs.cancel && self.halt.is_none() {
            self.halt = Some(Halt::Cancelled);
        }
        if matches!(self.halt, Some(Halt::Cancelled)) {
            self.cancel_waits(now, &mut commands);
        }
        let approved: Vec<StepIdx> = self
            .waiting
            .iter()
            .copied()
            .filter(|&i| {
                self.graph.steps[i]
                    .approval
                    .as_ref()
                    .is_some_and(|n| inputs.approvals.contains(n))
            })
            .collect();
        for i in approved {
            self.waiting.remove(&i);
            self.records[i].message = Some("approved".into());
            self.succeed(i, None, now);
        }
        self.fire_timers(now, &mut commands);
        self.start_ready(now, inputs, &mut commands);
        self.finalize(now);
        commands
    }

    fn observe(&mut self, o: Observation, now: DateTime<Utc>) {
        let i = o.step;
        let r = &self.records[i];
        // A late answer for an attempt that timed out or was superseded changes nothing.
        if r.state != StepState::Running || r.attempts != o.attempt {
            return;
        }
        if let Outcome::Waiting { message } = o.outcome {
            if r.message.as_deref() != Some(message.as_str()) {
                self.records[i].message = Some(message);
                self.mark(i);
            }
            return;
        }
        self.running.remove(&i);
        match o.outcome {
            Outcome::Done { point, note } => {
                if note.is_some() {
                    self.records[i].message = note;
                }
                self.succeed(i, point, now)
            }
            Outcome::Waiting { .. } => {}
            Outcome::Failed { message, retryable } => {
                let def = &self.graph.steps[i];
                let deadline = self.deadline(i);
                let retry_at = now + chrono_duration(backoff(o.attempt));
                if retryable
                    && o.attempt < def.max_attempts
                    && self.halt.is_none()
                    && deadline.is_none_or(|d| retry_at < d)
                {
                    let r = &mut self.records[i];
                    r.state = StepState::Pending;
                    r.next_attempt_at = Some(retry_at);
                    r.message = Some(format!("attempt {} failed: {message}; retrying", o.attempt));
                    self.timers.push(Reverse((retry_at, i, Timer::Retry)));
                    self.mark(i);
                } else {
                    self.fail(i, message, now);
                }
            }
        }
    }

    fn deadline(&self, i: StepIdx) -> Option<DateTime<Utc>> {
        let started = self.records[i].started_at?;
        Some(started + chrono_duration(self.graph.steps[i].timeout?))
    }

    fn arm_deadline(&mut self, i: StepIdx) {
        if let Some(d) = self.deadline(i) {
            self.timers.push(Reverse((d, i, Timer::Deadline)));
        }
    }

    fn fire_timers(&mut self, now: DateTime<Utc>, commands: &mut Vec<Command>) {
        while let Some(Reverse((t, i, kind))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let state = self.records[i].state;
            match kind {
                Timer::Retry => {
                    if state == StepState::Pending && self.records[i].next_attempt_at == Some(t) {
                        self.ready.push(i);
                    }
                }
                Timer::Deadline => {
                    if state.is_terminal() || self.deadline(i) != Some(t) {
                        continue;
                    }
                    let timeout = self.graph.steps[i].timeout.unwrap_or_default();
                    let message = match state {
                        StepState::WaitingForApproval => {
                            self.waiting.remove(&i);
                            format!("no approval within {}", humanize(timeout))
                        }
                        _ => {
                            if self.running.remove(&i) {
                                commands.push(Command::Abandon { step: i });
                            }
                            format!("timed out after {}", humanize(timeout))
                        }
                    };
                    self.fail(i, message, now);
                }
            }
        }
    }

    fn start_ready(&mut self, now: DateTime<Utc>, inputs: &RunInputs, commands: &mut Vec<Command>) {
        while let Some(i) = self.ready.pop() {
            if self.halt.is_some() || self.records[i].state != StepState::Pending {
                continue;
            }
            let def = &self.graph.steps[i];
            if def.kind.is_barrier() {
                self.records[i].started_at = Some(now);
                self.succeed(i, None, now);
                continue;
            }
            if def.kind == StepKind::Manual {
                let approved = def.approval.as_ref().is_some_and(|n| inputs.approvals.contains(n));
                self.records[i].started_at = Some(now);
                if approved {
                    self.records[i].message = Some("approved".into());
                    self.succeed(i, None, now);
                } else {
                    self.records[i].state = StepState::WaitingForApproval;
                    self.waiting.insert(i);
                    self.arm_deadline(i);
                    self.mark(i);
                }
                continue;
            }
            let r = &mut self.records[i];
            let first = r.started_at.is_none();
            r.state = StepState::Running;
            r.attempts += 1;
            r.next_attempt_at = None;
            r.started_at.get_or_insert(now);
            let attempt = r.attempts;
            if first {
                self.arm_deadline(i);
            }
            self.running.insert(i);
            self.mark(i);
            commands.push(Command::Start { step: i, attempt });
        }
    }

    fn cancel_waits(&mut self, now: DateTime<Utc>, commands: &mut Vec<Command>) {
        // Waits have no effect to finish; effectful steps drain so their records stay true.
        for i in std::mem::take(&mut self.waiting) {
            self.skip(i, "cancelled while waiting for approval", now);
        }
        // So are final syncs: one may never finish (a mover that cannot reach the other
        // site). The VM stays stopped at its source, and replication goes back to its schedule
        // once the run has ended.
        let abandoned: Vec<(StepIdx, &str)> = self
            .running
            .iter()
            .copied()
            .filter_map(|i| match self.graph.steps[i].kind {
                StepKind::VmReady => Some((i, "cancelled while waiting for readiness")),
                StepKind::FinalSync => Some((
                    i,
                    "cancelled during the final sync: the VM stays stopped at its source, and replication \
                     goes back to its schedule",
                )),
                _ => None,
            })
            .collect();
        for (i, why) in abandoned {
            self.running.remove(&i);
            commands.push(Command::Abandon { step: i });
            self.skip(i, why, now);
        }
    }

    fn skip(&mut self, i: StepIdx, message: &str, now: DateTime<Utc>) {
        let r = &mut self.records[i];
        r.state = StepState::Skipped;
        r.message = Some(message.into());
        r.finished_at = Some(now);
        self.terminal += 1;
        self.mark(i);
    }

    fn succeed(&mut self, i: StepIdx, point: Option<RecoveryPoint>, now: DateTime<Utc>) {
        let r = &mut self.records[i];
        r.state = StepState::Succeeded;
        r.finished_at = Some(now);
        r.next_attempt_at = None;
        if point.is_some() {
            r.point = point;
        }
        self.terminal += 1;
        self.mark(i);
        self.release(i);
    }

    fn fail(&mut self, i: StepIdx, message: String, now: DateTime<Utc>) {
        let def = &self.graph.steps[i];
        let r = &mut self.records[i];
        r.finished_at = Some(now);
        r.next_attempt_at = None;
        r.message = Some(message);
        self.terminal += 1;
        self.mark(i);
        match def.on_failure {
            OnFailure::Continue => {
                self.records[i].state = StepState::FailedContinued;
                self.release(i);
            }
            OnFailure::FailRun => {
                self.records[i].state = StepState::Failed;
                if self.halt.is_none() {
                    self.halt = Some(Halt::Failed(i));
                }
            }
        }
    }

    fn release(&mut self, i: StepIdx) {
        for &d in &self.graph.dependents[i] {
            self.unmet[d] -= 1;
            if self.unmet[d] == 0 {
                self.ready.push(d);
            }
        }
    }

    fn mark(&mut self, i: StepIdx) {
        if !self.is_dirty[i] {
            self.is_dirty[i] = true;
            self.dirty.push(i);
        }
    }

    /// Once halted and drained, steps that never ran are recorded as skipped, once.
    fn finalize(&mut self, now: DateTime<Utc>) {
        if self.finalized {
            return;
        }
        let drained = self.running.is_empty() && self.waiting.is_empty();
        if self.halt.is_some() && drained {
            let why = match self.halt {
                Some(Halt::Failed(s)) => format!("not run: step {} failed", self.graph.steps[s].id),
                _ => "not run: the run was cancelled".to_owned(),
            };
            for i in 0..self.records.len() {
                if !self.records[i].state.is_terminal() {
                    self.skip(i, &why, now);
                }
            }
            self.finalized = true;
        } else if self.terminal == self.records.len() {
            self.finalized = true;
        }
    }
}

pub fn chrono_duration(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

/// `90s` → `1m30s`, for messages.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}
