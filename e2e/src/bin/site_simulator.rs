//! `coldsite-site-simulator`: runs the e2e site simulator against real API servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use coldsite_e2e::simulator::{SimConfig, Simulator, install_crds};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A SIMULATOR for demos and tests, not a product component: it plays KubeVirt's
/// virt-controller, VolSync's rsync-TLS movers, the CSI snapshot controller, a volume
/// provisioner and a kubelet for Job pods at one or more sites (API servers), writing the
/// status fields the real controllers write. It moves no data and runs no VM. Never run
/// it against a cluster that has the real components.
#[derive(Debug, Parser)]
#[command(name = "coldsite-site-simulator", version, verbatim_doc_comment)]
struct Args {
    /// A site to simulate, as NAME=KUBECONFIG (repeat for several sites). NAME appears in
    /// logs and in the rsync-TLS addresses of ReplicationDestinations.
    #[arg(long = "site", value_name = "NAME=KUBECONFIG", required = true, value_parser = parse_site)]
    sites: Vec<(String, PathBuf)>,
    /// How many times faster than real time VolSync cron schedules run: at 60, one cron
    /// minute lasts one real second.
    #[arg(long, default_value_t = 60.0)]
    time_scale: f64,
    /// Apply the stand-in CRDs of KubeVirt, VolSync and external-snapshotter first
    /// (real names, free-form schemas; only for clusters without those projects).
    #[arg(long)]
    install_crds: bool,
    /// Only these namespaces (repeat; default: all).
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 200)]
    tick_ms: u64,
    /// Milliseconds from VMI creation to Running.
    #[arg(long, default_value_t = 1000)]
    boot_delay_ms: u64,
    /// Milliseconds a Job pod runs.
    #[arg(long, default_value_t = 1000)]
    job_duration_ms: u64,
    /// Milliseconds a VolSync sync takes.
    #[arg(long, default_value_t = 500)]
    sync_duration_ms: u64,
}

fn parse_site(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_owned(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=KUBECONFIG, got {text:?}")),
    }
}

async fn client_for(path: &PathBuf) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building a kube client")
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if !(args.time_scale > 0.0 && args.time_scale <= coldsite_e2e::simulator::cron::MAX_TIME_SCALE) {
        bail!(
            "--time-scale must be in (0, {}]",
            coldsite_e2e::simulator::cron::MAX_TIME_SCALE
        );
    }
    let mut sites = Vec::new();
    for (name, path) in &args.sites {
        let client = client_for(path).await?;
        if args.install_crds {
            install_crds(&client)
                .await
                .with_context(|| format!("installing the stand-in CRDs at site {name}"))?;
            tracing::info!(site = %name, "stand-in CRDs installed");
        }
        sites.push((name.clone(), client));
    }
    let mut config = SimConfig {
        tick: Duration::from_millis(args.tick_ms),
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        time_scale: args.time_scale,
        job_duration: Duration::from_millis(args.job_duration_ms),
        sync_duration: Duration::from_millis(args.sync_duration_ms),
        ..SimConfig::default()
    };
    if !args.namespaces.is_empty() {
        config = config.with_namespaces(args.namespaces.clone());
    }
    let handle = Simulator::start(sites, config);
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.stop().await;
    Ok(())
}
