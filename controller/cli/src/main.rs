//! `kubectl-coldsite`: the command-line side of coldsite.

// The commands' doc comments are their `--help`, where `<plan>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod cluster;
mod complete;
mod link;
mod load;
mod ops;
mod points;
mod report;
mod simulate;
mod tree;
mod validate;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use coldsite_api::RunAction;

use crate::cluster::ClusterArgs;
use crate::ops::{Format, NewRun};

/// Disaster recovery for KubeVirt VMs: check, rehearse, run and report coldsite recovery plans.
///
/// Installed on PATH as `kubectl-coldsite`, it also runs as `kubectl coldsite`. The commands
/// that talk to the management cluster (status, points, approve, test, failover, planned, commit,
/// reprotect, failback, cleanup, report) find it as kubectl does: --kubeconfig or
/// $KUBECONFIG or ~/.kube/config, --context, and -n/--namespace (else the context's
/// namespace); inside a pod, its service account.
#[derive(Parser)]
#[command(name = "kubectl-coldsite", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every run-creating command has.
#[derive(Args)]
struct RunArgs {
    /// The RecoveryPlan to run.
    plan: String,
    /// Approve a manual action of the plan up front, so its gate does not wait (repeatable).
    #[arg(long = "approve", value_name = "ACTION")]
    approvals: Vec<String>,
    /// Name of the RecoveryRun (default: <plan>-<command>-<yyyymmdd-hhmmss>, in UTC).
    #[arg(long)]
    name: Option<String>,
    /// Print the RecoveryRun as YAML instead of creating it.
    #[arg(long)]
    dry_run: bool,
    /// Start the run even though the plan is not Valid or not Ready, or another run of the
    /// plan is in progress. A VM whose state does not fit the action is refused all the
    /// same. For `failover`, see its own help: --force also declares the primary down.
    #[arg(long)]
    force: bool,
    /// Follow the run as `status --watch` does until it finishes; exit 1 unless it succeeds.
    #[arg(short, long)]
    wait: bool,
    /// The field manager the run is created under (default: kubectl-coldsite:<your user name>).
    #[arg(long, value_name = "NAME")]
    field_manager: Option<String>,
}

impl RunArgs {
    fn request(self, verb: &'static str, action: RunAction) -> NewRun {
        NewRun {
            verb,
            action,
            plan: self.plan,
            recovery_point: None,
            shutdown_source: true,
            approvals: self.approvals,
            name: self.name,
            dry_run: self.dry_run,
            force: self.force,
            source_down: false,
            wait: self.wait,
            field_manager: self.field_manager,
        }
    }
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
        /// Make a site's API unreachable and its VMs down (repeatable). A run waits for an
        /// unreachable source unless --force declares it down.
        #[arg(long = "site-down")]
        sites_down: Vec<String>,
        /// Declare the source site down, as `failover --force` does (spec.sourceDown): steps
        /// at an unreachable source are taken as done instead of waited for.
        #[arg(long)]
        force: bool,
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
    /// Show a run as a tree of groups and steps, or a plan with its VMs' protection.
    ///
    /// For a RecoveryRun: the phase, progress and RTO; each manual action waiting for
    /// approval, for how long, its instructions and the command that approves it; the source
    /// shutdown in reverse order (planned actions); then each group in startup order with its
    /// pre actions, its VMs and their steps (restore-disks, create-vm, power-on, ready…) and
    /// the recovery point each VM was restored from, and its post actions. Every step shows
    /// its state and how long it took. VM steps come from each ProtectedVM's
    /// status.lastRun, as long as this run is the VM's latest.
    ///
    /// For a RecoveryPlan: its Valid and Ready conditions, its groups in startup order with
    /// their actions, each VM's phase, active site, replication health, RPO now against its
    /// target and recovery points, and the plan's last run and drill.
    ///
    /// TARGET is rrun/NAME, rplan/NAME, or a bare NAME: a run if one has that name, else a
    /// plan. Colour is used when stdout is a terminal (NO_COLOR turns it off).
    Status {
        /// rrun/NAME, rplan/NAME, or NAME.
        target: String,
        /// Redraw as things change, at most four times a second, until the run finishes
        /// (for a plan, until interrupted). Exits 1 if the run ends other than Succeeded.
        #[arg(short, long)]
        watch: bool,
    },
    /// List the recovery points of a plan's VMs, or of one ProtectedVM.
    ///
    /// For each VM, in the plan's startup order: the points it holds at the site it would
    /// recover to, newest first (the newest 120; older ones are counted), each with its
    /// consistency and age. `crash`: each disk as its snapshot found it, as after a power
    /// loss. `app`: cut with the guest's filesystems frozen through its agent, all disks
    /// within one freeze (spec.replication.appConsistentInterval). A run's --recovery-point
    /// (Latest, LatestAppConsistent, or a time: the newest point not after it) chooses among
    /// them.
    ///
    /// TARGET is rplan/NAME, pvm/NAME, or a bare NAME: a plan if one has that name, else a
    /// ProtectedVM.
    Points {
        /// rplan/NAME, pvm/NAME, or NAME.
        target: String,
    },
    /// Approve a manual action of a run, so its gate passes.
    ///
    /// Adds ACTION to the run's spec.approvals by server-side apply, under the field manager
    /// kubectl-coldsite:<your user name> (from a SelfSubjectReview), so the API server
    /// records who approved and when in the run's managedFields; `report` shows it.
    /// Refuses when ACTION is not a manual action of the run's plan, does not run in this
    /// kind of run, or the run has finished. An approval cannot be taken back.
    Approve {
        /// The RecoveryRun.
        run: String,
        /// The manual action's name, as in the plan (e.g. confirm-ad-replication).
        action: String,
        /// Approve under this field manager instead.
        #[arg(long, value_name = "NAME")]
        field_manager: Option<String>,
    },
    /// Start a test failover: copies on the isolated test network; the source keeps running.
    ///
    /// Creates a RecoveryRun with action TestFailover. Refuses unless the plan is Valid and
    /// Ready (every VM protected within its RPO), while another run of the plan is in
    /// progress, and while an earlier test of the plan has not been cleaned up (its copies
    /// would collide with the new ones); --force overrides. Delete it with `cleanup` to
    /// remove everything it made.
    Test {
        #[command(flatten)]
        run: RunArgs,
        /// Latest, LatestAppConsistent, or an RFC 3339 time: the newest point not after it.
        #[arg(long, value_name = "POINT")]
        recovery_point: Option<String>,
    },
    /// Start an unplanned failover: recover from a recovery point while the primary is down.
    ///
    /// Creates a RecoveryRun with action Failover. The source VMs are shut down first when
    /// the primary answers, unless --no-shutdown-source. Refuses unless the plan is Valid and
    /// Ready, and every VM is protected at the primary; in a real disaster the plan will not
    /// be Ready, and --force is the way on.
    ///
    /// --force also sets the run's spec.sourceDown: the primary is declared down, and the run
    /// does not wait for it to answer. Without it, a primary that does not answer is waited
    /// for until it has been unreachable for its Site's spec.downAfter (5m by default): a
    /// slow or cut-off site is not a dead one, and its VMs may still run. Whichever way the
    /// primary was taken as down, coldsite halts its VMs as soon as it answers again, before
    /// anything else happens there, and never starts them except through a failback.
    ///
    /// To retry one that failed or was cancelled half-way, start the same action again: VMs
    /// the earlier run already moved are taken over as done, the rest move, and what the
    /// earlier run left at the target for them (restored disks, a halted copy) is reused or
    /// replaced; a copy that runs is never overwritten.
    Failover {
        #[command(flatten)]
        run: RunArgs,
        /// Latest, LatestAppConsistent, or an RFC 3339 time: the newest point not after it.
        #[arg(long, value_name = "POINT")]
        recovery_point: Option<String>,
        /// Do not try to stop the source VMs; only check that they are not running.
        #[arg(long)]
        no_shutdown_source: bool,
    },
    /// Change the recovery point of a failover before commit: swap the VMs' disks for another point.
    ///
    /// Creates a RecoveryRun with action ChangeRecoveryPoint. For a failover to the recovery
    /// site that is not committed yet, for example when the point it restored turns out to be
    /// corrupt. In reverse startup order each VM's copy is halted at the recovery site; then,
    /// in startup order, its disks are restored anew from the point, and it is started and
    /// checked for readiness. The points listed by `kubectl coldsite points` stay until
    /// Commit, so a later repoint may pick any of them, the first one included. The VMs keep
    /// their names, networks and addresses; scripts and manual gates do not run again unless
    /// their `when` lists ChangeRecoveryPoint. The run's report shows the point each VM was
    /// on before and the one it is on now.
    Repoint {
        #[command(flatten)]
        run: RunArgs,
        /// Latest, LatestAppConsistent, or an RFC 3339 time: the newest point not after it.
        #[arg(long, value_name = "POINT")]
        recovery_point: String,
    },
    /// Start a planned failover: stop the source, sync a last time, recover with no data loss.
    ///
    /// Creates a RecoveryRun with action PlannedFailover. Refuses unless the plan is Valid
    /// and Ready (--force overrides).
    ///
    /// To retry one that failed or was cancelled half-way, start the same action again: VMs
    /// the earlier run already moved are taken over as done, the rest move, and what the
    /// earlier run left at the target for them (restored disks, a halted copy) is reused or
    /// replaced; a copy that runs is never overwritten.
    Planned {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Commit a failover: make it permanent and discard the other recovery points.
    ///
    /// Creates a RecoveryRun with action Commit. Refuses unless the plan is Valid
    /// (--force overrides); it need not be Ready, since its VMs no longer replicate.
    Commit {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Reprotect after a failover: replicate back from the active site, reusing the old disks.
    ///
    /// Creates a RecoveryRun with action Reprotect. Refuses unless the plan is Valid
    /// (--force overrides).
    Reprotect {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Fail back: a planned failover to the original primary site.
    ///
    /// Creates a RecoveryRun with action Failback. Refuses unless the plan is Valid and Ready,
    /// that is reprotected in the reverse direction (--force overrides).
    ///
    /// To retry one that failed or was cancelled half-way, start the same action again: VMs
    /// the earlier run already moved are taken over as done, the rest move, and what the
    /// earlier run left at the target for them (restored disks, a halted copy) is reused or
    /// replaced; a copy that runs is never overwritten.
    Failback {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Delete a run and wait until it is gone.
    ///
    /// For a TestFailover, the controller's finalizer first removes everything the test
    /// created at both sites: VMs, restored disks, snapshots and Jobs; this prints what it
    /// reports and waits for it. For any other run, deleting removes only the record: the
    /// failover it did stays done. A run other than a test that has not finished is refused
    /// (cancel it first), unless --force.
    ///
    /// A failover or failback that failed or was cancelled half-way left, at its target, the
    /// disks it restored and the copies it created for the VMs it did not move; a retry reuses
    /// them. --discard-partial removes them instead (never a copy that runs, never the disks
    /// replication writes in place, never anything of the VMs it did move, nor of VMs a later
    /// run holds).
    Cleanup {
        /// The RecoveryRun.
        run: String,
        /// Delete a run that is not a test even while it is in progress.
        #[arg(long)]
        force: bool,
        /// Also remove what a failed or cancelled failover left for the VMs it did not move.
        #[arg(long)]
        discard_partial: bool,
        /// Return once the deletion is requested.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the run to go.
        #[arg(long, default_value = "10m", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Write a run's report: HTML with a Gantt chart of every step, or Markdown.
    ///
    /// The HTML page is self-contained (inline CSS and SVG, no scripts or external assets):
    /// the phase and RTO, a timeline with one bar per step (source shutdown, each group's
    /// actions, and each VM's restore, create, power-on and ready) coloured by state on a time
    /// axis, the recovery point used per VM and how old it was, the approvals with who gave
    /// them (status.approvals[].by, or the field manager that wrote the value into
    /// spec.approvals) and when, and every step with its start, finish and duration.
    /// Markdown holds the same facts in tables.
    Report {
        /// The RecoveryRun.
        run: String,
        /// html or markdown.
        #[arg(long, value_enum, default_value = "html")]
        format: Format,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Give the management cluster a kubeconfig for a site, in the Secret its Site names.
    ///
    /// Run it against the management cluster (the current context, or --context) after
    /// installing the site identity on the site cluster with the chart
    /// (`--set controller.enabled=false --set siteAccess.create=true`). It finds that
    /// identity's ServiceAccount at --site-context, takes the chart's long-lived token (or
    /// requests one for --token-duration), builds a kubeconfig with the context's server and
    /// certificate authority, checks that it authenticates there as the ServiceAccount, and
    /// writes it by server-side apply into the Secret that Site SITE's
    /// spec.cluster.kubeconfigSecretRef names; for a Site not created yet, into
    /// <SITE>-kubeconfig in --secret-namespace, under key `kubeconfig`. Run it again to
    /// rotate the token.
    Link(link::LinkArgs),
    /// Print a shell completion script for kubectl-coldsite.
    ///
    /// bash: `source <(kubectl-coldsite completion bash)`, or save it in
    /// /etc/bash_completion.d/. zsh: save it as `_kubectl-coldsite` in a folder on $fpath.
    /// fish: `kubectl-coldsite completion fish > ~/.config/fish/completions/kubectl-coldsite.fish`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    coldsite_engine::model::parse_duration(s)
}

/// Runs a command that talks to the cluster.
fn on_cluster<F, Fut>(cluster: &ClusterArgs, f: F) -> anyhow::Result<bool>
where
    F: FnOnce(cluster::Cluster) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let c = cluster.connect().await?;
        f(c).await
    })
}

fn main() -> ExitCode {
    // Before clap: the words to complete may hold flags that are not valid yet.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__complete") {
        let root = Cli::command();
        return match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                rt.block_on(complete::run(root, &args[2..]));
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::FAILURE,
        };
    }
    match dispatch(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kubectl-coldsite: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` when it ran and found something wrong.
fn dispatch(cli: Cli) -> anyhow::Result<bool> {
    // For validate and simulate: the namespace of objects that name none.
    let namespace = cli.cluster.namespace.clone().unwrap_or_else(|| "default".into());
    let cl = &cli.cluster;
    match cli.command {
        Command::Validate { paths, quiet } => validate::run(&paths, &namespace, quiet),
        Command::Simulate {
            paths,
            action,
            plan,
            approve_after,
            recovery_point,
            seed,
            output,
            failure_rate,
            sites_down,
            force,
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
            source_down: force,
            boot_failures,
            replication_lag,
            no_shutdown_source,
            concurrency,
        }),
        Command::Status { target, watch } => on_cluster(cl, |c| async move { ops::status(&c, &target, watch).await }),
        Command::Points { target } => on_cluster(cl, |c| async move { points::points(&c, &target).await }),
        Command::Approve {
            run,
            action,
            field_manager,
        } => on_cluster(
            cl,
            |c| async move { ops::approve(&c, &run, &action, field_manager).await },
        ),
        Command::Cleanup {
            run,
            force,
            discard_partial,
            no_wait,
            timeout,
        } => {
            let how = ops::CleanupOptions {
                force,
                discard_partial,
                wait: !no_wait,
                timeout,
            };
            on_cluster(cl, |c| async move { ops::cleanup(&c, &run, how).await })
        }
        Command::Report { run, format, output } => {
            on_cluster(cl, |c| async move { ops::report(&c, &run, format, output).await })
        }
        Command::Link(args) => {
            let kubeconfig = cl.kubeconfig.clone();
            on_cluster(cl, |c| async move { link::link(&c, kubeconfig.as_ref(), &args).await })
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-coldsite", &mut std::io::stdout());
            Ok(true)
        }
        command => match run_request(command) {
            Some(req) => on_cluster(cl, |c| async move { ops::create_run(&c, req).await }),
            None => anyhow::bail!("this command has no handler: a defect of kubectl-coldsite"),
        },
    }
}

/// The RecoveryRun a run-starting command asks for; `None` for any other command.
fn run_request(command: Command) -> Option<NewRun> {
    Some(match command {
        Command::Test { run, recovery_point } => {
            let mut req = run.request("test", RunAction::TestFailover);
            req.recovery_point = recovery_point;
            req
        }
        Command::Failover {
            run,
            recovery_point,
            no_shutdown_source,
        } => {
            let mut req = run.request("failover", RunAction::Failover);
            req.recovery_point = recovery_point;
            req.shutdown_source = !no_shutdown_source;
            // In a disaster, --force also declares the primary down.
            req.source_down = req.force;
            req
        }
        Command::Repoint { run, recovery_point } => {
            let mut req = run.request("repoint", RunAction::ChangeRecoveryPoint);
            req.recovery_point = Some(recovery_point);
            req
        }
        Command::Planned { run } => run.request("planned", RunAction::PlannedFailover),
        Command::Commit { run } => run.request("commit", RunAction::Commit),
        Command::Reprotect { run } => run.request("reprotect", RunAction::Reprotect),
        Command::Failback { run } => run.request("failback", RunAction::Failback),
        _ => return None,
    })
}
