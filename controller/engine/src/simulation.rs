//! A whole run on the simulated platform and a virtual clock: the real executor and driver,
//! a simulated person who approves manual actions, simulated controller crashes with resume
//! from what was persisted, and the checks of DESIGN.md §4 against the platform's books.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::recovery_run::{RecoveryPointSelector, RunPhase, StepKind, StepState};

use crate::driver::{CrashHook, Driver, DriverError, Limits, RunContext, RunStore};
use crate::executor::{Executor, RunInputs, StepRecord, chrono_duration};
use crate::planner::{StepGraph, StepIdx};
use crate::sim::{SimEvent, SimFabric};

/// The records as last saved: what a restarted controller finds.
#[derive(Clone, Debug)]
pub struct MemStore {
    pub records: Vec<StepRecord>,
    pub saves: u64,
}

impl MemStore {
    pub fn new(steps: usize) -> Self {
        Self {
            records: vec![StepRecord::default(); steps],
            saves: 0,
        }
    }
}

impl RunStore for &mut MemStore {
    async fn save(&mut self, _graph: &StepGraph, step: StepIdx, record: &StepRecord) -> Result<(), DriverError> {
        self.records[step] = record.clone();
        self.saves += 1;
        Ok(())
    }
}

/// Crashes the controller at chosen checkpoints (fabric calls and saves, counted across
/// restarts).
pub struct CrashPlan {
    at: BTreeSet<u64>,
    count: std::cell::Cell<u64>,
}

impl CrashPlan {
    pub fn new(at: impl IntoIterator<Item = u64>) -> Self {
        Self {
            at: at.into_iter().collect(),
            count: std::cell::Cell::new(0),
        }
    }
}

impl CrashHook for &CrashPlan {
    fn crash_now(&self) -> bool {
        let n = self.count.get() + 1;
        self.count.set(n);
        self.at.contains(&n)
    }
}

/// How the simulated run is driven.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The simulated person approves each manual action this long after it starts waiting.
    /// None: nobody approves.
    pub approve_after: Option<Duration>,
    /// Cancel the run this long after it starts.
    pub cancel_after: Option<Duration>,
    /// Crash the controller at these checkpoints.
    pub crash_at: Vec<u64>,
    /// How long a crashed controller takes to come back.
    pub restart_delay: Duration,
    pub limits: Limits,
    /// Check the invariants after every pass, not only at the end.
    pub check_every_pass: bool,
    /// Give up after this much virtual time.
    pub horizon: Duration,
    /// A new driver for every pass, resumed from the saved records and the last driver's
    /// poll schedule, as the operator does at each reconcile; otherwise one driver until a
    /// crash.
    pub driver_per_pass: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            approve_after: Some(Duration::from_secs(300)),
            cancel_after: None,
            crash_at: Vec::new(),
            restart_delay: Duration::from_secs(5),
            limits: Limits::default(),
            check_every_pass: false,
            horizon: Duration::from_secs(7 * 24 * 3600),
            driver_per_pass: false,
        }
    }
}

/// How a simulated run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub phase: RunPhase,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub records: Vec<StepRecord>,
    /// When each manual action was approved.
    pub approvals: BTreeMap<String, DateTime<Utc>>,
    pub crashes: u32,
    pub passes: u64,
    pub fabric_calls: u64,
}

impl RunReport {
    pub fn rto(&self) -> Duration {
        (self.finished - self.started).to_std().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invariant violated at {at}: {violation}")]
    Invariant { at: DateTime<Utc>, violation: String },
    #[error("the run is stuck at {at}: nothing is due and it has not finished")]
    Stuck { at: DateTime<Utc> },
    #[error("the run did not finish within {0:?} of virtual time")]
    Horizon(Duration),
    #[error("{0}")]
    Driver(#[from] DriverError),
}

/// Runs `graph` to the end on `fabric`.
pub fn run(
    ctx: &RunContext,
    graph: &StepGraph,
    fabric: &SimFabric,
    options: &RunOptions,
) -> Result<RunReport, SimError> {
    futures::executor::block_on(run_async(ctx, graph, fabric, options))
}

async fn run_async(
    ctx: &RunContext,
    graph: &StepGraph,
    fabric: &SimFabric,
    options: &RunOptions,
) -> Result<RunReport, SimError> {
    let started = fabric.clock.now();
    let deadline = started + chrono_duration(options.horizon);
    let cancel_at = options.cancel_after.map(|d| started + chrono_duration(d));
    let mut store = MemStore::new(graph.len());
    let crashes_plan = CrashPlan::new(options.crash_at.iter().copied());
    let mut approvals: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let (mut crashes, mut passes, mut calls) = (0u32, 0u64, 0u64);
    // A crash forgets the schedule; a driver handed on per pass keeps it.
    let mut schedule = Vec::new();
    'restart: loop {
        let cancelled = cancel_at.is_some_and(|c| fabric.clock.now() >= c);
        let executor = Executor::resume(graph, store.records.clone(), cancelled);
        let mut driver = Driver::new(ctx, executor, fabric, &mut store, &crashes_plan, options.limits)
            .with_schedule(std::mem::take(&mut schedule));
        loop {
            let now = fabric.clock.now();
            let inputs = RunInputs {
                approvals: approvals.keys().cloned().collect(),
                cancel: cancel_at.is_some_and(|c| now >= c),
            };
            passes += 1;
            let result = driver.pass(now, &inputs).await;
            calls += driver.calls;
            driver.calls = 0;
            match result {
                Ok(()) => {}
                Err(DriverError::Crashed) => {
                    crashes += 1;
                    fabric.clock.advance_to(now + chrono_duration(options.restart_delay));
                    continue 'restart;
                }
                Err(e) => return Err(e.into()),
            }
            let ex = driver.executor();
            if options.check_every_pass
                && let Err(violation) = check(ctx, graph, ex.records(), fabric, &approvals, false)
            {
                return Err(SimError::Invariant { at: now, violation });
            }
            if ex.is_finished() {
                let report = RunReport {
                    phase: ex.phase(),
                    started,
                    finished: ex.records().iter().filter_map(|r| r.finished_at).max().unwrap_or(now),
                    records: ex.records().to_vec(),
                    approvals,
                    crashes,
                    passes,
                    fabric_calls: calls,
                };
                check(ctx, graph, &report.records, fabric, &report.approvals, true)
                    .map_err(|violation| SimError::Invariant { at: now, violation })?;
                return Ok(report);
            }
            // The person approves what has waited long enough.
            let mut next_approval = None;
            if let Some(after) = options.approve_after {
                for name in ex.waiting_for() {
                    let Some(step) = graph.steps.iter().position(|s| s.approval.as_deref() == Some(name)) else {
                        continue;
                    };
                    let since = ex.record(step).started_at.unwrap_or(now);
                    let at = since + chrono_duration(after);
                    if at <= now {
                        approvals.entry(name.to_owned()).or_insert(now);
                    } else {
                        next_approval = Some(next_approval.map_or(at, |n: DateTime<Utc>| n.min(at)));
                    }
                }
            }
            let mut next = [driver.next_wakeup(), next_approval, cancel_at.filter(|&c| c > now)]
                .into_iter()
                .flatten()
                .min();
            if ex.waiting_for().iter().any(|n| approvals.contains_key(*n)) {
                // Approvals granted this pass take effect on the next one, at once, whether or
                // not other steps still wait for theirs.
                next = Some(now);
            }
            match next {
                Some(t) if t > deadline => return Err(SimError::Horizon(options.horizon)),
                Some(t) => fabric.clock.advance_to(t),
                None => return Err(SimError::Stuck { at: now }),
            }
            if options.driver_per_pass {
                schedule = driver.schedule();
                continue 'restart;
            }
        }
    }
}

/// The invariants of DESIGN.md §4 (1–6) against the simulated platform's books and the run's
/// records. `complete` adds the checks that only hold once the run is over.
pub fn check(
    ctx: &RunContext,
    graph: &StepGraph,
    records: &[StepRecord],
    fabric: &SimFabric,
    approvals: &BTreeMap<String, DateTime<Utc>>,
    complete: bool,
) -> Result<(), String> {
    let plan = &ctx.plan;
    let world = fabric.world();
    let test = ctx.is_test();
    let (source, target) = plan.sites(ctx.run.direction);

    let index = plan.vm_index();
    let namespace = |vm: usize| ctx.recovery(vm).map(|r| r.namespace.to_owned()).unwrap_or_default();
    // When each group's last VM came up at the target, if all did.
    let group_up: Vec<Option<DateTime<Utc>>> = plan
        .groups
        .iter()
        .map(|g| {
            if g.vms.is_empty() {
                return Some(DateTime::<Utc>::MIN_UTC);
            }
            g.vms.iter().try_fold(None, |latest: Option<DateTime<Utc>>, &vm| {
                let key = (target.name.clone(), namespace(vm), plan.vms[vm].vm_name.clone());
                let ready = world.vms.get(&key).and_then(|v| v.ready_at)?;
                Some(Some(latest.map_or(ready, |l| l.max(ready))))
            })?
        })
        .collect();

    // 4. Exactly-once effects: no object or script effect happened twice.
    if let Some((name, n)) = world.effects.iter().find(|(_, n)| **n > 1) {
        return Err(format!("effect {name} happened {n} times"));
    }

    for ev in &world.events {
        match ev {
            // 1. No split brain: a copy starts only where the other copy is not running.
            SimEvent::VmStarted {
                at,
                site,
                pvm,
                test: is_test,
            } => {
                let Some(&vi) = index.get(pvm.as_str()) else {
                    return Err(format!("unknown VM {pvm} started"));
                };
                let vm = &plan.vms[vi];
                if *is_test {
                    let copy = world.vms.get(&(site.clone(), namespace(vi), vm.vm_name.clone()));
                    if let Some(copy) = copy {
                        let isolated = vm
                            .nics
                            .iter()
                            .all(|n| n.test_network.as_ref().is_some_and(|t| copy.networks.contains(t)));
                        if !isolated {
                            return Err(format!(
                                "test copy of {pvm} is not on the isolated test networks: {:?}",
                                copy.networks
                            ));
                        }
                    }
                    continue;
                }
                let other = if site == &target.name {
                    &source.name
                } else {
                    &target.name
                };
                let twin = world
                    .vms
                    .get(&(other.clone(), vm.vm_namespace.clone(), vm.vm_name.clone()))
                    .filter(|v| !v.test);
                if let Some(twin) = twin {
                    let still_running = twin.running || twin.stopped_at.is_some_and(|t| t > *at);
                    let down = fabric.config.faults.sites_down.contains(other);
                    if still_running && !down {
                        return Err(format!(
                            "split brain: {pvm} started at {site} at {at} while running at {other}"
                        ));
                    }
                }
            }
            SimEvent::Restored { at, pvm, point, .. } => {
                let Some(vm) = index.get(pvm.as_str()).map(|&i| &plan.vms[i]) else {
                    return Err(format!("unknown VM {pvm} restored"));
                };
                // 5. No data loss on planned actions: the point is after the source stopped.
                if ctx.run.action.is_planned() {
                    let stopped = world
                        .vms
                        .get(&(source.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone()))
                        .and_then(|v| v.stopped_at);
                    match stopped {
                        Some(s) if point.time >= s => {}
                        Some(s) => {
                            return Err(format!(
                                "{pvm}: planned recovery from {} but the source stopped at {s}",
                                point.time
                            ));
                        }
                        None => {
                            return Err(format!("{pvm}: planned recovery while the source never stopped"));
                        }
                    }
                } else {
                    // 6. Never newer than requested, never outside retention. (Retention also
                    // keeps the newest point when it is older; the simulated fabric only ever
                    // offers points within retention, so here the window is exact.)
                    if let RecoveryPointSelector::At(t) = &ctx.recovery_point
                        && point.time > crate::time::from_k8s(t)
                    {
                        return Err(format!(
                            "{pvm}: point {} is newer than the requested {}",
                            point.time,
                            crate::time::from_k8s(t)
                        ));
                    }
                    if point.time < crate::rpo::retention_floor(*at, vm.retention) || point.time > *at {
                        return Err(format!("{pvm}: point {} is outside retention at {at}", point.time));
                    }
                    if matches!(ctx.recovery_point, RecoveryPointSelector::LatestAppConsistent) && !point.app_consistent
                    {
                        return Err(format!("{pvm}: asked for an app-consistent point, got {}", point.time));
                    }
                }
            }
            SimEvent::VmStopped { .. } | SimEvent::ScriptEffect { .. } => {}
        }
    }

    // 2. Order and 3. gates, from the records: a step starts only after its dependencies
    // finished in a state that lets it; a power-on only after the groups before were up.
    for (i, step) in graph.steps.iter().enumerate() {
        let Some(started) = records[i].started_at else {
            continue;
        };
        for &d in &step.deps {
            let dep = &records[d];
            let ok = dep.state.lets_successors_run() && dep.finished_at.is_some_and(|f| f <= started);
            if !ok {
                return Err(format!(
                    "{} started at {started} before {} was done ({:?})",
                    step.id, graph.steps[d].id, dep.state
                ));
            }
        }
        if step.kind == StepKind::Manual && records[i].state == StepState::Succeeded {
            let name = step.approval.as_deref().unwrap_or_default();
            match approvals.get(name) {
                Some(at) if records[i].finished_at.is_some_and(|f| f >= *at) => {}
                _ => return Err(format!("manual action {name} passed without approval")),
            }
        }
        if step.kind == StepKind::PowerOn
            && let Some(g) = step.group
        {
            for &d in &plan.groups[g].depends_on {
                if group_up[d].is_none_or(|up| up > started) {
                    return Err(format!(
                        "{} powered on at {started} before every VM of group {} was up",
                        step.id, plan.groups[d].name
                    ));
                }
            }
        }
    }

    // 7. Status is true: a step recorded as succeeded had its effect seen by the platform
    // no later than the record says it finished.
    for (i, step) in graph.steps.iter().enumerate() {
        let (StepState::Succeeded, Some(done), Some(v)) = (records[i].state, records[i].finished_at, step.vm) else {
            continue;
        };
        let vm = &plan.vms[v];
        let seen = match step.kind {
            StepKind::RestoreDisks => world.events.iter().any(|e| {
                matches!(e, SimEvent::Restored { at, pvm, run_uid, .. }
                    if *pvm == vm.name && *run_uid == ctx.run.uid && *at <= done)
            }),
            StepKind::PowerOn => world.events.iter().any(|e| {
                matches!(e, SimEvent::VmStarted { at, site, pvm, .. }
                    if *pvm == vm.name && *site == target.name && *at <= done)
            }),
            StepKind::VmReady => world
                .vms
                .get(&(target.name.clone(), namespace(v), vm.vm_name.clone()))
                .and_then(|x| x.ready_at)
                .is_some_and(|r| r <= done),
            // The copy runs again once the repoint starts it: what counts is that it stopped.
            StepKind::Halt => world.events.iter().any(|e| {
                matches!(e, SimEvent::VmStopped { at, site, pvm }
                    if *pvm == vm.name && *site == target.name && *at <= done)
            }),
            StepKind::PowerOff if !fabric.config.faults.sites_down.contains(&source.name) => world
                .vms
                .get(&(source.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone()))
                .is_some_and(|x| !x.running && x.stopped_at.is_none_or(|t| t <= done)),
            _ => true,
        };
        if !seen {
            return Err(format!(
                "{} is recorded as succeeded at {done}, but the platform never saw it happen by then",
                step.id
            ));
        }
    }

    if complete {
        // Nothing lost: every step ended, and a successful run recovered every VM.
        if let Some(i) = records.iter().position(|r| !r.state.is_terminal()) {
            return Err(format!("step {} never ended", graph.steps[i].id));
        }
        let succeeded = records
            .iter()
            .all(|r| r.state != StepState::Failed && r.state != StepState::Skipped);
        if succeeded && ctx.run.action.recovers_vms() {
            for vm in &plan.vms {
                let rec = ctx.recovery(index[vm.name.as_str()]).map_err(|e| e.to_string())?;
                let key = (target.name.clone(), rec.namespace.to_owned(), vm.vm_name.clone());
                if !world.vms.get(&key).is_some_and(|v| v.running) {
                    return Err(format!(
                        "{} is not running at {} after a successful run",
                        vm.name, target.name
                    ));
                }
                if test
                    && !world
                        .vms
                        .get(&(source.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone()))
                        .is_some_and(|v| v.running)
                    && !fabric.config.faults.sites_down.contains(&source.name)
                {
                    return Err(format!("test failover stopped the source of {}", vm.name));
                }
            }
        }
    }
    Ok(())
}
