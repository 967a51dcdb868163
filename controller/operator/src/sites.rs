//! Clients for site clusters, built from the kubeconfig Secrets that Sites name and cached
//! until the Secret changes, each with its [`SiteWatch`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coldsite_api::Site;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::error::{Error, Result};
use crate::site_watch::{SiteChange, SiteChanges, SiteWatch, Source};

/// How long a call to a site may take before the site counts as unreachable.
const SITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sent with every request, so the audit logs of the sites and of the management cluster
/// name coldsite.
const USER_AGENT: &str = concat!("coldsite-controller/", env!("CARGO_PKG_VERSION"));

/// Makes the client built from `config` identify itself as coldsite-controller.
pub fn identify(config: &mut Config) {
    config
        .headers
        .push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
}

/// How long a site's client is used before its kubeconfig Secret is read again: a rotated
/// kubeconfig takes effect within this, and reconciles do not read the Secret each time.
const RECHECK: Duration = Duration::from_secs(60);

struct Entry {
    /// The kubeconfig Secret's resourceVersion; empty for the management cluster.
    version: String,
    /// When the Secret was last read and found at `version`.
    checked: Instant,
    client: Client,
    watch: Arc<SiteWatch>,
}

pub struct SiteClients {
    management: Client,
    cache: Mutex<HashMap<String, Entry>>,
    site_changes: SiteChanges,
}

impl SiteClients {
    pub fn new(management: Client) -> Self {
        Self {
            management,
            cache: Mutex::new(HashMap::new()),
            site_changes: tokio::sync::broadcast::channel(4096).0,
        }
    }

    /// The changes the sites' watches see, from now on.
    pub fn site_changes(&self) -> tokio::sync::broadcast::Receiver<SiteChange> {
        self.site_changes.subscribe()
    }

    pub fn management(&self) -> &Client {
        &self.management
    }

    /// The client for a site: the management cluster's own when the Site names no cluster.
    pub async fn client(&self, site: &Site) -> Result<Client> {
        let name = site.name_any();
        let Some(cluster) = &site.spec.cluster else {
            // The management cluster is the site: its client, with a watch of its own.
            return Ok(self
                .lookup(&name, "")
                .unwrap_or_else(|| self.insert(&name, "", self.management.clone(), &self.management)));
        };
        if let Some(client) = self.recent(&name) {
            return Ok(client);
        }
        let r = &cluster.kubeconfig_secret_ref;
        let secret = Api::<Secret>::namespaced(self.management.clone(), &r.namespace)
            .get(&r.name)
            .await
            .map_err(|e| {
                Error::Reference(format!(
                    "Site {name}: reading kubeconfig Secret {}/{}: {e}",
                    r.namespace, r.name
                ))
            })?;
        let version = secret.resource_version().unwrap_or_default();
        if let Some(client) = self.lookup(&name, &version) {
            return Ok(client);
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| b.0.clone())
            .ok_or_else(|| {
                Error::Reference(format!(
                    "Site {name}: Secret {}/{} has no key {:?}",
                    r.namespace, r.name, r.key
                ))
            })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::InvalidSpec(format!("Site {name}: the kubeconfig is not UTF-8")))?;
        let kubeconfig = Kubeconfig::from_yaml(&text)
            .map_err(|e| Error::InvalidSpec(format!("Site {name}: the kubeconfig does not parse: {e}")))?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::InvalidSpec(format!("Site {name}: the kubeconfig is not usable: {e}")))?;
        config.connect_timeout = Some(SITE_TIMEOUT);
        config.read_timeout = Some(SITE_TIMEOUT);
        config.write_timeout = Some(SITE_TIMEOUT);
        identify(&mut config);
        let mut watching = config.clone();
        watching.read_timeout = Some(crate::site_watch::WATCH_READ_TIMEOUT);
        let client = |config| Client::try_from(config).map_err(|e| Error::InvalidSpec(format!("Site {name}: {e}")));
        Ok(self.insert(&name, &version, client(config)?, &client(watching)?))
    }

    /// The cached client of a site whose Secret was read within [`RECHECK`].
    fn recent(&self, name: &str) -> Option<Client> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(name)
            .filter(|e| e.checked.elapsed() < RECHECK)
            .map(|e| e.client.clone())
    }

    /// The cached client of a site if its Secret is still at `version`.
    fn lookup(&self, name: &str, version: &str) -> Option<Client> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get_mut(name).filter(|e| e.version == version)?;
        entry.checked = Instant::now();
        Some(entry.client.clone())
    }

    /// Caches a site's client with a new watch (through `watching`, a client that waits longer
    /// for an answer); the one it replaces stops when dropped.
    fn insert(&self, name: &str, version: &str, client: Client, watching: &Client) -> Client {
        let watch = SiteWatch::start(name, Source::Site(watching.clone()), self.site_changes.clone());
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                name.to_owned(),
                Entry {
                    version: version.to_owned(),
                    checked: Instant::now(),
                    client: client.clone(),
                    watch,
                },
            );
        }
        client
    }

    /// Drops a deleted Site's client and stops its watch.
    pub fn forget(&self, name: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(name);
        }
    }

    /// The watch of a site whose client was made, if any.
    pub fn watch(&self, name: &str) -> Option<Arc<SiteWatch>> {
        self.cache.lock().ok()?.get(name).map(|e| e.watch.clone())
    }
}
