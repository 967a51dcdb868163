//! Watches of a site's VirtualMachines and of the objects coldsite labels there (copies of
//! VM manifests, VolSync's ReplicationSources and ReplicationDestinations, recovery-point
//! VolumeSnapshots, restored disks), so that reconciles read them from a cache instead of
//! listing or getting them at every pass (DESIGN §9: watches and reflector caches, not
//! polling). Besides VMs and PVCs (a protected VM's disks carry no label of coldsite's), a
//! cache holds only what carries coldsite's labels: it grows with what coldsite protects.
//! Recovery points, a disk's many, are kept by disk as what is read of them
//! (`point_cache`).
//!
//! VolSync's own snapshots (`images`, its label) are cached whole until coldsite adopts them:
//! a newest image is read from there while the storage cuts it, and once it is ready. So are
//! the Services VolSync makes (`services`, its label), read for why a destination has no
//! address: while a slow site works through its destinations, every waiting VM's look asks.
//!
//! The VM watch also announces each change (and each full list, as when a site that was down
//! answers again), so ProtectedVMs are reconciled when their copies change instead of being
//! polled for it: a copy that starts where it must not is fenced at once. The replication
//! watches announce the changes a reconcile acts on (a sync starts or ends, a tag is recorded,
//! an image or an address comes, a destination's image is cut), so syncs are followed
//! without polling.
//!
//! A watch starts with the site's client and stops when it is replaced (its kubeconfig
//! Secret changed) or dropped. Until its first full list has arrived, and while it cannot
//! watch at all (a site that is down, or a role without `watch`), readers get `None` and
//! ask the API as before.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::Api;

use crate::compact_object::CompactObject;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{PredicateConfig, WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::kubevirt::dynamic::{
    CONFIG_MAP, Kind, PVC, REPLICATION_DESTINATION, REPLICATION_SOURCE, SERVICE, VM, VOLUME_SNAPSHOT,
};
use crate::kubevirt::objects;
use crate::kubevirt::points::SnapshotPoint;
use point_cache::PointCache;

mod disk_points;
mod point_cache;

/// Server-side end of each watch request, under [`WATCH_READ_TIMEOUT`]: a watch is renewed
/// from where it stopped (no new list), about once a minute per kind when nothing changes.
const WATCH_SECONDS: u32 = 55;

/// The read timeout of the client a site's watches use (other calls to a site give up after
/// 10 s): a watch that hears nothing for this long, as from a site that stopped answering,
/// is broken off and started again.
pub const WATCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(65);

/// A change a site's watches saw, for the ProtectedVMs it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteChange {
    /// One VirtualMachine changed or went.
    One {
        site: String,
        namespace: String,
        name: String,
    },
    /// The site's VMs were listed anew: its watch started, or resumed after an outage.
    Listed { site: String },
    /// One of the ReplicationSources or ReplicationDestinations coldsite made for a
    /// ProtectedVM (its label) changed or went: a sync started or ended, an address came.
    Replication {
        site: String,
        namespace: String,
        pvm: String,
    },
}

/// Which changes a cache announces.
#[derive(Clone)]
enum Announce {
    Nothing,
    Vms,
    Replication,
    /// A destination's image the storage has cut (or failed to), for the ProtectedVM of the
    /// destination in this store that owns it.
    Images(Store<CompactObject>),
}

impl Announce {
    /// Runs a cache's events to their end, announcing what this kind announces.
    async fn run(
        self,
        site: String,
        changes: SiteChanges,
        events: impl Stream<Item = watcher::Result<Event<CompactObject>>>,
    ) {
        // No receiver (between leadership terms) is not an error.
        let send = |change: SiteChange| {
            let _ = changes.send(change);
            async {}
        };
        match self {
            Announce::Nothing => events.for_each(|_| async {}).await,
            Announce::Vms => {
                let change = |event: watcher::Result<Event<CompactObject>>| {
                    let change = match event {
                        Ok(Event::InitDone) => Some(SiteChange::Listed { site: site.clone() }),
                        Ok(Event::Apply(o) | Event::Delete(o)) => Some(SiteChange::One {
                            site: site.clone(),
                            namespace: o.namespace().unwrap_or_default(),
                            name: o.name_any(),
                        }),
                        _ => None,
                    };
                    async { change }
                };
                events.filter_map(change).for_each(send).await
            }
            Announce::Replication => {
                let change = |o: watcher::Result<CompactObject>| {
                    let change = o.ok().and_then(|o| {
                        Some(SiteChange::Replication {
                            site: site.clone(),
                            namespace: o.namespace().unwrap_or_default(),
                            pvm: o.labels.get(objects::PROTECTED_VM)?.to_owned(),
                        })
                    });
                    async { change }
                };
                events
                    .touched_objects()
                    .predicate_filter(replication_state, PredicateConfig::default())
                    .filter_map(change)
                    .for_each(send)
                    .await
            }
            Announce::Images(destinations) => {
                let change = |o: watcher::Result<CompactObject>| {
                    let change = o.ok().and_then(|image| image_cut(&site, &image, &destinations));
                    async { change }
                };
                events
                    .touched_objects()
                    .predicate_filter(image_state, PredicateConfig::default())
                    .filter_map(change)
                    .for_each(send)
                    .await
            }
        }
    }
}

/// What coldsite reads of one of VolSync's images: whether the storage has cut it, or failed to.
#[derive(Debug, Default, Hash, PartialEq, Eq)]
struct ImageCut {
    ready: bool,
    failed: bool,
}

impl ImageCut {
    fn of(image: &CompactObject) -> Self {
        #[derive(Deserialize)]
        struct Image {
            status: Option<Status>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Status {
            ready_to_use: Option<bool>,
            error: Option<serde::de::IgnoredAny>,
        }
        let status = image
            .to_value()
            .ok()
            .and_then(|v| serde_json::from_value::<Image>(v).ok())
            .and_then(|i| i.status);
        status.map_or_else(Self::default, |s| Self {
            ready: s.ready_to_use == Some(true),
            failed: s.error.is_some(),
        })
    }
}

/// The hash of what of an image a reconcile acts on ([`ImageCut`]).
fn image_state(image: &CompactObject) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ImageCut::of(image).hash(&mut hasher);
    Some(hasher.finish())
}

/// The change an image brings once the storage has cut it (or failed to): for the
/// ProtectedVM of the coldsite destination that owns it. Other images (not cut yet, a
/// source's, another tool's) bring none.
fn image_cut(site: &str, image: &CompactObject, destinations: &Store<CompactObject>) -> Option<SiteChange> {
    let cut = ImageCut::of(image);
    if !(cut.ready || cut.failed) {
        return None;
    }
    let namespace = image.namespace()?;
    let owner = image
        .owner_references()
        .iter()
        .find(|o| o.kind == REPLICATION_DESTINATION.kind)?;
    let key = reflector::ObjectRef::new_with(&owner.name, REPLICATION_DESTINATION).within(&namespace);
    let pvm = destinations.get(&key)?.labels.get(objects::PROTECTED_VM)?.to_owned();
    Some(SiteChange::Replication {
        site: site.to_owned(),
        namespace,
        pvm,
    })
}

/// What of a ReplicationSource or ReplicationDestination a reconcile acts on: its triggers,
/// when its syncs start and end, its newest image, its address, its mover's result. Not its
/// conditions, which VolSync rewrites at every retry.
fn replication_state<K: Serialize>(object: &K) -> Option<u64> {
    const FIELDS: [&str; 8] = [
        "/spec/trigger",
        "/status/lastSyncTime",
        "/status/lastSyncStartTime",
        "/status/lastManualSync",
        "/status/latestImage/name",
        "/status/rsyncTLS/address",
        "/status/latestMoverStatus/result",
        "/metadata/deletionTimestamp",
    ];
    let value = serde_json::to_value(object).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for field in FIELDS {
        value.pointer(field).map(Value::to_string).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Where a site's changes are announced; receivers that fall behind hear of it as a
/// `Lagged` error and must assume anything changed.
pub type SiteChanges = tokio::sync::broadcast::Sender<SiteChange>;

/// One cached kind at one site.
struct Cache {
    store: Store<CompactObject>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// How a kind is watched: the watch's settings, and the announcement of its changes.
struct Watch<'a> {
    site: &'a str,
    kind: Kind,
    /// What a [`Source::Given`] lists for it: the kind's plural, or [`IMAGES`].
    given: &'static str,
    selector: Option<String>,
    changes: SiteChanges,
    announce: Announce,
    /// What of each object's metadata the cache drops, beyond managedFields.
    trim: fn(&mut CompactObject),
}

/// Keeps the whole metadata (but managedFields, dropped for every kind).
fn keep_all(_: &mut CompactObject) {}

/// Keeps of a PVC's metadata what coldsite reads (its name, labels, its own annotations and
/// the snapshot VolSync names on it, deletion), not what the storage and other tools add:
/// every PVC of a site is cached.
fn lean_disk(disk: &mut CompactObject) {
    disk.annotations
        .retain(|key| key.starts_with("coldsite.io/") || key == objects::VOLSYNC_SNAPSHOT_NAME);
    disk.metadata.owner_references = None;
    disk.metadata.finalizers = None;
}

/// Keeps of a Service's metadata its name and labels: what coldsite reads of it is its type
/// and load-balancer address, not its annotations (a cloud's load-balancer settings).
fn lean_service(service: &mut CompactObject) {
    service.annotations.retain(|_| false);
    service.metadata.owner_references = None;
    service.metadata.finalizers = None;
}

/// Where a site's caches hear of their objects.
pub enum Source {
    /// The site's API server: a watch of each kind.
    Site(Client),
    /// The objects given, as the JSON an API server would send, listed once by kind
    /// (plural; VolSync's images as [`IMAGES`]): a site's caches without a site, as the
    /// memory bench fills them.
    Given(HashMap<&'static str, Vec<String>>),
}

impl Source {
    /// The events of a kind's watch, as objects of type `K` (whose `dyntype` is the kind's).
    fn events<K>(
        &mut self,
        watch: &Watch<'_>,
        dyntype: &K::DynamicType,
    ) -> BoxStream<'static, watcher::Result<Event<K>>>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        match self {
            Source::Site(client) => {
                let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
                if let Some(s) = &watch.selector {
                    config = config.labels(s);
                }
                watcher::watcher(Api::all_with(client.clone(), dyntype), config).boxed()
            }
            Source::Given(objects) => {
                let given = objects.remove(watch.given).unwrap_or_default();
                let listed = given
                    .into_iter()
                    .filter_map(|text| serde_json::from_str(&text).ok())
                    .map(|o| Ok(Event::InitApply(o)));
                let list = std::iter::once(Ok(Event::Init))
                    .chain(listed)
                    .chain(std::iter::once(Ok(Event::InitDone)));
                futures::stream::iter(list).boxed()
            }
        }
    }
}

impl Cache {
    fn start(watch: Watch<'_>, source: &mut Source) -> Self {
        let events = source.events::<CompactObject>(&watch, &watch.kind);
        let writer = Writer::new(watch.kind);
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let Watch {
            site,
            kind,
            changes,
            announce,
            trim,
            ..
        } = watch;
        let site = site.to_owned();
        let stream = reflector::reflector(
            writer,
            events.default_backoff().modify(move |o| {
                o.metadata.managed_fields = None;
                trim(o);
            }),
        );
        let warn = warn_on_error(&site, kind);
        let events = stream.inspect(move |event| {
            warn(event);
            if let Ok(Event::InitDone) = event {
                flag.store(true, Ordering::Release);
            }
        });
        let task = tokio::spawn(announce.run(site, changes, events));
        Cache { store, ready, task }
    }

    /// One object: `None` until the first list is in, `Some(None)` when there is none of
    /// that name.
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.get_if(kind, namespace, name, |_| true)
    }

    /// [`Self::get`] of an object `wanted` admits; any other reads as absent.
    fn get_if(&self, kind: Kind, namespace: &str, name: &str, wanted: Admit) -> Option<Option<Value>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let key = reflector::ObjectRef::new_with(name, kind).within(namespace);
        let found = self.store.get(&key).filter(|o| wanted(o));
        Some(found.and_then(|o| serde_json::to_value(o.as_ref()).ok()))
    }

    /// What `read` makes of each of the namespace's objects that carry every label of
    /// `labels`, once the first list is in. One object is a `Value` at a time: a namespace's
    /// worth at once would cost many times its text.
    fn read_namespace<T>(
        &self,
        namespace: &str,
        labels: &[(&str, &str)],
        admit: Admit,
        read: impl FnMut(Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let wanted = |o: &CompactObject| admit(o) && labels.iter().all(|(k, v)| o.labels.get(k) == Some(*v));
        Some(
            self.store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(namespace) && wanted(o))
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .filter_map(read)
                .collect(),
        )
    }
}

/// Logs a watch's errors: it retries them itself, with backoff.
fn warn_on_error<K>(site: &str, kind: Kind) -> impl Fn(&watcher::Result<Event<K>>) + Send + 'static {
    let site = site.to_owned();
    move |event| {
        if let Err(e) = event {
            tracing::warn!(site, kind = kind.plural, error = %e, "site watch");
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The cached objects of one site.
pub struct SiteWatch {
    vms: Cache,
    /// What coldsite labels ([`objects::managed_selector`]) of the kinds in [`LABELLED`].
    labelled: Vec<(Kind, Cache)>,
    /// The recovery points coldsite adopted (VolumeSnapshots it labels), by disk.
    points: PointCache,
    /// VolSync's snapshots ([`VOLSYNC_MADE`]): a destination's newest image until adopted.
    images: Cache,
    /// The Services VolSync made ([`VOLSYNC_MADE`]): a destination's, for why it has no address.
    services: Cache,
    /// Every PVC of the site: a protected VM's own disks, whose shape each look reads, carry
    /// no label of coldsite's; the disks coldsite restored do.
    disks: Cache,
    /// Namespaces found or made, and when: not read again within [`NAMESPACE_RECHECK`].
    namespaces: Mutex<HashMap<String, Instant>>,
}

/// How long a namespace seen at a site is taken to exist there: one deleted meanwhile
/// fails the writes into it, and is made again after this.
const NAMESPACE_RECHECK: Duration = Duration::from_secs(60);

/// The kinds whose coldsite-labelled objects a site's watch caches whole.
const LABELLED: [Kind; 3] = [CONFIG_MAP, REPLICATION_SOURCE, REPLICATION_DESTINATION];

/// VolSync's label on what it makes. It takes it off a snapshot marked do-not-delete (its
/// `UnMarkForCleanupAndRemoveOwnership`), so the images cached are the few not yet adopted
/// (and sources' snapshots while they sync): about one a disk at most.
const VOLSYNC_MADE: &str = "app.kubernetes.io/created-by=volsync";

/// The images' name in a [`Source::Given`].
pub const IMAGES: &str = "volsync-images";

/// Which of a cache's objects a reader takes.
type Admit = fn(&CompactObject) -> bool;

/// Whether an object carries coldsite's labels ([`objects::managed_selector`]).
fn is_managed(object: &CompactObject) -> bool {
    let labels = &object.labels;
    labels.get(objects::MANAGED_BY) == Some("coldsite") && labels.get(objects::PROTECTED_VM).is_some()
}

impl SiteWatch {
    /// A site's caches, each filled from `source`.
    pub fn start(site: &str, mut source: Source, changes: SiteChanges) -> Arc<Self> {
        let labelled = |kind: Kind| Watch {
            site,
            kind,
            given: kind.plural,
            selector: Some(objects::managed_selector()),
            changes: changes.clone(),
            announce: if kind.plural == REPLICATION_SOURCE.plural || kind.plural == REPLICATION_DESTINATION.plural {
                Announce::Replication
            } else {
                Announce::Nothing
            },
            trim: keep_all,
        };
        let vms = Watch {
            site,
            kind: VM,
            given: VM.plural,
            selector: None,
            changes: changes.clone(),
            announce: Announce::Vms,
            trim: keep_all,
        };
        let source = &mut source;
        let labelled_caches: Vec<_> = LABELLED
            .iter()
            .map(|&kind| (kind, Cache::start(labelled(kind), source)))
            .collect();
        let destinations = find(&labelled_caches, REPLICATION_DESTINATION).map(|c| c.store.clone());
        let images = Watch {
            site,
            kind: VOLUME_SNAPSHOT,
            given: IMAGES,
            selector: Some(VOLSYNC_MADE.to_owned()),
            changes: changes.clone(),
            announce: destinations.map_or(Announce::Nothing, Announce::Images),
            trim: keep_all,
        };
        let services = Watch {
            site,
            kind: SERVICE,
            given: SERVICE.plural,
            selector: Some(VOLSYNC_MADE.to_owned()),
            changes: changes.clone(),
            announce: Announce::Nothing,
            trim: lean_service,
        };
        Arc::new(SiteWatch {
            vms: Cache::start(vms, source),
            labelled: labelled_caches,
            points: PointCache::start(labelled(VOLUME_SNAPSHOT), source),
            images: Cache::start(images, source),
            services: Cache::start(services, source),
            disks: Cache::start(
                Watch {
                    site,
                    kind: PVC,
                    given: PVC.plural,
                    selector: None,
                    changes: changes.clone(),
                    announce: Announce::Nothing,
                    trim: lean_disk,
                },
                source,
            ),
            namespaces: Mutex::default(),
        })
    }

    /// Whether every cache has listed its objects.
    pub fn listed(&self) -> bool {
        let ready = |r: &AtomicBool| r.load(Ordering::Acquire);
        ready(&self.vms.ready)
            && ready(&self.disks.ready)
            && ready(&self.points.ready)
            && ready(&self.images.ready)
            && ready(&self.services.ready)
            && self.labelled.iter().all(|(_, c)| ready(&c.ready))
    }

    /// Whether the namespace was seen at the site within a minute.
    pub fn namespace_seen(&self, name: &str) -> bool {
        self.namespaces
            .lock()
            .is_ok_and(|n| n.get(name).is_some_and(|t| t.elapsed() < NAMESPACE_RECHECK))
    }

    /// Notes that the namespace exists at the site now.
    pub fn saw_namespace(&self, name: &str) {
        if let Ok(mut n) = self.namespaces.lock() {
            n.insert(name.to_owned(), Instant::now());
        }
    }

    /// What `read` makes of each VirtualMachine of a namespace; `None` until the watch has
    /// listed them.
    pub fn read_vms<T>(&self, namespace: &str, read: impl FnMut(Value) -> Option<T>) -> Option<Vec<T>> {
        self.vms.read_namespace(namespace, &[], |_| true, read)
    }

    /// One VirtualMachine: `None` until the watch has listed them, `Some(None)` when there
    /// is none of that name.
    pub fn vm(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.vms.get(VM, namespace, name)
    }

    /// Whether the changes of coldsite's ReplicationSources and ReplicationDestinations here,
    /// and the cuts of their images, are announced: their watches have listed them.
    pub fn follows_replication(&self) -> bool {
        self.images.ready.load(Ordering::Acquire)
            && [REPLICATION_SOURCE, REPLICATION_DESTINATION]
                .into_iter()
                .all(|kind| find(&self.labelled, kind).is_some_and(|c| c.ready.load(Ordering::Acquire)))
    }

    /// One object of a kind coldsite labels, as [`Self::vm`]; `None` as well for a kind not
    /// cached. An object without coldsite's labels reads as absent.
    pub fn labelled(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        let (cache, admit) = self.labelled_cache(kind)?;
        cache.get_if(kind, namespace, name, admit)
    }

    /// The cache of a kind coldsite labels, and which of its objects are coldsite's: PVCs are
    /// read from the cache of every PVC of the site.
    fn labelled_cache(&self, kind: Kind) -> Option<(&Cache, Admit)> {
        if kind.plural == PVC.plural {
            return Some((&self.disks, is_managed));
        }
        Some((find(&self.labelled, kind)?, |_| true))
    }

    /// A disk's recovery points, oldest first; `None` until the watch has listed them.
    pub fn points(&self, namespace: &str, pvm: &str, disk: &str) -> Option<Vec<SnapshotPoint>> {
        self.points.disk(namespace, pvm, disk)
    }

    /// One of VolSync's snapshots not yet adopted, whole, as [`Self::vm`].
    pub fn image(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.images.get(VOLUME_SNAPSHOT, namespace, name)
    }

    /// One of the Services VolSync made, as [`Self::vm`].
    pub fn volsync_service(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.services.get(SERVICE, namespace, name)
    }

    /// One PVC, labelled or not, as [`Self::vm`].
    pub fn disk(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.disks.get(PVC, namespace, name)
    }

    /// What `read` makes of each object of a kind coldsite labels in a namespace that carries
    /// `labels` too, as [`Self::labelled`]; `None` until listed, or for a kind not cached.
    pub fn read_labelled<T>(
        &self,
        kind: Kind,
        namespace: &str,
        labels: &[(&str, &str)],
        read: impl FnMut(Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let (cache, admit) = self.labelled_cache(kind)?;
        cache.read_namespace(namespace, labels, admit, read)
    }
}

fn find(caches: &[(Kind, Cache)], kind: Kind) -> Option<&Cache> {
    caches.iter().find(|(k, _)| k.plural == kind.plural).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::{
        CompactObject, SiteChange, image_cut, image_state, is_managed, lean_disk, lean_service, replication_state,
    };
    use crate::kubevirt::dynamic::REPLICATION_DESTINATION;
    use crate::kubevirt::objects::PROTECTED_VM;

    fn object(value: serde_json::Value) -> CompactObject {
        serde_json::from_value(value).expect("an object")
    }

    #[test]
    fn a_destinations_image_once_cut_or_failed_wakes_its_protected_vm_and_nothing_else_does() {
        let mut writer = Writer::new(REPLICATION_DESTINATION);
        let destination = |name: &str, pvm: Option<&str>| {
            let labels = pvm.map(|p| json!({PROTECTED_VM: p, "app.kubernetes.io/managed-by": "coldsite"}));
            object(json!({"metadata": {"name": name, "namespace": "apps", "labels": labels}}))
        };
        writer.apply_watcher_event(&Event::Apply(destination("coldsite-data", Some("db01"))));
        writer.apply_watcher_event(&Event::Apply(destination("theirs", None)));
        let destinations = writer.as_reader();
        let image = |owner: (&str, &str), status: serde_json::Value| {
            object(json!({"metadata": {"name": "img", "namespace": "apps",
                                       "ownerReferences": [{"apiVersion": "volsync.backube/v1alpha1",
                                                            "kind": owner.0, "name": owner.1, "uid": "u1"}]},
                          "status": status}))
        };
        let ours = ("ReplicationDestination", "coldsite-data");
        let wakes = |i: &CompactObject| image_cut("dr", i, &destinations);
        let db01 = Some(SiteChange::Replication {
            site: "dr".into(),
            namespace: "apps".into(),
            pvm: "db01".into(),
        });
        assert_eq!(wakes(&image(ours, json!({"readyToUse": true}))), db01);
        assert_eq!(
            wakes(&image(
                ours,
                json!({"readyToUse": false, "error": {"message": "quota"}})
            )),
            db01
        );
        // Still being cut; a source's snapshot; another tool's destination's; one whose
        // destination this site does not show.
        assert_eq!(wakes(&image(ours, json!({"readyToUse": false}))), None);
        assert_eq!(
            wakes(&image(
                ("ReplicationSource", "coldsite-data"),
                json!({"readyToUse": true})
            )),
            None
        );
        assert_eq!(
            wakes(&image(
                ("ReplicationDestination", "theirs"),
                json!({"readyToUse": true})
            )),
            None
        );
        assert_eq!(
            wakes(&image(("ReplicationDestination", "gone"), json!({"readyToUse": true}))),
            None
        );

        // Only readiness and failure count as changes, not VolSync's relabelling.
        let cut = image(ours, json!({"readyToUse": true}));
        let mut relabelled = cut.to_value().expect("JSON");
        relabelled["metadata"]["labels"] = json!({"volsync.backube/do-not-delete": "true"});
        assert_eq!(image_state(&cut), image_state(&object(relabelled)));
        assert_ne!(
            image_state(&cut),
            image_state(&image(ours, json!({"readyToUse": false})))
        );
    }

    #[test]
    fn a_cached_pvc_keeps_what_coldsite_reads_of_its_metadata() {
        let mut disk: CompactObject = serde_json::from_value(json!({
            "metadata": {
                "name": "data", "namespace": "apps", "deletionTimestamp": "2026-12-04T19:00:00Z",
                "labels": {"coldsite.io/run-uid": "r1", "app": "db"},
                "annotations": {"coldsite.io/recovery-point": "2026-12-04T18:00:00Z",
                                "volsync.backube/snapname": "data-20261204180000",
                                "pv.kubernetes.io/bind-completed": "yes"},
                "finalizers": ["kubernetes.io/pvc-protection"],
                "ownerReferences": [{"apiVersion": "volsync.backube/v1alpha1", "kind": "ReplicationDestination",
                                     "name": "coldsite-data", "uid": "u1"}],
            },
            "spec": {"resources": {"requests": {"storage": "10Gi"}}},
        }))
        .expect("a PVC");
        lean_disk(&mut disk);
        let kept = disk.to_value().expect("a PVC's JSON");
        assert_eq!(
            kept["metadata"]["labels"],
            json!({"coldsite.io/run-uid": "r1", "app": "db"})
        );
        assert_eq!(
            kept["metadata"]["annotations"],
            json!({"coldsite.io/recovery-point": "2026-12-04T18:00:00Z",
                   "volsync.backube/snapname": "data-20261204180000"})
        );
        assert_eq!(kept["metadata"]["deletionTimestamp"], "2026-12-04T19:00:00Z");
        assert!(kept["metadata"].get("finalizers").is_none() && kept["metadata"].get("ownerReferences").is_none());
        assert_eq!(kept["spec"]["resources"]["requests"]["storage"], "10Gi");
    }

    #[test]
    fn a_cached_service_keeps_its_name_type_and_address_not_its_annotations() {
        let mut service: CompactObject = serde_json::from_value(json!({
            "metadata": {
                "name": "volsync-rsync-tls-dst-coldsite-data", "namespace": "apps",
                "labels": {"app.kubernetes.io/created-by": "volsync"},
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                "ownerReferences": [{"apiVersion": "volsync.backube/v1alpha1", "kind": "ReplicationDestination",
                                     "name": "coldsite-data", "uid": "u1"}],
            },
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
        }))
        .expect("a Service");
        lean_service(&mut service);
        let kept = service.to_value().expect("a Service's JSON");
        assert_eq!(kept["metadata"]["name"], "volsync-rsync-tls-dst-coldsite-data");
        assert!(kept["metadata"].get("annotations").is_none() && kept["metadata"].get("ownerReferences").is_none());
        assert_eq!(kept["spec"]["type"], "LoadBalancer");
        assert_eq!(kept["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.10");
    }

    #[test]
    fn of_a_sites_pvcs_only_those_with_coldsites_labels_read_as_its() {
        let disk = |labels: serde_json::Value| {
            serde_json::from_value::<CompactObject>(json!({"metadata": {"name": "data", "labels": labels}}))
                .expect("a PVC")
        };
        // A VM's own disk, or another tool's, is never taken for a disk coldsite restored.
        assert!(!is_managed(&disk(json!(null))));
        assert!(!is_managed(&disk(json!({"app.kubernetes.io/managed-by": "volsync"}))));
        assert!(!is_managed(&disk(json!({"app.kubernetes.io/managed-by": "coldsite"}))));
        assert!(!is_managed(&disk(json!({"coldsite.io/protected-vm": "db01"}))));
        assert!(is_managed(&disk(
            json!({"app.kubernetes.io/managed-by": "coldsite", "coldsite.io/protected-vm": "db01"})
        )));
    }

    #[test]
    fn only_what_a_reconcile_acts_on_counts_as_a_replication_change() {
        let rs = |manual: &str, condition: &str| {
            json!({"metadata": {"name": "coldsite-db01-data", "resourceVersion": condition},
                   "spec": {"trigger": {"manual": manual}},
                   "status": {"lastManualSync": "app-1",
                              "conditions": [{"type": "Synchronizing", "message": condition}]}})
        };
        // VolSync rewrites its conditions (and so the version) at every retry: not a change.
        assert_eq!(
            replication_state(&rs("app-1", "7")),
            replication_state(&rs("app-1", "8"))
        );
        assert_ne!(
            replication_state(&rs("app-1", "7")),
            replication_state(&rs("app-2", "7"))
        );
        let mut started = rs("app-1", "7");
        started["status"]["lastSyncStartTime"] = json!("2026-12-02T15:00:00Z");
        assert_ne!(replication_state(&rs("app-1", "7")), replication_state(&started));
    }
}
