//! What the simulator sees of each site: watch-fed caches of the objects it plays for, as
//! the real kubelet, sidecars and virt-controller keep informers instead of listing.
//!
//! A pass reads these caches to find its work, so that its cost does not grow with the
//! number of objects times the number of requests per object (at 1,000 VMs a pass of
//! per-pass LISTs took minutes). What decides the data a disk or snapshot holds is still read
//! fresh from the API server: a volume's data when it is cut or copied, and whether a guest is
//! frozen at a cut (a cache a few milliseconds behind a freeze would mislabel a snapshot).
//! Acting on a cache that lags the simulator's own last write is safe: every write here is
//! idempotent or refused by the API server (an object that exists, a changed version).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, ExponentialBackoff};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::resources::{
    Kind, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, VOLUME_GROUP_SNAPSHOT_CONTENT, VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
};

/// The custom kinds a platform site's caches hold.
const CUSTOM_KINDS: [Kind; 5] = [
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    VOLUME_GROUP_SNAPSHOT_CONTENT,
];

/// One kind at one site: a store per namespace in scope, or one for all.
pub(crate) struct Cached<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    stores: Vec<Store<K>>,
    dyntype: K::DynamicType,
}

impl<K> Cached<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// Whether every store has listed once. A kind whose CRD is not installed never is.
    pub(crate) fn ready(&self) -> bool {
        self.stores
            .iter()
            .all(|s| s.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()))
    }

    /// Every object cached.
    pub(crate) fn all(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(Store::state).collect()
    }

    /// The cached objects that match.
    pub(crate) fn matching(&self, predicate: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(|s| s.state_filter(&predicate)).collect()
    }

    /// The cached object `namespace/name` (no namespace for a cluster-scoped kind).
    pub(crate) fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new_with(name, self.dyntype.clone());
        let key = match namespace {
            Some(ns) => key.within(ns),
            None => key,
        };
        self.stores.iter().find_map(|s| s.get(&key))
    }
}

/// The caches of one site. Dropping it stops their watches.
pub(crate) struct SiteCache {
    pub pods: Cached<Pod>,
    pub claims: Cached<PersistentVolumeClaim>,
    pub volumes: Cached<PersistentVolume>,
    pub services: Cached<Service>,
    pub secrets: Cached<Secret>,
    custom: Vec<(Kind, Cached<DynamicObject>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl SiteCache {
    /// Starts watching a site, in `namespaces` (all when `None`). A site that plays only a
    /// kubelet (`custom_kinds` false) is not watched for KubeVirt's or the snapshotter's kinds.
    pub(crate) fn start(client: &Client, namespaces: Option<&BTreeSet<String>>, custom_kinds: bool) -> Self {
        let mut tasks = Vec::new();
        let scope = Scope { client, namespaces };
        let custom = CUSTOM_KINDS
            .into_iter()
            .filter(|_| custom_kinds)
            .map(|kind| (kind, scope.custom(kind, &mut tasks)))
            .collect();
        Self {
            pods: scope.namespaced(&mut tasks),
            claims: scope.namespaced(&mut tasks),
            volumes: Cached {
                stores: vec![reflect(Api::all(client.clone()), (), &mut tasks)],
                dyntype: (),
            },
            services: scope.namespaced(&mut tasks),
            secrets: scope.namespaced(&mut tasks),
            custom,
            tasks,
        }
    }

    /// A custom kind's cache; `None` when it is not watched here or has not listed yet
    /// (its CRD is not installed).
    pub(crate) fn custom(&self, kind: Kind) -> Option<&Cached<DynamicObject>> {
        self.custom
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, cached)| cached)
            .filter(|cached| cached.ready())
    }
}

impl Drop for SiteCache {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where a site's watches go.
struct Scope<'a> {
    client: &'a Client,
    namespaces: Option<&'a BTreeSet<String>>,
}

impl Scope<'_> {
    fn namespaced<K>(&self, tasks: &mut Vec<JoinHandle<()>>) -> Cached<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let apis: Vec<Api<K>> = match self.namespaces {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect(),
            None => vec![Api::all(self.client.clone())],
        };
        let stores = apis.into_iter().map(|api| reflect(api, (), tasks)).collect();
        Cached { stores, dyntype: () }
    }

    fn custom(&self, kind: Kind, tasks: &mut Vec<JoinHandle<()>>) -> Cached<DynamicObject> {
        let apis = match self.namespaces.filter(|_| kind.namespaced) {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| kind.namespaced(self.client.clone(), ns))
                .collect(),
            None => vec![kind.all(self.client.clone())],
        };
        let stores = apis
            .into_iter()
            .map(|api| reflect(api, kind.api_resource(), tasks))
            .collect();
        Cached {
            stores,
            dyntype: kind.api_resource(),
        }
    }
}

/// Keeps a store in step with a watch of `api`, retried every few seconds at most while
/// the site is down or the kind is not installed.
fn reflect<K>(api: Api<K>, dyntype: K::DynamicType, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let retry = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times();
    let stream = watcher::watcher(api, watcher::Config::default())
        .backoff(ExponentialBackoff::from(retry))
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer);
    tasks.push(tokio::spawn(stream.for_each(|_| futures::future::ready(()))));
    store
}
