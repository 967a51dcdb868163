//! The planner: a validated plan, an action and a direction in; a deterministic step graph
//! out. Step ids are stable strings such as `mailbox/vm/exch-mbx01/power-on`.

use std::collections::HashMap;
use std::time::Duration;

use coldsite_api::RunAction;
use coldsite_api::recovery_plan::OnError;
use coldsite_api::recovery_run::StepKind;

use crate::model::{Direction, PlanModel};

pub type StepIdx = usize;

/// Which action of a group a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionRef {
    pub group: usize,
    pub pre: bool,
    pub index: usize,
}

impl ActionRef {
    /// The action this refers to in its plan.
    pub fn resolve<'a>(&self, plan: &'a PlanModel) -> &'a crate::model::ActionModel {
        let g = &plan.groups[self.group];
        if self.pre {
            &g.pre[self.index]
        } else {
            &g.post[self.index]
        }
    }
}

/// The site a cleanup step works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteRole {
    Source,
    Target,
}

/// What to do when a step fails for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// The run fails: nothing new starts.
    FailRun,
    /// Recorded, and successors go on.
    Continue,
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDef {
    pub id: String,
    pub kind: StepKind,
    pub group: Option<usize>,
    pub vm: Option<usize>,
    pub action: Option<ActionRef>,
    pub site: Option<SiteRole>,
    pub deps: Vec<StepIdx>,
    /// The longest a step may run, retries included.
    pub timeout: Option<Duration>,
    pub max_attempts: u32,
    pub on_failure: OnFailure,
    /// An unreachable site counts as done: an unplanned failover's source may be gone.
    pub tolerate_unreachable: bool,
    /// For a manual step, the name that `spec.approvals` uses.
    pub approval: Option<String>,
}

/// A run's steps in a deterministic order, with dependencies both ways.
#[derive(Clone, Debug)]
pub struct StepGraph {
    pub action: RunAction,
    pub direction: Direction,
    pub steps: Vec<StepDef>,
    pub dependents: Vec<Vec<StepIdx>>,
    index: HashMap<String, StepIdx>,
    vm_steps: HashMap<(usize, StepKind), StepIdx>,
}

impl StepGraph {
    pub fn find(&self, id: &str) -> Option<StepIdx> {
        self.index.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The step of a VM with a given kind, if the graph has one.
    pub fn vm_step(&self, vm: usize, kind: StepKind) -> Option<StepIdx> {
        self.vm_steps.get(&(vm, kind)).copied()
    }
}

/// Options that shape the graph beyond the plan itself.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    pub action: RunAction,
    pub direction: Direction,
    /// Unplanned failover: try to stop the source first.
    pub shutdown_source: bool,
}

pub fn vm_step_id(group: &str, vm: &str, kind: StepKind) -> String {
    format!("{group}/vm/{vm}/{}", step_name(kind))
}

fn step_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Shutdown => "shutdown",
        StepKind::Start => "start",
        StepKind::Ready => "ready",
        StepKind::Done => "done",
        StepKind::Job | StepKind::Webhook | StepKind::Manual => "action",
        StepKind::PowerOff => "stop-source",
        StepKind::CheckSource => "check-source",
        StepKind::FinalSync => "final-sync",
        StepKind::RestoreDisks => "restore-disks",
        StepKind::CreateVm => "create-vm",
        StepKind::PowerOn => "power-on",
        StepKind::VmReady => "ready",
        StepKind::Commit => "commit",
        StepKind::ReverseReplication => "reverse-replication",
        StepKind::Cleanup => "cleanup",
        StepKind::Halt => "halt",
    }
}

/// The id of a VM step: whether a step id belongs to a VM, and which.
pub fn vm_of_step_id(id: &str) -> Option<&str> {
    let mut parts = id.split('/');
    let (_, marker, vm) = (parts.next()?, parts.next()?, parts.next()?);
    (marker == "vm").then_some(vm)
}

struct Builder {
    steps: Vec<StepDef>,
}

impl Builder {
    fn add(&mut self, def: StepDef) -> StepIdx {
        self.steps.push(def);
        self.steps.len() - 1
    }

    fn barrier(&mut self, group: usize, id: String, kind: StepKind, deps: Vec<StepIdx>) -> StepIdx {
        self.add(StepDef {
            id,
            kind,
            group: Some(group),
            vm: None,
            action: None,
            site: None,
            deps,
            timeout: None,
            max_attempts: 1,
            on_failure: OnFailure::FailRun,
            tolerate_unreachable: false,
            approval: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn vm_step(
        &mut self,
        plan: &PlanModel,
        group: usize,
        vm: usize,
        kind: StepKind,
        deps: Vec<StepIdx>,
        timeout: Duration,
        max_attempts: u32,
        on_failure: OnFailure,
    ) -> StepIdx {
        self.add(StepDef {
            id: vm_step_id(&plan.groups[group].name, &plan.vms[vm].name, kind),
            kind,
            group: Some(group),
            vm: Some(vm),
            action: None,
            site: None,
            deps,
            timeout: Some(timeout),
            max_attempts,
            on_failure,
            tolerate_unreachable: false,
            approval: None,
        })
    }

    fn finish(self, options: PlanOptions) -> StepGraph {
        let mut dependents = vec![Vec::new(); self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            for &d in &s.deps {
                dependents[d].push(i);
            }
        }
        let index = self.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        let vm_steps = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.vm.map(|vm| ((vm, s.kind), i)))
            .collect();
        StepGraph {
            action: options.action,
            direction: options.direction,
            steps: self.steps,
            dependents,
            index,
            vm_steps,
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// The step graph of a run.
pub fn plan(model: &PlanModel, options: PlanOptions) -> StepGraph {
    let mut b = Builder { steps: Vec::new() };
    match options.action {
        RunAction::Commit => per_vm(model, &mut b, StepKind::Commit, 10 * MINUTE),
        RunAction::Reprotect => per_vm(model, &mut b, StepKind::ReverseReplication, 30 * MINUTE),
        _ => recovery(model, &mut b, options),
    }
    b.finish(options)
}

/// The graph that removes what a test failover created, at both sites.
pub fn cleanup(options: PlanOptions) -> StepGraph {
    let mut b = Builder { steps: Vec::new() };
    for (site, id) in [
        (SiteRole::Target, "cleanup/target"),
        (SiteRole::Source, "cleanup/source"),
    ] {
        b.add(StepDef {
            id: id.into(),
            kind: StepKind::Cleanup,
            group: None,
            vm: None,
            action: None,
            site: Some(site),
            deps: Vec::new(),
            timeout: Some(30 * MINUTE),
            max_attempts: 20,
            on_failure: OnFailure::FailRun,
            tolerate_unreachable: false,
            approval: None,
        });
    }
    b.finish(options)
}

fn per_vm(model: &PlanModel, b: &mut Builder, kind: StepKind, timeout: Duration) {
    for (gi, g) in model.groups.iter().enumerate() {
        for &vm in &g.vms {
            b.vm_step(model, gi, vm, kind, Vec::new(), timeout, 5, OnFailure::FailRun);
        }
    }
}

fn recovery(model: &PlanModel, b: &mut Builder, options: PlanOptions) {
    let action = options.action;
    let planned = action.is_planned();
    let order = model.startup_order();
    let stops = stop_steps(model, b, options, &order);
    let mut done: Vec<Option<StepIdx>> = vec![None; model.groups.len()];
    for &gi in &order {
        let g = &model.groups[gi];
        let after_deps: Vec<StepIdx> = g.depends_on.iter().filter_map(|&d| done[d]).collect();
        let mut gate = after_deps.clone();
        for (ai, a) in g.pre.iter().enumerate() {
            if a.runs_in(action) {
                gate.push(action_step(b, model, gi, true, ai, after_deps.clone()));
            }
        }
        let start = b.barrier(gi, format!("{}/start", g.name), StepKind::Start, gate);
        let mut ready = Vec::new();
        for &vm in &g.vms {
            // Disks restore and VMs are created, halted, as early as their data allows;
            // only power-on waits for the group's turn.
            let stop = stops.get(&vm).copied();
            let restore_deps = match (planned, stop) {
                (true, Some(stop)) => vec![b.vm_step(
                    model,
                    gi,
                    vm,
                    StepKind::FinalSync,
                    vec![stop],
                    30 * MINUTE,
                    5,
                    OnFailure::FailRun,
                )],
                // A repoint restores only over a copy it has halted.
                _ if action == RunAction::ChangeRecoveryPoint => stop.into_iter().collect(),
                _ => Vec::new(),
            };
            let restore = b.vm_step(
                model,
                gi,
                vm,
                StepKind::RestoreDisks,
                restore_deps,
                30 * MINUTE,
                5,
                OnFailure::FailRun,
            );
            let create = b.vm_step(
                model,
                gi,
                vm,
                StepKind::CreateVm,
                vec![restore],
                5 * MINUTE,
                5,
                OnFailure::FailRun,
            );
            let mut power_deps = vec![create, start];
            power_deps.extend(stop.filter(|_| !planned));
            let power_on = b.vm_step(
                model,
                gi,
                vm,
                StepKind::PowerOn,
                power_deps,
                5 * MINUTE,
                5,
                OnFailure::FailRun,
            );
            ready.push(b.vm_step(
                model,
                gi,
                vm,
                StepKind::VmReady,
                vec![power_on],
                g.readiness.timeout,
                1,
                OnFailure::FailRun,
            ));
        }
        let group_ready = b.barrier(gi, format!("{}/ready", g.name), StepKind::Ready, ready);
        let mut finish = vec![group_ready];
        for (ai, a) in g.post.iter().enumerate() {
            if a.runs_in(action) {
                finish.push(action_step(b, model, gi, false, ai, vec![group_ready]));
            }
        }
        done[gi] = Some(b.barrier(gi, format!("{}/done", g.name), StepKind::Done, finish));
    }
}

/// The steps that stop each VM before it is recovered, in reverse startup order: a group
/// stops after every group that depends on it. A planned action stops the source and syncs.
/// An unplanned failover stops the source if asked, or else checks it is not running;
/// either way an unreachable source site counts as down, since that is what an unplanned
/// failover is for. A repoint halts the copy it replaces, at the target.
fn stop_steps(model: &PlanModel, b: &mut Builder, options: PlanOptions, order: &[usize]) -> HashMap<usize, StepIdx> {
    let action = options.action;
    let unplanned = action == RunAction::Failover;
    let kind = match action {
        RunAction::ChangeRecoveryPoint => StepKind::Halt,
        _ if action.is_planned() || (unplanned && options.shutdown_source) => StepKind::PowerOff,
        _ if unplanned => StepKind::CheckSource,
        _ => return HashMap::new(),
    };
    // An unplanned failover waits for a source that does not answer until the site counts
    // as down (its Site's downAfter) or the run declares it down: give it room for that.
    let (attempts, timeout) = if unplanned { (3, 60 * MINUTE) } else { (5, 10 * MINUTE) };
    let mut dependents = vec![Vec::new(); model.groups.len()];
    for (i, g) in model.groups.iter().enumerate() {
        for &d in &g.depends_on {
            dependents[d].push(i);
        }
    }
    let mut shutdown: Vec<Option<StepIdx>> = vec![None; model.groups.len()];
    let mut steps = HashMap::new();
    for &gi in order.iter().rev() {
        let deps: Vec<StepIdx> = dependents[gi].iter().filter_map(|&h| shutdown[h]).collect();
        let stops: Vec<StepIdx> = model.groups[gi]
            .vms
            .iter()
            .map(|&vm| {
                let s = b.vm_step(model, gi, vm, kind, deps.clone(), timeout, attempts, OnFailure::FailRun);
                b.steps[s].tolerate_unreachable = unplanned;
                steps.insert(vm, s);
                s
            })
            .collect();
        let name = &model.groups[gi].name;
        shutdown[gi] = Some(b.barrier(gi, format!("{name}/shutdown"), StepKind::Shutdown, stops));
    }
    steps
}

fn action_step(
    b: &mut Builder,
    model: &PlanModel,
    group: usize,
    pre: bool,
    index: usize,
    deps: Vec<StepIdx>,
) -> StepIdx {
    let g = &model.groups[group];
    let a = if pre { &g.pre[index] } else { &g.post[index] };
    let kind = match a.kind {
        crate::model::ActionKind::Job { .. } => StepKind::Job,
        crate::model::ActionKind::Webhook { .. } => StepKind::Webhook,
        crate::model::ActionKind::Manual { .. } => StepKind::Manual,
    };
    let phase = if pre { "pre" } else { "post" };
    b.add(StepDef {
        id: format!("{}/{phase}/{}", g.name, a.name),
        kind,
        group: Some(group),
        vm: None,
        action: Some(ActionRef { group, pre, index }),
        site: None,
        deps,
        timeout: a.timeout,
        max_attempts: if kind == StepKind::Manual { 1 } else { 3 },
        on_failure: match a.on_error {
            OnError::Fail => OnFailure::FailRun,
            OnError::Continue => OnFailure::Continue,
        },
        tolerate_unreachable: false,
        approval: (kind == StepKind::Manual).then(|| a.name.clone()),
    })
}
