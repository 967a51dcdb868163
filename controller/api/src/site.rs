//! `Site`: a Kubernetes cluster running KubeVirt where VMs run, and how to reach it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// A place where VMs run: a cluster with KubeVirt, VolSync and CSI snapshots.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coldsite.io",
    version = "v1alpha1",
    kind = "Site",
    plural = "sites",
    shortname = "site",
    category = "coldsite",
    status = "SiteStatus",
    cel,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"KubeVirt","type":"boolean","jsonPath":".status.capabilities.kubevirt"}"#,
    printcolumn = r#"{"name":"VolSync","type":"boolean","jsonPath":".status.capabilities.volsync"}"#,
    printcolumn = r#"{"name":"Replication Service","type":"string","jsonPath":".status.replicationServiceType"}"#,
    printcolumn = r#"{"name":"Last Probe","type":"date","jsonPath":".status.lastProbeTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SiteSpec {
    /// How to reach the site's cluster. Left out, the site is the management cluster itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<SiteCluster>,
    /// Storage for restored disks and recovery points at this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<SiteStorage>,
    /// How the replication movers of other sites reach this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<SiteReplication>,
    /// How long the site must have been unreachable (its `Reachable` condition False) before
    /// a run counts it as down and goes on without it, such as `5m`. Until then a run keeps
    /// retrying it: a slow site is not a dead one. A run can also declare its source down
    /// (`spec.sourceDown`).
    #[serde(default = "default_down_after")]
    #[x_kube(validation = crate::rules::duration("spec.downAfter"))]
    #[schemars(length(max = 32))]
    pub down_after: String,
    /// A namespace that test failovers at this site share. Left out (best when several
    /// teams share the site), the test copies of management namespace N's runs go to a
    /// namespace of their own, `coldsite-test-<N>`. Set, every namespace whose plans test
    /// here must be granted it (`namespaceGrants`), or the plans are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::rules::dns_label("spec.testNamespace"))]
    #[schemars(length(max = 63))]
    pub test_namespace: Option<String>,
    /// Management namespaces allowed to protect, recover and halt VMs of other namespaces
    /// at this site. Without a grant, a ProtectedVM reaches only the VM in the namespace of
    /// its own name, at both of its sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub namespace_grants: Vec<NamespaceGrant>,
    /// The Pod Security profile that plan scripts run under at this site: `restricted` (the
    /// default), or a weaker `baseline` or `privileged` that the site's administrator allows.
    /// Job scripts of management namespace N run in the site namespace
    /// `coldsite-scripts-<N>`, which coldsite creates enforcing this profile, as the
    /// ServiceAccount `coldsite-script`, which has no API access unless the administrator
    /// binds some.
    #[serde(default)]
    pub script_pod_security: PodSecurityLevel,
}

/// A Pod Security Standard (`pod-security.kubernetes.io/enforce`), from the weakest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    #[default]
    Restricted,
}

impl PodSecurityLevel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }

    /// A namespace's enforced level from its label value; no label enforces nothing.
    pub fn from_label(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("privileged") => Some(Self::Privileged),
            Some("baseline") => Some(Self::Baseline),
            Some("restricted") => Some(Self::Restricted),
            Some(_) => None,
        }
    }
}

/// The ServiceAccount that script Jobs run as, at the sites and on the management cluster.
pub const SCRIPT_SERVICE_ACCOUNT: &str = "coldsite-script";

/// Lets ProtectedVMs of one management namespace use some namespaces of a site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceGrant {
    /// The namespace on the management cluster whose ProtectedVMs get the grant.
    #[x_kube(validation = crate::rules::dns_label("namespaceGrants[].from"))]
    #[schemars(length(max = 63))]
    pub from: String,
    /// Namespaces of this site they may use.
    #[x_kube(validation = crate::rules::dns_labels("namespaceGrants[].to"))]
    #[schemars(length(min = 1, max = 32), inner(length(max = 63)))]
    pub to: Vec<String>,
}

impl Site {
    /// Whether ProtectedVMs of management namespace `from` may use namespace `to` here.
    pub fn grants(&self, from: &str, to: &str) -> bool {
        from == to
            || self
                .spec
                .namespace_grants
                .iter()
                .any(|g| g.from == from && g.to.iter().any(|t| t == to))
    }
}

fn default_down_after() -> String {
    "5m".into()
}

/// Connection to a site cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteCluster {
    /// A Secret on the management cluster holding a kubeconfig for the site.
    pub kubeconfig_secret_ref: SecretKeyRef,
}

/// Storage classes used at a site.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStorage {
    /// StorageClass for restored disks and replication destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// VolumeSnapshotClass for recovery points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// VolumeGroupSnapshotClass (`groupsnapshot.storage.k8s.io`) for cutting every disk of a
    /// multi-disk VM at one instant when this site is the source of replication. Without it,
    /// each disk is cut on its own, and such VMs say so in their `DisksConsistent` condition.
    /// Its driver must support CSI group snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub volume_group_snapshot_class_name: Option<String>,
}

/// How replication into this site is reached from the others.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteReplication {
    /// How each replication destination at this site (a VolSync ReplicationDestination) is
    /// exposed to the movers of the other site: `LoadBalancer` (the default) through the
    /// site's load balancer, which the other site can reach; `ClusterIP` only when the sites
    /// share a network, as with Submariner or Cilium Cluster Mesh. A ClusterIP is not
    /// reachable from another cluster otherwise, and replication would never complete.
    #[serde(default)]
    pub service_type: ReplicationServiceType,
    /// Annotations for those Services, e.g. `metallb.universe.tf/address-pool` to choose
    /// an address pool, or a cloud's annotation for an internal load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
}

/// The Service type of replication destinations (VolSync's `rsyncTLS.serviceType`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ReplicationServiceType {
    #[default]
    LoadBalancer,
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

impl ReplicationServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::ClusterIp => "ClusterIP",
        }
    }
}

/// Observed state of a site.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// `Reachable` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the site was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// What the site has installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<SiteCapabilities>,
    /// How replication destinations at this site are exposed (`spec.replication`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_service_type: Option<ReplicationServiceType>,
    /// The generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The platform pieces found at a site.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteCapabilities {
    /// KubeVirt's `kubevirt.io/v1` API is served.
    pub kubevirt: bool,
    /// VolSync's `volsync.backube/v1alpha1` API is served.
    pub volsync: bool,
    /// CSI snapshots (`snapshot.storage.k8s.io/v1`) are served.
    pub snapshots: bool,
    /// The site's Kubernetes version, as `/version` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}
