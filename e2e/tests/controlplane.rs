//! The e2e control plane itself: real API servers, a real garbage collector, teardown.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use coldsite_e2e::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_owned(), "value".to_owned())].into()),
        ..ConfigMap::default()
    }
}

fn stdout_of(mut cmd: std::process::Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn two_independent_api_servers_of_the_built_version() -> Result<()> {
    let (primary, recovery) = tokio::try_join!(ControlPlane::shared(), ControlPlane::shared_recovery())?;
    assert_ne!(primary.server_url(), recovery.server_url());

    let client = primary.client().await?;
    let version = client.apiserver_version().await?;
    assert!(
        version.git_version.starts_with("v1.36."),
        "kube-apiserver reports {version:?}"
    );
    assert_eq!(version.major, "1");
    assert_eq!(version.minor, "36");

    let ns = primary.create_namespace("smoke").await?;
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.get(&ns).await?;

    // kubectl and helm were built with their real versions and reach the API server.
    let kubectl_version = stdout_of({
        let mut c = primary.kubectl();
        c.args(["version", "--client", "-o", "json"]);
        c
    })?;
    let kubectl_version: serde_json::Value = serde_json::from_str(&kubectl_version)?;
    let kubectl_git = kubectl_version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(kubectl_git.starts_with("v1.36."), "kubectl reports {kubectl_version}");
    let listed = stdout_of({
        let mut c = primary.kubectl();
        c.args(["get", "namespace", &ns, "-o", "name"]);
        c
    })?;
    assert_eq!(listed.trim(), format!("namespace/{ns}"));
    let helm_version = stdout_of({
        let mut c = primary.helm();
        c.args(["version", "--short"]);
        c
    })?;
    assert!(helm_version.starts_with("v3."), "helm reports {helm_version}");

    // The recovery site is a separate cluster with its own etcd.
    let recovery_client = recovery.client().await?;
    let recovery_version = recovery_client.apiserver_version().await?;
    assert_eq!(recovery_version.git_version, version.git_version);
    let recovery_namespaces: Api<Namespace> = Api::all(recovery_client);
    assert!(
        recovery_namespaces.get_opt(&ns).await?.is_none(),
        "namespace {ns} of the primary must not exist on the recovery site"
    );
    let recovery_ns = recovery.create_namespace("smoke-recovery").await?;
    recovery_namespaces.get(&recovery_ns).await?;
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_in_background() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client().await?, &ns);

    let owner = cms.create(&PostParams::default(), &config_map("owner", None)).await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.context("owner has no uid")?,
        ..OwnerReference::default()
    };
    cms.create(&PostParams::default(), &config_map("dependent", Some(owner_ref)))
        .await?;

    cms.delete("owner", &DeleteParams::background()).await?;
    let started = Instant::now();
    while cms.get_opt("dependent").await?.is_some() {
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the garbage collector did not delete the dependent ConfigMap within 90s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test]
async fn dropping_a_control_plane_stops_its_processes_and_removes_its_directory() -> Result<()> {
    let cp = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        ..ControlPlaneOptions::new("teardown")
    })
    .await?;
    let pids = cp.pids();
    ensure!(pids.len() == 2, "expected etcd and kube-apiserver, got {pids:?}");
    let dir = cp.dir().to_owned();
    ensure!(dir.is_dir());
    drop(cp);
    for (component, pid) in pids {
        // A reaped process has no /proc entry.
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{component:?} (pid {pid}) still runs"
        );
    }
    ensure!(
        std::env::var_os(coldsite_e2e::KEEP_ENV).is_some() || !dir.exists(),
        "{} still exists",
        dir.display()
    );
    Ok(())
}

#[tokio::test]
async fn a_component_that_fails_to_start_is_reported_with_its_log() -> Result<()> {
    let err = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        extra_apiserver_args: vec!["--no-such-flag=1".into()],
        ..ControlPlaneOptions::new("broken")
    })
    .await
    .expect_err("kube-apiserver must reject an unknown flag");
    let text = format!("{err:#}");
    assert!(
        text.contains("kube-apiserver of control plane 'broken' exited"),
        "{text}"
    );
    assert!(text.contains("unknown flag: --no-such-flag"), "{text}");
    Ok(())
}
