//! Test support for coldsite's end-to-end tests.
//!
//! [`ControlPlane`] runs a real Kubernetes control plane on 127.0.0.1: etcd,
//! kube-apiserver (RBAC, certificates generated at run time) and
//! kube-controller-manager, from the binaries that `e2e/controlplane/build.sh` builds
//! from Go modules into a cache outside the source tree (`$COLDSITE_K8S_BIN` overrides
//! the location).
//!
//! Tests in one test binary share [`ControlPlane::shared`] (management cluster and
//! primary site) and [`ControlPlane::shared_recovery`] (recovery site, its own etcd) and
//! isolate themselves with [`ControlPlane::create_namespace`]. Every process started
//! dies with the test process; temporary directories (logs, certificates, etcd data)
//! are removed at exit unless `COLDSITE_E2E_KEEP=1`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = coldsite_e2e::ControlPlane::shared().await?;
//! let client = cp.client().await?; // one client per test (per tokio runtime)
//! let ns = cp.create_namespace("my-test").await?;
//! # let _ = (client, ns); Ok(()) }
//! ```

mod binaries;
pub mod chart;
mod controlplane;
pub mod exchange;
pub mod image;
pub mod manifests;
mod pki;
pub mod plugin;
mod process;
pub mod registry;
pub mod scale;
pub mod simulator;
pub mod site;
pub mod skips;

pub use binaries::{BIN_DIR_ENV, Binaries, workspace_binary};
pub use controlplane::{
    Component, ControlPlane, ControlPlaneOptions, DEFAULT_CONTROLLERS, SiteNetwork, TEST_NAMESPACE_LABEL, log_tail,
};
pub use process::{KEEP_ENV, spawn_tied};
