//! `RecoveryPlan`: the ordered recovery of an application: groups, readiness, actions, drills.

use k8s_openapi::api::batch::v1::JobTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{FailoverKind, LocalSecretKeyRef, RunAction};
use crate::rules;

/// Groups recover in `dependsOn` order; VMs within a group in parallel.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coldsite.io",
    version = "v1alpha1",
    kind = "RecoveryPlan",
    plural = "recoveryplans",
    shortname = "rplan",
    category = "coldsite",
    namespaced,
    status = "RecoveryPlanStatus",
    cel,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".spec.primarySite"}"#,
    printcolumn = r#"{"name":"Recovery","type":"string","jsonPath":".spec.recoverySite"}"#,
    printcolumn = r#"{"name":"VMs","type":"integer","jsonPath":".status.vmCount"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"RPO(s)","type":"integer","jsonPath":".status.estimatedRpoSeconds"}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRun.name"}"#,
    printcolumn = r#"{"name":"Tested","type":"date","jsonPath":".status.lastSuccessfulTest.completionTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = rules::distinct_sites("primarySite", "recoverySite"))]
#[x_kube(validation = depends_on_known_groups())]
#[x_kube(validation = unique_action_names())]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPlanSpec {
    #[schemars(length(min = 1, max = 253))]
    pub primary_site: String,
    #[schemars(length(min = 1, max = 253))]
    pub recovery_site: String,
    /// Recovery groups. A group without `dependsOn` depends on the one before it.
    #[x_kube(validation = rules::unique_names("spec.groups", "group"))]
    #[schemars(length(min = 1, max = 32))]
    pub groups: Vec<RecoveryGroup>,
    /// Sets of VMs cut at one instant and recovered to it: each set's disks are snapshotted
    /// together at the primary site (its guests frozen together for app-consistent points),
    /// on the shortest schedule among them, and a run restores every member from that one
    /// instant. Needs the primary Site's `spec.storage.volumeGroupSnapshotClassName`; members
    /// share one VM namespace, and a VM is in at most one set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = rules::unique_names("spec.consistencyGroups", "consistency group"))]
    #[schemars(length(max = 32))]
    pub consistency_groups: Vec<ConsistencyGroup>,
    /// Scheduled test failovers that prove the plan works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSchedule>,
}

/// The most VMs one consistency group cuts together: one group snapshot selects them all.
pub const CONSISTENCY_GROUP_MAX: usize = 256;

/// VMs cut together and recovered to one instant (see `spec.consistencyGroups`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyGroup {
    #[x_kube(validation = rules::dns_label("spec.consistencyGroups[].name"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// ProtectedVM names, in this namespace, each also in one of the plan's groups.
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(min = 2, max = 256), inner(length(max = 253)))]
    pub vms: Vec<String>,
}

fn depends_on_known_groups() -> Rule {
    Rule::new(
        "self.groups.all(g, !has(g.dependsOn) || g.dependsOn.all(d, d != g.name && self.groups.exists(h, h.name == d)))",
    )
    .message(Message::Message(
        "spec.groups[].dependsOn must name other groups of this plan, never the group itself".into(),
    ))
    .field_path(".groups")
    .reason(Reason::FieldValueInvalid)
}

fn unique_action_names() -> Rule {
    // Approvals name manual actions by name alone, so names are unique plan-wide.
    // No `g.pre + g.post`: the apiserver types each list by its schema path, and CEL has
    // no `+` for two different list types, so every pair of lists is compared on its own.
    let disjoint = |x: &str, y: &str| format!("{x}.all(a, {y}.all(b, a.name != b.name))");
    Rule::new(format!(
        "self.groups.all(g, {} && self.groups.all(h, h.name == g.name || ({} && {} && {} && {})))",
        disjoint("g.pre", "g.post"),
        disjoint("g.pre", "h.pre"),
        disjoint("g.pre", "h.post"),
        disjoint("g.post", "h.pre"),
        disjoint("g.post", "h.post"),
    ))
    .message(Message::Message(
        "spec.groups: action names must be unique across the whole plan (pre and post of every group), because approvals name actions alone".into(),
    ))
    .field_path(".groups")
    .reason(Reason::FieldValueInvalid)
}

/// A set of VMs that recover together, with what runs around them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryGroup {
    #[x_kube(validation = rules::dns_label("spec.groups[].name"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// ProtectedVM names, in this namespace.
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(min = 1, max = 5000), inner(length(max = 253)))]
    pub vms: Vec<String>,
    /// Groups that must be ready, with their post actions done, before this one starts.
    /// Left out, the previous group; `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(max = 32), inner(length(max = 63)))]
    pub depends_on: Option<Vec<String>>,
    /// What "up" means for the group's VMs.
    #[serde(default)]
    pub readiness: Readiness,
    /// Actions before the group's VMs start.
    #[serde(default)]
    #[x_kube(validation = rules::unique_names("spec.groups[].pre", "action"))]
    #[schemars(length(max = 8))]
    pub pre: Vec<Action>,
    /// Actions after the group's VMs are ready.
    #[serde(default)]
    #[x_kube(validation = rules::unique_names("spec.groups[].post", "action"))]
    #[schemars(length(max = 8))]
    pub post: Vec<Action>,
}

/// When a recovered VM counts as up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// The VM reports `status.ready`.
    #[serde(default = "yes")]
    pub vm_ready: bool,
    /// The guest agent is connected (the VMI's `AgentConnected` condition).
    #[serde(default)]
    pub guest_agent: bool,
    /// Probes against the recovered IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub probes: Vec<Probe>,
    /// How long to wait for readiness before the group fails.
    #[serde(default = "default_readiness_timeout")]
    #[x_kube(validation = rules::duration("spec.groups[].readiness.timeout"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            vm_ready: true,
            guest_agent: false,
            probes: Vec::new(),
            timeout: default_readiness_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_readiness_timeout() -> String {
    "10m".into()
}

/// A TCP or HTTP probe against a recovered VM's address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tcp) != has(self.http)").message(Message::Message("a probe sets exactly one of tcp or http".into())))]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// The NIC whose recovered address is probed. Left out, the first NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub nic: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpProbe {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    #[serde(default = "default_http_path")]
    #[schemars(length(max = 1024))]
    pub path: String,
    #[serde(default)]
    pub scheme: HttpScheme,
}

fn default_http_path() -> String {
    "/".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpScheme {
    #[default]
    Http,
    Https,
}

/// A step around a group: a script (a Job or a webhook) or a manual gate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.script) != has(self.manual)").message(Message::Message("an action sets exactly one of script or manual".into())).reason(Reason::FieldValueInvalid))]
pub struct Action {
    /// Unique within the plan; approvals name manual actions by it.
    #[x_kube(validation = rules::dns_label("action name"))]
    #[schemars(length(max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualAction>,
    /// What a failure, or a manual action's timeout, does to the run.
    #[serde(default)]
    pub on_error: OnError,
    /// The failover kinds this action runs in. Left out, all of them but ChangeRecoveryPoint,
    /// which runs only the actions that list it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(max = 5))]
    pub when: Vec<FailoverKind>,
}

impl Action {
    /// Whether the action runs in a run of this kind.
    pub fn runs_in(&self, action: RunAction) -> bool {
        self.when.is_empty() || self.when.iter().any(|k| k.matches(action))
    }
}

/// A Job on one of the clusters, or a webhook call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.job) != has(self.webhook)").message(Message::Message("a script sets exactly one of job or webhook".into())).reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("has(self.job) || !has(self.site)").message(Message::Message("script.site applies to job scripts only; remove it from webhook scripts".into())).reason(Reason::FieldValueInvalid))]
pub struct Script {
    /// A Job run to completion. It receives the run's context as environment and as a JSON file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::embedded_object")]
    pub job: Option<Box<JobTemplateSpec>>,
    /// The cluster the Job runs on. Left out, the recovery site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<ScriptSite>,
    /// An HTTP POST of the run's context, signed with HMAC-SHA256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// How long the script may take in all, retries included.
    #[serde(default = "default_script_timeout")]
    #[x_kube(validation = rules::duration("script.timeout"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
}

fn default_script_timeout() -> String {
    "30m".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScriptSite {
    Primary,
    #[default]
    Recovery,
    Management,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!isURL(self.url) || url(self.url).getScheme() == 'https' || (has(self.insecureHttp) && self.insecureHttp) || url(self.url).getHostname() in ['localhost', '127.0.0.1', '::1']").message(Message::Message(WEBHOOK_HTTPS_MESSAGE.into())).reason(Reason::FieldValueInvalid))]
pub struct Webhook {
    /// An https URL; plain http only to loopback or with `insecureHttp`. Redirects are not
    /// followed.
    #[x_kube(validation = Rule::new("isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http')").message(Message::Message("webhook.url must be an absolute http or https URL".into())))]
    #[schemars(length(max = 2048))]
    pub url: String,
    /// Allows a plain http URL to a host other than loopback. The run's context and its
    /// signature then travel in clear; the plan's Valid condition says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// The key that signs each request: header `X-Coldsite-Signature` is
    /// `v1=<hex HMAC-SHA256 of "v1:<X-Coldsite-Timestamp>:<X-Coldsite-Idempotency-Key>:<body>">`.
    pub secret_ref: LocalSecretKeyRef,
    /// Timeout of one request.
    #[serde(default = "default_webhook_timeout")]
    #[x_kube(validation = rules::duration("webhook.timeout"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
}

fn default_webhook_timeout() -> String {
    "30s".into()
}

/// Why a webhook URL is refused: the schema's rule and the controller say the same.
pub const WEBHOOK_HTTPS_MESSAGE: &str = "webhook.url must use https; plain http is allowed to loopback only, or with webhook.insecureHttp: true (the run's context and signature then travel in clear)";

/// How a webhook's URL carries the run's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookTransport {
    Https,
    /// Plain http to this host: nothing leaves the machine.
    LoopbackHttp,
    /// Plain http elsewhere, allowed by `insecureHttp`.
    InsecureHttp,
    /// Not an http(s) URL, or plain http elsewhere without `insecureHttp`.
    Refused,
}

impl Webhook {
    pub fn transport(&self) -> WebhookTransport {
        let Ok(uri) = self.url.parse::<http::Uri>() else {
            return WebhookTransport::Refused;
        };
        match uri.scheme_str() {
            Some("https") if uri.host().is_some() => WebhookTransport::Https,
            Some("http") if uri.host().is_some_and(is_loopback) => WebhookTransport::LoopbackHttp,
            Some("http") if self.insecure_http && uri.host().is_some() => WebhookTransport::InsecureHttp,
            _ => WebhookTransport::Refused,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A person confirms before the plan goes on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualAction {
    /// What the person must check or do.
    #[schemars(length(min = 1, max = 4096))]
    pub instructions: String,
    /// How long to wait for approval; then `onError` decides. Left out, forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration("manual.timeout"))]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum OnError {
    /// Stop the run.
    #[default]
    Fail,
    /// Record the failure and go on.
    Continue,
}

/// Scheduled test failovers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillSchedule {
    /// A five-field cron expression, such as `0 3 * * 6` (03:00 every Saturday), in UTC.
    #[x_kube(validation = Rule::new("self.matches('^(@(hourly|daily|weekly|monthly|yearly))$|^([-0-9*/,A-Za-z]+ ){4}[-0-9*/,A-Za-z]+$')").message(Message::Message("drill.schedule must be a five-field cron expression such as '0 3 * * 6', or @daily/@weekly/@monthly".into())))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// How long a drill's test VMs are kept before cleanup.
    #[serde(default = "default_keep_for")]
    #[x_kube(validation = rules::duration("drill.keepFor"))]
    #[schemars(length(max = 32))]
    pub keep_for: String,
    /// Manual actions that drills approve by themselves, so a drill runs unattended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(max = 256), inner(length(max = 63)))]
    pub auto_approve: Vec<String>,
    /// Pause drills without removing the schedule.
    #[serde(default)]
    pub suspend: bool,
}

fn default_keep_for() -> String {
    "1h".into()
}

/// Observed state of a plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPlanStatus {
    /// `Valid` (references resolve, order is acyclic, addresses fit) and `Ready`
    /// (every VM is protected and within its RPO).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_count: Option<i32>,
    /// The worst current RPO among the plan's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rpo_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillSummary>,
    /// The newest test failover of the plan that succeeded, a drill or one started by
    /// hand: when the plan was last proven to work. Kept after the run is cleaned up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_test: Option<RunSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The latest run of a plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RunAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::recovery_run::RunPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
}

/// The latest scheduled drill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillSummary {
    pub time: Time,
    /// The RecoveryRun the drill created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `Succeeded`, `Failed` or `Cancelled`; `message` says why it did not succeed: the
    /// failed step's message, or the reason it ended before its first step.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    /// The worst RPO of the recovery points the drill used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str, insecure_http: bool) -> Webhook {
        Webhook {
            url: url.into(),
            insecure_http,
            secret_ref: LocalSecretKeyRef {
                name: "k".into(),
                key: "k".into(),
            },
            timeout: "30s".into(),
        }
    }

    #[test]
    fn plain_http_leaves_the_machine_only_with_consent() {
        use WebhookTransport::*;
        for (url, insecure, want) in [
            ("https://hooks.contoso.com/x", false, Https),
            ("http://127.0.0.1:8080/x", false, LoopbackHttp),
            ("http://localhost/x", false, LoopbackHttp),
            ("http://[::1]:9/x", false, LoopbackHttp),
            ("http://hooks.contoso.com/x", false, Refused),
            ("http://hooks.contoso.com/x", true, InsecureHttp),
            ("http://127.0.0.1.nip.io/x", false, Refused),
            ("ftp://hooks.contoso.com/x", true, Refused),
            ("hooks.contoso.com/x", true, Refused),
        ] {
            assert_eq!(hook(url, insecure).transport(), want, "{url} insecureHttp={insecure}");
        }
    }
}
