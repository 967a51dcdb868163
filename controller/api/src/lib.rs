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

/// Every CRD, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Site::crd(),
        NetworkMapping::crd(),
        ProtectedVM::crd(),
        RecoveryPlan::crd(),
        RecoveryRun::crd(),
    ]
}
