//! coldsite-demo: the Exchange example, live, on this machine.
//!
//! Starts two real Kubernetes API servers on loopback (the management cluster with the
//! primary site "HQ", and the recovery site "DR"), the site simulator in place of KubeVirt,
//! VolSync and kubelets, and coldsite-controller; applies examples/exchange; waits until
//! the three VMs are protected; then runs a test failover, approves its manual gate like an
//! operator would, shows each step as it happens, and deletes the run, which cleans up DR.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use coldsite_api::recovery_run::{RunPhase, StepState};
use coldsite_api::{ProtectedVM, RecoveryRun};
use coldsite_e2e::exchange::{ControllerProcess, Scenario, Topology, virtual_machine_instances, wait_for};
use coldsite_e2e::manifests::repo_root;
use coldsite_e2e::{ControlPlane, ControlPlaneOptions};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Run the Exchange disaster-recovery example end to end on this machine.
///
/// The first run builds the Kubernetes binaries from Go modules (e2e/controlplane/build.sh,
/// several minutes, cached in ~/.cache/coldsite) and the controller with cargo.
/// KubeVirt, VolSync, the snapshot controller and kubelets are played by coldsite's site
/// simulator, which says so in its logs; everything else is real.
#[derive(Parser)]
#[command(name = "coldsite-demo", about, long_about)]
struct Args {
    /// The coldsite-controller binary; by default target/debug/coldsite-controller,
    /// built with cargo when missing.
    #[arg(long)]
    controller: Option<PathBuf>,
    /// Seconds the "operator" takes to approve the manual gate.
    #[arg(long, default_value_t = 5)]
    approve_after: u64,
    /// Keep everything running at the end, until Ctrl-C, to explore with kubectl.
    #[arg(long)]
    keep: bool,
}

fn say(start: Instant, text: impl AsRef<str>) {
    let s = start.elapsed().as_secs();
    println!("[{:>2}:{:02}] {}", s / 60, s % 60, text.as_ref());
}

fn controller_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.controller {
        return Ok(p.clone());
    }
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "coldsite-operator", "--bin", "coldsite-controller"])
        .current_dir(repo_root())
        .status()
        .context("building coldsite-controller with cargo")?;
    if !status.success() {
        bail!("cargo build -p coldsite-operator failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    Ok(target.join("debug/coldsite-controller"))
}

async fn show_run(
    start: Instant,
    runs: &Api<RecoveryRun>,
    name: &str,
    seen: &mut Vec<(String, StepState)>,
) -> Result<Option<RunPhase>> {
    let run = runs.get(name).await?;
    let status = run.status.unwrap_or_default();
    for step in &status.steps {
        let key = (step.id.clone(), step.state);
        if step.state != StepState::Pending && !seen.contains(&key) {
            seen.push(key);
            let mut line = format!("  {:<44} {:?}", step.id, step.state);
            if let Some(m) = &step.message {
                line.push_str(&format!(" ({m})"));
            }
            say(start, line);
        }
    }
    Ok(status.phase)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    say(
        start,
        "coldsite demo: the Exchange example on two local API servers, each running the real VolSync and \
         snapshot-controller (kubelets, CSI driver and KubeVirt simulated)",
    );
    // The Kubernetes binaries: built from Go modules on the first run, reused after.
    let built = std::process::Command::new("bash")
        .arg(repo_root().join("e2e/controlplane/build.sh"))
        .status()
        .context("running e2e/controlplane/build.sh")?;
    if !built.success() {
        bail!("e2e/controlplane/build.sh failed; see its output above");
    }
    let controller = controller_binary(&args)?;
    say(start, "starting the management + HQ API server and the DR API server …");
    let hq = ControlPlane::start(ControlPlaneOptions::new("hq")).await?;
    let dr = ControlPlane::start(ControlPlaneOptions::new("dr")).await?;
    say(start, format!("  HQ {}   DR {}", hq.server_url(), dr.server_url()));
    say(
        start,
        "installing upstream's CRDs, starting VolSync and the snapshot-controller at each site, \
         applying HQ's VMs and disks, and examples/exchange …",
    );
    let s = Scenario::set_up(
        &Topology {
            management: &hq,
            primary: &hq,
            recovery: &dr,
        },
        "exchange",
    )
    .await?;
    let mut ctl = ControllerProcess::start(
        &controller,
        hq.kubeconfig_path(),
        hq.dir().join("coldsite-controller.log"),
        &["--no-leader-election", "--lease-namespace", &s.ns],
    )?;
    say(
        start,
        format!("coldsite-controller started (log: {})", ctl.log.display()),
    );

    say(
        start,
        "protecting dc01, exch-mbx01 and exch-cas01: VolSync replication HQ → DR, RPO 15m …",
    );
    let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    wait_for("the VMs to be protected", Duration::from_secs(180), || async {
        let list = pvms.list(&ListParams::default()).await?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|st| coldsite_api::common::is_condition_true(&st.conditions, "Ready"))
            })
            .map(|p| {
                let st = p.status.clone().unwrap_or_default();
                let rpo = st.replication.and_then(|r| r.current_rpo_seconds).unwrap_or(-1);
                let points = st.recovery_points.map(|r| r.count).unwrap_or(0);
                format!(
                    "{} (RPO now {rpo}s, {points} recovery points)",
                    kube::ResourceExt::name_any(p)
                )
            })
            .collect();
        Ok((ready.len() == 3).then_some(ready))
    })
    .await
    .map(|ready| {
        for r in ready {
            say(start, format!("  protected: {r}"));
        }
    })?;

    say(
        start,
        "test failover: recovering the latest points onto DR's isolated test network …",
    );
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    let run: RecoveryRun = serde_json::from_value(json!({
        "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun",
        "metadata": {"name": "exchange-test-1", "namespace": s.ns},
        "spec": {"plan": "exchange", "action": "TestFailover"},
    }))?;
    runs.create(&PostParams::default(), &run).await?;
    let mut seen = Vec::new();
    let mut approved = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let phase = loop {
        let phase = show_run(start, &runs, "exchange-test-1", &mut seen).await?;
        if !approved && phase == Some(RunPhase::WaitingForApproval) {
            say(
                start,
                format!(
                    "  the plan waits for a person: confirm AD replication; approving in {}s with",
                    args.approve_after
                ),
            );
            say(
                start,
                format!(
                    "  kubectl -n {} patch rrun exchange-test-1 --type merge -p '{{\"spec\":{{\"approvals\":[\"confirm-ad-replication\"]}}}}'",
                    s.ns
                ),
            );
            tokio::time::sleep(Duration::from_secs(args.approve_after)).await;
            runs.patch(
                "exchange-test-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"approvals": ["confirm-ad-replication"]}})),
            )
            .await?;
            approved = true;
        }
        if phase.is_some_and(RunPhase::is_finished) || Instant::now() > deadline {
            break phase;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let run = runs.get("exchange-test-1").await?;
    let rto = run.status.as_ref().and_then(|st| st.rto_seconds).unwrap_or(0);
    say(
        start,
        format!("test failover {:?}, RTO {rto}s", phase.unwrap_or_default()),
    );
    for vm in ["dc01", "exch-mbx01", "exch-cas01"] {
        let vmi = virtual_machine_instances(&s.recovery, &s.test_ns).get_opt(vm).await?;
        let ips = vmi
            .map(|v| v.data["status"]["interfaces"][0]["ipAddresses"].to_string())
            .unwrap_or_else(|| "-".into());
        say(start, format!("  DR test copy {vm}: {ips}; HQ copy still running"));
    }
    for call in s.webhook.calls() {
        say(
            start,
            format!(
                "  webhook received: {} (signature valid: {})",
                call.idempotency_key, call.signature_valid
            ),
        );
    }
    let table = hq.kubectl().args(["get", "coldsite", "-n", &s.ns]).output()?;
    println!("{}", String::from_utf8_lossy(&table.stdout));

    if args.keep {
        say(
            start,
            format!(
                "keeping everything: KUBECONFIG={} (HQ, management) and {} (DR); Ctrl-C ends",
                hq.kubeconfig_path().display(),
                dr.kubeconfig_path().display()
            ),
        );
        tokio::signal::ctrl_c().await?;
    }
    say(
        start,
        "deleting the test run: its finalizer removes everything it created at DR …",
    );
    runs.delete("exchange-test-1", &DeleteParams::default()).await?;
    wait_for("the test run to be cleaned up", Duration::from_secs(120), || async {
        Ok(runs.get_opt("exchange-test-1").await?.is_none().then_some(()))
    })
    .await?;
    let left = coldsite_e2e::exchange::virtual_machines(&s.recovery, &s.test_ns)
        .list(&ListParams::default())
        .await?
        .items
        .len();
    say(start, format!("cleaned up: {left} test VMs left at DR"));
    let _ = ctl.kill().await;
    if phase != Some(RunPhase::Succeeded) {
        bail!("the test failover did not succeed; see {}", ctl.log.display());
    }
    say(start, "done");
    Ok(())
}
