//! The recovery points of a site (the VolumeSnapshots coldsite adopted and labelled), by
//! disk, as the site's watch shows them: what each look at a protected disk reads (to prune
//! its points and report them) without a LIST.
//!
//! A disk keeps a point per RPO over its retention (97 at the defaults), so points are most
//! of what a site holds for a VM. Kept as kube's cached metadata, one costs some 2.4 KiB and
//! a disk's are found by a scan of every point of the site; kept here as a typed view
//! ([`SnapshotPoint`], the name and what the annotations record; a disk's names share their
//! prefix, [`DiskPoints`]), one costs some 41 B and a disk's are found by its key
//! (`benches/cache_memory.rs` measures both).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::core::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::Event;
use tokio::task::JoinHandle;

use super::disk_points::DiskPoints;
use super::{Source, Watch, warn_on_error};
use crate::kubevirt::objects::{DISK, PROTECTED_VM};
use crate::kubevirt::points::SnapshotPoint;

/// The points of each disk by [`key`].
#[derive(Default)]
struct Index(HashMap<String, DiskPoints>);

/// A disk's key: names cannot hold a `/`.
fn key(namespace: &str, pvm: &str, disk: &str) -> String {
    format!("{namespace}/{pvm}/{disk}")
}

impl Index {
    fn key_of(meta: &ObjectMeta) -> Option<String> {
        let labels = meta.labels.as_ref()?;
        Some(key(
            meta.namespace.as_deref()?,
            labels.get(PROTECTED_VM)?,
            labels.get(DISK)?,
        ))
    }

    /// A snapshot as it is now: a point in its disk's place by time, or none.
    fn apply(&mut self, meta: &ObjectMeta) {
        let Some(key) = Self::key_of(meta) else { return };
        let disk = self.0.entry(key.clone()).or_default();
        if let Some(name) = &meta.name {
            disk.remove(name);
        }
        if let Some(point) = SnapshotPoint::of(meta) {
            disk.insert(point);
        }
        if disk.is_empty() {
            self.0.remove(&key);
        }
    }

    fn delete(&mut self, meta: &ObjectMeta) {
        let Some(key) = Self::key_of(meta) else { return };
        if let (Some(disk), Some(name)) = (self.0.get_mut(&key), &meta.name) {
            disk.remove(name);
            if disk.is_empty() {
                self.0.remove(&key);
            }
        }
    }
}

/// Takes a watch's events into the index. A list builds a new index that replaces the old
/// one when complete, as kube's reflector does: a relist forgets points deleted meanwhile.
struct Follower {
    index: Arc<RwLock<Index>>,
    ready: Arc<AtomicBool>,
    listing: Option<Index>,
}

impl Follower {
    fn follow(&mut self, event: Event<PartialObjectMeta<DynamicObject>>) {
        match event {
            Event::Init => self.listing = Some(Index::default()),
            Event::InitApply(o) => self.listing.get_or_insert_default().apply(&o.metadata),
            Event::InitDone => {
                if let Ok(mut index) = self.index.write() {
                    *index = self.listing.take().unwrap_or_default();
                }
                self.ready.store(true, Ordering::Release);
            }
            Event::Apply(o) => self.change(|index| index.apply(&o.metadata)),
            Event::Delete(o) => self.change(|index| index.delete(&o.metadata)),
        }
    }

    fn change(&self, change: impl FnOnce(&mut Index)) {
        if let Ok(mut index) = self.index.write() {
            change(&mut index);
        }
    }
}

/// A site's recovery points, followed by a watch of the VolumeSnapshots coldsite labels.
pub(super) struct PointCache {
    index: Arc<RwLock<Index>>,
    pub(super) ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PointCache {
    pub(super) fn start(watch: Watch<'_>, source: &mut Source) -> Self {
        let mut follower = Follower {
            index: Arc::default(),
            ready: Arc::default(),
            listing: None,
        };
        let (index, ready) = (follower.index.clone(), follower.ready.clone());
        let warn = warn_on_error(watch.site, watch.kind);
        let events = source
            .events::<PartialObjectMeta<DynamicObject>>(&watch, &watch.kind.resource())
            .default_backoff();
        let task = tokio::spawn(events.for_each(move |event| {
            warn(&event);
            if let Ok(event) = event {
                follower.follow(event);
            }
            async {}
        }));
        PointCache { index, ready, task }
    }

    /// A disk's points, oldest first; `None` until the first list is in.
    pub(super) fn disk(&self, namespace: &str, pvm: &str, disk: &str) -> Option<Vec<SnapshotPoint>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let index = self.index.read().ok()?;
        Some(
            index
                .0
                .get(&key(namespace, pvm, disk))
                .map(DiskPoints::points)
                .unwrap_or_default(),
        )
    }
}

impl Drop for PointCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use kube::api::{DynamicObject, PartialObjectMeta};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::{Follower, Index, key};
    use crate::kubevirt::objects::{DISK, POINT, PROTECTED_VM};

    /// A snapshot of a disk of db01, adopted as the point of `hour` (none: not adopted).
    fn snapshot(name: &str, disk: &str, hour: Option<u32>) -> PartialObjectMeta<DynamicObject> {
        let annotations = hour.map(|h| json!({POINT: format!("2026-12-04T{h:02}:00:00Z")}));
        serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": "apps", "annotations": annotations,
                         "labels": {PROTECTED_VM: "db01", DISK: disk}}
        }))
        .expect("a snapshot's metadata")
    }

    fn names(follower: &Follower, disk: &str) -> Vec<String> {
        let index = follower.index.read().expect("index");
        let points = index.0.get(&key("apps", "db01", disk)).map(|d| d.points());
        points.into_iter().flatten().map(|p| p.name.to_string()).collect()
    }

    #[test]
    fn a_disks_points_follow_the_watch_oldest_first() {
        let mut f = Follower {
            index: Arc::default(),
            ready: Arc::default(),
            listing: None,
        };
        f.follow(Event::Init);
        f.follow(Event::InitApply(snapshot("s2", "data", Some(20))));
        f.follow(Event::InitApply(snapshot("s1", "data", Some(19))));
        f.follow(Event::InitApply(snapshot("o1", "logs", Some(19))));
        // Not adopted yet (no time): no point.
        f.follow(Event::InitApply(snapshot("s3", "data", None)));
        assert!(!f.ready.load(Ordering::Acquire), "not ready before the list is in");
        f.follow(Event::InitDone);
        assert!(f.ready.load(Ordering::Acquire));
        assert_eq!(names(&f, "data"), ["s1", "s2"]);
        assert_eq!(names(&f, "logs"), ["o1"]);

        // Adopted later; one being deleted is no longer a point; one deleted is gone.
        f.follow(Event::Apply(snapshot("s3", "data", Some(21))));
        let mut deleting = snapshot("s1", "data", Some(19));
        deleting.metadata.deletion_timestamp = serde_json::from_value(json!("2026-12-04T22:00:00Z")).ok();
        f.follow(Event::Apply(deleting));
        f.follow(Event::Delete(snapshot("o1", "logs", Some(19))));
        assert_eq!(names(&f, "data"), ["s2", "s3"]);
        assert_eq!(names(&f, "logs"), Vec::<String>::new());

        // A relist (the watch resumed after an outage) forgets what went meanwhile, and the
        // old index serves until the new one is complete.
        f.follow(Event::Init);
        f.follow(Event::InitApply(snapshot("s3", "data", Some(21))));
        assert_eq!(names(&f, "data"), ["s2", "s3"]);
        f.follow(Event::InitDone);
        assert_eq!(names(&f, "data"), ["s3"]);
    }

    #[test]
    fn a_snapshot_without_coldsites_labels_is_no_ones_point() {
        let mut index = Index::default();
        let mut stray = snapshot("s1", "data", Some(19));
        stray.metadata.labels = None;
        index.apply(&stray.metadata);
        assert!(index.0.is_empty());
    }
}
