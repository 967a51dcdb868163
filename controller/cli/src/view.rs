//! The pure model behind `status` and `report`: a RecoveryRun, its plan and its
//! ProtectedVMs' `status.lastRun` gathered into groups, steps, VMs, waits and approvals.
//! No I/O: everything is computed from the objects and a `now`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use coldsite_api::protected_vm::{Consistency, VmRunStatus};
use coldsite_api::recovery_plan::Action;
use coldsite_api::recovery_run::{GroupProgress, RecoveryRunStatus, RunPhase, StepKind, StepState, StepStatus};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::time::from_k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::ResourceExt;

/// What a run view is computed from.
#[derive(Clone, Debug)]
pub struct RunData {
    pub run: RecoveryRun,
    /// The plan, when it still exists: group order, action kinds and instructions.
    pub plan: Option<RecoveryPlan>,
    /// The plan's ProtectedVMs that exist.
    pub pvms: Vec<ProtectedVM>,
    pub now: DateTime<Utc>,
}

/// A recovery point as shown: its time and, when the run recorded it, its consistency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub time: DateTime<Utc>,
    pub consistency: Option<Consistency>,
    /// Every disk from one instant.
    pub one_instant: bool,
}

impl Point {
    fn of(time: Option<&Time>, consistency: Option<Consistency>, one_instant: bool) -> Option<Self> {
        time.map(|t| Point {
            time: from_k8s(t),
            consistency,
            one_instant,
        })
    }

    /// `app`, `crash` (and `, group` when every disk is from one instant), or `-` for a run
    /// recorded before consistency was.
    pub fn consistency_word(&self) -> &'static str {
        self.consistency.map_or("-", |c| c.words(self.one_instant))
    }
}

/// The point a repoint replaced, and the run that had restored it.
#[derive(Clone, Debug, PartialEq)]
pub struct Replaced {
    pub run: String,
    pub point: Point,
}

impl Replaced {
    fn of(r: &coldsite_api::protected_vm::ReplacedPoint) -> Self {
        Replaced {
            run: r.run.clone(),
            point: Point {
                time: from_k8s(&r.time),
                consistency: r.consistency,
                one_instant: false,
            },
        }
    }

    /// `replaces 2026-03-01 09:40:00Z (crash) of run exchange-failover`.
    pub fn describe(&self, time: impl Fn(DateTime<Utc>) -> String) -> String {
        format!(
            "replaces {} ({}) of run {}",
            time(self.point.time),
            self.point.consistency_word(),
            self.run
        )
    }
}

/// One step, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: String,
    pub kind: Option<StepKind>,
    pub state: StepState,
    pub attempts: i32,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub point: Option<Point>,
    pub message: Option<String>,
}

impl Step {
    fn from_status(s: &StepStatus) -> Self {
        Step {
            id: s.id.clone(),
            kind: s.kind,
            state: s.state,
            attempts: s.attempts,
            started: s.started_at.as_ref().map(from_k8s),
            finished: s.finished_at.as_ref().map(from_k8s),
            point: Point::of(
                s.recovery_point.as_ref(),
                s.recovery_point_consistency,
                s.recovery_point_one_instant,
            ),
            message: s.message.clone().filter(|m| !m.is_empty()),
        }
    }

    /// The last part of the id: `power-on`, `confirm-ad-replication`, `done`.
    pub fn short(&self) -> &str {
        self.id.rsplit('/').next().unwrap_or(&self.id)
    }

    /// Seconds from start to finish, or to `now` while it runs.
    pub fn seconds(&self, now: DateTime<Utc>) -> Option<i64> {
        let start = self.started?;
        Some((self.finished.unwrap_or(now) - start).num_seconds().max(0))
    }
}

/// A VM's part in the run.
#[derive(Clone, Debug, PartialEq)]
pub struct VmView {
    pub name: String,
    /// Its stop steps, shown under the shutdown: stop or check at the source, or a repoint's
    /// halt at the target.
    pub source_steps: Vec<Step>,
    /// Its steps at the target: final sync, restore, create, power on, ready; or commit,
    /// reverse replication.
    pub steps: Vec<Step>,
    /// The recovery point actually used.
    pub point: Option<Point>,
    /// A repoint: the point it replaced.
    pub replaced: Option<Replaced>,
    /// Whether the ProtectedVM still holds this run's record (a later run replaces it).
    pub recorded: bool,
}

impl VmView {
    /// Its state; a VM whose disks are ready but whose group's turn has not come is
    /// Pending, not Running.
    pub fn state(&self) -> StepState {
        let steps = || self.steps.iter().chain(&self.source_steps);
        match combined_state(steps()) {
            StepState::Running if !steps().any(|s| s.state == StepState::Running) => StepState::Pending,
            s => s,
        }
    }

    pub fn started(&self) -> Option<DateTime<Utc>> {
        self.steps.iter().filter_map(|s| s.started).min()
    }

    pub fn finished(&self) -> Option<DateTime<Utc>> {
        if self.steps.iter().all(|s| s.state.is_terminal()) {
            self.steps.iter().filter_map(|s| s.finished).max()
        } else {
            None
        }
    }
}

/// The state that sums up several steps: the worst failure, else waiting, else running,
/// else pending if any is, else succeeded.
pub fn combined_state<'a>(steps: impl Iterator<Item = &'a Step>) -> StepState {
    let states: Vec<StepState> = steps.map(|s| s.state).collect();
    let has = |s: StepState| states.contains(&s);
    if states.is_empty() {
        StepState::Pending
    } else if has(StepState::Failed) {
        StepState::Failed
    } else if has(StepState::WaitingForApproval) {
        StepState::WaitingForApproval
    } else if has(StepState::Running) {
        StepState::Running
    } else if has(StepState::Pending) {
        if states.iter().any(|s| s.is_terminal()) {
            StepState::Running
        } else {
            StepState::Pending
        }
    } else if states.iter().all(|s| *s == StepState::Skipped) {
        StepState::Skipped
    } else if has(StepState::FailedContinued) {
        StepState::FailedContinued
    } else {
        StepState::Succeeded
    }
}

/// One group of the plan in this run.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupView {
    pub name: String,
    /// The group's source shutdown barrier (planned actions, unplanned with shutdown).
    pub shutdown: Option<Step>,
    pub pre: Vec<Step>,
    /// `start`, `ready` and `done`, in that order, as far as the run has them.
    pub barriers: Vec<Step>,
    pub vms: Vec<VmView>,
    pub post: Vec<Step>,
    pub progress: Option<GroupProgress>,
}

impl GroupView {
    fn barrier(&self, kind: StepKind) -> Option<&Step> {
        self.barriers.iter().find(|s| s.kind == Some(kind))
    }

    /// Every step of the group's recovery part, actions and VMs included.
    pub fn recovery_steps(&self) -> impl Iterator<Item = &Step> {
        self.pre
            .iter()
            .chain(&self.barriers)
            .chain(self.vms.iter().flat_map(|v| &v.steps))
            .chain(&self.post)
    }

    pub fn state(&self) -> StepState {
        let state = combined_state(self.recovery_steps());
        if state == StepState::Failed {
            return state;
        }
        if let Some(done) = self.barrier(StepKind::Done)
            && done.state.is_terminal()
        {
            return done.state;
        }
        // Disks restore ahead of time; the group runs once its pre actions or start do.
        let turn = self
            .pre
            .iter()
            .chain(self.barrier(StepKind::Start))
            .any(|s| s.started.is_some());
        if self.barrier(StepKind::Start).is_some() && !turn && state == StepState::Running {
            return StepState::Pending;
        }
        if state == StepState::Pending
            && let Some(p) = &self.progress
            && p.total > 0
        {
            return if p.failed > 0 {
                StepState::Failed
            } else if p.succeeded == p.total {
                StepState::Succeeded
            } else if p.running > 0 || p.succeeded > 0 {
                StepState::Running
            } else {
                StepState::Pending
            };
        }
        state
    }

    /// When the group's turn came: its pre actions or its start, whichever was first; VM
    /// disks may restore earlier, ahead of their group's turn.
    pub fn started(&self) -> Option<DateTime<Utc>> {
        let turn = self
            .pre
            .iter()
            .chain(self.barrier(StepKind::Start))
            .filter_map(|s| s.started)
            .min();
        if self.barrier(StepKind::Start).is_some() {
            return turn;
        }
        self.recovery_steps().filter_map(|s| s.started).min()
    }

    pub fn finished(&self) -> Option<DateTime<Utc>> {
        match self.barrier(StepKind::Done) {
            Some(done) => done.finished,
            None => {
                let steps: Vec<&Step> = self.recovery_steps().collect();
                if !steps.is_empty() && steps.iter().all(|s| s.state.is_terminal()) {
                    steps.iter().filter_map(|s| s.finished).max()
                } else {
                    None
                }
            }
        }
    }
}

/// A manual action waiting for a person.
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    pub action: String,
    pub step: String,
    pub since: Option<DateTime<Utc>>,
    pub instructions: Option<String>,
    pub timeout: Option<String>,
}

/// An approval: asked for in spec.approvals, and seen passing its gate in status.
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    pub action: String,
    /// Who approved: `status.approvals[].by`, or the field managers that own the value in
    /// `spec.approvals`.
    pub by: Vec<String>,
    /// When the approving manager last wrote `spec.approvals`.
    pub given_at: Option<DateTime<Utc>>,
    /// When the controller saw the gate pass.
    pub observed_at: Option<DateTime<Utc>>,
    /// How long the gate waited, from its manual step.
    pub waited: Option<i64>,
}

/// A run, ready to print or report.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub plan: String,
    pub action: RunAction,
    pub phase: RunPhase,
    pub source_site: Option<String>,
    pub target_site: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub completed: Option<DateTime<Utc>>,
    pub rto_seconds: Option<i64>,
    pub progress: Option<String>,
    pub requested_point: String,
    pub shutdown_source: bool,
    pub cancel: bool,
    pub deleting: bool,
    /// Groups in the order they start.
    pub groups: Vec<GroupView>,
    /// Steps that belong to no group, such as cleanup.
    pub other: Vec<Step>,
    pub waits: Vec<Wait>,
    pub approvals: Vec<Approval>,
    /// The Succeeded condition's reason and message, when the run failed, was cancelled or
    /// is held.
    pub message: Option<String>,
    pub now: DateTime<Utc>,
}

impl RunView {
    /// Every step, in display order: shutdown (reverse group order), then each group.
    pub fn all_steps(&self) -> Vec<&Step> {
        let mut out = Vec::new();
        for g in self.groups.iter().rev() {
            out.extend(g.vms.iter().flat_map(|v| &v.source_steps));
            out.extend(&g.shutdown);
        }
        for g in &self.groups {
            let barrier = |k: StepKind| g.barriers.iter().filter(move |b| b.kind == Some(k));
            out.extend(&g.pre);
            out.extend(barrier(StepKind::Start));
            for v in &g.vms {
                out.extend(&v.steps);
            }
            out.extend(barrier(StepKind::Ready));
            out.extend(&g.post);
            out.extend(barrier(StepKind::Done));
        }
        out.extend(&self.other);
        out
    }

    /// The stop phase's name and site: a repoint halts copies at the target; the other
    /// actions shut the source down.
    pub fn stop_phase(&self) -> (&'static str, Option<&str>) {
        match self.action {
            RunAction::ChangeRecoveryPoint => ("Halted", self.target_site.as_deref()),
            _ => ("Source shutdown", self.source_site.as_deref()),
        }
    }

    /// Whether the run has a stop phase.
    pub fn has_shutdown(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.shutdown.is_some() || g.vms.iter().any(|v| !v.source_steps.is_empty()))
    }

    pub fn is_finished(&self) -> bool {
        self.phase.is_finished()
    }

    pub fn elapsed(&self) -> Option<i64> {
        let start = self.started?;
        Some((self.completed.unwrap_or(self.now) - start).num_seconds().max(0))
    }
}

/// Groups of a plan in startup order: each after the groups it depends on (left out, the
/// previous group), declaration order breaking ties.
pub fn startup_order(plan: &RecoveryPlan) -> Vec<String> {
    let groups = &plan.spec.groups;
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let deps: Vec<Vec<&str>> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| match &g.depends_on {
            Some(d) => d.iter().map(String::as_str).filter(|d| names.contains(d)).collect(),
            None if i > 0 => vec![names[i - 1]],
            None => vec![],
        })
        .collect();
    let mut done: Vec<String> = Vec::new();
    while done.len() < groups.len() {
        let next = (0..groups.len())
            .find(|&i| !done.iter().any(|d| d == names[i]) && deps[i].iter().all(|d| done.iter().any(|x| x == d)));
        match next {
            Some(i) => done.push(names[i].to_owned()),
            // A cycle: the plan is not valid; keep declaration order for the rest.
            None => {
                for n in &names {
                    if !done.iter().any(|d| d == n) {
                        done.push((*n).to_owned());
                    }
                }
            }
        }
    }
    done
}

/// Every manual action of a plan: (group, pre?, action).
pub fn manual_actions(plan: &RecoveryPlan) -> Vec<(&str, bool, &Action)> {
    plan.spec
        .groups
        .iter()
        .flat_map(|g| {
            g.pre
                .iter()
                .map(move |a| (g.name.as_str(), true, a))
                .chain(g.post.iter().map(move |a| (g.name.as_str(), false, a)))
        })
        .filter(|(_, _, a)| a.manual.is_some())
        .collect()
}

/// A field manager that owns a value, and the time of its managedFields entry.
pub type Owner = (String, Option<DateTime<Utc>>);

/// Who wrote each value of `spec.approvals`, from the run's managedFields: the managers
/// whose fieldsV1 own `f:spec.f:approvals.v:"<action>"`, with the time of their entry.
pub fn approval_owners(run: &RecoveryRun) -> BTreeMap<String, Vec<Owner>> {
    let mut out: BTreeMap<String, Vec<Owner>> = BTreeMap::new();
    for entry in run.managed_fields() {
        let manager = entry.manager.clone().unwrap_or_else(|| "(unknown)".into());
        let time = entry.time.as_ref().map(from_k8s);
        for action in approvals_in(entry) {
            let owners = out.entry(action).or_default();
            if !owners.iter().any(|(m, _)| *m == manager) {
                owners.push((manager.clone(), time));
            }
        }
    }
    out
}

/// The values of `spec.approvals` one managedFields entry owns.
pub fn approvals_in(entry: &ManagedFieldsEntry) -> Vec<String> {
    let Some(map) = entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:spec"))
        .and_then(|s| s.get("f:approvals"))
        .and_then(|a| a.as_object())
    else {
        return Vec::new();
    };
    map.keys()
        .filter_map(|k| k.strip_prefix("v:"))
        .filter_map(|raw| serde_json::from_str::<String>(raw).ok())
        .collect()
}

/// Gathers a run's view from the objects.
pub fn run_view(data: &RunData) -> RunView {
    let run = &data.run;
    let status = run.status.clone().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let plan = data.plan.as_ref();
    let mut order = group_order(&status, plan);
    let parts = vm_parts(data, &uid);
    let vm_group = vm_groups(plan, &parts);
    for (_, g) in &vm_group {
        if !order.contains(g) {
            order.push(g.clone());
        }
    }
    let (mut groups, other) = place_steps(&status, &order);
    for g in &mut groups {
        g.barriers.sort_by_key(|b| match b.kind {
            Some(StepKind::Start) => 0,
            Some(StepKind::Ready) => 1,
            _ => 2,
        });
        for (vm, _) in vm_group.iter().filter(|(_, group)| *group == g.name) {
            g.vms.push(vm_view(vm, parts.get(vm).copied()));
        }
    }
    // Groups with nothing to show (an action whose run has no group steps, and no VMs).
    groups.retain(|g| {
        g.shutdown.is_some()
            || !g.pre.is_empty()
            || !g.barriers.is_empty()
            || !g.vms.is_empty()
            || !g.post.is_empty()
            || g.progress.is_some()
    });
    let waits = waits(&status, &groups, plan);
    let approvals = approvals(run, &status, &groups, data.now);
    RunView {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        uid,
        plan: run.spec.plan.clone(),
        action: run.spec.action,
        phase: status.phase.unwrap_or_default(),
        source_site: status.source_site.clone(),
        target_site: status.target_site.clone(),
        started: status.start_time.as_ref().map(from_k8s),
        completed: status.completion_time.as_ref().map(from_k8s),
        rto_seconds: status.rto_seconds,
        progress: status.progress.clone(),
        requested_point: serde_json::to_value(&run.spec.recovery_point)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "Latest".into()),
        shutdown_source: run.spec.shutdown_source,
        cancel: run.spec.cancel,
        deleting: run.metadata.deletion_timestamp.is_some(),
        groups,
        other,
        waits,
        approvals,
        message: failure_message(&status),
        now: data.now,
    }
}

/// Group order: the order the run starts them in, then the plan's, then the counts'.
fn group_order(status: &RecoveryRunStatus, plan: Option<&RecoveryPlan>) -> Vec<String> {
    let started = status
        .steps
        .iter()
        .filter(|s| s.kind == Some(StepKind::Start))
        .filter_map(|s| s.group.clone());
    let planned = plan.map(startup_order).unwrap_or_default();
    let counted = status.groups.iter().map(|g| g.name.clone());
    let stepped = status.steps.iter().filter_map(|s| s.group.clone());
    let mut order: Vec<String> = Vec::new();
    for name in started.chain(planned).chain(counted).chain(stepped) {
        if !order.contains(&name) {
            order.push(name);
        }
    }
    order
}

/// Each VM's record of this run, by ProtectedVM name.
fn vm_parts<'a>(data: &'a RunData, uid: &str) -> BTreeMap<String, &'a VmRunStatus> {
    data.pvms
        .iter()
        .filter_map(|p| {
            let last = p.status.as_ref()?.last_run.as_ref()?;
            let ours = match &last.run_uid {
                Some(u) => u == uid,
                None => last.run == data.run.name_any(),
            };
            ours.then(|| (p.name_any(), last))
        })
        .collect()
}

/// The group of each VM: the plan's, else the one its steps name.
fn vm_groups(plan: Option<&RecoveryPlan>, parts: &BTreeMap<String, &VmRunStatus>) -> Vec<(String, String)> {
    let mut vm_group: Vec<(String, String)> = plan
        .map(|p| {
            p.spec
                .groups
                .iter()
                .flat_map(|g| g.vms.iter().map(|vm| (vm.clone(), g.name.clone())))
                .collect()
        })
        .unwrap_or_default();
    for (vm, last) in parts {
        if !vm_group.iter().any(|(v, _)| v == vm) {
            let group = last
                .steps
                .iter()
                .find_map(|s| s.group.clone())
                .unwrap_or_else(|| "(no group)".into());
            vm_group.push((vm.clone(), group));
        }
    }
    vm_group
}

/// The run's own steps placed in their groups, in `order`; the rest (cleanup, steps of no
/// known group) apart.
fn place_steps(status: &RecoveryRunStatus, order: &[String]) -> (Vec<GroupView>, Vec<Step>) {
    let mut groups: Vec<GroupView> = order
        .iter()
        .map(|name| GroupView {
            name: name.clone(),
            shutdown: None,
            pre: vec![],
            barriers: vec![],
            vms: vec![],
            post: vec![],
            progress: status.groups.iter().find(|p| &p.name == name).cloned(),
        })
        .collect();
    let mut other = Vec::new();
    for s in &status.steps {
        let step = Step::from_status(s);
        let group = s
            .group
            .clone()
            .or_else(|| s.id.split_once('/').map(|(g, _)| g.to_owned()))
            .and_then(|g| groups.iter().position(|x| x.name == g));
        let Some(gi) = group.filter(|_| s.id.contains('/') && !s.id.starts_with("cleanup/")) else {
            other.push(step);
            continue;
        };
        let g = &mut groups[gi];
        let rest = s.id.split_once('/').map(|(_, r)| r).unwrap_or_default();
        match s.kind {
            Some(StepKind::Shutdown) => g.shutdown = Some(step),
            Some(k) if k.is_barrier() => g.barriers.push(step),
            _ if rest.starts_with("pre/") => g.pre.push(step),
            _ if rest.starts_with("post/") => g.post.push(step),
            _ => other.push(step),
        }
    }
    (groups, other)
}

/// A VM's part, from its record of the run if it still holds one.
fn vm_view(vm: &str, part: Option<&VmRunStatus>) -> VmView {
    let mut view = VmView {
        name: vm.to_owned(),
        source_steps: vec![],
        steps: vec![],
        point: part.and_then(|p| {
            Point::of(
                p.recovery_point.as_ref(),
                p.recovery_point_consistency,
                p.recovery_point_one_instant,
            )
        }),
        replaced: part.and_then(|p| p.replaced_point.as_ref()).map(Replaced::of),
        recorded: part.is_some(),
    };
    for s in part.map(|p| p.steps.as_slice()).unwrap_or_default() {
        let step = Step::from_status(s);
        match s.kind {
            Some(StepKind::PowerOff | StepKind::CheckSource | StepKind::Halt) => view.source_steps.push(step),
            _ => view.steps.push(step),
        }
    }
    if view.point.is_none() {
        view.point = view
            .steps
            .iter()
            .find(|s| s.kind == Some(StepKind::RestoreDisks))
            .and_then(|s| s.point);
    }
    view
}

/// What the run waits for: manual gates awaiting approval and the scripts it names, with the
/// plan's instructions and timeouts.
fn waits(status: &RecoveryRunStatus, groups: &[GroupView], plan: Option<&RecoveryPlan>) -> Vec<Wait> {
    let actions: BTreeMap<(String, bool, String), &Action> = plan
        .map(|p| {
            p.spec
                .groups
                .iter()
                .flat_map(|g| {
                    g.pre
                        .iter()
                        .map(move |a| ((g.name.clone(), true, a.name.clone()), a))
                        .chain(g.post.iter().map(move |a| ((g.name.clone(), false, a.name.clone()), a)))
                })
                .collect()
        })
        .unwrap_or_default();
    let waiting: BTreeSet<&str> = status
        .waiting_for
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut waits = Vec::new();
    for g in groups {
        for (pre, list) in [(true, &g.pre), (false, &g.post)] {
            for s in list {
                let name = s.short().to_owned();
                if s.state == StepState::WaitingForApproval
                    || (waiting.contains(name.as_str()) && !s.state.is_terminal())
                {
                    let def = actions.get(&(g.name.clone(), pre, name.clone()));
                    let manual = def.and_then(|a| a.manual.as_ref());
                    waits.push(Wait {
                        action: name,
                        step: s.id.clone(),
                        since: s.started,
                        instructions: manual.map(|m| m.instructions.trim().to_owned()),
                        timeout: manual.and_then(|m| m.timeout.clone()),
                    });
                }
            }
        }
    }
    for w in waiting {
        if !waits.iter().any(|x| x.action == w) {
            waits.push(Wait {
                action: w.to_owned(),
                step: w.to_owned(),
                since: None,
                instructions: None,
                timeout: None,
            });
        }
    }
    waits
}

/// Every approval given, with who gave it (from the run's managed fields), when, and how
/// long its gate waited.
fn approvals(run: &RecoveryRun, status: &RecoveryRunStatus, groups: &[GroupView], now: DateTime<Utc>) -> Vec<Approval> {
    let owners = approval_owners(run);
    let mut names: Vec<String> = run.spec.approvals.clone();
    for a in &status.approvals {
        if !names.contains(&a.action) {
            names.push(a.action.clone());
        }
    }
    let manual_step = |action: &str| {
        groups
            .iter()
            .flat_map(|g| g.pre.iter().chain(&g.post))
            .find(|s| s.short() == action && s.kind == Some(StepKind::Manual))
    };
    names
        .into_iter()
        .map(|action| {
            let record = status.approvals.iter().find(|a| a.action == action);
            let owned = owners.get(&action).cloned().unwrap_or_default();
            let by = match record.and_then(|r| r.by.clone()) {
                Some(b) => vec![b],
                None => owned.iter().map(|(m, _)| m.clone()).collect(),
            };
            let step = manual_step(&action);
            Approval {
                given_at: owned.iter().filter_map(|(_, t)| *t).min(),
                observed_at: record.map(|r| from_k8s(&r.observed_at)),
                waited: step.and_then(|s| s.seconds(now)),
                by,
                action,
            }
        })
        .collect()
}

/// Why the run failed or stopped, or a hold the controller reports (such as a plan changed
/// under the run); not the routine progress messages.
fn failure_message(status: &RecoveryRunStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .filter(|c| {
            matches!(
                status.phase,
                Some(RunPhase::Failed | RunPhase::Cancelled | RunPhase::CleaningUp)
            ) || !matches!(c.reason.as_str(), "Running" | "WaitingForApproval" | "Succeeded")
        })
        .map(|c| format!("{}: {}", c.reason, c.message))
}

/// A duration for people: `45s`, `3m12s`, `1h05m`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// A time for people, in UTC to the second.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

#[cfg(test)]
pub mod fixtures {
    //! A finished Exchange test failover, and one waiting for approval, as fixed data.

    use super::*;
    use serde_json::{Value, json};

    pub const START: &str = "2026-03-01T10:00:00Z";

    fn at(secs: i64) -> String {
        (DateTime::parse_from_rfc3339(START).unwrap().with_timezone(&Utc) + chrono::Duration::seconds(secs))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn step(id: &str, kind: &str, state: &str, from: i64, to: Option<i64>) -> Value {
        let group = id.split('/').next().unwrap();
        let mut s =
            json!({"id": id, "group": group, "kind": kind, "state": state, "attempts": 1, "startedAt": at(from)});
        if let Some(to) = to {
            s["finishedAt"] = json!(at(to));
        }
        s
    }

    pub fn plan() -> RecoveryPlan {
        serde_yaml_ng::from_str(include_str!("../../../examples/exchange/30-recovery-plan.yaml")).unwrap()
    }

    fn vm_steps(group: &str, vm: &str, t: i64, waiting: bool) -> Vec<Value> {
        let id = |s: &str| format!("{group}/vm/{vm}/{s}");
        let mut out = vec![
            step(&id("restore-disks"), "RestoreDisks", "Succeeded", 0, Some(4)),
            step(&id("create-vm"), "CreateVm", "Succeeded", 4, Some(5)),
        ];
        out[0]["recoveryPoint"] = json!(at(-300));
        out[0]["recoveryPointConsistency"] = json!("App");
        if waiting {
            out.push(
                json!({"id": id("power-on"), "group": group, "kind": "PowerOn", "state": "Pending", "attempts": 0}),
            );
            out.push(json!({"id": id("ready"), "group": group, "kind": "VmReady", "state": "Pending", "attempts": 0}));
        } else {
            out.push(step(&id("power-on"), "PowerOn", "Succeeded", t, Some(t + 2)));
            out.push(step(&id("ready"), "VmReady", "Succeeded", t + 2, Some(t + 20)));
        }
        out
    }

    fn pvm(name: &str, group: &str, t: i64, waiting: bool) -> ProtectedVM {
        serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "metadata": {"name": name, "namespace": "contoso"},
            "spec": {"vm": {"name": name}, "primarySite": "contoso-hq", "recoverySite": "contoso-dr", "networkMapping": "hq-to-dr"},
            "status": {"phase": "Protected", "lastRun": {
                "run": "exchange-test-1", "runUid": "uid-1", "action": "TestFailover",
                "recoveryPoint": at(-300), "recoveryPointConsistency": "App", "steps": vm_steps(group, name, t, waiting)}}
        }))
        .unwrap()
    }

    /// A finished test failover with an approval given by `alice` through the plugin.
    pub fn finished() -> RunData {
        let steps = vec![
            step("identity/start", "Start", "Succeeded", 0, Some(0)),
            step("identity/ready", "Ready", "Succeeded", 22, Some(22)),
            step("identity/post/verify-ad", "Job", "Succeeded", 22, Some(40)),
            step("identity/done", "Done", "Succeeded", 40, Some(40)),
            step(
                "mailbox/pre/confirm-ad-replication",
                "Manual",
                "Succeeded",
                40,
                Some(160),
            ),
            step("mailbox/start", "Start", "Succeeded", 160, Some(160)),
            step("mailbox/ready", "Ready", "Succeeded", 182, Some(182)),
            step("mailbox/post/mount-databases", "Webhook", "Succeeded", 182, Some(185)),
            step("mailbox/done", "Done", "Succeeded", 185, Some(185)),
            step("client-access/start", "Start", "Succeeded", 185, Some(185)),
            step("client-access/ready", "Ready", "Succeeded", 207, Some(207)),
            step("client-access/done", "Done", "Succeeded", 207, Some(207)),
        ];
        let run: RecoveryRun = serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
            "metadata": {"name": "exchange-test-1", "namespace": "contoso", "uid": "uid-1",
                "managedFields": [
                    {"manager": "kubectl-coldsite", "operation": "Update", "apiVersion": "coldsite.io/v1alpha1",
                     "time": at(-5), "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {".": {}, "f:plan": {}, "f:action": {}}}},
                    {"manager": "kubectl-coldsite:alice", "operation": "Apply", "apiVersion": "coldsite.io/v1alpha1",
                     "time": at(150), "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:approvals": {"v:\"confirm-ad-replication\"": {}}}}}
                ]},
            "spec": {"plan": "exchange", "action": "TestFailover", "approvals": ["confirm-ad-replication"]},
            "status": {"phase": "Succeeded", "sourceSite": "contoso-hq", "targetSite": "contoso-dr",
                "startTime": at(0), "completionTime": at(207), "rtoSeconds": 207, "progress": "26/26",
                "steps": steps,
                "groups": [
                    {"name": "identity", "total": 1, "succeeded": 1},
                    {"name": "mailbox", "total": 1, "succeeded": 1},
                    {"name": "client-access", "total": 1, "succeeded": 1}],
                "approvals": [{"action": "confirm-ad-replication", "observedAt": at(160)}]}
        }))
        .unwrap();
        RunData {
            run,
            plan: Some(plan()),
            pvms: vec![
                pvm("dc01", "identity", 0, false),
                pvm("exch-mbx01", "mailbox", 160, false),
                pvm("exch-cas01", "client-access", 185, false),
            ],
            now: DateTime::parse_from_rfc3339(START).unwrap().with_timezone(&Utc) + chrono::Duration::seconds(600),
        }
    }

    /// The same run as a repoint: each VM's record names the point its failover restored.
    pub fn repointed() -> RunData {
        let mut d = finished();
        d.run.spec.action = coldsite_api::RunAction::ChangeRecoveryPoint;
        for p in &mut d.pvms {
            let last = p.status.as_mut().and_then(|s| s.last_run.as_mut()).unwrap();
            last.action = Some(coldsite_api::RunAction::ChangeRecoveryPoint);
            last.replaced_point = Some(coldsite_api::protected_vm::ReplacedPoint {
                run: "exchange-failover-1".into(),
                time: serde_json::from_value(json!(at(-60))).unwrap(),
                consistency: Some(Consistency::Crash),
            });
        }
        d
    }

    /// The same run, 100 seconds into its wait at the mailbox gate.
    pub fn waiting() -> RunData {
        let mut d = finished();
        let status = d.run.status.as_mut().unwrap();
        status.phase = Some(RunPhase::WaitingForApproval);
        status.completion_time = None;
        status.rto_seconds = None;
        status.approvals.clear();
        status.waiting_for = Some("confirm-ad-replication".into());
        status.progress = Some("12/26".into());
        status.steps.truncate(5);
        status.steps[4].state = StepState::WaitingForApproval;
        status.steps[4].finished_at = None;
        status.groups[1].succeeded = 0;
        status.groups[1].running = 1;
        status.groups[2].succeeded = 0;
        status.groups[2].pending = 1;
        d.run.spec.approvals.clear();
        d.run.metadata.managed_fields.as_mut().unwrap().truncate(1);
        d.pvms[1] = pvm("exch-mbx01", "mailbox", 0, true);
        d.pvms.truncate(2);
        d.now = DateTime::parse_from_rfc3339(START).unwrap().with_timezone(&Utc) + chrono::Duration::seconds(140);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn groups_come_in_startup_order_with_their_vms() {
        let v = run_view(&finished());
        let names: Vec<&str> = v.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["identity", "mailbox", "client-access"]);
        assert_eq!(v.groups[1].vms[0].name, "exch-mbx01");
        assert_eq!(v.groups[1].pre[0].id, "mailbox/pre/confirm-ad-replication");
        assert!(v.groups.iter().all(|g| g.state() == StepState::Succeeded));
        assert_eq!(v.all_steps().len(), 12 + 3 * 4);
        assert!(v.groups[0].vms[0].point.is_some());
    }

    #[test]
    fn the_approver_comes_from_managed_fields() {
        let v = run_view(&finished());
        assert_eq!(v.approvals.len(), 1);
        let a = &v.approvals[0];
        assert_eq!(a.by, ["kubectl-coldsite:alice"]);
        assert_eq!(a.waited, Some(120));
        assert!(a.given_at.is_some() && a.observed_at.is_some());
    }

    #[test]
    fn a_wait_carries_the_instructions() {
        let v = run_view(&waiting());
        assert_eq!(v.waits.len(), 1);
        let w = &v.waits[0];
        assert_eq!(w.action, "confirm-ad-replication");
        assert!(w.instructions.as_deref().unwrap().contains("FSMO"));
        assert_eq!(w.timeout.as_deref(), Some("2h"));
        assert_eq!(v.groups[1].state(), StepState::WaitingForApproval);
        // client-access has not started: the plan still lists it.
        assert_eq!(v.groups.len(), 3);
        // exch-mbx01's disks are ready, but it waits for the gate: pending, not running.
        assert_eq!(v.groups[1].vms[0].state(), StepState::Pending);
    }

    #[test]
    fn startup_order_follows_depends_on() {
        let mut p = plan();
        p.spec.groups[0].depends_on = Some(vec!["mailbox".into()]);
        p.spec.groups[1].depends_on = Some(vec![]);
        assert_eq!(startup_order(&p), ["mailbox", "identity", "client-access"]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(75), "1m15s");
        assert_eq!(duration(3 * 3600 + 65), "3h01m");
    }
}
