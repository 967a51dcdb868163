//! The driver: the imperative shell around the executor. Each pass polls the fabric for the
//! steps that are due, feeds what it saw to the executor, starts what the executor says and
//! saves the records that changed. The operator runs one pass per reconcile; the simulator
//! runs passes on a virtual clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use coldsite_api::RunAction;
use coldsite_api::recovery_plan::ScriptSite;
use coldsite_api::recovery_run::{RecoveryPointSelector, StepKind};
use futures::StreamExt;

use crate::cloudinit;
use crate::executor::{Command, Executor, Observation, Outcome, RunInputs, StepRecord, chrono_duration};
use crate::fabric::{
    Fabric, FabricError, FailureKind, Progress, RecoveredNic, RecoveredVm, Recovery, RecoveryPoint, RunRef,
    ScriptLocation, ScriptRequest,
};
use crate::model::{ActionModel, Direction, PlanModel};
use crate::planner::{SiteRole, StepDef, StepGraph, StepIdx};
use crate::rpo;

/// The fixed inputs of a run, with what follows from them computed once.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub plan: PlanModel,
    pub run: RunRef,
    pub recovery_point: RecoveryPointSelector,
    /// The source site counts as down: steps there that tolerate an unreachable site go on
    /// without it. Otherwise they wait for it to answer.
    pub source_down: bool,
    recovered: Vec<Result<RecoveredVm, String>>,
    /// The VMs as scripts see them in their context.
    vms_context: serde_json::Value,
}

impl RunContext {
    pub fn new(plan: PlanModel, run: RunRef, recovery_point: RecoveryPointSelector) -> Self {
        let test = run.action == RunAction::TestFailover;
        let (_, target) = plan.sites(run.direction);
        let recovered: Vec<Result<RecoveredVm, String>> = plan
            .vms
            .iter()
            .map(|model| {
                let nics: Vec<RecoveredNic> = model
                    .nics
                    .iter()
                    .map(|n| {
                        let (network, plan) = match (run.direction, test) {
                            (Direction::Forward, true) => (
                                n.test_network.clone().unwrap_or_else(|| n.target_network.clone()),
                                &n.test,
                            ),
                            (Direction::Forward, false) => (n.target_network.clone(), &n.recovered),
                            (Direction::Reverse, _) => (n.source_network.clone(), &n.returned),
                        };
                        RecoveredNic {
                            name: n.name.clone(),
                            mac: n.mac.clone(),
                            network,
                            plan: plan.clone(),
                        }
                    })
                    .collect();
                let plans: Vec<_> = nics.iter().map(|n| n.plan.clone()).collect();
                let network_data = cloudinit::render_network_config(&plans)
                    .map_err(|e| format!("VM {}: network data: {e}", model.name))?;
                Ok(RecoveredVm {
                    namespace: if test {
                        target.test_namespace_for(&run.namespace)
                    } else {
                        model.vm_namespace.clone()
                    },
                    nics,
                    network_data,
                })
            })
            .collect();
        let vms_context = serde_json::Value::Array(
            plan.vms
                .iter()
                .zip(&recovered)
                .enumerate()
                .map(|(i, (vm, rec))| {
                    let group = plan.groups.iter().find(|g| g.vms.contains(&i)).map(|g| g.name.clone());
                    let Ok(rec) = rec else {
                        return serde_json::json!({"name": vm.name, "group": group});
                    };
                    serde_json::json!({
                        "name": vm.name,
                        "vm": format!("{}/{}", rec.namespace, vm.vm_name),
                        "group": group,
                        "ips": rec.nics.iter().flat_map(|n| n.plan.addresses.iter().map(|a| a.addr().to_string())).collect::<Vec<_>>(),
                        "nics": rec.nics.iter().map(|n| serde_json::json!({
                            "name": n.name,
                            "network": n.network,
                            "addresses": n.plan.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        );
        Self {
            plan,
            run,
            recovery_point,
            source_down: false,
            recovered,
            vms_context,
        }
    }

    /// Declares the source site down (see [`RunContext::source_down`]).
    pub fn with_source_down(mut self, down: bool) -> Self {
        self.source_down = down;
        self
    }

    pub fn is_test(&self) -> bool {
        self.run.action == RunAction::TestFailover
    }

    /// What the recovered copy of a VM looks like for this run.
    pub fn recovery(&self, vm: usize) -> Result<Recovery<'_>, FabricError> {
        let rec = match &self.recovered[vm] {
            Ok(r) => r,
            Err(e) => return Err(FabricError::permanent(e.clone())),
        };
        let (source, target) = self.plan.sites(self.run.direction);
        Ok(Recovery {
            run: &self.run,
            vm: &self.plan.vms[vm],
            source,
            target,
            namespace: &rec.namespace,
            test: self.is_test(),
            nics: &rec.nics,
            network_data: &rec.network_data,
        })
    }

    /// The VMs as the script context lists them.
    pub fn script_vms(&self) -> &serde_json::Value {
        &self.vms_context
    }

    /// The JSON context a script receives, but for the VM list.
    pub fn script_context(&self, step_id: &str, group: usize, action: &ActionModel) -> serde_json::Value {
        let (source, target) = self.plan.sites(self.run.direction);
        serde_json::json!({
            "plan": {"namespace": self.plan.namespace, "name": self.plan.name},
            "run": {"name": self.run.name, "uid": self.run.uid, "action": self.run.action.as_str()},
            "sourceSite": source.name,
            "targetSite": target.name,
            "test": self.is_test(),
            "group": self.plan.groups[group].name,
            "action": action.name,
            "step": step_id,
        })
    }
}

/// How soon a step retries a site that does not answer.
const UNREACHABLE_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// What one poll of a step saw: done (with the point a restore or sync used), or not yet.
type PollResult = Result<Progress<Option<RecoveryPoint>>, FabricError>;

/// Persists step records. The operator writes run- and VM-level status; the simulator keeps
/// them in memory.
#[allow(async_fn_in_trait)]
pub trait RunStore {
    async fn save(&mut self, graph: &StepGraph, step: StepIdx, record: &StepRecord) -> Result<(), DriverError>;
}

/// A point where the simulator may kill the controller.
pub trait CrashHook {
    fn crash_now(&self) -> bool;
}

/// Never crashes: production.
pub struct NoCrash;

impl CrashHook for NoCrash {
    fn crash_now(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("controller crashed (simulated)")]
    Crashed,
    #[error("saving step {step}: {message}")]
    Store { step: String, message: String },
}

/// When each running step is next asked, as a pass left it: `(when, step, attempt)`. The
/// operator makes a driver per reconcile; handing this on keeps a step's own pace (its
/// `retry_after`) instead of asking every running step again at every reconcile.
pub type PollSchedule = Vec<(DateTime<Utc>, StepIdx, u32)>;

/// How many fabric calls a pass makes at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { concurrency: 32 }
    }
}

pub struct Driver<'a, F, S, H> {
    ctx: &'a RunContext,
    executor: Executor<'a>,
    fabric: &'a F,
    store: S,
    hook: H,
    limits: Limits,
    /// Running steps and when to ask the fabric next, with the attempt polled.
    polls: BinaryHeap<Reverse<(DateTime<Utc>, StepIdx, u32)>>,
    /// An earlier driver's schedule, for the running steps this one resumes.
    carried: HashMap<StepIdx, (DateTime<Utc>, u32)>,
    /// Fabric calls made, for reports.
    pub calls: u64,
    /// The instant each consistency group restores from, as this driver fixed or found it:
    /// its members' restores in one pass ask at once, and must not choose twice.
    group_points: futures::lock::Mutex<HashMap<usize, DateTime<Utc>>>,
    /// Each recovery group's start step: until it is done, the group's restores and creates
    /// are work ahead ([`Self::is_ahead`]).
    group_starts: HashMap<usize, StepIdx>,
}

impl<'a, F: Fabric, S: RunStore, H: CrashHook> Driver<'a, F, S, H> {
    pub fn new(ctx: &'a RunContext, executor: Executor<'a>, fabric: &'a F, store: S, hook: H, limits: Limits) -> Self {
        let group_starts = executor
            .graph()
            .steps
            .iter()
            .enumerate()
            .filter(|(_, d)| d.kind == StepKind::Start)
            .filter_map(|(i, d)| Some((d.group?, i)))
            .collect();
        Self {
            ctx,
            executor,
            fabric,
            store,
            hook,
            limits,
            polls: BinaryHeap::new(),
            carried: HashMap::new(),
            calls: 0,
            group_points: futures::lock::Mutex::new(HashMap::new()),
            group_starts,
        }
    }

    /// Resumes the running steps on an earlier driver's [`Self::schedule`]: a step resumed at
    /// the attempt it was polled at is asked when that driver would have asked it.
    pub fn with_schedule(mut self, schedule: PollSchedule) -> Self {
        self.carried = schedule.into_iter().map(|(t, step, a)| (step, (t, a))).collect();
        self
    }

    /// When each running step is next due (see [`PollSchedule`]).
    pub fn schedule(&self) -> PollSchedule {
        self.polls.iter().map(|Reverse(p)| *p).collect()
    }

    pub fn executor(&self) -> &Executor<'a> {
        &self.executor
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// When the next pass has something to do.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let poll = self.polls.peek().map(|Reverse((t, _, _))| *t);
        match (poll, self.executor.next_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One pass at `now`: everything due is polled and decided, repeatedly, until nothing
    /// more is due at this instant.
    pub async fn pass(&mut self, now: DateTime<Utc>, inputs: &RunInputs) -> Result<(), DriverError> {
        let mut observations = Vec::new();
        let mut room_ahead = self.limits.concurrency.max(1);
        let mut deferred = Vec::new();
        loop {
            let commands = self.executor.advance(now, inputs, std::mem::take(&mut observations));
            for c in commands {
                if let Command::Start { step, attempt } = c {
                    let at = match self.carried.remove(&step) {
                        Some((t, a)) if a == attempt => t.max(now),
                        _ => now,
                    };
                    self.polls.push(Reverse((at, step, attempt)));
                }
                // Abandoned steps drop out when their poll comes due: the attempt no longer runs.
            }
            self.save_dirty().await?;
            let due = self.take_due(now, &mut room_ahead, &mut deferred);
            if due.is_empty() {
                self.polls.extend(
                    deferred
                        .into_iter()
                        .map(|(step, attempt)| Reverse((now, step, attempt))),
                );
                return Ok(());
            }
            let this = &*self;
            let results: Vec<(StepIdx, u32, PollResult)> = futures::stream::iter(due)
                .map(|(step, attempt)| async move { (step, attempt, this.poll(step, now).await) })
                .buffer_unordered(self.limits.concurrency.max(1))
                .collect()
                .await;
            for (step, attempt, result) in results {
                self.calls += 1;
                if self.hook.crash_now() {
                    return Err(DriverError::Crashed);
                }
                observations.extend(self.observe(step, attempt, result, now));
            }
        }
    }

    /// What a poll's result means for its step: an observation for the executor, or a later
    /// poll (a step still in progress, or a site that does not answer yet).
    fn observe(&mut self, step: StepIdx, attempt: u32, result: PollResult, now: DateTime<Utc>) -> Option<Observation> {
        let tolerate = self.executor.graph().steps[step].tolerate_unreachable;
        let outcome = match result {
            Ok(Progress::Done(point)) => Outcome::Done { point, note: None },
            Err(e) if tolerate && e.kind == FailureKind::Unreachable && self.ctx.source_down => {
                let note = Some(format!("source site down, not waited for: {}", e.message));
                Outcome::Done { point: None, note }
            }
            Err(e) if e.kind == FailureKind::Unreachable => {
                // A slow site is not a dead one: wait until it answers, or counts as down.
                self.polls.push(Reverse((now + UNREACHABLE_RETRY, step, attempt)));
                let message = format!(
                    "waiting for the site to answer ({}); it counts as down once unreachable for its \
                     Site's spec.downAfter, or when the run sets spec.sourceDown",
                    e.message
                );
                Outcome::Waiting { message }
            }
            Ok(Progress::InProgress { retry_after }) => {
                let at = now + chrono_duration(retry_after.max(std::time::Duration::from_millis(1)));
                self.polls.push(Reverse((at, step, attempt)));
                return None;
            }
            Err(e) => Outcome::Failed {
                retryable: e.retryable(),
                message: e.message,
            },
        };
        Some(Observation { step, attempt, outcome })
    }

    /// The running steps due at `now`: all of the run's own and the started groups', and of
    /// the work ahead only what `room` still allows in this pass, earliest in the startup
    /// order first. The rest of it goes to `deferred`, due at the next pass. A pass that
    /// restored a thousand VMs at once would hold up the next look at the group whose turn
    /// it is (its power-ons, its readiness) until every later group's disks were asked for.
    fn take_due(
        &mut self,
        now: DateTime<Utc>,
        room: &mut usize,
        deferred: &mut Vec<(StepIdx, u32)>,
    ) -> Vec<(StepIdx, u32)> {
        let (mut due, mut ahead) = (Vec::new(), Vec::new());
        while let Some(Reverse((t, step, attempt))) = self.polls.peek().copied() {
            if t > now {
                break;
            }
            self.polls.pop();
            let r = self.executor.record(step);
            if r.state == coldsite_api::recovery_run::StepState::Running && r.attempts == attempt {
                if self.is_ahead(step) {
                    ahead.push((step, attempt));
                } else {
                    due.push((step, attempt));
                }
            }
        }
        // Steps are planned in startup order.
        ahead.sort_unstable();
        let asked = ahead.len().min(*room);
        *room -= asked;
        deferred.extend(ahead.drain(asked..));
        due.extend(ahead);
        due
    }

    /// Whether a step is work ahead: a restore (or its final sync) or a create for a group
    /// whose turn has not come. Nothing waits on it yet.
    fn is_ahead(&self, step: StepIdx) -> bool {
        let def = &self.executor.graph().steps[step];
        matches!(
            def.kind,
            StepKind::FinalSync | StepKind::RestoreDisks | StepKind::CreateVm
        ) && def
            .group
            .and_then(|g| self.group_starts.get(&g))
            .is_some_and(|&start| self.executor.record(start).state != coldsite_api::recovery_run::StepState::Succeeded)
    }

    async fn save_dirty(&mut self) -> Result<(), DriverError> {
        for step in self.executor.take_dirty() {
            self.store
                .save(self.executor.graph(), step, self.executor.record(step))
                .await?;
            if self.hook.crash_now() {
                return Err(DriverError::Crashed);
            }
        }
        Ok(())
    }

    async fn poll(&self, step: StepIdx, now: DateTime<Utc>) -> PollResult {
        let ctx = self.ctx;
        let def = &self.executor.graph().steps[step];
        match def.kind {
            StepKind::Job | StepKind::Webhook => self.run_action(def).await.map(no_point),
            StepKind::Cleanup => {
                let (source, target) = ctx.plan.sites(ctx.run.direction);
                let site = match def.site {
                    Some(SiteRole::Source) => source,
                    _ => target,
                };
                self.fabric.delete_test_resources(&ctx.run, site).await.map(no_point)
            }
            StepKind::Manual | StepKind::Shutdown | StepKind::Start | StepKind::Ready | StepKind::Done => Err(
                FabricError::permanent(format!("step {} is not driven by the fabric", def.id)),
            ),
            _ => self.poll_vm_step(def, def.vm.unwrap_or_default(), now).await,
        }
    }

    /// A step on one VM of the plan.
    async fn poll_vm_step(&self, def: &StepDef, vm: usize, now: DateTime<Utc>) -> PollResult {
        let (ctx, plan, fabric) = (self.ctx, &self.ctx.plan, &self.fabric);
        let (source, target) = plan.sites(ctx.run.direction);
        let Some(model) = plan.vms.get(vm) else {
            return Err(FabricError::permanent(format!(
                "step {} names no VM of the plan",
                def.id
            )));
        };
        match def.kind {
            StepKind::PowerOff => fabric.power_off(&ctx.run, source, model).await.map(no_point),
            StepKind::Halt => fabric.power_off(&ctx.run, target, model).await.map(no_point),
            StepKind::CheckSource => fabric.check_stopped(source, model).await.map(no_point),
            StepKind::FinalSync => {
                let graph = self.executor.graph();
                let after = graph
                    .vm_step(vm, StepKind::PowerOff)
                    .and_then(|s| self.executor.record(s).finished_at)
                    .unwrap_or(now);
                fabric.final_sync(&ctx.run, model, after).await.map(a_point)
            }
            StepKind::RestoreDisks => {
                // The first call that restores fixes the point; later ones report it.
                let point = self.choose_point(vm, now).await?;
                fabric.restore_disks(&ctx.recovery(vm)?, &point).await.map(a_point)
            }
            StepKind::CreateVm => fabric.create_vm(&ctx.recovery(vm)?).await.map(no_point),
            StepKind::PowerOn => fabric.power_on(&ctx.recovery(vm)?).await.map(no_point),
            StepKind::VmReady => {
                let readiness = &plan.groups[def.group.unwrap_or_default()].readiness;
                fabric.vm_ready(&ctx.recovery(vm)?, readiness).await.map(no_point)
            }
            StepKind::Commit => fabric.commit(&ctx.run, model).await.map(no_point),
            StepKind::ReverseReplication => fabric.reverse_replication(&ctx.run, model).await.map(no_point),
            _ => Err(FabricError::permanent(format!("step {} is not a VM's", def.id))),
        }
    }

    /// A Job or webhook step: its action, run where the plan says.
    async fn run_action(&self, def: &StepDef) -> Result<Progress<()>, FabricError> {
        let (ctx, plan) = (self.ctx, &self.ctx.plan);
        let Some(a) = def.action else {
            return Err(FabricError::permanent(format!("step {} has no action", def.id)));
        };
        let action = a.resolve(plan);
        let location = match &action.kind {
            crate::model::ActionKind::Job { site, .. } => match site {
                ScriptSite::Primary => ScriptLocation::Site(&plan.primary),
                ScriptSite::Recovery => ScriptLocation::Site(&plan.recovery),
                ScriptSite::Management => ScriptLocation::Management,
            },
            _ => ScriptLocation::Management,
        };
        let req = ScriptRequest {
            run: &ctx.run,
            step_id: &def.id,
            action,
            location,
            idempotency_key: format!("{}/{}", ctx.run.uid, def.id),
            context: ctx.script_context(&def.id, a.group, action),
            vms: ctx.script_vms(),
        };
        self.fabric.run_script(&req).await
    }

    async fn choose_point(&self, vm: usize, now: DateTime<Utc>) -> Result<RecoveryPoint, FabricError> {
        let graph = self.executor.graph();
        let model = &self.ctx.plan.vms[vm];
        // A planned action restores the point its final sync produced, taken after the stop.
        if let Some(sync) = graph.vm_step(vm, StepKind::FinalSync) {
            let r = self.executor.record(sync);
            return r
                .point
                .clone()
                .ok_or_else(|| FabricError::permanent("the final sync recorded no recovery point"));
        }
        let plan = &self.ctx.plan;
        if let Some(group) = plan.consistency_groups.iter().position(|g| g.vms.contains(&vm)) {
            return self.group_point(group, vm, now).await;
        }
        let points = self.fabric.recovery_points(model, self.ctx.run.direction).await?;
        rpo::choose_point(&points, &self.ctx.recovery_point, now, model.retention).map_err(|e| {
            let fix = match (&e, model.app_consistent_interval) {
                (rpo::PointError::NoAppConsistent, None) => {
                    "; it has no spec.replication.appConsistentInterval: set one, or run with recoveryPoint Latest"
                }
                _ => "",
            };
            FabricError::permanent(format!("VM {}: {e}{fix}", model.name))
        })
    }

    /// The point a member of a consistency group restores: its own at the group's instant.
    /// That instant is fixed once per run, by the first member's restore (the sites record
    /// it on the restored disks), so members restored later, while replication goes on, still
    /// restore to it.
    async fn group_point(&self, group: usize, vm: usize, now: DateTime<Utc>) -> Result<RecoveryPoint, FabricError> {
        let (plan, direction) = (&self.ctx.plan, self.ctx.run.direction);
        let cg = &plan.consistency_groups[group];
        let mut fixed = self.group_points.lock().await;
        let time = match fixed.get(&group) {
            Some(t) => *t,
            None => {
                let t = match self.restored_instant(&cg.vms).await? {
                    Some(t) => t,
                    None => self.common_instant(cg, now).await?,
                };
                fixed.insert(group, t);
                t
            }
        };
        drop(fixed);
        let model = &plan.vms[vm];
        let points = self.fabric.recovery_points(model, direction).await?;
        points.into_iter().find(|p| p.time == time).ok_or_else(|| {
            FabricError::permanent(format!(
                "VM {}: no recovery point at {time}, the instant the other VMs of consistency group {} restore from",
                model.name, cg.name
            ))
        })
    }

    /// The instant a member's restore in this run began from, if one began.
    async fn restored_instant(&self, members: &[usize]) -> Result<Option<DateTime<Utc>>, FabricError> {
        for &m in members {
            if let Some(t) = self.fabric.restored_point(&self.ctx.recovery(m)?).await? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The newest instant every member holds a point at, as the run asks.
    async fn common_instant(
        &self,
        cg: &crate::model::ConsistencyGroupModel,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, FabricError> {
        let plan = &self.ctx.plan;
        let mut lists = Vec::with_capacity(cg.vms.len());
        for &m in &cg.vms {
            lists.push(
                self.fabric
                    .recovery_points(&plan.vms[m], self.ctx.run.direction)
                    .await?,
            );
        }
        let members: Vec<(&[RecoveryPoint], std::time::Duration)> = lists
            .iter()
            .zip(&cg.vms)
            .map(|(l, &m)| (&l[..], plan.vms[m].retention))
            .collect();
        rpo::choose_common(&members, &self.ctx.recovery_point, now)
            .map(|p| p.time)
            .map_err(|e| FabricError::permanent(format!("consistency group {}: {e}", cg.name)))
    }
}

/// A step's progress, where the step yields no recovery point.
fn no_point(p: Progress<()>) -> Progress<Option<RecoveryPoint>> {
    match p {
        Progress::Done(()) => Progress::Done(None),
        Progress::InProgress { retry_after } => Progress::InProgress { retry_after },
    }
}

/// A step's progress, where the step yields the recovery point it used.
fn a_point(p: Progress<RecoveryPoint>) -> Progress<Option<RecoveryPoint>> {
    match p {
        Progress::Done(pt) => Progress::Done(Some(pt)),
        Progress::InProgress { retry_after } => Progress::InProgress { retry_after },
    }
}
