//! `coldsite-site-simulator`: runs the e2e site simulator against real API servers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use coldsite_e2e::Binaries;
use coldsite_e2e::simulator::{SimConfig, SimSite, Simulator};
use coldsite_e2e::site;
use ipnet::Ipv4Net;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A SIMULATOR for demos and tests, not a product component: it plays, at one or more
/// sites (API servers), what needs nodes, disks or a network: a kubelet (script Jobs,
/// VolSync's rsync-TLS movers, virt-launcher pods), the CSI driver's provisioner and
/// snapshotter with simulated disk contents, KubeVirt's virt-controller and virt-handler,
/// virt-api's freeze and unfreeze (with `--install`), and a load balancer. VolSync's controller and the snapshot-controller must run at each
/// site (`--install` starts them from the e2e build cache). Never run it against a cluster
/// that has the real components.
#[derive(Debug, Parser)]
#[command(name = "coldsite-site-simulator", version, verbatim_doc_comment)]
struct Args {
    /// A site to simulate, as NAME=KUBECONFIG (repeat for several sites). NAME appears in
    /// logs.
    #[arg(long = "site", value_name = "NAME=KUBECONFIG", required = true, value_parser = parse_site)]
    sites: Vec<(String, PathBuf)>,
    /// The load balancer's address pool at a site, as NAME=CIDR; by default the N-th site
    /// gets 172.(16+N).0.0/16. Pools of sites must not overlap, and a pool must be at least
    /// as large as the site's Service range.
    #[arg(long = "lb-pool", value_name = "NAME=CIDR", value_parser = parse_pool)]
    lb_pools: Vec<(String, Ipv4Net)>,
    /// First install upstream's CRDs of KubeVirt, VolSync and external-snapshotter, the
    /// simulated CSI driver's default classes and virt-api's admission rules, serve
    /// virt-api's freeze and unfreeze through an APIService, and run
    /// VolSync's controller and the snapshot-controller against each site, all from the
    /// build cache of `e2e/controlplane/build.sh`. Only for clusters without those
    /// projects.
    #[arg(long)]
    install: bool,
    /// Where `--install` writes the controllers' logs.
    #[arg(long, default_value = ".")]
    log_dir: PathBuf,
    /// Sites share a network (as with Submariner): ClusterIPs reach across sites.
    #[arg(long)]
    shared_network: bool,
    /// Only these namespaces (repeat; default: all).
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 200)]
    tick_ms: u64,
    /// Milliseconds from a VMI's launcher pod running to the VMI Running.
    #[arg(long, default_value_t = 1000)]
    boot_delay_ms: u64,
    /// Milliseconds a script Job's pod runs.
    #[arg(long, default_value_t = 1000)]
    job_duration_ms: u64,
    /// Milliseconds a mover's transfer takes.
    #[arg(long, default_value_t = 500)]
    sync_duration_ms: u64,
    /// Seconds after which a pass over a site is abandoned and started again. Raise it with
    /// thousands of VMs at a site, where one pass takes longer and an abandoned one reaches
    /// only the first objects each time.
    #[arg(long, default_value_t = 20)]
    pass_timeout_secs: u64,
}

fn parse_site(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_owned(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=KUBECONFIG, got {text:?}")),
    }
}

fn parse_pool(text: &str) -> Result<(String, Ipv4Net), String> {
    let (name, cidr) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=CIDR, got {text:?}"))?;
    let cidr = cidr.parse().map_err(|e| format!("{cidr:?} is not an IPv4 CIDR: {e}"))?;
    Ok((name.to_owned(), cidr))
}

async fn client_for(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building a kube client")
}

/// Runs one upstream controller, logging to `log`; it dies with this process, however
/// this process ends.
fn run(binaries: &Binaries, name: &str, args: Vec<String>, log: &Path) -> Result<std::process::Child> {
    coldsite_e2e::spawn_tied(&binaries.path(name), args, log).with_context(|| format!("starting {name}"))
}

/// Installs a site's upstream parts and starts its controllers.
async fn install(name: &str, kubeconfig: &Path, client: &Client, log_dir: &Path) -> Result<Vec<std::process::Child>> {
    let binaries = Binaries::locate()?;
    site::install(client, &binaries)
        .await
        .with_context(|| format!("installing the site parts at {name}"))?;
    let kubeconfig_yaml = std::fs::read_to_string(kubeconfig)?;
    site::serve_virt_api(client, &kubeconfig_yaml)
        .await
        .with_context(|| format!("serving the simulated virt-api at {name}"))?;
    let kubeconfig = std::fs::canonicalize(kubeconfig)?;
    let (volsync, snapshots) = (free_port()?, free_port()?);
    let children = vec![
        run(
            &binaries,
            "volsync",
            site::volsync_args(&kubeconfig, volsync),
            &log_dir.join(format!("{name}-volsync.log")),
        )?,
        run(
            &binaries,
            "snapshot-controller",
            site::snapshot_controller_args(&kubeconfig, snapshots),
            &log_dir.join(format!("{name}-snapshot-controller.log")),
        )?,
    ];
    for (port, path) in [(volsync, "/readyz"), (snapshots, "/metrics")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !site::http_ok(port, path).await.unwrap_or(false) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "a controller of site {name} did not answer {path} (see its log in {})",
                    log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    tracing::info!(site = %name, "VolSync and the snapshot-controller are running");
    Ok(children)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
    let mut sites = Vec::new();
    let mut controllers = Vec::new();
    for (i, (name, path)) in args.sites.iter().enumerate() {
        let client = client_for(path).await?;
        if args.install {
            controllers.extend(install(name, path, &client, &args.log_dir).await?);
        }
        let lb_pool = match args.lb_pools.iter().find(|(n, _)| n == name) {
            Some((_, pool)) => *pool,
            None => format!("172.{}.0.0/16", 16 + i % 16).parse()?,
        };
        sites.push(SimSite {
            name: name.clone(),
            client,
            lb_pool,
            management_only: false,
        });
    }
    let mut config = SimConfig {
        tick: Duration::from_millis(args.tick_ms),
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        job_duration: Duration::from_millis(args.job_duration_ms),
        sync_duration: Duration::from_millis(args.sync_duration_ms),
        shared_network: args.shared_network,
        pass_timeout: Duration::from_secs(args.pass_timeout_secs),
        ..SimConfig::default()
    };
    if !args.namespaces.is_empty() {
        config = config.with_namespaces(args.namespaces.clone());
    }
    let handle = Simulator::start(sites, config);
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.stop().await;
    drop(controllers);
    Ok(())
}
