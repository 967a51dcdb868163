//! Types that several kinds share: references, the failover action kinds, conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A key in a Secret, in a namespace of the management cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret.
    #[x_kube(validation = crate::rules::dns_label("namespace"))]
    #[schemars(length(max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// A key in a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What a RecoveryRun does. Actions in a plan use the first four in `when`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
pub enum RunAction {
    /// Recover copies onto the isolated test network; the source keeps running.
    TestFailover,
    /// Stop the source, sync a last time, recover with no data loss.
    PlannedFailover,
    /// Recover from a recovery point while the source is down or unreachable.
    Failover,
    /// Make a failover permanent and discard the other recovery points.
    Commit,
    /// Replicate back from the active site, reusing the old disks.
    Reprotect,
    /// A planned failover in the reverse direction.
    Failback,
    /// Before Commit: swap the failed-over VMs' disks for another recovery point. Each VM is
    /// halted at the recovery site, restored from the point and started again, in group order.
    ChangeRecoveryPoint,
}

impl RunAction {
    pub const ALL: [RunAction; 7] = [
        RunAction::TestFailover,
        RunAction::PlannedFailover,
        RunAction::Failover,
        RunAction::Commit,
        RunAction::Reprotect,
        RunAction::Failback,
        RunAction::ChangeRecoveryPoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunAction::TestFailover => "TestFailover",
            RunAction::PlannedFailover => "PlannedFailover",
            RunAction::Failover => "Failover",
            RunAction::Commit => "Commit",
            RunAction::Reprotect => "Reprotect",
            RunAction::Failback => "Failback",
            RunAction::ChangeRecoveryPoint => "ChangeRecoveryPoint",
        }
    }

    /// Planned actions stop the source and sync a last time: no data loss.
    pub fn is_planned(self) -> bool {
        matches!(self, RunAction::PlannedFailover | RunAction::Failback)
    }

    /// Actions that bring VMs up at the target site.
    pub fn recovers_vms(self) -> bool {
        matches!(
            self,
            RunAction::TestFailover
                | RunAction::PlannedFailover
                | RunAction::Failover
                | RunAction::Failback
                | RunAction::ChangeRecoveryPoint
        )
    }
}

impl std::fmt::Display for RunAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunAction::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let all: Vec<_> = RunAction::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown action {s:?}; expected one of {}", all.join(", "))
            })
    }
}

/// The failover kinds an action may be limited to with `when`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum FailoverKind {
    TestFailover,
    Failover,
    PlannedFailover,
    Failback,
    /// Only when listed: a repoint runs no action unless its `when` names it.
    ChangeRecoveryPoint,
}

impl FailoverKind {
    pub fn matches(self, action: RunAction) -> bool {
        matches!(
            (self, action),
            (FailoverKind::TestFailover, RunAction::TestFailover)
                | (FailoverKind::Failover, RunAction::Failover)
                | (FailoverKind::PlannedFailover, RunAction::PlannedFailover)
                | (FailoverKind::Failback, RunAction::Failback)
                | (FailoverKind::ChangeRecoveryPoint, RunAction::ChangeRecoveryPoint)
        )
    }
}

/// Condition types and reasons the controller writes.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const VALID: &str = "Valid";
    pub const REACHABLE: &str = "Reachable";
    pub const REPLICATING: &str = "Replicating";
    pub const RPO_MET: &str = "RpoMet";
    pub const SUCCEEDED: &str = "Succeeded";
    /// The copies that must not run (at the site the VM does not run at; while a run moves
    /// it, what that run did not start) are confirmed halted.
    pub const FENCED: &str = "Fenced";
    /// With `appConsistentInterval`: the latest app-consistent sync froze the guest for
    /// every disk's snapshot.
    pub const APP_CONSISTENT: &str = "AppConsistent";
    /// For a VM with more than one disk: its disks are cut at one instant (a group snapshot
    /// at the source), so every point holds them consistent with each other.
    pub const DISKS_CONSISTENT: &str = "DisksConsistent";
}

/// Find a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of that type is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}
