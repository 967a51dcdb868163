//! Deterministic simulation: thousands of seeded random plans, actions and fault schedules,
//! with the controller crashed at random points and resumed from what it had saved. The
//! invariants of DESIGN.md §4 (1–6) are checked after every pass. A failing seed is printed
//! with the command that replays it alone.

use std::collections::BTreeSet;
use std::time::Duration;

use coldsite_api::RunAction;
use coldsite_api::recovery_run::{RecoveryPointSelector, RunPhase, StepKind, StepState};
use coldsite_engine::driver::{Limits, RunContext};
use coldsite_engine::fabric::RunRef;
use coldsite_engine::model::{ActionKind, Direction};
use coldsite_engine::planner::{self, PlanOptions};
use coldsite_engine::sim::{Faults, SimConfig, SimFabric};
use coldsite_engine::simulation::{self, RunOptions};
use coldsite_engine::synthetic::{self, Shape};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Scenario {
    ctx: RunContext,
    options: PlanOptions,
    config: SimConfig,
    run: RunOptions,
    /// Whether nothing injected can make the run fail.
    must_succeed: bool,
    /// Whether a source outage was injected.
    source_down: bool,
}

fn scenario(seed: u64) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let shape = Shape {
        groups: rng.random_range(1..=5),
        vms_per_group: rng.random_range(1..=4),
        action_chance: 0.4,
        random_dependencies: true,
    };
    let plan = synthetic::plan(seed, &shape);
    let action = *[
        RunAction::TestFailover,
        RunAction::PlannedFailover,
        RunAction::Failover,
        RunAction::Failback,
        RunAction::Commit,
        RunAction::Reprotect,
        RunAction::ChangeRecoveryPoint,
    ]
    .choose(&mut rng)
    .unwrap_or(&RunAction::TestFailover);
    let direction = if action == RunAction::Failback {
        Direction::Reverse
    } else {
        Direction::Forward
    };
    let mut faults = Faults {
        failure_rate: *[0.0, 0.0, 0.02, 0.1].choose(&mut rng).unwrap_or(&0.0),
        replication_lag: Duration::from_secs(rng.random_range(0..1800)),
        ..Faults::default()
    };
    let mut must_succeed = faults.failure_rate == 0.0;
    if rng.random_bool(0.05) {
        let vm = &plan.vms[rng.random_range(0..plan.vms.len())];
        faults.boot_failures.insert(vm.name.clone());
        must_succeed &= !action.recovers_vms();
    }
    let scripts: Vec<String> = plan
        .groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .filter(|a| !matches!(a.kind, ActionKind::Manual { .. }) && a.runs_in(action))
        .map(|a| a.name.clone())
        .collect();
    if !scripts.is_empty() && rng.random_bool(0.05) {
        faults
            .script_failures
            .insert(scripts[rng.random_range(0..scripts.len())].clone());
        must_succeed = false;
    }
    let (source, _) = plan.sites(direction);
    let source_down = matches!(action, RunAction::Failover | RunAction::PlannedFailover) && rng.random_bool(0.15);
    if source_down {
        faults.sites_down.insert(source.name.clone());
        must_succeed &= action == RunAction::Failover;
    }
    let shutdown_source = rng.random_bool(0.8);
    // Told not to stop a source that runs, an unplanned failover refuses to start copies.
    must_succeed &= action != RunAction::Failover || shutdown_source || source_down;
    let has_manual = plan
        .groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .any(|a| matches!(a.kind, ActionKind::Manual { .. }) && a.runs_in(action));
    let approve_after = rng
        .random_bool(0.85)
        .then(|| Duration::from_secs(rng.random_range(0..900)));
    must_succeed &= approve_after.is_some() || !has_manual;
    let cancel_after = rng
        .random_bool(0.05)
        .then(|| Duration::from_secs(rng.random_range(0..1200)));
    must_succeed &= cancel_after.is_none();
    let crashes = rng.random_range(0..=3);
    let crash_at: Vec<u64> = (0..crashes).map(|_| rng.random_range(1..400)).collect();
    let recovery_point = match rng.random_range(0..3) {
        0 => RecoveryPointSelector::Latest,
        1 => RecoveryPointSelector::LatestAppConsistent,
        _ => RecoveryPointSelector::At(coldsite_engine::time::to_k8s(
            SimConfig::default().start - chrono::TimeDelta::minutes(rng.random_range(0..600)),
        )),
    };
    // A requested point may not exist in retention: then the restore fails for good.
    must_succeed &=
        matches!(recovery_point, RecoveryPointSelector::Latest) || !action.recovers_vms() || action.is_planned();
    Scenario {
        ctx: RunContext::new(
            plan,
            RunRef {
                namespace: "apps".into(),
                name: format!("run-{seed}"),
                uid: format!("uid-{seed}"),
                action,
                direction,
            },
            recovery_point,
        )
        // A site down for the whole simulation counts as down (its grace has passed).
        .with_source_down(source_down),
        options: PlanOptions {
            action,
            direction,
            shutdown_source,
        },
        config: SimConfig {
            seed,
            faults,
            ..SimConfig::default()
        },
        run: RunOptions {
            approve_after,
            cancel_after,
            crash_at,
            check_every_pass: true,
            limits: Limits {
                concurrency: rng.random_range(1..=16),
            },
            driver_per_pass: rng.random_bool(0.5),
            ..RunOptions::default()
        },
        must_succeed,
        source_down,
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let s = scenario(seed);
    let graph = planner::plan(&s.ctx.plan, s.options);
    let fabric = SimFabric::for_run(s.config.clone(), &s.ctx.plan, s.options.action, s.options.direction);
    let report = simulation::run(&s.ctx, &graph, &fabric, &s.run).map_err(|e| e.to_string())?;
    if s.must_succeed && report.phase != RunPhase::Succeeded {
        let failed: Vec<String> = graph
            .steps
            .iter()
            .zip(&report.records)
            .filter(|(_, r)| r.state == StepState::Failed)
            .map(|(d, r)| format!("{}: {}", d.id, r.message.clone().unwrap_or_default()))
            .collect();
        return Err(format!(
            "{:?} {:?} ended {:?} with nothing injected to fail it: {failed:?}",
            s.options.action, s.ctx.plan.name, report.phase
        ));
    }
    // A failed run fails for an injected reason, named in the failed step's message.
    if report.phase == RunPhase::Failed {
        let explained = graph.steps.iter().zip(&report.records).any(|(_, r)| {
            r.state == StepState::Failed
                && r.message.as_deref().is_some_and(|m| {
                    [
                        "simulated",
                        "timed out",
                        "no approval",
                        "recovery point",
                        "unreachable",
                        "still running",
                    ]
                    .iter()
                    .any(|k| m.contains(k))
                })
        });
        if !explained {
            let failed: Vec<String> = graph
                .steps
                .iter()
                .zip(&report.records)
                .filter(|(_, r)| r.state == StepState::Failed)
                .map(|(d, r)| format!("{}: {}", d.id, r.message.clone().unwrap_or_default()))
                .collect();
            return Err(format!("the run failed for no injected reason: {failed:?}"));
        }
    }
    if s.source_down && s.options.action == RunAction::PlannedFailover && report.phase == RunPhase::Succeeded {
        return Err("a planned failover succeeded with the primary site down".into());
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("COLDSITE_SEED") {
        return one.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    }
    let n: u64 = std::env::var("COLDSITE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    (1..=n).collect()
}

#[test]
fn seeded_runs_keep_the_invariants() {
    let mut failures = Vec::new();
    let mut phases = std::collections::BTreeMap::<String, usize>::new();
    let seeds = seeds();
    for &seed in &seeds {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(Ok(())) => *phases.entry("ok".into()).or_default() += 1,
            Ok(Err(e)) => failures.push(format!("seed {seed}: {e}")),
            Err(_) => failures.push(format!("seed {seed}: panicked")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed; replay one with COLDSITE_SEED=<seed> cargo test -p coldsite-engine --test simulation:\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The simulation is deterministic: a seed replays to the same records.
#[test]
fn a_seed_replays_identically() {
    for seed in [3, 17, 99] {
        let a = scenario(seed);
        let graph = planner::plan(&a.ctx.plan, a.options);
        let run = |s: &Scenario| {
            let fabric = SimFabric::for_run(s.config.clone(), &s.ctx.plan, s.options.action, s.options.direction);
            simulation::run(&s.ctx, &graph, &fabric, &s.run).map(|r| r.records)
        };
        let b = scenario(seed);
        assert_eq!(run(&a).ok(), run(&b).ok(), "seed {seed}");
    }
}

/// The operator makes a new driver at every reconcile, handing on when each running step is
/// next due: a step is asked as often as it said (its retry_after), as with one driver for
/// the whole run, not once per pass. Without the schedule every pass would ask every running
/// step again, and the fabric would see more calls.
#[test]
fn a_driver_per_pass_asks_the_fabric_as_one_driver_does() {
    let mut compared = 0;
    for seed in 1..=200 {
        let mut s = scenario(seed);
        if !s.run.crash_at.is_empty() {
            continue;
        }
        let graph = planner::plan(&s.ctx.plan, s.options);
        let mut run = |per_pass: bool| {
            s.run.driver_per_pass = per_pass;
            let fabric = SimFabric::for_run(s.config.clone(), &s.ctx.plan, s.options.action, s.options.direction);
            simulation::run(&s.ctx, &graph, &fabric, &s.run).ok()
        };
        let (Some(one), Some(per_pass)) = (run(false), run(true)) else {
            continue;
        };
        assert_eq!(
            (one.fabric_calls, one.phase, one.finished),
            (per_pass.fabric_calls, per_pass.phase, per_pass.finished),
            "seed {seed}: {} passes with one driver, {} with one per pass",
            one.passes,
            per_pass.passes
        );
        compared += 1;
    }
    assert!(compared > 50, "only {compared} seeds ran to the end without crashes");
}

/// An unplanned failover told not to stop the source refuses to start a copy while the
/// source still runs.
#[test]
fn failover_without_shutdown_refuses_a_running_source() {
    let plan = synthetic::plan(
        7,
        &Shape {
            groups: 2,
            vms_per_group: 2,
            action_chance: 0.0,
            random_dependencies: false,
        },
    );
    // shutdown_source false: the source keeps running, and the copy starts anyway.
    let (ctx, graph) = forward_run(plan, RunAction::Failover, false);
    let fabric = SimFabric::new(SimConfig::default(), &ctx.plan, Direction::Forward);
    let report = simulation::run(
        &ctx,
        &graph,
        &fabric,
        &RunOptions {
            check_every_pass: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.phase, RunPhase::Failed);
    assert!(
        fabric
            .world()
            .events
            .iter()
            .all(|e| !matches!(e, coldsite_engine::sim::SimEvent::VmStarted { .. }))
    );
    let failed = report.records.iter().find(|r| r.state == StepState::Failed).unwrap();
    assert!(
        failed.message.as_deref().unwrap_or_default().contains("still running"),
        "{failed:?}"
    );
}

/// A run of `action` from the primary to the recovery site, to the newest point, shutting the
/// source down first when `shutdown_source`.
fn forward_run(
    plan: coldsite_engine::model::PlanModel,
    action: RunAction,
    shutdown_source: bool,
) -> (RunContext, planner::StepGraph) {
    let ctx = RunContext::new(
        plan,
        RunRef {
            namespace: "apps".into(),
            name: "r".into(),
            uid: "u".into(),
            action,
            direction: Direction::Forward,
        },
        RecoveryPointSelector::Latest,
    );
    let graph = planner::plan(
        &ctx.plan,
        PlanOptions {
            action,
            direction: Direction::Forward,
            shutdown_source,
        },
    );
    (ctx, graph)
}

/// Crashes land between a fabric call and the save of its result, and the run still ends
/// with every effect once.
#[test]
fn crashes_everywhere_in_one_run() {
    let plan = synthetic::plan(
        11,
        &Shape {
            groups: 3,
            vms_per_group: 3,
            action_chance: 1.0,
            random_dependencies: false,
        },
    );
    let action = RunAction::PlannedFailover;
    let (ctx, graph) = forward_run(plan, action, true);
    let fabric = SimFabric::new(SimConfig::default(), &ctx.plan, Direction::Forward);
    let crash_at: BTreeSet<u64> = (1..200).step_by(7).collect();
    let report = simulation::run(
        &ctx,
        &graph,
        &fabric,
        &RunOptions {
            crash_at: crash_at.into_iter().collect(),
            approve_after: Some(Duration::from_secs(60)),
            check_every_pass: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(report.crashes >= 20, "crashed {} times", report.crashes);
    assert_eq!(report.phase, RunPhase::Succeeded);
    let world = fabric.world();
    let scripts = world.effects.keys().filter(|k| k.starts_with("script/")).count();
    let expected = ctx
        .plan
        .groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .filter(|a| !matches!(a.kind, ActionKind::Manual { .. }) && a.runs_in(action))
        .count();
    assert_eq!(scripts, expected, "each script ran exactly once");
}

/// A source that does not answer is waited for, not taken as down, unless the run declares
/// it down: a slow or cut-off site may still run the VMs.
#[test]
fn an_unanswering_source_is_waited_for_unless_declared_down() {
    let plan = synthetic::plan(
        9,
        &Shape {
            groups: 2,
            vms_per_group: 2,
            action_chance: 0.0,
            random_dependencies: false,
        },
    );
    let primary = plan.primary.name.clone();
    let (ctx, graph) = forward_run(plan, RunAction::Failover, true);
    let config = SimConfig {
        faults: Faults {
            sites_down: [primary].into(),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let run = RunOptions {
        check_every_pass: true,
        ..RunOptions::default()
    };
    let started = |fabric: &SimFabric| {
        fabric
            .world()
            .events
            .iter()
            .any(|e| matches!(e, coldsite_engine::sim::SimEvent::VmStarted { .. }))
    };

    let fabric = SimFabric::new(config.clone(), &ctx.plan, Direction::Forward);
    let report = simulation::run(&ctx, &graph, &fabric, &run).unwrap();
    assert_ne!(report.phase, RunPhase::Succeeded);
    assert!(!started(&fabric), "a copy started while its source might still run");
    assert!(
        report
            .records
            .iter()
            .all(|r| !r.message.as_deref().unwrap_or_default().contains("not waited for")),
        "a source was taken as down without being declared down"
    );

    let declared = ctx.clone().with_source_down(true);
    let fabric = SimFabric::new(config, &declared.plan, Direction::Forward);
    let report = simulation::run(&declared, &graph, &fabric, &run).unwrap();
    assert_eq!(report.phase, RunPhase::Succeeded);
    assert!(started(&fabric));
}

/// A planned failover whose final sync can never finish ends when cancelled: the sync is
/// abandoned, and that VM stays stopped at its source, not started at the target.
#[test]
fn a_final_sync_that_cannot_finish_does_not_hold_up_a_cancel() {
    let plan = synthetic::plan(
        3,
        &Shape {
            groups: 1,
            vms_per_group: 2,
            action_chance: 0.0,
            random_dependencies: false,
        },
    );
    let stalled = plan.vms[0].name.clone();
    let (ctx, graph) = forward_run(plan, RunAction::PlannedFailover, true);
    let config = SimConfig {
        faults: Faults {
            stalled_syncs: [stalled.clone()].into(),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let fabric = SimFabric::new(config, &ctx.plan, Direction::Forward);
    let run = RunOptions {
        cancel_after: Some(Duration::from_secs(600)),
        ..RunOptions::default()
    };
    let report = simulation::run(&ctx, &graph, &fabric, &run).unwrap();
    assert_eq!(report.phase, RunPhase::Cancelled);
    let sync = graph
        .steps
        .iter()
        .position(|s| s.kind == StepKind::FinalSync && s.id.contains(&format!("/{stalled}/")))
        .expect("the stalled VM's final sync");
    assert_eq!(report.records[sync].state, StepState::Skipped);
    assert!(
        !fabric
            .world()
            .events
            .iter()
            .any(|e| matches!(e, coldsite_engine::sim::SimEvent::VmStarted { pvm, .. } if *pvm == stalled)),
        "a VM whose final sync did not finish does not start at the target"
    );
}

/// A consistency group's members, one in the first recovery group and one in the last,
/// restore from one instant: the newest both hold. One syncs every minute, the other every
/// two, and replication lags a minute, so each member's own newest point differs.
#[test]
fn a_consistency_group_restores_one_instant_across_recovery_groups() {
    let mut plan = synthetic::plan(
        5,
        &Shape {
            groups: 3,
            vms_per_group: 2,
            action_chance: 0.0,
            random_dependencies: false,
        },
    );
    let (first, last) = (plan.groups[0].vms[0], plan.groups[2].vms[1]);
    plan.vms[first].rpo = Duration::from_secs(120); // a point every minute
    plan.vms[last].rpo = Duration::from_secs(240); // every two
    plan.consistency_groups = vec![coldsite_engine::model::ConsistencyGroupModel {
        name: "db-and-app".into(),
        vms: vec![first, last],
    }];
    let names = [plan.vms[first].name.clone(), plan.vms[last].name.clone()];
    let (ctx, graph) = forward_run(plan, RunAction::TestFailover, false);
    let mut config = SimConfig::default();
    config.faults.replication_lag = Duration::from_secs(60);
    let fabric = SimFabric::new(config, &ctx.plan, Direction::Forward);
    let report = simulation::run(&ctx, &graph, &fabric, &RunOptions::default()).unwrap();
    assert_eq!(report.phase, RunPhase::Succeeded);
    let restored: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = names
        .iter()
        .map(|name| {
            fabric
                .world()
                .events
                .iter()
                .find_map(|e| match e {
                    coldsite_engine::sim::SimEvent::Restored { at, pvm, point, .. } if pvm == name => {
                        Some((*at, point.time))
                    }
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert_eq!(restored[0].1, restored[1].1, "members restored from different instants");
    assert_eq!(
        restored[0].0 - restored[0].1,
        chrono::TimeDelta::minutes(2),
        "the newest instant both hold, not the first member's newer own: {restored:?}"
    );
}

/// Restores and creates for groups whose turn has not come are asked one batch a pass, the
/// earliest group first, while the started group's steps are all asked at every pass: a
/// pass that asked for every later group's disks at once would hold up the group whose
/// turn it is (at 1,000 VMs, the first pass of a run took 40 s that way).
#[test]
fn work_for_later_groups_goes_one_batch_a_pass_behind_the_started_group() {
    use coldsite_engine::driver::{Driver, NoCrash};
    use coldsite_engine::executor::{Executor, RunInputs};
    use coldsite_engine::simulation::MemStore;

    let plan = synthetic::plan(
        3,
        &Shape {
            groups: 3,
            vms_per_group: 5,
            action_chance: 0.0,
            random_dependencies: false,
        },
    );
    let (ctx, graph) = forward_run(plan, RunAction::TestFailover, false);
    let fabric = SimFabric::for_run(
        SimConfig::default(),
        &ctx.plan,
        RunAction::TestFailover,
        Direction::Forward,
    );
    let mut store = MemStore::new(graph.len());
    let executor = Executor::resume(&graph, store.records.clone(), false);
    let limits = Limits { concurrency: 2 };
    let mut driver = Driver::new(&ctx, executor, &fabric, &mut store, NoCrash, limits);
    let now = fabric.clock.now();
    futures::executor::block_on(driver.pass(now, &RunInputs::default())).unwrap();

    let first = ctx.plan.startup_order()[0];
    let restores = |g: usize| -> Vec<usize> {
        (0..graph.len())
            .filter(|&i| graph.steps[i].group == Some(g) && graph.steps[i].kind == StepKind::RestoreDisks)
            .collect()
    };
    // Not asked yet: due again at the next pass, at this instant.
    let waiting: BTreeSet<usize> = driver
        .schedule()
        .into_iter()
        .filter(|(t, _, _)| *t == now)
        .map(|(_, step, _)| step)
        .collect();
    assert!(
        restores(first).iter().all(|i| !waiting.contains(i)),
        "the started group's restores are all asked in the first pass"
    );
    let later: Vec<usize> = ctx.plan.startup_order()[1..]
        .iter()
        .flat_map(|&g| restores(g))
        .collect();
    let asked: Vec<usize> = later.iter().copied().filter(|i| !waiting.contains(i)).collect();
    assert_eq!(asked.len(), limits.concurrency, "one batch of work ahead: {asked:?}");
    let mut earliest = later.clone();
    earliest.sort_unstable();
    assert_eq!(
        asked,
        earliest[..limits.concurrency],
        "the earliest in the startup order first"
    );
    assert_eq!(
        waiting.len(),
        later.len() - limits.concurrency,
        "the rest waits: {waiting:?}"
    );
}
