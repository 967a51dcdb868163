//! **The site simulator: a test double, not a product component.**
//!
//! The e2e control planes run a real kube-apiserver and kube-controller-manager, but no
//! kubelet, KubeVirt, VolSync or CSI snapshot controller. The simulator plays those
//! parts, at one or more sites (API servers) at once, and writes the same status fields
//! the real controllers write, so that coldsite can be tested end to end against real
//! API servers. It lives under `e2e/`, is never shipped in the chart, and must not be
//! mistaken for the real thing: it moves no data and runs no guest.
//!
//! At every site, every [`SimConfig::tick`], it lists the objects it plays for (in all
//! namespaces, or in [`SimConfig::namespaces`]) and fixes what differs from what the
//! real controller would have done: a level-triggered loop that survives restarts of
//! itself and outages of a site (it logs and retries; it never exits on an API error).
//!
//! What it plays:
//! - **virt-controller / virt-handler** ([`kubevirt`]): VirtualMachine `spec.runStrategy`
//!   `Always`, `RerunOnFailure` and `Once` run a VirtualMachineInstance of the same name
//!   (controller ownerReference to the VM); `Halted` deletes it; `Manual` leaves it.
//!   After [`SimConfig::boot_delay`] the VMI is `Running` with `Ready` and
//!   `AgentConnected` conditions and `status.interfaces` whose IPs come from the
//!   cloud-init network data of the VM's volumes; the VM gets `status.ready`,
//!   `printableStatus`, `created` and a `Ready` condition.
//! - **VolSync rsync-TLS movers** ([`volsync`]): a ReplicationDestination gets
//!   `status.rsyncTLS.address` ([`destination_address`]) and `keySecret` (a Secret
//!   `volsync-rsync-tls-<name>` unless `spec.rsyncTLS.keySecret` names one) and, unless
//!   `spec.rsyncTLS.destinationPVC` names one, a PVC `volsync-<name>-dst`. A
//!   ReplicationSource syncs when VolSync would: once when created, then on each tick
//!   of `spec.trigger.schedule` (on the compressed clock of [`cron`]), whenever
//!   `spec.trigger.manual` differs from `status.lastManualSync`, or continuously without
//!   a trigger. A sync takes [`SimConfig::sync_duration`], finds the destination by
//!   `spec.rsyncTLS.address` at any site, snapshots its PVC there into a VolumeSnapshot
//!   named `<destination PVC>-<YYYYMMDDHHMMSS>` (UTC, as VolSync names them), labelled
//!   `volsync.backube/owned: <destination uid>` and owned by the destination, waits
//!   until it is bound, then sets the destination's `latestImage`, `lastSyncTime`,
//!   `lastSyncDuration`, deletes the previous image (VolSync's way: label
//!   `volsync.backube/cleanup`, publish, delete the labelled) unless it carries the label
//!   [`DO_NOT_DELETE_LABEL`], and sets the source's `lastSyncTime`, `lastSyncDuration`,
//!   `nextSyncTime`, `lastManualSync` and `Synchronizing` condition. Like VolSync, a
//!   destination gives up (drops its ownerReference and labels from) every snapshot of
//!   its own labelled [`DO_NOT_DELETE_LABEL`], so deleting the destination keeps them.
//! - **CSI snapshot controller** ([`snapshot`]): a VolumeSnapshot of a Bound PVC gets a
//!   VolumeSnapshotContent `snapcontent-<snapshot uid>` and `readyToUse: true`,
//!   `creationTime`, `restoreSize` and `boundVolumeSnapshotContentName`.
//! - **PV binder and PVC protection** ([`storage`]): Pending PVCs become Bound (those
//!   restoring from a VolumeSnapshot once it is ready to use); deleted PVCs lose their
//!   `kubernetes.io/pvc-protection` finalizer once no pod or VMI uses them.
//! - **kubelet for Job pods** ([`kubelet`]): a Ready Node [`NODE_NAME`]; pods owned by a
//!   Job are bound to it (`pods/binding`), run, and after [`SimConfig::job_duration`]
//!   succeed, or fail with exit code N when a container's env has
//!   `COLDSITE_SIM_EXIT_CODE=N` ([`EXIT_CODE_ENV`]). Other pods are left Pending.
//!
//! Faults ([`Faults`]) are changed at run time through [`SimulatorHandle::faults`].

mod crds;
pub mod cron;
mod faults;
pub mod kubelet;
pub mod kubevirt;
mod netdata;
pub mod resources;
pub mod snapshot;
pub mod storage;
mod util;
pub mod volsync;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crds::{CRD_FILES, install_crds, stand_in_crds};
pub use faults::{Faults, SiteFaults};
pub use kubelet::{EXIT_CODE_ENV, NODE_NAME};
pub use resources::Kind;
pub use volsync::{DO_NOT_DELETE_LABEL, destination_address};

/// The field manager of everything the simulator writes.
pub const FIELD_MANAGER: &str = "coldsite-site-simulator";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pause between two reconcile passes of a site. Default 200 ms.
    pub tick: Duration,
    /// From VMI creation to Running and Ready (see also `SiteFaults::slow_boot`).
    /// Default 1 s.
    pub boot_delay: Duration,
    /// How much faster than real time VolSync schedules run (see [`cron`]). Default 60:
    /// one cron minute per real second. At most [`cron::MAX_TIME_SCALE`].
    pub time_scale: f64,
    /// How long a Job pod runs before it terminates. Default 1 s.
    pub job_duration: Duration,
    /// How long a VolSync sync moves data before the destination snapshot is taken.
    /// Default 500 ms.
    pub sync_duration: Duration,
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
            time_scale: 60.0,
            job_duration: Duration::from_secs(1),
            sync_duration: Duration::from_millis(500),
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
pub(crate) struct Site {
    pub name: String,
    pub client: Client,
}

/// What every site task shares.
pub(crate) struct Ctx {
    pub config: SimConfig,
    pub clock: cron::Clock,
    pub faults: Arc<Mutex<Faults>>,
    pub sites: Vec<Site>,
}

impl Ctx {
    pub(crate) fn client(&self, site: usize) -> Client {
        self.sites[site].client.clone()
    }

    pub(crate) fn site_name(&self, site: usize) -> &str {
        &self.sites[site].name
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn in_scope(&self, namespace: &str) -> bool {
        self.config
            .namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
    }

    /// Lists a custom kind at a site, in scope. `None` if its CRD is not installed there.
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

    /// Lists a namespaced built-in kind at a site, in scope.
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
/// correctness after a restart: timers just start over.
#[derive(Default)]
pub(crate) struct SiteState {
    timers: HashMap<String, Instant>,
    touched: HashSet<String>,
    pub node_checked: Option<Instant>,
    pub errors: Vec<anyhow::Error>,
    last_error: Option<String>,
}

impl SiteState {
    /// Time since `key` was first seen (now, if this is the first time).
    pub(crate) fn since(&mut self, key: &str) -> Duration {
        self.touched.insert(key.to_owned());
        self.timers.entry(key.to_owned()).or_insert_with(Instant::now).elapsed()
    }

    /// Forgets timers not used during a pass that completed without errors.
    fn end_pass(&mut self, complete: bool) {
        if complete {
            let touched = std::mem::take(&mut self.touched);
            self.timers.retain(|k, _| touched.contains(k));
        } else {
            self.touched.clear();
        }
    }
}

/// Starts simulators. See the [module docs](self).
pub struct Simulator;

impl Simulator {
    /// Starts playing the simulated controllers at `sites` (`(name, client)`; names
    /// appear in logs, in addresses and in [`Faults`]), one tokio task per site. Must be
    /// called inside a tokio runtime; the clients must belong to it.
    pub fn start(sites: Vec<(String, Client)>, config: SimConfig) -> SimulatorHandle {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (stop, stopped) = watch::channel(false);
        let passes: Vec<Arc<AtomicU64>> = sites.iter().map(|_| Arc::default()).collect();
        let ctx = Arc::new(Ctx {
            clock: cron::Clock::new(config.time_scale),
            config,
            faults: faults.clone(),
            sites: sites.into_iter().map(|(name, client)| Site { name, client }).collect(),
        });
        let tasks = (0..ctx.sites.len())
            .map(|site| tokio::spawn(run_site(ctx.clone(), site, stopped.clone(), passes[site].clone())))
            .collect();
        tracing::info!(
            sites = ?ctx.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            namespaces = ?ctx.config.namespaces,
            "site simulator started (a test double for KubeVirt, VolSync, the snapshot controller and a kubelet)"
        );
        SimulatorHandle {
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
        let pass = tokio::time::timeout(ctx.config.pass_timeout, reconcile_site(&ctx, site, &mut state));
        let timed_out = tokio::select! {
            _ = stopped.changed() => break,
            result = pass => result.is_err(),
        };
        if timed_out {
            state
                .errors
                .push(anyhow!("pass timed out after {:?}", ctx.config.pass_timeout));
        }
        tracing::trace!(site = %name, "pass took {:?}", started.elapsed());
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
    let errors = std::mem::take(&mut state.errors);
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

async fn reconcile_site(ctx: &Ctx, site: usize, state: &mut SiteState) {
    if let Err(e) = kubelet::reconcile(ctx, site, state).await {
        state.errors.push(e.context("kubelet"));
    }
    if let Err(e) = storage::reconcile(ctx, site, state).await {
        state.errors.push(e.context("PVC binding"));
    }
    if let Err(e) = snapshot::reconcile(ctx, site, state).await {
        state.errors.push(e.context("snapshot controller"));
    }
    if let Err(e) = kubevirt::reconcile(ctx, site, state).await {
        state.errors.push(e.context("virt-controller"));
    }
    if let Err(e) = volsync::reconcile(ctx, site, state).await {
        state.errors.push(e.context("VolSync"));
    }
}
