//! `RecoveryRun`: one execution of a plan, like a Job; and the step record it shares with
//! `ProtectedVM.status.lastRun`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::RunAction;
use crate::rules;

/// Annotation on a run: its deletion also removes what it left at its target for the VMs it
/// did not move (a failover or failback that failed or was cancelled half-way).
pub const DISCARD_PARTIAL: &str = "coldsite.io/discard-partial";

/// One execution of a RecoveryPlan. Its spec is fixed at creation, except `approvals` and
/// `cancel`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coldsite.io",
    version = "v1alpha1",
    kind = "RecoveryRun",
    plural = "recoveryruns",
    shortname = "rrun",
    category = "coldsite",
    namespaced,
    status = "RecoveryRunStatus",
    cel,
    printcolumn = r#"{"name":"Plan","type":"string","jsonPath":".spec.plan"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"RTO(s)","type":"integer","jsonPath":".status.rtoSeconds"}"#,
    printcolumn = r#"{"name":"Waiting For","type":"string","priority":1,"jsonPath":".status.waitingFor"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = immutable_spec())]
#[x_kube(validation = Rule::new("!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)").message(Message::Message("spec.cancel cannot be set back to false: a cancelled run stays cancelled; create a new RecoveryRun".into())).field_path(".cancel"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvals) || oldSelf.approvals.all(a, has(self.approvals) && a in self.approvals)").message(Message::Message("spec.approvals can only grow: an approval that was given cannot be taken back".into())).field_path(".approvals"))]
#[x_kube(validation = point_for_planned())]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRunSpec {
    /// The RecoveryPlan, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub plan: String,
    pub action: RunAction,
    /// `Latest`, `LatestAppConsistent`, or an RFC 3339 time: the newest point not after it.
    /// Planned actions always sync a last time and ignore older points.
    #[serde(default)]
    pub recovery_point: RecoveryPointSelector,
    /// For an unplanned Failover, try to stop the source VMs first; failure is tolerated once
    /// the source site counts as down.
    #[serde(default = "yes")]
    pub shutdown_source: bool,
    /// Declares the run's source site down: steps there do not wait for it to answer. Without
    /// it, a source that does not answer is waited for (a slow site is not a dead one) until
    /// it has been unreachable for its Site's `spec.downAfter`. Set it only when the site is
    /// known to be lost: its VMs may still run if it is merely cut off, and coldsite halts
    /// them when it answers again. `kubectl coldsite failover --force` sets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_down: bool,
    /// Names of manual actions a person has approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    #[schemars(length(max = 256), inner(length(max = 63)))]
    pub approvals: Vec<String>,
    /// Start nothing new; a TestFailover also cleans up what it created.
    #[serde(default)]
    pub cancel: bool,
}

fn yes() -> bool {
    true
}

fn immutable_spec() -> Rule {
    Rule::new(
        "self.plan == oldSelf.plan && self.action == oldSelf.action && \
         self.recoveryPoint == oldSelf.recoveryPoint && self.shutdownSource == oldSelf.shutdownSource && \
         (has(self.sourceDown) ? self.sourceDown : false) == (has(oldSelf.sourceDown) ? oldSelf.sourceDown : false)",
    )
    .message(Message::Message(
        "spec is immutable after creation except spec.approvals and spec.cancel; create a new RecoveryRun to change plan, action, recoveryPoint, shutdownSource or sourceDown".into(),
    ))
    .reason(Reason::FieldValueForbidden)
}

fn point_for_planned() -> Rule {
    Rule::new("!(self.action in ['PlannedFailover', 'Failback', 'Commit', 'Reprotect']) || self.recoveryPoint == 'Latest'")
        .message(Message::Message(
            "spec.recoveryPoint applies to TestFailover, Failover and ChangeRecoveryPoint only; PlannedFailover and Failback recover from a final sync, Commit and Reprotect use none: leave it out".into(),
        ))
        .field_path(".recoveryPoint")
        .reason(Reason::FieldValueInvalid)
}

/// Which recovery point a run restores: `Latest`, `LatestAppConsistent`, or a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RecoveryPointSelector {
    #[default]
    Latest,
    LatestAppConsistent,
    /// The newest point taken at or before this time.
    At(Time),
}

impl Serialize for RecoveryPointSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RecoveryPointSelector::Latest => s.serialize_str("Latest"),
            RecoveryPointSelector::LatestAppConsistent => s.serialize_str("LatestAppConsistent"),
            RecoveryPointSelector::At(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RecoveryPointSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.as_str() {
            "Latest" => Ok(RecoveryPointSelector::Latest),
            "LatestAppConsistent" => Ok(RecoveryPointSelector::LatestAppConsistent),
            other => serde_json::from_value::<Time>(serde_json::Value::String(other.to_owned()))
                .map(RecoveryPointSelector::At)
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "recoveryPoint {other:?} is not Latest, LatestAppConsistent or an RFC 3339 time"
                    ))
                }),
        }
    }
}

impl schemars::JsonSchema for RecoveryPointSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RecoveryPointSelector".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rule = format!(
            "self == 'Latest' || self == 'LatestAppConsistent' || self.matches('{}')",
            rules::RFC3339_RE
        );
        schemars::json_schema!({
            "type": "string",
            "maxLength": 64,
            "default": "Latest",
            "description": "Latest, LatestAppConsistent, or an RFC 3339 time such as 2026-11-26T04:00:00Z",
            "x-kubernetes-validations": [{
                "rule": rule,
                "message": "spec.recoveryPoint must be Latest, LatestAppConsistent, or an RFC 3339 time such as 2026-11-26T04:00:00Z",
                "reason": "FieldValueInvalid"
            }]
        })
    }
}

/// Where a run stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    WaitingForApproval,
    Succeeded,
    Failed,
    Cancelled,
    CleaningUp,
}

impl RunPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled)
    }
}

/// What a step does. Group steps are barriers that mark a group's progress; VM steps are
/// recorded in the ProtectedVM's `status.lastRun`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
pub enum StepKind {
    /// Group: every source VM of the group has stopped (planned actions).
    Shutdown,
    /// Group: the groups it depends on are done and its pre actions have run.
    Start,
    /// Group: every VM of the group is up.
    Ready,
    /// Group: ready, and its post actions have run.
    Done,
    /// A pre or post Job script.
    Job,
    /// A pre or post webhook.
    Webhook,
    /// A manual gate.
    Manual,
    /// VM: stop the source copy.
    PowerOff,
    /// VM: confirm the source copy is not running (unplanned failover without shutdown).
    CheckSource,
    /// VM: a last replication sync after the source stopped.
    FinalSync,
    /// VM: restore the disks from a recovery point.
    RestoreDisks,
    /// VM: create the recovered VirtualMachine, halted.
    CreateVm,
    /// VM: start the recovered copy.
    PowerOn,
    /// VM: wait until it is up, as the group's readiness says.
    VmReady,
    /// VM: discard the other recovery points (Commit).
    Commit,
    /// VM: replicate back from the active site (Reprotect).
    ReverseReplication,
    /// Remove what a test created at a site.
    Cleanup,
    /// VM: halt the recovered copy whose disks a repoint replaces (ChangeRecoveryPoint).
    Halt,
}

impl StepKind {
    /// Steps that only mark progress and complete as soon as their dependencies do.
    pub fn is_barrier(self) -> bool {
        matches!(
            self,
            StepKind::Shutdown | StepKind::Start | StepKind::Ready | StepKind::Done
        )
    }
}

/// Where a step stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum StepState {
    #[default]
    Pending,
    Running,
    WaitingForApproval,
    Succeeded,
    /// Failed, and `onError: Continue` let the run go on.
    FailedContinued,
    Failed,
    /// Not run: its action's `when` excludes this run, or the run was cancelled first.
    Skipped,
}

impl StepState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::FailedContinued | StepState::Failed | StepState::Skipped
        )
    }

    /// Terminal in a way that lets successors go on.
    pub fn lets_successors_run(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::FailedContinued | StepState::Skipped
        )
    }
}

/// One step's record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Stable id such as `mailbox/post/mount-databases`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<StepKind>,
    /// What it acts on: an action name, a VM, a site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub state: StepState,
    #[serde(default)]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The recovery point the step used or produced (restore, final sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<Time>,
    /// What that point is consistent with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point_consistency: Option<crate::protected_vm::Consistency>,
    /// Whether that point holds every disk of the VM from one instant (a group snapshot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovery_point_one_instant: bool,
    /// When the next attempt may start, after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A group's VMs counted by state, as a Job counts its pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupProgress {
    pub name: String,
    pub total: i32,
    #[serde(default)]
    pub pending: i32,
    #[serde(default)]
    pub running: i32,
    #[serde(default)]
    pub succeeded: i32,
    #[serde(default)]
    pub failed: i32,
}

/// An approval as the controller saw it arrive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    pub action: String,
    pub observed_at: Time,
    /// The field manager that added the approval, when it could be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Observed state of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// A digest of the plan's spec when the run started; the run holds while the plan differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// The site VMs are recovered from, and the one they are recovered to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Seconds from start until the last group was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    /// Steps done of all, such as `7/12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Manual actions now waiting for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Group- and action-level steps. Per-VM steps live in each ProtectedVM's `status.lastRun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupProgress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
