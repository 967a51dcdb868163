//! The `Fabric` trait: the one seam between the engine and the platform. Every call is an
//! idempotent "ensure": it starts the work if it has not started, and reports how it stands.
//! Objects are named from the run's UID, so a call repeated after a crash finds what the
//! first one made instead of making it again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::RunAction;

use crate::model::{ActionModel, Direction, ReadinessModel, SiteModel, VmModel};
use crate::reip::NicPlan;

/// The run a call belongs to; its UID names and labels everything the run creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub action: RunAction,
    pub direction: Direction,
}

/// A point in time the disks of a VM can be restored to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryPoint {
    pub time: DateTime<Utc>,
    pub app_consistent: bool,
    /// Every disk of the VM from one instant (cut by a group snapshot), not each disk's own.
    pub one_instant: bool,
}

/// How an ensure call stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress<T> {
    Done(T),
    /// Still going; ask again after about this long.
    InProgress {
        retry_after: Duration,
    },
}

/// What kind of failure a call met, which decides whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth another attempt: a conflict, a timeout, a 5xx.
    Transient,
    /// The site's API cannot be reached.
    Unreachable,
    /// Retrying cannot help: the VM failed to boot, a Job failed for good.
    Permanent,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FabricError {
    pub kind: FailureKind,
    pub message: String,
}

impl FabricError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Unreachable,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind != FailureKind::Permanent
    }
}

pub type FabricResult<T> = Result<Progress<T>, FabricError>;

/// One NIC of a recovered VM: where it attaches and how it is addressed.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveredNic {
    pub name: String,
    pub mac: Option<String>,
    pub network: String,
    pub plan: NicPlan,
}

/// Everything needed to bring one VM up at the target site.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery<'a> {
    pub run: &'a RunRef,
    pub vm: &'a VmModel,
    pub source: &'a SiteModel,
    pub target: &'a SiteModel,
    /// Where the copy is created: the VM's namespace, or the site's test namespace.
    pub namespace: &'a str,
    /// A test copy: on the isolated test network, removed when the run is deleted.
    pub test: bool,
    pub nics: &'a [RecoveredNic],
    /// cloud-init network-config v2 for the recovered copy.
    pub network_data: &'a str,
}

/// The parts of a [`Recovery`] computed once per run and VM.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveredVm {
    pub namespace: String,
    pub nics: Vec<RecoveredNic>,
    pub network_data: String,
}

/// Where a script runs, resolved to a site or the management cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptLocation<'a> {
    Site(&'a SiteModel),
    Management,
}

/// A Job or webhook action to run once.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptRequest<'a> {
    pub run: &'a RunRef,
    pub step_id: &'a str,
    pub action: &'a ActionModel,
    pub location: ScriptLocation<'a>,
    /// Sent with webhooks and set on Jobs, so a repeat has no second effect.
    pub idempotency_key: String,
    /// The context scripts receive, but for the VMs: plan, run, action, group.
    pub context: serde_json::Value,
    /// The VMs with their recovered addresses, shared by every script of the run.
    pub vms: &'a serde_json::Value,
}

impl ScriptRequest<'_> {
    /// The whole context, as a Job's file and a webhook's body carry it.
    pub fn context_json(&self) -> serde_json::Value {
        let mut c = self.context.clone();
        c["vms"] = self.vms.clone();
        c
    }
}

/// Replication of one VM as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationState {
    pub established: bool,
    pub last_sync: Option<DateTime<Utc>>,
    /// Recovery points held at the target, oldest first.
    pub points: Vec<RecoveryPoint>,
    pub bytes_transferred: Option<i64>,
    /// While a disk has never synced: what the platform reports is in the way.
    pub waiting: Vec<String>,
    /// Some disk is in the middle of an app-consistent sync (its manual triggers are set),
    /// which must be seen through even if the VM no longer asks for such syncs.
    pub app_sync_under_way: bool,
    /// A disk's newest copy at the target is being cut by the storage, after a sync that
    /// ended then (the latest such disk's): it becomes a point soon, and nothing announces
    /// when.
    pub point_cut_since: Option<DateTime<Utc>>,
}

/// The platform: KubeVirt, VolSync and CSI snapshots at each site, plus script runners.
#[allow(async_fn_in_trait)]
pub trait Fabric {
    /// Replication from the active site of `direction` to the other, with retention.
    async fn ensure_replication(
        &self,
        vm: &VmModel,
        direction: Direction,
        primary: &SiteModel,
        recovery: &SiteModel,
    ) -> Result<ReplicationState, FabricError>;

    /// Recovery points held for a VM at the target of `direction`, oldest first.
    async fn recovery_points(&self, vm: &VmModel, direction: Direction) -> Result<Vec<RecoveryPoint>, FabricError>;

    /// Stops a VM: `runStrategy: Halted`, done when no instance runs.
    async fn power_off(&self, run: &RunRef, site: &SiteModel, vm: &VmModel) -> FabricResult<()>;

    /// Done when the VM is not running at the site; a permanent failure when it is.
    async fn check_stopped(&self, site: &SiteModel, vm: &VmModel) -> FabricResult<()>;

    /// A manual sync after the source stopped; done with the point it produced.
    async fn final_sync(&self, run: &RunRef, vm: &VmModel, after: DateTime<Utc>) -> FabricResult<RecoveryPoint>;

    /// PVCs restored from the point's snapshots. Done with the point actually used, which is
    /// the one an earlier call chose if there was one.
    async fn restore_disks(&self, req: &Recovery<'_>, point: &RecoveryPoint) -> FabricResult<RecoveryPoint>;

    /// When the point this run began to restore the VM's disks from was taken, once a restore
    /// call began: the point it is fixed to.
    async fn restored_point(&self, req: &Recovery<'_>) -> Result<Option<DateTime<Utc>>, FabricError>;

    /// The recovered VirtualMachine, created halted, with mapped networks and addresses.
    async fn create_vm(&self, req: &Recovery<'_>) -> FabricResult<()>;

    async fn power_on(&self, req: &Recovery<'_>) -> FabricResult<()>;

    /// Done when the VM meets the readiness rules; in progress until then.
    async fn vm_ready(&self, req: &Recovery<'_>, readiness: &ReadinessModel) -> FabricResult<()>;

    /// Runs a Job or calls a webhook; done when it succeeded.
    async fn run_script(&self, req: &ScriptRequest<'_>) -> FabricResult<()>;

    /// Keeps the point in use and discards the others.
    async fn commit(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()>;

    /// Replication from the now-active site back to the other, reusing the old disks.
    async fn reverse_replication(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()>;

    /// Removes everything labelled with the run's UID at a site.
    async fn delete_test_resources(&self, run: &RunRef, site: &SiteModel) -> FabricResult<()>;
}
