//! `simulate`: a plan run by the real executor against the simulated fabric on a virtual
//! clock, printed as a timeline of groups, steps and approval waits with the estimated RTO.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use coldsite_api::RunAction;
use coldsite_api::protected_vm::Consistency;
use coldsite_api::recovery_run::{RecoveryPointSelector, RunPhase, StepKind, StepState};
use coldsite_engine::driver::{Limits, RunContext};
use coldsite_engine::executor::{StepRecord, humanize};
use coldsite_engine::fabric::RunRef;
use coldsite_engine::model::{Direction, PlanModel, parse_duration};
use coldsite_engine::planner::{self, PlanOptions, StepGraph};
use coldsite_engine::sim::{Faults, SimConfig, SimFabric};
use coldsite_engine::simulation::{self, RunOptions, RunReport};
use coldsite_engine::validate;
use kube::ResourceExt;

use crate::load;

pub struct Args {
    pub paths: Vec<PathBuf>,
    pub namespace: String,
    pub plan: Option<String>,
    pub action: RunAction,
    pub approve_after: String,
    pub recovery_point: String,
    pub seed: u64,
    pub json: bool,
    pub failure_rate: f64,
    pub sites_down: Vec<String>,
    /// The run declares its source site down (`--force`).
    pub source_down: bool,
    pub boot_failures: Vec<String>,
    pub replication_lag: String,
    pub no_shutdown_source: bool,
    pub concurrency: usize,
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    let loaded = load::load(&args.paths, &args.namespace)?;
    if let Some((file, what, v)) = loaded.violations.first() {
        bail!(
            "{}: {what}: {v} (run `kubectl-coldsite validate` for every problem)",
            file.display()
        );
    }
    let plan = match &args.plan {
        Some(name) => loaded
            .plans
            .iter()
            .find(|p| &p.name_any() == name)
            .with_context(|| format!("no RecoveryPlan {name} in the manifests"))?,
        None => match loaded.plans.as_slice() {
            [one] => one,
            [] => bail!("no RecoveryPlan in the manifests"),
            many => bail!(
                "several plans ({}); choose one with --plan",
                many.iter().map(|p| p.name_any()).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    let model = match validate::validate_plan(plan, &loaded.inventory) {
        Ok((model, _)) => model,
        Err(problems) => {
            for p in &problems {
                eprintln!("✗ {p}");
            }
            bail!("the plan is not valid; fix the problems above");
        }
    };
    let direction = if args.action == RunAction::Failback {
        Direction::Reverse
    } else {
        Direction::Forward
    };
    let recovery_point: RecoveryPointSelector =
        serde_json::from_value(serde_json::Value::String(args.recovery_point.clone()))
            .with_context(|| format!("--recovery-point {:?}", args.recovery_point))?;
    let approve_after = match args.approve_after.as_str() {
        "never" => None,
        d => Some(
            parse_duration(d)
                .map_err(anyhow::Error::msg)
                .context("--approve-after")?,
        ),
    };
    let options = PlanOptions {
        action: args.action,
        direction,
        shutdown_source: !args.no_shutdown_source,
    };
    let graph = planner::plan(&model, options);
    let run = RunRef {
        namespace: model.namespace.clone(),
        name: format!("{}-simulated", model.name),
        uid: format!("sim-{}", args.seed),
        action: args.action,
        direction,
    };
    let ctx = RunContext::new(model, run, recovery_point).with_source_down(args.source_down);
    let config = SimConfig {
        seed: args.seed,
        faults: Faults {
            failure_rate: args.failure_rate,
            sites_down: args.sites_down.iter().cloned().collect(),
            boot_failures: args.boot_failures.iter().cloned().collect(),
            script_failures: BTreeSet::new(),
            replication_lag: parse_duration(&args.replication_lag)
                .map_err(anyhow::Error::msg)
                .context("--replication-lag")?,
            stalled_syncs: BTreeSet::new(),
        },
        ..SimConfig::default()
    };
    let fabric = SimFabric::for_run(config, &ctx.plan, args.action, direction);
    let report = simulation::run(
        &ctx,
        &graph,
        &fabric,
        &RunOptions {
            approve_after,
            limits: Limits {
                concurrency: args.concurrency,
            },
            ..RunOptions::default()
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&ctx, &graph, &report))?);
    } else {
        print_timeline(&ctx, &graph, &report, args.seed);
    }
    Ok(report.phase == RunPhase::Succeeded)
}

fn offset(start: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => {
            let s = (t - start).num_seconds().max(0);
            if s >= 3600 {
                format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
            } else {
                format!("{}:{:02}", s / 60, s % 60)
            }
        }
        None => "-".into(),
    }
}

fn mark(state: StepState) -> &'static str {
    match state {
        StepState::Succeeded => "✓",
        StepState::FailedContinued => "✗ (continued)",
        StepState::Failed => "✗",
        StepState::Skipped => "–",
        _ => "…",
    }
}

fn span(start: DateTime<Utc>, r: &StepRecord) -> String {
    format!("{} → {}", offset(start, r.started_at), offset(start, r.finished_at))
}

fn print_timeline(ctx: &RunContext, graph: &StepGraph, report: &RunReport, seed: u64) {
    let plan: &PlanModel = &ctx.plan;
    let (source, target) = plan.sites(ctx.run.direction);
    let start = report.started;
    let rec = |id: &str| graph.find(id).map(|i| (&graph.steps[i], &report.records[i]));
    println!(
        "Simulated {} of RecoveryPlan {}/{}: {} → {} (SimFabric, seed {seed}, times from the start)",
        ctx.run.action, plan.namespace, plan.name, source.name, target.name
    );
    let shutdown: Vec<_> = plan
        .startup_order()
        .into_iter()
        .rev()
        .filter_map(|g| rec(&format!("{}/shutdown", plan.groups[g].name)).map(|r| (g, r)))
        .collect();
    if !shutdown.is_empty() {
        let (what, site) = match ctx.run.action {
            RunAction::ChangeRecoveryPoint => ("Halted", target),
            _ => ("Source shutdown", source),
        };
        println!("\n{what} at {}, in reverse order", site.name);
        for (g, (_, r)) in shutdown {
            println!("  {:<28} {:<18} {}", plan.groups[g].name, span(start, r), mark(r.state));
        }
    }
    println!("\nRecovery at {}", target.name);
    for g in plan.startup_order() {
        let group = &plan.groups[g];
        let Some((_, done)) = rec(&format!("{}/done", group.name)) else {
            continue;
        };
        let begun = rec(&format!("{}/start", group.name)).and_then(|(_, r)| r.started_at);
        println!(
            "● {:<28} {} → {}  {}",
            group.name,
            offset(start, begun),
            offset(start, done.finished_at),
            mark(done.state)
        );
        let action_line = |phase: &str, def: &planner::StepDef, r: &StepRecord| {
            let name = def.id.rsplit('/').next().unwrap_or_default();
            let what = match def.kind {
                StepKind::Manual => {
                    let waited = match (r.started_at, r.finished_at) {
                        (Some(a), Some(b)) => humanize((b - a).to_std().unwrap_or_default()),
                        _ => "-".into(),
                    };
                    let outcome = r.message.clone().unwrap_or_default();
                    format!("waited {waited} for approval ({outcome})")
                }
                StepKind::Job => "Job".into(),
                _ => "webhook".into(),
            };
            println!(
                "  ├─ {phase} {:<22} {:<18} {} {}",
                name,
                span(start, r),
                mark(r.state),
                what
            );
        };
        for (i, def) in graph.steps.iter().enumerate() {
            if def.group == Some(g) && def.action.is_some_and(|a| a.pre) {
                action_line("pre ", def, &report.records[i]);
            }
        }
        for &vm in &group.vms {
            let name = &plan.vms[vm].name;
            let part = |kind: StepKind| graph.vm_step(vm, kind).map(|i| &report.records[i]);
            let restore = part(StepKind::RestoreDisks);
            let power = part(StepKind::PowerOn);
            let ready = part(StepKind::VmReady);
            let point = restore
                .and_then(|r| r.point.as_ref())
                .map(|p| {
                    let consistency = Consistency::of(p.app_consistent).word();
                    format!("point {} ({consistency})", p.time.format("%H:%M:%S"))
                })
                .unwrap_or_default();
            println!(
                "  ├─ vm {:<23} restore {} · power-on {} · up {} {} {}",
                name,
                restore.map(|r| span(start, r)).unwrap_or_default(),
                power.map(|r| offset(start, r.started_at)).unwrap_or_default(),
                ready.map(|r| offset(start, r.finished_at)).unwrap_or_default(),
                ready.map(|r| mark(r.state)).unwrap_or_default(),
                point,
            );
            if let Some(r) = ready.filter(|r| r.state == StepState::Failed) {
                println!("  │    {}", r.message.clone().unwrap_or_default());
            }
        }
        for (i, def) in graph.steps.iter().enumerate() {
            if def.group == Some(g) && def.action.is_some_and(|a| !a.pre) {
                action_line("post", def, &report.records[i]);
            }
        }
    }
    let failed: Vec<String> = graph
        .steps
        .iter()
        .zip(&report.records)
        .filter(|(_, r)| r.state == StepState::Failed)
        .map(|(d, r)| format!("  {}: {}", d.id, r.message.clone().unwrap_or_default()))
        .collect();
    if !failed.is_empty() {
        println!("\nFailed steps:\n{}", failed.join("\n"));
    }
    println!(
        "\n{:?}. Estimated RTO {} for {} VM(s) in {} group(s); {} fabric calls, {} approvals.",
        report.phase,
        humanize(report.rto()),
        plan.vms.len(),
        plan.groups.len(),
        report.fabric_calls,
        report.approvals.len()
    );
}

fn json(ctx: &RunContext, graph: &StepGraph, report: &RunReport) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = graph
        .steps
        .iter()
        .zip(&report.records)
        .map(|(d, r)| {
            serde_json::json!({
                "id": d.id,
                "kind": d.kind,
                "group": d.group.map(|g| ctx.plan.groups[g].name.clone()),
                "state": r.state,
                "attempts": r.attempts,
                "startedAt": r.started_at,
                "finishedAt": r.finished_at,
                "recoveryPoint": r.point.as_ref().map(|p| p.time),
                "recoveryPointConsistency": r.point.as_ref().map(|p| Consistency::of(p.app_consistent)),
                "message": r.message,
            })
        })
        .collect();
    serde_json::json!({
        "plan": format!("{}/{}", ctx.plan.namespace, ctx.plan.name),
        "action": ctx.run.action,
        "phase": report.phase,
        "startTime": report.started,
        "completionTime": report.finished,
        "rtoSeconds": report.rto().as_secs(),
        "approvals": report.approvals,
        "crashes": report.crashes,
        "fabricCalls": report.fabric_calls,
        "steps": steps,
    })
}

/// Parses `--action`.
pub fn parse_action(s: &str) -> Result<RunAction, String> {
    s.parse()
}
