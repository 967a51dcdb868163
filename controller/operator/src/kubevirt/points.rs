//! A VM's recovery points from its disks' snapshots. Each disk is snapshotted on its own
//! schedule, so a VM point at time T restores every disk from its newest snapshot not after
//! T; T is a point only when every disk has one. The points are the distinct such
//! combinations, each at the time of its newest snapshot: never newer than what was asked
//! for (DESIGN §4.6), and app-consistent only when every disk's snapshot is. A snapshot
//! cut by a [group snapshot](super::group_cut) makes a point only together with every other
//! disk's snapshot of that instant: never mixed with another disk's older one, even for the
//! moment between adopting one disk's snapshot and the next.

use chrono::{DateTime, Utc};
use coldsite_engine::fabric::RecoveryPoint;
use kube::core::ObjectMeta;
use serde_json::Value;

use super::dynamic::parse_time;
use super::objects::{APP_CONSISTENT, DISK, GROUP_SNAPSHOT, POINT, PROTECTED_VM};

/// One disk's snapshot, as far as points are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskPoint {
    pub time: DateTime<Utc>,
    pub app_consistent: bool,
    /// Cut with every other disk of the VM at one instant (by a group snapshot).
    pub group: bool,
}

/// A disk's recovery point as its VolumeSnapshot records it in coldsite's annotations:
/// all a look reads of a point, and all a site's watch keeps of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// The VolumeSnapshot's name.
    pub name: Box<str>,
    pub point: DiskPoint,
}

impl SnapshotPoint {
    /// The point a snapshot's metadata records; `None` for a snapshot being deleted, or one
    /// not adopted (no time).
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let annotation = |key: &str| meta.annotations.as_ref()?.get(key).map(String::as_str);
        Some(Self {
            name: meta.name.as_deref()?.into(),
            point: DiskPoint {
                time: parse_time(annotation(POINT)?)?,
                app_consistent: annotation(APP_CONSISTENT) == Some("true"),
                group: annotation(GROUP_SNAPSHOT).is_some(),
            },
        })
    }

    /// [`Self::of`] a snapshot as the API server sent it.
    pub fn of_object(snapshot: &Value) -> Option<Self> {
        Self::of(&metadata(snapshot)?)
    }

    /// [`Self::of_object`] of a snapshot whose labels name this disk of this ProtectedVM;
    /// any other is none of its points.
    pub fn of_disk(snapshot: &Value, pvm: &str, disk: &str) -> Option<Self> {
        let meta = metadata(snapshot)?;
        let label = |key: &str| meta.labels.as_ref()?.get(key).map(String::as_str);
        (label(PROTECTED_VM) == Some(pvm) && label(DISK) == Some(disk))
            .then(|| Self::of(&meta))
            .flatten()
    }
}

fn metadata(object: &Value) -> Option<ObjectMeta> {
    serde_json::from_value(object.get("metadata")?.clone()).ok()
}

/// Puts a point among a disk's, oldest first, in its place by time.
pub fn insert_by_time(points: &mut Vec<SnapshotPoint>, point: SnapshotPoint) {
    let at = points.partition_point(|p| p.point.time <= point.point.time);
    points.insert(at, point);
}

/// The newest snapshot of a disk (oldest first) not after `t`.
pub fn newest_at(disk: &[DiskPoint], t: DateTime<Utc>) -> Option<&DiskPoint> {
    disk.iter().rev().find(|p| p.time <= t)
}

/// A VM's points, oldest first, from its disks' snapshots (each oldest first).
pub fn vm_points(disks: &[Vec<DiskPoint>]) -> Vec<RecoveryPoint> {
    let mut times: Vec<DateTime<Utc>> = disks.iter().flatten().map(|p| p.time).collect();
    times.sort();
    times.dedup();
    let mut out: Vec<RecoveryPoint> = Vec::new();
    for t in times {
        let chosen: Option<Vec<&DiskPoint>> = disks.iter().map(|d| newest_at(d, t)).collect();
        let Some(chosen) = chosen.filter(|c| !c.is_empty()) else {
            continue;
        };
        let time = chosen.iter().map(|p| p.time).max().unwrap_or(t);
        if chosen.iter().any(|p| p.group) && chosen.iter().any(|p| p.time != time) {
            continue;
        }
        if out.last().is_some_and(|p| p.time == time) {
            continue;
        }
        out.push(RecoveryPoint {
            time,
            app_consistent: chosen.iter().all(|p| p.app_consistent),
            one_instant: chosen.iter().all(|p| p.group),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_records_its_point_in_coldsites_annotations() {
        let snapshot = |annotations: Value, deleting: bool| {
            serde_json::json!({"metadata": {"name": "s1", "annotations": annotations,
                "deletionTimestamp": deleting.then_some("2026-12-04T22:00:00Z")}})
        };
        let adopted = serde_json::json!({POINT: "2026-12-04T19:00:00+00:00", APP_CONSISTENT: "true",
                                         GROUP_SNAPSHOT: "grp-1"});
        let point = SnapshotPoint::of_object(&snapshot(adopted.clone(), false)).expect("a point");
        assert_eq!(&*point.name, "s1");
        assert_eq!(point.point.time, parse_time("2026-12-04T19:00:00Z").unwrap());
        assert!(point.point.app_consistent && point.point.group);
        let crash = SnapshotPoint::of_object(&snapshot(serde_json::json!({POINT: "2026-12-04T19:00:00Z"}), false));
        assert!(crash.is_some_and(|p| !p.point.app_consistent && !p.point.group));
        // Only the disk its labels name has it as a point.
        let mut labelled = snapshot(adopted.clone(), false);
        labelled["metadata"]["labels"] = serde_json::json!({PROTECTED_VM: "db01", DISK: "data"});
        assert!(SnapshotPoint::of_disk(&labelled, "db01", "data").is_some());
        assert_eq!(SnapshotPoint::of_disk(&labelled, "db01", "logs"), None);
        assert_eq!(SnapshotPoint::of_disk(&labelled, "db02", "data"), None);
        assert_eq!(
            SnapshotPoint::of_disk(&snapshot(adopted.clone(), false), "db01", "data"),
            None
        );
        // Being deleted, or never adopted: no point.
        assert_eq!(SnapshotPoint::of_object(&snapshot(adopted, true)), None);
        assert_eq!(SnapshotPoint::of_object(&snapshot(serde_json::json!({}), false)), None);
    }

    fn at(s: i64, app: bool) -> DiskPoint {
        DiskPoint {
            time: DateTime::from_timestamp(s, 0).unwrap(),
            app_consistent: app,
            group: false,
        }
    }

    fn cut(s: i64) -> DiskPoint {
        DiskPoint {
            group: true,
            ..at(s, false)
        }
    }

    #[test]
    fn a_point_exists_only_once_every_disk_has_a_snapshot() {
        // The system disk synced at 10 and 70, the data disk (slower) at 40 and 100.
        let points = vm_points(&[vec![at(10, false), at(70, false)], vec![at(40, false), at(100, false)]]);
        let times: Vec<i64> = points.iter().map(|p| p.time.timestamp()).collect();
        assert_eq!(times, vec![40, 70, 100]);
    }

    #[test]
    fn no_disk_restores_from_a_snapshot_newer_than_its_point() {
        let disks = vec![vec![at(10, true), at(70, true)], vec![at(40, true), at(100, false)]];
        for p in vm_points(&disks) {
            for d in &disks {
                let chosen = newest_at(d, p.time).expect("every disk has a snapshot at a point");
                assert!(chosen.time <= p.time);
            }
        }
        let points = vm_points(&disks);
        assert!(points[0].app_consistent && points[1].app_consistent && !points[2].app_consistent);
    }

    #[test]
    fn a_vm_without_disks_or_with_an_unsynced_disk_has_no_point() {
        assert!(vm_points(&[]).is_empty());
        assert!(vm_points(&[vec![at(10, false)], vec![]]).is_empty());
    }

    #[test]
    fn a_group_cut_is_a_point_only_once_every_disk_holds_it() {
        // Round 50's data disk is adopted, its system disk not yet: no point at 50.
        let half = vm_points(&[vec![cut(10)], vec![cut(10), cut(50)]]);
        let times: Vec<i64> = half.iter().map(|p| p.time.timestamp()).collect();
        assert_eq!(times, vec![10]);
        let whole = vm_points(&[vec![cut(10), cut(50)], vec![cut(10), cut(50)]]);
        let times: Vec<i64> = whole.iter().map(|p| p.time.timestamp()).collect();
        assert_eq!(times, vec![10, 50]);
        assert!(whole.iter().all(|p| p.one_instant));
        // A final sync's per-disk snapshots (the VM stopped) still make points after a cut.
        let after = vm_points(&[vec![cut(10), at(70, true)], vec![cut(10), at(75, true)]]);
        let times: Vec<i64> = after.iter().map(|p| p.time.timestamp()).collect();
        assert_eq!(times, vec![10, 75]);
        assert!(after[0].one_instant && !after[1].one_instant);
    }
}
