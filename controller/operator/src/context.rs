//! What every reconciler shares: clients, metrics, the Event reporter, the controllers'
//! caches of the management cluster, and the in-memory records of runs in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use coldsite_api::{NetworkMapping, ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use coldsite_engine::model::SiteModel;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::error::{Error, Result};
use crate::http_client::HttpClient;
use crate::kubevirt::dynamic::SiteApi;
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::metrics::Metrics;
use crate::replication_keys::ReplicationKeys;
use crate::scripts::ScriptRunner;
use crate::sites::SiteClients;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Fabric calls in flight at once, per run.
    pub concurrency: usize,
}

/// The controllers' caches of the management cluster's objects, fed by their watches, so
/// a reconcile reads what it refers to without asking the API server.
#[derive(Clone)]
pub struct Stores {
    pub sites: Store<Site>,
    pub mappings: Cached<NetworkMapping>,
    pub protected_vms: Cached<ProtectedVM>,
    pub plans: Cached<RecoveryPlan>,
    /// Filled by the plans controllers' watches of runs (see `plan_controller`).
    pub runs: Cached<RecoveryRun>,
}

/// A namespaced kind's caches: one of every namespace, or one per namespace the controller
/// acts in (see `--namespace`), each fed by its own watch.
#[derive(Clone)]
pub struct Cached<K: Resource<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    pub fn new(stores: Vec<Store<K>>) -> Self {
        Self(stores)
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.0.iter().find_map(|s| s.get(key))
    }

    /// The cached objects of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.0
            .iter()
            .flat_map(Store::state)
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Whether every cache has its first full list; false if a watch ended first.
    pub async fn wait_until_ready(&self) -> bool {
        for store in &self.0 {
            if store.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

/// What one pass of a run hands the next within this process: the step records (the
/// durable copy is in status) and when each running step is next asked. Lost on restart,
/// when a pass rebuilds the records from status and asks every running step at once.
#[derive(Clone, Debug, Default)]
pub struct RunMemory {
    pub records: Vec<coldsite_engine::executor::StepRecord>,
    pub polls: coldsite_engine::driver::PollSchedule,
}

pub struct Context {
    pub client: Client,
    pub sites: SiteClients,
    pub metrics: Metrics,
    pub reporter: Reporter,
    pub http: HttpClient,
    pub settings: Settings,
    /// What the last pass of each run in progress left, by run UID.
    pub runs: Mutex<HashMap<String, RunMemory>>,
    /// Set while controllers run (one leadership term) and their caches are filled; None
    /// makes readers ask the API.
    pub stores: RwLock<Option<Stores>>,
    pub keys: Arc<ReplicationKeys>,
}

impl Context {
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// Publishes an Event about an object; failures only log, Events are best effort.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        use kube::runtime::events::{Event, EventType};
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(crate::conditions::truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder().publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "publishing an Event");
        }
    }

    pub fn set_stores(&self, stores: Option<Stores>) {
        if let Ok(mut s) = self.stores.write() {
            *s = stores;
        }
    }

    /// The caches, once each has its first full list; None before, and when no controller
    /// runs. Never waits: see `run_controllers`.
    pub fn stores(&self) -> Option<Stores> {
        self.stores.read().ok()?.clone()
    }

    /// A Site, from the cache when there is one.
    pub async fn site(&self, name: &str) -> Result<Option<Site>> {
        if let Some(s) = self.stores() {
            return Ok(s.sites.get(&ObjectRef::new(name)).map(|s| (*s).clone()));
        }
        Api::<Site>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading Site {name}")))
    }

    /// A fabric over the sites that answer, for a pair of sites.
    pub async fn fabric(&self, primary: &str, recovery: &str) -> Result<KubeVirtFabric> {
        let mut sites = HashMap::new();
        let mut models = Vec::new();
        for name in [primary, recovery] {
            let site = self.site(name).await?;
            models.push(SiteModel::of(name, site.as_ref()));
            let Some(site) = site else {
                continue;
            };
            match self.sites.client(&site).await {
                Ok(client) => {
                    sites.insert(
                        site.name_any(),
                        SiteApi {
                            site: site.name_any(),
                            client,
                            watch: self.sites.watch(&site.name_any()),
                        },
                    );
                }
                Err(e) => tracing::warn!(site = name, error = %e, "site client unavailable"),
            }
        }
        Ok(KubeVirtFabric {
            sites,
            management: SiteApi {
                site: "management".into(),
                client: self.client.clone(),
                watch: None,
            },
            scripts: ScriptRunner {
                http: self.http.clone(),
            },
            keys: self.keys.clone(),
            freeze_seconds: self.metrics.guest_freeze_seconds.clone(),
            recovery: models.pop().unwrap_or_default(),
            primary: models.pop().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn run(ns: &str, name: &str) -> RecoveryRun {
        let mut r = RecoveryRun::new(
            name,
            serde_json::from_value(serde_json::json!({"plan": "p", "action": "TestFailover"})).unwrap(),
        );
        r.metadata.namespace = Some(ns.into());
        r
    }

    #[test]
    fn a_namespace_reads_only_its_own_objects_across_per_namespace_caches() {
        let (a, mut wa) = reflector::store();
        let (b, mut wb) = reflector::store();
        wa.apply_watcher_event(&Event::Apply(run("a", "one")));
        wa.apply_watcher_event(&Event::Apply(run("a", "two")));
        wb.apply_watcher_event(&Event::Apply(run("b", "one")));
        let cached = Cached::new(vec![a, b]);
        let names = |ns: &str| {
            let mut n: Vec<String> = cached.in_namespace(ns).iter().map(|r| r.name_any()).collect();
            n.sort();
            n
        };
        assert_eq!(names("a"), ["one", "two"]);
        assert_eq!(names("b"), ["one"]);
        assert!(names("c").is_empty());
        let found = cached.get(&ObjectRef::new("one").within("b")).unwrap();
        assert_eq!(found.namespace().as_deref(), Some("b"));
        assert!(cached.get(&ObjectRef::new("two").within("b")).is_none());
    }
}
