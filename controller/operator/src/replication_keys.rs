//! The rsync-TLS pre-shared keys of replication. Each VM's key is derived from one master
//! key, kept in a Secret beside the controller, as HMAC-SHA256 of the key Secret's
//! namespace and name: the same at both ends without reading either. So coldsite's identity
//! at a site may create and delete Secrets, never read one. Keys known to be written are
//! remembered, so a steady reconcile writes nothing.

use std::collections::HashSet;
use std::sync::Mutex;

use coldsite_engine::fabric::FabricError;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

use crate::kubevirt::dynamic::{SECRET, SiteApi};
use crate::kubevirt::objects;
use crate::mac::hmac_sha256_hex;

/// The key in the master Secret's data.
const MASTER_KEY: &str = "key";

pub struct ReplicationKeys {
    secrets: Api<Secret>,
    /// Where the master key lives, for messages.
    secret: String,
    master: OnceCell<Vec<u8>>,
    /// (site, namespace, name) of keys written since the controller started.
    written: Mutex<HashSet<(String, String, String)>>,
}

impl ReplicationKeys {
    /// Keys derived from the master key in Secret `namespace/name` on the management
    /// cluster, made on first use if missing.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
            secret: format!("{namespace}/{name}"),
            master: OnceCell::new(),
            written: Mutex::new(HashSet::new()),
        }
    }

    /// Writes the key of ProtectedVM `pvm`'s replication in namespace `ns` at each site,
    /// unless it was written before.
    pub async fn ensure(&self, sites: [&SiteApi; 2], ns: &str, pvm: &str) -> Result<(), FabricError> {
        let name = objects::rsync_secret_name(pvm);
        let psk = derive(self.master().await?, ns, &name);
        for site in sites {
            let id = (site.site.clone(), ns.to_owned(), name.clone());
            if self.written.lock().is_ok_and(|w| w.contains(&id)) {
                continue;
            }
            site.create_unless_exists(SECRET, &objects::rsync_secret(ns, pvm, &psk))
                .await?;
            if let Ok(mut w) = self.written.lock() {
                w.insert(id);
            }
        }
        Ok(())
    }

    /// Forgets that a key was written at `site`, when it is deleted there.
    pub fn forget(&self, site: &str, ns: &str, pvm: &str) {
        if let Ok(mut w) = self.written.lock() {
            w.remove(&(site.to_owned(), ns.to_owned(), objects::rsync_secret_name(pvm)));
        }
    }

    async fn master(&self) -> Result<&[u8], FabricError> {
        self.master
            .get_or_try_init(|| self.load_or_create())
            .await
            .map(Vec::as_slice)
    }

    async fn load_or_create(&self) -> Result<Vec<u8>, FabricError> {
        let unusable =
            |e: kube::Error| FabricError::transient(format!("the replication master key Secret {}: {e}", self.secret));
        if let Some(found) = self.secrets.get_opt(self.name()).await.map_err(unusable)? {
            return self.key_of(&found);
        }
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut secret = Secret::default();
        secret.metadata.name = Some(self.name().to_owned());
        secret.data = Some([(MASTER_KEY.to_owned(), ByteString(key))].into());
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(made) => self.key_of(&made),
            // Another replica made it first.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.key_of(&self.secrets.get(self.name()).await.map_err(unusable)?)
            }
            Err(e) => Err(unusable(e)),
        }
    }

    fn name(&self) -> &str {
        self.secret.split_once('/').map_or("", |(_, n)| n)
    }

    fn key_of(&self, secret: &Secret) -> Result<Vec<u8>, FabricError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(MASTER_KEY))
            .filter(|k| k.0.len() >= 32)
            .map(|k| k.0.clone())
            .ok_or_else(|| {
                FabricError::permanent(format!(
                    "the replication master key Secret {} ({}) has no data.{MASTER_KEY} of 32 bytes or more",
                    self.secret,
                    secret.name_any()
                ))
            })
    }
}

/// The pre-shared key of the key Secret `namespace/name`: hex HMAC-SHA256 under the master.
pub fn derive(master: &[u8], namespace: &str, name: &str) -> String {
    hmac_sha256_hex(
        master,
        &[format!("coldsite rsync-tls v1:{namespace}/{name}").as_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_derive_the_same_key_and_each_vm_its_own() {
        let master = [7u8; 32];
        let a = derive(&master, "exchange", "coldsite-dc01-rsync");
        assert_eq!(a, derive(&master, "exchange", "coldsite-dc01-rsync"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, derive(&master, "exchange", "coldsite-exch-mbx01-rsync"));
        assert_ne!(a, derive(&master, "sharepoint", "coldsite-dc01-rsync"));
        assert_ne!(a, derive(&[8u8; 32], "exchange", "coldsite-dc01-rsync"));
    }
}
