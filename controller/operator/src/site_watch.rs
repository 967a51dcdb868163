//! Watches of a site's VirtualMachines and of the objects coldsite labels there (copies of
//! VM manifests, VolSync's ReplicationSources and ReplicationDestinations, recovery-point
//! VolumeSnapshots), so that reconciles read them from a cache instead of listing or getting
//! them at every pass (DESIGN §9: watches and reflector caches, not polling). A cache holds
//! only what carries coldsite's labels: it grows with what coldsite protects, not with the
//! site.
//!
//! The VM watch also announces each change (and each full list, as when a site that was down
//! answers again), so ProtectedVMs are reconciled when their copies change instead of being
//! polled for it: a copy that starts where it must not is fenced at once.
//!
//! A watch starts with the site's client and stops when it is replaced (its kubeconfig
//! Secret changed) or dropped. Until its first full list has arrived, and while it cannot
//! watch at all (a site that is down, or a role without `watch`), readers get `None` and
//! ask the API as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::kubevirt::dynamic::{CONFIG_MAP, Kind, REPLICATION_DESTINATION, REPLICATION_SOURCE, VM, VOLUME_SNAPSHOT};
use crate::kubevirt::objects;

/// Server-side end of each watch request, under the site client's 10 s read timeout: a
/// watch is renewed from where it stopped (no new list), and a dead site is noticed.
const WATCH_SECONDS: u32 = 8;

/// A change a site's VM watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmChange {
    /// One VirtualMachine changed or went.
    One {
        site: String,
        namespace: String,
        name: String,
    },
    /// The site's VMs were listed anew: its watch started, or resumed after an outage.
    Listed { site: String },
}

/// Where a site's VM changes are announced; receivers that fall behind hear of it as a
/// `Lagged` error and must assume anything changed.
pub type VmChanges = tokio::sync::broadcast::Sender<VmChange>;

/// One cached kind at one site: whole objects, or only their metadata.
struct Cache<K: Resource<DynamicType = ApiResource> + Clone + 'static> {
    store: Store<K>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// How a kind is watched: the watch's settings, and the announcement of its changes.
struct Watch<'a> {
    site: &'a str,
    kind: Kind,
    selector: Option<String>,
    changes: Option<VmChanges>,
}

impl Watch<'_> {
    fn api<K: Resource<DynamicType = ApiResource>>(&self, client: Client) -> (Api<K>, watcher::Config) {
        let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
        if let Some(s) = &self.selector {
            config = config.labels(s);
        }
        (Api::all_with(client, &self.kind.resource()), config)
    }
}

impl Cache<DynamicObject> {
    fn whole(watch: Watch<'_>, client: Client) -> Self {
        let (api, config) = watch.api::<DynamicObject>(client);
        Self::start(watch, watcher::watcher(api, config))
    }
}

impl Cache<PartialObjectMeta<DynamicObject>> {
    /// Metadata only: the kind's labels and annotations say all that is read from the cache.
    fn metadata(watch: Watch<'_>, client: Client) -> Self {
        let (api, config) = watch.api::<PartialObjectMeta<DynamicObject>>(client);
        Self::start(watch, watcher::watcher(api, config))
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ApiResource> + Clone + Serialize + Debug + Send + Sync + 'static,
{
    fn start(watch: Watch<'_>, events: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static) -> Self {
        let writer: Writer<K> = Writer::new(watch.kind.resource());
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let (site, kind, changes) = (watch.site.to_owned(), watch.kind, watch.changes);
        let stream = reflector::reflector(
            writer,
            events.default_backoff().modify(|o| o.meta_mut().managed_fields = None),
        );
        let task = tokio::spawn(async move {
            stream
                .for_each(|event| {
                    let change = match event {
                        Ok(Event::InitDone) => {
                            flag.store(true, Ordering::Release);
                            Some(VmChange::Listed { site: site.clone() })
                        }
                        Ok(Event::Apply(o) | Event::Delete(o)) => Some(VmChange::One {
                            site: site.clone(),
                            namespace: o.namespace().unwrap_or_default(),
                            name: o.name_any(),
                        }),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(site = %site, kind = kind.plural, error = %e, "site watch");
                            None
                        }
                    };
                    if let (Some(tx), Some(change)) = (&changes, change) {
                        // No receiver (between leadership terms) is not an error.
                        let _ = tx.send(change);
                    }
                    async {}
                })
                .await;
        });
        Cache { store, ready, task }
    }

    /// One object: `None` until the first list is in, `Some(None)` when there is none of
    /// that name.
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let key = reflector::ObjectRef::new_with(name, kind.resource()).within(namespace);
        Some(self.store.get(&key).and_then(|o| serde_json::to_value(o.as_ref()).ok()))
    }

    /// The namespace's objects carrying every label of `labels`, once the first list is in.
    fn in_namespace(&self, namespace: &str, labels: &[(&str, &str)]) -> Option<Vec<Value>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let wanted = |o: &K| {
            let have = o.labels();
            labels.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        };
        Some(
            self.store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(namespace) && wanted(o))
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .collect(),
        )
    }
}

impl<K: Resource<DynamicType = ApiResource> + Clone + 'static> Drop for Cache<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The cached objects of one site.
pub struct SiteWatch {
    vms: Cache<DynamicObject>,
    /// What coldsite labels ([`objects::managed_selector`]) of the kinds in [`LABELLED`].
    labelled: Vec<(Kind, Cache<DynamicObject>)>,
    /// coldsite's recovery points, metadata only: their labels and annotations describe them.
    points: Cache<PartialObjectMeta<DynamicObject>>,
}

/// The kinds whose coldsite-labelled objects a site's watch caches whole.
const LABELLED: [Kind; 3] = [CONFIG_MAP, REPLICATION_SOURCE, REPLICATION_DESTINATION];

impl SiteWatch {
    pub fn start(site: &str, client: &Client, changes: VmChanges) -> Arc<Self> {
        let labelled = |kind| Watch {
            site,
            kind,
            selector: Some(objects::managed_selector()),
            changes: None,
        };
        let vms = Watch {
            site,
            kind: VM,
            selector: None,
            changes: Some(changes),
        };
        Arc::new(SiteWatch {
            vms: Cache::whole(vms, client.clone()),
            labelled: LABELLED
                .iter()
                .map(|&kind| (kind, Cache::whole(labelled(kind), client.clone())))
                .collect(),
            points: Cache::metadata(labelled(VOLUME_SNAPSHOT), client.clone()),
        })
    }

    /// The VirtualMachines of a namespace; `None` until the watch has listed them.
    pub fn vms(&self, namespace: &str) -> Option<Vec<Value>> {
        self.vms.in_namespace(namespace, &[])
    }

    /// One VirtualMachine: `None` until the watch has listed them, `Some(None)` when there
    /// is none of that name.
    pub fn vm(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.vms.get(VM, namespace, name)
    }

    fn whole(&self, kind: Kind) -> Option<&Cache<DynamicObject>> {
        self.labelled
            .iter()
            .find(|(k, _)| k.plural == kind.plural)
            .map(|(_, c)| c)
    }

    /// One object of a kind coldsite labels, as [`Self::vm`]; `None` as well for a kind not
    /// cached. An object without coldsite's labels reads as absent; a VolumeSnapshot reads
    /// as its metadata only.
    pub fn labelled(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        if kind.plural == VOLUME_SNAPSHOT.plural {
            return self.points.get(kind, namespace, name);
        }
        self.whole(kind)?.get(kind, namespace, name)
    }

    /// The objects of a kind coldsite labels in a namespace that carry `labels` too, as
    /// [`Self::labelled`]; `None` until listed, or for a kind not cached.
    pub fn labelled_in(&self, kind: Kind, namespace: &str, labels: &[(&str, &str)]) -> Option<Vec<Value>> {
        if kind.plural == VOLUME_SNAPSHOT.plural {
            return self.points.in_namespace(namespace, labels);
        }
        self.whole(kind)?.in_namespace(namespace, labels)
    }
}
