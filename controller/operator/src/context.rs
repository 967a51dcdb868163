//! What every reconciler shares: clients, metrics, the Event reporter, the controllers'
//! caches of the management cluster, and the in-memory records of runs in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use coldsite_api::{NetworkMapping, ProtectedVM, RecoveryRun, Site};
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
    pub mappings: Store<NetworkMapping>,
    pub protected_vms: Store<ProtectedVM>,
    /// Filled by the plans controller's watch of runs (see `plan_controller`).
    pub runs: Store<RecoveryRun>,
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
