//! Benchmark: a 5,000-VM plan in 10 dependent groups, run by the real planner, executor and
//! driver against SimFabric on a virtual clock. Prints:
//! - the engine's CPU time (plan + run), and its ratio to a baseline measured in the same
//!   run: one topological sweep of the same graph, the least any executor must do;
//! - the simulated RTO divided by the critical-path lower bound, the longest dependency
//!   chain of the durations the steps actually took. 1.00 means the executor added no
//!   waiting the plan does not require.
//!
//! `cargo bench -p coldsite-engine --bench plan5000`

use std::time::Duration;

use coldsite_api::RunAction;
use coldsite_api::recovery_run::{RecoveryPointSelector, RunPhase};
use coldsite_engine::driver::{Limits, RunContext};
use coldsite_engine::fabric::RunRef;
use coldsite_engine::model::Direction;
use coldsite_engine::planner::{self, PlanOptions, StepGraph};
use coldsite_engine::sim::{SimConfig, SimFabric};
use coldsite_engine::simulation::{self, RunOptions, RunReport};
use coldsite_engine::synthetic::{self, Shape};

fn cpu_time() -> Duration {
    // Process CPU time, so other load on the machine does not count.
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer we pass.
    unsafe {
        clock_gettime(2 /* CLOCK_PROCESS_CPUTIME_ID */, &mut ts)
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, tp: *mut libc_timespec) -> i32;
}

/// The longest chain of actual step durations through the graph.
fn critical_path(graph: &StepGraph, report: &RunReport) -> Duration {
    let mut finish = vec![Duration::ZERO; graph.len()];
    // Steps are created after their dependencies, so index order is topological.
    for (i, s) in graph.steps.iter().enumerate() {
        let r = &report.records[i];
        let took = match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let ready = s.deps.iter().map(|&d| finish[d]).max().unwrap_or_default();
        finish[i] = ready + took;
    }
    finish.into_iter().max().unwrap_or_default()
}

/// The baseline: one sweep over the graph in dependency order.
fn sweep(graph: &StepGraph) -> usize {
    let mut unmet: Vec<usize> = graph.steps.iter().map(|s| s.deps.len()).collect();
    let mut ready: Vec<usize> = (0..graph.len()).filter(|&i| unmet[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &d in &graph.dependents[i] {
            unmet[d] -= 1;
            if unmet[d] == 0 {
                ready.push(d);
            }
        }
    }
    done
}

fn main() {
    let shape = Shape {
        groups: 10,
        vms_per_group: 500,
        action_chance: 0.5,
        random_dependencies: true,
    };
    let plan = synthetic::plan(2026, &shape);
    println!("plan: {} VMs in {} groups", plan.vms.len(), plan.groups.len());
    for action in [RunAction::TestFailover, RunAction::PlannedFailover] {
        let options = PlanOptions {
            action,
            direction: Direction::Forward,
            shutdown_source: true,
        };
        let ctx = RunContext::new(
            plan.clone(),
            RunRef {
                namespace: "bench".into(),
                name: "bench".into(),
                uid: "bench".into(),
                action,
                direction: Direction::Forward,
            },
            RecoveryPointSelector::Latest,
        );
        let t0 = cpu_time();
        let graph = planner::plan(&ctx.plan, options);
        let planned = cpu_time() - t0;
        let fabric = SimFabric::new(SimConfig::default(), &ctx.plan, Direction::Forward);
        let run_options = RunOptions {
            approve_after: Some(Duration::from_secs(300)),
            // Enough parallel calls that the platform, not the driver, sets the pace.
            limits: Limits { concurrency: 10_000 },
            ..RunOptions::default()
        };
        let t1 = cpu_time();
        let report = simulation::run(&ctx, &graph, &fabric, &run_options).expect("the benchmark run completes");
        let ran = cpu_time() - t1;
        assert_eq!(report.phase, RunPhase::Succeeded);
        let t2 = cpu_time();
        let rounds = 20;
        for _ in 0..rounds {
            assert_eq!(sweep(&graph), graph.len());
        }
        let baseline = (cpu_time() - t2) / rounds;
        let lower = critical_path(&graph, &report);
        let engine = planned + ran;
        println!(
            "\n{action}: {} steps, {} passes, {} fabric calls",
            graph.len(),
            report.passes,
            report.fabric_calls
        );
        println!(
            "  engine CPU time      {:>9.3} s   (plan {:.3} s + run {:.3} s; goal < 1 s)",
            engine.as_secs_f64(),
            planned.as_secs_f64(),
            ran.as_secs_f64()
        );
        println!(
            "  baseline sweep       {:>9.6} s   engine / baseline = {:.0}x",
            baseline.as_secs_f64(),
            engine.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
        );
        println!("  simulated RTO        {:>9.0} s", report.rto().as_secs_f64());
        println!("  critical path        {:>9.0} s", lower.as_secs_f64());
        println!(
            "  RTO / critical path  {:>9.4}     (goal <= 1.01)",
            report.rto().as_secs_f64() / lower.as_secs_f64().max(1e-9)
        );
    }
}
