//! Watches of a site's VirtualMachines and of coldsite's copies of their manifests, so that
//! plan and run reconciles read them from a cache instead of listing a namespace's VMs at
//! every pass (DESIGN §9: watches and reflector caches, not polling).
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

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::kubevirt::dynamic::{CONFIG_MAP, Kind, VM};
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

/// One cached kind at one site.
struct Cache {
    store: Store<DynamicObject>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Cache {
    fn start(site: &str, client: Client, kind: Kind, selector: Option<String>, changes: Option<VmChanges>) -> Self {
        let api: Api<DynamicObject> = Api::all_with(client, &kind.resource());
        let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
        if let Some(s) = selector {
            config = config.labels(&s);
        }
        let writer: Writer<DynamicObject> = Writer::new(kind.resource());
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let site = site.to_owned();
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, config)
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear()),
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

    /// The namespace's objects, once the first list is in.
    fn in_namespace(&self, namespace: &str) -> Option<Vec<Value>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(namespace))
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .collect(),
        )
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
    copies: Cache,
}

impl SiteWatch {
    pub fn start(site: &str, client: &Client, changes: VmChanges) -> Arc<Self> {
        Arc::new(SiteWatch {
            vms: Cache::start(site, client.clone(), VM, None, Some(changes)),
            copies: Cache::start(
                site,
                client.clone(),
                CONFIG_MAP,
                Some(objects::source_copy_selector()),
                None,
            ),
        })
    }

    /// The VirtualMachines of a namespace; `None` until the watch has listed them.
    pub fn vms(&self, namespace: &str) -> Option<Vec<Value>> {
        self.vms.in_namespace(namespace)
    }

    /// One VirtualMachine: `None` until the watch has listed them, `Some(None)` when there
    /// is none of that name.
    pub fn vm(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.vms.get(VM, namespace, name)
    }

    /// One of coldsite's copies of a VM manifest, as [`Self::vm`].
    pub fn copy(&self, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.copies.get(CONFIG_MAP, namespace, name)
    }

    /// coldsite's copies of VM manifests in a namespace; `None` until listed.
    pub fn copies(&self, namespace: &str) -> Option<Vec<Value>> {
        self.copies.in_namespace(namespace)
    }
}
