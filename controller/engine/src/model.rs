//! The domain model: a recovery plan with everything it references resolved, checked and
//! translated into plain data the planner and executor work on.

use std::collections::BTreeMap;
use std::time::Duration;

use coldsite_api::common::LocalSecretKeyRef;
use coldsite_api::recovery_plan::{OnError, ScriptSite};
use coldsite_api::site::PodSecurityLevel;
pub use coldsite_api::site::SiteReplication;
use coldsite_api::{FailoverKind, RunAction};
use k8s_openapi::api::batch::v1::JobTemplateSpec;

use crate::reip::NicPlan;

/// Which way a run moves VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    /// From the plan's primary site to its recovery site.
    Forward,
    /// From the recovery site back to the primary site (failback).
    Reverse,
}

/// A site as the engine needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteModel {
    pub name: String,
    /// The Site's shared test namespace, if it sets one.
    pub test_namespace: Option<String>,
    pub storage_class: Option<String>,
    pub snapshot_class: Option<String>,
    /// The VolumeGroupSnapshotClass that cuts a VM's disks at one instant here, if any.
    pub group_snapshot_class: Option<String>,
    /// How replication into the site is reached from the other site.
    pub replication: SiteReplication,
    /// The profile script Jobs run under there.
    pub script_pod_security: PodSecurityLevel,
}

impl SiteModel {
    /// Where the test copies of management namespace `namespace`'s runs go here.
    pub fn test_namespace_for(&self, namespace: &str) -> String {
        self.test_namespace
            .clone()
            .unwrap_or_else(|| crate::names::test_namespace(namespace))
    }

    /// The model of a Site; a Site that does not exist (yet) gets the defaults.
    pub fn of(name: &str, site: Option<&coldsite_api::Site>) -> Self {
        let storage = site.and_then(|s| s.spec.storage.as_ref());
        Self {
            name: name.to_owned(),
            test_namespace: site.and_then(|s| s.spec.test_namespace.clone()),
            storage_class: storage.and_then(|s| s.storage_class_name.clone()),
            snapshot_class: storage.and_then(|s| s.volume_snapshot_class_name.clone()),
            group_snapshot_class: storage.and_then(|s| s.volume_group_snapshot_class_name.clone()),
            replication: site.and_then(|s| s.spec.replication.clone()).unwrap_or_default(),
            script_pod_security: site.map(|s| s.spec.script_pod_security).unwrap_or_default(),
        }
    }
}

/// One NIC of a protected VM and where it lands on each side.
#[derive(Clone, Debug, PartialEq)]
pub struct NicModel {
    pub name: String,
    pub mac: Option<String>,
    /// The KubeVirt network at the primary site.
    pub source_network: String,
    /// The network at the recovery site.
    pub target_network: String,
    /// The isolated network test failovers use at the recovery site.
    pub test_network: Option<String>,
    /// Addressing at the recovery site.
    pub recovered: NicPlan,
    /// Addressing in a test failover.
    pub test: NicPlan,
    /// Addressing back at the primary site, after failback.
    pub returned: NicPlan,
}

/// A protected VM with its source VM and policies.
#[derive(Clone, Debug, PartialEq)]
pub struct VmModel {
    /// The ProtectedVM's name, which step ids use.
    pub name: String,
    pub namespace: String,
    /// The VirtualMachine at the primary site.
    pub vm_namespace: String,
    pub vm_name: String,
    /// PVC claim names of the VM's disks at the primary site.
    pub disks: Vec<String>,
    pub nics: Vec<NicModel>,
    pub rpo: Duration,
    pub retention: Duration,
    pub app_consistent_interval: Option<Duration>,
    pub cpu: Option<u32>,
    pub memory: Option<String>,
    /// The ProtectedVMs of the plan's consistency group the VM is cut with, by name, sorted,
    /// its own among them; empty when it is in none. The first drives the group's rounds.
    pub cut_with: Vec<String>,
}

impl VmModel {
    /// Whether the VM is cut with others (see [`VmModel::cut_with`]).
    pub fn in_consistency_group(&self) -> bool {
        !self.cut_with.is_empty()
    }

    /// The ProtectedVM whose reconcile drives the rounds the VM is cut in: the first of its
    /// consistency group, or itself.
    pub fn round_driver(&self) -> &str {
        self.cut_with.first().map_or(self.name.as_str(), String::as_str)
    }
}

/// VMs of a plan cut at one instant and recovered to it (`spec.consistencyGroups`).
#[derive(Clone, Debug, PartialEq)]
pub struct ConsistencyGroupModel {
    pub name: String,
    /// Indices into [`PlanModel::vms`].
    pub vms: Vec<usize>,
}

/// What runs before or after a group.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    Job {
        site: ScriptSite,
        template: Box<JobTemplateSpec>,
    },
    Webhook {
        url: String,
        secret: LocalSecretKeyRef,
        request_timeout: Duration,
    },
    Manual {
        instructions: String,
    },
}

/// An action with its policies.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionModel {
    pub name: String,
    pub kind: ActionKind,
    pub on_error: OnError,
    pub when: Vec<FailoverKind>,
    /// Scripts: the whole budget, retries included. Manual: the wait for approval, if any.
    pub timeout: Option<Duration>,
}

impl ActionModel {
    pub fn runs_in(&self, action: RunAction) -> bool {
        // A repoint keeps the VMs' identity: what ran at failover does not run again unasked.
        let by_default = action != RunAction::ChangeRecoveryPoint;
        (by_default && self.when.is_empty()) || self.when.iter().any(|k| k.matches(action))
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.kind, ActionKind::Manual { .. })
    }
}

/// A readiness probe against a recovered address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeModel {
    Tcp {
        port: u16,
        nic: Option<String>,
    },
    Http {
        port: u16,
        path: String,
        https: bool,
        nic: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadinessModel {
    pub vm_ready: bool,
    pub guest_agent: bool,
    pub probes: Vec<ProbeModel>,
    pub timeout: Duration,
}

/// A group of VMs that recover together.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupModel {
    pub name: String,
    /// Indices into [`PlanModel::vms`].
    pub vms: Vec<usize>,
    /// Indices into [`PlanModel::groups`].
    pub depends_on: Vec<usize>,
    pub readiness: ReadinessModel,
    pub pre: Vec<ActionModel>,
    pub post: Vec<ActionModel>,
}

/// A validated plan: every reference resolved, order acyclic, addresses unique.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanModel {
    pub namespace: String,
    pub name: String,
    pub primary: SiteModel,
    pub recovery: SiteModel,
    pub groups: Vec<GroupModel>,
    pub vms: Vec<VmModel>,
    pub consistency_groups: Vec<ConsistencyGroupModel>,
    /// Drill settings, if any.
    pub auto_approve: Vec<String>,
}

impl PlanModel {
    /// The groups in an order where every group comes after those it depends on.
    pub fn startup_order(&self) -> Vec<usize> {
        // Validation guarantees acyclicity; Kahn's algorithm keeps plan order among peers.
        let n = self.groups.len();
        let mut indegree: Vec<usize> = self.groups.iter().map(|g| g.depends_on.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, g) in self.groups.iter().enumerate() {
            for &d in &g.depends_on {
                dependents[d].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        order
    }

    pub fn vm_index(&self) -> BTreeMap<&str, usize> {
        self.vms.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect()
    }

    /// The site VMs move from and the site they move to, for a direction.
    pub fn sites(&self, direction: Direction) -> (&SiteModel, &SiteModel) {
        match direction {
            Direction::Forward => (&self.primary, &self.recovery),
            Direction::Reverse => (&self.recovery, &self.primary),
        }
    }
}

/// Parses a Go duration such as `15m` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = text.parse().map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    if d.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(d.into())
}
