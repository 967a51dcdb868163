//! `kubectl-coldsite`: the command-line side of coldsite.

mod load;
mod simulate;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coldsite_api::RunAction;

/// Disaster recovery for KubeVirt VMs: check and rehearse coldsite recovery plans.
///
/// Installed on PATH as `kubectl-coldsite`, it also runs as `kubectl coldsite`.
#[derive(Parser)]
#[command(name = "kubectl-coldsite", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests offline, as the API server and the controller would.
    ///
    /// Reads YAML files, or folders of them. Each coldsite object is checked against the CRD
    /// schema and its CEL rules (field types, enums, unknown fields, durations, CIDRs,
    /// gateways, unique names). Then the objects are checked together: every Site,
    /// NetworkMapping and ProtectedVM a plan names exists; a VM is in one group; dependsOn
    /// has no cycle; every NIC's network is mapped, with a test network; recovered and test
    /// addresses are unique and inside their subnets. KubeVirt VirtualMachines among the
    /// manifests supply the NICs and addresses. An object that appears twice is checked as
    /// an update of its first appearance, as `kubectl apply` would apply it.
    ///
    /// Exits 1 when anything is wrong, so it fits a GitOps CI job.
    Validate {
        /// Files or folders of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Namespace for namespaced objects that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Print only problems and the summary.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Rehearse a plan offline: the real executor against a simulated platform.
    ///
    /// Runs the plan's step graph, as the controller would, against SimFabric: an in-memory
    /// stand-in for KubeVirt, VolSync and snapshots with realistic, seeded latencies, on a
    /// virtual clock, so an hour-long failover takes a moment. Prints the timeline: source
    /// shutdown (planned actions), each group with its actions, VMs, approval waits and
    /// recovery points, and the estimated RTO. Faults can be injected to see how the plan
    /// behaves when things go wrong. Exits 1 when the simulated run does not succeed.
    Simulate {
        /// Folders or files holding the plan and everything it references.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// What to rehearse.
        #[arg(short, long, default_value = "TestFailover", value_parser = simulate::parse_action)]
        action: RunAction,
        /// The plan to run, when the manifests hold several.
        #[arg(long)]
        plan: Option<String>,
        /// Namespace for namespaced objects that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// A simulated person approves each manual action this long after it starts waiting;
        /// `never` leaves gates to their timeouts.
        #[arg(long, default_value = "5m")]
        approve_after: String,
        /// Latest, LatestAppConsistent, or an RFC 3339 time.
        #[arg(long, default_value = "Latest")]
        recovery_point: String,
        /// Seed for latencies and faults; the same seed replays the same run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// text or json.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Probability that any platform call fails transiently.
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
        /// Make a site's API unreachable and its VMs down (repeatable).
        #[arg(long = "site-down")]
        sites_down: Vec<String>,
        /// A ProtectedVM that never becomes ready (repeatable).
        #[arg(long = "boot-failure")]
        boot_failures: Vec<String>,
        /// How far replication lags behind.
        #[arg(long, default_value = "0s")]
        replication_lag: String,
        /// For Failover: do not stop the source VMs first.
        #[arg(long)]
        no_shutdown_source: bool,
        /// Platform calls in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate {
            paths,
            namespace,
            quiet,
        } => validate::run(&paths, &namespace, quiet),
        Command::Simulate {
            paths,
            action,
            plan,
            namespace,
            approve_after,
            recovery_point,
            seed,
            output,
            failure_rate,
            sites_down,
            boot_failures,
            replication_lag,
            no_shutdown_source,
            concurrency,
        } => simulate::run(&simulate::Args {
            paths,
            namespace,
            plan,
            action,
            approve_after,
            recovery_point,
            seed,
            json: output == "json",
            failure_rate,
            sites_down,
            boot_failures,
            replication_lag,
            no_shutdown_source,
            concurrency,
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kubectl-coldsite: {e:#}");
            ExitCode::from(2)
        }
    }
}
