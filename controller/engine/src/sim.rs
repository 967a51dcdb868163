//! `SimFabric`: an in-memory platform on a virtual clock, with seeded latencies and
//! injectable faults. It serves `simulate`, the deterministic simulation tests and the
//! benchmark. It keeps the same books a real platform would (objects by name, VMs running
//! or not, recovery points, script effects) so that tests can check the invariants on it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::RunAction;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::executor::chrono_duration;
use crate::fabric::{
    Fabric, FabricError, FabricResult, Progress, Recovery, RecoveryPoint, ReplicationState, RunRef, ScriptLocation,
    ScriptRequest,
};
use crate::model::{Direction, PlanModel, ReadinessModel, SiteModel, VmModel};
use crate::rpo;

/// A latency distribution: triangular between `min` and `max`, peaking at `typical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub min: Duration,
    pub typical: Duration,
    pub max: Duration,
}

impl Latency {
    pub const fn secs(min: u64, typical: u64, max: u64) -> Self {
        Self {
            min: Duration::from_secs(min),
            typical: Duration::from_secs(typical),
            max: Duration::from_secs(max),
        }
    }

    pub const fn fixed(secs: u64) -> Self {
        Self::secs(secs, secs, secs)
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Duration {
        let (a, c, b) = (
            self.min.as_secs_f64(),
            self.typical.as_secs_f64(),
            self.max.as_secs_f64(),
        );
        if b <= a {
            return self.min;
        }
        let u: f64 = rng.random();
        let f = (c - a) / (b - a);
        let x = if u < f {
            a + ((b - a) * (c - a) * u).sqrt()
        } else {
            b - ((b - a) * (b - c) * (1.0 - u)).sqrt()
        };
        // Whole milliseconds keep timelines readable and exact.
        Duration::from_millis((x * 1000.0).round() as u64)
    }
}

/// How long each kind of operation takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latencies {
    pub power_off: Latency,
    pub final_sync: Latency,
    pub restore: Latency,
    pub create: Latency,
    pub power_on: Latency,
    pub boot: Latency,
    pub job: Latency,
    pub webhook: Latency,
    pub commit: Latency,
    pub reverse: Latency,
    pub cleanup: Latency,
}

impl Default for Latencies {
    /// Figures of the order seen with KubeVirt on Ceph: minutes for data, seconds for the API.
    fn default() -> Self {
        Self {
            power_off: Latency::secs(20, 45, 120),
            final_sync: Latency::secs(30, 90, 300),
            restore: Latency::secs(30, 60, 240),
            create: Latency::secs(2, 4, 10),
            power_on: Latency::secs(5, 10, 30),
            boot: Latency::secs(60, 120, 300),
            job: Latency::secs(30, 60, 180),
            webhook: Latency::secs(1, 2, 10),
            commit: Latency::secs(5, 15, 60),
            reverse: Latency::secs(30, 60, 180),
            cleanup: Latency::secs(5, 20, 60),
        }
    }
}

/// Faults the simulated platform injects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a call fails with a transient API error before doing anything.
    pub failure_rate: f64,
    /// Sites whose API is down for the whole simulation; their VMs are down too.
    pub sites_down: BTreeSet<String>,
    /// VMs (ProtectedVM names) that never become ready after power-on.
    pub boot_failures: BTreeSet<String>,
    /// Actions (by name) whose script fails for good.
    pub script_failures: BTreeSet<String>,
    /// How far replication lags: the newest recovery point is at least this old.
    pub replication_lag: Duration,
    /// VMs (ProtectedVM names) whose final sync never finishes: its movers cannot reach the
    /// other site.
    pub stalled_syncs: BTreeSet<String>,
}

/// The simulator's setup.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub latencies: Latencies,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            start: DateTime::<Utc>::from_timestamp(1_798_761_600, 0).unwrap_or_default(), // 2027-01-01
            latencies: Latencies::default(),
            faults: Faults::default(),
        }
    }
}

/// A virtual clock, moved by the simulation loop.
#[derive(Debug)]
pub struct SimClock(Cell<DateTime<Utc>>);

impl SimClock {
    pub fn now(&self) -> DateTime<Utc> {
        self.0.get()
    }

    pub fn advance_to(&self, t: DateTime<Utc>) {
        if t > self.0.get() {
            self.0.set(t);
        }
    }
}

/// A VirtualMachine at a site, as the simulator keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct SimVm {
    /// The ProtectedVM it is a copy of.
    pub pvm: String,
    pub running: bool,
    /// The run that created it; None for the original.
    pub run_uid: Option<String>,
    pub test: bool,
    pub networks: Vec<String>,
    pub network_data: String,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// When the guest is up, once powered on.
    pub ready_at: Option<DateTime<Utc>>,
}

/// Something the platform saw happen, for invariant checks and timelines.
#[derive(Clone, Debug, PartialEq)]
pub enum SimEvent {
    VmStarted {
        at: DateTime<Utc>,
        site: String,
        pvm: String,
        test: bool,
    },
    VmStopped {
        at: DateTime<Utc>,
        site: String,
        pvm: String,
    },
    Restored {
        at: DateTime<Utc>,
        pvm: String,
        point: RecoveryPoint,
        run_uid: String,
    },
    ScriptEffect {
        at: DateTime<Utc>,
        action: String,
        key: String,
    },
}

#[derive(Clone, Debug)]
struct Op {
    done_at: DateTime<Utc>,
    finished: bool,
    point: Option<RecoveryPoint>,
}

/// Everything the simulated platform holds.
#[derive(Debug)]
pub struct SimWorld {
    rng: ChaCha8Rng,
    ops: BTreeMap<String, Op>,
    /// VMs by (site, namespace, name).
    pub vms: BTreeMap<(String, String, String), SimVm>,
    /// How many times each named effect happened; exactly-once means at most one each.
    pub effects: BTreeMap<String, u32>,
    /// Restored PVCs by (site, namespace, name, run UID).
    pub pvcs: BTreeSet<(String, String, String, String)>,
    pub events: Vec<SimEvent>,
    pub calls: u64,
    /// Points discarded by commit, per ProtectedVM.
    committed: BTreeSet<String>,
}

/// The in-memory platform.
pub struct SimFabric {
    pub config: SimConfig,
    pub clock: SimClock,
    world: RefCell<SimWorld>,
    primary: String,
    recovery: String,
}

impl SimFabric {
    /// A platform where the plan's VMs run at the site they move from in `direction`.
    pub fn new(config: SimConfig, plan: &PlanModel, direction: Direction) -> Self {
        let (source, _) = plan.sites(direction);
        let mut vms = BTreeMap::new();
        for vm in &plan.vms {
            let down = config.faults.sites_down.contains(&source.name);
            vms.insert(
                (source.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone()),
                SimVm {
                    pvm: vm.name.clone(),
                    running: !down,
                    run_uid: None,
                    test: false,
                    networks: vm.nics.iter().map(|n| n.source_network.clone()).collect(),
                    network_data: String::new(),
                    started_at: None,
                    stopped_at: down.then_some(config.start),
                    ready_at: None,
                },
            );
        }
        Self {
            clock: SimClock(Cell::new(config.start)),
            world: RefCell::new(SimWorld {
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                ops: BTreeMap::new(),
                vms,
                effects: BTreeMap::new(),
                pvcs: BTreeSet::new(),
                events: Vec::new(),
                calls: 0,
                committed: BTreeSet::new(),
            }),
            config,
            primary: plan.primary.name.clone(),
            recovery: plan.recovery.name.clone(),
        }
    }

    /// The platform a run of `action` starts from: a repoint finds the plan failed over to
    /// the recovery site by an earlier run; every other action, the VMs at their source.
    pub fn for_run(config: SimConfig, plan: &PlanModel, action: RunAction, direction: Direction) -> Self {
        let fabric = Self::new(config, plan, direction);
        if action == RunAction::ChangeRecoveryPoint {
            fabric.fail_over(plan);
        }
        fabric
    }

    /// Moves the plan's VMs as a finished failover leaves them: halted at the primary, running
    /// at the recovery site on disks restored by run `earlier-failover`.
    fn fail_over(&self, plan: &PlanModel) {
        const EARLIER: &str = "earlier-failover";
        let start = self.config.start;
        let mut w = self.world.borrow_mut();
        for vm in &plan.vms {
            let ns = vm.vm_namespace.clone();
            if let Some(source) = w
                .vms
                .get_mut(&(plan.primary.name.clone(), ns.clone(), vm.vm_name.clone()))
            {
                source.running = false;
                source.stopped_at = Some(start);
            }
            for d in vm.disks.iter().chain(vm.disks.is_empty().then_some(&vm.vm_name)) {
                w.pvcs
                    .insert((plan.recovery.name.clone(), ns.clone(), d.clone(), EARLIER.into()));
            }
            let copy = SimVm {
                pvm: vm.name.clone(),
                running: true,
                run_uid: Some(EARLIER.into()),
                test: false,
                networks: vm.nics.iter().map(|n| n.target_network.clone()).collect(),
                network_data: String::new(),
                started_at: Some(start),
                stopped_at: None,
                ready_at: Some(start),
            };
            w.vms.insert((plan.recovery.name.clone(), ns, vm.vm_name.clone()), copy);
        }
    }

    pub fn world(&self) -> std::cell::Ref<'_, SimWorld> {
        self.world.borrow()
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn reachable(&self, site: &str) -> Result<(), FabricError> {
        if self.config.faults.sites_down.contains(site) {
            Err(FabricError::unreachable(format!(
                "site {site}: API server unreachable (simulated outage)"
            )))
        } else {
            Ok(())
        }
    }

    /// The common shape of every call: count it, maybe fail it, then start or report the
    /// operation named `key`. `start` runs once, when the operation begins.
    fn ensure(
        &self,
        key: String,
        sites: &[&str],
        latency: Latency,
        start: impl FnOnce(&mut SimWorld, DateTime<Utc>) -> Result<Option<RecoveryPoint>, FabricError>,
    ) -> FabricResult<Option<RecoveryPoint>> {
        let now = self.now();
        let mut w = self.world.borrow_mut();
        w.calls += 1;
        for s in sites {
            self.reachable(s)?;
        }
        if let Some(op) = w.ops.get_mut(&key) {
            if now >= op.done_at {
                op.finished = true;
                return Ok(Progress::Done(op.point.clone()));
            }
            return Ok(Progress::InProgress {
                retry_after: (op.done_at - now).to_std().unwrap_or_default(),
            });
        }
        if self.config.faults.failure_rate > 0.0 && w.rng.random_bool(self.config.faults.failure_rate.min(1.0)) {
            return Err(FabricError::transient(format!(
                "{key}: the API server answered 503 (simulated)"
            )));
        }
        let d = latency.sample(&mut w.rng);
        let point = start(&mut w, now)?;
        let done_at = now + chrono_duration(d);
        // Sometimes the request takes effect and its answer is lost: the caller must not
        // make the effect twice when it tries again.
        let lost = self.config.faults.failure_rate > 0.0
            && w.rng.random_bool((self.config.faults.failure_rate / 2.0).min(1.0));
        w.ops.insert(
            key.clone(),
            Op {
                done_at,
                finished: false,
                point,
            },
        );
        drop(w);
        if lost {
            return Err(FabricError::transient(format!(
                "{key}: the answer was lost after the request was applied (simulated)"
            )));
        }
        Ok(Progress::InProgress { retry_after: d })
    }

    fn effect(w: &mut SimWorld, name: String) {
        *w.effects.entry(name).or_default() += 1;
    }

    /// Recovery points at the target of `direction`: one per sync interval, up to the
    /// replication lag, within retention.
    fn points(&self, vm: &VmModel, now: DateTime<Utc>) -> Vec<RecoveryPoint> {
        let interval = rpo::sync_interval(vm.rpo).as_secs() as i64;
        let newest = now - chrono_duration(self.config.faults.replication_lag);
        let floor = rpo::retention_floor(now, vm.retention);
        let app = vm.app_consistent_interval.map(|d| d.as_secs() as i64);
        let mut t = newest.timestamp() - newest.timestamp().rem_euclid(interval);
        let mut out = Vec::new();
        while t >= floor.timestamp() && out.len() < 10_000 {
            if let Some(time) = DateTime::<Utc>::from_timestamp(t, 0) {
                out.push(RecoveryPoint {
                    time,
                    app_consistent: app.is_some_and(|a| a > 0 && t % a == 0),
                    one_instant: false,
                });
            }
            t -= interval;
        }
        out.reverse();
        out
    }

    fn vm_key(req: &Recovery<'_>) -> (String, String, String) {
        (
            req.target.name.clone(),
            req.namespace.to_owned(),
            req.vm.vm_name.clone(),
        )
    }
}

fn unit(p: FabricResult<Option<RecoveryPoint>>) -> FabricResult<()> {
    p.map(|p| match p {
        Progress::Done(_) => Progress::Done(()),
        Progress::InProgress { retry_after } => Progress::InProgress { retry_after },
    })
}

fn with_point(p: FabricResult<Option<RecoveryPoint>>) -> FabricResult<RecoveryPoint> {
    match p? {
        Progress::Done(Some(pt)) => Ok(Progress::Done(pt)),
        Progress::Done(None) => Err(FabricError::permanent("the operation produced no recovery point")),
        Progress::InProgress { retry_after } => Ok(Progress::InProgress { retry_after }),
    }
}

impl Fabric for SimFabric {
    async fn ensure_replication(
        &self,
        vm: &VmModel,
        direction: Direction,
        primary: &SiteModel,
        recovery: &SiteModel,
    ) -> Result<ReplicationState, FabricError> {
        let target = match direction {
            Direction::Forward => recovery,
            Direction::Reverse => primary,
        };
        self.reachable(&target.name)?;
        let points = self.points(vm, self.now());
        Ok(ReplicationState {
            established: true,
            last_sync: points.last().map(|p| p.time),
            points,
            bytes_transferred: None,
            waiting: Vec::new(),
            app_sync_under_way: false,
            point_cut_since: None,
        })
    }

    async fn recovery_points(&self, vm: &VmModel, _direction: Direction) -> Result<Vec<RecoveryPoint>, FabricError> {
        self.world.borrow_mut().calls += 1;
        if self.world.borrow().committed.contains(&vm.name) {
            return Ok(Vec::new());
        }
        Ok(self.points(vm, self.now()))
    }

    async fn power_off(&self, run: &RunRef, site: &SiteModel, vm: &VmModel) -> FabricResult<()> {
        let key = (site.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone());
        let r = self.ensure(
            format!("power-off/{}/{}", run.uid, vm.name),
            &[&site.name],
            self.config.latencies.power_off,
            |_, _| Ok(None),
        )?;
        if let Progress::Done(_) = r {
            let mut w = self.world.borrow_mut();
            let now = self.now();
            let done_at = w
                .ops
                .get(&format!("power-off/{}/{}", run.uid, vm.name))
                .map_or(now, |o| o.done_at);
            if let Some(v) = w.vms.get_mut(&key)
                && v.running
            {
                v.running = false;
                v.stopped_at = Some(done_at);
                w.events.push(SimEvent::VmStopped {
                    at: done_at,
                    site: site.name.clone(),
                    pvm: vm.name.clone(),
                });
            }
        }
        unit(Ok(r))
    }

    async fn check_stopped(&self, site: &SiteModel, vm: &VmModel) -> FabricResult<()> {
        self.world.borrow_mut().calls += 1;
        self.reachable(&site.name)?;
        let key = (site.name.clone(), vm.vm_namespace.clone(), vm.vm_name.clone());
        match self.world.borrow().vms.get(&key) {
            Some(v) if v.running => Err(FabricError::permanent(format!(
                "VirtualMachine {}/{} is still running at {}: stop it, or run the failover with shutdownSource",
                key.1, key.2, key.0
            ))),
            _ => Ok(Progress::Done(())),
        }
    }

    async fn final_sync(&self, run: &RunRef, vm: &VmModel, after: DateTime<Utc>) -> FabricResult<RecoveryPoint> {
        let (source, target) = self.sites_for(run);
        let stalled = self.config.faults.stalled_syncs.contains(&vm.name);
        let r = self.ensure(
            format!("final-sync/{}/{}", run.uid, vm.name),
            &[&source, &target],
            if stalled {
                Latency::fixed(100 * 24 * 3600)
            } else {
                self.config.latencies.final_sync
            },
            |_, now| {
                Ok(Some(RecoveryPoint {
                    time: now.max(after),
                    app_consistent: true,
                    one_instant: false,
                }))
            },
        );
        with_point(r)
    }

    async fn restore_disks(&self, req: &Recovery<'_>, point: &RecoveryPoint) -> FabricResult<RecoveryPoint> {
        let run_uid = req.run.uid.clone();
        let (site, ns, vm) = Self::vm_key(req);
        let pvm = req.vm.name.clone();
        let disks = req.vm.disks.clone();
        // As at a real site: a running copy's disks are never replaced under it.
        if let Some(copy) = self.world.borrow().vms.get(&(site.clone(), ns.clone(), vm.clone()))
            && copy.running
            && copy.run_uid != Some(run_uid.clone())
        {
            return Err(FabricError::permanent(format!(
                "VirtualMachine {ns}/{vm} is still running at {site}: its disks are not overwritten while it runs"
            )));
        }
        let r = self.ensure(
            format!("restore/{run_uid}/{site}/{ns}/{vm}"),
            &[&site],
            self.config.latencies.restore,
            |w, now| {
                for d in disks.iter().chain(disks.is_empty().then_some(&vm)) {
                    Self::effect(w, format!("pvc/{site}/{ns}/{d}/{run_uid}"));
                    w.pvcs.insert((site.clone(), ns.clone(), d.clone(), run_uid.clone()));
                }
                w.events.push(SimEvent::Restored {
                    at: now,
                    pvm,
                    point: point.clone(),
                    run_uid: run_uid.clone(),
                });
                Ok(Some(point.clone()))
            },
        );
        with_point(r)
    }

    async fn restored_point(&self, req: &Recovery<'_>) -> Result<Option<DateTime<Utc>>, FabricError> {
        let (site, ns, vm) = Self::vm_key(req);
        let key = format!("restore/{}/{site}/{ns}/{vm}", req.run.uid);
        let w = self.world.borrow();
        Ok(w.ops.get(&key).and_then(|op| op.point.as_ref()).map(|p| p.time))
    }

    async fn create_vm(&self, req: &Recovery<'_>) -> FabricResult<()> {
        let key = Self::vm_key(req);
        let run_uid = req.run.uid.clone();
        // A copy an earlier failover made is made anew, once halted; anything else is refused.
        if let Some(existing) = self.world.borrow().vms.get(&key)
            && existing.run_uid.as_deref() != Some(run_uid.as_str())
            && (existing.running || existing.test || existing.run_uid.is_none() || req.test)
        {
            return Err(FabricError::permanent(format!(
                "VirtualMachine {}/{} already exists at {} and was not created by this run",
                key.1, key.2, key.0
            )));
        }
        let vm = SimVm {
            pvm: req.vm.name.clone(),
            running: false,
            run_uid: Some(run_uid.clone()),
            test: req.test,
            networks: req.nics.iter().map(|n| n.network.clone()).collect(),
            network_data: req.network_data.to_owned(),
            started_at: None,
            stopped_at: None,
            ready_at: None,
        };
        unit(self.ensure(
            format!("create/{run_uid}/{}/{}/{}", key.0, key.1, key.2),
            &[&key.0],
            self.config.latencies.create,
            |w, _| {
                Self::effect(w, format!("vm/{}/{}/{}", key.0, key.1, key.2));
                w.vms.insert(key.clone(), vm);
                Ok(None)
            },
        ))
    }

    async fn power_on(&self, req: &Recovery<'_>) -> FabricResult<()> {
        let key = Self::vm_key(req);
        let boot_fails = self.config.faults.boot_failures.contains(&req.vm.name);
        let pvm = req.vm.name.clone();
        let test = req.test;
        let boot = self.config.latencies.boot;
        unit(self.ensure(
            format!("power-on/{}/{}/{}/{}", req.run.uid, key.0, key.1, key.2),
            &[&key.0],
            self.config.latencies.power_on,
            |w, now| {
                let boot_time = boot.sample(&mut w.rng);
                let Some(v) = w.vms.get_mut(&key) else {
                    return Err(FabricError::transient(format!(
                        "VirtualMachine {}/{} not found at {}",
                        key.1, key.2, key.0
                    )));
                };
                v.running = true;
                v.started_at = Some(now);
                v.ready_at = (!boot_fails).then(|| now + chrono_duration(boot_time));
                w.events.push(SimEvent::VmStarted {
                    at: now,
                    site: key.0.clone(),
                    pvm,
                    test,
                });
                Self::effect(w, format!("power-on/{}/{}/{}", key.0, key.1, key.2));
                Ok(None)
            },
        ))
    }

    async fn vm_ready(&self, req: &Recovery<'_>, _readiness: &ReadinessModel) -> FabricResult<()> {
        let key = Self::vm_key(req);
        let now = self.now();
        let mut w = self.world.borrow_mut();
        w.calls += 1;
        self.reachable(&key.0)?;
        match w.vms.get(&key).and_then(|v| v.ready_at) {
            Some(t) if t <= now => Ok(Progress::Done(())),
            Some(t) => Ok(Progress::InProgress {
                retry_after: (t - now).to_std().unwrap_or_default(),
            }),
            // Never ready: a boot failure shows as a VM that does not come up.
            None => Ok(Progress::InProgress {
                retry_after: Duration::from_secs(30),
            }),
        }
    }

    async fn run_script(&self, req: &ScriptRequest<'_>) -> FabricResult<()> {
        let site = match &req.location {
            ScriptLocation::Site(s) => vec![s.name.as_str()],
            ScriptLocation::Management => Vec::new(),
        };
        let latency = match req.action.kind {
            crate::model::ActionKind::Webhook { .. } => self.config.latencies.webhook,
            _ => self.config.latencies.job,
        };
        let fails = self.config.faults.script_failures.contains(&req.action.name);
        let action = req.action.name.clone();
        let key = req.idempotency_key.clone();
        let r = self.ensure(format!("script/{key}"), &site, latency, |w, now| {
            // The receiver acts once per idempotency key; a new key is a new effect.
            Self::effect(w, format!("script/{}/{action}", req.run.uid));
            w.events.push(SimEvent::ScriptEffect {
                at: now,
                action: action.clone(),
                key: key.clone(),
            });
            Ok(None)
        })?;
        match r {
            Progress::Done(_) if fails => Err(FabricError::permanent(format!(
                "action {}: the script exited 1 (simulated)",
                req.action.name
            ))),
            other => unit(Ok(other)),
        }
    }

    async fn commit(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()> {
        let (_, target) = self.sites_for(run);
        let name = vm.name.clone();
        unit(self.ensure(
            format!("commit/{}/{}", run.uid, vm.name),
            &[&target],
            self.config.latencies.commit,
            |w, _| {
                w.committed.insert(name);
                Ok(None)
            },
        ))
    }

    async fn reverse_replication(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()> {
        let (source, target) = self.sites_for(run);
        unit(self.ensure(
            format!("reverse/{}/{}", run.uid, vm.name),
            &[&source, &target],
            self.config.latencies.reverse,
            |_, _| Ok(None),
        ))
    }

    async fn delete_test_resources(&self, run: &RunRef, site: &SiteModel) -> FabricResult<()> {
        let uid = run.uid.clone();
        let site_name = site.name.clone();
        unit(self.ensure(
            format!("cleanup/{uid}/{}", site.name),
            &[&site.name],
            self.config.latencies.cleanup,
            |w, _| {
                w.vms
                    .retain(|(s, _, _), v| !(s == &site_name && v.test && v.run_uid.as_deref() == Some(uid.as_str())));
                w.pvcs.retain(|(s, _, _, r)| !(s == &site_name && r == &uid));
                Ok(None)
            },
        ))
    }
}

impl SimFabric {
    fn sites_for(&self, run: &RunRef) -> (String, String) {
        match run.direction {
            Direction::Forward => (self.primary.clone(), self.recovery.clone()),
            Direction::Reverse => (self.recovery.clone(), self.primary.clone()),
        }
    }
}
