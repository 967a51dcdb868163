//! coldsite's API: the five custom resources of `coldsite.io/v1alpha1`, their schema, CEL rules
//! and defaults, and the offline checks that evaluate those rules without a server. No I/O.

pub mod common;
pub mod manifest;
pub mod network_mapping;
pub mod protected_vm;
pub mod recovery_plan;
pub mod recovery_run;
pub mod rules;
pub mod schema;
pub mod site;

pub use common::{FailoverKind, RunAction};
pub use network_mapping::{NetworkMapping, NetworkMappingSpec, NetworkMappingStatus};
pub use protected_vm::{ProtectedVM, ProtectedVMSpec, ProtectedVMStatus};
pub use recovery_plan::{RecoveryPlan, RecoveryPlanSpec, RecoveryPlanStatus};
pub use recovery_run::{RecoveryRun, RecoveryRunSpec, RecoveryRunStatus};
pub use site::{Site, SiteSpec, SiteStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group.
pub const GROUP: &str = "coldsite.io";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as manifests spell it.
pub const API_VERSION: &str = "coldsite.io/v1alpha1";

/// On each CRD: a digest of its spec, so a controller can tell the CRDs it was built with
/// from older ones still served (Helm never upgrades CRDs).
pub const SCHEMA_DIGEST: &str = "coldsite.io/schema-digest";

/// Every CRD, in the order they are installed, each annotated with its [`SCHEMA_DIGEST`].
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Site::crd(),
        NetworkMapping::crd(),
        ProtectedVM::crd(),
        RecoveryPlan::crd(),
        RecoveryRun::crd(),
    ];
    for crd in &mut crds {
        let digest = schema_digest(crd);
        crd.metadata
            .annotations
            .get_or_insert_default()
            .insert(SCHEMA_DIGEST.into(), digest);
    }
    crds
}

/// The SHA-256 of a CRD's spec as JSON, hex: what [`SCHEMA_DIGEST`] records.
pub fn schema_digest(crd: &CustomResourceDefinition) -> String {
    use sha2::Digest;
    let spec = serde_json::to_vec(&crd.spec).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(spec))
}
