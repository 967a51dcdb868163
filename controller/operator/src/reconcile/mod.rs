//! One reconciler per kind, each in stages: dereference, validate, build, apply, status.

pub mod network_mapping;
pub mod protected_vm;
pub mod recovery_plan;
pub mod recovery_run;
pub mod site;
