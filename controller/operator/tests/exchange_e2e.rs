//! The Exchange scenario end to end, on real kube-apiservers, with the site simulator
//! standing in for KubeVirt, VolSync, the snapshot controller and kubelets, and
//! `coldsite-controller` running as processes.
//!
//! `exchange_lifecycle` drives one plan through its whole life with two controller
//! replicas under leader election, killing the leader during runs: protect, test failover
//! (gate, Job, webhook, cleanup), two tenants (a borrowed VM, a privileged script), planned
//! failover, commit, reprotect and failback.
//! `unplanned_failover_with_the_primary_down` stops the primary's API server first. The two
//! use different management servers, so their controllers never meet. Apart from the first
//! test failover, every run is started with its `kubectl-coldsite` command (`planned`,
//! `commit`, `reprotect`, `failback`, `failover`), as an operator would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::protected_vm::{Consistency, ProtectionPhase, ReplicationDirection};
use coldsite_api::recovery_run::{RunPhase, StepKind, StepState};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use coldsite_e2e::ControlPlane;
use coldsite_e2e::exchange::{
    ControllerProcess, Scenario, Topology, VMS, dynamic, replication_destinations, replication_sources,
    virtual_machine_instances, virtual_machines, vm_runs, volume_snapshots, wait_for,
};
use coldsite_e2e::plugin::Plugin;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// A controller acting in `namespaces` only: the tests of this binary share control planes,
/// and a controller of one test must not act on another's objects.
fn controller(cp: &ControlPlane, name: &str, namespaces: &str, extra: &[&str]) -> Result<ControllerProcess> {
    let log = cp.dir().join(format!("{name}.log"));
    let mut args = vec!["--namespace", namespaces];
    args.extend_from_slice(extra);
    ControllerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_coldsite-controller")),
        cp.kubeconfig_path(),
        log,
        &args,
    )
}

/// The scenario's one controller, without leader election: `suffix` tells a restart's log
/// apart.
fn lone_controller(cp: &ControlPlane, s: &Scenario, suffix: &str) -> Result<ControllerProcess> {
    controller(
        cp,
        &format!("controller-{}{suffix}", s.ns),
        &s.ns,
        &["--no-leader-election", "--lease-namespace", &s.ns],
    )
}

/// A scenario on the shared control planes: management and primary on one, recovery on the
/// other.
async fn shared_scenario(name: &str) -> Result<(Scenario, &'static ControlPlane)> {
    let (mgmt, recovery) = (ControlPlane::shared().await?, ControlPlane::shared_recovery().await?);
    let topology = Topology {
        management: mgmt,
        primary: mgmt,
        recovery,
    };
    Ok((Scenario::set_up(&topology, name).await?, mgmt))
}

/// Starts a run with a plugin command (`planned`, `failback`…) under a chosen name, and
/// checks it says what it created.
async fn start_run(plugin: &Plugin, command: &str, name: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec![command, "exchange", "--name", name];
    args.extend_from_slice(extra);
    let out = plugin.ok(&args).await?;
    ensure!(
        out.contains(&format!("recoveryrun.coldsite.io/{name} created")),
        "kubectl coldsite {command}: {out}"
    );
    Ok(())
}

/// Waits until the plan's Ready is `ready`: `kubectl coldsite` requires it before it
/// recovers VMs, unless forced.
async fn plan_ready_is(s: &Scenario, ready: bool) -> Result<()> {
    let what = format!("the plan's Ready to be {ready}");
    plan_condition(s, &what, Duration::from_secs(180), |conds| {
        coldsite_api::common::is_condition_true(conds, "Ready") == ready
    })
    .await
}

/// Waits until the plan's conditions are as `holds` wants.
async fn plan_condition(
    s: &Scenario,
    what: &str,
    within: Duration,
    holds: impl Fn(&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool,
) -> Result<()> {
    let plans: Api<RecoveryPlan> = Api::namespaced(s.management.clone(), &s.ns);
    wait_for(what, within, || async {
        let plan = plans.get("exchange").await?;
        let conds = plan.status.map(|st| st.conditions).unwrap_or_default();
        Ok(holds(&conds).then_some(()))
    })
    .await
}

async fn run_phase(runs: &Api<RecoveryRun>, name: &str) -> Result<Option<RunPhase>> {
    Ok(runs.get(name).await?.status.and_then(|s| s.phase))
}

async fn pvm_status(s: &Scenario, vm: &str) -> Result<coldsite_api::protected_vm::ProtectedVMStatus> {
    Ok(Api::<ProtectedVM>::namespaced(s.management.clone(), &s.ns)
        .get(vm)
        .await?
        .status
        .unwrap_or_default())
}

/// When a VM's step of `kind` started and finished in its latest run.
async fn vm_step(
    s: &Scenario,
    vm: &str,
    kind: StepKind,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let last = pvm_status(s, vm).await?.last_run.context("no lastRun")?;
    let step = last
        .steps
        .iter()
        .find(|x| x.kind == Some(kind))
        .with_context(|| format!("{vm}: no {kind:?} step"))?;
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref()
            .map(coldsite_engine::time::from_k8s)
            .with_context(|| format!("{vm}: {kind:?} did not run"))
    };
    Ok((time(&step.started_at)?, time(&step.finished_at)?))
}

async fn protected(s: &Scenario) -> Result<()> {
    s.wait_protected(Duration::from_secs(150)).await?;
    let rs = replication_sources(&s.primary, &s.ns);
    let rd = replication_destinations(&s.recovery, &s.ns);
    ensure!(
        rs.list(&ListParams::default()).await?.items.len() == 6,
        "one ReplicationSource per disk at the primary"
    );
    ensure!(
        rd.list(&ListParams::default()).await?.items.len() == 6,
        "one ReplicationDestination per disk at recovery"
    );
    let source = rs.get("coldsite-dc01-system").await?;
    ensure!(
        source.data["spec"]["trigger"]["schedule"] == "*/1 * * * *",
        "schedule from the 2m RPO: {}",
        source.data["spec"]["trigger"]
    );
    let destination = rd.get("coldsite-dc01-system").await?;
    ensure!(
        destination.data["spec"]["rsyncTLS"]["serviceType"] == "LoadBalancer"
            && destination.data["status"]["rsyncTLS"]["address"].is_string(),
        "the destination is published through DR's load balancer: {}",
        destination.data["status"]
    );
    let snaps = volume_snapshots(&s.recovery, &s.ns);
    let kept = |snaps: Api<DynamicObject>| async move {
        Ok::<_, anyhow::Error>(
            snaps
                .list(&ListParams::default().labels("volsync.backube/do-not-delete,coldsite.io/protected-vm=dc01"))
                .await?
                .items
                .len(),
        )
    };
    let before = kept(snaps.clone()).await?;
    ensure!(
        before >= 2,
        "recovery points kept with do-not-delete, one per disk at least"
    );
    // VolSync syncs on the minute; a sync takes a few seconds more.
    wait_for("recovery points to accumulate", Duration::from_secs(150), || async {
        Ok((kept(snaps.clone()).await? > before).then_some(()))
    })
    .await?;
    Ok(())
}

/// `appConsistentInterval`: each VM gets a point whose two disks were both cut while the
/// guest was frozen, proven by what the storage at DR holds; the scheduled syncs' points
/// stay crash-consistent; status says so.
async fn app_consistent_points(s: &Scenario, plugin: &Plugin, replicas: &Replicas<'_>) -> Result<()> {
    for vm in VMS {
        let status = wait_for(
            &format!("an app-consistent point of {vm}"),
            Duration::from_secs(150),
            || async {
                let status = pvm_status(s, vm).await?;
                let has = status
                    .recovery_points
                    .as_ref()
                    .is_some_and(|p| p.latest_app_consistent.is_some());
                Ok(has.then_some(status))
            },
        )
        .await?;
        let condition = status.conditions.iter().find(|c| c.type_ == "AppConsistent");
        ensure!(
            condition.is_some_and(|c| c.status == "True"),
            "{vm}: AppConsistent condition {condition:?}"
        );
        let (app, crash) = s.points_by_consistency(&s.dr, vm).await?;
        ensure!(
            app >= 2 && crash >= 2,
            "{vm}: {app} app-consistent and {crash} crash-consistent disk snapshots at DR; \
             expected both disks of one point of each"
        );
        let at_hq = virtual_machine_instances(&s.primary, &s.ns).get(vm).await?;
        ensure!(
            at_hq.data["status"]["fsFreezeStatus"].is_null(),
            "{vm}'s guest is thawed once its snapshots are cut"
        );
    }
    // The leader thawed each guest itself, well before KubeVirt's 60 s backstop, and counted
    // each sync's point.
    let leader = replicas.leader().await?;
    let (_, p) = replicas
        .procs
        .iter()
        .find(|(id, _)| *id == leader)
        .context("the leader")?;
    let thaws = p.metric("coldsite_guest_freeze_seconds_count").await;
    let frozen = p.metric("coldsite_guest_freeze_seconds_sum").await;
    let app: f64 = p
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("coldsite_app_consistent_syncs_total") && l.contains(r#"result="app_consistent""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        thaws >= VMS.len() as f64 && frozen / thaws < 60.0 && app >= VMS.len() as f64,
        "the leader thawed {thaws} guests after {frozen} s in all, and counted {app} app-consistent syncs"
    );
    // `kubectl coldsite points` lists each VM's points with their consistency, at DR.
    let listed = plugin.ok(&["points", "exchange"]).await?;
    for vm in VMS {
        let rows: Vec<&str> = listed.lines().filter(|l| l.starts_with(&format!("{vm} "))).collect();
        ensure!(
            rows.iter().any(|r| r.contains(" app ")) && rows.iter().any(|r| r.contains(" crash ")),
            "{vm}'s points:\n{listed}"
        );
        ensure!(
            rows.iter().all(|r| r.trim_end().ends_with(&s.dr)),
            "{vm}'s points are at DR:\n{listed}"
        );
    }
    Ok(())
}

/// Test failover with its gate; the leader is killed once while the gate holds.
async fn test_failover(s: &Scenario, replicas: &mut Replicas<'_>) -> Result<()> {
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    s.create_run_to("exchange-test-1", "TestFailover", &[], json!("LatestAppConsistent"))
        .await?;
    let name = "exchange-test-1";
    let run = wait_for("the run to wait for approval", Duration::from_secs(120), || async {
        let r = runs.get(name).await?;
        Ok(
            (r.status.as_ref().and_then(|s| s.waiting_for.clone()).as_deref() == Some("confirm-ad-replication"))
                .then_some(r),
        )
    })
    .await?;
    let verify = run
        .status
        .as_ref()
        .and_then(|st| st.steps.iter().find(|x| x.id == "identity/post/verify-ad"));
    ensure!(
        verify.is_some_and(|x| x.state == StepState::Succeeded),
        "the FSMO Job ran before the gate"
    );
    let test_vms = virtual_machines(&s.recovery, &s.test_ns);
    let mbx = test_vms.get_opt("exch-mbx01").await?;
    ensure!(
        mbx.as_ref().is_none_or(|v| v.data["spec"]["runStrategy"] == "Halted"),
        "mailbox must not run before approval"
    );
    ensure!(s.webhook.calls().is_empty(), "the webhook waits for mailbox");
    let jobs = dynamic(&s.recovery, &s.scripts_ns(), "batch", "v1", "Job", "jobs");
    let job = jobs
        .list(&ListParams::default().labels("coldsite.io/action=verify-ad"))
        .await?;
    ensure!(
        job.items.len() == 1,
        "one verify-ad Job, in coldsite's scripts namespace"
    );
    let pod = &job.items[0].data["spec"]["template"]["spec"];
    ensure!(
        pod["serviceAccountName"] == "coldsite-script",
        "scripts run as coldsite-script: {pod}"
    );
    let scripts_ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(s.recovery.clone())
        .get(&s.scripts_ns())
        .await?;
    ensure!(
        scripts_ns
            .labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            == Some("restricted"),
        "the scripts namespace enforces restricted: {:?}",
        scripts_ns.labels()
    );
    let env_names: Vec<&str> = job.items[0].data["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    ensure!(
        env_names.contains(&"COLDSITE_CONTEXT_FILE"),
        "context in the environment: {env_names:?}"
    );

    // The leader dies while the gate holds; the standby takes over.
    replicas.kill_leader().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        run_phase(&runs, name).await? == Some(RunPhase::WaitingForApproval),
        "the gate still holds"
    );
    // The plan is edited under the run: it holds, even approved, until the plan is restored.
    let plans: Api<RecoveryPlan> = Api::namespaced(s.management.clone(), &s.ns);
    let original = plans.get("exchange").await?;
    let mut edited = original.clone();
    edited.spec.groups[2].readiness.timeout = "20m".into();
    plans.replace("exchange", &PostParams::default(), &edited).await?;
    runs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"approvals": ["confirm-ad-replication"]}})),
    )
    .await?;
    wait_for(
        "the run to hold on the changed plan",
        Duration::from_secs(60),
        || async {
            let r = runs.get(name).await?;
            let held = r
                .status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Succeeded"))
                .is_some_and(|c| c.reason == "PlanChanged");
            Ok(held.then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mbx = test_vms.get_opt("exch-mbx01").await?;
    ensure!(
        mbx.as_ref().is_none_or(|v| v.data["spec"]["runStrategy"] == "Halted"),
        "nothing starts while the plan differs"
    );
    let mut restored = plans.get("exchange").await?;
    restored.spec = original.spec.clone();
    plans.replace("exchange", &PostParams::default(), &restored).await?;
    let run = s.run_to_end(name, Duration::from_secs(240)).await?;
    ensure!(
        run.status.as_ref().and_then(|st| st.rto_seconds).is_some(),
        "RTO recorded"
    );

    let dc = vm_step(s, "dc01", StepKind::PowerOn).await?.0;
    let mbx = vm_step(s, "exch-mbx01", StepKind::PowerOn).await?.0;
    let cas = vm_step(s, "exch-cas01", StepKind::PowerOn).await?.0;
    ensure!(dc < mbx && mbx < cas, "power-on order dc {dc} < mbx {mbx} < cas {cas}");
    ensure!(
        vm_step(s, "dc01", StepKind::VmReady).await?.1 <= mbx,
        "mailbox waited for the DC to be up"
    );

    // One webhook effect: every call carries the same idempotency key and a valid signature.
    let calls = s.webhook.calls();
    let keys: BTreeSet<&str> = calls.iter().map(|c| c.idempotency_key.as_str()).collect();
    ensure!(
        !calls.is_empty() && keys.len() == 1,
        "one webhook effect, got keys {keys:?}"
    );
    ensure!(calls.iter().all(|c| c.signature_valid), "the signature verifies");
    ensure!(
        calls[0].idempotency_key.ends_with("/mailbox/post/mount-databases"),
        "key {}",
        calls[0].idempotency_key
    );
    ensure!(
        calls[0].body["action"] == "mount-databases" && calls[0].body["test"] == true,
        "context {}",
        calls[0].body
    );
    // One Job per Job action, despite the kill.
    ensure!(
        jobs.list(&ListParams::default().labels("coldsite.io/action=verify-ad"))
            .await?
            .items
            .len()
            == 1,
        "no second Job"
    );

    for (vm, ip) in [
        ("dc01", "10.50.1.10"),
        ("exch-mbx01", "10.50.1.20"),
        ("exch-cas01", "10.50.1.30"),
    ] {
        let copy = test_vms.get(vm).await?;
        ensure!(copy.data["spec"]["runStrategy"] == "Always", "{vm} runs");
        let network = &copy.data["spec"]["template"]["spec"]["networks"][0]["multus"]["networkName"];
        ensure!(
            network == "contoso/dr-isolated",
            "{vm} on the test network, not {network}"
        );
        let vmi = virtual_machine_instances(&s.recovery, &s.test_ns).get(vm).await?;
        let ips: Vec<&str> = vmi.data["status"]["interfaces"][0]["ipAddresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(ips.contains(&ip), "{vm} has {ip}: {ips:?}");
        ensure!(
            virtual_machine_instances(&s.primary, &s.ns)
                .get_opt(vm)
                .await?
                .is_some(),
            "{vm} still runs at HQ"
        );
    }
    let pvcs = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(s.recovery.clone(), &s.test_ns);
    ensure!(
        pvcs.list(&ListParams::default()).await?.items.len() == 6,
        "one restored PVC per disk, no duplicate"
    );
    // LatestAppConsistent: every disk holds an image cut with its guest frozen, and the run
    // names the VM's newest app-consistent point.
    for vm in VMS {
        for pvc in pvcs.list(&ListParams::default()).await?.items {
            let claim = pvc.name_any();
            if !claim.starts_with(&format!("{vm}-")) {
                continue;
            }
            let data = s
                .simulator
                .read_disk(&s.dr, &s.test_ns, &claim)
                .await?
                .with_context(|| format!("{claim} is not bound"))?;
            ensure!(data.quiesced, "{claim} was restored from an image cut while {vm} ran");
        }
        let status = pvm_status(s, vm).await?;
        let used = status.last_run.as_ref().and_then(|l| l.recovery_point.clone());
        let consistency = status.last_run.as_ref().and_then(|l| l.recovery_point_consistency);
        let newest = status.recovery_points.and_then(|p| p.latest_app_consistent);
        ensure!(
            used.is_some() && used <= newest && consistency == Some(Consistency::App),
            "{vm} recovered {used:?} ({consistency:?}), its newest app-consistent point is {newest:?}"
        );
    }
    // The plan learns of the run from its watch, a moment later.
    let plans = Api::<RecoveryPlan>::namespaced(s.management.clone(), &s.ns);
    wait_for(
        "plan.status.lastRun to name the run",
        Duration::from_secs(30),
        || async {
            let plan = plans.get("exchange").await?;
            Ok(plan
                .status
                .and_then(|st| st.last_run)
                .filter(|l| l.name == name && l.phase == Some(RunPhase::Succeeded)))
        },
    )
    .await?;

    s.delete_test_run(name, Duration::from_secs(120)).await?;
    Ok(())
}

/// A delay from the clock's nanoseconds: random enough to land the kill anywhere.
fn random_millis(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % max
}

/// Samples both sites while a run goes: a VM must never run at both (test copies aside).
fn watch_split_brain(s: &Scenario, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Result<usize>> {
    let (p, r, ns) = (s.primary.clone(), s.recovery.clone(), s.ns.clone());
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            // A site that is down (a power loss) runs nothing and cannot be asked.
            let (Ok(at_primary), Ok(at_recovery)) = (running(&p, &ns).await, running(&r, &ns).await) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Some(both) = at_primary.intersection(&at_recovery).next() {
                bail!("split brain: {both} runs at both sites");
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(samples)
    })
}

async fn running(c: &Client, ns: &str) -> Result<BTreeSet<String>> {
    Ok(virtual_machine_instances(c, ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|v| v.data["status"]["phase"] == "Running")
        .map(|v| v.name_any())
        .collect())
}

async fn network_data(c: &Client, ns: &str, vm: &str) -> Result<String> {
    let v = virtual_machines(c, ns).get(vm).await?;
    let volumes = v.data["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    volumes
        .iter()
        .find_map(|x| x["cloudInitNoCloud"]["networkData"].as_str().map(str::to_owned))
        .context("no cloud-init network data")
}

async fn planned_failover_and_back(s: &Scenario, plugin: &Plugin, replicas: &mut Replicas<'_>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_split_brain(s, stop.clone());

    plan_ready_is(s, true).await?;
    // What the guests wrote at HQ up to the planned failover is on their disks at DR.
    let at_hq = s.write_vms(&s.hq).await?;
    start_run(
        plugin,
        "planned",
        "exchange-move",
        &["--approve", "confirm-ad-replication"],
    )
    .await?;
    // The leader dies at a random point of the run; the delay is printed to replay it.
    let delay = Duration::from_millis(random_millis(9000));
    eprintln!("killing the leader {delay:?} into the planned failover");
    tokio::time::sleep(delay).await;
    replicas.kill_leader().await?;
    s.run_to_end("exchange-move", Duration::from_secs(600)).await?;
    // Sources halted in reverse order, each after the groups that depend on it.
    let cas = vm_step(s, "exch-cas01", StepKind::PowerOff).await?.1;
    let mbx = vm_step(s, "exch-mbx01", StepKind::PowerOff).await?.0;
    let dc = vm_step(s, "dc01", StepKind::PowerOff).await?.0;
    ensure!(cas <= mbx && mbx <= dc, "halt order cas {cas} <= mbx {mbx} <= dc {dc}");
    for vm in VMS {
        let st = pvm_status(s, vm).await?;
        let last = st.last_run.clone().context("lastRun")?;
        let stopped = last
            .steps
            .iter()
            .find(|x| x.kind == Some(StepKind::PowerOff))
            .and_then(|x| x.finished_at.clone());
        let point = last.recovery_point.clone().context("recovery point")?;
        ensure!(
            Some(point.0) >= stopped.as_ref().map(|t| t.0),
            "{vm}: recovered from {point:?}, after the source stopped at {stopped:?}"
        );
        ensure!(
            virtual_machines(&s.primary, &s.ns).get(vm).await?.data["spec"]["runStrategy"] == "Halted",
            "{vm} halted at HQ"
        );
    }
    s.disks_hold(&s.dr, &at_hq, true)
        .await
        .context("no data loss on planned failover")?;
    // Re-IPed: the recovered VMs carry DR addresses in their network data, on the DR LAN.
    let nd = network_data(&s.recovery, &s.ns, "exch-mbx01").await?;
    ensure!(
        nd.contains("10.50.1.20/24") && !nd.contains("10.0.1.20"),
        "mailbox re-IPed: {nd}"
    );
    ensure!(nd.contains("fd00:c0:50::20/64"), "IPv6 re-IPed too: {nd}");
    let dc_nd = network_data(&s.recovery, &s.ns, "dc01").await?;
    ensure!(dc_nd.contains("10.50.1.10/24"), "the DC's static address: {dc_nd}");
    // DNS moved only in a real failover.
    let dns = dynamic(&s.management, &s.scripts_ns(), "batch", "v1", "Job", "jobs")
        .list(&ListParams::default().labels("coldsite.io/action=update-dns"))
        .await?;
    ensure!(dns.items.len() == 1, "update-dns ran on the management cluster");
    wait_for(
        "VMs to report FailedOver at the recovery site",
        Duration::from_secs(60),
        || async {
            for vm in VMS {
                let st = pvm_status(s, vm).await?;
                if st.phase != Some(ProtectionPhase::FailedOver) || st.active_site.as_deref() != Some(s.dr.as_str()) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    start_run(plugin, "commit", "exchange-commit", &[]).await?;
    s.run_to_end("exchange-commit", Duration::from_secs(120)).await?;
    start_run(plugin, "reprotect", "exchange-reprotect", &[]).await?;
    s.run_to_end("exchange-reprotect", Duration::from_secs(180)).await?;
    // Replication now runs back: sources at DR, destinations at HQ on the old disks.
    let rs = replication_sources(&s.recovery, &s.ns);
    let rd = replication_destinations(&s.primary, &s.ns);
    wait_for("reversed replication", Duration::from_secs(120), || async {
        let sources = rs.list(&ListParams::default()).await?.items;
        let dests = rd.list(&ListParams::default()).await?.items;
        Ok((sources.len() == 6 && dests.len() == 6).then_some(dests))
    })
    .await
    .map(|dests| {
        dests
            .iter()
            .all(|d| d.data["spec"]["rsyncTLS"]["destinationPVC"].is_string())
    })
    .and_then(|reuse| {
        if reuse {
            Ok(())
        } else {
            bail!("destinations reuse the old disks")
        }
    })?;
    wait_for("VMs protected in reverse", Duration::from_secs(150), || async {
        for vm in VMS {
            let st = pvm_status(s, vm).await?;
            if st.replication_direction != Some(ReplicationDirection::RecoveryToPrimary)
                || !coldsite_api::common::is_condition_true(&st.conditions, "Ready")
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    plan_ready_is(s, true).await?;
    // What the guests wrote at DR comes home with them.
    let at_dr = s.write_vms(&s.dr).await?;
    start_run(
        plugin,
        "failback",
        "exchange-home",
        &["--approve", "confirm-ad-replication"],
    )
    .await?;
    s.run_to_end("exchange-home", Duration::from_secs(600)).await?;
    s.disks_hold(&s.hq, &at_dr, true)
        .await
        .context("failback brings DR's writes home")?;
    for vm in VMS {
        ensure!(
            virtual_machines(&s.primary, &s.ns).get(vm).await?.data["spec"]["runStrategy"] == "Always",
            "{vm} back at HQ"
        );
        ensure!(
            virtual_machines(&s.recovery, &s.ns).get(vm).await?.data["spec"]["runStrategy"] == "Halted",
            "{vm} halted at DR"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.await??;
    ensure!(samples > 50, "the split-brain watch sampled {samples} times");
    Ok(())
}

/// A planned failover cancelled while its final sync cannot complete (HQ's movers stall)
/// leaves the VMs at HQ, stopped, and replication resumes on its schedule: the final sync's
/// manual triggers go. The operator starts the VMs again.
async fn cancelled_planned_failover(s: &Scenario, plugin: &Plugin) -> Result<()> {
    plan_ready_is(s, true).await?;
    s.simulator.update_faults(|f| {
        let stalled = &mut f.site(&s.hq).stalled;
        for vm in VMS {
            for disk in ["system", "data"] {
                stalled.insert(format!("{}/coldsite-{vm}-{disk}", s.ns));
            }
        }
    });
    start_run(
        plugin,
        "planned",
        "exchange-halted",
        &["--approve", "confirm-ad-replication"],
    )
    .await?;
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    wait_for("the final syncs to be under way", Duration::from_secs(180), || async {
        let st = pvm_status(s, "dc01").await?;
        let syncing = st
            .last_run
            .iter()
            .flat_map(|l| &l.steps)
            .any(|x| x.kind == Some(StepKind::FinalSync) && x.state == StepState::Running);
        Ok(syncing.then_some(()))
    })
    .await?;
    runs.patch(
        "exchange-halted",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await?;
    wait_for("the run to end cancelled", Duration::from_secs(120), || async {
        Ok((run_phase(&runs, "exchange-halted").await? == Some(RunPhase::Cancelled)).then_some(()))
    })
    .await?;
    let cancelled_at = Timestamp::now();
    s.simulator.update_faults(|f| f.site(&s.hq).stalled.clear());
    let rs = replication_sources(&s.primary, &s.ns);
    wait_for(
        "replication to resume on its schedule with a new point",
        Duration::from_secs(240),
        || async {
            let sources = rs.list(&ListParams::default()).await?.items;
            let scheduled = sources.len() == 6
                && sources.iter().all(|x| {
                    x.data["spec"]["trigger"]["manual"].is_null() && x.data["spec"]["trigger"]["schedule"].is_string()
                });
            for vm in VMS {
                let latest = pvm_status(s, vm)
                    .await?
                    .recovery_points
                    .and_then(|p| p.latest)
                    .map(|t| t.0);
                if !scheduled || latest.is_none_or(|t| t <= cancelled_at) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    s.check_truth(false)
        .await
        .context("VMs stopped at HQ, replicating to DR")?;
    let vms = virtual_machines(&s.primary, &s.ns);
    for vm in VMS {
        vms.patch(
            vm,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
        )
        .await?;
    }
    wait_for("the VMs running at HQ again", Duration::from_secs(120), || async {
        for vm in VMS {
            if !coldsite_e2e::exchange::vm_runs(&s.primary, &s.ns, vm).await? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    s.check_truth(true).await
}

/// Two replicas under leader election; the killed one comes back as standby.
struct Replicas<'a> {
    cp: &'a ControlPlane,
    procs: Vec<(String, ControllerProcess)>,
    lease_ns: String,
    started: usize,
}

impl<'a> Replicas<'a> {
    async fn start(cp: &'a ControlPlane, lease_ns: &str) -> Result<Self> {
        let mut r = Replicas {
            cp,
            procs: Vec::new(),
            lease_ns: lease_ns.to_owned(),
            started: 0,
        };
        r.spawn()?;
        r.leader().await?;
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        self.started += 1;
        let id = format!("replica-{}", self.started);
        let args = ["--lease-namespace", &self.lease_ns, "--identity", &id];
        // Its namespace and the second tenant's (see `two_tenants`).
        let namespaces = format!("{0},{0}-b", self.lease_ns);
        let p = controller(
            self.cp,
            &format!("controller-{}-{id}", self.lease_ns),
            &namespaces,
            &args,
        )?;
        self.procs.push((id, p));
        Ok(())
    }

    async fn leader(&self) -> Result<String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.cp.client().await?, &self.lease_ns);
        let ids: Vec<String> = self.procs.iter().map(|(id, _)| id.clone()).collect();
        wait_for("a leader", Duration::from_secs(60), || async {
            let holder = leases
                .get_opt("coldsite-controller")
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            Ok(holder.filter(|h| ids.contains(h)))
        })
        .await
    }

    /// Kills the leader with SIGKILL and starts a fresh replica in its place.
    async fn kill_leader(&mut self) -> Result<()> {
        let leader = self.leader().await?;
        let i = self
            .procs
            .iter()
            .position(|(id, _)| *id == leader)
            .context("leader process")?;
        let (_, mut p) = self.procs.remove(i);
        p.kill().await?;
        self.spawn()
    }
}

async fn standby_never_acts(replicas: &Replicas<'_>) -> Result<()> {
    let leader = replicas.leader().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (id, p) in &replicas.procs {
        let reconciles = p.metric("coldsite_reconciles_total").await;
        if *id == leader {
            ensure!(reconciles > 0.0, "the leader {id} reconciles");
        } else {
            ensure!(reconciles == 0.0, "the standby {id} reconciled {reconciles} times");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_lifecycle() -> Result<()> {
    let mgmt = ControlPlane::shared().await?;
    let recovery = ControlPlane::shared_recovery().await?;
    let s = Scenario::set_up(
        &Topology {
            management: mgmt,
            primary: mgmt,
            recovery,
        },
        "exchange",
    )
    .await?;
    s.set_rpo("2m").await?;
    // The example asks it of the mailbox server; here every VM, so a test failover can
    // restore LatestAppConsistent for the whole plan.
    s.set_replication(json!({"appConsistentInterval": "1h"})).await?;
    let mut replicas = Replicas::start(mgmt, &s.ns).await?;
    let plugin = Plugin::build(mgmt.kubeconfig_path().to_owned(), &s.ns).await?;
    let result = async {
        protected(&s).await.context("protect")?;
        app_consistent_points(&s, &plugin, &replicas)
            .await
            .context("app-consistent points")?;
        standby_never_acts(&replicas).await.context("leader election")?;
        test_failover(&s, &mut replicas).await.context("test failover")?;
        two_tenants(&s).await.context("two tenants")?;
        cancelled_planned_failover(&s, &plugin)
            .await
            .context("a cancelled planned failover")?;
        planned_failover_and_back(&s, &plugin, &mut replicas)
            .await
            .context("planned failover, commit, reprotect, failback")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = &result {
        for (id, p) in &replicas.procs {
            eprintln!("--- {id} log tail ---\n{}", p.log_tail(30));
        }
        eprintln!("{e:#}");
    }
    result
}

/// Two tenants on one management cluster, on the real API servers. Tenant B's ProtectedVM
/// naming tenant A's VM is refused with the rule and the grant that would allow it, and
/// makes nothing at either site. Tenant A's plan editor asking for a privileged, hostPath
/// script pod gets a failed run that says why (the site's Pod Security admission), and no
/// Job or pod at the site.
async fn two_tenants(s: &Scenario) -> Result<()> {
    use coldsite_api::NetworkMapping;
    let b = format!("{}-b", s.ns);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(s.management.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": b,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))?,
        )
        .await?;
    let mapping = Api::<NetworkMapping>::namespaced(s.management.clone(), &s.ns)
        .get("hq-to-dr")
        .await?;
    Api::<NetworkMapping>::namespaced(s.management.clone(), &b)
        .create(&PostParams::default(), &NetworkMapping::new("hq-to-dr", mapping.spec))
        .await?;
    let mut spec = Api::<ProtectedVM>::namespaced(s.management.clone(), &s.ns)
        .get("dc01")
        .await?
        .spec;
    spec.vm.namespace = Some(s.ns.clone());
    let borrowed: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &b);
    borrowed
        .create(&PostParams::default(), &ProtectedVM::new("borrowed-dc01", spec))
        .await?;
    let message = wait_for(
        "tenant B's ProtectedVM to be refused",
        Duration::from_secs(60),
        || async {
            let pvm = borrowed.get("borrowed-dc01").await?;
            let ready = pvm
                .status
                .iter()
                .flat_map(|st| &st.conditions)
                .find(|c| c.type_ == "Ready");
            Ok(ready.filter(|c| c.status == "False").map(|c| c.message.clone()))
        },
    )
    .await?;
    let grant = format!("spec.namespaceGrants: [{{from: {b}, to: [{}]}}]", s.ns);
    ensure!(
        message.contains("is not granted to namespace") && message.contains(&grant),
        "the refusal names the rule and the grant: {message}"
    );
    // Long enough for a replication to have been set up, had it been allowed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let label = ListParams::default().labels("coldsite.io/protected-vm=borrowed-dc01");
    for (site, client) in [("HQ", &s.primary), ("DR", &s.recovery)] {
        for api in [
            replication_sources(client, &s.ns),
            replication_destinations(client, &s.ns),
            dynamic(client, &s.ns, "", "v1", "ConfigMap", "configmaps"),
        ] {
            let made = api.list(&label).await?.items.len();
            ensure!(
                made == 0,
                "tenant B's refused ProtectedVM made {made} objects at {site}"
            );
        }
    }
    ensure!(
        pvm_status(s, "dc01").await?.phase == Some(ProtectionPhase::Protected),
        "tenant A's dc01 stays protected"
    );
    borrowed.delete("borrowed-dc01", &Default::default()).await?;
    privileged_script_refused(s).await
}

/// A plan editor's privileged, hostPath script: the run fails at that step with the site's
/// Pod Security reasons; nothing is created for it at the site.
async fn privileged_script_refused(s: &Scenario) -> Result<()> {
    let plans: Api<RecoveryPlan> = Api::namespaced(s.management.clone(), &s.ns);
    let original = plans.get("exchange").await?.spec.groups;
    let mut groups = original.clone();
    groups[0].pre.push(serde_json::from_value(json!({
        "name": "escalate", "when": ["TestFailover"],
        "script": {"site": "recovery", "job": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "root", "image": "busybox", "securityContext": {"privileged": true},
                            "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}}}}}
    }))?);
    let set_groups = |groups: &Vec<coldsite_api::recovery_plan::RecoveryGroup>| json!({"spec": {"groups": groups}});
    plans
        .patch("exchange", &PatchParams::default(), &Patch::Merge(set_groups(&groups)))
        .await?;
    plan_ready_is(s, true).await?;
    let name = "escalation";
    s.create_run(name, "TestFailover", &[]).await?;
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    let step = wait_for("the escalating run to fail", Duration::from_secs(120), || async {
        let r = runs.get(name).await?;
        let st = r.status.unwrap_or_default();
        if st.phase != Some(RunPhase::Failed) {
            return Ok(None);
        }
        Ok(st.steps.into_iter().find(|x| x.id == "identity/pre/escalate"))
    })
    .await?;
    let why = step.message.unwrap_or_default();
    ensure!(step.state == StepState::Failed, "the escalating step failed: {why}");
    for reason in [
        "violates PodSecurity \"restricted:latest\"",
        "securityContext.privileged=true",
        "restricted volume type \"hostPath\"",
    ] {
        ensure!(why.contains(reason), "the step says why ({reason}): {why}");
    }
    let action = ListParams::default().labels("coldsite.io/action=escalate");
    let jobs = dynamic(&s.recovery, &s.scripts_ns(), "batch", "v1", "Job", "jobs");
    ensure!(jobs.list(&action).await?.items.is_empty(), "no Job for the refused pod");
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(s.recovery.clone(), &s.scripts_ns());
    ensure!(pods.list(&action).await?.items.is_empty(), "no pod for it either");
    s.delete_test_run(name, Duration::from_secs(120)).await?;
    plans
        .patch(
            "exchange",
            &PatchParams::default(),
            &Patch::Merge(set_groups(&original)),
        )
        .await?;
    plan_ready_is(s, true).await
}

/// An audit policy that records reads of VirtualMachines, ReplicationSources and
/// VolumeSnapshots, and nothing else.
const AUDIT_READS: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    verbs: ["list", "watch", "get"]
    resources:
      - {group: "kubevirt.io", resources: ["virtualmachines"]}
      - {group: "volsync.backube", resources: ["replicationsources"]}
      - {group: "snapshot.storage.k8s.io", resources: ["volumesnapshots"]}
  - level: None
"#;

/// coldsite-controller's reads of `resource` by verb (`list`, `watch`, `get`), by the
/// audit log: every list and watch, and the gets of objects whose name contains `named`.
fn reads(log: &Path, resource: &str, named: &str) -> Result<BTreeMap<String, usize>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut reads = BTreeMap::new();
    for line in text.lines() {
        let event: Value = serde_json::from_str(line)?;
        let by_controller = event["userAgent"]
            .as_str()
            .is_some_and(|a| a.starts_with("coldsite-controller/"));
        let name = event["objectRef"]["name"].as_str().unwrap_or_default();
        let counted = event["verb"] != "get" || name.contains(named);
        if by_controller && event["objectRef"]["resource"] == resource && counted {
            *reads
                .entry(event["verb"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    Ok(reads)
}

/// Reconciles at rest read from the controller's watches of HQ: five plan reconciles list
/// none of HQ's VirtualMachines, and five reconciles of ProtectedVM dc01 (no app-consistent
/// syncs) read none of its ReplicationSources or VolumeSnapshots, and list none there.
async fn steady_reads_come_from_watches(s: &Scenario, ctl: &ControllerProcess, audit_log: &Path) -> Result<()> {
    let count = |m: &BTreeMap<String, usize>, verb: &str| m.get(verb).copied().unwrap_or(0);
    let plans: Api<RecoveryPlan> = Api::namespaced(s.management.clone(), &s.ns);
    let before = reads(audit_log, "virtualmachines", "")?;
    touch_five_times(ctl, "RecoveryPlan", &plans, "exchange").await?;
    let after = reads(audit_log, "virtualmachines", "")?;
    ensure!(
        count(&after, "list") == count(&before, "list") && count(&after, "watch") > 0,
        "five plan reconciles; the controller's VM reads at HQ before: {before:?}, after: {after:?}"
    );
    let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    let resources = ["replicationsources", "volumesnapshots"];
    // Others' app-consistent syncs read their own objects meanwhile.
    let before: Vec<_> = resources
        .iter()
        .map(|r| reads(audit_log, r, "dc01"))
        .collect::<Result<_>>()?;
    touch_five_times(ctl, "ProtectedVM", &pvms, "dc01").await?;
    for (resource, before) in resources.iter().zip(before) {
        let after = reads(audit_log, resource, "dc01")?;
        ensure!(
            ["get", "list"].iter().all(|v| count(&after, v) == count(&before, v)) && count(&after, "watch") > 0,
            "five ProtectedVM reconciles; the controller's reads of {resource} at HQ before: {before:?}, after: {after:?}"
        );
    }
    Ok(())
}

/// Annotates an object five times, each time waiting for the controller to reconcile it.
async fn touch_five_times<K>(ctl: &ControllerProcess, kind: &str, api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let metric = format!(r#"coldsite_reconciles_total{{kind="{kind}""#);
    for touch in 0..5 {
        let reconciles = ctl.metric(&metric).await;
        let note = json!({"metadata": {"annotations": {"e2e.coldsite.io/touch": touch.to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&note)).await?;
        wait_for("the object to be reconciled", Duration::from_secs(30), || async {
            Ok((ctl.metric(&metric).await > reconciles).then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// With a one-minute retention, points older than that go, the newest always stays.
/// The retention is an hour again afterwards.
async fn retention_prunes(s: &Scenario) -> Result<()> {
    let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    pvms.patch(
        "dc01",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replication": {"rpo": "1m", "retention": "1m"}}})),
    )
    .await?;
    let snaps = volume_snapshots(&s.recovery, &s.ns);
    let selector = "coldsite.io/protected-vm=dc01,coldsite.io/disk=dc01-system";
    let first = snaps.list(&ListParams::default().labels(selector)).await?.items;
    let oldest = first
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.clone())
        .min()
        .context("points")?;
    wait_for(
        "points older than the retention to be pruned",
        Duration::from_secs(150),
        || async {
            let now = pvm_status(s, "dc01").await?;
            let points = snaps.list(&ListParams::default().labels(selector)).await?.items;
            let gone = points
                .iter()
                .all(|p| p.metadata.creation_timestamp.as_ref().is_some_and(|t| *t > oldest));
            let count = now.recovery_points.map(|r| r.count).unwrap_or(0);
            Ok((gone && !points.is_empty() && count >= 1).then_some(()))
        },
    )
    .await?;
    // An hour again, so the repoint later finds points from before the disaster's writes.
    pvms.patch(
        "dc01",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replication": {"retention": "1h"}}})),
    )
    .await?;
    Ok(())
}

/// The failover waits at its gate with dc01 up at DR when HQ comes back, its VMs starting by
/// their run strategy (slowly, as a site that lost power): coldsite halts every one of them
/// before it runs (the split-brain watch is on throughout), and says so. Then the gate is
/// approved.
async fn disaster_with_a_returning_primary(
    s: &Scenario,
    primary: &ControlPlane,
    ctl: &ControllerProcess,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_split_brain(s, stop.clone());
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    wait_for("the failover to wait at its gate", Duration::from_secs(240), || async {
        let r = runs.get("exchange-disaster").await?;
        Ok((r.status.and_then(|st| st.phase) == Some(RunPhase::WaitingForApproval)).then_some(()))
    })
    .await?;
    ensure!(
        coldsite_e2e::exchange::vm_runs(&s.recovery, &s.ns, "dc01").await?,
        "dc01 runs at DR"
    );
    s.simulator.update_faults(|f| {
        let slow = &mut f.site(&s.hq).slow_boot;
        for vm in VMS {
            slow.insert(vm.to_owned(), Duration::from_secs(20));
        }
    });
    primary.restart().await?;
    let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    let vms = virtual_machines(&s.primary, &s.ns);
    wait_for("HQ's copies fenced", Duration::from_secs(90), || async {
        for vm in VMS {
            let st = pvms.get(vm).await?.status.unwrap_or_default();
            let fenced = coldsite_api::common::is_condition_true(&st.conditions, "Fenced");
            if !fenced || vms.get(vm).await?.data["spec"]["runStrategy"] != "Halted" {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let fenced = ctl
        .metric(&format!(r#"coldsite_fenced_vms_total{{site="{}"}}"#, s.hq))
        .await;
    ensure!(
        fenced >= 3.0,
        "the controller counts the copies it halted at HQ: {fenced}"
    );
    runs.patch(
        "exchange-disaster",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"approvals": ["confirm-ad-replication"]}})),
    )
    .await?;
    s.run_to_end("exchange-disaster", Duration::from_secs(300)).await?;
    // A while longer: HQ's VMs would have booted by now, had they not been halted.
    tokio::time::sleep(Duration::from_secs(25)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.await??;
    ensure!(samples > 100, "the split-brain watch sampled {samples} times");
    Ok(())
}

/// Reprotect keeps HQ's disks as they were, writes after the last sync included, as a
/// recovery point before replicating DR's data over them.
async fn reprotect_keeps_what_hq_never_replicated(
    s: &Scenario,
    plugin: &Plugin,
    lost: &BTreeMap<String, String>,
) -> Result<()> {
    start_run(plugin, "commit", "exchange-keep", &[]).await?;
    s.run_to_end("exchange-keep", Duration::from_secs(180)).await?;
    let why = plugin
        .refused(&["repoint", "exchange", "--recovery-point", "Latest"])
        .await?;
    ensure!(why.contains("Committed at") && why.contains("before commit"), "{why}");
    start_run(plugin, "reprotect", "exchange-return", &[]).await?;
    s.run_to_end("exchange-return", Duration::from_secs(300)).await?;
    let snaps = volume_snapshots(&s.primary, &s.ns);
    for (vm, write) in lost {
        let kept = snaps
            .list(&ListParams::default().labels(&format!("coldsite.io/protected-vm={vm},coldsite.io/disk={vm}-system")))
            .await?
            .items
            .into_iter()
            .find(|x| {
                x.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("coldsite.io/safety"))
            })
            .with_context(|| format!("no safety point of {vm} at HQ"))?;
        let data = s.simulator.read_snapshot(&s.hq, &s.ns, &kept.name_any()).await?;
        ensure!(
            data.contains(write),
            "{vm}'s safety point lacks HQ's last write {write}: {data:?}"
        );
    }
    s.check_truth(true).await.context("after reprotect")
}

/// Guest writes at HQ before a disaster, and when they were made.
struct DisasterWrites {
    /// Before the first write: DR's points up to here lack it.
    before_synced: Timestamp,
    /// A write that a sync carries to DR.
    synced: BTreeMap<String, String>,
    /// A write made with HQ's movers stalled, which no sync carries.
    lost: BTreeMap<String, String>,
    lost_at: Timestamp,
}

async fn writes_before_the_disaster(s: &Scenario) -> Result<DisasterWrites> {
    let before_synced = Timestamp::now();
    let synced = s.write_vms(&s.hq).await?;
    wait_for(
        "a recovery point with the first write",
        Duration::from_secs(180),
        || async { Ok(s.newest_points_hold(&s.dr, &synced).await?.then_some(())) },
    )
    .await?;
    s.simulator.update_faults(|f| {
        let stalled = &mut f.site(&s.hq).stalled;
        for vm in VMS {
            for disk in ["system", "data"] {
                stalled.insert(format!("{}/coldsite-{vm}-{disk}", s.ns));
            }
        }
    });
    // A transfer already connected finishes within the simulator's sync time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost = s.write_vms(&s.hq).await?;
    Ok(DisasterWrites {
        before_synced,
        synced,
        lost,
        lost_at: Timestamp::now(),
    })
}

/// Before commit the failover is repointed to a point older than the synced write, then
/// back to the newest: each time DR's disks hold what that point held, the VMs run there
/// again, and each VM's record names the point it left. Nothing is asked of HQ.
async fn repointed_before_commit(s: &Scenario, plugin: &Plugin, writes: &DisasterWrites) -> Result<()> {
    let mut restored = BTreeMap::new();
    for vm in VMS {
        let last = pvm_status(s, vm).await?.last_run.context("lastRun")?;
        restored.insert(vm, last.recovery_point.context("the failover's point")?);
    }
    // Whole seconds, as an operator types it.
    let older = writes.before_synced.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    start_run(plugin, "repoint", "exchange-older", &["--recovery-point", &older]).await?;
    s.run_to_end("exchange-older", Duration::from_secs(300)).await?;
    s.check_truth(true)
        .await
        .context("after the repoint to an older point")?;
    s.disks_hold(&s.dr, &writes.synced, false)
        .await
        .context("the older point lacks the synced write")?;
    for vm in VMS {
        let last = pvm_status(s, vm).await?.last_run.context("lastRun")?;
        let point = last.recovery_point.context("the repoint's point")?;
        ensure!(
            point.0 < writes.before_synced,
            "{vm} repointed to {point:?}, not before {older}"
        );
        let replaced = last.replaced_point.context("the point the repoint replaced")?;
        ensure!(
            replaced.run == "exchange-disaster" && replaced.time == restored[vm],
            "{vm}'s repoint names {replaced:?}, not the failover's {:?}",
            restored[vm]
        );
    }
    let tree = plugin.ok(&["status", "rrun/exchange-older"]).await?;
    ensure!(
        tree.contains("replaces") && tree.contains("of run exchange-disaster"),
        "{tree}"
    );
    // The points stay until commit: the newest is picked again.
    start_run(plugin, "repoint", "exchange-newest", &["--recovery-point", "Latest"]).await?;
    s.run_to_end("exchange-newest", Duration::from_secs(300)).await?;
    s.check_truth(true)
        .await
        .context("after the repoint back to the newest point")?;
    s.disks_hold(&s.dr, &writes.synced, true)
        .await
        .context("the newest point again")?;
    s.disks_hold(&s.dr, &writes.lost, false)
        .await
        .context("data written after the last sync")?;
    for vm in VMS {
        let last = pvm_status(s, vm).await?.last_run.context("lastRun")?;
        ensure!(
            last.recovery_point.as_ref() == Some(&restored[vm])
                && last.replaced_point.is_some_and(|r| r.run == "exchange-older"),
            "{vm} back on its failover's point {:?}",
            restored[vm]
        );
    }
    Ok(())
}

/// Makes the served RecoveryRun CRD an older schema's (its digest): what a `helm upgrade`
/// without applying the new CRDs leaves. Returns how to restore it.
async fn stale_crd(cp: &ControlPlane) -> Result<(Api<CustomResourceDefinition>, Value)> {
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await?);
    let current = coldsite_api::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("recoveryruns.coldsite.io"))
        .context("no RecoveryRun CRD")?;
    let digest = |d: &str| json!({"metadata": {"annotations": {coldsite_api::SCHEMA_DIGEST: d}}});
    let restore = digest(&coldsite_api::schema_digest(&current));
    crds.patch(
        "recoveryruns.coldsite.io",
        &PatchParams::default(),
        &Patch::Merge(digest("0ld")),
    )
    .await?;
    Ok((crds, restore))
}

/// A controller started over a stale CRD says which one, acts on nothing, and acts once the
/// CRD is this build's again.
async fn waits_for_its_crds(
    s: &Scenario,
    ctl: &ControllerProcess,
    (crds, restore): (Api<CustomResourceDefinition>, Value),
) -> Result<()> {
    wait_for(
        "the controller to name the stale CRD",
        Duration::from_secs(30),
        || async {
            Ok(ctl
                .log_tail(20)
                .contains("recoveryruns.coldsite.io is not the schema this controller was built with")
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    let acted = pvms
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.status.is_some())
        .count();
    ensure!(
        acted == 0,
        "{acted} ProtectedVMs got a status while the CRDs were stale"
    );
    crds.patch(
        "recoveryruns.coldsite.io",
        &PatchParams::default(),
        &Patch::Merge(restore),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplanned_failover_with_the_primary_down() -> Result<()> {
    // The management cluster lives at the recovery site, as DESIGN.md advises; the primary
    // is a server of its own, stopped to play the disaster.
    let recovery = ControlPlane::shared_recovery().await?;
    // HQ's API server keeps an audit log of some reads, to see how the controller reads them.
    let audit = tempfile::tempdir()?;
    let (policy, audit_log) = (audit.path().join("policy.yaml"), audit.path().join("audit.log"));
    std::fs::write(&policy, AUDIT_READS)?;
    let mut options = coldsite_e2e::ControlPlaneOptions::new("hq-outage");
    options.extra_apiserver_args = vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit_log.display()),
    ];
    let primary = ControlPlane::start(options).await?;
    let s = Scenario::set_up(
        &Topology {
            management: recovery,
            primary: &primary,
            recovery,
        },
        "outage",
    )
    .await?;
    s.set_rpo("2m").await?;
    // No other test manages from this API server, so its CRDs may be made stale here.
    let stale = stale_crd(recovery).await?;
    let mut ctl = lone_controller(recovery, &s, "")?;
    let plugin = Plugin::build(recovery.kubeconfig_path().to_owned(), &s.ns).await?;
    let result = async {
        waits_for_its_crds(&s, &ctl, stale).await.context("stale CRDs")?;
        protected(&s).await.context("protect")?;
        retention_prunes(&s).await.context("retention")?;
        steady_reads_come_from_watches(&s, &ctl, &audit_log).await?;
        let writes = writes_before_the_disaster(&s).await?;
        let DisasterWrites {
            synced, lost, lost_at, ..
        } = &writes;
        // HQ goes dark: its guests stop with it, then its API server.
        s.simulator.power_off_site(&s.hq).await?;
        primary.stop();
        // With the primary down the plan is not Ready: the command refuses and points to
        // --force, the way on in a real disaster.
        plan_ready_is(&s, false).await?;
        let why = plugin.refused(&["failover", "exchange"]).await?;
        ensure!(why.contains("not Ready") && why.contains("--force"), "{why}");
        start_run(&plugin, "failover", "exchange-disaster", &["--force"]).await?;
        disaster_with_a_returning_primary(&s, &primary, &ctl).await?;
        s.run_to_end("exchange-disaster", Duration::from_secs(300)).await?;
        let mut notes = BTreeMap::new();
        for vm in VMS {
            let last = pvm_status(&s, vm).await?.last_run.context("lastRun")?;
            let stop = last
                .steps
                .iter()
                .find(|x| x.kind == Some(StepKind::PowerOff))
                .context("stop step")?;
            notes.insert(vm, stop.message.clone().unwrap_or_default());
        }
        ensure!(
            notes.values().all(|m| m.contains("source site down")),
            "the source's outage is recorded: {notes:?}"
        );
        s.check_truth(true).await.context("after the failover, HQ back")?;
        // DR has what the last sync carried, not what HQ wrote after it, and the run says
        // which point it recovered.
        s.disks_hold(&s.dr, synced, true)
            .await
            .context("data of the last sync")?;
        s.disks_hold(&s.dr, lost, false)
            .await
            .context("data written after the last sync")?;
        for vm in VMS {
            let point = pvm_status(&s, vm).await?.last_run.and_then(|l| l.recovery_point);
            ensure!(
                point.as_ref().is_some_and(|p| p.0 < *lost_at),
                "{vm} recovered from {point:?}, before HQ's last write at {lost_at}"
            );
        }
        repointed_before_commit(&s, &plugin, &writes).await.context("repoint")?;
        reprotect_keeps_what_hq_never_replicated(&s, &plugin, lost).await?;

        // HQ is lost for good: once its Site is deleted, unprotecting a VM no longer waits
        // for it, and still cleans up at DR.
        let hq_series = format!(r#"coldsite_site_reachable{{site="{}"}}"#, s.hq);
        ensure!(
            ctl.metrics_text().await.contains(&hq_series),
            "{hq_series} before HQ's Site is deleted"
        );
        Api::<Site>::all(s.management.clone())
            .delete(&s.hq, &Default::default())
            .await?;
        let pvms: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
        let points_at_dr = volume_snapshots(&s.recovery, &s.ns);
        let dc01 = ListParams::default().labels("coldsite.io/protected-vm=dc01");
        ensure!(
            !points_at_dr.list(&dc01).await?.items.is_empty(),
            "dc01's recovery points at DR before it is unprotected"
        );
        pvms.delete("dc01", &Default::default()).await?;
        wait_for("dc01 to be unprotected without HQ", Duration::from_secs(60), || async {
            let points = points_at_dr.list(&dc01).await?.items.len();
            Ok((pvms.get_opt("dc01").await?.is_none() && points == 0).then_some(()))
        })
        .await?;
        // Its RPO and health series go with it, and HQ's reachability with HQ's Site, so no
        // alert fires for what is gone.
        // The Site's next probe, within a minute, finds it gone.
        let text = wait_for("HQ's reachability series to go", Duration::from_secs(90), || async {
            let text = ctl.metrics_text().await;
            Ok((!text.contains(&hq_series)).then_some(text))
        })
        .await?;
        ensure!(
            text.contains(r#"protected_vm="exch-mbx01""#) && !text.contains(r#"protected_vm="dc01""#),
            "dc01's series after unprotecting it:\n{text}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(40));
    }
    let _ = ctl.kill().await;
    result
}

/// Runs a plugin command that must succeed, to the end, and checks the sites against status.
async fn step(s: &Scenario, plugin: &Plugin, command: &str, name: &str, running: bool) -> Result<()> {
    begin_step(s, plugin, command, name).await?;
    end_step(s, command, name, running).await
}

/// Starts a run with a plugin command, approving the plan's gate up front.
async fn begin_step(s: &Scenario, plugin: &Plugin, command: &str, name: &str) -> Result<()> {
    let moves = matches!(command, "planned" | "failover" | "failback");
    if moves {
        plan_ready_is(s, true).await?;
    }
    let extra: &[&str] = if moves {
        &["--approve", "confirm-ad-replication"]
    } else {
        &[]
    };
    start_run(plugin, command, name, extra).await
}

/// Waits for a run to succeed (and after a reprotect for the VMs protected again), then
/// checks the sites against status.
async fn end_step(s: &Scenario, command: &str, name: &str, running: bool) -> Result<()> {
    s.run_to_end(name, Duration::from_secs(420)).await?;
    if command == "reprotect" {
        wait_for("the VMs protected again", Duration::from_secs(240), || async {
            for vm in VMS {
                let st = pvm_status(s, vm).await?;
                if !coldsite_api::common::is_condition_true(&st.conditions, "Ready") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
    }
    s.check_truth(running)
        .await
        .with_context(|| format!("after {command} ({name})"))
}

/// A command that does not fit where the VMs stand is refused by the plugin up front, and by
/// the controller for a run made without it, naming the VM, its state and what fits; and
/// nothing changes at the sites.
async fn refused_everywhere(s: &Scenario, plugin: &Plugin, command: &str, action: &str, fits: &str) -> Result<()> {
    let why = plugin.refused(&[command, "exchange"]).await?;
    ensure!(
        why.contains("VM dc01 is") && why.contains(&format!("kubectl coldsite {fits} exchange")),
        "kubectl coldsite {command}: {why}"
    );
    let name = format!("wrong-{command}");
    s.create_run(&name, action, &["confirm-ad-replication"]).await?;
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    let run = wait_for(&format!("run {name} refused"), Duration::from_secs(60), || async {
        let r = runs.get(&name).await?;
        Ok((r.status.as_ref().and_then(|st| st.phase) == Some(RunPhase::Failed)).then_some(r))
    })
    .await?;
    let st = run.status.unwrap_or_default();
    let why = st
        .conditions
        .iter()
        .map(|c| c.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    ensure!(
        st.start_time.is_none() && why.contains("VM dc01 is") && why.contains(fits),
        "run {name}: refused before anything started, naming what fits: {why}"
    );
    s.check_truth(true).await
}

/// The disaster-recovery cycle twice, with the commands an operator gets wrong on the way, on
/// a management cluster of its own: planned failover, commit, reprotect, failback, reprotect;
/// then an unplanned failover (the primary up), commit, reprotect, failback, reprotect. Status
/// matches the sites after every step, no VM ever runs at both sites, and nothing piles up:
/// after the second cycle replication writes in place into the VMs' disks at DR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cycles_and_the_commands_an_operator_gets_wrong() -> Result<()> {
    let mgmt = ControlPlane::start(coldsite_e2e::ControlPlaneOptions::new("cycles-mgmt")).await?;
    let (primary, recovery) = (ControlPlane::shared().await?, ControlPlane::shared_recovery().await?);
    let s = Scenario::set_up(
        &Topology {
            management: &mgmt,
            primary,
            recovery,
        },
        "cycles",
    )
    .await?;
    s.set_rpo("2m").await?;
    let mut ctl = lone_controller(&mgmt, &s, "")?;
    let plugin = Plugin::build(mgmt.kubeconfig_path().to_owned(), &s.ns).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_split_brain(&s, stop.clone());
    let result = async {
        s.wait_protected(Duration::from_secs(180)).await?;
        s.check_truth(true).await?;
        planned_over_a_stuck_app_sync(&s, &plugin, &mut ctl, &mgmt).await?;
        step(&s, &plugin, "commit", "c1-commit", true).await?;
        step(&s, &plugin, "reprotect", "c1-reprotect", true).await?;
        // The issue's sequence: a second reprotect, and a planned failover of VMs that already
        // run at DR, were accepted and tangled replication. Both are refused now.
        refused_everywhere(&s, &plugin, "reprotect", "Reprotect", "failback").await?;
        refused_everywhere(&s, &plugin, "planned", "PlannedFailover", "failback").await?;
        step(&s, &plugin, "failback", "c1-failback", true).await?;
        step(&s, &plugin, "reprotect", "c1-home", true).await?;
        failover_half_way_then_retried(&s, &plugin).await?;
        step(&s, &plugin, "commit", "c2-commit", true).await?;
        step(&s, &plugin, "reprotect", "c2-reprotect", true).await?;
        step(&s, &plugin, "failback", "c2-failback", true).await?;
        step(&s, &plugin, "reprotect", "c2-home", true).await?;
        nothing_piles_up(&s).await
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let watched = watcher.await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(40));
    }
    let _ = ctl.kill().await;
    result?;
    let samples = watched??;
    ensure!(samples > 100, "the split-brain watch sampled {samples} times");
    Ok(())
}

/// A planned failover that takes exch-mbx01 over in the middle of an app-consistent sync whose
/// destination absorbed its tag, so that its source retries against a destination that no
/// longer listens (the state VolSync reaches when a tag lands as the destination finishes an
/// older sync). The run no longer drives the app sync, so its final sync must: a clean-clone CI
/// run once hung here for 420 s. The state is made at the sites with the controller down, so
/// that the run claims the VM before an app sync could mend it; `ctl` is restarted.
async fn planned_over_a_stuck_app_sync(
    s: &Scenario,
    plugin: &Plugin,
    ctl: &mut ControllerProcess,
    mgmt: &ControlPlane,
) -> Result<()> {
    let name = "coldsite-exch-mbx01-data";
    let rs = replication_sources(&s.primary, &s.ns);
    let rd = replication_destinations(&s.recovery, &s.ns);
    // The first app-consistent sync (due at once) has ended: attempted, and no tags left.
    wait_for(
        "exch-mbx01's first app-consistent sync to end",
        Duration::from_secs(180),
        || async {
            let attempted = rd
                .get("coldsite-exch-mbx01-system")
                .await?
                .annotations()
                .contains_key("coldsite.io/app-consistent-attempt");
            let mut tagged = false;
            for disk in ["coldsite-exch-mbx01-system", name] {
                for o in [rs.get(disk).await?, rd.get(disk).await?] {
                    tagged |= o.data.pointer("/spec/trigger/manual").is_some_and(|t| !t.is_null());
                }
            }
            Ok((attempted && !tagged).then_some(()))
        },
    )
    .await?;
    // The plan's Ready stands still while the controller is down.
    plan_ready_is(s, true).await?;
    ctl.kill().await?;
    let tag = |api: &Api<DynamicObject>, value: &'static str| {
        let api = api.clone();
        async move {
            let patch = json!({"spec": {"trigger": {"manual": value}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await
        }
    };
    let field = |o: &DynamicObject, path: &str| o.data.pointer(path).and_then(Value::as_str).map(str::to_owned);
    // One app sync that completes at both ends: the destination now idles on its tag.
    tag(&rd, "app-stuck-1").await?;
    tag(&rs, "app-stuck-1").await?;
    wait_for("both ends to record app-stuck-1", Duration::from_secs(120), || async {
        let (a, b) = (rs.get(name).await?, rd.get(name).await?);
        let done = |o: &DynamicObject| field(o, "/status/lastManualSync").as_deref() == Some("app-stuck-1");
        Ok((done(&a) && done(&b) && field(&a, "/status/lastSyncStartTime").is_none()).then_some(()))
    })
    .await?;
    // The next app sync's source, whose destination's tag an older sync absorbed.
    tag(&rs, "app-stuck-2").await?;
    wait_for(
        "the source to retry against nobody",
        Duration::from_secs(60),
        || async { Ok(field(&rs.get(name).await?, "/status/lastSyncStartTime").map(|_| ())) },
    )
    .await?;
    begin_step(s, plugin, "planned", "c1-planned").await?;
    *ctl = lone_controller(mgmt, s, "-restarted")?;
    end_step(s, "planned", "c1-planned", true).await
}

/// An unplanned failover cancelled at the mailbox gate has moved dc01 and not the others; its
/// partial results for them are discarded on request, and a new failover takes dc01 over as
/// done (its copy at DR runs on, untouched) and moves the rest.
async fn failover_half_way_then_retried(s: &Scenario, plugin: &Plugin) -> Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    plan_ready_is(s, true).await?;
    start_run(plugin, "failover", "c2-failover", &[]).await?;
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    wait_for(
        "dc01 up at DR, the mailbox at its gate",
        Duration::from_secs(300),
        || async {
            let r = runs.get("c2-failover").await?;
            let gate = r.status.and_then(|st| st.waiting_for).as_deref() == Some("confirm-ad-replication");
            Ok((gate && vm_runs(&s.recovery, &s.ns, "dc01").await?).then_some(()))
        },
    )
    .await?;
    let dc01 = virtual_machine_instances(&s.recovery, &s.ns).get("dc01").await?.uid();
    runs.patch(
        "c2-failover",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await?;
    wait_for("the failover to end cancelled", Duration::from_secs(120), || async {
        Ok((run_phase(&runs, "c2-failover").await? == Some(RunPhase::Cancelled)).then_some(()))
    })
    .await?;
    let cancelled = runs.get("c2-failover").await?;
    s.settled(&cancelled).await?;
    let uid = cancelled.uid().context("run uid")?;
    let left_by_run = || async {
        let selector = format!("coldsite.io/run-uid={uid}");
        let disks = Api::<PersistentVolumeClaim>::namespaced(s.recovery.clone(), &s.ns)
            .list(&ListParams::default().labels(&selector))
            .await?;
        let copies = virtual_machines(&s.recovery, &s.ns)
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok::<_, anyhow::Error>(
            disks
                .items
                .iter()
                .map(|d| d.name_any())
                .chain(copies.items.iter().map(|c| format!("vm/{}", c.name_any())))
                .collect::<BTreeSet<_>>(),
        )
    };
    let partial = left_by_run().await?;
    ensure!(
        partial.iter().any(|n| n.starts_with("exch-")),
        "the cancelled failover left restored disks or copies for the mailbox and CAS at DR: {partial:?}"
    );
    for vm in ["exch-mbx01", "exch-cas01"] {
        ensure!(
            pvm_status(s, vm).await?.phase == Some(ProtectionPhase::Protected),
            "{vm} did not move"
        );
        s.check_vm_truth(vm, None).await?;
    }
    s.check_vm_truth("dc01", Some(true)).await?;
    plugin
        .ok_within(
            &["cleanup", "c2-failover", "--discard-partial"],
            Duration::from_secs(180),
        )
        .await?;
    // A discarded disk goes once replication no longer writes into it.
    let kept = wait_for("the partial results gone", Duration::from_secs(240), || async {
        let kept = left_by_run().await?;
        Ok(kept
            .iter()
            .all(|n| n == "vm/dc01" || n.starts_with("dc01-"))
            .then_some(kept))
    })
    .await?;
    ensure!(
        kept.contains("vm/dc01"),
        "dc01's copy, which the run moved, stays: {kept:?}"
    );
    wait_for(
        "the mailbox and CAS protected again",
        Duration::from_secs(300),
        || async {
            for vm in ["exch-mbx01", "exch-cas01"] {
                if !coldsite_api::common::is_condition_true(&pvm_status(s, vm).await?.conditions, "Ready") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    start_run(plugin, "failover", "c2-retry", &["--approve", "confirm-ad-replication"]).await?;
    s.run_to_end("c2-retry", Duration::from_secs(420)).await?;
    s.check_truth(true).await.context("after the retried failover")?;
    let taken_over = pvm_status(s, "dc01")
        .await?
        .last_run
        .context("dc01's part of the retry")?;
    ensure!(
        taken_over.run == "c2-retry"
            && taken_over.steps.iter().any(|x| x.kind == Some(StepKind::PowerOn)
                && x.message
                    .as_deref()
                    .is_some_and(|m| m.contains("done by run c2-failover"))),
        "the retry took dc01's power-on over from the cancelled run: {taken_over:?}"
    );
    ensure!(
        virtual_machine_instances(&s.recovery, &s.ns).get("dc01").await?.uid() == dc01,
        "dc01's instance at DR ran on through the retry"
    );
    Ok(())
}

/// After cycles, DR holds the VMs' copies (halted) on their own disks, which replication
/// writes in place: no VolSync destination volumes of a full resync, no leftover test copies.
async fn nothing_piles_up(s: &Scenario) -> Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let claims: Vec<String> = Api::<PersistentVolumeClaim>::namespaced(s.recovery.clone(), &s.ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let disks: BTreeSet<String> = VMS
        .iter()
        .flat_map(|vm| ["system", "data"].map(|d| format!("{vm}-{d}")))
        .collect();
    ensure!(
        claims
            .iter()
            .all(|c| disks.contains(c) || c.starts_with("volsync-") && c.ends_with("-src")),
        "DR holds only the VMs' disks: {claims:?}"
    );
    ensure!(
        virtual_machines(&s.recovery, &s.ns)
            .list(&ListParams::default())
            .await?
            .items
            .len()
            == VMS.len(),
        "one copy of each VM at DR"
    );
    let rd = replication_destinations(&s.recovery, &s.ns);
    for d in rd.list(&ListParams::default()).await?.items {
        let pvc = d.data["spec"]["rsyncTLS"]["destinationPVC"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            disks.contains(&pvc),
            "{} writes into {pvc:?}, not a VM's disk: a full resync",
            d.name_any()
        );
    }
    Ok(())
}

/// Issue 13: a VM's disks, and a consistency group's VMs, restore from one instant. HQ's
/// Site names a VolumeGroupSnapshotClass, so each VM's disks are cut together by a group
/// snapshot, and the plan's consistency group `mail` cuts the mailbox and client access
/// servers together (client access, first by name, drives its rounds). The mailbox's two
/// disks and the client access server's data disk are written in lockstep while they
/// replicate; a test failover to the newest point must find each disk at most one write
/// behind the one written before it, as after a crash at one instant. HQ's storage queues
/// single snapshots of the mailbox's data disk for 2 s, so disks cut one by one (as without
/// the class) are cut 2 s apart, and VMs cut on their own are cut at their own moments: both
/// fail this. With `appConsistentInterval`, app-consistent points come from group snapshots
/// cut with the guests frozen. Read from the disks and points at the sites.
/// How long DR's storage takes to cut a snapshot in `first_points_follow_the_storage`.
const CUT_TAKES: Duration = Duration::from_secs(20);

/// A VM's first point counts once DR's storage has cut its disks' snapshots, and the VM is
/// reported protected soon after. VolSync publishes a destination's image as soon as its
/// snapshot is bound; here the storage takes [`CUT_TAKES`] more to cut it, and no watch of
/// coldsite's announces when it has. A VM waiting for its first point otherwise looks every
/// two minutes: this test caught a 100-VM bench whose last VMs sat that long at "Enabling".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_point_counts_once_cut_and_is_reported_soon() -> Result<()> {
    let (s, mgmt) = shared_scenario("firstpoint").await?;
    // One sync in the test's window: its image is the only one the point can come from.
    s.set_rpo("1h").await?;
    s.simulator
        .update_faults(|f| f.site(&s.dr).slow_snapshots = Some(CUT_TAKES));
    let mut ctl = lone_controller(mgmt, &s, "")?;
    let result = first_points_follow_the_storage(&s).await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(40));
    }
    let _ = ctl.kill().await;
    result
}

/// Watches each VM until it reports a point: never before DR holds every disk's image cut,
/// and within 30 s of that (the storage's own delay is [`CUT_TAKES`]).
async fn first_points_follow_the_storage(s: &Scenario) -> Result<()> {
    let (mut cut, mut reported) = (BTreeMap::new(), BTreeMap::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while reported.len() < VMS.len() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "every VM protected within 240 s: cut {cut:?}, reported {reported:?}"
        );
        for vm in VMS {
            if reported.contains_key(vm) {
                continue;
            }
            // The status first: a point it reports must be cut by the time the images are read.
            let points = pvm_status(s, vm).await?.recovery_points.map_or(0, |p| p.count);
            let images_cut = images_cut(s, vm).await?;
            ensure!(
                points == 0 || images_cut,
                "{vm} reports {points} points before DR's storage has cut its disks' snapshots"
            );
            let now = tokio::time::Instant::now();
            if images_cut {
                cut.entry(vm).or_insert(now);
            }
            if points > 0 {
                reported.insert(vm, now);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for vm in VMS {
        let late = reported[vm] - cut[vm];
        ensure!(
            late <= Duration::from_secs(30),
            "{vm} was reported protected {late:?} after DR's storage had cut its first point"
        );
    }
    Ok(())
}

/// Whether each of the VM's destinations at DR has an image, and the storage has cut it.
async fn images_cut(s: &Scenario, vm: &str) -> Result<bool> {
    let selector = format!("coldsite.io/protected-vm={vm}");
    let rds = replication_destinations(&s.recovery, &s.ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let snapshots = volume_snapshots(&s.recovery, &s.ns);
    let mut cut = !rds.items.is_empty();
    for rd in &rds.items {
        let image = rd.data["status"]["latestImage"]["name"].as_str();
        cut &= match image {
            Some(name) => snapshots
                .get_opt(name)
                .await?
                .is_some_and(|v| v.data["status"]["readyToUse"] == true),
            None => false,
        };
    }
    Ok(cut)
}

#[tokio::test]
async fn two_disks_restore_from_one_instant() -> Result<()> {
    let (s, mgmt) = shared_scenario("groups").await?;
    s.set_replication(json!({"rpo": "2m", "appConsistentInterval": "1h"}))
        .await?;
    s.simulator.update_faults(|f| {
        f.site(&s.hq)
            .queued_snapshots
            .insert("exch-mbx01-data".into(), Duration::from_secs(2));
    });
    let class = json!({"spec": {"storage": {"volumeGroupSnapshotClassName": coldsite_e2e::site::DEFAULT_CLASS}}});
    Api::<Site>::all(s.management.clone())
        .patch(&s.hq, &PatchParams::default(), &Patch::Merge(&class))
        .await?;
    // Bad input first: a member the plan does not recover.
    set_consistency_group(&s, &["exch-mbx01", "exch-mbx02"]).await?;
    let mut ctl = lone_controller(mgmt, &s, "")?;
    let result = async {
        plan_invalid_at(
            &s,
            "spec.consistencyGroups[0].vms[1]: ProtectedVM exch-mbx02 is not in any of spec.groups",
        )
        .await?;
        set_consistency_group(&s, &["exch-mbx01", "exch-cas01"]).await?;
        s.wait_protected(Duration::from_secs(180)).await?;
        outside_its_namespaces_nothing_acts(&s).await?;
        // Each member says it is cut with the group, and by whom.
        for vm in ["exch-mbx01", "exch-cas01"] {
            wait_for(
                &format!("{vm} cut with its consistency group"),
                Duration::from_secs(60),
                || async {
                    let st = pvm_status(&s, vm).await?;
                    let cond = coldsite_api::common::find_condition(&st.conditions, "DisksConsistent");
                    Ok(cond
                        .is_some_and(|c| {
                            c.status == "True"
                                && c.reason == "GroupSnapshot"
                                && c.message
                                    .contains("consistency group: exch-cas01, exch-mbx01 (rounds driven by exch-cas01")
                        })
                        .then_some(()))
                },
            )
            .await?;
        }
        let claims = ["exch-mbx01-system", "exch-mbx01-data", "exch-cas01-data"];
        let (writes, cut_at) = lockstep_until_a_point(&s, "exch-mbx01", &claims).await?;
        s.create_run("groups-test", "TestFailover", &["confirm-ad-replication"])
            .await?;
        s.run_to_end("groups-test", Duration::from_secs(300)).await?;
        restored_from_one_instant(&s, &claims, &writes, cut_at).await?;
        for vm in ["exch-mbx01", "exch-cas01"] {
            app_consistent_group_points(&s, vm).await?;
        }
        nothing_left_of_the_cuts(&s).await?;
        // The consistency group's rounds are its driver's.
        a_round_resumes_after_a_restart(&s, &mut ctl, mgmt, "exch-cas01").await?;
        a_failed_cut_falls_back_to_per_disk_points(&s, "exch-cas01").await?;
        s.delete_test_run("groups-test", Duration::from_secs(120)).await?;
        // A planned failover's final sync copies the stopped disks themselves, not a cut.
        let plugin = Plugin::build(mgmt.kubeconfig_path().to_owned(), &s.ns).await?;
        let at_hq = s.write_vms(&s.hq).await?;
        step(&s, &plugin, "planned", "groups-move", true).await?;
        s.disks_hold(&s.dr, &at_hq, true)
            .await
            .context("no data loss on a planned failover of VMs cut as groups")
    }
    .await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(40));
    }
    let _ = ctl.kill().await;
    result
}

/// `--namespace`: a ProtectedVM in a namespace no running controller lists gets no status,
/// while those of the listed namespace were protected.
async fn outside_its_namespaces_nothing_acts(s: &Scenario) -> Result<()> {
    let elsewhere = format!("{}-unlisted", s.ns);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(s.management.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": elsewhere}}))?,
        )
        .await?;
    let spec = Api::<ProtectedVM>::namespaced(s.management.clone(), &s.ns)
        .get("dc01")
        .await?
        .spec;
    let unlisted: Api<ProtectedVM> = Api::namespaced(s.management.clone(), &elsewhere);
    unlisted
        .create(&PostParams::default(), &ProtectedVM::new("dc01", spec))
        .await?;
    // In-scope ProtectedVMs get their first status within a second or two.
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        unlisted.get("dc01").await?.status.is_none(),
        "a controller acted on a ProtectedVM in {elsewhere}, a namespace it does not list"
    );
    Ok(())
}

/// The plan's consistency group `mail` is `vms`.
async fn set_consistency_group(s: &Scenario, vms: &[&str]) -> Result<()> {
    let patch = json!({"spec": {"consistencyGroups": [{"name": "mail", "vms": vms}]}});
    Api::<RecoveryPlan>::namespaced(s.management.clone(), &s.ns)
        .patch("exchange", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the plan's Valid condition is False with a message holding `problem`.
async fn plan_invalid_at(s: &Scenario, problem: &str) -> Result<()> {
    let what = format!("the plan's Valid to name {problem:?}");
    plan_condition(s, &what, Duration::from_secs(60), |conds| {
        coldsite_api::common::find_condition(conds, "Valid")
            .is_some_and(|c| c.status == "False" && c.message.contains(problem))
    })
    .await
}

/// Writes `claims` at HQ one after the other, round after round, until `vm` has a point
/// newer than the first round: each round's write ids, and that point's time.
async fn lockstep_until_a_point(
    s: &Scenario,
    vm: &str,
    claims: &[&str],
) -> Result<(Vec<Vec<String>>, chrono::DateTime<chrono::Utc>)> {
    let started = chrono::Utc::now();
    let mut rounds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut round = Vec::new();
        for claim in claims {
            round.push(s.simulator.write_disk(&s.hq, &s.ns, claim).await?);
        }
        rounds.push(round);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if rounds.len() % 20 != 0 {
            continue;
        }
        let newest = pvm_status(s, vm)
            .await?
            .replication
            .and_then(|r| r.last_sync_time)
            .map(|t| coldsite_engine::time::from_k8s(&t));
        // A point a few seconds into the writes: cut while they went on.
        if let Some(t) = newest.filter(|t| *t > started + chrono::Duration::seconds(3)) {
            return Ok((rounds, t));
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{vm} has no point newer than {started} after {} rounds of writes",
            rounds.len()
        );
    }
}

/// The test copies at DR hold `claims` from one instant (each disk at most one write behind
/// the one written before it), and every disk of their VMs came from points of one group
/// snapshot at one time.
async fn restored_from_one_instant(
    s: &Scenario,
    claims: &[&str],
    writes: &[Vec<String>],
    cut_at: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let mut held = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        let image = s
            .simulator
            .read_disk(&s.dr, &s.test_ns, claim)
            .await?
            .with_context(|| format!("{claim} unbound in the test namespace"))?;
        let n = writes.iter().take_while(|w| image.contains(&w[i])).count();
        ensure!(
            writes[n..].iter().all(|w| !image.contains(&w[i])),
            "{claim} holds a prefix of its writes"
        );
        held.push(n);
    }
    ensure!(
        held[claims.len() - 1] > 0 && held[0] < writes.len(),
        "the point was cut while the writes went on: {held:?} of {} rounds",
        writes.len()
    );
    ensure!(
        held.windows(2).all(|w| w[0] >= w[1]) && held[0] - held[claims.len() - 1] <= 1,
        "{claims:?} are from different instants: they hold {held:?} writes"
    );
    let vms: BTreeSet<&str> = claims
        .iter()
        .filter_map(|c| c.rsplit_once('-').map(|(vm, _)| vm))
        .collect();
    // The restored claims name their points; all are one group snapshot's, at one time.
    let restored = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(s.recovery.clone(), &s.test_ns);
    let mut points = BTreeSet::new();
    for vm in &vms {
        for disk in ["system", "data"] {
            let c = restored.get(&format!("{vm}-{disk}")).await?;
            points.insert(
                c.annotations()
                    .get("coldsite.io/recovery-point")
                    .cloned()
                    .context("no point")?,
            );
        }
    }
    ensure!(points.len() == 1, "{vms:?} restored from points {points:?}");
    let point = points.pop_first().unwrap_or_default();
    ensure!(
        chrono::DateTime::parse_from_rfc3339(&point)? >= cut_at - chrono::Duration::seconds(1),
        "restored {point}, older than the point cut during the writes ({cut_at})"
    );
    let mut groups = BTreeSet::new();
    for vm in &vms {
        let snapshots = volume_snapshots(&s.recovery, &s.ns)
            .list(&ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}")))
            .await?;
        let at_point: Vec<_> = snapshots
            .items
            .iter()
            .filter(|p| p.annotations().get("coldsite.io/recovery-point") == Some(&point))
            .collect();
        ensure!(
            at_point.len() == 2,
            "{vm} has {} disk points at {point}",
            at_point.len()
        );
        groups.extend(
            at_point
                .iter()
                .map(|p| p.annotations().get("coldsite.io/group-snapshot").cloned()),
        );
        // The run's record of the VM says so too.
        let last = pvm_status(s, vm).await?.last_run.context("no record of the run")?;
        ensure!(
            last.recovery_point_one_instant,
            "the run's record of {vm} does not say its point is of one instant: {last:?}"
        );
    }
    ensure!(
        groups.len() == 1 && groups.iter().all(Option::is_some),
        "{vms:?}'s points at {point} come from group snapshots {groups:?}"
    );
    Ok(())
}

/// `vm`'s app-consistent points at DR are group snapshots' cuts, their images cut with the
/// guest frozen (as the storage shows), every disk from one round.
async fn app_consistent_group_points(s: &Scenario, vm: &str) -> Result<()> {
    let (app, _) = s.points_by_consistency(&s.dr, vm).await?;
    ensure!(app >= 2, "{vm} has {app} app-consistent disk points at DR");
    let snapshots = volume_snapshots(&s.recovery, &s.ns)
        .list(&ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}")))
        .await?;
    let mut by_group: BTreeMap<String, usize> = BTreeMap::new();
    for p in &snapshots.items {
        let a = p.annotations();
        if a.get("coldsite.io/app-consistent").map(String::as_str) == Some("true") {
            let group = a.get("coldsite.io/group-snapshot").cloned().unwrap_or_default();
            *by_group.entry(group).or_default() += 1;
        }
    }
    ensure!(
        !by_group.contains_key("") && by_group.values().all(|n| *n == 2),
        "{vm}'s app-consistent points by group snapshot: {by_group:?}"
    );
    let st = pvm_status(s, vm).await?;
    let cond = coldsite_api::common::find_condition(&st.conditions, "AppConsistent");
    ensure!(cond.is_some_and(|c| c.status == "True"), "AppConsistent: {cond:?}");
    // The status says what the storage shows: every point listed is one instant's.
    let listed = st.recovery_points.map(|p| p.points).unwrap_or_default();
    ensure!(
        !listed.is_empty() && listed.iter().all(|p| p.one_instant),
        "{vm}'s points as its status lists them: {listed:?}"
    );
    Ok(())
}

/// The controller dies in the middle of `vm`'s round; restarted, it finishes the round from
/// what the sites hold: a new point of one instant, and nothing left of the cut.
async fn a_round_resumes_after_a_restart(
    s: &Scenario,
    ctl: &mut ControllerProcess,
    cp: &ControlPlane,
    vm: &str,
) -> Result<()> {
    let rds = replication_destinations(&s.recovery, &s.ns);
    let mine = ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}"));
    let round = || async {
        let list = rds.list(&mine).await?;
        Ok::<_, anyhow::Error>(
            list.items
                .iter()
                .find_map(|rd| rd.annotations().get("coldsite.io/group-round").cloned()),
        )
    };
    let begun = wait_for("a round under way", Duration::from_secs(150), || async {
        round().await
    })
    .await?;
    ctl.kill().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    *ctl = lone_controller(cp, s, "-restarted")?;
    let begun_at = chrono::DateTime::parse_from_rfc3339(&begun)?;
    wait_for(
        "the round finished after the restart",
        Duration::from_secs(150),
        || async {
            let newest = pvm_status(s, vm)
                .await?
                .recovery_points
                .and_then(|p| p.points.first().cloned());
            let done = round().await?.as_deref() != Some(begun.as_str())
                && newest.is_some_and(|p| p.one_instant && coldsite_engine::time::from_k8s(&p.time) >= begun_at);
            Ok(done.then_some(()))
        },
    )
    .await?;
    nothing_left_of_the_cuts(s).await
}

/// Bad input: HQ's Site names a group snapshot class HQ lacks. The round's group snapshot
/// never becomes ready, so after 2 minutes the round copies each disk on its own: `vm` still
/// gets a point, its disks' points at DR are not a group snapshot's, and `DisksConsistent`
/// and a Warning Event say so. Then the class is named right again.
async fn a_failed_cut_falls_back_to_per_disk_points(s: &Scenario, vm: &str) -> Result<()> {
    let sites = Api::<Site>::all(s.management.clone());
    let class = |name: &str| json!({"spec": {"storage": {"volumeGroupSnapshotClassName": name}}});
    sites
        .patch(&s.hq, &PatchParams::default(), &Patch::Merge(&class("no-such-class")))
        .await?;
    let since = chrono::Utc::now();
    let (cond, newest) = wait_for(
        "a per-disk point after the failed cut",
        Duration::from_secs(330),
        || async {
            let st = pvm_status(s, vm).await?;
            let cond = coldsite_api::common::find_condition(&st.conditions, "DisksConsistent").cloned();
            let newest = st.recovery_points.and_then(|p| p.points.first().cloned());
            let fell_back = newest
                .as_ref()
                .is_some_and(|p| !p.one_instant && coldsite_engine::time::from_k8s(&p.time) > since);
            Ok(fell_back.then_some((cond, newest)))
        },
    )
    .await?;
    ensure!(
        cond.as_ref()
            .is_some_and(|c| c.status == "False" && ["CutFailed", "PerDiskPoint"].contains(&c.reason.as_str())),
        "DisksConsistent after the failed cut: {cond:?}"
    );
    let snapshots = volume_snapshots(&s.recovery, &s.ns)
        .list(&ListParams::default().labels(&format!("coldsite.io/protected-vm={vm}")))
        .await?;
    let after: Vec<_> = snapshots
        .items
        .iter()
        .filter(|p| {
            p.annotations()
                .get("coldsite.io/recovery-point")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > since)
        })
        .collect();
    ensure!(
        after.len() >= 2
            && after
                .iter()
                .all(|p| !p.annotations().contains_key("coldsite.io/group-snapshot")),
        "{vm}'s points at DR after {since} (newest listed {newest:?}): {} snapshots, group snapshots {:?}",
        after.len(),
        after
            .iter()
            .map(|p| p.annotations().get("coldsite.io/group-snapshot"))
            .collect::<Vec<_>>()
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.management.clone(), &s.ns)
        .list(&ListParams::default())
        .await?;
    let warned = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("GroupSnapshotFailed")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(vm)
            && e.note.as_deref().is_some_and(|n| n.contains("cut one by one"))
    });
    ensure!(warned, "no GroupSnapshotFailed Event for {vm}");
    sites
        .patch(
            &s.hq,
            &PatchParams::default(),
            &Patch::Merge(&class(coldsite_e2e::site::DEFAULT_CLASS)),
        )
        .await?;
    Ok(())
}

/// Between rounds HQ keeps no group snapshot and no cut claim.
async fn nothing_left_of_the_cuts(s: &Scenario) -> Result<()> {
    let groups = dynamic(
        &s.primary,
        &s.ns,
        "groupsnapshot.storage.k8s.io",
        "v1beta2",
        "VolumeGroupSnapshot",
        "volumegroupsnapshots",
    );
    let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(s.primary.clone(), &s.ns);
    let cuts = ListParams::default().labels("coldsite.io/cut-of");
    wait_for(
        "HQ between rounds: no group snapshot, no cut claim",
        Duration::from_secs(90),
        || async {
            let left = groups.list(&ListParams::default()).await?.items.len() + claims.list(&cuts).await?.items.len();
            Ok((left == 0).then_some(()))
        },
    )
    .await
}
