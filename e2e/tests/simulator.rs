//! The site simulator against real API servers: the shared primary and recovery control
//! planes with the stand-in CRDs of KubeVirt, VolSync and external-snapshotter. Each test
//! runs its own simulator over its own namespaces.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_e2e::simulator::resources::{
    REPLICATION_DESTINATION, REPLICATION_SOURCE, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS, VOLUME_SNAPSHOT_CONTENT,
};
use coldsite_e2e::simulator::{
    DO_NOT_DELETE_LABEL, EXIT_CODE_ENV, Kind, NODE_NAME, SimConfig, Simulator, SimulatorHandle, destination_address,
    install_crds,
};
use coldsite_e2e::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Polls `probe` every 100 ms until it yields a value.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
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
        if started.elapsed() > WAIT {
            let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
            bail!("timed out after {WAIT:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        ..SimConfig::default()
    }
}

/// Both shared sites with the stand-in CRDs, a namespace at each, and a simulator over
/// those namespaces.
struct Sites {
    primary: Client,
    recovery: Client,
    primary_ns: String,
    recovery_ns: String,
    sim: SimulatorHandle,
}

async fn sites(prefix: &str) -> Result<Sites> {
    let (p, r) = tokio::try_join!(ControlPlane::shared(), ControlPlane::shared_recovery())?;
    let (primary, recovery) = (p.client().await?, r.client().await?);
    tokio::try_join!(install_crds(&primary), install_crds(&recovery))?;
    let primary_ns = p.create_namespace(prefix).await?;
    let recovery_ns = r.create_namespace(&format!("{prefix}-dr")).await?;
    let sim = Simulator::start(
        vec![
            ("primary".into(), primary.clone()),
            ("recovery".into(), recovery.clone()),
        ],
        config().with_namespaces([primary_ns.clone(), recovery_ns.clone()]),
    );
    Ok(Sites {
        primary,
        recovery,
        primary_ns,
        recovery_ns,
        sim,
    })
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

#[tokio::test]
async fn a_running_vm_gets_a_vmi_with_ips_from_its_network_data_and_halted_removes_it() -> Result<()> {
    let s = sites("sim-vm").await?;
    let vms = VIRTUAL_MACHINE.namespaced(s.primary.clone(), &s.primary_ns);
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(s.primary.clone(), &s.primary_ns);
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
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        vmi.metadata.labels.as_ref().and_then(|l| l.get("kubevirt.io/vm")),
        Some(&"dc01".to_owned())
    );
    let interfaces = at(&vmi, "/status/interfaces").context("no interfaces")?;
    assert_eq!(interfaces[0]["name"], "corp");
    assert_eq!(interfaces[0]["interfaceName"], "lan0");
    assert_eq!(interfaces[0]["mac"], "02:c0:00:01:00:10");
    assert_eq!(interfaces[0]["ipAddress"], "10.0.1.10");
    assert_eq!(interfaces[0]["ipAddresses"], json!(["10.0.1.10", "fd00:c0:1::10"]));
    assert_eq!(interfaces[1]["name"], "backup");
    assert_eq!(interfaces[1]["ipAddress"], "192.168.50.7");
    assert_eq!(condition(&vmi, "Ready").context("Ready")?["status"], "True");
    assert_eq!(
        condition(&vmi, "AgentConnected").context("AgentConnected")?["status"],
        "True"
    );
    assert_eq!(text(&vmi, "/status/nodeName"), Some(NODE_NAME));

    let vm = eventually("the VM reported ready", || async {
        let vm = vms.get("dc01").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(vm))
    })
    .await?;
    assert_eq!(text(&vm, "/status/printableStatus"), Some("Running"));
    assert_eq!(at(&vm, "/status/created"), Some(&json!(true)));
    assert_eq!(condition(&vm, "Ready").context("VM Ready")?["status"], "True");

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
        Ok((gone
            && text(&vm, "/status/printableStatus") == Some("Stopped")
            && at(&vm, "/status/ready") == Some(&json!(false)))
        .then_some(()))
    })
    .await?;
    let vm = vms.get("dc01").await?;
    assert_eq!(condition(&vm, "Ready").context("VM Ready")?["status"], "False");
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn boot_failure_keeps_a_vm_not_ready_and_no_agent_hides_guest_ips() -> Result<()> {
    let s = sites("sim-faults").await?;
    let ns = s.primary_ns.clone();
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
    assert_eq!(condition(&quiet, "Ready").context("Ready")?["status"], "True");
    let nic = at(&quiet, "/status/interfaces/0").context("no interface")?;
    assert_eq!(nic["mac"], "02:c0:00:01:00:10");
    assert!(nic.get("ipAddress").is_none() && nic.get("interfaceName").is_none());

    // Well past the boot delay, the broken VM still has not booted.
    s.sim.wait_passes(3, WAIT).await?;
    let broken = vms.get("broken").await?;
    assert_eq!(at(&broken, "/status/ready"), Some(&json!(false)));
    assert_eq!(text(&broken, "/status/printableStatus"), Some("ErrorUnschedulable"));
    let broken_vmi = vmis.get("broken").await?;
    assert_eq!(text(&broken_vmi, "/status/phase"), Some("Scheduling"));
    assert_eq!(
        condition(&broken_vmi, "PodScheduled").context("PodScheduled")?["reason"],
        "Unschedulable"
    );

    // Clearing the fault lets it boot.
    s.sim.update_faults(|f| {
        f.site("primary").boot_failure.clear();
    });
    eventually("the repaired VM ready", || async {
        let vm = vms.get("broken").await?;
        Ok(
            (text(&vm, "/status/printableStatus") == Some("Running") && at(&vm, "/status/ready") == Some(&json!(true)))
                .then_some(()),
        )
    })
    .await?;
    s.sim.stop().await;
    Ok(())
}

fn pvc(name: &str, size: &str, source: Option<Value>) -> Result<PersistentVolumeClaim> {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(source) = source {
        spec["dataSource"] = source;
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

/// A ReplicationDestination `name` at the recovery site, and its published address.
async fn destination(s: &Sites, name: &str, class: Option<&str>) -> Result<(String, String)> {
    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    let mut rsync = json!({
        "copyMethod": "Snapshot",
        "capacity": "2Gi",
        "accessModes": ["ReadWriteOnce"],
    });
    if let Some(class) = class {
        rsync["volumeSnapshotClassName"] = json!(class);
    }
    create(
        &rds,
        REPLICATION_DESTINATION,
        json!({"metadata": {"name": name}, "spec": {"rsyncTLS": rsync}}),
    )
    .await?;
    let rd = eventually("the destination's address and key", || async {
        let rd = rds.get(name).await?;
        Ok(
            (text(&rd, "/status/rsyncTLS/address").is_some() && text(&rd, "/status/rsyncTLS/keySecret").is_some())
                .then_some(rd),
        )
    })
    .await?;
    let address = text(&rd, "/status/rsyncTLS/address").unwrap_or_default();
    assert_eq!(address, destination_address("recovery", &s.recovery_ns, name));
    let key = text(&rd, "/status/rsyncTLS/keySecret").unwrap_or_default();
    assert_eq!(key, format!("volsync-rsync-tls-{name}"));
    Ok((address.to_owned(), key.to_owned()))
}

/// A ReplicationSource at the primary site replicating PVC `data` to `address`.
async fn source(s: &Sites, name: &str, address: &str, key: &str, trigger: Value) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(s.primary.clone(), &s.primary_ns);
    if pvcs.get_opt("data").await?.is_none() {
        pvcs.create(&PostParams::default(), &pvc("data", "2Gi", None)?).await?;
    }
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    create(
        &rss,
        REPLICATION_SOURCE,
        json!({"metadata": {"name": name}, "spec": {
            "sourcePVC": "data",
            "trigger": trigger,
            "rsyncTLS": {"address": address, "keySecret": key, "copyMethod": "Snapshot"},
        }}),
    )
    .await?;
    Ok(())
}

/// Waits until the source has completed its manual sync `tag`; returns the destination's
/// `latestImage` name.
async fn synced(s: &Sites, rs: &str, rd: &str, tag: &str) -> Result<String> {
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    let source = eventually(&format!("manual sync {tag}"), || async {
        let rs = rss.get(rs).await?;
        Ok((text(&rs, "/status/lastManualSync") == Some(tag)).then_some(rs))
    })
    .await?;
    assert!(text(&source, "/status/lastSyncTime").is_some());
    assert!(text(&source, "/status/lastSyncDuration").is_some());
    assert!(at(&source, "/status/lastSyncStartTime").is_none());
    assert!(at(&source, "/status/nextSyncTime").is_none());
    let synchronizing = condition(&source, "Synchronizing").context("Synchronizing")?;
    assert_eq!(synchronizing["status"], "False");
    assert_eq!(synchronizing["reason"], "WaitingForManual");
    let rd = rds.get(rd).await?;
    assert_eq!(
        at(&rd, "/status/latestImage/apiGroup"),
        Some(&json!("snapshot.storage.k8s.io"))
    );
    assert_eq!(at(&rd, "/status/latestImage/kind"), Some(&json!("VolumeSnapshot")));
    assert!(text(&rd, "/status/lastSyncTime").is_some());
    assert!(text(&rd, "/status/lastSyncDuration").is_some());
    text(&rd, "/status/latestImage/name")
        .map(str::to_owned)
        .context("no latestImage")
}

#[tokio::test]
async fn a_manual_sync_snapshots_at_the_recovery_site_and_keeps_do_not_delete_images() -> Result<()> {
    let s = sites("sim-sync").await?;
    let class = format!("sim-class-{}", s.recovery_ns);
    let classes = VOLUME_SNAPSHOT_CLASS.all(s.recovery.clone());
    create(
        &classes,
        VOLUME_SNAPSHOT_CLASS,
        json!({"metadata": {"name": class}, "driver": "hostpath.csi.k8s.io", "deletionPolicy": "Delete"}),
    )
    .await?;
    let (address, key) = destination(&s, "db", Some(&class)).await?;
    let secrets: Api<Secret> = Api::namespaced(s.recovery.clone(), &s.recovery_ns);
    let secret = secrets.get(&key).await?;
    assert!(secret.data.unwrap_or_default().contains_key("psk.txt"));
    source(&s, "db", &address, &key, json!({"manual": "first"})).await?;

    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    let rd_uid = rds.get("db").await?.metadata.uid.context("uid")?;
    let snapshots = VOLUME_SNAPSHOT.namespaced(s.recovery.clone(), &s.recovery_ns);
    let first = synced(&s, "db", "db", "first").await?;
    assert!(first.starts_with("volsync-db-dst-"), "{first}");
    let snap = snapshots.get(&first).await?;
    assert_eq!(at(&snap, "/status/readyToUse"), Some(&json!(true)));
    assert_eq!(text(&snap, "/status/restoreSize"), Some("2Gi"));
    assert!(text(&snap, "/status/creationTime").is_some());
    assert_eq!(
        text(&snap, "/spec/source/persistentVolumeClaimName"),
        Some("volsync-db-dst")
    );
    assert_eq!(text(&snap, "/spec/volumeSnapshotClassName"), Some(class.as_str()));
    assert_eq!(
        snap.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("volsync.backube/owned")),
        Some(&rd_uid)
    );
    let content_name = text(&snap, "/status/boundVolumeSnapshotContentName")
        .context("unbound")?
        .to_owned();
    let content = VOLUME_SNAPSHOT_CONTENT
        .all(s.recovery.clone())
        .get(&content_name)
        .await?;
    assert_eq!(text(&content, "/spec/driver"), Some("hostpath.csi.k8s.io"));
    assert_eq!(text(&content, "/spec/volumeSnapshotRef/name"), Some(first.as_str()));

    // Keep the first image; the second sync must not delete it.
    merge(
        &snapshots,
        &first,
        json!({"metadata": {"labels": {DO_NOT_DELETE_LABEL: "true"}}}),
    )
    .await?;
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    merge(&rss, "db", json!({"spec": {"trigger": {"manual": "second"}}})).await?;
    let second = synced(&s, "db", "db", "second").await?;
    assert_ne!(second, first);
    let kept = snapshots.get(&first).await?;
    assert!(
        kept.metadata.owner_references.iter().flatten().all(|o| o.uid != rd_uid),
        "the kept image is still owned by the destination"
    );
    assert!(
        !kept
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("volsync.backube/owned")
    );

    // The third sync deletes the unlabelled second image.
    merge(&rss, "db", json!({"spec": {"trigger": {"manual": "third"}}})).await?;
    let third = synced(&s, "db", "db", "third").await?;
    assert!(third != second && third != first);
    eventually("the second image deleted", || async {
        Ok(snapshots.get_opt(&second).await?.is_none().then_some(()))
    })
    .await?;
    assert!(snapshots.get_opt(&first).await?.is_some());
    let idle = async || -> Result<_> {
        Ok((
            rss.get("db").await?.metadata.resource_version,
            rds.get("db").await?.metadata.resource_version,
            snapshots.get(&third).await?.metadata.resource_version,
        ))
    };
    let before = idle().await?;
    s.sim.wait_passes(3, WAIT).await?;
    assert_eq!(before, idle().await?, "an idle simulator wrote to VolSync objects");
    eventually("the second image's content deleted", || async {
        let contents = VOLUME_SNAPSHOT_CONTENT
            .all(s.recovery.clone())
            .list(&ListParams::default())
            .await?;
        Ok(contents
            .items
            .iter()
            .all(|c| text(c, "/spec/volumeSnapshotRef/name") != Some(second.as_str()))
            .then_some(()))
    })
    .await?;

    // A PVC restores from the latest image; one from a missing snapshot waits.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(s.recovery.clone(), &s.recovery_ns);
    let from = |name: &str| json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name});
    pvcs.create(&PostParams::default(), &pvc("restored", "2Gi", Some(from(&third)))?)
        .await?;
    pvcs.create(
        &PostParams::default(),
        &pvc("orphan", "2Gi", Some(from("no-such-snapshot")))?,
    )
    .await?;
    let restored = eventually("the restored PVC Bound", || async {
        let p = pvcs.get("restored").await?;
        let bound = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        Ok(bound.then_some(p))
    })
    .await?;
    let capacity = restored
        .status
        .and_then(|s| s.capacity)
        .and_then(|c| c.get("storage").cloned())
        .context("no capacity")?;
    assert_eq!(capacity.0, "2Gi");
    s.sim.wait_passes(2, WAIT).await?;
    let orphan = pvcs.get("orphan").await?;
    assert_ne!(orphan.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    // Deleting a PVC completes: the simulator plays PVC protection.
    pvcs.delete("restored", &DeleteParams::default()).await?;
    eventually("the restored PVC deleted", || async {
        Ok(pvcs.get_opt("restored").await?.is_none().then_some(()))
    })
    .await?;
    classes.delete(&class, &DeleteParams::default()).await?;
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_scheduled_source_syncs_on_the_compressed_clock() -> Result<()> {
    let s = sites("sim-cron").await?;
    let (address, key) = destination(&s, "app", None).await?;
    // At time scale 60, every two cron minutes is every two real seconds.
    source(&s, "app", &address, &key, json!({"schedule": "*/2 * * * *"})).await?;
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    let mut seen = BTreeMap::new();
    let started = Instant::now();
    while seen.len() < 3 {
        ensure!(
            started.elapsed() < WAIT,
            "only {} syncs within {WAIT:?}: {seen:?}",
            seen.len()
        );
        let rs = rss.get("app").await?;
        if let (Some(last), Some(next)) = (text(&rs, "/status/lastSyncTime"), text(&rs, "/status/nextSyncTime")) {
            seen.insert(last.to_owned(), next.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (last, next) in &seen {
        let last = chrono::DateTime::parse_from_rfc3339(last)?;
        let next = chrono::DateTime::parse_from_rfc3339(next)?;
        let gap = (next - last).num_milliseconds();
        ensure!(
            (1..=2000).contains(&gap),
            "nextSyncTime {next} is not within 2 s after lastSyncTime {last}"
        );
    }
    let rs = rss.get("app").await?;
    assert!(at(&rs, "/status/lastManualSync").is_none());
    s.sim.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_source_does_not_sync_until_the_fault_clears() -> Result<()> {
    let s = sites("sim-stall").await?;
    let key = format!("{}/stuck", s.primary_ns);
    s.sim.update_faults(|f| {
        f.all_sites.stalled.insert(key.clone());
    });
    let (address, secret) = destination(&s, "stuck", None).await?;
    source(&s, "stuck", &address, &secret, json!({"manual": "go"})).await?;
    let rss = REPLICATION_SOURCE.namespaced(s.primary.clone(), &s.primary_ns);
    let rds = REPLICATION_DESTINATION.namespaced(s.recovery.clone(), &s.recovery_ns);
    eventually("the stuck sync to start", || async {
        let rs = rss.get("stuck").await?;
        Ok(text(&rs, "/status/lastSyncStartTime").map(|_| ()))
    })
    .await?;
    // Longer than a sync takes.
    s.sim.wait_passes(5, WAIT).await?;
    let rs = rss.get("stuck").await?;
    assert!(at(&rs, "/status/lastSyncTime").is_none());
    assert!(at(&rs, "/status/lastManualSync").is_none());
    let synchronizing = condition(&rs, "Synchronizing").context("Synchronizing")?;
    assert_eq!(synchronizing["status"], "True");
    assert_eq!(synchronizing["reason"], "SyncInProgress");
    assert!(at(&rds.get("stuck").await?, "/status/latestImage").is_none());

    s.sim.update_faults(|f| f.all_sites.stalled.clear());
    synced(&s, "stuck", "stuck", "go").await?;
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
    assert_eq!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed"));
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
    let doomed = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        ..ControlPlaneOptions::new("sim-outage")
    })
    .await?;
    let (client, doomed_client) = (primary.client().await?, doomed.client().await?);
    tokio::try_join!(install_crds(&client), install_crds(&doomed_client))?;
    let ns = primary.create_namespace("sim-outage").await?;
    let doomed_ns = doomed.create_namespace("sim-outage").await?;
    let sim = Simulator::start(
        vec![("primary".into(), client.clone()), ("doomed".into(), doomed_client)],
        config().with_namespaces([ns.clone(), doomed_ns]),
    );
    sim.wait_passes(2, WAIT).await?;
    doomed.stop();
    // Passes over the dead site keep failing and retrying; the live site is served.
    sim.wait_passes(3, WAIT).await?;
    let vms = VIRTUAL_MACHINE.namespaced(client.clone(), &ns);
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

#[tokio::test]
async fn the_binary_plays_a_site_from_its_kubeconfig() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("sim-binary").await?;
    let _simulator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_coldsite-site-simulator"))
            .arg("--site")
            .arg(format!("primary={}", cp.kubeconfig_path().display()))
            .args(["--install-crds", "--namespace", &ns, "--boot-delay-ms", "300"])
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting coldsite-site-simulator")?,
    );
    let client = cp.client().await?;
    let vms = VIRTUAL_MACHINE.namespaced(client, &ns);
    // The binary installs the CRDs; until then creating a VM fails.
    eventually("the VM created", || async {
        Ok(create(&vms, VIRTUAL_MACHINE, vm("cli", "Always", NETWORK_DATA))
            .await
            .ok())
    })
    .await?;
    eventually("the VM ready", || async {
        let vm = vms.get("cli").await?;
        Ok((at(&vm, "/status/ready") == Some(&json!(true))).then_some(()))
    })
    .await?;
    Ok(())
}
