//! The site simulator against real sites: the shared primary and recovery control planes,
//! each running the real VolSync controller and snapshot-controller over upstream's CRDs
//! (`ControlPlane::ensure_site`). Each test runs its own simulator over its own namespaces.

use std::future::Future;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_e2e::simulator::resources::{
    REPLICATION_DESTINATION, REPLICATION_SOURCE, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, VOLUME_GROUP_SNAPSHOT,
    VOLUME_GROUP_SNAPSHOT_CONTENT, VOLUME_SNAPSHOT,
};
use coldsite_e2e::simulator::{EXIT_CODE_ENV, Kind, NODE_NAME, SimConfig, Simulator, SimulatorHandle};
use coldsite_e2e::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// A sync through VolSync: snapshots, a restored PVC, two mover Jobs, a snapshot.
const SYNC_WAIT: Duration = Duration::from_secs(120);

/// Polls `probe` every 200 ms until it yields a value, for at most `timeout`.
async fn within<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        let last_error = match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if started.elapsed() > timeout {
            let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn eventually<T, F, Fut>(what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    within(WAIT, what, probe).await
}

/// Simulator logs go to the test's output (shown for failed tests, or with
/// `--nocapture`); `RUST_LOG` overrides the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("coldsite_e2e=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Test settings: short delays.
fn config() -> SimConfig {
    init_logging();
    SimConfig {
        boot_delay: Duration::from_millis(500),
        job_duration: Duration::from_millis(500),
        sync_duration: Duration::from_millis(300),
        mover_retry_window: Duration::from_secs(5),
        ..SimConfig::default()
    }
}

/// Both shared sites, a namespace at each, and a simulator over those namespaces.
struct Sites {
    primary: Client,
    recovery: Client,
    primary_ns: String,
    recovery_ns: String,
    sim: SimulatorHandle,
}

async fn sites_with(prefix: &str, config: SimConfig) -> Result<Sites> {
    let (p, r) = tokio::try_join!(ControlPlane::shared(), ControlPlane::shared_recovery())?;
    tokio::try_join!(p.ensure_site(), r.ensure_site())?;
    let primary_ns = p.create_namespace(prefix).await?;
    let recovery_ns = r.create_namespace(&format!("{prefix}-dr")).await?;
    let sim = Simulator::start(
        vec![p.sim_site("primary").await?, r.sim_site("recovery").await?],
        config.with_namespaces([primary_ns.clone(), recovery_ns.clone()]),
    );
    Ok(Sites {
        primary: p.client().await?,
        recovery: r.client().await?,
        primary_ns,
        recovery_ns,
        sim,
    })
}

async fn sites(prefix: &str) -> Result<Sites> {
    sites_with(prefix, config()).await
}

async fn create(api: &Api<DynamicObject>, kind: Kind, object: Value) -> Result<DynamicObject> {
    let mut object = object;
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    let object: DynamicObject = serde_json::from_value(object)?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {}", kind.kind))
}

async fn merge(api: &Api<DynamicObject>, name: &str, patch: Value) -> Result<DynamicObject> {
    Ok(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?)
}

fn at<'a>(object: &'a DynamicObject, pointer: &str) -> Option<&'a Value> {
    object.data.pointer(pointer)
}

fn text<'a>(object: &'a DynamicObject, pointer: &str) -> Option<&'a str> {
    at(object, pointer).and_then(Value::as_str)
}

fn condition<'a>(object: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    at(object, "/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn vm(name: &str, run_strategy: &str, network_data: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": {
                    "domain": {"devices": {"interfaces": [
                        {"name": "corp", "bridge": {}, "macAddress": "02:c0:00:01:00:10"},
                        {"name": "backup", "bridge": {}},
                    ]}},
                    "networks": [
                        {"name": "corp", "multus": {"networkName": "corp-lan"}},
                        {"name": "backup", "multus": {"networkName": "backup-lan"}},
                    ],
                    "volumes": [
                        {"name": "system", "persistentVolumeClaim": {"claimName": format!("{name}-system")}},
                        {"name": "cloudinit", "cloudInitNoCloud": {"networkData": network_data}},
                    ],
                },
            },
        },
    })
}

const NETWORK_DATA: &str = r#"version: 2
ethernets:
  lan0:
    match:
      macaddress: "02:C0:00:01:00:10"
    set-name: lan0
    addresses:
      - 10.0.1.10/24
      - fd00:c0:1::10/64
    routes:
      - to: default
        via: 10.0.1.1
  backup:
    addresses: [192.168.50.7/24]
"#;

fn pvc(name: &str, size: &str, mode: &str, source: Option<Value>) -> Result<PersistentVolumeClaim> {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": mode,
        "resources": {"requests": {"storage": size}},
    });
    if let Some(source) = source {
        spec["dataSource"] = source;
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

/// Creates a claim of the sites' default class and waits until it is Bound.
/// A bound 1 GiB `<name>-system` claim at the primary site for each VM named.
async fn system_disks(s: &Sites, names: &[&str]) -> Result<()> {
    for name in names {
        let claim = pvc(&format!("{name}-system"), "1Gi", "Filesystem", None)?;
        bound_claim(&s.primary, &s.primary_ns, claim).await?;
    }
    Ok(())
}

async fn bound_claim(client: &Client, ns: &str, claim: PersistentVolumeClaim) -> Result<PersistentVolumeClaim> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let name = claim.metadata.name.clone().unwrap_or_default();
    pvcs.create(&PostParams::default(), &claim).await?;
    within(SYNC_WAIT, &format!("PVC {name} Bound"), || async {
        let pvc = pvcs.get(&name).await?;
        Ok((pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).then_some(pvc))
    })
    .await
}

#[tokio::test]
async fn a_running_vm_gets_a_launcher_pod_and_a_vmi_with_ips_and_halted_removes_them() -> Result<()> {
    let s = sites("sim-vm").await?;
    let ns = s.primary_ns.clone();
    let disk = bound_claim(&s.primary, &ns, pvc("dc01-system", "1Gi", "Filesystem", None)?).await?;
    // The simulated CSI provisioner made the PV; the real PV binder bound it.
    let pv: Api<PersistentVolume> = Api::all(s.primary.clone());
    let volume = pv
        .get(
            disk.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .context("no volume")?,
        )
        .await?;
    let csi = volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .context("not a CSI PV")?;
    assert_eq!(csi.driver, coldsite_e2e::simulator::csi::DRIVER);

    let vms = VIRTUAL_MACHINE.namespaced(s.primary.clone(), &ns);
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(s.primary.clone(), &ns);
    let created = create(&vms, VIRTUAL_MACHINE, vm("dc01", "Always", NETWORK_DATA)).await?;
    let vmi = eventually("a Running VMI with guest IPs", || async {
        let vmi = vmis.get_opt("dc01").await?;
        Ok(vmi.filter(|v| {
            text(v, "/status/phase") == Some("Running") && at(v, "/status/interfaces/0/ipAddress").is_some()
        }))
    })
    .await?;
    let owner = vmi
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .context("VMI without owner")?;
    assert_eq!(owner.kind, "VirtualMachine");
    assert_eq!(Some(owner.uid.as_str()), created.metadata.uid.as_deref());
    let interfaces = at(&vmi, "/status/interfaces").context("no interfaces")?;
    assert_eq!(interfaces[0]["name"], "corp");
    assert_eq!(interfaces[0]["interfaceName"], "lan0");
    assert_eq!(interfaces[0]["mac"], "02:c0:00:01:00:10");
    assert_eq!(interfaces[0]["ipAddresses"], json!(["10.0.1.10", "fd00:c0:1::10"]));
    assert_eq!(interfaces[1]["ipAddress"], "192.168.50.7");
    assert_eq!(condition(&vmi, "AgentConnected").context("agent")?["status"], "True");
    assert_eq!(text(&vmi, "/status/nodeName"), Some(NODE_NAME));

    // The guest runs in a virt-launcher pod on the node, which mounts its disk.
    let pods: Api<Pod> = Api::namespaced(s.primary.clone(), &ns);
    let launchers = pods
        .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
        .await?;
    let launcher = launchers.items.first().context("no virt-launcher pod")?;
    assert_eq!(
        launcher.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(NODE_NAME)
    );
    assert_eq!(
        launcher.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let claims: Vec<&str> = launcher
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
        .collect();
    assert_eq!(claims, vec!["dc01-system"]);

    // A guest write lands on the disk.
    let write = s.sim.guest_write("primary", &ns, "dc01").await?;
    let data = s
        .sim
        .read_disk("primary", &ns, "dc01-system")
        .await?
        .context("unbound")?;
    assert!(data.contains(&write), "{data:?}");

    let vm = eventually("the VM reported ready", || async {
        let vm = vms.get("dc01").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(vm))
    })
    .await?;
    assert_eq!(text(&vm, "/status/printableStatus"), Some("Running"));

    // Nothing changes, so nothing is written.
    let versions = |a: &DynamicObject, b: &DynamicObject| {
        (a.metadata.resource_version.clone(), b.metadata.resource_version.clone())
    };
    let before = versions(&vms.get("dc01").await?, &vmis.get("dc01").await?);
    s.sim.wait_passes(3, WAIT).await?;
    let after = versions(&vms.get("dc01").await?, &vmis.get("dc01").await?);
    assert_eq!(before, after, "an idle simulator wrote to the VM or VMI");

    merge(&vms, "dc01", json!({"spec": {"runStrategy": "Halted"}})).await?;
    eventually("the VMI deleted and the VM Stopped", || async {
        let gone = vmis.get_opt("dc01").await?.is_none();
        let vm = vms.get("dc01").await?;
        Ok((gone && text(&vm, "/status/printableStatus") == Some("Stopped")).then_some(()))
    })
    .await?;
    let write = s.sim.guest_write("primary", &ns, "dc01").await;
    ensure!(write.is_err(), "a stopped VM's guest wrote: {write:?}");
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn boot_failure_keeps_a_vm_not_ready_and_no_agent_hides_guest_ips() -> Result<()> {
    let s = sites("sim-faults").await?;
    let ns = s.primary_ns.clone();
    system_disks(&s, &["broken", "quiet"]).await?;
    s.sim.update_faults(|f| {
        f.site("primary").boot_failure.insert("broken".into());
        f.all_sites.no_agent.insert(format!("{ns}/quiet"));
    });
    let vms = VIRTUAL_MACHINE.namespaced(s.primary.clone(), &ns);
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(s.primary.clone(), &ns);
    create(&vms, VIRTUAL_MACHINE, vm("broken", "Always", NETWORK_DATA)).await?;
    create(&vms, VIRTUAL_MACHINE, vm("quiet", "Always", NETWORK_DATA)).await?;

    let quiet = eventually("VMI quiet Running", || async {
        let vmi = vmis.get_opt("quiet").await?;
        Ok(vmi.filter(|v| text(v, "/status/phase") == Some("Running")))
    })
    .await?;
    assert!(condition(&quiet, "AgentConnected").is_none());
    let nic = at(&quiet, "/status/interfaces/0").context("no interface")?;
    assert_eq!(nic["mac"], "02:c0:00:01:00:10");
    assert!(nic.get("ipAddress").is_none() && nic.get("interfaceName").is_none());

    s.sim.wait_passes(3, WAIT).await?;
    let broken = vms.get("broken").await?;
    assert_eq!(at(&broken, "/status/ready"), Some(&json!(false)));
    assert_eq!(text(&broken, "/status/printableStatus"), Some("ErrorUnschedulable"));

    s.sim.update_faults(|f| {
        f.site("primary").boot_failure.clear();
    });
    eventually("the repaired VM ready", || async {
        let vm = vms.get("broken").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(()))
    })
    .await?;
    s.sim.stop().await;
    Ok(())
}

/// The admission rules of virt-api, enforced by the real API server.
#[tokio::test]
async fn virt_api_rules_refuse_what_kubevirt_refuses() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    cp.ensure_site().await?;
    let ns = cp.create_namespace("sim-admission").await?;
    let vms = VIRTUAL_MACHINE.namespaced(cp.client().await?, &ns);
    let refused = |r: Result<DynamicObject>| match r {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("{e:#}"),
    };

    let mut both = vm("both", "Always", NETWORK_DATA);
    both["spec"]["running"] = json!(true);
    let why = refused(create(&vms, VIRTUAL_MACHINE, both).await);
    ensure!(why.contains("Running and RunStrategy are mutually exclusive"), "{why}");

    let why = refused(create(&vms, VIRTUAL_MACHINE, vm("typo", "always", NETWORK_DATA)).await);
    ensure!(why.contains("Invalid RunStrategy (always)"), "{why}");

    let mut orphan = vm("orphan", "Halted", NETWORK_DATA);
    orphan["spec"]["template"]["spec"]["networks"] = json!([{"name": "corp", "multus": {"networkName": "corp-lan"}}]);
    let why = refused(create(&vms, VIRTUAL_MACHINE, orphan).await);
    ensure!(why.contains("interfaces name 'backup' not found"), "{why}");

    let long = format!("version: 2\n# {}\n", "x".repeat(2100));
    let why = refused(create(&vms, VIRTUAL_MACHINE, vm("long", "Halted", &long)).await);
    ensure!(why.contains("networkdata exceeds 2048 byte limit"), "{why}");

    // A VM on the deprecated spec.running is accepted, and so is the patch coldsite makes to
    // power it: runStrategy with running removed. Setting runStrategy alone is refused.
    let mut legacy = vm("legacy", "Halted", NETWORK_DATA);
    legacy["spec"]["running"] = json!(false);
    legacy["spec"].as_object_mut().context("spec")?.remove("runStrategy");
    create(&vms, VIRTUAL_MACHINE, legacy).await?;
    let why = refused(merge(&vms, "legacy", json!({"spec": {"runStrategy": "Always"}})).await);
    ensure!(why.contains("mutually exclusive"), "{why}");
    merge(
        &vms,
        "legacy",
        json!({"spec": {"running": null, "runStrategy": "Always"}}),
    )
    .await?;
    Ok(())
}

/// A ReplicationDestination at the recovery site; returns its address and key Secret.
async fn destination(s: &Sites, name: &str, rsync: Value) -> Result<(String, String)> {
    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    let mut spec = json!({"copyMethod": "Snapshot", "capacity": "2Gi", "accessModes": ["ReadWriteOnce"]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), rsync.as_object()) {
        spec.extend(extra.clone());
    }
    create(
        &rds,
        REPLICATION_DESTINATION,
        json!({"metadata": {"name": name}, "spec": {"trigger": {"manual": "listen"}, "rsyncTLS": spec}}),
    )
    .await?;
    let rd = within(SYNC_WAIT, "the destination's address and key", || async {
        let rd = rds.get(name).await?;
        Ok(
            (text(&rd, "/status/rsyncTLS/address").is_some() && text(&rd, "/status/rsyncTLS/keySecret").is_some())
                .then_some(rd),
        )
    })
    .await?;
    let address = text(&rd, "/status/rsyncTLS/address").unwrap_or_default().to_owned();
    let key = text(&rd, "/status/rsyncTLS/keySecret").unwrap_or_default().to_owned();
    Ok((address, key))
}

/// Copies the destination's key to the primary site, as coldsite gives both ends one key.
async fn share_key(s: &Sites, key: &str, tamper: bool) -> Result<()> {
    let secret = Api::<Secret>::namespaced(s.recovery.clone(), &s.recovery_ns)
        .get(key)
        .await?;
    let mut data = secret.data.unwrap_or_default();
    if tamper {
        data.insert("psk.txt".into(), k8s_openapi::ByteString(b"volsync:0000".to_vec()));
    }
    let copy: Secret = serde_json::from_value(json!({"metadata": {"name": key}, "data": data}))?;
    Api::<Secret>::namespaced(s.primary.clone(), &s.primary_ns)
        .create(&PostParams::default(), &copy)
        .await?;
    Ok(())
}

/// A ReplicationSource at the primary site sending claim `disk` to `address`.
async fn source(s: &Sites, name: &str, disk: &str, address: &str, key: &str, tag: &str) -> Result<()> {
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    create(
        &rss,
        REPLICATION_SOURCE,
        json!({"metadata": {"name": name}, "spec": {
            "sourcePVC": disk,
            "trigger": {"manual": tag},
            "rsyncTLS": {"address": address, "keySecret": key, "copyMethod": "Snapshot"},
        }}),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn volsync_replicates_a_block_disk_through_the_load_balancer_and_a_restore_holds_its_data() -> Result<()> {
    let s = sites("sim-sync").await?;
    // Snapshots at the recovery site are bound well before they are ready.
    s.sim
        .update_faults(|f| f.site("recovery").slow_snapshots = Some(Duration::from_secs(4)));
    bound_claim(&s.primary, &s.primary_ns, pvc("db", "2Gi", "Block", None)?).await?;
    let first = s.sim.write_disk("primary", &s.primary_ns, "db").await?;
    let second = s.sim.write_disk("primary", &s.primary_ns, "db").await?;

    let (address, key) = destination(&s, "db", json!({"serviceType": "LoadBalancer", "volumeMode": "Block"})).await?;
    let service = Api::<Service>::namespaced(s.recovery.clone(), &s.recovery_ns)
        .get("volsync-rsync-tls-dst-db")
        .await?;
    let pool = ControlPlane::shared_recovery().await?.network().lb_pool;
    ensure!(
        pool.contains(&address.parse::<std::net::Ipv4Addr>()?),
        "address {address} is not from the recovery site's pool {pool}"
    );
    ensure!(service.spec.and_then(|s| s.type_).as_deref() == Some("LoadBalancer"));
    share_key(&s, &key, false).await?;
    source(&s, "db", "db", &address, &key, "once").await?;

    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    within(SYNC_WAIT, "the source's manual sync", || async {
        let rs = rss.get("db").await?;
        Ok((text(&rs, "/status/lastManualSync") == Some("once")).then_some(()))
    })
    .await?;
    let snapshots = VOLUME_SNAPSHOT.namespaced(s.recovery.clone(), &s.recovery_ns);
    let (image, seen_unready) = within(SYNC_WAIT, "the destination's image", || async {
        let rd = rds.get("db").await?;
        let Some(image) = text(&rd, "/status/latestImage/name").map(str::to_owned) else {
            return Ok(None);
        };
        let snapshot = snapshots.get(&image).await?;
        Ok(Some((image, at(&snapshot, "/status/readyToUse") != Some(&json!(true)))))
    })
    .await?;
    ensure!(
        seen_unready,
        "VolSync published image {image} only once ready: the delay was not simulated"
    );
    within(SYNC_WAIT, "the image ready to use", || async {
        let snapshot = snapshots.get(&image).await?;
        Ok((at(&snapshot, "/status/readyToUse") == Some(&json!(true))).then_some(()))
    })
    .await?;
    let dest = Api::<PersistentVolumeClaim>::namespaced(s.recovery.clone(), &s.recovery_ns)
        .get("volsync-db-dst")
        .await?;
    ensure!(dest.spec.and_then(|s| s.volume_mode).as_deref() == Some("Block"));

    // A restore from the image holds what the source held.
    let from_image = json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": image});
    bound_claim(
        &s.recovery,
        &s.recovery_ns,
        pvc("restored", "2Gi", "Block", Some(from_image.clone()))?,
    )
    .await?;
    let data = s
        .sim
        .read_disk("recovery", &s.recovery_ns, "restored")
        .await?
        .context("unbound")?;
    ensure!(data.writes == vec![first, second], "restored data: {data:?}");
    // The provisioner refuses to turn a block snapshot into a filesystem.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(s.recovery.clone(), &s.recovery_ns);
    pvcs.create(
        &PostParams::default(),
        &pvc("as-fs", "2Gi", "Filesystem", Some(from_image))?,
    )
    .await?;
    s.sim.wait_passes(5, WAIT).await?;
    let as_fs = pvcs.get("as-fs").await?;
    ensure!(as_fs.status.and_then(|s| s.phase).as_deref() == Some("Pending"));
    s.sim.stop().await;
    Ok(())
}

/// The source's mover status once VolSync gave up on a Job.
async fn mover_failed(s: &Sites, name: &str) -> Result<()> {
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    within(SYNC_WAIT, "the source's mover to fail", || async {
        let rs = rss.get(name).await?;
        ensure!(
            text(&rs, "/status/lastManualSync").is_none(),
            "the sync completed: {:?}",
            rs.data["status"]
        );
        Ok((text(&rs, "/status/latestMoverStatus/result") == Some("Failed")).then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_cluster_ip_is_out_of_reach_of_another_site_and_a_wrong_key_never_connects() -> Result<()> {
    let s = sites("sim-reach").await?;
    bound_claim(&s.primary, &s.primary_ns, pvc("a", "1Gi", "Filesystem", None)?).await?;
    let (address, key) = destination(&s, "clusterip", json!({"serviceType": "ClusterIP"})).await?;
    share_key(&s, &key, false).await?;
    source(&s, "clusterip", "a", &address, &key, "once").await?;
    mover_failed(&s, "clusterip").await?;

    let (address, key) = destination(&s, "wrongkey", json!({"serviceType": "LoadBalancer"})).await?;
    share_key(&s, &key, true).await?;
    source(&s, "wrongkey", "a", &address, &key, "once").await?;
    mover_failed(&s, "wrongkey").await?;
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn sites_sharing_a_network_reach_each_others_cluster_ips() -> Result<()> {
    let shared = SimConfig {
        shared_network: true,
        ..config()
    };
    let s = sites_with("sim-shared", shared).await?;
    bound_claim(&s.primary, &s.primary_ns, pvc("a", "1Gi", "Filesystem", None)?).await?;
    let write = s.sim.write_disk("primary", &s.primary_ns, "a").await?;
    let (address, key) = destination(&s, "a", json!({"serviceType": "ClusterIP"})).await?;
    share_key(&s, &key, false).await?;
    source(&s, "a", "a", &address, &key, "once").await?;
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    within(SYNC_WAIT, "the sync over the shared network", || async {
        let rs = rss.get("a").await?;
        Ok((text(&rs, "/status/lastManualSync") == Some("once")).then_some(()))
    })
    .await?;
    let data = within(SYNC_WAIT, "the destination's data", || async {
        s.sim.read_disk("recovery", &s.recovery_ns, "volsync-a-dst").await
    })
    .await?;
    ensure!(data.contains(&write), "{data:?}");
    s.sim.stop().await;
    Ok(())
}

fn job(name: &str, exit_code: Option<i32>) -> Result<Job> {
    let mut container = json!({"name": "script", "image": "registry.invalid/script:1", "command": ["/bin/true"]});
    if let Some(code) = exit_code {
        container["env"] = json!([{"name": EXIT_CODE_ENV, "value": code.to_string()}]);
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }))?)
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[tokio::test]
async fn job_pods_run_on_the_simulated_node_and_their_exit_code_decides_the_job() -> Result<()> {
    let s = sites("sim-jobs").await?;
    let jobs: Api<Job> = Api::namespaced(s.primary.clone(), &s.primary_ns);
    jobs.create(&PostParams::default(), &job("ok", None)?).await?;
    jobs.create(&PostParams::default(), &job("fails", Some(3))?).await?;
    eventually("job ok Complete", || async {
        let job = jobs.get("ok").await?;
        Ok(job_condition(&job, "Complete").then_some(()))
    })
    .await?;
    eventually("job fails Failed", || async {
        let job = jobs.get("fails").await?;
        Ok(job_condition(&job, "Failed").then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(s.primary.clone(), &s.primary_ns);
    let failed = pods.list(&ListParams::default().labels("job-name=fails")).await?;
    let pod = failed.items.first().context("the failed pod is gone")?;
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(NODE_NAME));
    let exit = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(exit, Some(3));
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_simulator_survives_a_site_outage() -> Result<()> {
    let primary = ControlPlane::shared().await?;
    primary.ensure_site().await?;
    let doomed = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        ..ControlPlaneOptions::new("sim-outage")
    })
    .await?;
    let ns = primary.create_namespace("sim-outage").await?;
    let doomed_ns = doomed.create_namespace("sim-outage").await?;
    let sim = Simulator::start(
        vec![primary.sim_site("primary").await?, doomed.sim_site("doomed").await?],
        config().with_namespaces([ns.clone(), doomed_ns]),
    );
    sim.wait_passes(2, WAIT).await?;
    doomed.stop();
    // Passes over the dead site keep failing and retrying; the live site is served.
    sim.wait_passes(3, WAIT).await?;
    let client = primary.client().await?;
    bound_claim(&client, &ns, pvc("survivor-system", "1Gi", "Filesystem", None)?).await?;
    let vms = VIRTUAL_MACHINE.namespaced(client, &ns);
    create(&vms, VIRTUAL_MACHINE, vm("survivor", "Always", NETWORK_DATA)).await?;
    eventually("the VM at the live site ready", || async {
        let vm = vms.get("survivor").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(()))
    })
    .await?;
    sim.stop().await;
    Ok(())
}

/// Kills the simulator process when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On a bare control plane, `--install` brings upstream's CRDs, VolSync and the
/// snapshot-controller, and the simulator plays the rest.
#[tokio::test]
async fn the_binary_installs_and_plays_a_site_from_its_kubeconfig() -> Result<()> {
    init_logging();
    let cp = ControlPlane::start(ControlPlaneOptions::new("sim-binary")).await?;
    let ns = cp.create_namespace("sim-binary").await?;
    let _simulator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_coldsite-site-simulator"))
            .arg("--site")
            .arg(format!("bare={}", cp.kubeconfig_path().display()))
            .args(["--install", "--namespace", &ns, "--boot-delay-ms", "300"])
            .arg("--log-dir")
            .arg(cp.dir())
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting coldsite-site-simulator")?,
    );
    let client = cp.client().await?;
    let vms = VIRTUAL_MACHINE.namespaced(client.clone(), &ns);
    // The binary installs the CRDs; until then creating a VM fails.
    within(SYNC_WAIT, "the VM created", || async {
        Ok(create(&vms, VIRTUAL_MACHINE, vm("cli", "Always", NETWORK_DATA))
            .await
            .ok())
    })
    .await?;
    bound_claim(&client, &ns, pvc("cli-system", "1Gi", "Filesystem", None)?).await?;
    within(SYNC_WAIT, "the VM ready", || async {
        let vm = vms.get("cli").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(()))
    })
    .await?;
    let log = std::fs::read_to_string(cp.dir().join("bare-volsync.log")).context("VolSync's log")?;
    ensure!(log.contains("Registered Movers"), "VolSync did not start: {log}");
    Ok(())
}

/// A PUT to a subresource of `subresources.kubevirt.io/v1`, through the site's API server:
/// the status code and body.
async fn virt_api_put(client: &Client, ns: &str, vmi: &str, sub: &str, body: Value) -> Result<(u16, String)> {
    let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{sub}");
    let request = http::Request::put(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body)?)?;
    match client.request_text(request).await {
        Ok(text) => Ok((200, text)),
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        Err(e) => Err(e.into()),
    }
}

/// A snapshot of a claim, once ready: the data it holds.
async fn snapshot_data(s: &Sites, name: &str, claim: &str) -> Result<coldsite_e2e::simulator::DiskData> {
    let snapshots = VOLUME_SNAPSHOT.namespaced(s.primary.clone(), &s.primary_ns);
    create(
        &snapshots,
        VOLUME_SNAPSHOT,
        json!({"metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": claim}}}),
    )
    .await?;
    within(SYNC_WAIT, &format!("snapshot {name} ready"), || async {
        let snap = snapshots.get(name).await?;
        Ok((at(&snap, "/status/readyToUse") == Some(&json!(true))).then_some(()))
    })
    .await?;
    s.sim.read_snapshot("primary", &s.primary_ns, name).await
}

#[tokio::test]
async fn freeze_goes_through_the_aggregation_layer_and_a_frozen_guests_snapshot_is_quiesced() -> Result<()> {
    let s = sites("sim-freeze").await?;
    let ns = s.primary_ns.clone();
    system_disks(&s, &["db", "quiet"]).await?;
    s.sim.update_faults(|f| {
        f.all_sites.no_agent.insert(format!("{ns}/quiet"));
    });
    let vms = VIRTUAL_MACHINE.namespaced(s.primary.clone(), &ns);
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(s.primary.clone(), &ns);
    for name in ["db", "quiet"] {
        create(&vms, VIRTUAL_MACHINE, vm(name, "Always", NETWORK_DATA)).await?;
        eventually(&format!("VMI {name} Running"), || async {
            let vmi = vmis.get_opt(name).await?;
            Ok(vmi.filter(|v| text(v, "/status/phase") == Some("Running")))
        })
        .await?;
    }
    s.sim.guest_write("primary", &ns, "db").await?;

    // Only a caller RBAC allows reaches virt-api: kube-apiserver authorizes before proxying.
    let cp = ControlPlane::shared().await?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(cp.kubeconfig_yaml())?,
        &Default::default(),
    )
    .await?;
    config.auth_info.impersonate = Some("someone-without-rights".into());
    let stranger = Client::try_from(config)?;
    let (code, _) = virt_api_put(&stranger, &ns, "db", "freeze", json!({"unfreezeTimeout": "1m"})).await?;
    assert_eq!(code, 403, "an unauthorized freeze must be refused");
    assert!(text(&vmis.get("db").await?, "/status/fsFreezeStatus").is_none());

    let (code, body) = virt_api_put(&s.primary, &ns, "db", "freeze", json!({"unfreezeTimeout": "1m"})).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(text(&vmis.get("db").await?, "/status/fsFreezeStatus"), Some("frozen"));
    assert!(snapshot_data(&s, "db-frozen", "db-system").await?.quiesced);
    let (code, body) = virt_api_put(&s.primary, &ns, "db", "unfreeze", json!({})).await?;
    assert_eq!(code, 200, "{body}");
    assert!(text(&vmis.get("db").await?, "/status/fsFreezeStatus").is_none());
    s.sim.guest_write("primary", &ns, "db").await?;
    assert!(!snapshot_data(&s, "db-thawed", "db-system").await?.quiesced);

    // No guest agent: virt-api passes on virt-handler's failure, and nothing is frozen.
    let (code, body) = virt_api_put(&s.primary, &ns, "quiet", "freeze", json!({"unfreezeTimeout": "1m"})).await?;
    assert_eq!(code, 500);
    assert!(body.contains("guest agent is not connected"), "{body}");
    assert!(text(&vmis.get("quiet").await?, "/status/fsFreezeStatus").is_none());
    // A freeze without a timeout is refused; one nobody thaws ends with its timeout.
    let (code, _) = virt_api_put(&s.primary, &ns, "db", "freeze", json!({})).await?;
    assert_eq!(code, 500);
    let (code, _) = virt_api_put(&s.primary, &ns, "db", "freeze", json!({"unfreezeTimeout": "1s"})).await?;
    assert_eq!(code, 200);
    eventually("the guest thawed by its unfreezeTimeout", || async {
        let vmi = vmis.get("db").await?;
        Ok(text(&vmi, "/status/fsFreezeStatus").is_none().then_some(()))
    })
    .await?;
    s.sim.stop().await;
    Ok(())
}

/// The member VolumeSnapshots the snapshot-controller made for a group snapshot.
async fn group_members(s: &Sites, group: &DynamicObject) -> Result<Vec<DynamicObject>> {
    let uid = group.metadata.uid.clone().unwrap_or_default();
    let snapshots = VOLUME_SNAPSHOT.namespaced(s.primary.clone(), &s.primary_ns);
    Ok(snapshots
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|m| m.metadata.owner_references.iter().flatten().any(|o| o.uid == uid))
        .collect())
}

#[tokio::test]
async fn a_group_snapshot_cuts_every_selected_disk_at_one_instant_and_restores_from_its_members() -> Result<()> {
    let s = sites("sim-group").await?;
    let ns = s.primary_ns.clone();
    for (name, labelled) in [("db-data", true), ("db-log", true), ("other", false)] {
        let mut claim = pvc(name, "1Gi", "Filesystem", None)?;
        if labelled {
            claim.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
        }
        bound_claim(&s.primary, &ns, claim).await?;
        s.sim.write_disk("primary", &ns, name).await?;
    }
    let before: Vec<_> = [
        s.sim.read_disk("primary", &ns, "db-data").await?,
        s.sim.read_disk("primary", &ns, "db-log").await?,
    ]
    .into_iter()
    .map(|d| d.context("unbound"))
    .collect::<Result<_>>()?;

    let groups = VOLUME_GROUP_SNAPSHOT.namespaced(s.primary.clone(), &ns);
    create(
        &groups,
        VOLUME_GROUP_SNAPSHOT,
        json!({"metadata": {"name": "db"}, "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}}}}),
    )
    .await?;
    let group = within(SYNC_WAIT, "the group snapshot ready", || async {
        let group = groups.get("db").await?;
        Ok((at(&group, "/status/readyToUse") == Some(&json!(true))).then_some(group))
    })
    .await?;
    let late = s.sim.write_disk("primary", &ns, "db-log").await?;

    let members = within(SYNC_WAIT, "both members ready", || async {
        let members = group_members(&s, &group).await?;
        let ready = members.len() == 2
            && members
                .iter()
                .all(|m| at(m, "/status/readyToUse") == Some(&json!(true)));
        Ok(ready.then_some(members))
    })
    .await?;
    let mut by_claim = std::collections::BTreeMap::new();
    for member in &members {
        let claim = text(member, "/spec/source/persistentVolumeClaimName").context("member without a claim")?;
        let name = member.metadata.name.clone().unwrap_or_default();
        by_claim.insert(
            claim.to_owned(),
            (name.clone(), s.sim.read_snapshot("primary", &ns, &name).await?),
        );
    }
    ensure!(
        by_claim.keys().eq(["db-data", "db-log"]),
        "members: {:?}",
        by_claim.keys()
    );
    ensure!(by_claim["db-data"].1 == before[0] && by_claim["db-log"].1 == before[1]);
    ensure!(
        !by_claim["db-log"].1.contains(&late),
        "a write after the cut is in the group"
    );
    // One instant: separate snapshots of the two disks would have been cut apart.
    let cut_at: Vec<_> = members.iter().map(|m| at(m, "/status/creationTime").cloned()).collect();
    ensure!(
        cut_at[0].is_some() && cut_at[0] == cut_at[1],
        "members cut at {cut_at:?}"
    );

    // A disk restores from its member, without the write made after the cut.
    let log_member =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": by_claim["db-log"].0});
    bound_claim(
        &s.primary,
        &ns,
        pvc("db-log-restored", "1Gi", "Filesystem", Some(log_member))?,
    )
    .await?;
    let restored = s
        .sim
        .read_disk("primary", &ns, "db-log-restored")
        .await?
        .context("unbound")?;
    ensure!(restored == before[1], "restored {restored:?}, cut {:?}", before[1]);

    // Deleting the group deletes its members and every content, at the backend too.
    groups.delete("db", &Default::default()).await?;
    let content = text(&group, "/status/boundVolumeGroupSnapshotContentName")
        .context("unbound group")?
        .to_owned();
    let group_contents = VOLUME_GROUP_SNAPSHOT_CONTENT.all(s.primary.clone());
    within(SYNC_WAIT, "the group, its members and contents gone", || async {
        let members = group_members(&s, &group).await?;
        let gone = groups.get_opt("db").await?.is_none() && members.is_empty();
        Ok((gone && group_contents.get_opt(&content).await?.is_none()).then_some(()))
    })
    .await?;
    s.sim.stop().await;
    Ok(())
}
