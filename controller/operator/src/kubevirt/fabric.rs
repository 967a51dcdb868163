//! `KubeVirtFabric`: the engine's Fabric against real site clusters. VMs are KubeVirt
//! VirtualMachines, disks replicate with VolSync rsync-TLS movers, recovery points are the
//! destination's VolumeSnapshots kept with VolSync's do-not-delete label.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_engine::fabric::{
    Fabric, FabricError, FabricResult, Progress, Recovery, RecoveryPoint, ReplicationState, RunRef, ScriptRequest,
};
use coldsite_engine::model::{Direction, ProbeModel, ReadinessModel, SiteModel, VmModel};
use coldsite_engine::{names, rpo};
use serde_json::{Value, json};

use super::dynamic::{
    CONFIG_MAP, JOB, Kind, PVC, REPLICATION_DESTINATION, REPLICATION_SOURCE, SiteApi, VM, VMI, VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT, parse_time, str_at, time_at,
};
use super::objects::{self, APP_CONSISTENT, DISK, DO_NOT_DELETE, DiskShape, POINT, PROTECTED_VM, RUN_UID};
use super::points::{self, DiskPoint, SnapshotPoint};
use super::{app_consistent, final_sync, group_cut};
use crate::replication_keys::ReplicationKeys;
use crate::scripts::ScriptRunner;

const SOON: Duration = Duration::from_secs(2);

/// The platform as the controller reaches it.
pub struct KubeVirtFabric {
    /// Reachable sites by name; a missing site counts as unreachable.
    pub sites: HashMap<String, SiteApi>,
    pub management: SiteApi,
    pub scripts: ScriptRunner,
    pub keys: Arc<ReplicationKeys>,
    /// How long guests stay frozen for app-consistent points, by site.
    pub freeze_seconds: prometheus::HistogramVec,
    /// The plan's (or the ProtectedVM's) primary and recovery sites.
    pub primary: SiteModel,
    pub recovery: SiteModel,
}

fn in_progress<T>(after: Duration) -> FabricResult<T> {
    Ok(Progress::InProgress { retry_after: after })
}

impl KubeVirtFabric {
    pub fn site(&self, name: &str) -> Result<&SiteApi, FabricError> {
        self.sites.get(name).ok_or_else(|| {
            FabricError::unreachable(format!("site {name} cannot be reached (see its Reachable condition)"))
        })
    }

    /// The site data moves from and the site it moves to.
    fn ends(&self, direction: Direction) -> (&SiteModel, &SiteModel) {
        match direction {
            Direction::Forward => (&self.primary, &self.recovery),
            Direction::Reverse => (&self.recovery, &self.primary),
        }
    }

    /// The labelled snapshots of one disk at a site, oldest first, with their times, as the
    /// site shows them now.
    async fn disk_points(
        &self,
        site: &SiteApi,
        vm: &VmModel,
        disk: &str,
    ) -> Result<Vec<(DateTime<Utc>, Value)>, FabricError> {
        let selector = disk_selector(vm, disk);
        Ok(timed(
            site.list(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), &selector).await?,
        ))
    }

    /// A disk's points, oldest first, from the site's watch, with the point adopted last
    /// (`latest`), which the watch may not show yet: as this look read it, else read as the
    /// site shows it now, a GET of one snapshot rather than a LIST of the disk's, which the
    /// API server answers by a scan of every snapshot of the namespace. Without a watch that
    /// has listed, all as the site shows them now.
    async fn watched_disk_points(
        &self,
        site: &SiteApi,
        vm: &VmModel,
        disk: &str,
        latest: Option<Latest<'_>>,
    ) -> Result<Vec<SnapshotPoint>, FabricError> {
        let Some(mut seen) = site.watched_points(&vm.vm_namespace, &vm.name, disk) else {
            let selector = disk_selector(vm, disk);
            let listed = site.list(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), &selector).await?;
            let mut points: Vec<SnapshotPoint> = listed.iter().filter_map(SnapshotPoint::of_object).collect();
            points.sort_by_key(|p| p.point.time);
            return Ok(points);
        };
        let shown = |name: &str| seen.iter().any(|s| &*s.name == name);
        match latest {
            Some(Latest::Read(point)) if !shown(&point.name) => points::insert_by_time(&mut seen, point.clone()),
            Some(Latest::Named(name)) if !shown(name) => {
                let snapshot = site.get(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), name).await?;
                if let Some(point) = snapshot.and_then(|s| SnapshotPoint::of_disk(&s, &vm.name, disk)) {
                    points::insert_by_time(&mut seen, point);
                }
            }
            _ => {}
        }
        Ok(seen)
    }

    /// Adopts the destination's newest snapshot as a recovery point once it is ready to use:
    /// VolSync keeps it when it carries do-not-delete, and its annotations record when its
    /// data was taken and the shape of the disk. VolSync publishes `latestImage` as soon as
    /// the snapshot is bound, which may be before the storage has cut it.
    pub(super) async fn adopt_latest(
        &self,
        site: &SiteApi,
        vm: &VmModel,
        disk: &str,
        app_consistent: bool,
    ) -> Result<Option<DateTime<Utc>>, FabricError> {
        let name = objects::replication_name(disk);
        match site.get(REPLICATION_DESTINATION, Some(&vm.vm_namespace), &name).await? {
            Some(rd) => Ok(self
                .adopt_from(site, vm, disk, &rd, app_consistent, None)
                .await?
                .point()),
            None => Ok(None),
        }
    }

    /// [`Self::adopt_latest`] with the destination already read. `cut`: the image copies a
    /// group snapshot's cut (its time and name), and the point is that instant.
    pub(super) async fn adopt_from(
        &self,
        site: &SiteApi,
        vm: &VmModel,
        disk: &str,
        rd: &Value,
        app_consistent: bool,
        cut: Option<(DateTime<Utc>, &str)>,
    ) -> Result<Adoption, FabricError> {
        let synced = match cut {
            Some((taken, _)) => Some(taken),
            None => time_at(rd, "/status/lastSyncTime"),
        };
        let (Some(image), Some(synced)) = (str_at(rd, "/status/latestImage/name"), synced) else {
            return Ok(Adoption::Nothing);
        };
        // A point adopted before is in the site's watch (labelled): nothing to read.
        let points = site.watched_points(&vm.vm_namespace, &vm.name, disk);
        if points.is_some_and(|p| p.iter().any(|p| &*p.name == image)) {
            return Ok(Adoption::Point(synced, None));
        }
        // While the storage cuts it, and once it is ready, the image is read from the site's
        // watch: its readiness there is the site's, a moment behind, and announced.
        let Some(snapshot) = site.get_image(&vm.vm_namespace, image).await? else {
            return Ok(Adoption::Nothing);
        };
        if snapshot.pointer("/status/error").is_some_and(|e| !e.is_null()) {
            return Ok(Adoption::Nothing);
        }
        if snapshot.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
            return Ok(Adoption::Pending(synced));
        }
        let labelled = str_at(
            &snapshot,
            &format!("/metadata/labels/{}", PROTECTED_VM.replace('/', "~1")),
        )
        .is_some();
        if labelled {
            return Ok(Adoption::Point(
                synced,
                SnapshotPoint::of_disk(&snapshot, &vm.name, disk),
            ));
        }
        let patch = adoption(rd, vm, disk, synced, app_consistent, cut)?;
        let adopted = site
            .merge(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), image, &patch)
            .await?;
        // The answer is the point as labelled: what the watch shows later.
        Ok(Adoption::Point(
            synced,
            adopted.and_then(|s| SnapshotPoint::of_disk(&s, &vm.name, disk)),
        ))
    }

    /// Replication of one VM from `source` to `target`, with the schedule from its RPO, and
    /// recovery points adopted and pruned. The Secret's key is made once and copied.
    /// `reuse_disks`: the target keeps the VM's own PVCs as destinations (after a failover,
    /// replicating back onto the old disks), so only changes move. The last sync reported is
    /// the newest point the target holds for every disk: what a failover could recover.
    pub async fn replicate(
        &self,
        vm: &VmModel,
        source: &SiteModel,
        target: &SiteModel,
        reuse_disks: bool,
        now: DateTime<Utc>,
    ) -> Result<ReplicationState, FabricError> {
        let src = self.site(&source.name)?;
        let dst = self.site(&target.name)?;
        dst.ensure_namespace(&vm.vm_namespace).await?;
        self.keys.ensure([dst, src], &vm.vm_namespace, &vm.name).await?;
        copy_manifest(src, dst, vm).await?;
        let ends = Ends {
            source,
            target,
            src,
            dst,
            reuse_disks,
        };
        let mut established = true;
        let mut waiting = Vec::new();
        let mut disks = Vec::new();
        let (mut app_sync_under_way, mut point_cut_since) = (false, None);
        for disk in &vm.disks {
            let d = self.replicate_disk(&ends, vm, disk, now).await?;
            established &= d.established;
            waiting.extend(d.waiting);
            disks.push(d.points);
            app_sync_under_way |= d.app_sync;
            point_cut_since = point_cut_since.max(d.point_cut_since);
        }
        let points = points::vm_points(&disks);
        Ok(ReplicationState {
            established,
            last_sync: points.last().map(|p| p.time),
            points,
            bytes_transferred: None,
            waiting,
            app_sync_under_way,
            point_cut_since,
        })
    }

    /// One disk: its destination and source, its newest point adopted, old points pruned,
    /// and what is in the way while it has no point.
    async fn replicate_disk(
        &self,
        ends: &Ends<'_>,
        vm: &VmModel,
        disk: &str,
        now: DateTime<Utc>,
    ) -> Result<DiskReplication, FabricError> {
        let (src, dst) = (ends.src, ends.dst);
        let ns = vm.vm_namespace.as_str();
        let Some(pvc) = src.get_pvc(ns, disk).await? else {
            return Err(FabricError::permanent(format!(
                "site {}: disk PVC {ns}/{disk} of VM {} not found",
                ends.source.name, vm.vm_name
            )));
        };
        let shape = DiskShape::of_pvc(&pvc)
            .map_err(|e| FabricError::permanent(format!("site {}: disk PVC {ns}/{disk}: {e}", ends.source.name)))?;
        let in_place = ends.reuse_disks || self.holds_copy(dst, vm, disk).await?;
        if in_place && self.vmi_running(dst, ns, &vm.vm_name).await? {
            return Err(FabricError::permanent(format!(
                "VirtualMachine {ns}/{} runs at {}: replication never writes into the disks of a running VM",
                vm.vm_name, ends.target.name
            )));
        }
        let rd = dst
            .apply_labelled(
                REPLICATION_DESTINATION,
                &objects::replication_destination(&objects::DestinationSpec {
                    namespace: ns,
                    pvm: &vm.name,
                    disk,
                    shape: &shape,
                    storage_class: ends.target.storage_class.as_deref(),
                    snapshot_class: ends.target.snapshot_class.as_deref(),
                    service: &ends.target.replication,
                    destination_pvc: in_place.then_some(disk),
                    manual: None,
                }),
            )
            .await?;
        let Some(address) = str_at(&rd, "/status/rsyncTLS/address") else {
            // No address, no data: the destination's mover has cut nothing yet.
            let mut waiting = blockers(dst, &ends.target.name, REPLICATION_DESTINATION, &rd, false).await?;
            if address_overdue(&rd, now) {
                waiting.extend(address_blocker(dst, ends.target, &rd).await?);
            }
            return Ok(DiskReplication {
                established: false,
                waiting,
                points: Vec::new(),
                app_sync: false,
                point_cut_since: None,
            });
        };
        let (rs, newest) = self.source_end(ends, vm, disk, address, &rd).await?;
        let kept = self.prune(dst, vm, disk, Latest::of(&newest, &rd), now).await?;
        let mut waiting = Vec::new();
        if kept.is_empty() {
            if let Some(rs) = &rs {
                let overdue = source_snapshot_overdue(rs, now);
                waiting.extend(blockers(src, &ends.source.name, REPLICATION_SOURCE, rs, overdue).await?);
            }
            let overdue = destination_snapshot_overdue(rs.as_ref(), now);
            waiting.extend(blockers(dst, &ends.target.name, REPLICATION_DESTINATION, &rd, overdue).await?);
        }
        Ok(DiskReplication {
            established: true,
            waiting,
            points: kept,
            app_sync: newest == Newest::AppSync,
            point_cut_since: match newest {
                Newest::Adopting(Adoption::Pending(synced)) if now - synced < POINT_PENDING_FOR => Some(synced),
                _ => None,
            },
        })
    }

    /// The disk's source, applied unless the VM is cut as a group (its rounds make and
    /// trigger its sources), and what became of the destination's newest image.
    async fn source_end(
        &self,
        ends: &Ends<'_>,
        vm: &VmModel,
        disk: &str,
        address: &str,
        rd: &Value,
    ) -> Result<(Option<Value>, Newest), FabricError> {
        let (src, ns) = (ends.src, vm.vm_namespace.as_str());
        if group_cut::applies(vm, ends.source) {
            let name = objects::replication_name(disk);
            return Ok((src.get_labelled(REPLICATION_SOURCE, ns, &name).await?, Newest::Rounds));
        }
        let schedule = rpo::cron_schedule(rpo::sync_interval(vm.rpo));
        let rs = src
            .apply_labelled(
                REPLICATION_SOURCE,
                &objects::replication_source(&objects::SourceSpec {
                    namespace: ns,
                    pvm: &vm.name,
                    disk,
                    address,
                    schedule: Some(&schedule),
                    manual: None,
                    storage_class: ends.source.storage_class.as_deref(),
                    snapshot_class: ends.source.snapshot_class.as_deref(),
                    cut: None,
                }),
            )
            .await?;
        let newest = self.back_to_schedule(ends, vm, disk, &rs, rd).await?;
        Ok((Some(rs), newest))
    }

    /// Hands the disk back to its schedule and adopts its newest point, unless an
    /// app-consistent sync owns its triggers and points (see `app_consistent`).
    async fn back_to_schedule(
        &self,
        ends: &Ends<'_>,
        vm: &VmModel,
        disk: &str,
        rs: &Value,
        rd: &Value,
    ) -> Result<Newest, FabricError> {
        let ns = vm.vm_namespace.as_str();
        let foreign = |o: &Value| str_at(o, "/spec/trigger/manual").is_some_and(|t| !app_consistent::is_tag(t));
        // A final sync's manual trigger outlives a run that ended before moving the VM, and
        // VolSync prefers it over the schedule: replication would stop for good.
        let name = objects::replication_name(disk);
        let untrigger = json!({"spec": {"trigger": {"manual": null}}});
        if foreign(rs) {
            ends.src.merge(REPLICATION_SOURCE, Some(ns), &name, &untrigger).await?;
        }
        if foreign(rd) {
            ends.dst
                .merge(REPLICATION_DESTINATION, Some(ns), &name, &untrigger)
                .await?;
        }
        let app_sync = [rs, rd]
            .iter()
            .any(|o| str_at(o, "/spec/trigger/manual").is_some_and(app_consistent::is_tag));
        if app_sync {
            return Ok(Newest::AppSync);
        }
        Ok(Newest::Adopting(
            self.adopt_from(ends.dst, vm, disk, rd, false, None).await?,
        ))
    }

    /// One disk restored at the target from its newest snapshot not after `point`: a claim
    /// this run made is kept, anything else there is replaced first.
    async fn restore_disk(
        &self,
        site: &SiteApi,
        req: &Recovery<'_>,
        point: &RecoveryPoint,
        disk: &str,
    ) -> Result<DiskRestore, FabricError> {
        let vm = req.vm;
        // This run's claim, waiting to bind, is read from the watch; anything else is read
        // live, so a leftover is never replaced on a stale view.
        let existing = match site.watched(PVC, req.namespace, disk) {
            Some(Some(pvc)) if objects::made_by_run(&pvc) == Some(req.run.uid.as_str()) => Some(pvc),
            _ => site.get(PVC, Some(req.namespace), disk).await?,
        };
        if let Some(existing) = existing {
            if objects::made_by_run(&existing) != Some(req.run.uid.as_str()) {
                self.replace_leftover_disk(site, req, disk, &existing).await?;
                return Ok(DiskRestore {
                    bound: false,
                    point: None,
                });
            }
            return Ok(DiskRestore {
                bound: str_at(&existing, "/status/phase") == Some("Bound"),
                point: super::app_consistent::annotation(&existing, POINT).and_then(parse_time),
            });
        }
        let points = self.disk_points(site, vm, disk).await?;
        let Some((t, snapshot)) = points.iter().rev().find(|(t, _)| *t <= point.time) else {
            return Err(FabricError::permanent(format!(
                "VM {}: disk {disk} has no snapshot at or before {}",
                vm.name, point.time
            )));
        };
        let mut shape = DiskShape::of_point(snapshot).ok_or_else(|| {
            FabricError::permanent(format!(
                "VM {}: the recovery point of disk {disk} does not record the disk's size, access modes and \
                 volume mode",
                vm.name
            ))
        })?;
        // A restore asks for at least the snapshot's size, as the CSI provisioner requires.
        if let Some(size) = str_at(snapshot, "/status/restoreSize") {
            shape.capacity = size.to_owned();
        }
        let snapshot_name = self.snapshot_in_namespace(site, req, disk, snapshot, &shape).await?;
        let pvc = objects::restored_pvc(&objects::RestoredPvc {
            namespace: req.namespace,
            name: disk,
            pvm: &vm.name,
            run_uid: &req.run.uid,
            snapshot: &snapshot_name,
            shape: &shape,
            storage_class: req.target.storage_class.as_deref(),
            point: &t.to_rfc3339(),
        });
        site.create_if_absent(PVC, &pvc).await?;
        Ok(DiskRestore {
            bound: false,
            point: Some(*t),
        })
    }

    /// The name of the snapshot a disk restores from in the run's namespace. Snapshots are
    /// namespaced: a test, which restores into a namespace of its own, gets a copy there
    /// over the same content handle.
    async fn snapshot_in_namespace(
        &self,
        site: &SiteApi,
        req: &Recovery<'_>,
        disk: &str,
        snapshot: &Value,
        shape: &DiskShape,
    ) -> Result<String, FabricError> {
        let name = str_at(snapshot, "/metadata/name").unwrap_or_default().to_owned();
        if req.namespace == req.vm.vm_namespace {
            return Ok(name);
        }
        let content_name = str_at(snapshot, "/status/boundVolumeSnapshotContentName").unwrap_or_default();
        let content = site.get(VOLUME_SNAPSHOT_CONTENT, None, content_name).await?;
        let content_field = |path: &str| content.as_ref().and_then(|c| str_at(c, path));
        let driver = content_field("/spec/driver").unwrap_or("unknown.csi");
        let handle = content_field("/status/snapshotHandle").unwrap_or(content_name);
        let copy_name = objects::dns_name(&format!("coldsite-{}-{disk}", objects::run_tag(&req.run.uid)));
        let (c, s) = objects::snapshot_copy(&objects::SnapshotCopy {
            namespace: req.namespace,
            name: &copy_name,
            pvm: &req.vm.name,
            run_uid: &req.run.uid,
            driver,
            handle,
            class: req.target.snapshot_class.as_deref(),
            volume_mode: &shape.volume_mode,
        });
        site.create_if_absent(VOLUME_SNAPSHOT_CONTENT, &c).await?;
        site.create_if_absent(VOLUME_SNAPSHOT, &s).await?;
        Ok(copy_name)
    }

    /// Whether a site holds a copy of the VM's disk that coldsite made (a restore of an
    /// earlier failover): replication then lands in it, so only changes move.
    async fn holds_copy(&self, site: &SiteApi, vm: &VmModel, disk: &str) -> Result<bool, FabricError> {
        // Such a copy carries coldsite's labels, so the site's watch (when listed) knows it.
        Ok(site.get_labelled(PVC, &vm.vm_namespace, disk).await?.is_some_and(|p| {
            str_at(&p, &format!("/metadata/labels/{}", PROTECTED_VM.replace('/', "~1"))) == Some(vm.name.as_str())
                && !deleting(&p)
        }))
    }

    /// Whether every disk of the VM at `site` is the in-place destination of its replication.
    async fn written_in_place(&self, site: &SiteApi, vm: &VmModel) -> Result<bool, FabricError> {
        for disk in &vm.disks {
            let rd = site
                .get(
                    REPLICATION_DESTINATION,
                    Some(&vm.vm_namespace),
                    &objects::replication_name(disk),
                )
                .await?;
            if rd.as_ref().and_then(|rd| str_at(rd, "/spec/rsyncTLS/destinationPVC")) != Some(disk.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A VirtualMachine coldsite made as a copy of this protected VM.
    fn is_our_copy(&self, found: &Value, vm: &VmModel) -> bool {
        let label = |k: &str| str_at(found, &format!("/metadata/labels/{}", k.replace('/', "~1")));
        label(objects::MANAGED_BY) == Some("coldsite") && label(PROTECTED_VM) == Some(vm.name.as_str())
    }

    /// A permanent failure when the VM runs at `site`: its disks are not to be touched.
    async fn ensure_not_running(
        &self,
        site: &SiteApi,
        ns: &str,
        vm: &VmModel,
        site_name: &str,
    ) -> Result<(), FabricError> {
        if self.vmi_running(site, ns, &vm.vm_name).await? {
            return Err(FabricError::permanent(format!(
                "VirtualMachine {ns}/{} runs at {site_name}: its disks are not overwritten while it runs; \
                 coldsite halts it there once it is fenced (see the ProtectedVM's Fenced condition)",
                vm.vm_name
            )));
        }
        Ok(())
    }

    /// A disk an earlier run left at the target (a past cycle's copy, an in-place replication
    /// destination, a failed attempt's restore) goes, so the chosen point is restored anew.
    /// Anything not coldsite's is refused.
    async fn replace_leftover_disk(
        &self,
        site: &SiteApi,
        req: &Recovery<'_>,
        disk: &str,
        found: &Value,
    ) -> Result<(), FabricError> {
        let vm = req.vm;
        let ours =
            str_at(found, &format!("/metadata/labels/{}", PROTECTED_VM.replace('/', "~1"))) == Some(vm.name.as_str());
        let name = objects::replication_name(disk);
        let rd = site.get(REPLICATION_DESTINATION, Some(req.namespace), &name).await?;
        let in_place = rd.as_ref().and_then(|rd| str_at(rd, "/spec/rsyncTLS/destinationPVC")) == Some(disk);
        if req.test || !(ours || in_place) {
            return Err(FabricError::permanent(format!(
                "PVC {}/{disk} already exists at {} and is not a copy coldsite made of {}",
                req.namespace, req.target.name, vm.name
            )));
        }
        self.ensure_not_running(site, req.namespace, vm, &req.target.name)
            .await?;
        if in_place {
            site.delete(REPLICATION_DESTINATION, Some(req.namespace), &name).await?;
        }
        site.delete(PVC, Some(req.namespace), disk).await
    }

    /// Snapshots of the VM's disks at `site` taken before reprotect overwrites them, kept as
    /// recovery points there; true once all are ready to use.
    async fn safety_points(
        &self,
        site: &SiteApi,
        model: &SiteModel,
        run: &RunRef,
        vm: &VmModel,
    ) -> Result<bool, FabricError> {
        let ns = vm.vm_namespace.as_str();
        let mut ready = true;
        for disk in &vm.disks {
            let Some(pvc) = site.get(PVC, Some(ns), disk).await? else {
                continue;
            };
            let shape = DiskShape::of_pvc(&pvc).map_err(|e| FabricError::permanent(format!("PVC {ns}/{disk}: {e}")))?;
            let snapshot = objects::safety_snapshot(&objects::SafetySnapshot {
                namespace: ns,
                pvm: &vm.name,
                disk,
                run_uid: &run.uid,
                class: model.snapshot_class.as_deref(),
                shape: &shape,
                taken: &Utc::now().to_rfc3339(),
            });
            let found = site.create_if_absent(VOLUME_SNAPSHOT, &snapshot).await?;
            ready &= found.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true);
        }
        Ok(ready)
    }

    /// Fencing: halts the VM's copy at `site` if it runs or would start there, unless the
    /// run `spare` started it. `cached` is the VirtualMachine as a watch of the site has it, if
    /// there is one. The halt applies only to the version judged: if the copy changed since
    /// (a stale cache after the site's return, a run starting it), it is read and judged again.
    pub async fn fence(
        &self,
        site: &SiteModel,
        vm: &VmModel,
        spare: Option<&str>,
        cached: Option<Option<Value>>,
    ) -> Result<Fence, FabricError> {
        let api = self.site(&site.name)?;
        let ns = vm.vm_namespace.as_str();
        let mut found = match cached {
            Some(found) => found,
            None => api.get(VM, Some(ns), &vm.vm_name).await?,
        };
        for _ in 0..3 {
            let Some(copy) = &found else {
                return Ok(Fence::NoCopy);
            };
            let halted = str_at(copy, "/spec/runStrategy").is_none_or(|s| s == "Halted")
                && copy.pointer("/spec/running").and_then(Value::as_bool) != Some(true);
            if halted {
                return Ok(Fence::Halted);
            }
            if spare.is_some() && objects::started_by(copy) == spare {
                return Ok(Fence::Spared);
            }
            let version = str_at(copy, "/metadata/resourceVersion").unwrap_or_default();
            let patch = objects::run_strategy_patch("Halted");
            if api.merge_at_version(VM, Some(ns), &vm.vm_name, version, &patch).await? {
                return Ok(Fence::JustHalted);
            }
            found = api.get(VM, Some(ns), &vm.vm_name).await?;
        }
        Err(FabricError::transient(format!(
            "VirtualMachine {ns}/{} at {} keeps changing while coldsite halts it; trying again",
            vm.vm_name, site.name
        )))
    }

    /// Removes the replication that ran into `active` from `other`, where the VM no longer
    /// runs: after a failover nothing may write into the disks it now runs on. The source at
    /// `other` is removed when that site answers.
    pub async fn stop_replication_into(
        &self,
        active: &SiteModel,
        other: &SiteModel,
        vm: &VmModel,
    ) -> Result<(), FabricError> {
        let ns = vm.vm_namespace.as_str();
        let here = self.site(&active.name)?;
        for disk in &vm.disks {
            here.delete(REPLICATION_DESTINATION, Some(ns), &objects::replication_name(disk))
                .await?;
        }
        if let Ok(there) = self.site(&other.name) {
            for disk in &vm.disks {
                there
                    .delete(REPLICATION_SOURCE, Some(ns), &objects::replication_name(disk))
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes a disk's points past retention, never the newest; the points kept, oldest
    /// first. Read from the site's watch while it shows `newest`, the destination's image adopted.
    async fn prune(
        &self,
        site: &SiteApi,
        vm: &VmModel,
        disk: &str,
        latest: Option<Latest<'_>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DiskPoint>, FabricError> {
        let points = self.watched_disk_points(site, vm, disk, latest).await?;
        let times: Vec<RecoveryPoint> = points
            .iter()
            .map(|p| RecoveryPoint {
                time: p.point.time,
                app_consistent: false,
                one_instant: false,
            })
            .collect();
        let expired = rpo::expired(&times, now, vm.retention);
        for gone in &expired {
            if let Some(p) = points.iter().find(|p| p.point.time == gone.time) {
                site.delete(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), &p.name).await?;
            }
        }
        Ok(points
            .iter()
            .filter(|p| !expired.iter().any(|e| e.time == p.point.time))
            .map(|p| p.point)
            .collect())
    }

    /// A VM's points, from all its disks' snapshots (see [`points`]), as the site's watch
    /// shows them: a run asks at every look at a restore, and the restore itself finds its
    /// snapshots in a fresh list.
    async fn recovery_points_at(&self, site: &SiteApi, vm: &VmModel) -> Result<Vec<RecoveryPoint>, FabricError> {
        let mut disks = Vec::new();
        for disk in &vm.disks {
            let snapshots = self.watched_disk_points(site, vm, disk, None).await?;
            disks.push(snapshots.iter().map(|p| p.point).collect::<Vec<_>>());
        }
        Ok(points::vm_points(&disks))
    }

    pub(super) async fn vmi_running(&self, site: &SiteApi, ns: &str, name: &str) -> Result<bool, FabricError> {
        Ok(site.get(VMI, Some(ns), name).await?.is_some_and(|v| {
            str_at(&v, "/status/phase") != Some("Succeeded") && str_at(&v, "/status/phase") != Some("Failed")
        }))
    }
}

/// The labels and annotations that make a destination's image a recovery point of the disk:
/// VolSync keeps it (do-not-delete), and it records when its data was taken and the disk's
/// shape.
fn adoption(
    rd: &Value,
    vm: &VmModel,
    disk: &str,
    synced: DateTime<Utc>,
    app_consistent: bool,
    cut: Option<(DateTime<Utc>, &str)>,
) -> Result<Value, FabricError> {
    let shape = DiskShape::of_pvc(&json!({"spec": {
        "resources": {"requests": {"storage": rd.pointer("/spec/rsyncTLS/capacity")}},
        "accessModes": rd.pointer("/spec/rsyncTLS/accessModes"),
        "volumeMode": rd.pointer("/spec/rsyncTLS/volumeMode"),
    }}))
    .map_err(|e| {
        let name = str_at(rd, "/metadata/name").unwrap_or_default();
        FabricError::permanent(format!("ReplicationDestination {name}: {e}"))
    })?;
    let mut annotations = shape.annotations();
    annotations[POINT] = json!(synced.to_rfc3339());
    annotations[APP_CONSISTENT] = json!(app_consistent.to_string());
    if let Some((_, group)) = cut {
        annotations[objects::GROUP_SNAPSHOT] = json!(group);
    }
    Ok(json!({"metadata": {
        "labels": {DO_NOT_DELETE: "true", PROTECTED_VM: vm.name, DISK: disk, objects::MANAGED_BY: "coldsite"},
        "annotations": annotations,
    }}))
}

/// The labels of a disk's snapshots.
fn disk_selector(vm: &VmModel, disk: &str) -> String {
    format!("{PROTECTED_VM}={},{DISK}={disk}", vm.name)
}

/// Snapshots with the time of the point each records, oldest first; others, and those being
/// deleted, left out.
fn timed(snapshots: Vec<Value>) -> Vec<(DateTime<Utc>, Value)> {
    let mut points: Vec<(DateTime<Utc>, Value)> = snapshots
        .into_iter()
        .filter_map(|s| Some((SnapshotPoint::of_object(&s)?.point.time, s)))
        .collect();
    points.sort_by_key(|(t, _)| *t);
    points
}

/// Whether the object is being deleted.
fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// A VM whose copy a run left behind, by the names its objects carry.
pub struct PartialVm<'a> {
    /// The ProtectedVM.
    pub pvm: &'a str,
    /// Where the VM's copy and disks live.
    pub namespace: &'a str,
}

/// What fencing found at a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No copy of the VM there.
    NoCopy,
    /// The copy there is halted.
    Halted,
    /// The copy there was running or starting, and has just been halted.
    JustHalted,
    /// The copy there is the one the run that holds the VM started.
    Spared,
}

/// Both ends of one VM's replication.
struct Ends<'a> {
    source: &'a SiteModel,
    target: &'a SiteModel,
    src: &'a SiteApi,
    dst: &'a SiteApi,
    reuse_disks: bool,
}

/// How one disk's replication stands.
struct DiskReplication {
    established: bool,
    waiting: Vec<String>,
    /// Its points at the target, oldest first.
    points: Vec<DiskPoint>,
    /// An app-consistent sync holds its triggers.
    app_sync: bool,
    /// Its newest image awaits its snapshot's readiness since the sync that ended then (see
    /// [`Adoption::Pending`]).
    point_cut_since: Option<DateTime<Utc>>,
}

/// How one disk of a restore stands.
struct DiskRestore {
    /// Its claim is bound.
    bound: bool,
    /// When the data it restores from was taken, as far as known.
    point: Option<DateTime<Utc>>,
}

/// What became of a destination's newest image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Adoption {
    /// A recovery point, of a sync at this time; with its snapshot's point when this look
    /// read or labelled it, as the site's watch may not show it yet.
    Point(DateTime<Utc>, Option<SnapshotPoint>),
    /// Its snapshot, of a sync at this time, is not ready to use yet. VolSync publishes the
    /// image once the snapshot is bound, and nothing coldsite watches announces when the
    /// storage has cut it: whoever waits for the point looks again soon.
    Pending(DateTime<Utc>),
    /// No image, or its snapshot is gone or failed.
    Nothing,
}

impl Adoption {
    pub(super) fn point(&self) -> Option<DateTime<Utc>> {
        match self {
            Adoption::Point(t, _) => Some(*t),
            _ => None,
        }
    }
}

/// A disk's newest point as a look knows it: the site's watch may not show it yet.
#[derive(Clone, Copy)]
enum Latest<'a> {
    /// Read or labelled by this look.
    Read(&'a SnapshotPoint),
    /// The destination's newest image, by name: read unless the watch shows it.
    Named(&'a str),
}

impl<'a> Latest<'a> {
    /// What a look knows of the disk's newest point after its adoption: an image not adopted
    /// is no point yet, so there is nothing to read afresh for it.
    fn of(newest: &'a Newest, rd: &'a Value) -> Option<Self> {
        match newest {
            Newest::Adopting(Adoption::Pending(_) | Adoption::Nothing) => None,
            Newest::Adopting(Adoption::Point(_, Some(read))) => Some(Latest::Read(read)),
            _ => str_at(rd, "/status/latestImage/name").map(Latest::Named),
        }
    }
}

/// Who adopts a disk's newest image.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Newest {
    /// Its consistency group's rounds.
    Rounds,
    /// An app-consistent sync, which owns the disk's triggers and points.
    AppSync,
    /// Its schedule's pass, with this outcome.
    Adopting(Adoption),
}

/// How long after its sync a snapshot not yet ready counts as about to be: past that, the
/// storage is in trouble and the regular looks follow it.
const POINT_PENDING_FOR: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// A copy of the VM's manifest at the target, for recovering it when the source is gone.
/// Both ends are read from the sites' watches when they have listed: a copy a moment behind
/// is brought up to date at the next pass.
async fn copy_manifest(src: &SiteApi, dst: &SiteApi, vm: &VmModel) -> Result<(), FabricError> {
    let ns = vm.vm_namespace.as_str();
    let Some(source_vm) = src.get_vm(ns, &vm.vm_name).await? else {
        return Ok(());
    };
    let copy = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": objects::source_copy_name(&vm.name), "namespace": ns,
                     "labels": {PROTECTED_VM: vm.name, objects::MANAGED_BY: "coldsite"}},
        "data": {"vm.json": serde_json::to_string(&json!({
            "metadata": {"labels": source_vm.pointer("/metadata/labels").cloned().unwrap_or(Value::Null)},
            "spec": source_vm.get("spec").cloned().unwrap_or(Value::Null),
        })).unwrap_or_default()},
    });
    dst.apply_labelled(CONFIG_MAP, &copy).await.map(|_| ())
}

/// How long after a sync started (a source's) or its data arrived (a destination's) the
/// VolumeSnapshot its mover cuts is read for errors: VolSync itself warns of a snapshot still
/// unbound after 30 s. Until then the wait is young, and its look costs no request. A new
/// destination's Service likewise, for why it has no address.
const SNAPSHOT_BIND_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Whether a source's mover snapshot is worth reading for what holds up its first sync: cut
/// when the sync starts, it should have bound within the grace.
fn source_snapshot_overdue(rs: &Value, now: DateTime<Utc>) -> bool {
    super::dynamic::time_at(rs, "/status/lastSyncStartTime").is_some_and(|t| now - t >= SNAPSHOT_BIND_GRACE)
}

/// Whether a destination's mover snapshot is worth reading: it is cut once the data has
/// arrived, which the source's finished sync tells, so not while the destination waits for it.
fn destination_snapshot_overdue(rs: Option<&Value>, now: DateTime<Utc>) -> bool {
    rs.and_then(|rs| super::dynamic::time_at(rs, "/status/lastSyncTime"))
        .is_some_and(|t| now - t >= SNAPSHOT_BIND_GRACE)
}

/// Whether a destination's Service is worth reading for why it has no address: a load
/// balancer gives one within seconds, so not while the destination is new.
fn address_overdue(rd: &Value, now: DateTime<Utc>) -> bool {
    super::dynamic::time_at(rd, "/metadata/creationTimestamp").is_some_and(|t| now - t >= SNAPSHOT_BIND_GRACE)
}

/// The reasons of VolSync's `Synchronizing` condition that are steps of a healthy cycle, not
/// trouble, though the condition is False: waiting for a trigger, or cleaning up after a sync.
const VOLSYNC_WAITS: [&str; 3] = ["WaitingForSchedule", "WaitingForManual", "CleaningUp"];

/// Whether a VolSync condition says what holds a sync up: one that names an error, or is
/// False for another reason than a healthy cycle's steps (those would flap the status
/// message at every step of every sync).
fn holds_up(condition: &Value) -> bool {
    let reason = str_at(condition, "/reason").unwrap_or_default();
    reason.contains("Error") || (str_at(condition, "/status") == Some("False") && !VOLSYNC_WAITS.contains(&reason))
}

/// What the API server says when a LoadBalancer Service finds no free node port.
const NODE_PORTS_FULL: &str = "failed to allocate a nodePort";

/// The fix for a VolSync error whose cause is the site's, not VolSync's: each destination's
/// LoadBalancer Service takes a node port, and a cluster's default range holds 2,768.
fn fix_for(message: &str, site: &str) -> String {
    if !message.contains(NODE_PORTS_FULL) {
        return String::new();
    }
    format!(
        " (each replication destination's LoadBalancer Service takes a node port, and {site} has none left: \
         set spec.replication.serviceType: ClusterIP on Site {site} if the sites share a network, or widen \
         its API server's --service-node-port-range)"
    )
}

/// Why a VolSync object has not synced yet, in what VolSync and the snapshot controller
/// report: its conditions that [hold it up](holds_up), and, when `snapshot_overdue`,
/// the errors of the VolumeSnapshot its mover cuts. Read only while a disk has never synced.
async fn blockers(
    site: &SiteApi,
    site_name: &str,
    kind: Kind,
    owner: &Value,
    snapshot_overdue: bool,
) -> Result<Vec<String>, FabricError> {
    let ns = str_at(owner, "/metadata/namespace").unwrap_or_default();
    let name = str_at(owner, "/metadata/name").unwrap_or_default();
    let mut out: Vec<String> = owner
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| holds_up(c))
        .map(|c| {
            let message = str_at(c, "/message").unwrap_or("");
            format!(
                "{} {ns}/{name} at {site_name}: {} {} ({}): {message}{}",
                kind.kind,
                str_at(c, "/type").unwrap_or("?"),
                str_at(c, "/status").unwrap_or("?"),
                str_at(c, "/reason").unwrap_or(""),
                fix_for(message, site_name)
            )
        })
        .collect();
    if !snapshot_overdue {
        return Ok(out);
    }
    let Some(snapshot) = mover_snapshot(site, kind, owner).await? else {
        return Ok(out);
    };
    let uid = str_at(owner, "/metadata/uid").unwrap_or_default();
    let owned = snapshot
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| str_at(r, "/uid") == Some(uid)));
    if let Some(error) = str_at(&snapshot, "/status/error/message").filter(|_| owned) {
        out.push(format!(
            "VolumeSnapshot {ns}/{} at {site_name}: {error}",
            str_at(&snapshot, "/metadata/name").unwrap_or_default()
        ));
    }
    Ok(out)
}

/// The VolumeSnapshot a VolSync object's mover cuts, by the name VolSync gives it (no LIST of
/// the namespace): a source's of its disk before the copy, a destination's of what it
/// received, named on its PVC. Both from the site's watches once listed: a slow site's
/// overdue syncs are looked at again and again.
async fn mover_snapshot(site: &SiteApi, kind: Kind, owner: &Value) -> Result<Option<Value>, FabricError> {
    let ns = str_at(owner, "/metadata/namespace").unwrap_or_default();
    let name = str_at(owner, "/metadata/name").unwrap_or_default();
    let snapshot = if kind.plural == REPLICATION_SOURCE.plural {
        objects::volsync_source_snapshot(name)
    } else {
        let pvc = site.get_pvc(ns, &objects::volsync_destination_pvc(owner)).await?;
        let annotation = format!(
            "/metadata/annotations/{}",
            objects::VOLSYNC_SNAPSHOT_NAME.replace('/', "~1")
        );
        match pvc.as_ref().and_then(|p| str_at(p, &annotation)) {
            Some(snapshot) => snapshot.to_owned(),
            None => return Ok(None),
        }
    };
    site.get_image(ns, &snapshot).await
}

/// Why a destination has no address yet, when its Service is the reason: a LoadBalancer
/// Service that no load balancer has given an address.
async fn address_blocker(site: &SiteApi, target: &SiteModel, rd: &Value) -> Result<Option<String>, FabricError> {
    let ns = str_at(rd, "/metadata/namespace").unwrap_or_default();
    let name = objects::volsync_destination_mover(str_at(rd, "/metadata/name").unwrap_or_default());
    let Some(service) = site.get_volsync_service(ns, &name).await? else {
        return Ok(None);
    };
    let has_ingress = service
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty());
    if str_at(&service, "/spec/type") != Some("LoadBalancer") || has_ingress {
        return Ok(None);
    }
    Ok(Some(format!(
        "Service {ns}/{name} at {} has no load-balancer address yet: the site needs a LoadBalancer \
         implementation (MetalLB, a cloud's), or set spec.replication.serviceType: ClusterIP on Site {} if \
         the sites share a network",
        target.name, target.name
    )))
}

impl Fabric for KubeVirtFabric {
    async fn ensure_replication(
        &self,
        vm: &VmModel,
        direction: Direction,
        primary: &SiteModel,
        recovery: &SiteModel,
    ) -> Result<ReplicationState, FabricError> {
        let (source, target) = match direction {
            Direction::Forward => (primary, recovery),
            Direction::Reverse => (recovery, primary),
        };
        self.replicate(vm, source, target, direction == Direction::Reverse, Utc::now())
            .await
    }

    async fn recovery_points(&self, vm: &VmModel, direction: Direction) -> Result<Vec<RecoveryPoint>, FabricError> {
        let (_, target) = self.ends(direction);
        self.recovery_points_at(self.site(&target.name)?, vm).await
    }

    async fn power_off(&self, _run: &RunRef, site: &SiteModel, vm: &VmModel) -> FabricResult<()> {
        let api = self.site(&site.name)?;
        let ns = vm.vm_namespace.as_str();
        if api
            .merge(VM, Some(ns), &vm.vm_name, &objects::run_strategy_patch("Halted"))
            .await?
            .is_none()
        {
            return Ok(Progress::Done(()));
        }
        if self.vmi_running(api, ns, &vm.vm_name).await? {
            return in_progress(SOON);
        }
        Ok(Progress::Done(()))
    }

    async fn check_stopped(&self, site: &SiteModel, vm: &VmModel) -> FabricResult<()> {
        let api = self.site(&site.name)?;
        if self.vmi_running(api, &vm.vm_namespace, &vm.vm_name).await? {
            return Err(FabricError::permanent(format!(
                "VirtualMachine {}/{} is still running at {}: stop it, or run the failover with shutdownSource",
                vm.vm_namespace, vm.vm_name, site.name
            )));
        }
        Ok(Progress::Done(()))
    }

    /// `_after` (the power-off, by the controller's clock) is not compared with the sites'
    /// times: [the protocol](final_sync) relies on causality instead.
    async fn final_sync(&self, run: &RunRef, vm: &VmModel, _after: DateTime<Utc>) -> FabricResult<RecoveryPoint> {
        let (source, target) = self.ends(run.direction);
        let (src, dst) = (self.site(&source.name)?, self.site(&target.name)?);
        let source = source.name.as_str();
        let ns = vm.vm_namespace.as_str();
        let mut point: Option<DateTime<Utc>> = None;
        for disk in &vm.disks {
            let name = objects::replication_name(disk);
            let Some(rs) = src.get(REPLICATION_SOURCE, Some(ns), &name).await? else {
                return Err(FabricError::permanent(format!(
                    "VM {}: no ReplicationSource for disk {disk} at {source}; is it protected?",
                    vm.name
                )));
            };
            let rd = dst.get(REPLICATION_DESTINATION, Some(ns), &name).await?;
            let job = dst
                .get(JOB, Some(ns), &objects::volsync_destination_mover(&name))
                .await?;
            let ends = final_sync::Ends {
                source: &rs,
                destination: rd.as_ref(),
                destination_job: job.as_ref(),
            };
            match final_sync::next(&run.uid, &ends) {
                final_sync::Next::TagDestination { tag } => {
                    let manual = json!({"spec": {"trigger": {"manual": tag}}});
                    dst.merge(REPLICATION_DESTINATION, Some(ns), &name, &manual).await?;
                    return in_progress(SOON);
                }
                final_sync::Next::TagSource { tag, source_version } => {
                    // A manual trigger replaces the schedule: one last sync, then replication
                    // pauses until reprotect. It copies the stopped VM's disk itself, also when
                    // group rounds had the source copy their cuts.
                    let trigger = json!({"spec": {"sourcePVC": disk, "trigger": {"schedule": null, "manual": tag},
                                                  "rsyncTLS": {"copyMethod": "Snapshot"}}});
                    src.merge_at_version(REPLICATION_SOURCE, Some(ns), &name, &source_version, &trigger)
                        .await?;
                    return in_progress(SOON);
                }
                final_sync::Next::Wait => return in_progress(SOON),
                final_sync::Next::Adopt => match self.adopt_latest(dst, vm, disk, true).await? {
                    Some(t) => point = Some(point.map_or(t, |p| p.max(t))),
                    None => return in_progress(SOON),
                },
            }
        }
        match point {
            Some(time) => Ok(Progress::Done(RecoveryPoint {
                time,
                app_consistent: true,
                one_instant: false,
            })),
            None => Err(FabricError::permanent(format!("VM {} has no disks to sync", vm.name))),
        }
    }

    /// Planned actions keep the disks replication wrote in place (after a first cycle, and
    /// always for failback): their final sync is there, and nothing needs restoring. Others
    /// restore each disk from the chosen point, replacing what an earlier run left.
    async fn restore_disks(&self, req: &Recovery<'_>, point: &RecoveryPoint) -> FabricResult<RecoveryPoint> {
        let site = self.site(&req.target.name)?;
        let vm = req.vm;
        if !req.test && req.run.action.is_planned() && self.written_in_place(site, vm).await? {
            return Ok(Progress::Done(point.clone()));
        }
        if req.run.direction == Direction::Reverse {
            return Err(FabricError::permanent(format!(
                "failback: the disks of {} at {} are not the destinations of its replication; reprotect first",
                vm.name, req.target.name
            )));
        }
        site.ensure_namespace(req.namespace).await?;
        let (mut bound, mut newest) = (true, None::<DateTime<Utc>>);
        for disk in &vm.disks {
            let restored = self.restore_disk(site, req, point, disk).await?;
            bound &= restored.bound;
            if let Some(t) = restored.point {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
        if !bound {
            return in_progress(SOON);
        }
        // The point used is the newest of the snapshots the disks restore from.
        Ok(Progress::Done(RecoveryPoint {
            time: newest.unwrap_or(point.time),
            ..point.clone()
        }))
    }

    async fn restored_point(&self, req: &Recovery<'_>) -> Result<Option<DateTime<Utc>>, FabricError> {
        let site = self.site(&req.target.name)?;
        for disk in &req.vm.disks {
            let Some(pvc) = site.get(PVC, Some(req.namespace), disk).await? else {
                continue;
            };
            let ours = objects::made_by_run(&pvc);
            if ours == Some(req.run.uid.as_str())
                && let Some(t) = app_consistent::annotation(&pvc, POINT).and_then(parse_time)
            {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    async fn create_vm(&self, req: &Recovery<'_>) -> FabricResult<()> {
        let site = self.site(&req.target.name)?;
        let vm = req.vm;
        if let Some(existing) = site.get(VM, Some(req.namespace), &vm.vm_name).await? {
            let owner = objects::made_by_run(&existing);
            return match owner {
                Some(uid) if uid == req.run.uid => Ok(Progress::Done(())),
                // Failback finds the original, halted since the failover: it comes back as it was.
                None if req.run.direction == Direction::Reverse => Ok(Progress::Done(())),
                // A copy an earlier failover made (a past cycle, a failed attempt) is made anew.
                _ if !req.test && self.is_our_copy(&existing, vm) => {
                    self.ensure_not_running(site, req.namespace, vm, &req.target.name)
                        .await?;
                    site.delete(VM, Some(req.namespace), &vm.vm_name).await?;
                    in_progress(SOON)
                }
                _ => Err(FabricError::permanent(format!(
                    "VirtualMachine {}/{} already exists at {} and is not a copy coldsite made of {}",
                    req.namespace, vm.vm_name, req.target.name, vm.name
                ))),
            };
        }
        let copy = site
            .get(CONFIG_MAP, Some(&vm.vm_namespace), &objects::source_copy_name(&vm.name))
            .await?
            .ok_or_else(|| {
                FabricError::permanent(format!(
                    "no copy of VM {}'s manifest at {}; has replication been established?",
                    vm.name, req.target.name
                ))
            })?;
        let source: Value = str_at(&copy, "/data/vm.json")
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| FabricError::permanent(format!("the copy of VM {}'s manifest does not parse", vm.name)))?;
        let recovered = objects::recovered_vm(&source, req).map_err(FabricError::permanent)?;
        site.create_if_absent(VM, &recovered).await?;
        Ok(Progress::Done(()))
    }

    async fn power_on(&self, req: &Recovery<'_>) -> FabricResult<()> {
        let site = self.site(&req.target.name)?;
        match site
            .merge(
                VM,
                Some(req.namespace),
                &req.vm.vm_name,
                &objects::started_patch(&req.run.uid),
            )
            .await?
        {
            Some(_) => Ok(Progress::Done(())),
            None => Err(FabricError::transient(format!(
                "VirtualMachine {}/{} not found",
                req.namespace, req.vm.vm_name
            ))),
        }
    }

    async fn vm_ready(&self, req: &Recovery<'_>, readiness: &ReadinessModel) -> FabricResult<()> {
        let site = self.site(&req.target.name)?;
        let ns = req.namespace;
        let name = &req.vm.vm_name;
        // The VM from the site's watch, so asking often costs no request.
        if readiness.vm_ready {
            let vm = site.get_vm(ns, name).await?;
            if !vm
                .as_ref()
                .and_then(|v| v.pointer("/status/ready"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                return in_progress(Duration::from_secs(1));
            }
        }
        if readiness.guest_agent {
            let vmi = site.get(VMI, Some(ns), name).await?;
            let agent = vmi
                .as_ref()
                .and_then(|v| v.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|c| c["type"] == "AgentConnected" && c["status"] == "True"));
            if !agent {
                return in_progress(Duration::from_secs(3));
            }
        }
        for probe in &readiness.probes {
            if !crate::probes::probe(&self.scripts.http, probe, req).await {
                return in_progress(Duration::from_secs(5));
            }
        }
        Ok(Progress::Done(()))
    }

    async fn run_script(&self, req: &ScriptRequest<'_>) -> FabricResult<()> {
        self.scripts.run(self, req).await
    }

    async fn commit(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()> {
        // Keep the points the run restored from; the others go.
        let (_, target) = self.ends(run.direction);
        let site = self.site(&target.name)?;
        let keep: Vec<String> = site
            .list(PVC, Some(&vm.vm_namespace), &format!("{PROTECTED_VM}={}", vm.name))
            .await?
            .iter()
            .filter_map(|p| str_at(p, "/spec/dataSource/name").map(str::to_owned))
            .collect();
        for disk in &vm.disks {
            for (_, s) in self.disk_points(site, vm, disk).await? {
                let name = str_at(&s, "/metadata/name").unwrap_or_default();
                if !keep.iter().any(|k| k == name) {
                    site.delete(VOLUME_SNAPSHOT, Some(&vm.vm_namespace), name).await?;
                }
            }
        }
        Ok(Progress::Done(()))
    }

    async fn reverse_replication(&self, run: &RunRef, vm: &VmModel) -> FabricResult<()> {
        // `run.direction` is the way the last failover went: the copy now runs at its target,
        // which becomes the source; the old source's disks become the destinations.
        let (old_source, active) = self.ends(run.direction);
        let (old, new) = (self.site(&old_source.name)?, self.site(&active.name)?);
        let ns = vm.vm_namespace.as_str();
        self.ensure_not_running(old, ns, vm, &old_source.name).await?;
        // What the old disks hold that never replicated (writes after the last sync of an
        // unplanned failover) is kept as a point before replication overwrites them.
        if !self.safety_points(old, old_source, run, vm).await? {
            return in_progress(SOON);
        }
        for disk in &vm.disks {
            let name = objects::replication_name(disk);
            old.delete(REPLICATION_SOURCE, Some(ns), &name).await?;
            new.delete(REPLICATION_DESTINATION, Some(ns), &name).await?;
        }
        if group_cut::applies(vm, old_source) {
            group_cut::remove_leftovers(old, vm).await?;
        }
        let state = self.replicate(vm, active, old_source, true, Utc::now()).await?;
        if state.established {
            Ok(Progress::Done(()))
        } else {
            in_progress(SOON)
        }
    }

    async fn delete_test_resources(&self, run: &RunRef, site: &SiteModel) -> FabricResult<()> {
        let api = self.site(&site.name)?;
        let selector = format!("{RUN_UID}={}", run.uid);
        let mut left = 0usize;
        for kind in [VM, PVC, VOLUME_SNAPSHOT, CONFIG_MAP, JOB] {
            for o in api.list(kind, None, &selector).await? {
                left += 1;
                let ns = str_at(&o, "/metadata/namespace");
                api.delete(kind, ns, str_at(&o, "/metadata/name").unwrap_or_default())
                    .await?;
            }
        }
        for o in api.list(VOLUME_SNAPSHOT_CONTENT, None, &selector).await? {
            left += 1;
            api.delete(
                VOLUME_SNAPSHOT_CONTENT,
                None,
                str_at(&o, "/metadata/name").unwrap_or_default(),
            )
            .await?;
        }
        if left == 0 {
            Ok(Progress::Done(()))
        } else {
            in_progress(SOON)
        }
    }
}

impl KubeVirtFabric {
    /// Removes what the run `run_uid` left at `site` for a VM it did not move: the copy it
    /// created there (never one that runs) and the disks it restored for it, even if
    /// replication has written into them in place since (its next sync then starts over).
    /// Disks the run did not restore stay. Done once nothing is left.
    pub async fn discard_partial(&self, run_uid: &str, site: &str, vm: &PartialVm<'_>) -> FabricResult<()> {
        let api = self.site(site)?;
        let selector = format!("{RUN_UID}={run_uid},{PROTECTED_VM}={}", vm.pvm);
        // What is already being deleted goes on its own: a disk as soon as no mover uses it.
        let copies: Vec<Value> = api
            .list(VM, Some(vm.namespace), &selector)
            .await?
            .into_iter()
            .filter(|o| !deleting(o))
            .collect();
        for o in &copies {
            let name = str_at(o, "/metadata/name").unwrap_or_default();
            if self.vmi_running(api, vm.namespace, name).await? {
                return Err(FabricError::permanent(format!(
                    "VirtualMachine {}/{name} runs at {site}: coldsite does not discard a copy that runs; halt it first",
                    vm.namespace
                )));
            }
            api.delete(VM, Some(vm.namespace), name).await?;
        }
        let disks: Vec<Value> = api
            .list(PVC, Some(vm.namespace), &selector)
            .await?
            .into_iter()
            .filter(|o| !deleting(o))
            .collect();
        for o in &disks {
            api.delete(PVC, Some(vm.namespace), str_at(o, "/metadata/name").unwrap_or_default())
                .await?;
        }
        if copies.is_empty() && disks.is_empty() {
            Ok(Progress::Done(()))
        } else {
            in_progress(SOON)
        }
    }

    /// Deletes the Jobs and context ConfigMaps a test's `site: management` scripts left in
    /// the scripts namespace of the run's namespace on the management cluster; done once
    /// none is left.
    pub async fn delete_management_scripts(&self, run: &RunRef) -> FabricResult<()> {
        let selector = format!("{RUN_UID}={}", run.uid);
        let ns = names::scripts_namespace(&run.namespace);
        let mut left = 0usize;
        for kind in [JOB, CONFIG_MAP] {
            for o in self.management.list(kind, Some(&ns), &selector).await? {
                left += 1;
                let name = str_at(&o, "/metadata/name").unwrap_or_default();
                self.management.delete(kind, Some(&ns), name).await?;
            }
        }
        if left == 0 {
            Ok(Progress::Done(()))
        } else {
            in_progress(SOON)
        }
    }
}

/// The probe helper needs the recovered addresses.
pub fn probe_address(req: &Recovery<'_>, probe: &ProbeModel) -> Option<std::net::IpAddr> {
    let nic_name = match probe {
        ProbeModel::Tcp { nic, .. } | ProbeModel::Http { nic, .. } => nic.as_deref(),
    };
    let nic = match nic_name {
        Some(n) => req.nics.iter().find(|x| x.name == n),
        None => req.nics.first(),
    }?;
    nic.plan.addresses.first().map(|a| a.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use http_body_util::BodyExt;

    /// Requests as "VERB path", in order.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A site's API server holding one VolumeSnapshot, `img`: it answers every request with
    /// it, applying merge patches to it first, and logs each request (the test asserts
    /// which were made).
    fn site_holding(snapshot: Value, watch: Arc<crate::site_watch::SiteWatch>) -> (SiteApi, Log) {
        let log = Log::default();
        let (seen, held) = (log.clone(), Arc::new(Mutex::new(snapshot)));
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (seen, held) = (seen.clone(), held.clone());
            async move {
                let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                seen.lock().unwrap().push(format!("{method} {path}"));
                if method == http::Method::PATCH {
                    let body = req.into_body().collect().await?.to_bytes();
                    merge_into(&mut held.lock().unwrap(), &serde_json::from_slice(&body)?);
                }
                let body = serde_json::to_vec(&*held.lock().unwrap())?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(kube::client::Body::from(body)))
            }
        });
        let site = SiteApi {
            site: "dr".into(),
            client: kube::Client::new(service, "default"),
            watch: Some(watch),
        };
        (site, log)
    }

    /// DR's watches, holding the objects `given` by kind, once they have listed them.
    async fn listed_watch(given: HashMap<&'static str, Vec<String>>) -> Arc<crate::site_watch::SiteWatch> {
        let (changes, _) = tokio::sync::broadcast::channel(1);
        let watch = crate::site_watch::SiteWatch::start("dr", crate::site_watch::Source::Given(given), changes);
        while !watch.listed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watch
    }

    /// A JSON merge patch (RFC 7386), as the API server applies it.
    fn merge_into(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_into(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    fn vm() -> VmModel {
        VmModel {
            name: "db01".into(),
            namespace: "apps".into(),
            vm_namespace: "apps".into(),
            vm_name: "db01".into(),
            disks: vec!["data".into()],
            nics: Vec::new(),
            rpo: Duration::from_secs(900),
            retention: Duration::from_secs(86_400),
            app_consistent_interval: None,
            cpu: None,
            memory: None,
            cut_with: Vec::new(),
        }
    }

    fn fabric() -> KubeVirtFabric {
        let unused = kube::Client::new(
            tower::service_fn(|_| async { Err::<http::Response<kube::client::Body>, _>("unused") }),
            "default",
        );
        KubeVirtFabric {
            sites: HashMap::new(),
            management: SiteApi {
                site: "management".into(),
                client: unused.clone(),
                watch: None,
            },
            scripts: ScriptRunner {
                http: crate::http_client::HttpClient::new().unwrap(),
            },
            keys: Arc::new(ReplicationKeys::new(unused, "coldsite-system", "keys")),
            freeze_seconds: prometheus::HistogramVec::new(prometheus::HistogramOpts::new("f", "f"), &["site"]).unwrap(),
            primary: SiteModel::default(),
            recovery: SiteModel::default(),
        }
    }

    /// The site's watch, listed: the disk's two earlier points.
    async fn watch_of_earlier_points() -> Arc<crate::site_watch::SiteWatch> {
        watch_of_earlier_points_and(Vec::new()).await
    }

    /// [`watch_of_earlier_points`], with VolSync's `images` not yet adopted.
    async fn watch_of_earlier_points_and(images: Vec<Value>) -> Arc<crate::site_watch::SiteWatch> {
        let point = |name: &str, at: &str| {
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                   "metadata": {"name": name, "namespace": "apps",
                                "labels": {PROTECTED_VM: "db01", DISK: "data", objects::MANAGED_BY: "coldsite"},
                                "annotations": {POINT: at}}})
            .to_string()
        };
        let given = HashMap::from([
            (
                VOLUME_SNAPSHOT.plural,
                vec![point("p1", "2026-12-05T06:00:00Z"), point("p2", "2026-12-05T06:15:00Z")],
            ),
            (crate::site_watch::IMAGES, images.iter().map(Value::to_string).collect()),
        ]);
        listed_watch(given).await
    }

    /// The disk's destination, which synced at 06:30 into the image `img`.
    fn destination_synced_into_img() -> (&'static str, Value) {
        let synced = "2026-12-05T06:30:00Z";
        let rd = json!({"metadata": {"name": "data"},
                        "spec": {"rsyncTLS": {"capacity": "10Gi", "accessModes": ["ReadWriteOnce"]}},
                        "status": {"lastSyncTime": synced, "latestImage": {"name": "img"}}});
        (synced, rd)
    }

    #[tokio::test]
    async fn a_look_that_adopts_a_point_reads_its_snapshot_once_though_the_watch_does_not_show_it_yet() {
        let (synced, rd) = destination_synced_into_img();
        let image = json!({"metadata": {"name": "img", "namespace": "apps"}, "status": {"readyToUse": true}});
        let (site, log) = site_holding(image, watch_of_earlier_points().await);
        let (fabric, vm) = (fabric(), vm());
        let now = parse_time("2026-12-05T06:31:00Z").unwrap();
        let path = "/apis/snapshot.storage.k8s.io/v1/namespaces/apps/volumesnapshots/img";
        let times = |points: &[DiskPoint]| points.iter().map(|p| p.time.to_rfc3339()).collect::<Vec<_>>();
        let time = parse_time(synced).unwrap();
        let point = SnapshotPoint {
            name: "img".into(),
            point: DiskPoint {
                time,
                app_consistent: false,
                group: false,
            },
        };
        let expected = [
            "2026-12-05T06:00:00+00:00",
            "2026-12-05T06:15:00+00:00",
            "2026-12-05T06:30:00+00:00",
        ];
        // The look that labels the image, then one before the watch shows the label.
        for requests in [
            vec![format!("GET {path}"), format!("PATCH {path}")],
            vec![format!("GET {path}")],
        ] {
            log.lock().unwrap().clear();
            let adopted = fabric.adopt_from(&site, &vm, "data", &rd, false, None).await.unwrap();
            assert_eq!(adopted, Adoption::Point(time, Some(point.clone())));
            let newest = Newest::Adopting(adopted);
            let kept = fabric
                .prune(&site, &vm, "data", Latest::of(&newest, &rd), now)
                .await
                .unwrap();
            assert_eq!(times(&kept), expected);
            assert_eq!(*log.lock().unwrap(), requests);
        }
        // Known only by name, the image is read: the watch does not show it.
        log.lock().unwrap().clear();
        let kept = fabric
            .prune(&site, &vm, "data", Some(Latest::Named("img")), now)
            .await
            .unwrap();
        assert_eq!(times(&kept), expected);
        assert_eq!(*log.lock().unwrap(), [format!("GET {path}")]);
    }

    #[tokio::test]
    async fn a_look_reads_the_image_being_cut_from_the_watch_and_only_labels_it_once_ready() {
        let (synced, rd) = destination_synced_into_img();
        let image = |ready: bool| {
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                   "metadata": {"name": "img", "namespace": "apps",
                                "labels": {"app.kubernetes.io/created-by": "volsync"}},
                   "status": {"readyToUse": ready}})
        };
        let (fabric, vm) = (fabric(), vm());
        let time = parse_time(synced).unwrap();
        // Being cut, as the watch shows it: no request.
        let (site, log) = site_holding(image(false), watch_of_earlier_points_and(vec![image(false)]).await);
        let adopted = fabric.adopt_from(&site, &vm, "data", &rd, false, None).await.unwrap();
        assert_eq!(adopted, Adoption::Pending(time));
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
        // Cut: labelled, its one request, and the points read from the answer.
        let (site, log) = site_holding(image(true), watch_of_earlier_points_and(vec![image(true)]).await);
        let adopted = fabric.adopt_from(&site, &vm, "data", &rd, false, None).await.unwrap();
        let Adoption::Point(at, Some(point)) = &adopted else {
            panic!("not adopted: {adopted:?}")
        };
        assert_eq!((*at, &*point.name, point.point.time), (time, "img", time));
        let newest = Newest::Adopting(adopted.clone());
        let now = parse_time("2026-12-05T06:31:00Z").unwrap();
        let kept = fabric
            .prune(&site, &vm, "data", Latest::of(&newest, &rd), now)
            .await
            .unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(
            *log.lock().unwrap(),
            ["PATCH /apis/snapshot.storage.k8s.io/v1/namespaces/apps/volumesnapshots/img"]
        );
    }

    #[tokio::test]
    async fn an_overdue_destinations_failed_image_is_reported_from_the_watches_with_no_request() {
        let rd = json!({"metadata": {"name": "coldsite-data", "namespace": "apps", "uid": "rd1"}});
        let disk = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          "metadata": {"name": "volsync-coldsite-data-dst", "namespace": "apps",
                                       "annotations": {objects::VOLSYNC_SNAPSHOT_NAME: "img"}}});
        let image = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                           "metadata": {"name": "img", "namespace": "apps",
                                        "labels": {"app.kubernetes.io/created-by": "volsync"},
                                        "ownerReferences": [{"apiVersion": "volsync.backube/v1alpha1",
                                                             "kind": "ReplicationDestination",
                                                             "name": "coldsite-data", "uid": "rd1"}]},
                           "status": {"readyToUse": false, "error": {"message": "no space left"}}});
        let given = HashMap::from([
            (PVC.plural, vec![disk.to_string()]),
            (crate::site_watch::IMAGES, vec![image.to_string()]),
        ]);
        let (site, log) = site_holding(Value::Null, listed_watch(given).await);
        let found = blockers(&site, "dr", REPLICATION_DESTINATION, &rd, true).await.unwrap();
        assert_eq!(found, ["VolumeSnapshot apps/img at dr: no space left"]);
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    }

    #[tokio::test]
    async fn a_destination_the_sites_node_ports_cannot_serve_says_how_to_fix_it() {
        let rd = |message: &str| {
            json!({"metadata": {"name": "coldsite-data", "namespace": "apps"},
                   "status": {"conditions": [{"type": "Synchronizing", "status": "False", "reason": "Error",
                                              "message": message}]}})
        };
        let (site, log) = site_holding(Value::Null, listed_watch(HashMap::new()).await);
        let full = "Internal error occurred: failed to allocate a nodePort: range is full";
        let found = blockers(&site, "dr", REPLICATION_DESTINATION, &rd(full), false)
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].contains(full), "VolSync's own words stay: {}", found[0]);
        assert!(
            found[0].contains("spec.replication.serviceType: ClusterIP on Site dr")
                && found[0].contains("--service-node-port-range"),
            "and the fixes follow: {}",
            found[0]
        );
        let other = blockers(&site, "dr", REPLICATION_DESTINATION, &rd("quota exceeded"), false)
            .await
            .unwrap();
        assert_eq!(
            other,
            ["ReplicationDestination apps/coldsite-data at dr: Synchronizing False (Error): quota exceeded"]
        );
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    }

    #[tokio::test]
    async fn a_destination_without_an_address_is_explained_from_the_watched_services_with_no_request() {
        let rd = |name: &str| json!({"metadata": {"name": name, "namespace": "apps"}});
        let service = |name: &str, ingress: Value| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": "apps",
                                "labels": {"app.kubernetes.io/created-by": "volsync"},
                                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}},
                   "spec": {"type": "LoadBalancer"},
                   "status": {"loadBalancer": ingress}})
        };
        let given = HashMap::from([(
            crate::kubevirt::dynamic::SERVICE.plural,
            vec![
                service(&objects::volsync_destination_mover("coldsite-a"), json!({})).to_string(),
                service(
                    &objects::volsync_destination_mover("coldsite-b"),
                    json!({"ingress": [{"ip": "192.0.2.10"}]}),
                )
                .to_string(),
            ],
        )]);
        let (site, log) = site_holding(Value::Null, listed_watch(given).await);
        let target = SiteModel {
            name: "dr".into(),
            ..SiteModel::default()
        };
        let unserved = address_blocker(&site, &target, &rd("coldsite-a")).await.unwrap();
        assert!(
            unserved.is_some_and(|why| why.contains("has no load-balancer address yet")),
            "a LoadBalancer Service no load balancer serves is the reason"
        );
        let served = address_blocker(&site, &target, &rd("coldsite-b")).await.unwrap();
        assert_eq!(served, None, "its address is on its way: VolSync publishes it");
        let unmade = address_blocker(&site, &target, &rd("coldsite-c")).await.unwrap();
        assert_eq!(unmade, None, "VolSync has not made its Service yet: nothing to explain");
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    }

    #[test]
    fn points_are_ordered_by_the_time_they_record_and_those_going_are_not_points() {
        let snapshot = |name: &str, time: Option<&str>, going: bool| {
            let mut s = json!({"metadata": {"name": name, "annotations": {}}});
            if let Some(t) = time {
                s["metadata"]["annotations"][POINT] = json!(t);
            }
            if going {
                s["metadata"]["deletionTimestamp"] = json!("2026-12-02T10:00:00Z");
            }
            s
        };
        let points = timed(vec![
            snapshot("late", Some("2026-12-02T09:00:00Z"), false),
            snapshot("unlabelled", None, false),
            snapshot("pruned", Some("2026-12-02T07:00:00Z"), true),
            snapshot("early", Some("2026-12-02T08:00:00Z"), false),
        ]);
        let names: Vec<&str> = points.iter().filter_map(|(_, s)| str_at(s, "/metadata/name")).collect();
        assert_eq!(names, ["early", "late"]);
    }

    #[test]
    fn a_movers_snapshot_or_a_destinations_service_is_read_only_once_it_should_have_bound() {
        let now = parse_time("2026-12-03T10:00:00Z").unwrap();
        let source = |status: Value| json!({ "status": status });
        // A source's snapshot is cut when its sync starts.
        assert!(
            !source_snapshot_overdue(&source(json!({})), now),
            "no sync under way, no snapshot"
        );
        let young = source(json!({"lastSyncStartTime": "2026-12-03T09:59:31Z"}));
        assert!(!source_snapshot_overdue(&young, now));
        let overdue = source(json!({"lastSyncStartTime": "2026-12-03T09:59:30Z"}));
        assert!(source_snapshot_overdue(&overdue, now));
        // A destination's Service, once it should have had an address.
        let made = |at: &str| json!({"metadata": {"creationTimestamp": at}});
        assert!(!address_overdue(&made("2026-12-03T09:59:31Z"), now));
        assert!(address_overdue(&made("2026-12-03T09:59:30Z"), now));
        // A destination's, once the source has sent the data.
        assert!(!destination_snapshot_overdue(None, now));
        assert!(!destination_snapshot_overdue(Some(&overdue), now), "still sending");
        let sent = source(json!({"lastSyncTime": "2026-12-03T09:59:31Z"}));
        assert!(!destination_snapshot_overdue(Some(&sent), now));
        let sent = source(json!({"lastSyncTime": "2026-12-03T09:58:00Z"}));
        assert!(destination_snapshot_overdue(Some(&sent), now));
    }

    #[test]
    fn a_healthy_sync_cycles_steps_do_not_count_as_what_holds_it_up() {
        let condition =
            |status: &str, reason: &str| json!({"type": "Synchronizing", "status": status, "reason": reason});
        for step in VOLSYNC_WAITS {
            assert!(!holds_up(&condition("False", step)), "{step}");
        }
        assert!(!holds_up(&condition("True", "SyncInProgress")));
        assert!(holds_up(&condition("False", "Error")));
        assert!(holds_up(&condition("True", "Error")));
        assert!(holds_up(&condition("False", "SomethingNew")));
    }
}
