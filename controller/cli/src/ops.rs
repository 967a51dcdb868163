//! The commands that talk to the management cluster: status (and its watch), approve, the
//! run-creating commands, cleanup and report. The rendering they print is in `tree` and
//! `report`; this is the I/O around it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use coldsite_api::common::find_condition;
use coldsite_api::protected_vm::ProtectedVMStatus;
use coldsite_api::recovery_run::{DISCARD_PARTIAL, RecoveryPointSelector, RunPhase};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RecoveryRunSpec, RunAction};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::cluster::{Cluster, field_manager};
use crate::report;
use crate::tree::{self, Style};
use crate::view::{self, RunData, duration, manual_actions};

/// What `status` was asked about.
pub enum Target {
    Run(String),
    Plan(String),
    Either(String),
}

impl Target {
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        let Some((kind, name)) = s.split_once('/') else {
            return Ok(Target::Either(s.to_owned()));
        };
        let kind = kind.split('.').next().unwrap_or(kind).to_ascii_lowercase();
        match kind.as_str() {
            "rrun" | "recoveryrun" | "recoveryruns" | "run" => Ok(Target::Run(name.to_owned())),
            "rplan" | "recoveryplan" | "recoveryplans" | "plan" => Ok(Target::Plan(name.to_owned())),
            other => bail!("{other:?} is not a kind `status` shows; use rrun/NAME or rplan/NAME"),
        }
    }
}

fn style() -> Style {
    Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

async fn get_run(c: &Cluster, name: &str) -> anyhow::Result<RecoveryRun> {
    Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading RecoveryRun {}/{name}", c.namespace))?
        .with_context(|| format!("no RecoveryRun {name} in namespace {}", c.namespace))
}

async fn get_plan(c: &Cluster, name: &str) -> anyhow::Result<RecoveryPlan> {
    Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading RecoveryPlan {}/{name}", c.namespace))?
        .with_context(|| format!("no RecoveryPlan {name} in namespace {}", c.namespace))
}

async fn plan_pvms(
    c: &Cluster,
    plan: Option<&RecoveryPlan>,
    run_uid: Option<&str>,
) -> anyhow::Result<Vec<ProtectedVM>> {
    let all = Api::<ProtectedVM>::namespaced(c.client.clone(), &c.namespace)
        .list(&ListParams::default())
        .await
        .context("listing ProtectedVMs")?;
    Ok(all
        .items
        .into_iter()
        .filter(|p| {
            let in_plan =
                plan.is_some_and(|pl| pl.spec.groups.iter().any(|g| g.vms.iter().any(|v| *v == p.name_any())));
            let in_run = run_uid.is_some_and(|u| {
                p.status
                    .as_ref()
                    .and_then(|s| s.last_run.as_ref())
                    .and_then(|l| l.run_uid.as_deref())
                    == Some(u)
            });
            in_plan || in_run
        })
        .collect())
}

/// A run with its plan and ProtectedVMs, read now.
pub async fn load_run(c: &Cluster, name: &str) -> anyhow::Result<RunData> {
    let run = get_run(c, name).await?;
    let plan = Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace)
        .get_opt(&run.spec.plan)
        .await?;
    let pvms = plan_pvms(c, plan.as_ref(), run.uid().as_deref()).await?;
    Ok(RunData {
        run,
        plan,
        pvms,
        now: Utc::now(),
    })
}

/// `status`: prints once, or follows with `--watch`. Returns whether all is well: a watched
/// run that ends other than Succeeded is not.
pub async fn status(c: &Cluster, target: &str, watch: bool) -> anyhow::Result<bool> {
    let target = Target::parse(target)?;
    let runs = Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace);
    let plans = Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace);
    let (is_run, name) = match target {
        Target::Run(n) => (true, n),
        Target::Plan(n) => (false, n),
        Target::Either(n) => {
            if runs.get_opt(&n).await?.is_some() {
                (true, n)
            } else if plans.get_opt(&n).await?.is_some() {
                (false, n)
            } else {
                bail!(
                    "no RecoveryRun or RecoveryPlan named {n} in namespace {} (kubectl get rrun,rplan -n {} lists them)",
                    c.namespace,
                    c.namespace
                );
            }
        }
    };
    if is_run {
        if watch {
            return follow_run(c, &name).await;
        }
        let data = load_run(c, &name).await?;
        print!("{}", tree::render_run(&view::run_view(&data), style()));
        Ok(true)
    } else {
        if watch {
            return follow_plan(c, &name).await;
        }
        let plan = get_plan(c, &name).await?;
        let pvms = plan_pvms(c, Some(&plan), None).await?;
        print!("{}", tree::render_plan(&plan, &pvms, Utc::now(), style()));
        Ok(true)
    }
}

/// Redraws a frame: on a terminal, in place; otherwise appended, separated by a rule.
struct Screen {
    tty: bool,
    last: Option<String>,
    drawn_at: Option<Instant>,
}

impl Screen {
    const MIN_INTERVAL: Duration = Duration::from_millis(250);

    fn new() -> Self {
        Screen {
            tty: std::io::stdout().is_terminal(),
            last: None,
            drawn_at: None,
        }
    }

    fn due(&self) -> bool {
        self.drawn_at.is_none_or(|t| t.elapsed() >= Self::MIN_INTERVAL)
    }

    fn draw(&mut self, frame: String) {
        if self.last.as_deref() == Some(frame.as_str()) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\x1b[H\x1b[2J{frame}");
        } else {
            if self.last.is_some() {
                let _ = writeln!(out, "---");
            }
            let _ = write!(out, "{frame}");
        }
        let _ = out.flush();
        self.last = Some(frame);
        self.drawn_at = Some(Instant::now());
    }
}

enum Change {
    Run(watcher::Event<RecoveryRun>),
    Pvm(watcher::Event<ProtectedVM>),
    Plan(watcher::Event<RecoveryPlan>),
}

fn apply_event<K: ResourceExt>(map: &mut BTreeMap<String, K>, e: watcher::Event<K>) {
    match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
            map.insert(o.name_any(), o);
        }
        watcher::Event::Delete(o) => {
            map.remove(&o.name_any());
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Every change to the namespace's ProtectedVMs, whose status holds each VM's steps.
fn pvm_changes(c: &Cluster) -> impl futures::Stream<Item = Result<Change, watcher::Error>> + use<> {
    watcher(
        Api::<ProtectedVM>::namespaced(c.client.clone(), &c.namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Change::Pvm))
}

/// Follows a run until it finishes: watches the run, its plan and the ProtectedVMs, and
/// redraws at most four times a second (on a terminal, also each second for the clocks).
pub async fn follow_run(c: &Cluster, name: &str) -> anyhow::Result<bool> {
    let first = get_run(c, name).await?;
    let plan_name = first.spec.plan.clone();
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let runs = watcher(
        Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace),
        by_name(name),
    )
    .default_backoff()
    .map(|e| e.map(Change::Run));
    let plans = watcher(
        Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace),
        by_name(&plan_name),
    )
    .default_backoff()
    .map(|e| e.map(Change::Plan));
    let pvms = pvm_changes(c);
    let mut changes = Box::pin(stream::select(runs, stream::select(plans, pvms)));

    let mut run: Option<RecoveryRun> = Some(first);
    let mut run_map: BTreeMap<String, RecoveryRun> = BTreeMap::new();
    let mut plan_map: BTreeMap<String, RecoveryPlan> = BTreeMap::new();
    let mut pvm_map: BTreeMap<String, ProtectedVM> = BTreeMap::new();
    let mut screen = Screen::new();
    let mut dirty = true;
    let mut seen_run = false;
    let st = style();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut last_tick_draw = Instant::now();
    loop {
        tokio::select! {
            change = changes.next() => {
                match change {
                    Some(Ok(Change::Run(e))) => {
                        let deleted = matches!(e, watcher::Event::Delete(_));
                        apply_event(&mut run_map, e);
                        if let Some(r) = run_map.get(name) {
                            seen_run = true;
                            run = Some(r.clone());
                        } else if deleted || seen_run {
                            bail!("RecoveryRun {name} was deleted while being watched");
                        }
                    }
                    Some(Ok(Change::Plan(e))) => apply_event(&mut plan_map, e),
                    Some(Ok(Change::Pvm(e))) => apply_event(&mut pvm_map, e),
                    Some(Err(e)) => eprintln!("kubectl-coldsite: watch: {e} (retrying)"),
                    None => bail!("the watch ended"),
                }
                dirty = true;
            }
            _ = ticker.tick() => {
                if screen.tty && last_tick_draw.elapsed() >= Duration::from_secs(1) {
                    dirty = true;
                    last_tick_draw = Instant::now();
                }
            }
        }
        if !dirty || !screen.due() {
            continue;
        }
        let Some(r) = run.clone() else { continue };
        let uid = r.uid();
        let plan = plan_map.get(&plan_name).cloned();
        let pvms: Vec<ProtectedVM> = pvm_map
            .values()
            .filter(|p| {
                plan.as_ref()
                    .is_some_and(|pl| pl.spec.groups.iter().any(|g| g.vms.contains(&p.name_any())))
                    || p.status
                        .as_ref()
                        .and_then(|s| s.last_run.as_ref())
                        .is_some_and(|l| l.run_uid.is_some() && l.run_uid == uid)
            })
            .cloned()
            .collect();
        let data = RunData {
            run: r,
            plan,
            pvms,
            now: Utc::now(),
        };
        let v = view::run_view(&data);
        screen.draw(tree::render_run(&v, st));
        dirty = false;
        if v.is_finished() {
            // Let ProtectedVMs catch up with their last steps before the final frame.
            let settle = tokio::time::sleep(Duration::from_millis(1500));
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(Change::Pvm(e))) => apply_event(&mut pvm_map, e),
                        Some(Ok(Change::Plan(e))) => apply_event(&mut plan_map, e),
                        Some(Ok(Change::Run(e))) => apply_event(&mut run_map, e),
                        _ => {}
                    },
                    _ = &mut settle => break,
                }
            }
            let data = load_run(c, name).await.unwrap_or(data);
            let v = view::run_view(&data);
            screen.draw(tree::render_run(&v, st));
            eprintln!(
                "RecoveryRun {name} {:?}{}",
                v.phase,
                v.rto_seconds
                    .map(|r| format!(", RTO {}", duration(r)))
                    .unwrap_or_default()
            );
            return Ok(v.phase == RunPhase::Succeeded);
        }
    }
}

/// Follows a plan until interrupted.
async fn follow_plan(c: &Cluster, name: &str) -> anyhow::Result<bool> {
    let plans = watcher(
        Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .map(|e| e.map(Change::Plan));
    let pvms = pvm_changes(c);
    let mut changes = Box::pin(stream::select(plans, pvms));
    let mut plan_map = BTreeMap::new();
    let mut pvm_map: BTreeMap<String, ProtectedVM> = BTreeMap::new();
    let mut screen = Screen::new();
    let st = style();
    let mut dirty = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            change = changes.next() => {
                match change {
                    Some(Ok(Change::Plan(e))) => apply_event(&mut plan_map, e),
                    Some(Ok(Change::Pvm(e))) => apply_event(&mut pvm_map, e),
                    Some(Ok(Change::Run(_))) => {}
                    Some(Err(e)) => eprintln!("kubectl-coldsite: watch: {e} (retrying)"),
                    None => bail!("the watch ended"),
                }
                dirty = true;
            }
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(true),
        }
        if dirty && screen.due() {
            let Some(plan) = plan_map.get(name) else { continue };
            let pvms: Vec<ProtectedVM> = pvm_map.values().cloned().collect();
            screen.draw(tree::render_plan(plan, &pvms, Utc::now(), st));
            dirty = false;
        }
    }
}

/// `approve`: adds ACTION to the run's spec.approvals by server-side apply, under a field
/// manager that names the person, so the approval has an owner.
pub async fn approve(c: &Cluster, run_name: &str, action: &str, manager: Option<String>) -> anyhow::Result<bool> {
    let run = get_run(c, run_name).await?;
    let phase = run.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if phase.is_finished() {
        bail!("RecoveryRun {run_name} has finished ({phase:?}): there is nothing left to approve");
    }
    if run.metadata.deletion_timestamp.is_some() {
        bail!("RecoveryRun {run_name} is being deleted: there is nothing left to approve");
    }
    let plan = get_plan(c, &run.spec.plan).await?;
    let manual = manual_actions(&plan);
    let Some((group, pre, def)) = manual.iter().find(|(_, _, a)| a.name == action) else {
        let names: Vec<&str> = manual.iter().map(|(_, _, a)| a.name.as_str()).collect();
        if names.is_empty() {
            bail!(
                "{action:?} is not a manual action of RecoveryPlan {}: the plan has no manual actions",
                plan.name_any()
            );
        }
        bail!(
            "{action:?} is not a manual action of RecoveryPlan {}; its manual actions are: {}",
            plan.name_any(),
            names.join(", ")
        );
    };
    if !def.runs_in(run.spec.action) {
        bail!(
            "{action:?} does not run in a {} (its `when` is {:?}): there is nothing to approve",
            run.spec.action,
            def.when
        );
    }
    let owners = view::approval_owners(&run);
    if run.spec.approvals.iter().any(|a| a == action) {
        let by = owners
            .get(action)
            .map(|o| o.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "someone".into());
        println!("{action} was already approved in RecoveryRun {run_name} (by {by}); nothing to do");
        return Ok(true);
    }
    let manager = match manager {
        Some(m) => m,
        None => field_manager(&c.client).await,
    };
    // Server-side apply owns a set: send every approval this manager applied before, plus
    // this one, so none of ours is dropped.
    let mut mine: Vec<String> = run
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager.as_str()) && m.operation.as_deref() == Some("Apply"))
        .flat_map(view::approvals_in)
        .collect();
    mine.sort();
    mine.dedup();
    mine.push(action.to_owned());
    let patch = json!({
        "apiVersion": coldsite_api::API_VERSION,
        "kind": "RecoveryRun",
        "metadata": {"name": run_name, "namespace": c.namespace},
        "spec": {"approvals": mine},
    });
    Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace)
        .patch(run_name, &PatchParams::apply(&manager), &Patch::Apply(&patch))
        .await
        .with_context(|| format!("approving {action} in RecoveryRun {run_name}"))?;
    let waiting = run
        .status
        .as_ref()
        .and_then(|s| s.waiting_for.as_deref())
        .is_some_and(|w| w.split(',').any(|x| x.trim() == action));
    println!(
        "Approved {action} ({group}/{}/{action}) in RecoveryRun {run_name} as {manager}.",
        if *pre { "pre" } else { "post" }
    );
    if waiting {
        println!("The run was waiting for it and goes on now.");
    } else {
        println!("The run is not waiting for it yet: the gate will pass as soon as the run reaches it.");
    }
    Ok(true)
}

/// What a run-creating command was asked for.
pub struct NewRun {
    /// The command's word, used in the generated name: test, failover, planned…
    pub verb: &'static str,
    pub action: RunAction,
    pub plan: String,
    pub recovery_point: Option<String>,
    pub shutdown_source: bool,
    pub approvals: Vec<String>,
    pub name: Option<String>,
    pub dry_run: bool,
    pub force: bool,
    /// Declare the source site down (`spec.sourceDown`).
    pub source_down: bool,
    pub wait: bool,
    pub field_manager: Option<String>,
}

/// `<plan>-<verb>-<yyyymmdd-hhmmss>`, with the plan cut so the name stays a DNS label.
pub fn generated_name(plan: &str, verb: &str, now: chrono::DateTime<Utc>) -> String {
    let suffix = format!("-{verb}-{}", now.format("%Y%m%d-%H%M%S"));
    let room = 63usize.saturating_sub(suffix.len());
    let mut head: String = plan.chars().take(room).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// Why a plan is not fit for an action, if it is not. `taken_over`: VMs an earlier run
/// already moved, which a retry takes as done; the plan cannot be Ready then, and each VM
/// still to move must be instead.
pub fn refusal(plan: &RecoveryPlan, pvms: &[ProtectedVM], action: RunAction, taken_over: &[String]) -> Option<String> {
    let name = plan.name_any();
    let conds = plan
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let describe = |t: &str| match find_condition(conds, t) {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{} ({}: {})", c.status, c.reason, c.message)),
        None => Some("not reported yet (is the controller running?)".into()),
    };
    if let Some(why) = describe("Valid") {
        return Some(format!(
            "RecoveryPlan {name} is not Valid: {why}. Fix the plan first (`kubectl coldsite status rplan/{name}` shows what is wrong)."
        ));
    }
    // Commit, Reprotect and a repoint follow a failover, when the plan cannot be Ready: its
    // VMs no longer replicate. The rest recover VMs and need every VM protected within its RPO.
    let needs_ready = !matches!(
        action,
        RunAction::Commit | RunAction::Reprotect | RunAction::ChangeRecoveryPoint
    );
    if needs_ready && !taken_over.is_empty() {
        let unready: Vec<String> = pvms
            .iter()
            .filter(|p| !taken_over.contains(&p.name_any()))
            .filter_map(|p| {
                let conds = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                match find_condition(conds, "Ready") {
                    Some(c) if c.status == "True" => None,
                    Some(c) => Some(format!("{} ({}: {})", p.name_any(), c.reason, c.message)),
                    None => Some(format!("{} (not reported yet)", p.name_any())),
                }
            })
            .collect();
        return (!unready.is_empty()).then(|| {
            format!(
                "the VMs of RecoveryPlan {name} still to move are not all Ready: {}",
                unready.join("; ")
            )
        });
    }
    if needs_ready && let Some(why) = describe("Ready") {
        let hint = if action == RunAction::Failover {
            " In a real disaster the primary may be gone and this is expected: pass --force to fail over from the recovery points that exist."
        } else {
            " Wait until every VM is protected within its RPO (`kubectl coldsite status rplan/NAME`)."
        };
        return Some(format!(
            "RecoveryPlan {name} is not Ready: {why}.{}",
            hint.replace("NAME", &name)
        ));
    }
    None
}

/// Whether the action fits the plan's VMs where they stand, as the controller decides: `Ok`
/// with the VMs an earlier run already moved that way (a retry takes them over), or each VM
/// that does not fit, with its state and the command that fits. VMs a run holds are left to
/// the in-progress check.
pub fn fit(plan: &RecoveryPlan, pvms: &[ProtectedVM], action: RunAction) -> Result<Vec<String>, String> {
    let names = coldsite_engine::lifecycle::Names {
        plan: &plan.name_any(),
        primary: &plan.spec.primary_site,
        recovery: &plan.spec.recovery_site,
    };
    let empty = ProtectedVMStatus::default();
    let free: Vec<(String, &ProtectedVMStatus)> = pvms
        .iter()
        .filter(|p| {
            plan.spec.groups.iter().any(|g| g.vms.contains(&p.name_any()))
                && p.status
                    .as_ref()
                    .and_then(|s| s.last_run.as_ref())
                    .is_none_or(|l| l.phase.is_some())
        })
        .map(|p| (p.name_any(), p.status.as_ref().unwrap_or(&empty)))
        .collect();
    if free.is_empty() {
        return Ok(Vec::new());
    }
    coldsite_engine::standing::admit(action, free.iter().map(|(n, s)| (n.as_str(), *s)), &names, false)
        .map(|a| a.done)
        .map_err(|refusals| refusals.join("\n"))
}

/// The RecoveryRun a command creates.
pub fn new_run(namespace: &str, name: &str, req: &NewRun) -> anyhow::Result<RecoveryRun> {
    let recovery_point: RecoveryPointSelector = match &req.recovery_point {
        Some(p) => serde_json::from_value(serde_json::Value::String(p.clone()))
            .map_err(|e| anyhow::anyhow!("--recovery-point: {e}"))?,
        None => RecoveryPointSelector::Latest,
    };
    let mut run = RecoveryRun::new(
        name,
        RecoveryRunSpec {
            plan: req.plan.clone(),
            action: req.action,
            recovery_point,
            shutdown_source: req.shutdown_source,
            approvals: req.approvals.clone(),
            cancel: false,
            source_down: req.source_down,
        },
    );
    run.metadata.namespace = Some(namespace.to_owned());
    run.metadata.labels = Some(
        [
            ("coldsite.io/plan".to_owned(), req.plan.clone()),
            ("app.kubernetes.io/managed-by".to_owned(), "kubectl-coldsite".to_owned()),
        ]
        .into(),
    );
    Ok(run)
}

/// `test`, `failover`, `planned`, `commit`, `reprotect`, `failback`.
pub async fn create_run(c: &Cluster, req: NewRun) -> anyhow::Result<bool> {
    let plan = get_plan(c, &req.plan).await?;
    let manual = manual_actions(&plan);
    for a in &req.approvals {
        match manual.iter().find(|(_, _, m)| &m.name == a) {
            None => {
                let names: Vec<&str> = manual.iter().map(|(_, _, m)| m.name.as_str()).collect();
                bail!(
                    "--approve {a}: not a manual action of RecoveryPlan {}; its manual actions are: {}",
                    req.plan,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            }
            Some((_, _, m)) if !m.runs_in(req.action) => {
                eprintln!("note: {a} does not run in a {}; approving it has no effect", req.action)
            }
            _ => {}
        }
    }
    let pvms = plan_pvms(c, Some(&plan), None).await?;
    // The plan's validity and readiness first (--force overrides them), then each VM's state
    // (nothing overrides that: the controller would refuse the run).
    let fitted = fit(&plan, &pvms, req.action);
    let taken_over = fitted.clone().unwrap_or_default();
    if let Some(why) = refusal(&plan, &pvms, req.action, &taken_over) {
        if req.force {
            eprintln!("warning: {why}\nwarning: going ahead because of --force");
        } else {
            bail!(
                "refusing to start a {}: {why}\nPass --force to start it anyway.",
                req.action
            );
        }
    }
    if let Err(why) = fitted {
        bail!("refusing to start a {}:\n{why}", req.action);
    }
    if !taken_over.is_empty() {
        eprintln!(
            "note: an earlier run already moved {}; this {} takes them over as done and moves the rest",
            taken_over.join(", "),
            req.action
        );
    }
    let runs = Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace);
    let all_runs = runs.list(&ListParams::default()).await?.items;
    let active: Vec<String> = all_runs
        .iter()
        .filter(|r| r.spec.plan == req.plan)
        .filter(|r| {
            !r.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(RunPhase::is_finished)
        })
        .map(|r| r.name_any())
        .collect();
    if !active.is_empty() && !req.dry_run {
        let why = format!(
            "RecoveryRun(s) of plan {} still in progress: {}",
            req.plan,
            active.join(", ")
        );
        if req.force {
            eprintln!("warning: {why}; going ahead because of --force");
        } else {
            bail!(
                "refusing to start a {}: {why}. Wait for it (kubectl coldsite status {} --watch), or pass --force.",
                req.action,
                active[0]
            );
        }
    }
    // Test copies live in the recovery site's test namespace under the VMs' names: a test
    // that was not cleaned up still holds them, and a new test would collide with it.
    if req.action == RunAction::TestFailover {
        let left: Vec<String> = all_runs
            .iter()
            .filter(|r| r.spec.plan == req.plan && r.spec.action == RunAction::TestFailover)
            .filter(|r| r.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some())
            .filter(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(RunPhase::is_finished)
            })
            .map(|r| r.name_any())
            .collect();
        if !left.is_empty() && !req.dry_run {
            let why = format!(
                "the earlier test failover {} of plan {} has not been cleaned up: its test copies still exist, \
                 and a new test would collide with them",
                left.join(", "),
                req.plan
            );
            if req.force {
                eprintln!("warning: {why}; going ahead because of --force");
            } else {
                bail!(
                    "refusing to start a TestFailover: {why}. Report it if needed (kubectl coldsite report {}), \
                     then clean it up (kubectl coldsite cleanup {}), or pass --force.",
                    left[0],
                    left[0]
                );
            }
        }
    }
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| generated_name(&req.plan, req.verb, Utc::now()));
    let run = new_run(&c.namespace, &name, &req)?;
    if req.dry_run {
        let mut v = serde_json::to_value(&run)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        print!("{}", serde_yaml_ng::to_string(&v)?);
        return Ok(true);
    }
    let manager = match &req.field_manager {
        Some(m) => m.clone(),
        None => field_manager(&c.client).await,
    };
    let params = PostParams {
        field_manager: Some(manager),
        ..PostParams::default()
    };
    runs.create(&params, &run)
        .await
        .with_context(|| format!("creating RecoveryRun {name}"))?;
    println!(
        "recoveryrun.coldsite.io/{name} created: {} of plan {}",
        req.action, req.plan
    );
    if req.wait {
        return follow_run(c, &name).await;
    }
    println!(
        "Follow it with: kubectl coldsite status {name} --watch -n {}",
        c.namespace
    );
    Ok(true)
}

/// Asks the controller to discard what a failover that ended half-way left behind, when
/// the run is one.
async fn mark_discard_partial(runs: &Api<RecoveryRun>, run: &RecoveryRun, phase: RunPhase) -> anyhow::Result<()> {
    let name = run.name_any();
    let moving = matches!(
        run.spec.action,
        RunAction::PlannedFailover | RunAction::Failover | RunAction::Failback
    );
    if !moving {
        bail!(
            "--discard-partial applies to a failover or failback; RecoveryRun {name} is a {}",
            run.spec.action
        );
    }
    if !matches!(phase, RunPhase::Failed | RunPhase::Cancelled) {
        bail!(
            "--discard-partial applies to a run that failed or was cancelled; RecoveryRun {name} is {phase:?}{}",
            if phase.is_finished() {
                ""
            } else {
                " (cancel it first, and wait until it is Cancelled)"
            }
        );
    }
    let patch = serde_json::json!({"metadata": {"annotations": {DISCARD_PARTIAL: "true"}}});
    runs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("marking RecoveryRun {name} for --discard-partial"))?;
    Ok(())
}

/// How `cleanup` goes about it.
pub struct CleanupOptions {
    /// Delete a run other than a test while it is in progress.
    pub force: bool,
    /// Remove what a failover that ended half-way left for the VMs it did not move.
    pub discard_partial: bool,
    pub wait: bool,
    pub timeout: Duration,
}

/// `cleanup`: deletes a run and waits until it is gone, saying what happens meanwhile.
pub async fn cleanup(c: &Cluster, name: &str, how: CleanupOptions) -> anyhow::Result<bool> {
    let CleanupOptions {
        force,
        discard_partial,
        wait,
        timeout,
    } = how;
    let runs = Api::<RecoveryRun>::namespaced(c.client.clone(), &c.namespace);
    let run = get_run(c, name).await?;
    let phase = run.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    let test = run.spec.action == RunAction::TestFailover;
    let target = run
        .status
        .as_ref()
        .and_then(|s| s.target_site.clone())
        .unwrap_or_else(|| "the recovery site".into());
    if discard_partial {
        mark_discard_partial(&runs, &run, phase).await?;
        println!(
            "RecoveryRun {name} ({phase:?}): deleting it removes what it left at {target} for the VMs it did not \
             move (their restored disks and halted copies); the VMs it moved stay where they run."
        );
    } else if !test {
        if !phase.is_finished() && !force {
            bail!(
                "RecoveryRun {name} is a {} and still {phase:?}. Deleting it would abandon the recovery half-way.\n\
                 Cancel it first (kubectl patch rrun {name} -n {} --type merge -p '{{\"spec\":{{\"cancel\":true}}}}'), \
                 or pass --force.",
                run.spec.action,
                c.namespace
            );
        }
        println!(
            "RecoveryRun {name} is a {}: deleting it removes only the record. What it did stays: \
             the VMs it recovered at {target} and the protection state of its ProtectedVMs are not touched.",
            run.spec.action
        );
    } else {
        println!(
            "RecoveryRun {name} is a TestFailover ({phase:?}): deleting it removes everything the test created \
             at {target} (VMs, restored disks, snapshots, script Jobs); the controller's finalizer holds the run until that is done."
        );
    }
    let started = Instant::now();
    let since = Utc::now() - chrono::Duration::seconds(2);
    runs.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting RecoveryRun {name}"))?;
    println!(
        "Deleted; waiting for it to go{}.",
        if test { " while the test is cleaned up" } else { "" }
    );
    if !wait {
        return Ok(true);
    }
    let events = Api::<CoreEvent>::namespaced(c.client.clone(), &c.namespace);
    let uid = run.uid();
    let mut seen = std::collections::BTreeSet::new();
    let mut said_finalizer = false;
    loop {
        // What the controller reports about the run from now on: cleanup progress, failures.
        if let Ok(list) = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
        {
            let when = |e: &CoreEvent| {
                e.event_time
                    .as_ref()
                    .map(|t| {
                        coldsite_engine::time::from_k8s(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0))
                    })
                    .or_else(|| e.last_timestamp.as_ref().map(coldsite_engine::time::from_k8s))
                    .or_else(|| {
                        e.metadata
                            .creation_timestamp
                            .as_ref()
                            .map(coldsite_engine::time::from_k8s)
                    })
            };
            let mut items: Vec<CoreEvent> = list
                .items
                .into_iter()
                .filter(|e| uid.is_none() || e.involved_object.uid == uid)
                .filter(|e| when(e).is_some_and(|t| t >= since))
                .collect();
            items.sort_by_key(|e| when(e));
            for e in items {
                if seen.insert(e.metadata.name.clone().unwrap_or_default()) {
                    println!(
                        "  {} {}: {}",
                        e.type_.unwrap_or_default(),
                        e.reason.unwrap_or_default(),
                        e.message.unwrap_or_default()
                    );
                }
            }
        }
        match runs.get_opt(name).await? {
            None => {
                println!(
                    "RecoveryRun {name} is gone ({}){}.",
                    duration(started.elapsed().as_secs() as i64),
                    if test { "; nothing the test created remains" } else { "" }
                );
                return Ok(true);
            }
            Some(r) => {
                let finalizers = r.finalizers().to_vec();
                if !said_finalizer && !finalizers.is_empty() {
                    println!("  waiting for finalizer(s) {}", finalizers.join(", "));
                    said_finalizer = true;
                }
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "RecoveryRun {name} is still there after {}: its finalizer has not finished. \
                 Check the controller's logs and Events (kubectl describe rrun {name} -n {}).",
                duration(timeout.as_secs() as i64),
                c.namespace
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Markdown,
}

/// `report`: the run as HTML or Markdown, to a file or stdout.
pub async fn report(c: &Cluster, name: &str, format: Format, output: Option<PathBuf>) -> anyhow::Result<bool> {
    let data = load_run(c, name).await?;
    let v = view::run_view(&data);
    let text = match format {
        Format::Html => report::html(&v),
        Format::Markdown => report::markdown(&v),
    };
    match output {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({} report of RecoveryRun {name}: {:?}, {} steps)",
                path.display(),
                match format {
                    Format::Html => "HTML",
                    Format::Markdown => "Markdown",
                },
                v.phase,
                v.all_steps().len()
            );
        }
        _ => print!("{text}"),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_generated_from_plan_verb_and_time() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(generated_name("exchange", "test", t), "exchange-test-20260301-100405");
        let long = "a".repeat(80);
        let n = generated_name(&long, "failback", t);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-failback-20260301-100405"));
    }

    #[test]
    fn targets_parse_like_kubectl() {
        assert!(matches!(Target::parse("rrun/x").unwrap(), Target::Run(n) if n == "x"));
        assert!(matches!(Target::parse("recoveryplans.coldsite.io/p").unwrap(), Target::Plan(n) if n == "p"));
        assert!(matches!(Target::parse("x").unwrap(), Target::Either(_)));
        assert!(Target::parse("pod/x").is_err());
    }

    #[test]
    fn an_action_that_does_not_fit_the_vms_is_refused_up_front() {
        let plan = crate::view::fixtures::plan();
        let vm = |name: &str, active: &str| -> ProtectedVM {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
                "metadata": {"name": name, "namespace": "contoso"},
                "spec": {"vm": {"name": name}, "primarySite": "contoso-hq", "recoverySite": "contoso-dr",
                         "networkMapping": "hq-to-dr"},
                "status": {"phase": "Protected", "activeSite": active,
                           "replicationDirection": if active == "contoso-hq" { "PrimaryToRecovery" } else { "RecoveryToPrimary" },
                           "recoveryPoints": {"count": 2}},
            }))
            .unwrap()
        };
        let reprotected: Vec<ProtectedVM> = ["dc01", "exch-mbx01", "exch-cas01"]
            .into_iter()
            .map(|n| vm(n, "contoso-dr"))
            .collect();
        let why = fit(&plan, &reprotected, RunAction::PlannedFailover).expect_err("refused");
        assert!(why.contains("VM dc01 is Protected at contoso-dr"), "{why}");
        assert!(why.contains("kubectl coldsite failback exchange"), "{why}");
        assert_eq!(fit(&plan, &reprotected, RunAction::Failback), Ok(vec![]));
        assert!(fit(&plan, &reprotected, RunAction::Reprotect).is_err());
    }

    #[test]
    fn a_plan_must_be_valid_and_ready() {
        let mut plan = crate::view::fixtures::plan();
        let why = refusal(&plan, &[], RunAction::TestFailover, &[]).unwrap();
        assert!(why.contains("not Valid: not reported yet"), "{why}");
        let cond = |t: &str, s: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: t.into(),
            status: s.into(),
            reason: "R".into(),
            message: "m".into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        };
        plan.status = Some(coldsite_api::RecoveryPlanStatus {
            conditions: vec![cond("Valid", "True"), cond("Ready", "False")],
            ..Default::default()
        });
        let why = refusal(&plan, &[], RunAction::TestFailover, &[]).unwrap();
        assert!(why.contains("not Ready: False (R: m)"), "{why}");
        assert!(
            refusal(&plan, &[], RunAction::Failover, &[])
                .unwrap()
                .contains("--force")
        );
        assert!(
            refusal(&plan, &[], RunAction::Commit, &[]).is_none(),
            "Commit follows a failover"
        );
        plan.status.as_mut().unwrap().conditions[1].status = "True".into();
        assert!(refusal(&plan, &[], RunAction::TestFailover, &[]).is_none());
    }

    #[test]
    fn a_new_run_carries_the_options() {
        let req = NewRun {
            verb: "failover",
            action: RunAction::Failover,
            plan: "exchange".into(),
            recovery_point: Some("2026-03-01T09:00:00Z".into()),
            shutdown_source: false,
            approvals: vec!["confirm-ad-replication".into()],
            name: None,
            dry_run: true,
            force: false,
            source_down: false,
            wait: false,
            field_manager: None,
        };
        let run = new_run("contoso", "exchange-failover-x", &req).unwrap();
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(v["spec"]["recoveryPoint"], "2026-03-01T09:00:00Z");
        assert_eq!(v["spec"]["shutdownSource"], false);
        assert_eq!(v["spec"]["approvals"][0], "confirm-ad-replication");
        assert_eq!(v["metadata"]["namespace"], "contoso");
        let bad = NewRun {
            recovery_point: Some("yesterday".into()),
            ..req
        };
        assert!(new_run("contoso", "x", &bad).is_err());
    }
}
