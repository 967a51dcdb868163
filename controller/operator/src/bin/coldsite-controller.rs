//! coldsite-controller: converges replication and failover state toward the coldsite
//! resources. Run two replicas: leader election through a Lease keeps one acting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use coldsite_api::{NetworkMapping, ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use coldsite_operator::context::{Cached, Context, Settings, Stores};
use coldsite_operator::error::Error;
use coldsite_operator::http_client::HttpClient;
use coldsite_operator::metrics::Metrics;
use coldsite_operator::reconcile;
use coldsite_operator::replication_keys::ReplicationKeys;
use coldsite_operator::served_crds;
use coldsite_operator::server::{self, Readiness};
use coldsite_operator::site_watch::SiteChange;
use coldsite_operator::sites::SiteClients;
use coldsite_operator::throttle;
use futures::StreamExt;
use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

/// Disaster recovery for KubeVirt VMs: the controller.
///
/// Reconciles Sites (reachability and capabilities), NetworkMappings (validity),
/// ProtectedVMs (VolSync replication, recovery points, RPO), RecoveryPlans (validity,
/// readiness, drills) and RecoveryRuns (failovers, driven step by step). Serves /healthz,
/// /readyz and /metrics. With leader election on, only the replica holding the Lease acts.
#[derive(Parser, Debug)]
#[command(name = "coldsite-controller", version, about, long_about)]
struct Args {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "COLDSITE_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// The controller's namespace: where its leader-election Lease and its replication
    /// master key Secret are.
    #[arg(long, env = "POD_NAMESPACE", default_value = "coldsite-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "coldsite-controller")]
    lease_name: String,
    /// The Secret, in the controller's namespace, holding the master key that every VM's
    /// rsync-TLS replication key derives from; made with a random key if missing. Keep it:
    /// a VM's key written at one site before it changed would not match one written after.
    #[arg(long, default_value = "coldsite-replication-key")]
    replication_key_secret: String,
    /// This replica's identity in the Lease; the Pod's name in a cluster.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Act without leader election: for a single replica only.
    #[arg(long)]
    no_leader_election: bool,
    /// Platform calls in flight at once, per run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// ProtectedVM reconciles in flight at once (per namespace `--namespace` lists). Each
    /// reads and writes at two sites; while a site does not answer, each may wait 10 s for
    /// it, so fewer slots mean slower rounds.
    #[arg(long, default_value_t = 64)]
    protection_concurrency: u16,
    /// Act only in these namespaces (repeat the flag or separate by commas); every
    /// namespace when none is given. A shard: replicas with their own `--lease-name` (or
    /// `--lease-namespace`) own a set of namespaces no other shard lists. Sites are shared:
    /// every shard probes them.
    #[arg(long = "namespace", env = "COLDSITE_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

type Reconciled = std::pin::Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Wraps a kind's reconciler with metrics and tracing.
fn instrument<K, F, Fut>(kind: &'static str, f: F) -> impl Fn(Arc<K>, Arc<Context>) -> Reconciled
where
    K: Resource + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let f = f.clone();
        Box::pin(async move {
            let started = Instant::now();
            let name = obj.meta().name.clone().unwrap_or_default();
            let result = f(obj, ctx.clone()).await;
            ctx.metrics
                .reconciled(kind, started, result.as_ref().err().map(Error::category));
            if let Err(e) = &result {
                tracing::warn!(kind, name, category = %e.category(), error = %e, "reconcile failed");
            }
            result
        })
    }
}

fn error_policy<K>(_: Arc<K>, e: &Error, _: Arc<Context>) -> Action {
    use coldsite_operator::error::Category;
    Action::requeue(match e.category() {
        Category::SiteUnreachable => Duration::from_secs(30),
        Category::InvalidSpec | Category::Reference => Duration::from_secs(60),
        _ => Duration::from_secs(5),
    })
}

type Stop = futures::future::Shared<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>;

fn shared(f: impl Future<Output = ()> + Send + 'static) -> Stop {
    futures::FutureExt::shared(Box::pin(f) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>)
}

async fn log_result<T, E: std::fmt::Display>(kind: &'static str, r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!(kind, error = %e, "controller event");
    }
}

/// The sites' changes as a stream; `None` stands for changes missed while behind.
fn change_stream(
    rx: tokio::sync::broadcast::Receiver<SiteChange>,
) -> impl futures::Stream<Item = Option<SiteChange>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(change) => Some((Some(change), rx)),
            Err(RecvError::Lagged(_)) => Some((None, rx)),
            Err(RecvError::Closed) => None,
        }
    })
}

/// What the controller acts in: every namespace, or each listed one (its own watches).
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    match namespaces {
        [] => vec![None],
        listed => listed.iter().cloned().map(Some).collect(),
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

type Work = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run_controllers(ctx: Arc<Context>, stop: Stop, protection_concurrency: u16, namespaces: &[String]) {
    let sites = Controller::new(Api::<Site>::all(ctx.client.clone()), watcher::Config::default());
    let site_store = sites.store();
    let mut work: Vec<Work> = vec![Box::pin(site_controller(sites, &ctx, stop.clone()))];
    let mut caches = NamespaceCaches::default();
    for ns in scopes(namespaces) {
        work.extend(namespace_controllers(
            &ctx,
            &stop,
            protection_concurrency,
            ns.as_deref(),
            &mut caches,
        ));
    }
    work.push(Box::pin(fill_stores(
        ctx.clone(),
        Stores {
            sites: site_store,
            mappings: Cached::new(caches.mappings),
            protected_vms: Cached::new(caches.protected_vms),
            plans: Cached::new(caches.plans),
            runs: Cached::new(caches.runs),
        },
    )));
    futures::future::join_all(work).await;
    // The watches ended with this term: later readers ask the API until the next term.
    ctx.set_stores(None);
}

/// The caches of the namespaced kinds, one per scope.
#[derive(Default)]
struct NamespaceCaches {
    mappings: Vec<Store<NetworkMapping>>,
    protected_vms: Vec<Store<ProtectedVM>>,
    plans: Vec<Store<RecoveryPlan>>,
    runs: Vec<Store<RecoveryRun>>,
}

/// The controllers of the namespaced kinds in one scope (a namespace, or all of them),
/// their caches added to `caches`.
/// A controller whose cache keeps no managedFields: nothing reads them (a run's approvals
/// do, and runs keep theirs), and at thousands of ProtectedVMs they would be much of the
/// controller's memory. Given a `tap`, each object it sees goes there too, once its cache
/// holds it: what follows those changes then reads them from the cache, with no watch of
/// its own. Of its objects' changes, those that change `wakes` (see [`every_change`])
/// reconcile them.
fn lean_controller<K>(
    api: Api<K>,
    cfg: watcher::Config,
    tap: Option<UnboundedSender<K>>,
    wakes: fn(&K) -> Option<u64>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher::watcher(api, cfg)
            .default_backoff()
            .modify(|o| o.meta_mut().managed_fields = None),
    )
    .applied_objects()
    .inspect(move |seen| {
        if let (Some(tap), Ok(object)) = (&tap, seen) {
            // Closed only when its follower stopped, as everything does at shutdown.
            let _ = tap.unbounded_send(object.clone());
        }
    })
    .predicate_filter(wakes, Default::default());
    Controller::for_stream(events, reader)
}

/// Every change of an object reconciles it (a predicate that hashes nothing lets all through).
fn every_change<K>(_: &K) -> Option<u64> {
    None
}

fn namespace_controllers(
    ctx: &Arc<Context>,
    stop: &Stop,
    protection_concurrency: u16,
    ns: Option<&str>,
    caches: &mut NamespaceCaches,
) -> Vec<Work> {
    let (client, cfg) = (&ctx.client, watcher::Config::default());
    let mappings = lean_controller(api::<NetworkMapping>(client, ns), cfg.clone(), None, every_change);
    let (pvm_changes, plans_see_pvms) = mpsc::unbounded();
    let pvms = lean_controller(
        api::<ProtectedVM>(client, ns),
        cfg.clone(),
        Some(pvm_changes),
        reconcile::protected_vm::triggers::inputs,
    );
    let plans = lean_controller(api::<RecoveryPlan>(client, ns), cfg.clone(), None, every_change);
    let (runs, plans_see_runs) = reflector::store();
    caches.mappings.push(mappings.store());
    caches.protected_vms.push(pvms.store());
    caches.plans.push(plans.store());
    caches.runs.push(runs);
    vec![
        Box::pin(
            mappings
                .graceful_shutdown_on(stop.clone())
                .run(
                    instrument("NetworkMapping", reconcile::network_mapping::reconcile),
                    error_policy,
                    ctx.clone(),
                )
                .for_each(|r| log_result("NetworkMapping", r)),
        ),
        Box::pin(protection_controller(
            pvms,
            api::<RecoveryPlan>(client, ns),
            ctx,
            stop.clone(),
            protection_concurrency,
        )),
        Box::pin(plan_controller(
            plans,
            ctx,
            stop.clone(),
            plans_see_pvms,
            plans_see_runs,
            ns,
        )),
        Box::pin(
            Controller::new(api::<RecoveryRun>(client, ns), cfg)
                .graceful_shutdown_on(stop.clone())
                .run(
                    instrument("RecoveryRun", reconcile::recovery_run::reconcile),
                    error_policy,
                    ctx.clone(),
                )
                .for_each(|r| log_result("RecoveryRun", r)),
        ),
    ]
}

/// Reconciles read what they refer to from the controllers' own caches, once each has its
/// first full list. Only this future waits for that: a store's readiness keeps one waker,
/// so of several reconciles waiting there all but one would sleep forever.
async fn fill_stores(ctx: Arc<Context>, stores: Stores) {
    let ready = stores.sites.wait_until_ready().await.is_ok()
        && stores.mappings.wait_until_ready().await
        && stores.protected_vms.wait_until_ready().await
        && stores.plans.wait_until_ready().await
        && stores.runs.wait_until_ready().await;
    if ready {
        ctx.set_stores(Some(stores));
    }
}

fn site_controller(sites: Controller<Site>, ctx: &Arc<Context>, stop: Stop) -> impl Future<Output = ()> + use<> {
    let forget = ctx.clone();
    sites
        .graceful_shutdown_on(stop)
        .run(
            instrument("Site", reconcile::site::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(move |r| {
            // A deleted Site (one lost for good) leaves no reachability series behind, or
            // its alert would fire for ever; its client and watches stop. The controller
            // only re-triggers on changes, not deletions: this comes with the probe already
            // scheduled (within PROBE_EVERY), which finds it gone.
            if let Err(controller::Error::ObjectNotFound(site)) = &r {
                forget.metrics.forget_site(&site.name);
                forget.sites.forget(&site.name);
            }
            log_result("Site", r)
        })
}

/// A ProtectedVM is reconciled when its VM or its replication changes at a site, or a plan's
/// consistency groups listing it take effect or change, not only on a timer, `concurrency`
/// at a time.
fn protection_controller(
    pvms: Controller<ProtectedVM>,
    plans: Api<RecoveryPlan>,
    ctx: &Arc<Context>,
    stop: Stop,
    concurrency: u16,
) -> impl Future<Output = ()> + use<> {
    let pvm_store = pvms.store();
    let site_changes = change_stream(ctx.sites.site_changes()).flat_map(move |change| {
        let state = pvm_store.state();
        futures::stream::iter(reconcile::protected_vm::triggers::concerned(
            state.iter().map(AsRef::as_ref),
            change.as_ref(),
        ))
    });
    let plans = watcher::watcher(plans, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(reconcile::protected_vm::triggers::consistency_state, Default::default());
    pvms.with_config(controller::Config::default().concurrency(concurrency))
        .reconcile_on(site_changes)
        .watches_stream(plans, |plan: RecoveryPlan| {
            reconcile::protected_vm::triggers::cut_members(&plan)
        })
        .graceful_shutdown_on(stop)
        .run(
            instrument("ProtectedVM", reconcile::protected_vm::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("ProtectedVM", r))
}

/// A plan's Ready follows its VMs' protection: a ProtectedVM whose protection changes (not
/// each sync: the predicate hashes Ready and RpoMet) requeues the plans naming it, each at
/// most once per its `protection_pass_floor` (a pass reads the whole namespace, and while
/// thousands of VMs are first protected their changes would run it back to back). `pvms`
/// come from the ProtectedVM controller's cache, and its watch of runs fills `runs` (the
/// shared cache of runs) before it triggers a plan, so a plan reconciled for either's change
/// reads that change.
fn plan_controller(
    plans: Controller<RecoveryPlan>,
    ctx: &Arc<Context>,
    stop: Stop,
    pvms: UnboundedReceiver<ProtectedVM>,
    runs: Writer<RecoveryRun>,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + use<> {
    let client = ctx.client.clone();
    let plan_store = plans.store();
    let sizes = plan_store.clone();
    let floor = move |plan: &ObjectRef<RecoveryPlan>| {
        sizes
            .get(plan)
            .map_or(Duration::ZERO, |p| reconcile::recovery_plan::protection_pass_floor(&p))
    };
    let protection = pvms
        .map(Ok::<_, watcher::Error>)
        .predicate_filter(reconcile::recovery_plan::protection_state, Default::default())
        .filter_map(|pvm| futures::future::ready(pvm.ok()))
        .flat_map(move |pvm| futures::stream::iter(reconcile::recovery_plan::plans_naming(&plan_store, &pvm)));
    let forget = ctx.clone();
    let run_changes = reflector::reflector(
        runs,
        watcher::watcher(api::<RecoveryRun>(&client, namespace), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    plans
        .watches_stream(run_changes, |run: RecoveryRun| {
            run.namespace().map(|ns| ObjectRef::new(&run.spec.plan).within(&ns))
        })
        .reconcile_on(throttle::at_most_every(protection, floor))
        .graceful_shutdown_on(stop)
        .run(
            instrument("RecoveryPlan", reconcile::recovery_plan::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(move |r| {
            // Likewise at the deleted plan's next scheduled pass (within a minute).
            if let Err(controller::Error::ObjectNotFound(plan)) = &r {
                forget
                    .metrics
                    .forget_plan(plan.namespace.as_deref().unwrap_or_default(), &plan.name);
            }
            log_result("RecoveryPlan", r)
        })
}

/// Waits until the served CRDs are this build's (see `served_crds`), saying what is wrong
/// every 10 s: neither ready nor leading meanwhile, so an upgrade whose CRDs were not applied
/// leaves the previous replicas acting. False when stopped first.
async fn wait_for_current_crds(client: &Client, stopped: impl Future<Output = ()>) -> bool {
    let wait = async {
        loop {
            match served_crds::check(client).await {
                Ok(wrong) if wrong.is_empty() => return,
                Ok(wrong) => tracing::error!(
                    problems = %wrong.join("; "),
                    "waiting for coldsite's CRDs: apply the ones this release ships \
                     (kubectl apply --server-side -f charts/coldsite/crds/); the controller acts once they are served"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot read coldsite's CRDs (the controller needs get on customresourcedefinitions); waiting"
                ),
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    };
    tokio::select! {
        () = wait => true,
        () = stopped => false,
    }
}

/// With leader election: waits for the Lease, then runs the controllers until stopped; a
/// lost Lease ends the process, so a restart rejoins as standby.
async fn lead_then_run(
    args: &Args,
    client: Client,
    ctx: Arc<Context>,
    identity: &str,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(identity, lease = args.lease_name, "waiting to lead");
    let mut stop = stop_rx.clone();
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed?,
            _ = stop.wait_for(|s| *s) => {
                drop(leader);
                let _ = task.await;
                return Ok(());
            }
        }
    }
    tracing::info!(identity, "leading: controllers start");
    let lost = {
        let mut leader = leader.clone();
        async move {
            let _ = leader.wait_for(|l| !*l).await;
        }
    };
    let (lost_tx, lost_rx) = watch::channel(false);
    let mut lost_watch = lost_rx.clone();
    let stop_or_lost = {
        let mut stopped = stop_rx.clone();
        async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {},
                _ = lost_watch.wait_for(|l| *l) => {},
            }
        }
    };
    let (namespaces, concurrency) = (args.namespaces.clone(), args.protection_concurrency.max(1));
    let controllers =
        tokio::spawn(async move { run_controllers(ctx, shared(stop_or_lost), concurrency, &namespaces).await });
    tokio::select! {
        () = lost => {
            // Another replica may act now: stop at once rather than race it.
            let _ = lost_tx.send(true);
            tracing::error!("lost the lease; exiting so a restart rejoins as standby");
            std::process::exit(1);
        }
        _ = controllers => {}
    }
    drop(leader);
    let _ = task.await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let mut config = kube::Config::infer().await?;
    coldsite_operator::sites::identify(&mut config);
    let client = Client::try_from(config)?;
    let metrics = Metrics::new()?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("coldsite-controller-{}", std::process::id()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        sites: SiteClients::new(client.clone()),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: "coldsite-controller".into(),
            instance: Some(identity.clone()),
        },
        http: HttpClient::new()?,
        settings: Settings {
            concurrency: args.concurrency.max(1),
        },
        runs: Default::default(),
        stores: Default::default(),
        keys: Arc::new(ReplicationKeys::new(
            client.clone(),
            &args.lease_namespace,
            &args.replication_key_secret,
        )),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let ready = Readiness::default();
    let server = tokio::spawn(server::serve(args.metrics_address, metrics, ready.clone(), stopped()));
    if !wait_for_current_crds(&client, stopped()).await {
        return Ok(());
    }
    ready.set(true);

    if args.no_leader_election {
        tracing::info!("acting without leader election");
        run_controllers(
            ctx,
            shared(stopped()),
            args.protection_concurrency.max(1),
            &args.namespaces,
        )
        .await;
    } else {
        lead_then_run(&args, client, ctx, &identity, stop_rx).await?;
    }
    let _ = server.await;
    Ok(())
}
