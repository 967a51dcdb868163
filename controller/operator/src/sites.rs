//! Clients for site clusters, built from the kubeconfig Secrets that Sites name and cached
//! until the Secret changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use coldsite_api::Site;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::error::{Error, Result};

/// How long a call to a site may take before the site counts as unreachable.
const SITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SiteClients {
    management: Client,
    cache: Mutex<HashMap<String, (String, Client)>>,
}

impl SiteClients {
    pub fn new(management: Client) -> Self {
        Self {
            management,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn management(&self) -> &Client {
        &self.management
    }

    /// The client for a site: the management cluster's own when the Site names no cluster.
    pub async fn client(&self, site: &Site) -> Result<Client> {
        let name = site.name_any();
        let Some(cluster) = &site.spec.cluster else {
            return Ok(self.management.clone());
        };
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
        if let Ok(cache) = self.cache.lock()
            && let Some((v, client)) = cache.get(&name)
            && *v == version
        {
            return Ok(client.clone());
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
        let client = Client::try_from(config).map_err(|e| Error::InvalidSpec(format!("Site {name}: {e}")))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name, (version, client.clone()));
        }
        Ok(client)
    }
}
