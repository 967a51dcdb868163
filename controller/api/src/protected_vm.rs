//! `ProtectedVM`: one KubeVirt VM under protection, its replication and its recovery overrides.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::RunAction;
use crate::rules;

/// A VirtualMachine at the primary site whose disks replicate to the recovery site.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coldsite.io",
    version = "v1alpha1",
    kind = "ProtectedVM",
    plural = "protectedvms",
    shortname = "pvm",
    category = "coldsite",
    namespaced,
    status = "ProtectedVMStatus",
    cel,
    printcolumn = r#"{"name":"VM","type":"string","jsonPath":".spec.vm.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeSite"}"#,
    printcolumn = r#"{"name":"RPO","type":"string","jsonPath":".spec.replication.rpo"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.replication.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.replication.health"}"#,
    printcolumn = r#"{"name":"Points","type":"integer","priority":1,"jsonPath":".status.recoveryPoints.count"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = rules::distinct_sites("primarySite", "recoverySite"))]
#[serde(rename_all = "camelCase")]
pub struct ProtectedVMSpec {
    /// The VirtualMachine at the primary site.
    pub vm: VmRef,
    /// The Site where the VM runs today.
    #[schemars(length(min = 1, max = 253))]
    pub primary_site: String,
    /// The Site where it is recovered.
    #[schemars(length(min = 1, max = 253))]
    pub recovery_site: String,
    /// The NetworkMapping, in this namespace, from the primary to the recovery site.
    #[schemars(length(min = 1, max = 253))]
    pub network_mapping: String,
    /// How often and how long recovery points are taken and kept.
    #[serde(default)]
    pub replication: ReplicationPolicy,
    /// Overrides for the recovered copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryOverrides>,
}

/// A VirtualMachine by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmRef {
    /// Namespace of the VM at the primary site. Left out, the ProtectedVM's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::dns_label("spec.vm.namespace"))]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Name of the VM.
    #[x_kube(validation = rules::dns_label("spec.vm.name"))]
    #[schemars(length(max = 63))]
    pub name: String,
}

/// Replication schedule and retention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = retention_covers_rpo())]
#[x_kube(validation = rpo_at_least_a_minute())]
pub struct ReplicationPolicy {
    /// The most data the business accepts to lose, such as `15m`. The sync schedule follows from it.
    #[serde(default = "default_rpo")]
    #[x_kube(validation = rules::duration("spec.replication.rpo"))]
    #[schemars(length(max = 32))]
    pub rpo: String,
    /// How long recovery points are kept, such as `24h`. At least `rpo`.
    #[serde(default = "default_retention")]
    #[x_kube(validation = rules::duration("spec.replication.retention"))]
    #[schemars(length(max = 32))]
    pub retention: String,
    /// How often a sync is made application-consistent by freezing the guest filesystems
    /// through the guest agent. Left out, no sync freezes the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration("spec.replication.appConsistentInterval"))]
    #[schemars(length(max = 32))]
    pub app_consistent_interval: Option<String>,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        Self {
            rpo: default_rpo(),
            retention: default_retention(),
            app_consistent_interval: None,
        }
    }
}

fn default_rpo() -> String {
    "15m".into()
}

fn default_retention() -> String {
    "24h".into()
}

/// Both durations parse before they are compared, so a bad one reports only its own error.
fn both_durations(a: &str, b: &str) -> String {
    let re = rules::DURATION_RE;
    format!("!self.{a}.matches('{re}') || !self.{b}.matches('{re}')")
}

fn retention_covers_rpo() -> Rule {
    Rule::new(format!(
        "{} || duration(self.retention) >= duration(self.rpo)",
        both_durations("rpo", "retention")
    ))
    .message(Message::Message(
        "spec.replication.retention must be at least spec.replication.rpo, or no recovery point would be kept long enough to meet the RPO".into(),
    ))
    .field_path(".retention")
    .reason(Reason::FieldValueInvalid)
}

fn rpo_at_least_a_minute() -> Rule {
    Rule::new(format!(
        "!self.rpo.matches('{}') || duration(self.rpo) >= duration('1m')",
        rules::DURATION_RE
    ))
    .message(Message::Message(
        "spec.replication.rpo must be at least 1m: replication is scheduled by the minute".into(),
    ))
    .field_path(".rpo")
    .reason(Reason::FieldValueInvalid)
}

/// What changes on the recovered copy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryOverrides {
    /// Static addresses per NIC. They win over the mapping's subnet rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = rules::unique_names("spec.recovery.nics", "NIC"))]
    #[schemars(length(max = 16))]
    pub nics: Vec<NicOverride>,
    /// CPU cores of the recovered VM. Left out, as at the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub cpu: Option<u32>,
    /// Memory of the recovered VM, such as `8Gi`. Left out, as at the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::memory_quantity("spec.recovery.memory"))]
    pub memory: Option<Quantity>,
}

/// A static address for one NIC of the recovered VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = gateway_in_ip_subnet("ip", "gateway"))]
#[x_kube(validation = gateway_in_ip_subnet("testIp", "testGateway"))]
pub struct NicOverride {
    /// The interface name, as in the VM's `spec.template.spec.domain.devices.interfaces`.
    #[x_kube(validation = rules::dns_label("spec.recovery.nics[].name"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// The address at the recovery site with its prefix, such as `10.50.1.25/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::host_cidr("spec.recovery.nics[].ip"))]
    #[schemars(length(max = 64))]
    pub ip: Option<String>,
    /// The default gateway that goes with `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::ip("spec.recovery.nics[].gateway"))]
    #[schemars(length(max = 64))]
    pub gateway: Option<String>,
    /// The address used in test failovers, on the test network, such as `192.168.100.25/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::host_cidr("spec.recovery.nics[].testIp"))]
    #[schemars(length(max = 64))]
    pub test_ip: Option<String>,
    /// The default gateway that goes with `testIp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::ip("spec.recovery.nics[].testGateway"))]
    #[schemars(length(max = 64))]
    pub test_gateway: Option<String>,
}

fn gateway_in_ip_subnet(ip: &str, gateway: &str) -> Rule {
    Rule::new(format!(
        "!has(self.{gateway}) || !has(self.{ip}) || !isCIDR(self.{ip}) || !isIP(self.{gateway}) || \
         cidr(self.{ip}).masked().containsIP(self.{gateway})"
    ))
    .message(Message::Message(format!(
        "spec.recovery.nics[].{gateway} must lie inside the subnet of {ip}"
    )))
    .field_path(format!(".{gateway}"))
    .reason(Reason::FieldValueInvalid)
}

/// Where a protected VM stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ProtectionPhase {
    /// Replication is being set up.
    #[default]
    Enabling,
    /// Replicating to the recovery site.
    Protected,
    /// A failover is bringing the VM up at the other site.
    FailingOver,
    /// Running at the recovery site; replication is paused.
    FailedOver,
    /// The failover was committed; other recovery points are gone.
    Committed,
    /// Replication is being reversed.
    Reprotecting,
    /// Coming back to the original primary.
    FailingBack,
    /// Protection cannot proceed; see the conditions.
    Error,
}

/// Which way the disks replicate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ReplicationDirection {
    /// From `primarySite` to `recoverySite`.
    #[default]
    PrimaryToRecovery,
    /// From `recoverySite` back to `primarySite`, after a reprotect.
    RecoveryToPrimary,
    /// Not replicating, as after a failover until reprotect.
    Paused,
}

/// How replication is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ReplicationHealth {
    #[default]
    Unknown,
    /// Syncs complete on schedule.
    Healthy,
    /// Syncs complete but late, or some disks lag.
    Degraded,
    /// No sync completed within the RPO.
    Stalled,
    /// Replication is paused on purpose.
    Paused,
}

/// Observed state of a protected VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedVMStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProtectionPhase>,
    /// The Site where the VM runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_direction: Option<ReplicationDirection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_points: Option<RecoveryPointsStatus>,
    /// This VM's part in the latest RecoveryRun that included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<VmRunStatus>,
    /// The UID of the last finished run whose outcome `phase` and `activeSite` reflect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_run: Option<String>,
    /// Where the VM stands in the disaster-recovery cycle while `phase` shows something else:
    /// a run that holds it (where it stays if the run does not complete for it), or `Error`
    /// while its spec is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resting_phase: Option<ProtectionPhase>,
    /// `Ready`, `Replicating`, `RpoMet`, and `Fenced` (the copy at the other site is halted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Replication as last observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    pub health: ReplicationHealth,
    /// The oldest of the disks' last completed syncs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Seconds of data that would be lost if the primary failed, as of the last status write:
    /// written with the status's other changes (a sync, a point, health, a condition), not as
    /// it ages. The `Last Sync` printer column (the age of `lastSyncTime`) and the metric
    /// `coldsite_vm_rpo_seconds` show it live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_rpo_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_transferred: Option<i64>,
}

/// Recovery points held at the recovery site.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPointsStatus {
    pub count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_app_consistent: Option<Time>,
    /// The newest points, newest first, at most [`LISTED_POINTS`]: what `kubectl coldsite
    /// points` lists and what a run's `recoveryPoint` chooses from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<PointStatus>,
}

/// How many points `status.recoveryPoints.points` lists: a day of 15-minute points, and
/// then some, while the status stays a few KiB.
pub const LISTED_POINTS: usize = 120;

/// One recovery point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointStatus {
    /// When its data was taken (the end of its sync; for a group snapshot's cut, the cut).
    pub time: Time,
    pub consistency: Consistency,
    /// Every disk of the VM from one instant (a group snapshot cut them together), not each
    /// disk at its own moment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_instant: bool,
}

/// What a recovery point is consistent with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Consistency {
    /// As if the power had failed: what each disk held at its snapshot.
    Crash,
    /// Cut with the guest's filesystems frozen through its agent, every disk within one freeze.
    App,
}

impl Consistency {
    pub fn of(app_consistent: bool) -> Self {
        if app_consistent { Self::App } else { Self::Crash }
    }

    pub fn is_app(self) -> bool {
        self == Self::App
    }

    /// The word `kubectl coldsite` shows.
    pub fn word(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::App => "app",
        }
    }

    /// [`Self::word`], with `group` when every disk is from one instant.
    pub fn words(self, one_instant: bool) -> &'static str {
        match (self, one_instant) {
            (Self::Crash, false) => "crash",
            (Self::App, false) => "app",
            (Self::Crash, true) => "crash, group",
            (Self::App, true) => "app, group",
        }
    }
}

/// A VM's progress in one run. It lives here, not in the run, so the run stays small.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmRunStatus {
    /// The RecoveryRun's name.
    pub run: String,
    /// The RecoveryRun's UID, so a rerun of the same name is told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RunAction>,
    /// How the run ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::recovery_run::RunPhase>,
    /// The recovery point actually used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<Time>,
    /// What that point is consistent with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point_consistency: Option<Consistency>,
    /// Whether that point holds every disk of the VM from one instant (a group snapshot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovery_point_one_instant: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::recovery_run::StepStatus>,
    /// A repoint: the point the VM ran on before it, which the run replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_point: Option<ReplacedPoint>,
}

/// The recovery point a repoint replaced, and the run that had restored it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedPoint {
    pub run: String,
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

impl VmRunStatus {
    /// The point a VM runs on after this run, as a repoint that follows it replaces it: the
    /// one this run restored, or else the one it found (a repoint that stopped before
    /// restoring).
    pub fn point_in_use(&self) -> Option<ReplacedPoint> {
        match &self.recovery_point {
            Some(time) => Some(ReplacedPoint {
                run: self.run.clone(),
                time: time.clone(),
                consistency: self.recovery_point_consistency,
            }),
            None => self.replaced_point.clone(),
        }
    }
}
