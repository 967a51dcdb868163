//! **The site simulator: a test double for what needs nodes, disks or a network.**
//!
//! The e2e sites run a real kube-apiserver and kube-controller-manager, and the upstream
//! controllers that need no node: VolSync's controller and external-snapshotter's
//! snapshot-controller, over upstream's CRDs (see [`crate::site`]). The simulator plays the
//! rest, and says so in its logs. It lives under `e2e/`, is never shipped in the chart, and
//! must not be mistaken for the real thing.
//!
//! At every site, every [`SimConfig::tick`], it reads the objects it plays for from caches
//! fed by watches (`cache`; in all namespaces, or in [`SimConfig::namespaces`]) and fixes
//! what differs from what the real component would have done: a level-triggered loop that
//! survives restarts of itself and outages of a site (it logs and retries; it never exits on
//! an API error).
//!
//! What it plays:
//! - **A kubelet** ([`kubelet`]) on a Ready Node [`NODE_NAME`]: script Jobs' pods,
//!   VolSync's rsync-TLS mover pods ([`mover`]: the source's mover copies its volume's data
//!   to the destination's mover at the address VolSync gave it) and virt-launcher pods.
//! - **The CSI driver's sidecars** ([`csi`]): the provisioner (PVs for claims, restores from
//!   snapshots) and the snapshotter (snapshot contents, bound before they are ready; and
//!   [`group_snapshot`]s, every member cut at one instant).
//! - **Disks** ([`disk`]): each volume holds simulated data, the list of writes it has seen,
//!   so that a test can prove what a restored disk holds.
//! - **KubeVirt's virt-controller and virt-handler** ([`kubevirt`]): a VMI per running VM,
//!   its launcher pod, boot, guest agent and interfaces from the cloud-init network data;
//!   and virt-api's admission rules ([`admission`]), enforced by the API servers as
//!   ValidatingAdmissionPolicies.
//! - **A load balancer and the network between sites** ([`network`]).
//! - **virt-api's `freeze` and `unfreeze` subresources** ([`virt_api`]), served through a
//!   real APIService, and the guest's frozen filesystems they act on.
//!
//! Faults ([`Faults`]) are changed at run time through [`SimulatorHandle::faults`].

pub mod admission;
mod cache;
pub mod csi;
pub mod disk;
mod faults;
pub mod group_snapshot;
pub mod kubelet;
pub mod kubevirt;
pub mod mover;
mod netdata;
pub mod network;
pub mod resources;
mod util;
pub mod virt_api;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cache::{Cached, SiteCache};
pub use disk::DiskData;
pub use faults::{Faults, SiteFaults};
pub use kubelet::{EXIT_CODE_ENV, NODE_NAME};
pub use resources::Kind;

/// The field manager of everything the simulator writes.
pub const FIELD_MANAGER: &str = "coldsite-site-simulator";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pause between two reconcile passes of a site. Default 200 ms.
    pub tick: Duration,
    /// From a VMI's launcher pod running to the VMI Running and Ready (see also
    /// `SiteFaults::slow_boot`). Default 1 s.
    pub boot_delay: Duration,
    /// How long a script Job's pod runs before it terminates. Default 1 s.
    pub job_duration: Duration,
    /// How long a mover's transfer takes once connected. Default 500 ms.
    pub sync_duration: Duration,
    /// How long a source mover keeps trying to reach its destination before it fails
    /// (client.sh: five attempts over about a minute). Default 20 s.
    pub mover_retry_window: Duration,
    /// From a completed transfer to the destination mover's exit (server.sh: 5 s).
    /// Default 1 s; see also `SiteFaults::slow_mover_exit`.
    pub mover_exit_delay: Duration,
    /// From a snapshot's handle to `readyToUse` (see also `SiteFaults::slow_snapshots`).
    /// Default 300 ms.
    pub snapshot_ready_delay: Duration,
    /// Whether the sites share a network (as with Submariner): a ClusterIP is then
    /// reachable from every site, not just its own. Default false.
    pub shared_network: bool,
    /// A pass over one site that takes longer is abandoned (and retried). Default 20 s.
    pub pass_timeout: Duration,
    /// Only these namespaces, at every site (cluster-scoped objects the simulator
    /// creates or deletes are tied to them); `None` for all namespaces. Tests that share
    /// an API server each run a simulator over their own namespaces.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(200),
            boot_delay: Duration::from_secs(1),
            job_duration: Duration::from_secs(1),
            sync_duration: Duration::from_millis(500),
            mover_retry_window: Duration::from_secs(20),
            mover_exit_delay: Duration::from_secs(1),
            snapshot_ready_delay: Duration::from_millis(300),
            shared_network: false,
            pass_timeout: Duration::from_secs(20),
            namespaces: None,
        }
    }
}

impl SimConfig {
    /// Restricts the simulator to these namespaces (at every site).
    pub fn with_namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }
}

/// One site the simulator plays at.
#[derive(Clone)]
pub struct SimSite {
    /// The site's name in logs and in [`Faults`].
    pub name: String,
    pub client: Client,
    /// The address pool of the site's load balancer ([`network`]).
    pub lb_pool: Ipv4Net,
    /// A management cluster of its own: only its kubelet is played, for the Jobs of scripts
    /// that run there; it has no KubeVirt, storage or load balancer.
    pub management_only: bool,
}

/// What every site task shares.
pub(crate) struct Ctx {
    pub config: SimConfig,
    pub faults: Arc<Mutex<Faults>>,
    pub sites: Vec<SimSite>,
    /// What the simulator sees of each site, by site index.
    caches: Vec<SiteCache>,
}

impl Ctx {
    pub(crate) fn client(&self, site: usize) -> Client {
        self.sites[site].client.clone()
    }

    /// The watch-fed caches of a site.
    pub(crate) fn cache(&self, site: usize) -> &SiteCache {
        &self.caches[site]
    }

    /// The cached objects of a custom kind at a site; `None` while its CRD is not
    /// installed there (or the site plays only a kubelet).
    pub(crate) fn cached(&self, kind: Kind, site: usize) -> Option<Vec<Arc<DynamicObject>>> {
        self.caches[site].custom(kind).map(Cached::all)
    }

    pub(crate) fn site_name(&self, site: usize) -> &str {
        &self.sites[site].name
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub(crate) fn in_scope(&self, namespace: &str) -> bool {
        self.config
            .namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
    }

    /// Lists a custom kind at a site, in scope, fresh (for one-off acts such as a power
    /// loss; passes read [`Self::cached`]). `None` if its CRD is not installed there.
    pub(crate) async fn list(&self, kind: Kind, site: usize) -> Result<Option<Vec<DynamicObject>>> {
        let client = self.client(site);
        let apis = match &self.config.namespaces {
            Some(namespaces) if kind.namespaced => namespaces
                .iter()
                .map(|ns| kind.namespaced(client.clone(), ns))
                .collect(),
            _ => vec![kind.all(client)],
        };
        let mut items = Vec::new();
        for api in apis {
            match api.list(&ListParams::default()).await {
                Ok(list) => items.extend(list.items),
                Err(e) if util::is_not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "listing {} at site {}",
                        kind.plural,
                        self.site_name(site)
                    )));
                }
            }
        }
        Ok(Some(items))
    }

    /// Lists a namespaced built-in kind at a site, in scope, fresh.
    pub(crate) async fn list_typed<K>(&self, site: usize) -> Result<Vec<K>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let client = self.client(site);
        let apis: Vec<Api<K>> = match &self.config.namespaces {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
            None => vec![Api::all(client)],
        };
        let mut items = Vec::new();
        for api in apis {
            let list = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing {} at site {}", K::plural(&()), self.site_name(site)))?;
            items.extend(list.items);
        }
        Ok(items)
    }
}

/// What one site task remembers between passes. Nothing here is needed for
/// correctness after a restart: timers just start over. Shared by the objects a pass works
/// on at once ([`PARALLEL`]).
#[derive(Default)]
pub(crate) struct SiteState {
    timers: Mutex<Timers>,
    pub node_checked: Mutex<Option<Instant>>,
    errors: Mutex<Vec<anyhow::Error>>,
    last_error: Option<String>,
}

#[derive(Default)]
struct Timers {
    started: HashMap<String, Instant>,
    touched: HashSet<String>,
}

/// How many objects of one kind a pass works on at once: at thousands of VMs, one request
/// after another would make a pass outlast its timeout.
pub(crate) const PARALLEL: usize = 16;

/// Works on `items` [`PARALLEL`] at once; what fails goes to the pass's errors.
/// (A `Vec`, not any iterator: a spawned pass cannot hold an adapter's closure across an
/// await.)
pub(crate) async fn each<T, Fut>(state: &SiteState, items: Vec<T>, work: impl Fn(T) -> Fut)
where
    Fut: Future<Output = Result<()>>,
{
    futures::stream::iter(items)
        .for_each_concurrent(PARALLEL, |item| {
            let done = work(item);
            async move {
                if let Err(e) = done.await {
                    state.error(e);
                }
            }
        })
        .await;
}

impl SiteState {
    /// Time since `key` was first seen (now, if this is the first time).
    pub(crate) fn since(&self, key: &str) -> Duration {
        let mut timers = lock(&self.timers);
        timers.touched.insert(key.to_owned());
        timers
            .started
            .entry(key.to_owned())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Records an error of this pass: it is logged, and the pass retried.
    pub(crate) fn error(&self, e: anyhow::Error) {
        lock(&self.errors).push(e);
    }

    /// Forgets timers not used during a pass that completed without errors.
    fn end_pass(&mut self, complete: bool) {
        let timers = self.timers.get_mut().unwrap_or_else(|e| e.into_inner());
        let touched = std::mem::take(&mut timers.touched);
        if complete {
            timers.started.retain(|k, _| touched.contains(k));
        }
    }
}

/// A lock that a panicking holder did not spoil: the simulator's state is plain data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pass that takes longer is reported: it slows everything the simulator plays.
const SLOW_PASS: Duration = Duration::from_secs(5);

static WRITES: AtomicU64 = AtomicU64::new(1);

/// Starts simulators. See the [module docs](self).
pub struct Simulator;

impl Simulator {
    /// Starts playing the simulated parts at `sites`, one tokio task per site. Must be
    /// called inside a tokio runtime; the clients must belong to it.
    pub fn start(sites: Vec<SimSite>, config: SimConfig) -> SimulatorHandle {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (stop, stopped) = watch::channel(false);
        let passes: Vec<Arc<AtomicU64>> = sites.iter().map(|_| Arc::default()).collect();
        let caches = sites
            .iter()
            .map(|s| SiteCache::start(&s.client, config.namespaces.as_ref(), !s.management_only))
            .collect();
        let ctx = Arc::new(Ctx {
            config,
            faults: faults.clone(),
            sites,
            caches,
        });
        let ctx_for_handle = ctx.clone();
        let tasks = (0..ctx.sites.len())
            .map(|site| tokio::spawn(run_site(ctx.clone(), site, stopped.clone(), passes[site].clone())))
            .collect();
        tracing::info!(
            sites = ?ctx.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            namespaces = ?ctx.config.namespaces,
            "site simulator started: a test double for what needs nodes, disks or a network \
             (kubelet, CSI sidecars, virt-controller/virt-handler, load balancer); VolSync and the snapshot-controller are real"
        );
        SimulatorHandle {
            ctx: ctx_for_handle,
            faults,
            stop,
            tasks,
            passes,
        }
    }
}

/// A running simulator. Dropping it aborts its tasks; [`stop`](Self::stop) ends them
/// cleanly.
pub struct SimulatorHandle {
    ctx: Arc<Ctx>,
    faults: Arc<Mutex<Faults>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    passes: Vec<Arc<AtomicU64>>,
}

impl SimulatorHandle {
    /// The faults, shared with the running simulator: lock and change them.
    pub fn faults(&self) -> Arc<Mutex<Faults>> {
        self.faults.clone()
    }

    /// Changes the faults.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn site_client(&self, site: &str) -> Result<Client> {
        self.ctx
            .sites
            .iter()
            .find(|s| s.name == site)
            .map(|s| s.client.clone())
            .ok_or_else(|| anyhow!("the simulator plays no site {site}"))
    }

    /// What the disk of a claim holds at a site; `None` while it is not bound.
    pub async fn read_disk(&self, site: &str, namespace: &str, claim: &str) -> Result<Option<DiskData>> {
        disk::read(&self.site_client(site)?, namespace, claim).await
    }

    /// A write to the disk of a claim, straight to its volume (as a tool on the node would
    /// make it): returns the write's id, which the disk's data then holds.
    pub async fn write_disk(&self, site: &str, namespace: &str, claim: &str) -> Result<String> {
        let id = format!("{site}/{claim}/{}", WRITES.fetch_add(1, Ordering::Relaxed));
        disk::update(&self.site_client(site)?, namespace, claim, |d| {
            d.writes.push(id.clone());
            d.quiesced = false;
        })
        .await?;
        Ok(id)
    }

    /// A write by the guest of a running VM to every disk of its VMI: returns the write's
    /// id, which the disks' data then holds. Fails when the VM does not run there.
    /// A frozen guest's write waits until it thaws, as it would on frozen filesystems.
    pub async fn guest_write(&self, site: &str, namespace: &str, vm: &str) -> Result<String> {
        let client = self.site_client(site)?;
        let vmis = resources::VIRTUAL_MACHINE_INSTANCE.namespaced(client.clone(), namespace);
        let deadline = Instant::now() + Duration::from_secs(60);
        let vmi = loop {
            let vmi = vmis
                .get_opt(vm)
                .await?
                .filter(|v| v.data.pointer("/status/phase").and_then(serde_json::Value::as_str) == Some("Running"))
                .ok_or_else(|| anyhow!("VM {namespace}/{vm} does not run at {site}"))?;
            if !virt_api::frozen(&vmi.data) || Instant::now() > deadline {
                break vmi;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let id = format!("{site}/{vm}/{}", WRITES.fetch_add(1, Ordering::Relaxed));
        for claim in kubevirt::claims(&vmi.data) {
            disk::update(&client, namespace, &claim, |d| {
                d.writes.push(id.clone());
                d.quiesced = false;
            })
            .await?;
        }
        tracing::info!(site, "guest of {namespace}/{vm} wrote {id}");
        Ok(id)
    }

    /// A power loss at `site`: its guests stop at once (see [`kubevirt`]). Call it before
    /// stopping the site's control plane to play a site that goes dark; when the site comes
    /// back, KubeVirt restarts its VMs by their run strategy, with their boot delay.
    pub async fn power_off_site(&self, site: &str) -> Result<usize> {
        let index = self
            .ctx
            .sites
            .iter()
            .position(|s| s.name == site)
            .ok_or_else(|| anyhow!("the simulator plays no site {site}"))?;
        let stopped = kubevirt::power_loss(&self.ctx, index).await?;
        tracing::warn!(site, stopped, "site simulator: the site lost power; its guests stopped");
        Ok(stopped)
    }

    /// The data a VolumeSnapshot's backend snapshot holds.
    pub async fn read_snapshot(&self, site: &str, namespace: &str, snapshot: &str) -> Result<DiskData> {
        let client = self.site_client(site)?;
        let found = resources::VOLUME_SNAPSHOT
            .namespaced(client.clone(), namespace)
            .get(snapshot)
            .await?;
        let content = found
            .data
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow!("snapshot {namespace}/{snapshot} is not bound"))?;
        let content = resources::VOLUME_SNAPSHOT_CONTENT.all(client).get(content).await?;
        let handle = content
            .data
            .pointer("/status/snapshotHandle")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow!("snapshot {namespace}/{snapshot} has no handle yet"))?;
        DiskData::from_snapshot_handle(handle)
    }

    /// Completed reconcile passes per site (in the order of `start`'s `sites`),
    /// successful or not.
    pub fn passes(&self) -> Vec<u64> {
        self.passes.iter().map(|p| p.load(Ordering::Relaxed)).collect()
    }

    /// Waits until every site has completed `n` more passes (or `timeout` elapses), e.g.
    /// to check that something did *not* happen.
    pub async fn wait_passes(&self, n: u64, timeout: Duration) -> Result<()> {
        let start = self.passes();
        let deadline = Instant::now() + timeout;
        while self.passes().iter().zip(&start).any(|(now, then)| now - then < n) {
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "the simulator did not complete {n} passes per site within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops all site tasks and waits for them to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        tracing::info!("site simulator stopped");
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn run_site(ctx: Arc<Ctx>, site: usize, mut stopped: watch::Receiver<bool>, passes: Arc<AtomicU64>) {
    let name = ctx.site_name(site).to_owned();
    let mut state = SiteState::default();
    loop {
        let started = Instant::now();
        let pass = tokio::time::timeout(ctx.config.pass_timeout, reconcile_site(&ctx, site, &state));
        let timed_out = tokio::select! {
            _ = stopped.changed() => break,
            result = pass => result.is_err(),
        };
        if timed_out {
            state.error(anyhow!("pass timed out after {:?}", ctx.config.pass_timeout));
        }
        if started.elapsed() > SLOW_PASS {
            tracing::info!(site = %name, "site simulator: a pass took {:.1?}", started.elapsed());
        }
        report(&name, &mut state);
        passes.fetch_add(1, Ordering::Relaxed);
        let pause = ctx.config.tick.saturating_sub(started.elapsed());
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Logs the errors of a pass: a warning when they change, a note when they clear.
fn report(site: &str, state: &mut SiteState) {
    let errors = std::mem::take(state.errors.get_mut().unwrap_or_else(|e| e.into_inner()));
    state.end_pass(errors.is_empty());
    if errors.is_empty() {
        if state.last_error.take().is_some() {
            tracing::info!(site, "site simulator: site healthy again");
        }
        return;
    }
    for e in &errors {
        tracing::debug!(site, "site simulator: {e:#}");
    }
    let summary = if errors.len() == 1 {
        format!("{:#}", errors[0])
    } else {
        format!("{:#} (and {} more errors)", errors[0], errors.len() - 1)
    };
    if state.last_error.as_deref() != Some(summary.as_str()) {
        tracing::warn!(site, "site simulator will retry: {summary}");
        state.last_error = Some(summary);
    }
}

async fn reconcile_site(ctx: &Ctx, site: usize, state: &SiteState) {
    if !ctx.sites[site].management_only {
        reconcile_platform(ctx, site, state).await;
    }
    if let Err(e) = kubelet::reconcile(ctx, site, state).await {
        state.error(e.context("kubelet"));
    }
}

/// The parts of a site that need nodes, disks and a network.
async fn reconcile_platform(ctx: &Ctx, site: usize, state: &SiteState) {
    if let Err(e) = network::reconcile(ctx, site, state).await {
        state.error(e.context("load balancer"));
    }
    if let Err(e) = csi::reconcile(ctx, site, state).await {
        state.error(e.context("CSI sidecars"));
    }
    if let Err(e) = group_snapshot::reconcile(ctx, site, state).await {
        state.error(e.context("CSI group snapshots"));
    }
    if let Err(e) = kubevirt::reconcile(ctx, site, state).await {
        state.error(e.context("virt-controller"));
    }
}
