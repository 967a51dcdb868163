//! A control plane as a coldsite site: upstream's CRDs of KubeVirt, VolSync and
//! external-snapshotter at their pinned versions, the upstream controllers that run without
//! nodes (VolSync's controller and the snapshot-controller, one of each per site), the
//! default StorageClass and VolumeSnapshotClass of the simulated CSI driver, and the
//! virt-api admission rules that the site simulator stands in for.
//!
//! What needs nodes (kubelets, the CSI driver's sidecars, KubeVirt's virt-controller and
//! virt-handler, a load balancer) is played by the [site simulator](crate::simulator).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::Binaries;
use crate::controlplane::{Component, ControlPlane, free_port};
use crate::manifests::{FIELD_MANAGER, apply_crds, apply_params, dynamic_api, name_of, yaml_files};
use crate::simulator::virt_api::{self, VirtApi};
use crate::simulator::{SimSite, admission, csi};

/// The default StorageClass and VolumeSnapshotClass of every site, both of the simulated
/// CSI driver.
pub const DEFAULT_CLASS: &str = "coldsite-sim";

/// The rsync-TLS mover image VolSync names in its Jobs; no kubelet pulls it here.
const MOVER_IMAGE: &str = "quay.io/backube/volsync:v0.14.0";

/// Upstream's CRDs as the build script collected them.
pub fn upstream_crds(binaries: &Binaries) -> Result<Vec<CustomResourceDefinition>> {
    yaml_files(&binaries.crds_dir())?
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

/// The cluster-wide objects a site needs besides the CRDs.
fn site_objects() -> Vec<Value> {
    let mut objects = vec![
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": DEFAULT_CLASS,
                            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": csi::DRIVER, "reclaimPolicy": "Delete",
               // Nothing here sets a selected node: WaitForFirstConsumer would never bind.
               "volumeBindingMode": "Immediate", "allowVolumeExpansion": true}),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": DEFAULT_CLASS,
                            "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
               "driver": csi::DRIVER, "deletionPolicy": "Delete"}),
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshotClass",
               "metadata": {"name": DEFAULT_CLASS,
                            "annotations": {"groupsnapshot.storage.kubernetes.io/is-default-class": "true"}},
               "driver": csi::DRIVER, "deletionPolicy": "Delete"}),
    ];
    objects.extend(admission::policies());
    objects
}

/// Installs upstream's CRDs and the site's cluster-wide objects. Idempotent.
pub async fn install(client: &Client, binaries: &Binaries) -> Result<()> {
    apply_crds(client, &upstream_crds(binaries)?).await?;
    apply_objects(client, &site_objects()).await
}

async fn apply_objects(client: &Client, objects: &[Value]) -> Result<()> {
    for object in objects {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let (api, _) = dynamic_api(client, object, namespace).await?;
        let name = name_of(object)?;
        api.patch(name, &apply_params(FIELD_MANAGER), &kube::api::Patch::Apply(object))
            .await
            .with_context(|| format!("applying {} {name}", object["kind"]))?;
    }
    Ok(())
}

/// Starts the simulated virt-api for the cluster `kubeconfig_yaml` reaches (admin), and
/// registers it as KubeVirt registers virt-api; returns once the aggregation layer reports
/// the APIService Available. The server lives as long as the process.
pub async fn serve_virt_api(client: &Client, kubeconfig_yaml: &str) -> Result<()> {
    let server = VirtApi::start(kubeconfig_yaml.to_owned())?;
    apply_objects(client, &server.registration()).await?;
    let services: Api<APIService> = Api::all(client.clone());
    let name = format!("{}.{}", virt_api::VERSION, virt_api::GROUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let available = services
            .get(&name)
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Available");
        match available {
            Some(c) if c.status == "True" => break,
            _ if std::time::Instant::now() > deadline => {
                anyhow::bail!("APIService {name} of the simulated virt-api is not Available: {available:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::info!(port = server.port, "the simulated virt-api serves {name}");
    Ok(())
}

/// Arguments of VolSync's controller against `kubeconfig`, its health endpoint on `port`.
pub fn volsync_args(kubeconfig: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--health-probe-bind-address=127.0.0.1:{port}"),
        "--metrics-bind-address=0".into(),
        // Out of a cluster, leader election finds no namespace; one replica needs none.
        "--zap-devel=false".into(),
        format!("--rsync-tls-container-image={MOVER_IMAGE}"),
    ]
}

/// Arguments of the snapshot-controller against `kubeconfig`, its metrics on `port`.
pub fn snapshot_controller_args(kubeconfig: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--http-endpoint=127.0.0.1:{port}"),
        "--leader-election=false".into(),
        "--kube-api-qps=50".into(),
        "--kube-api-burst=100".into(),
        // Upstream backs off up to 5 minutes; tests would wait that long for a PVC to bind.
        "--retry-interval-max=5s".into(),
        // Beta and off by default in v8.4; the sites' driver cuts group snapshots.
        "--feature-gates=CSIVolumeGroupSnapshot=true".into(),
        "--v=2".into(),
    ]
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
pub async fn http_ok(port: u16, path: &str) -> Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
}

impl ControlPlane {
    /// Makes this control plane a site (see the [module docs](self)), once: later calls
    /// return at once. The two controllers log to `volsync.log` and
    /// `snapshot-controller.log` in [`ControlPlane::dir`], beside the others.
    pub async fn ensure_site(&self) -> Result<()> {
        self.site
            .get_or_try_init(|| async {
                install(&self.client().await?, self.binaries())
                    .await
                    .with_context(|| format!("installing the site parts of control plane '{}'", self.name()))?;
                self.start_site_controllers().await?;
                serve_virt_api(&self.client().await?, self.kubeconfig_yaml())
                    .await
                    .with_context(|| format!("serving the simulated virt-api of control plane '{}'", self.name()))
            })
            .await?;
        Ok(())
    }

    /// This control plane as a site of the simulator, named `name`, with a client of the
    /// caller's tokio runtime. Call [`ensure_site`](Self::ensure_site) first.
    pub async fn sim_site(&self, name: &str) -> Result<SimSite> {
        Ok(SimSite {
            name: name.to_owned(),
            client: self.client().await?,
            lb_pool: self.network().lb_pool,
            management_only: false,
        })
    }

    /// This control plane as a management cluster of its own, for the simulator to run the
    /// Jobs of scripts there.
    pub async fn sim_management(&self, name: &str) -> Result<SimSite> {
        Ok(SimSite {
            management_only: true,
            ..self.sim_site(name).await?
        })
    }

    pub(crate) async fn start_site_controllers(&self) -> Result<()> {
        let timeout = Duration::from_secs(120);
        let (volsync, snapshots) = (free_port()?, free_port()?);
        self.spawn(Component::VolSync, volsync_args(self.kubeconfig_path(), volsync))?;
        self.spawn(
            Component::SnapshotController,
            snapshot_controller_args(self.kubeconfig_path(), snapshots),
        )?;
        self.wait_until(Component::VolSync, "/readyz", timeout, || http_ok(volsync, "/readyz"))
            .await?;
        self.wait_until(Component::SnapshotController, "/metrics", timeout, || {
            http_ok(snapshots, "/metrics")
        })
        .await?;
        tracing::info!(name = %self.name(), "VolSync and the snapshot-controller are running");
        Ok(())
    }
}
