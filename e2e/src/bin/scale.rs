//! `coldsite-scale`: measures coldsite-controller as it ships (a release build, in a process
//! of its own) against three real control planes (management, HQ, DR) with the real
//! VolSync and snapshot controllers at the sites and the site simulator in its own
//! process. Once the N VMs' disks are bound at HQ (a protected VM has its disks: their
//! provisioning is the site's), it starts the controller, protects the VMs, stays idle (or, with `--rpo` short enough, syncs on schedule
//! and prints the cost per sync), then runs a test failover of one plan over all of them,
//! and prints what coldsite asked of each API server (from their audit logs,
//! which record only coldsite's identity), its memory and CPU beside the simulator's and
//! the API servers', reconcile latency, and the failover's RTO against the plan's critical
//! path. A bench, not a test: it asserts nothing.
//!
//!   dist/build.sh   # the image whose controller is measured
//!   cargo run --release -p coldsite-e2e --bin coldsite-scale -- --vms 1000

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use coldsite_api::ProtectedVM;
use coldsite_api::RecoveryRun;
use coldsite_api::recovery_run::{RecoveryRunStatus, RunPhase, StepStatus};
use coldsite_e2e::exchange::{ControllerProcess, dynamic};
use coldsite_e2e::image::ImageArchive;
use coldsite_e2e::manifests::repo_root;
use coldsite_e2e::scale::report::{Table, ratio};
use coldsite_e2e::scale::{self, Cluster, NS, audit, process_stats, rto};
use coldsite_engine::time::from_k8s;
use kube::api::{Api, PostParams};

#[derive(Debug, Parser)]
#[command(name = "coldsite-scale", version, verbatim_doc_comment)]
/// Measures coldsite-controller at scale on real API servers and prints the figures.
///
/// It starts three control planes (management, HQ, DR) on loopback, N one-disk VMs at HQ
/// (and waits until their disks are bound), a ProtectedVM each, and a plan of dependent
/// groups over all of them; then measures protection, an idle window, and a test failover
/// of the plan.
struct Args {
    /// VMs at HQ, each protected, all in one plan.
    #[arg(long, default_value_t = 1000)]
    vms: usize,
    /// Dependent groups of the plan (at most 32).
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Seconds with nothing changing, for the idle figures.
    #[arg(long, default_value_t = 600)]
    idle_secs: u64,
    /// Simulated boot time of every VM, in seconds.
    #[arg(long, default_value_t = 30)]
    boot_secs: u64,
    /// Each VM's RPO (its ProtectedVM's spec.replication.rpo; it syncs every half RPO). The
    /// default leaves the idle window with nothing changing; with syncs due in the window (such
    /// as 5m) it is a steady window of syncs, and the bench prints their cost per sync.
    #[arg(long, default_value = "24h")]
    rpo: String,
    /// How long each VM's recovery points are kept (spec.replication.retention).
    #[arg(long, default_value = "48h")]
    retention: String,
    /// The sites share a network (as with Submariner): replication destinations are ClusterIP
    /// Services (the Sites' spec.replication.serviceType), which take no node port. By
    /// default they are LoadBalancer Services, each of which takes one, and a site's default
    /// node-port range (30000-32767) holds 2,768: more VMs than that need this.
    #[arg(long)]
    shared_network: bool,
    /// Skip the test failover.
    #[arg(long)]
    no_failover: bool,
    /// Give up on a phase after this many minutes.
    #[arg(long, default_value_t = 60)]
    phase_timeout_min: u64,
    /// The coldsite-controller binary to measure; by default the one in the image that
    /// `dist/build.sh` built (as it ships), else built here with --release.
    #[arg(long)]
    controller: Option<PathBuf>,
    /// The site simulator binary; by default built here with --release.
    #[arg(long)]
    simulator: Option<PathBuf>,
    /// Keep the logs (controller, simulator, API servers' audit) after the bench.
    #[arg(long)]
    keep: bool,
}

/// The site simulator over HQ and DR, in its own process, logging into `dir`.
fn start_simulator(bin: &Path, args: &Args, hq: &Cluster, dr: &Cluster, dir: &Path) -> Result<tokio::process::Child> {
    tokio::process::Command::new(bin)
        .args(["--site", &format!("hq={}", hq.cp.kubeconfig_path().display())])
        .args(["--site", &format!("dr={}", dr.cp.kubeconfig_path().display())])
        .args([
            "--namespace",
            NS,
            "--namespace",
            &coldsite_engine::names::test_namespace(NS),
        ])
        .args(["--boot-delay-ms", &(args.boot_secs * 1000).to_string()])
        .args(args.shared_network.then_some("--shared-network"))
        // A pass over thousands of VMs takes longer than the default 20 s.
        .args(["--pass-timeout-secs", &(20 + args.vms / 10).to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(std::fs::File::create(dir.join("simulator.log"))?))
        .stderr(Stdio::from(std::fs::File::create(dir.join("simulator.err"))?))
        .kill_on_drop(true)
        .spawn()
        .context("starting the site simulator")
}

/// The node ports of a site's default range (30000-32767), one per LoadBalancer Service.
const NODE_PORTS: usize = 2768;

/// A window of the bench, for the audit logs and the CPU readings.
struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cpu: BTreeMap<String, f64>,
}

struct Bench {
    args: Args,
    start: Instant,
    dir: tempfile::TempDir,
    clusters: [(String, Cluster); 3],
    controller: ControllerProcess,
    simulator: tokio::process::Child,
}

fn say(start: Instant, text: impl AsRef<str>) {
    let s = start.elapsed().as_secs();
    println!("[{:>3}:{:02}] {}", s / 60, s % 60, text.as_ref());
}

/// Progress lines at most every 30 s while a phase waits.
struct Ticker {
    start: Instant,
    last: std::cell::Cell<Instant>,
}

impl Ticker {
    fn new(start: Instant) -> Self {
        Self {
            start,
            last: std::cell::Cell::new(Instant::now()),
        }
    }

    fn say(&self, text: impl FnOnce() -> String) {
        if self.last.get().elapsed() > Duration::from_secs(30) {
            say(self.start, text());
            self.last.set(Instant::now());
        }
    }
}

/// Builds `bin` of `package` with --release and returns its path.
fn release_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-q", "-p", package, "--bin", bin])
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("building {bin}"))?;
    if !status.success() {
        bail!("cargo build --release -p {package} --bin {bin} failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    Ok(target.join("release").join(bin))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for (flag, value) in [("--rpo", &args.rpo), ("--retention", &args.retention)] {
        if let Err(e) = coldsite_engine::model::parse_duration(value) {
            bail!("{flag} {value}: {e}; give a duration such as 15m or 24h");
        }
    }
    let start = Instant::now();
    let shipped = tempfile::tempdir()?;
    let controller = match &args.controller {
        Some(p) => p.clone(),
        None => match ImageArchive::controller() {
            Ok(image) => image.extract("coldsite-controller", &shipped.path().join("coldsite-controller"))?,
            Err(_) => release_binary("coldsite-operator", "coldsite-controller")?,
        },
    };
    let simulator = match &args.simulator {
        Some(p) => p.clone(),
        None => release_binary("coldsite-e2e", "coldsite-site-simulator")?,
    };
    say(
        start,
        format!("measuring {}; starting three control planes", controller.display()),
    );
    let mut bench = Bench::start(args, start, &controller, &simulator).await?;
    let result = bench.run().await;
    let _ = bench.simulator.kill().await;
    let _ = bench.controller.kill().await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}", bench.controller.log_tail(30));
        eprintln!("{e:#}");
    }
    if bench.args.keep {
        let kept = bench.dir.keep();
        println!("logs kept in {}", kept.display());
    }
    result
}

impl Bench {
    async fn start(args: Args, start: Instant, controller: &Path, simulator: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("coldsite-scale-").tempdir()?;
        let (mgmt, hq, dr) = tokio::try_join!(
            Cluster::start("scale-mgmt", dir.path()),
            Cluster::start("scale-hq", dir.path()),
            Cluster::start("scale-dr", dir.path()),
        )?;
        tokio::try_join!(hq.cp.ensure_site(), dr.cp.ensure_site())?;
        scale::install_coldsite_objects(&mgmt, &hq, &dr, args.shared_network).await?;
        if !args.shared_network && args.vms > NODE_PORTS {
            say(
                start,
                format!(
                    "warning: DR's {NODE_PORTS} node ports hold that many LoadBalancer destinations, no more (see --shared-network)"
                ),
            );
        }
        let simulator = start_simulator(simulator, &args, &hq, &dr, dir.path())?;
        say(start, format!("creating {} VMs at HQ", args.vms));
        scale::create_vms(&hq.admin, args.vms, 16).await?;
        // Protected VMs have their disks: their provisioning is the site's, not coldsite's.
        let ticker = Ticker::new(start);
        let bound = scale::poll(
            Duration::from_secs(args.phase_timeout_min * 60),
            Duration::from_secs(2),
            || async {
                let k = scale::count_bound_disks(&hq.admin).await?;
                ticker.say(|| format!("{k}/{} disks bound at HQ", args.vms));
                Ok((k >= args.vms).then_some(()))
            },
        )
        .await?;
        anyhow::ensure!(bound.is_some(), "the VMs' disks were not bound at HQ in time");
        say(start, "the VMs' disks are bound at HQ");
        scale::plan(&mgmt.admin, args.vms, args.groups).await?;
        let kubeconfig = mgmt.write_coldsite_kubeconfig(dir.path())?;
        let controller = ControllerProcess::start(
            controller,
            &kubeconfig,
            dir.path().join("controller.log"),
            &["--no-leader-election", "--lease-namespace", "coldsite-system"],
        )?;
        say(
            start,
            format!("controller and simulator running; logs in {}", dir.path().display()),
        );
        Ok(Self {
            args,
            start,
            dir,
            clusters: [("management".into(), mgmt), ("HQ".into(), hq), ("DR".into(), dr)],
            controller,
            simulator,
        })
    }

    async fn run(&mut self) -> Result<()> {
        let protection = self.protection().await?;
        let idle = self.idle().await?;
        let mut tables = vec![protection, idle];
        if !self.args.no_failover {
            tables.push(self.test_failover().await?);
        }
        tables.push(self.reconcile_latency().await);
        for t in &tables {
            print!("{}", t.render());
        }
        Ok(())
    }

    /// CPU seconds so far of the controller, the simulator and each process of each cluster:
    /// API server, etcd, controller manager, and at the sites VolSync's controller and the
    /// snapshot-controller.
    fn cpu(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut put = |name: String, pid: Option<u32>| {
            if let Some(r) = pid.and_then(|p| process_stats::read(p).ok()) {
                out.insert(name, r.cpu_seconds);
            }
        };
        put("coldsite-controller".into(), self.controller.pid());
        put("site simulator".into(), self.simulator.id());
        for (name, c) in &self.clusters {
            for (component, pid) in c.cp.pids() {
                put(format!("{name} {}", component.name()), Some(pid));
            }
        }
        out
    }

    fn open(&self) -> (DateTime<Utc>, BTreeMap<String, f64>) {
        (Utc::now(), self.cpu())
    }

    fn close(&self, (from, before): (DateTime<Utc>, BTreeMap<String, f64>)) -> Window {
        let after = self.cpu();
        let cpu = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or_default()))
            .collect();
        Window {
            from,
            to: Utc::now(),
            cpu,
        }
    }

    /// coldsite's requests in a window, by cluster.
    fn requests(&self, w: &Window) -> Result<Vec<(String, Vec<audit::Request>)>> {
        self.clusters
            .iter()
            .map(|(name, c)| Ok((name.clone(), audit::read(&c.audit_log, w.from, w.to)?)))
            .collect()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.phase_timeout_min * 60)
    }

    async fn protection(&self) -> Result<Table> {
        let n = self.args.vms;
        let window = self.open();
        let replication = scale::Replication {
            rpo: &self.args.rpo,
            retention: &self.args.retention,
        };
        scale::protect(&self.clusters[0].1.admin, n, 16, replication).await?;
        let mgmt = self.clusters[0].1.admin.clone();
        let ticker = Ticker::new(self.start);
        let done = scale::poll(self.timeout(), Duration::from_secs(2), || async {
            let k = scale::count_phase(&mgmt, "Protected").await?;
            ticker.say(|| format!("protected {k}/{n}"));
            Ok((k == n).then_some(()))
        })
        .await?;
        let w = self.close(window);
        let secs = (w.to - w.from).as_seconds_f64();
        let mut t = Table::new(format!("Protection of {n} VMs"));
        match done {
            Some(()) => t.row(
                "time until all are Protected",
                format!("{secs:.0} s ({:.1} VMs/s)", n as f64 / secs),
            ),
            None => t.row("time until all are Protected", format!("not within {secs:.0} s")),
        };
        self.memory_rows(&mut t);
        self.request_rows(&mut t, &w, n)?;
        say(self.start, "protection measured");
        Ok(t)
    }

    fn memory_rows(&self, t: &mut Table) {
        if let Some(r) = self.controller.pid().and_then(|p| process_stats::read(p).ok()) {
            t.row(
                "controller RSS now / peak",
                format!("{:.0} MiB / {:.0} MiB", r.rss_mib, r.peak_rss_mib),
            );
        }
    }

    /// Requests by cluster (total, writes, per VM, latency) and the most frequent kinds,
    /// then the CPU of every process in the window.
    fn request_rows(&self, t: &mut Table, w: &Window, per: usize) -> Result<()> {
        for (cluster, reqs) in self.requests(w)? {
            let writes = reqs.iter().filter(|r| r.is_write()).count();
            t.row(
                format!("{cluster}: requests (writes), per VM"),
                format!("{} ({writes}), {}", reqs.len(), ratio(reqs.len() as f64, per as f64)),
            );
            let q = |x| audit::latency_quantile(&reqs, x).map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0));
            t.row(
                format!("{cluster}: server time p50 / p99"),
                format!("{} / {}", q(0.5), q(0.99)),
            );
            t.counts(&format!("{cluster}: "), &audit::by_verb_and_resource(&reqs), 6);
        }
        for (process, secs) in &w.cpu {
            t.row(format!("CPU s: {process}"), format!("{secs:.1}"));
        }
        Ok(())
    }

    /// Syncs due in a window of `secs` by the VMs' schedule, when it is shorter than the
    /// window (else the window is idle).
    fn scheduled_syncs(&self, secs: f64) -> Option<f64> {
        let every = self.sync_interval()?.as_secs_f64();
        (every <= secs).then(|| self.args.vms as f64 * secs / every)
    }

    /// How often each VM syncs: coldsite schedules a sync every half RPO.
    fn sync_interval(&self) -> Option<Duration> {
        let rpo = coldsite_engine::model::parse_duration(&self.args.rpo).ok()?;
        Some(coldsite_engine::rpo::sync_interval(rpo))
    }

    /// With nothing changing (the default RPO), or with syncs on their schedule.
    async fn idle(&self) -> Result<Table> {
        let steady = self.scheduled_syncs(self.args.idle_secs as f64).is_some();
        let what = if steady { "steady, syncing" } else { "idle" };
        say(self.start, format!("{what} for {} s", self.args.idle_secs));
        let reconciled = self.reconciles().await;
        let window = self.open();
        tokio::time::sleep(Duration::from_secs(self.args.idle_secs)).await;
        let w = self.close(window);
        let mut reconciles = self.reconciles().await;
        for (kind, count) in &mut reconciles {
            *count -= reconciled.get(kind).copied().unwrap_or_default();
        }
        let minutes = (w.to - w.from).as_seconds_f64() / 60.0;
        let syncs = self.scheduled_syncs(minutes * 60.0);
        let mut t = match syncs {
            Some(k) => Table::new(format!(
                "Steady, {minutes:.1} min with a sync every {} s per VM (RPO {}; {k:.0} due)",
                self.sync_interval().unwrap_or_default().as_secs(),
                self.args.rpo
            )),
            None => Table::new(format!("Idle, {minutes:.1} min with nothing changing")),
        };
        for (cluster, reqs) in self.requests(&w)? {
            let writes: Vec<&audit::Request> = reqs.iter().filter(|r| r.is_write()).collect();
            let (all, wrote) = (reqs.len() as f64, writes.len() as f64);
            t.row(
                format!("{cluster}: requests / min, writes / min"),
                format!(
                    "{:.1}, {:.1}{}",
                    all / minutes,
                    wrote / minutes,
                    if syncs.is_some() { "" } else { " (target 0)" }
                ),
            );
            if let Some(k) = syncs {
                t.row(
                    format!("{cluster}: requests, writes per sync due"),
                    format!("{}, {}", ratio(all, k), ratio(wrote, k)),
                );
            }
            t.counts(&format!("{cluster} writes: "), &audit::by_verb_and_resource(writes), 5);
            if syncs.is_some() {
                let reads = reqs.iter().filter(|r| !r.is_write());
                t.counts(&format!("{cluster} reads: "), &audit::by_verb_and_resource(reads), 3);
            }
        }
        reconcile_rows(&mut t, &reconciles, syncs);
        self.memory_rows(&mut t);
        for (process, secs) in &w.cpu {
            t.row(
                format!("CPU % of a core: {process}"),
                format!("{:.1}", secs / (minutes * 60.0) * 100.0),
            );
        }
        Ok(t)
    }

    async fn test_failover(&self) -> Result<Table> {
        let n = self.args.vms;
        say(self.start, format!("test failover of the {n}-VM plan"));
        let mgmt = &self.clusters[0].1.admin;
        let runs: Api<RecoveryRun> = Api::namespaced(mgmt.clone(), NS);
        let run: RecoveryRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryRun", "metadata": {"name": "scale-test"},
            "spec": {"plan": "scale", "action": "TestFailover"}}))?;
        let window = self.open();
        runs.create(&PostParams::default(), &run).await?;
        let ticker = Ticker::new(self.start);
        let finished = scale::poll(self.timeout(), Duration::from_secs(2), || async {
            let r = runs.get("scale-test").await?;
            let st = r.status.clone().unwrap_or_default();
            ticker.say(|| format!("run {:?}, {}", st.phase, st.progress.clone().unwrap_or_default()));
            Ok(matches!(st.phase, Some(RunPhase::Succeeded | RunPhase::Failed)).then_some(r))
        })
        .await?;
        let w = self.close(window);
        let mut t = Table::new(format!("Test failover of a {n}-VM plan in {} groups", self.args.groups));
        let status = finished.and_then(|r| r.status).unwrap_or_default();
        let critical = self.args.groups.min(n) as f64 * self.args.boot_secs as f64;
        t.row("outcome", format!("{:?}", status.phase));
        t.row(
            "RTO / critical path (groups x boot)",
            format!(
                "{} s / {critical:.0} s = {}",
                status.rto_seconds.map_or("-".into(), |s| s.to_string()),
                status.rto_seconds.map_or("-".into(), |s| ratio(s as f64, critical))
            ),
        );
        let dr_writes = self.requests(&w)?[2].1.iter().filter(|r| r.is_write()).count() as f64;
        let vms = n as f64;
        t.row(
            "DR writes per VM / minimum (PVC, VM, power-on)",
            format!("{} / 3 = {}", ratio(dr_writes, vms), ratio(dr_writes, 3.0 * vms)),
        );
        // Snapshots are namespaced: a test restores into its own namespace from a copy of each
        // disk's point there (a VolumeSnapshotContent on the same storage snapshot, and its
        // VolumeSnapshot), two writes more for each of these one-disk VMs.
        t.row(
            "DR writes per VM / minimum with the test's copy of the point (+ content, snapshot)",
            format!("{} / 5 = {}", ratio(dr_writes, vms), ratio(dr_writes, 5.0 * vms)),
        );
        self.rto_rows(&mut t, &status).await?;
        self.largest_rows(&mut t).await?;
        self.request_rows(&mut t, &w, n)?;
        Ok(t)
    }

    /// Where the run's time went, by stage, from its own records and its VMs'.
    async fn rto_rows(&self, t: &mut Table, status: &RecoveryRunStatus) -> Result<()> {
        let Some(start) = status.start_time.as_ref().map(from_k8s) else {
            return Ok(());
        };
        let pvms: Api<ProtectedVM> = Api::namespaced(self.clusters[0].1.admin.clone(), NS);
        let vm_steps: Vec<StepStatus> = pvms
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.status?.last_run)
            .flat_map(|r| r.steps)
            .collect();
        // The bench runs one run, so every lastRun is its.
        let groups: Vec<String> = status.groups.iter().map(|g| g.name.clone()).collect();
        let b = rto::breakdown(start, &groups, &status.steps, &vm_steps, &self.ready_at_dr().await?);
        for (i, stage) in rto::STAGES.iter().enumerate() {
            t.row(
                format!("RTO stage, all groups / slowest: {stage}"),
                format!("{:.0} s / {:.0} s", b.total[i], b.slowest[i]),
            );
        }
        t.row(
            "a VM from power-on to ready at the site, p50 / max (simulated boot)",
            format!("{:.0} s / {:.0} s ({} s)", b.boot.0, b.boot.1, self.args.boot_secs),
        );
        t.row(
            "a VM from ready at the site until coldsite saw it, p50 / max",
            format!("{:.0} s / {:.0} s", b.noticed.0, b.noticed.1),
        );
        Ok(())
    }

    /// When each VMI at DR became Ready, by name (the bench names each ProtectedVM as its VM).
    async fn ready_at_dr(&self) -> Result<BTreeMap<String, DateTime<Utc>>> {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
            "virtualmachineinstances",
        );
        let vmis: Api<kube::api::DynamicObject> = Api::all_with(self.clusters[2].1.admin.clone(), &ar);
        let mut ready = BTreeMap::new();
        for vmi in vmis.list(&Default::default()).await?.items {
            let conditions = vmi.data.pointer("/status/conditions").and_then(|c| c.as_array());
            let since = conditions
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
                .and_then(|c| c["lastTransitionTime"].as_str())
                .and_then(|t| t.parse::<DateTime<Utc>>().ok());
            if let (Some(name), Some(since)) = (vmi.metadata.name, since) {
                ready.insert(name, since);
            }
        }
        Ok(ready)
    }

    /// The largest objects coldsite writes on the management cluster.
    async fn largest_rows(&self, t: &mut Table) -> Result<()> {
        let mgmt = &self.clusters[0].1.admin;
        let mut objects = Vec::new();
        for (kind, plural) in [
            ("RecoveryRun", "recoveryruns"),
            ("ProtectedVM", "protectedvms"),
            ("RecoveryPlan", "recoveryplans"),
        ] {
            let list = dynamic(mgmt, NS, "coldsite.io", "v1alpha1", kind, plural)
                .list(&Default::default())
                .await?;
            objects.extend(list.items.into_iter().map(|o| (kind, o)));
        }
        if let Some((name, bytes)) = scale::largest(objects.iter().map(|(k, o)| (*k, o))) {
            t.row(
                "largest object (etcd's limit 1.5 MiB)",
                format!("{name}: {:.1} KiB", bytes as f64 / 1024.0),
            );
        }
        Ok(())
    }

    /// Reconciles so far by kind, from the controller's histogram.
    async fn reconciles(&self) -> BTreeMap<String, f64> {
        let text = self.controller.metrics_text().await;
        histogram(&text, "coldsite_reconcile_duration_seconds")
            .into_iter()
            .map(|(kind, buckets)| (kind, buckets.last().map_or(0.0, |b| b.1)))
            .collect()
    }

    /// Reconcile latency quantiles by kind from the controller's histogram.
    async fn reconcile_latency(&self) -> Table {
        let text = self.controller.metrics_text().await;
        let mut t = Table::new("Reconcile latency (coldsite_reconcile_duration_seconds, bucket bounds)");
        for (kind, buckets) in histogram(&text, "coldsite_reconcile_duration_seconds") {
            let total = buckets.last().map_or(0.0, |b| b.1);
            let q = |x: f64| {
                buckets
                    .iter()
                    .find(|(_, c)| *c >= x * total)
                    .map_or("-".into(), |(le, _)| format!("<= {le} s"))
            };
            t.row(
                format!("{kind}: count, p50, p90, p99"),
                format!("{total:.0}, {}, {}, {}", q(0.5), q(0.9), q(0.99)),
            );
        }
        t
    }
}

/// The window's reconciles by kind, and per sync due when the window is steady.
fn reconcile_rows(t: &mut Table, reconciles: &BTreeMap<String, f64>, syncs: Option<f64>) {
    for (kind, count) in reconciles.iter().filter(|(_, c)| **c > 0.0) {
        let per_sync = syncs.map(|k| format!(" ({} per sync due)", ratio(*count, k)));
        t.row(
            format!("{kind} reconciles"),
            format!("{count:.0}{}", per_sync.unwrap_or_default()),
        );
    }
}

/// A Prometheus histogram's cumulative buckets by `kind` label: (le, count), ascending.
fn histogram(text: &str, name: &str) -> BTreeMap<String, Vec<(String, f64)>> {
    let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let prefix = format!("{name}_bucket{{");
    for line in text.lines().filter_map(|l| l.strip_prefix(&prefix)) {
        let Some((labels, count)) = line.split_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        if let (Some(kind), Some(le), Ok(count)) = (label("kind"), label("le"), count.trim().parse::<f64>()) {
            out.entry(kind).or_default().push((le, count));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_read_by_kind() {
        let text = "# HELP x\n\
            coldsite_reconcile_duration_seconds_bucket{kind=\"ProtectedVM\",le=\"0.1\"} 3\n\
            coldsite_reconcile_duration_seconds_bucket{kind=\"ProtectedVM\",le=\"+Inf\"} 4\n\
            coldsite_reconcile_duration_seconds_sum{kind=\"ProtectedVM\"} 1.5\n";
        let h = histogram(text, "coldsite_reconcile_duration_seconds");
        assert_eq!(
            h["ProtectedVM"],
            vec![("0.1".to_owned(), 3.0), ("+Inf".to_owned(), 4.0)]
        );
    }
}
