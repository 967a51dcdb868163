//! coldsite-controller: the Kubernetes shell around the engine. Reconcilers read the world,
//! call the engine and apply what it returns; the KubeVirt fabric drives VolSync, snapshots
//! and VMs at the sites.

pub mod compact_object;
pub mod conditions;
pub mod context;
pub mod error;
pub mod http_client;
pub mod inventory;
pub mod kubevirt;
pub mod mac;
pub mod metrics;
pub mod probes;
pub mod reconcile;
pub mod replication_keys;
pub mod script_confinement;
pub mod scripts;
pub mod served_crds;
pub mod server;
pub mod site_watch;
pub mod sites;
pub mod status;
pub mod throttle;
