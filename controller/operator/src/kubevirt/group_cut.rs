//! Multi-disk and multi-VM consistency: every disk of a VM with more than one disk, or of
//! every VM of a plan's consistency group, cut at one instant by a VolumeGroupSnapshot at the
//! source, when the source Site names a `volumeGroupSnapshotClassName`. A consistency group's
//! rounds are driven by its first member by name (its [`CutSet::driver`]): the others take no
//! part but to replicate what the rounds cut. VolSync cuts each source's snapshot when that source's
//! sync starts, so it cannot give one instant; coldsite cuts the group, restores each member
//! into the disk's cut claim, and has VolSync copy that claim as it is (`copyMethod: Direct`).
//!
//! A round makes one point of every disk:
//! 1. it begins when due (by the RPO's sync interval, or `appConsistentInterval` for an app
//!    round): the first disk's ReplicationDestination records its start ([`ROUND`]); its tags
//!    are `grp<start>-<resourceVersion>`, so no earlier round's tag is mistaken for its own;
//! 2. every destination is tagged, as in [the final sync](super::final_sync);
//! 3. once every destination listens: the VM's claims are labelled [`MEMBER_OF`], the guest
//!    is frozen for an app round, and the VolumeGroupSnapshot selecting them is created;
//! 4. once it is ready: the guest is thawed, each member is restored into the disk's cut claim,
//!    and every source is tagged to copy its cut claim;
//! 5. once both ends of every disk recorded their tags: each destination's image is adopted
//!    as a point at the group snapshot's creation time, named for it, so a VM point holds every
//!    disk from that instant (see [`points`](super::points)); then the cut claims and the group
//!    snapshot go.
//!
//! VolSync never syncs such a VM's disks by itself: its sources carry manual triggers only
//! (an empty trigger syncs for ever). A planned action's final sync copies the stopped VM's
//! disks themselves, which no write changes meanwhile. Everything a round needs to resume
//! lives at the sites, so a restart picks up where it stopped. A group snapshot the site
//! refuses, or that is not ready within [`CUT_WITHIN`] (a class the site lacks, a driver that
//! never reports it, as upstream's snapshot-controller can leave one), turns the round into
//! one disk by disk ([`ROUND_PER_DISK`]): the VM still gets its point, not one of one instant,
//! and the error is reported. The next round tries a group snapshot again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_engine::fabric::{FabricError, FailureKind, RecoveryPoint};
use coldsite_engine::model::{SiteModel, VmModel};
use coldsite_engine::rpo;
use serde_json::{Value, json};

use super::app_consistent::{self, AppSync, Guest, annotation};
use super::dynamic::{
    JOB, PVC, REPLICATION_DESTINATION, REPLICATION_SOURCE, SiteApi, VOLUME_GROUP_SNAPSHOT, VOLUME_SNAPSHOT, parse_time,
    str_at, time_at,
};
use super::fabric::KubeVirtFabric;
use super::final_sync::{self, Next};
use super::objects::{self, GROUP_SNAPSHOT};

/// On the first disk's ReplicationDestination: when the round under way began.
pub const ROUND: &str = "coldsite.io/group-round";
/// Beside [`ROUND`]: `app` when the round freezes the guest.
pub const ROUND_KIND: &str = "coldsite.io/group-round-kind";
/// On the first disk's ReplicationDestination: when the latest round (and the latest app
/// round) began, so a round that came to nothing is tried again an interval later, not at once.
pub const LAST_ROUND: &str = "coldsite.io/group-round-last";
pub const LAST_APP_ROUND: &str = "coldsite.io/group-round-last-app";
/// Beside [`ROUND`]: why the round's group snapshot failed; the round then copies each disk
/// on its own (VolSync's own snapshots), so the VM still gets a point, not one of one instant.
pub const ROUND_PER_DISK: &str = "coldsite.io/group-round-per-disk";
/// On a VM's claims: the VM whose group snapshot selects them.
pub const MEMBER_OF: &str = "coldsite.io/group-member-of";
/// On a group snapshot: when the guest was frozen for it.
pub const FROZEN_AT: &str = "coldsite.io/frozen-at";
/// Beside [`FROZEN_AT`]: the VirtualMachines frozen for it, comma-separated, so a run that
/// takes any of them over thaws them all.
pub const FROZEN_VMS: &str = "coldsite.io/frozen-vms";
/// On a group snapshot frozen for: `cut-inside` once the guest was thawed after the cut
/// while still frozen, `before-cut` when it was not (thawed early, by KubeVirt's backstop).
pub const THAWED: &str = "coldsite.io/thawed";
/// On a source tagged by a round: the cut it copies, when that was taken.
pub const CUT_AT: &str = "coldsite.io/cut-at";
/// How long a group snapshot may take to be ready.
pub const CUT_WITHIN: Duration = Duration::from_secs(120);
/// How long a guest stays frozen for a cut that is not there yet.
const FREEZE_AT_MOST: Duration = Duration::from_secs(30);

/// Whether the VM's disks are cut together (with its consistency group's) when replicating
/// from `source`.
pub fn applies(vm: &VmModel, source: &SiteModel) -> bool {
    (vm.disks.len() > 1 || vm.in_consistency_group()) && source.group_snapshot_class.is_some()
}

/// The VMs a round cuts together: one VM, or a consistency group's members (all in one VM
/// namespace, as validation makes sure). The first drives: its first disk's destination holds
/// the round, and its name names the group snapshot and labels the claims it selects.
pub struct CutSet<'a> {
    members: &'a [VmModel],
    /// When rounds are due: the shortest RPO and app-consistent interval of the members.
    schedule: VmModel,
}

impl<'a> CutSet<'a> {
    pub fn new(members: &'a [VmModel]) -> Option<Self> {
        let driver = members.first()?;
        let schedule = VmModel {
            rpo: members.iter().map(|m| m.rpo).min().unwrap_or(driver.rpo),
            app_consistent_interval: members.iter().filter_map(|m| m.app_consistent_interval).min(),
            ..driver.clone()
        };
        Some(Self { members, schedule })
    }

    pub fn driver(&self) -> &VmModel {
        &self.schedule
    }

    /// The VM namespace of every member.
    fn vm_namespace(&self) -> &str {
        &self.schedule.vm_namespace
    }

    /// Every disk of every member, with its member's index.
    fn disks(&self) -> impl Iterator<Item = (usize, &String)> {
        self.members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.disks.iter().map(move |d| (i, d)))
    }
}

/// The group snapshot of the round begun at `start`.
pub fn group_name(pvm: &str, start: DateTime<Utc>) -> String {
    objects::dns_name(&format!("coldsite-{pvm}-{}", start.timestamp()))
}

fn round_id(start: DateTime<Utc>) -> String {
    format!("grp{}", start.timestamp())
}

fn annotated_time(object: &Value, key: &str) -> Option<DateTime<Utc>> {
    annotation(object, key).and_then(parse_time)
}

fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    now.signed_duration_since(since).to_std().unwrap_or_default()
}

/// What kind of round is due, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    App,
    Crash,
}

/// When the latest round and the latest app round began.
#[derive(Debug, Clone, Copy, Default)]
pub struct Last {
    pub round: Option<DateTime<Utc>>,
    pub app: Option<DateTime<Utc>>,
}

impl Last {
    /// As the first disk's destination records them.
    fn of(first_destination: &Value) -> Self {
        Last {
            round: annotated_time(first_destination, LAST_ROUND),
            app: annotated_time(first_destination, LAST_APP_ROUND),
        }
    }
}

/// Pure: the round due for a VM with `points` at the target. An app round needs a first
/// point, as app syncs do.
pub fn due(vm: &VmModel, points: &[RecoveryPoint], last: Last, now: DateTime<Utc>) -> Option<Due> {
    let newest_app = points.iter().rev().find(|p| p.app_consistent).map(|p| p.time);
    if let Some(interval) = vm.app_consistent_interval
        && !points.is_empty()
        && app_consistent::due(interval, newest_app, last.app, now)
    {
        return Some(Due::App);
    }
    let newest = points.last().map(|p| p.time);
    app_consistent::due(rpo::sync_interval(vm.rpo), newest, last.round, now).then_some(Due::Crash)
}

/// One disk's replication objects as read; the source is absent until the first round.
struct Disk {
    /// The member of the cut set the disk is of.
    member: usize,
    disk: String,
    rs: Option<Value>,
    rd: Value,
    job: Option<Value>,
}

impl Disk {
    fn next(&self, run: &str) -> Next {
        // An absent source is idle: the round creates it tagged.
        let absent = json!({"metadata": {"resourceVersion": "0"}});
        final_sync::next(
            run,
            &final_sync::Ends {
                source: self.rs.as_ref().unwrap_or(&absent),
                destination: Some(&self.rd),
                destination_job: self.job.as_ref(),
            },
        )
    }

    fn source_tagged(&self, run: &str) -> bool {
        self.rs.as_ref().and_then(|rs| final_sync::tag_of(run, rs)).is_some()
    }
}

/// Pure: whether the round may cut now: every destination listens, or it cut already (some
/// source is tagged, and the rest follow from the same cut).
fn ready_to_cut(steps: &[Next], any_source_tagged: bool) -> bool {
    any_source_tagged || steps.iter().all(|n| matches!(n, Next::TagSource { .. }))
}

/// A round under way: only an app round may hold a guest frozen, which is looked at every
/// second.
fn under_way(app: bool) -> AppSync {
    if app { AppSync::Busy } else { AppSync::Round }
}

/// Pure: what became of a freeze, by the group snapshot and whether the guest is still frozen:
/// `Some(thawed)` once the guest should be thawed, `None` to keep it frozen.
fn thaw_verdict(group: &Value, frozen_now: bool, now: DateTime<Utc>) -> Option<&'static str> {
    let frozen_at = annotated_time(group, FROZEN_AT)?;
    if annotation(group, THAWED).is_some() {
        return None;
    }
    let cut = str_at(group, "/status/creationTime").is_some();
    let waited = age(frozen_at, now) >= FREEZE_AT_MOST;
    (cut || !frozen_now || waited).then_some(verdict(cut, frozen_now))
}

/// Pure: what a thaw records: whether the cut came while the guest was still frozen.
fn verdict(cut: bool, frozen_now: bool) -> &'static str {
    if cut && frozen_now { "cut-inside" } else { "before-cut" }
}

/// Records a thaw's verdict on the group snapshot.
async fn record_thaw(src: &SiteApi, vm: &VmModel, group: &Value, verdict: &str) -> Result<(), FabricError> {
    let name = str_at(group, "/metadata/name").unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {THAWED: verdict}}});
    src.merge(VOLUME_GROUP_SNAPSHOT, Some(&vm.vm_namespace), name, &patch)
        .await?;
    Ok(())
}

impl KubeVirtFabric {
    /// One step of the group rounds of `set` from `source` to `target`, where `points` are
    /// the driver's points at the target. What it came to, as an app-consistent sync reports
    /// it: a crash round's point is reported by the points alone.
    pub async fn group_sync(
        &self,
        set: &CutSet<'_>,
        source: &SiteModel,
        target: &SiteModel,
        points: &[RecoveryPoint],
        now: DateTime<Utc>,
    ) -> Result<AppSync, FabricError> {
        let (src, dst) = (self.site(&source.name)?, self.site(&target.name)?);
        let vm = set.driver();
        if at_rest(dst, vm, points, now).await? {
            return Ok(AppSync::Idle);
        }
        let Some(disks) = read_disks(src, dst, set).await? else {
            return Ok(AppSync::Idle);
        };
        let first = &disks[0].rd;
        let Some(start) = annotated_time(first, ROUND) else {
            return begin(dst, vm, &disks, points, now).await;
        };
        let app = annotation(first, ROUND_KIND) == Some("app");
        let busy = under_way(app);
        let run = round_id(start);
        let group = group_name(&vm.name, start);
        let steps: Vec<Next> = disks.iter().map(|d| d.next(&run)).collect();
        if steps.iter().all(|n| *n == Next::Adopt) {
            return self.end(src, dst, set, &disks, &group).await;
        }
        let names: Vec<&str> = disks.iter().map(|d| d.disk.as_str()).collect();
        app_consistent::tag_destinations(dst, vm, &names, &steps, None).await?;
        let to_tag = steps.iter().any(|n| matches!(n, Next::TagSource { .. }));
        if !to_tag || !ready_to_cut(&steps, disks.iter().any(|d| d.source_tagged(&run))) {
            return Ok(busy);
        }
        let cut = match annotation(first, ROUND_PER_DISK) {
            Some(_) => None,
            None => {
                let class = source.group_snapshot_class.as_deref().unwrap_or_default();
                match self.cut(src, set, class, &group, app, now).await? {
                    Cut::Ready(cut) => Some(cut),
                    Cut::Pending(outcome) => return Ok(outcome),
                    Cut::Failed(why) => {
                        fall_back(src, dst, set, &disks[0], &group, &why).await?;
                        return Ok(AppSync::CutFailed(why));
                    }
                }
            }
        };
        for (d, step) in disks.iter().zip(&steps) {
            if let Next::TagSource { tag, source_version } = step {
                tag_source(src, &set.members[d.member], d, cut.as_ref(), tag, source_version).await?;
            }
        }
        Ok(busy)
    }

    /// The group snapshot of the round: created (the guests frozen first for an app round),
    /// waited for, and once ready, each member restored into its disk's cut claim.
    async fn cut(
        &self,
        src: &SiteApi,
        set: &CutSet<'_>,
        class: &str,
        name: &str,
        app: bool,
        now: DateTime<Utc>,
    ) -> Result<Cut, FabricError> {
        let ns = set.vm_namespace();
        let busy = || under_way(app);
        let Some(group) = src.get(VOLUME_GROUP_SNAPSHOT, Some(ns), name).await? else {
            label_members(src, set).await?;
            let mut outcome = busy();
            let mut frozen_at = None;
            if app {
                match self.freeze_all(src, set, now).await? {
                    Ok(()) => frozen_at = Some(now.to_rfc3339()),
                    Err(why) => outcome = AppSync::FreezeFailed(why),
                }
            }
            let made = src
                .create_if_absent(
                    VOLUME_GROUP_SNAPSHOT,
                    &group_snapshot(set, name, class, frozen_at.clone()),
                )
                .await;
            return match made {
                Ok(_) => Ok(Cut::Pending(outcome)),
                Err(e) => {
                    // Never leave a guest frozen for a cut that is not coming.
                    if frozen_at.is_some() {
                        self.unfreeze_all(src, set, Some(now)).await?;
                    }
                    match e.kind {
                        FailureKind::Permanent => Ok(Cut::Failed(e.message)),
                        _ => Err(e),
                    }
                }
            };
        };
        self.thaw_after_group_cut(src, set, &group, now).await?;
        if group.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
            let created = time_at(&group, "/metadata/creationTimestamp");
            if created.is_some_and(|t| age(t, now) >= CUT_WITHIN) {
                let why = str_at(&group, "/status/error/message").map(|m| format!(": {m}"));
                return Ok(Cut::Failed(format!(
                    "group snapshot {ns}/{name} at {} was not ready within {}s{}; no point this round",
                    src.site,
                    CUT_WITHIN.as_secs(),
                    why.unwrap_or_default()
                )));
            }
            return Ok(Cut::Pending(busy()));
        }
        let Some(taken) = time_at(&group, "/status/creationTime") else {
            return Ok(Cut::Pending(busy()));
        };
        if let Some(missing) = restore_cuts(src, set, &group, name).await? {
            // Members that joined a consistency group after the cut was made.
            let created = time_at(&group, "/metadata/creationTimestamp");
            return Ok(match created.is_some_and(|t| age(t, now) >= CUT_WITHIN) {
                true => Cut::Failed(format!(
                    "group snapshot {ns}/{name} at {} holds no snapshot of disk {missing}; no point this round",
                    src.site
                )),
                false => Cut::Pending(busy()),
            });
        }
        Ok(Cut::Ready(CutMade {
            group: name.to_owned(),
            taken,
        }))
    }

    /// Freezes every member's guest, the driver's first; when one refuses, thaws those it
    /// froze and says why (the round's point is then crash-consistent).
    async fn freeze_all(
        &self,
        src: &SiteApi,
        set: &CutSet<'_>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, FabricError> {
        for (i, member) in set.members.iter().enumerate() {
            if let Err(why) = app_consistent::freeze(src, Guest::of(member)).await {
                for frozen in &set.members[..i] {
                    self.unfreeze(src, Guest::of(frozen), Some(now)).await?;
                }
                return Ok(Err(match set.members.len() {
                    1 => why,
                    _ => format!("VM {}: {why}", member.name),
                }));
            }
        }
        Ok(Ok(()))
    }

    /// Thaws every member's guest that is still frozen.
    async fn unfreeze_all(
        &self,
        src: &SiteApi,
        set: &CutSet<'_>,
        since: Option<DateTime<Utc>>,
    ) -> Result<(), FabricError> {
        for member in set.members {
            if app_consistent::guest_frozen(src, Guest::of(member)).await? {
                self.unfreeze(src, Guest::of(member), since).await?;
            }
        }
        Ok(())
    }

    /// Thaws the guests frozen for the group snapshot once it is cut (or the freeze ran too
    /// long), recording on the group snapshot whether the cut came inside the freeze of all.
    async fn thaw_after_group_cut(
        &self,
        src: &SiteApi,
        set: &CutSet<'_>,
        group: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), FabricError> {
        if annotated_time(group, FROZEN_AT).is_none() || annotation(group, THAWED).is_some() {
            return Ok(());
        }
        let mut frozen_now = true;
        for member in set.members {
            frozen_now &= app_consistent::guest_frozen(src, Guest::of(member)).await?;
        }
        let Some(verdict) = thaw_verdict(group, frozen_now, now) else {
            return Ok(());
        };
        self.unfreeze_all(src, set, annotated_time(group, FROZEN_AT)).await?;
        record_thaw(src, set.driver(), group, verdict).await
    }

    /// A run took the VM over with its guest frozen for a group snapshot: thawed now, with
    /// every other guest frozen for it (its consistency group's), and the group snapshot says
    /// so, so its round's point is not taken for app-consistent.
    pub(super) async fn thaw_group_for_run(&self, src: &SiteApi, vm: &VmModel) -> Result<(), FabricError> {
        let selector = format!("{}={}", objects::PROTECTED_VM, vm.round_driver());
        for group in src
            .list(VOLUME_GROUP_SNAPSHOT, Some(&vm.vm_namespace), &selector)
            .await?
        {
            let Some(since) = annotated_time(&group, FROZEN_AT).filter(|_| annotation(&group, THAWED).is_none()) else {
                continue;
            };
            let cut = str_at(&group, "/status/creationTime").is_some();
            let frozen = annotation(&group, FROZEN_VMS).unwrap_or(vm.vm_name.as_str());
            for name in frozen.split(',').filter(|n| !n.is_empty()) {
                let member = Guest {
                    namespace: &vm.vm_namespace,
                    name,
                };
                if name == vm.vm_name || app_consistent::guest_frozen(src, member).await? {
                    self.unfreeze(src, member, Some(since)).await?;
                }
            }
            record_thaw(src, vm, &group, verdict(cut, true)).await?;
        }
        Ok(())
    }

    /// Adopts every disk's point of the round at the cut's instant, then clears the round.
    async fn end(
        &self,
        src: &SiteApi,
        dst: &SiteApi,
        set: &CutSet<'_>,
        disks: &[Disk],
        group: &str,
    ) -> Result<AppSync, FabricError> {
        let (ns, vm) = (set.vm_namespace(), set.driver());
        let snapshot = src.get(VOLUME_GROUP_SNAPSHOT, Some(ns), group).await?;
        let app = annotation(&disks[0].rd, ROUND_KIND) == Some("app");
        let app_consistent = snapshot
            .as_ref()
            .is_some_and(|g| annotation(g, THAWED) == Some("cut-inside"));
        let froze = snapshot
            .as_ref()
            .is_some_and(|g| annotated_time(g, FROZEN_AT).is_some());
        let per_disk = annotation(&disks[0].rd, ROUND_PER_DISK).is_some();
        for d in disks {
            let taken = d.rs.as_ref().and_then(|rs| annotated_time(rs, CUT_AT));
            let cut = match (per_disk, taken) {
                (true, _) => None,
                (false, Some(taken)) => Some((taken, group)),
                (false, None) => {
                    return Err(FabricError::permanent(format!(
                        "VM {}: the source of disk {} does not record its cut",
                        set.members[d.member].name, d.disk
                    )));
                }
            };
            let member = &set.members[d.member];
            if self
                .adopt_from(dst, member, &d.disk, &d.rd, app_consistent && !per_disk, cut)
                .await?
                .point()
                .is_none()
            {
                return Ok(under_way(app));
            }
        }
        // The cut goes first: a restart between the two adopts again (a no-op) and clears.
        remove_cut(src, ns, set.disks().map(|(_, d)| d.as_str()), group).await?;
        clear_round(dst, vm, &disks[0].disk).await?;
        tracing::info!(vm = %vm.name, site = %src.site, group, app_consistent, "group round adopted");
        Ok(match app {
            true => AppSync::Done { app_consistent, froze },
            false => AppSync::Idle,
        })
    }
}

/// What the round's cut came to.
enum Cut {
    Ready(CutMade),
    Pending(AppSync),
    /// Refused by the site, or not ready in time: the round ends without a point.
    Failed(String),
}

struct CutMade {
    group: String,
    taken: DateTime<Utc>,
}

/// The disks' replication objects; `None` while a destination is missing (replication
/// makes them first).
async fn read_disks(src: &SiteApi, dst: &SiteApi, set: &CutSet<'_>) -> Result<Option<Vec<Disk>>, FabricError> {
    let ns = set.vm_namespace();
    let mut disks = Vec::new();
    for (member, disk) in set.disks() {
        let name = objects::replication_name(disk);
        let Some(rd) = dst.get(REPLICATION_DESTINATION, Some(ns), &name).await? else {
            return Ok(None);
        };
        disks.push(Disk {
            member,
            disk: disk.clone(),
            rs: src.get(REPLICATION_SOURCE, Some(ns), &name).await?,
            rd,
            job: dst
                .get(JOB, Some(ns), &objects::volsync_destination_mover(&name))
                .await?,
        });
    }
    Ok((!disks.is_empty()).then_some(disks))
}

/// Whether the site's watch shows no round under way and none due: then nothing is read
/// from the API. A watch a moment behind errs towards reading: rounds only become due.
async fn at_rest(
    dst: &SiteApi,
    vm: &VmModel,
    points: &[RecoveryPoint],
    now: DateTime<Utc>,
) -> Result<bool, FabricError> {
    let Some(disk) = vm.disks.first() else {
        return Ok(true);
    };
    let name = objects::replication_name(disk);
    Ok(
        match dst.watched(REPLICATION_DESTINATION, &vm.vm_namespace, &name).flatten() {
            Some(first) => annotated_time(&first, ROUND).is_none() && due(vm, points, Last::of(&first), now).is_none(),
            None => false,
        },
    )
}

/// Begins a round when one is due: recorded on the first disk's destination.
async fn begin(
    dst: &SiteApi,
    vm: &VmModel,
    disks: &[Disk],
    points: &[RecoveryPoint],
    now: DateTime<Utc>,
) -> Result<AppSync, FabricError> {
    let first = &disks[0];
    let Some(kind) = due(vm, points, Last::of(&first.rd), now) else {
        return Ok(AppSync::Idle);
    };
    let stamp = now.to_rfc3339();
    let kind = if kind == Due::App { "app" } else { "crash" };
    let mut annotations = json!({ROUND: stamp, ROUND_KIND: kind, LAST_ROUND: stamp});
    if kind == "app" {
        annotations[LAST_APP_ROUND] = json!(stamp);
    }
    let patch = json!({"metadata": {"annotations": annotations}});
    app_consistent::merge_destination(dst, vm, &first.disk, &patch).await?;
    tracing::info!(vm = %vm.name, site = %dst.site, kind, "group round begun");
    Ok(AppSync::Busy)
}

/// Labels the members' claims for the group snapshot's selector.
async fn label_members(src: &SiteApi, set: &CutSet<'_>) -> Result<(), FabricError> {
    let patch = json!({"metadata": {"labels": {MEMBER_OF: set.driver().name}}});
    for (_, disk) in set.disks() {
        src.merge(PVC, Some(set.vm_namespace()), disk, &patch).await?;
    }
    Ok(())
}

fn group_snapshot(set: &CutSet<'_>, name: &str, class: &str, frozen_at: Option<String>) -> Value {
    let vm = set.driver();
    let mut annotations = serde_json::Map::new();
    if let Some(t) = frozen_at {
        let frozen: Vec<&str> = set.members.iter().map(|m| m.vm_name.as_str()).collect();
        annotations.insert(FROZEN_AT.into(), json!(t));
        annotations.insert(FROZEN_VMS.into(), json!(frozen.join(",")));
    }
    json!({
        "apiVersion": "groupsnapshot.storage.k8s.io/v1beta2",
        "kind": "VolumeGroupSnapshot",
        "metadata": {
            "name": name,
            "namespace": vm.vm_namespace,
            "labels": {objects::MANAGED_BY: "coldsite", objects::PROTECTED_VM: vm.name},
            "annotations": annotations,
        },
        "spec": {
            "volumeGroupSnapshotClassName": class,
            "source": {"selector": {"matchLabels": {MEMBER_OF: vm.name}}},
        },
    })
}

/// Restores each disk's member of the group snapshot into its cut claim. A cut claim left
/// by an earlier round is deleted first: a source must never copy a stale cut. The disk the
/// group snapshot holds no member of yet, if any.
async fn restore_cuts(
    src: &SiteApi,
    set: &CutSet<'_>,
    group: &Value,
    name: &str,
) -> Result<Option<String>, FabricError> {
    let ns = set.vm_namespace();
    let uid = str_at(group, "/metadata/uid").unwrap_or_default();
    let members: Vec<Value> = src
        .list(VOLUME_SNAPSHOT, Some(ns), "")
        .await?
        .into_iter()
        .filter(|s| {
            s.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|owners| owners.iter().any(|o| str_at(o, "/uid") == Some(uid)))
        })
        .collect();
    for (i, disk) in set.disks() {
        let vm = &set.members[i];
        let member = members
            .iter()
            .find(|m| str_at(m, "/spec/source/persistentVolumeClaimName") == Some(disk.as_str()))
            .and_then(|m| str_at(m, "/metadata/name"));
        let Some(member) = member else {
            return Ok(Some(disk.clone()));
        };
        let claim_name = objects::cut_claim_name(disk);
        if let Some(old) = src.get(PVC, Some(ns), &claim_name).await? {
            if annotation(&old, GROUP_SNAPSHOT) != Some(name) {
                src.delete(PVC, Some(ns), &claim_name).await?;
                return Err(FabricError::transient(format!(
                    "the cut claim {ns}/{claim_name} of an earlier round is being deleted"
                )));
            }
            continue;
        }
        let Some(source) = src.get(PVC, Some(ns), disk).await? else {
            return Err(FabricError::permanent(format!(
                "disk PVC {ns}/{disk} of VM {} not found",
                vm.vm_name
            )));
        };
        let claim = objects::cut_claim(&objects::CutClaim {
            namespace: ns,
            pvm: &vm.name,
            disk,
            group: name,
            member,
            source: &source,
        })
        .map_err(|e| FabricError::permanent(format!("disk PVC {ns}/{disk}: {e}")))?;
        src.create_if_absent(PVC, &claim).await?;
    }
    Ok(None)
}

/// Points the disk's source at its cut claim (without a cut, at the disk itself), tagged, at
/// the version judged idle; creates the source on the first round.
async fn tag_source(
    src: &SiteApi,
    vm: &VmModel,
    d: &Disk,
    cut: Option<&CutMade>,
    tag: &str,
    version: &str,
) -> Result<(), FabricError> {
    let ns = vm.vm_namespace.as_str();
    let address = str_at(&d.rd, "/status/rsyncTLS/address").unwrap_or_default();
    let cut_claim = objects::cut_claim_name(&d.disk);
    let mut desired = objects::replication_source(&objects::SourceSpec {
        namespace: ns,
        pvm: &vm.name,
        disk: &d.disk,
        address,
        schedule: None,
        manual: Some(tag),
        storage_class: None,
        snapshot_class: None,
        cut: cut.map(|_| cut_claim.as_str()),
    });
    desired["metadata"]["annotations"] = match cut {
        Some(cut) => json!({CUT_AT: cut.taken.to_rfc3339(), GROUP_SNAPSHOT: cut.group}),
        None => json!({CUT_AT: null, GROUP_SNAPSHOT: null}),
    };
    match &d.rs {
        None => {
            src.create_if_absent(REPLICATION_SOURCE, &desired).await?;
        }
        Some(_) => {
            let mut patch = json!({"metadata": {"annotations": desired["metadata"]["annotations"]},
                                   "spec": desired["spec"]});
            // A schedule left from before the site named its group snapshot class goes.
            patch["spec"]["trigger"]["schedule"] = Value::Null;
            let name = objects::replication_name(&d.disk);
            src.merge_at_version(REPLICATION_SOURCE, Some(ns), &name, version, &patch)
                .await?;
        }
    }
    Ok(())
}

/// Ends the round on the first disk's destination.
async fn clear_round(dst: &SiteApi, vm: &VmModel, first_disk: &str) -> Result<(), FabricError> {
    let patch = json!({"metadata": {"annotations": {ROUND: null, ROUND_KIND: null, ROUND_PER_DISK: null}}});
    app_consistent::merge_destination(dst, vm, first_disk, &patch).await
}

/// A round whose group snapshot the site refused or never made ready goes on disk by disk,
/// so the VM still gets a point; the group snapshot goes.
async fn fall_back(
    src: &SiteApi,
    dst: &SiteApi,
    set: &CutSet<'_>,
    first: &Disk,
    group: &str,
    why: &str,
) -> Result<(), FabricError> {
    let vm = set.driver();
    remove_cut(src, set.vm_namespace(), set.disks().map(|(_, d)| d.as_str()), group).await?;
    let patch = json!({"metadata": {"annotations": {ROUND_PER_DISK: why}}});
    app_consistent::merge_destination(dst, vm, &first.disk, &patch).await?;
    tracing::warn!(vm = %vm.name, site = %src.site, group, why, "no group snapshot; this round's disks are cut one by one");
    Ok(())
}

/// A VM that joined a consistency group driven by another: a round it drove on its own
/// (under way when it joined) is abandoned, its group snapshot deleted and its guest thawed
/// if that round froze it; the driver's rounds cut its disks from now on. Reads only the
/// site's watch when there is none.
pub async fn abandon_own_round(
    fabric: &KubeVirtFabric,
    vm: &VmModel,
    source: &SiteModel,
    target: &SiteModel,
) -> Result<(), FabricError> {
    let (src, dst) = (fabric.site(&source.name)?, fabric.site(&target.name)?);
    let Some(disk) = vm.disks.first() else {
        return Ok(());
    };
    let ns = vm.vm_namespace.as_str();
    let rd_name = objects::replication_name(disk);
    let first = match dst.watched(REPLICATION_DESTINATION, ns, &rd_name) {
        Some(watched) => watched,
        None => dst.get(REPLICATION_DESTINATION, Some(ns), &rd_name).await?,
    };
    let Some(start) = first.as_ref().and_then(|rd| annotated_time(rd, ROUND)) else {
        return Ok(());
    };
    let group = group_name(&vm.name, start);
    if let Some(g) = src.get(VOLUME_GROUP_SNAPSHOT, Some(ns), &group).await?
        && annotated_time(&g, FROZEN_AT).is_some()
        && annotation(&g, THAWED).is_none()
        && app_consistent::guest_frozen(src, Guest::of(vm)).await?
    {
        fabric
            .unfreeze(src, Guest::of(vm), annotated_time(&g, FROZEN_AT))
            .await?;
    }
    remove_cut(src, ns, vm.disks.iter().map(String::as_str), &group).await?;
    clear_round(dst, vm, disk).await?;
    tracing::info!(vm = %vm.name, driver = vm.round_driver(), "own round abandoned: the VM is cut with its consistency group");
    Ok(())
}

/// Deletes what rounds from `site` left there (a run took the VM over mid-round, and its
/// replication now goes the other way): the VM's cut claims and its rounds' group snapshots
/// (a consistency group's are its driver's; each member's run removes its own claims).
pub async fn remove_leftovers(site: &SiteApi, vm: &VmModel) -> Result<(), FabricError> {
    let ns = vm.vm_namespace.as_str();
    let selector = format!("{}={}", objects::PROTECTED_VM, vm.round_driver());
    let disks = || vm.disks.iter().map(String::as_str);
    for group in site.list(VOLUME_GROUP_SNAPSHOT, Some(ns), &selector).await? {
        remove_cut(site, ns, disks(), str_at(&group, "/metadata/name").unwrap_or_default()).await?;
    }
    for disk in disks() {
        site.delete(PVC, Some(ns), &objects::cut_claim_name(disk)).await?;
    }
    Ok(())
}

/// Deletes the round's cut claims of `disks` and its group snapshot (with its members).
pub async fn remove_cut<'d>(
    src: &SiteApi,
    ns: &str,
    disks: impl Iterator<Item = &'d str>,
    group: &str,
) -> Result<(), FabricError> {
    for disk in disks {
        src.delete(PVC, Some(ns), &objects::cut_claim_name(disk)).await?;
    }
    src.delete(VOLUME_GROUP_SNAPSHOT, Some(ns), group).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap()
    }

    fn vm(rpo_minutes: u64, app: Option<u64>) -> VmModel {
        VmModel {
            name: "db".into(),
            namespace: "ns".into(),
            vm_namespace: "ns".into(),
            vm_name: "db".into(),
            disks: vec!["db-data".into(), "db-log".into()],
            nics: Vec::new(),
            rpo: Duration::from_secs(rpo_minutes * 60),
            retention: Duration::from_secs(86_400),
            app_consistent_interval: app.map(|m| Duration::from_secs(m * 60)),
            cpu: None,
            memory: None,
            cut_with: Vec::new(),
        }
    }

    fn round(minutes: i64) -> Last {
        Last {
            round: Some(at(minutes)),
            app: None,
        }
    }

    fn point(minutes: i64, app: bool) -> RecoveryPoint {
        RecoveryPoint {
            time: at(minutes),
            app_consistent: app,
            one_instant: false,
        }
    }

    #[test]
    fn a_crash_round_is_due_once_a_sync_interval_after_the_newest_point_or_round() {
        let v = vm(10, None); // syncs every 5 minutes
        assert_eq!(
            due(&v, &[], Last::default(), at(0)),
            Some(Due::Crash),
            "the first point at once"
        );
        assert_eq!(due(&v, &[point(0, false)], round(0), at(4)), None);
        assert_eq!(due(&v, &[point(0, false)], round(0), at(5)), Some(Due::Crash));
        // A round that came to nothing is not retried before an interval passed.
        assert_eq!(due(&v, &[point(0, false)], round(6), at(8)), None);
    }

    #[test]
    fn an_app_round_is_due_by_its_interval_once_there_is_a_point() {
        let v = vm(10, Some(60));
        let both = |r: i64, a: i64| Last {
            round: Some(at(r)),
            app: Some(at(a)),
        };
        assert_eq!(
            due(&v, &[], Last::default(), at(0)),
            Some(Due::Crash),
            "a first point before any freeze"
        );
        assert_eq!(due(&v, &[point(0, false)], round(0), at(1)), Some(Due::App));
        assert_eq!(due(&v, &[point(0, true)], both(0, 0), at(6)), Some(Due::Crash));
        assert_eq!(
            due(&v, &[point(0, true), point(30, false)], both(30, 0), at(60)),
            Some(Due::App)
        );
        // A freeze that failed is tried again an interval later, while crash rounds go on.
        assert_eq!(due(&v, &[point(30, false)], both(30, 20), at(40)), Some(Due::Crash));
        assert_eq!(due(&v, &[point(40, false)], both(40, 20), at(42)), None);
    }

    #[test]
    fn a_vm_is_cut_as_a_group_only_with_several_disks_and_a_class_at_its_source() {
        let with_class = SiteModel {
            group_snapshot_class: Some("groups".into()),
            ..SiteModel::default()
        };
        assert!(applies(&vm(10, None), &with_class));
        assert!(!applies(&vm(10, None), &SiteModel::default()));
        let one_disk = VmModel {
            disks: vec!["root".into()],
            ..vm(10, None)
        };
        assert!(!applies(&one_disk, &with_class));
    }

    #[test]
    fn no_disk_is_cut_before_every_destination_listens() {
        let tag = |n: &str| Next::TagSource {
            tag: n.into(),
            source_version: "1".into(),
        };
        assert!(!ready_to_cut(&[tag("a"), Next::Wait], false));
        assert!(ready_to_cut(&[tag("a"), tag("b")], false));
        // Cut already, one source tagged: the other is tagged from the same cut.
        assert!(ready_to_cut(&[Next::Wait, tag("b")], true));
    }

    #[test]
    fn the_guest_is_thawed_once_cut_and_the_point_is_app_consistent_only_if_still_frozen() {
        let frozen = json!({"metadata": {"annotations": {FROZEN_AT: at(0).to_rfc3339()}}});
        let mut cut = frozen.clone();
        cut["status"] = json!({"creationTime": at(0).to_rfc3339()});
        assert_eq!(thaw_verdict(&frozen, true, at(0)), None, "kept frozen until cut");
        assert_eq!(thaw_verdict(&cut, true, at(0)), Some("cut-inside"));
        assert_eq!(
            thaw_verdict(&cut, false, at(0)),
            Some("before-cut"),
            "thawed by the backstop"
        );
        assert_eq!(
            thaw_verdict(&frozen, true, at(1)),
            Some("before-cut"),
            "not frozen for ever"
        );
        let mut thawed = cut.clone();
        thawed["metadata"]["annotations"][THAWED] = json!("cut-inside");
        assert_eq!(thaw_verdict(&thawed, true, at(0)), None, "thawed once");
        assert_eq!(thaw_verdict(&json!({}), true, at(0)), None, "never frozen for");
    }

    #[test]
    fn a_consistency_groups_snapshot_selects_the_drivers_label_and_names_every_guest_it_froze() {
        let members = [
            VmModel {
                name: "app".into(),
                vm_name: "app01".into(),
                disks: vec!["app01-root".into()],
                ..vm(10, Some(60))
            },
            VmModel {
                rpo: Duration::from_secs(120),
                ..vm(10, None)
            },
        ];
        let set = CutSet::new(&members).unwrap();
        assert_eq!(set.driver().name, "app");
        assert_eq!(set.driver().rpo, Duration::from_secs(120), "the shortest RPO");
        assert_eq!(set.driver().app_consistent_interval, Some(Duration::from_secs(3600)));
        let disks: Vec<(usize, &String)> = set.disks().collect();
        assert_eq!(disks.len(), 3);
        let frozen = group_snapshot(&set, "coldsite-app-1", "groups", Some(at(0).to_rfc3339()));
        assert_eq!(frozen["spec"]["source"]["selector"]["matchLabels"][MEMBER_OF], "app");
        assert_eq!(frozen["metadata"]["annotations"][FROZEN_VMS], "app01,db");
        let crash = group_snapshot(&set, "coldsite-app-2", "groups", None);
        assert!(crash["metadata"]["annotations"].get(FROZEN_VMS).is_none());
    }
}
