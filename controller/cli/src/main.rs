//! `kubectl-coldsite`: the command-line side of coldsite.

mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Disaster recovery for KubeVirt VMs: check and operate coldsite recovery plans.
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
    /// Check manifests offline, as the API server would, before they reach a cluster.
    ///
    /// Reads YAML files, or folders of them, and checks every coldsite object against the
    /// CRD schema and its CEL rules: field types, enums, unknown fields, durations, CIDRs,
    /// gateways, unique names, dependsOn. An object that appears twice is checked as an
    /// update of its first appearance, as `kubectl apply` would apply it. Objects of other
    /// kinds are passed over. Exits 1 when anything is wrong, so it fits a GitOps CI job.
    Validate {
        /// Files or folders of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print only errors and the summary.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, quiet } => validate::run(&paths, quiet),
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
