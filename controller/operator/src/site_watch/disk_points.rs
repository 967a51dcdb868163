//! One disk's recovery points as the point cache keeps them. At coldsite's default policy a
//! disk has 97, and their names are most of what a point costs; but a disk's names share a
//! prefix (VolSync names a disk's snapshots after its ReplicationDestination, then the time:
//! `volsync-coldsite-db01-data-dst-20261204220451`), kept here once. A point then costs its
//! name's last few characters, not the whole name.

use crate::kubevirt::points::{DiskPoint, SnapshotPoint};

/// A disk's points, oldest first.
#[derive(Default)]
pub(super) struct DiskPoints {
    /// What every point's name starts with.
    prefix: Box<str>,
    /// Each point's name after the prefix, and the point.
    points: Vec<(Box<str>, DiskPoint)>,
}

impl DiskPoints {
    pub(super) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The points, oldest first, with their whole names.
    pub(super) fn points(&self) -> Vec<SnapshotPoint> {
        let named = |(suffix, point): &(Box<str>, DiskPoint)| SnapshotPoint {
            name: format!("{}{suffix}", self.prefix).into(),
            point: *point,
        };
        self.points.iter().map(named).collect()
    }

    /// Forgets the point of that snapshot, if any.
    pub(super) fn remove(&mut self, name: &str) {
        if let Some(suffix) = name.strip_prefix(&*self.prefix) {
            self.points.retain(|(s, _)| &**s != suffix);
        }
    }

    /// Adds a point, whose snapshot is none of the disk's yet, in its place by time.
    pub(super) fn insert(&mut self, point: SnapshotPoint) {
        if self.points.is_empty() {
            self.prefix = point.name.clone();
        }
        let shared = shared_prefix(&self.prefix, &point.name);
        if shared < self.prefix.len() {
            // Rare: a name that differs earlier (the day or month changed in VolSync's time).
            let cut = &self.prefix[shared..];
            for (suffix, _) in &mut self.points {
                *suffix = format!("{cut}{suffix}").into();
            }
            self.prefix = self.prefix[..shared].into();
        }
        let at = self.points.partition_point(|(_, p)| p.time <= point.point.time);
        // One point comes per sync: room for exactly it, not for as many again.
        self.points.reserve_exact(1);
        self.points.insert(at, (point.name[shared..].into(), point.point));
    }
}

/// The length of what `a` and `b` start with alike, at a character boundary of both.
fn shared_prefix(a: &str, b: &str) -> usize {
    let differ = a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y);
    match differ {
        Some(((at, _), _)) => at,
        None => a.len().min(b.len()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::{DiskPoints, shared_prefix};
    use crate::kubevirt::points::{DiskPoint, SnapshotPoint};

    fn point(name: &str, minute: u32) -> SnapshotPoint {
        SnapshotPoint {
            name: name.into(),
            point: DiskPoint {
                time: Utc.with_ymd_and_hms(2026, 12, 4, 22, minute, 0).unwrap(),
                app_consistent: minute.is_multiple_of(2),
                group: false,
            },
        }
    }

    #[test]
    fn a_disks_points_read_back_whole_oldest_first_as_names_change_shape() {
        let mut disk = DiskPoints::default();
        disk.insert(point("volsync-db-dst-20261204221500", 15));
        disk.insert(point("volsync-db-dst-20261204220000", 0));
        // A name that differs earlier than the ones kept (another day), and one shorter.
        disk.insert(point("volsync-db-dst-20261205000000", 30));
        disk.insert(point("volsync-db", 45));
        let names = |d: &DiskPoints| d.points().iter().map(|p| p.name.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&disk),
            [
                "volsync-db-dst-20261204220000",
                "volsync-db-dst-20261204221500",
                "volsync-db-dst-20261205000000",
                "volsync-db"
            ]
        );
        assert_eq!(disk.points()[1], point("volsync-db-dst-20261204221500", 15));
        disk.remove("volsync-db-dst-20261204221500");
        disk.remove("another-disks-snapshot");
        disk.remove("volsync-db-dst");
        assert_eq!(names(&disk).len(), 3);
        assert!(!names(&disk).contains(&"volsync-db-dst-20261204221500".to_owned()));
    }

    #[test]
    fn names_are_cut_where_both_have_a_character_boundary() {
        assert_eq!(shared_prefix("snap-é1", "snap-è1"), 5);
        assert_eq!(shared_prefix("snap", "snap-1"), 4);
        assert_eq!(shared_prefix("", "snap"), 0);
    }

    proptest! {
        /// Whatever the names, the points read back are the ones inserted and not removed.
        #[test]
        fn the_points_kept_are_the_points_given(
            names in proptest::collection::hash_set("[a-c]{0,3}[é-]?[a-c]{0,3}", 1..12),
            removed in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let mut disk = DiskPoints::default();
            let mut kept: Vec<String> = Vec::new();
            for (i, name) in names.iter().enumerate() {
                disk.insert(point(name, i as u32));
                kept.push(name.clone());
            }
            for (name, gone) in names.iter().zip(&removed) {
                if *gone {
                    disk.remove(name);
                    kept.retain(|k| k != name);
                }
            }
            let read: Vec<String> = disk.points().iter().map(|p| p.name.to_string()).collect();
            prop_assert_eq!(read, kept);
        }
    }
}
