//! Deterministic simulation of many disaster-recovery cycles (see `coldsite_engine::cycles`):
//! random commands, right and wrong, a primary that loses power and comes back, runs that fail
//! half-way and are retried, failovers repointed; no split brain, no replication (nor final sync) into a running
//! VM's disks, no write lost by a planned action, one run per VM, and status that matches the
//! sites, after every event.
//!
//! Replay one seed with `COLDSITE_SEED=<n> cargo test -p coldsite-engine --test cycles`.

use coldsite_engine::cycles::{self, Report};

#[test]
fn seeded_cycles_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("COLDSITE_SEED") {
        Ok(s) => vec![s.parse().expect("COLDSITE_SEED is a number")],
        Err(_) => (0..2000).collect(),
    };
    let mut totals = Report::default();
    let mut failures = Vec::new();
    for seed in seeds {
        match cycles::simulate(seed, 3, 120) {
            Ok(r) => {
                totals.runs += r.runs;
                totals.refused += r.refused;
                totals.moves += r.moves;
                totals.retries += r.retries;
                totals.repoints += r.repoints;
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed; replay one with COLDSITE_SEED=<seed> cargo test -p coldsite-engine --test cycles:\n{}",
        failures.len(),
        failures.iter().take(2).cloned().collect::<Vec<_>>().join("\n\n")
    );
    // The sequences are not idle: runs start, wrong commands are refused, VMs move, and runs
    // take over VMs that a failed run had already moved, and failovers are repointed.
    let Report {
        runs,
        refused,
        moves,
        retries,
        repoints,
        ..
    } = totals;
    assert!(
        runs > 2_000 && refused > 2_000 && moves > 1_000 && retries > 100 && repoints > 100,
        "{runs} runs, {refused} refused, {moves} moves, {retries} retries, {repoints} repoints"
    );
}
