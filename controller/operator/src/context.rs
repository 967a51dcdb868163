//! What every reconciler shares: clients, metrics, the Event reporter, and the in-memory
//! records of runs in progress.

use std::collections::HashMap;
use std::sync::Mutex;

use coldsite_api::Site;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};

use crate::error::{Error, Result};
use crate::http_client::HttpClient;
use crate::kubevirt::dynamic::SiteApi;
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::metrics::Metrics;
use crate::scripts::ScriptRunner;
use crate::sites::SiteClients;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Fabric calls in flight at once, per run.
    pub concurrency: usize,
}

pub struct Context {
    pub client: Client,
    pub sites: SiteClients,
    pub metrics: Metrics,
    pub reporter: Reporter,
    pub http: HttpClient,
    pub settings: Settings,
    /// Step records of runs in progress, by run UID: the durable copy is in status.
    pub runs: Mutex<HashMap<String, Vec<coldsite_engine::executor::StepRecord>>>,
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

    /// A fabric over the sites that answer, for a pair of sites.
    pub async fn fabric(&self, primary: &str, recovery: &str) -> Result<KubeVirtFabric> {
        let sites_api: Api<Site> = Api::all(self.client.clone());
        let mut sites = HashMap::new();
        for name in [primary, recovery] {
            let Some(site) = sites_api
                .get_opt(name)
                .await
                .map_err(Error::kube(format!("reading Site {name}")))?
            else {
                continue;
            };
            match self.sites.client(&site).await {
                Ok(client) => {
                    sites.insert(
                        site.name_any(),
                        SiteApi {
                            site: site.name_any(),
                            client,
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
            },
            scripts: ScriptRunner {
                http: self.http.clone(),
            },
            primary: primary.to_owned(),
            recovery: recovery.to_owned(),
        })
    }
}
