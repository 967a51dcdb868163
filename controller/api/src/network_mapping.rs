//! `NetworkMapping`: how one site's networks and subnets map onto another's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::rules;

/// How a source site's networks map to a target site's. Failback uses the inverse.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coldsite.io",
    version = "v1alpha1",
    kind = "NetworkMapping",
    plural = "networkmappings",
    shortname = "netmap",
    category = "coldsite",
    namespaced,
    status = "NetworkMappingStatus",
    cel,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.sourceSite"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetSite"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = rules::distinct_sites("sourceSite", "targetSite"))]
#[x_kube(validation = unique_source_networks())]
#[serde(rename_all = "camelCase")]
pub struct NetworkMappingSpec {
    /// The Site whose networks are mapped from.
    #[schemars(length(min = 1, max = 253))]
    pub source_site: String,
    /// The Site whose networks are mapped to.
    #[schemars(length(min = 1, max = 253))]
    pub target_site: String,
    /// One rule per source network.
    #[schemars(length(min = 1, max = 32))]
    pub networks: Vec<NetworkRule>,
}

fn unique_source_networks() -> Rule {
    Rule::new("self.networks.all(n, self.networks.exists_one(m, m.source.network == n.source.network))")
        .message(Message::Message(
            "spec.networks: each source.network may be mapped only once; merge the duplicate rules".into(),
        ))
        .field_path(".networks")
        .reason(Reason::FieldValueInvalid)
}

/// Where one source network goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = disjoint_subnets())]
#[x_kube(validation = test_network_isolated())]
#[x_kube(validation = test_on_pod_network_consented())]
pub struct NetworkRule {
    /// The network at the source site.
    pub source: NetworkRef,
    /// The network at the target site that recovered VMs join.
    pub target: NetworkRef,
    /// The isolated network that test failovers use at the target site. It must differ
    /// from `target`: test copies run beside production with production's addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<NetworkRef>,
    /// Allows `test.network: pod`, the cluster's shared pod network, where test copies can
    /// reach production services.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_on_pod_network: bool,
    /// Subnet translations, applied to addresses on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub subnets: Vec<SubnetRule>,
}

fn disjoint_subnets() -> Rule {
    Rule::new(
        "!has(self.subnets) || self.subnets.all(a, self.subnets.all(b, a.source == b.source || \
         !isCIDR(a.source) || !isCIDR(b.source) || \
         !(cidr(a.source).containsCIDR(cidr(b.source)) || cidr(b.source).containsCIDR(cidr(a.source)))))",
    )
    .message(Message::Message(
        "subnets: source subnets of one network must not overlap or repeat; an address would map two ways".into(),
    ))
    .field_path(".subnets")
    .reason(Reason::FieldValueInvalid)
}

fn test_network_isolated() -> Rule {
    Rule::new("!has(self.test) || self.test.network != self.target.network")
        .message(Message::Message(
            "test.network must differ from target.network: a test failover on the production network collides with production; name an isolated network".into(),
        ))
        .field_path(".test.network")
        .reason(Reason::FieldValueInvalid)
}

fn test_on_pod_network_consented() -> Rule {
    Rule::new("!has(self.test) || self.test.network != 'pod' || (has(self.testOnPodNetwork) && self.testOnPodNetwork)")
        .message(Message::Message(
            "test.network: pod is the cluster's shared pod network, where test copies can reach production; name an isolated Multus network, or set testOnPodNetwork: true".into(),
        ))
        .field_path(".test.network")
        .reason(Reason::FieldValueInvalid)
}

/// A KubeVirt network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRef {
    /// `pod`, or a Multus NetworkAttachmentDefinition as `namespace/name`.
    #[x_kube(validation = rules::kubevirt_network("network"))]
    #[schemars(length(max = 317))]
    pub network: String,
}

/// A subnet translation that keeps the host bits: `10.0.1.25` in `10.0.1.0/24` becomes
/// `10.50.1.25` in `10.50.1.0/24`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = same_prefix())]
#[x_kube(validation = gateway_in_target())]
pub struct SubnetRule {
    /// The subnet at the source site, such as `10.0.1.0/24`.
    #[x_kube(validation = rules::network_cidr("source"))]
    #[schemars(length(max = 64))]
    pub source: String,
    /// The subnet at the target site, with the same prefix length, such as `10.50.1.0/24`.
    #[x_kube(validation = rules::network_cidr("target"))]
    #[schemars(length(max = 64))]
    pub target: String,
    /// The default gateway in the target subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::ip("gateway"))]
    #[schemars(length(max = 64))]
    pub gateway: Option<String>,
    /// DNS servers for recovered VMs on this subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message(Message::Message("dns: each entry must be an IP address such as 10.50.1.10".into())))]
    #[schemars(length(max = 8), inner(length(max = 64)))]
    pub dns: Vec<String>,
    /// DNS search domains for recovered VMs on this subnet (at most 6, the resolv.conf limit
    /// that older guests still have).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(d, d.matches('^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$') && !d.contains('..') && !d.contains('.-') && !d.contains('-.'))").message(Message::Message("dnsSearch: each entry must be a DNS domain such as contoso.com: labels of letters, digits and inner hyphens joined by single dots".into())))]
    #[schemars(length(max = 6), inner(length(max = 253)))]
    pub dns_search: Vec<String>,
}

fn same_prefix() -> Rule {
    Rule::new(
        "!isCIDR(self.source) || !isCIDR(self.target) || \
         (cidr(self.source).ip().family() == cidr(self.target).ip().family() && \
          cidr(self.source).prefixLength() == cidr(self.target).prefixLength())",
    )
    .message(Message::Message(
        "target must have the same IP family and prefix length as source, so host bits carry over (10.0.1.0/24 maps to 10.50.1.0/24, not 10.50.0.0/16)"
            .into(),
    ))
    .field_path(".target")
    .reason(Reason::FieldValueInvalid)
}

fn gateway_in_target() -> Rule {
    Rule::new(
        "!has(self.gateway) || !isCIDR(self.target) || !isIP(self.gateway) || \
         cidr(self.target).containsIP(self.gateway)",
    )
    .message(Message::Message(
        "gateway must lie inside the target subnet; pick an address of target".into(),
    ))
    .field_path(".gateway")
    .reason(Reason::FieldValueInvalid)
}

/// Observed state of a mapping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkMappingStatus {
    /// `Valid`, with the reason and a message naming what is wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
