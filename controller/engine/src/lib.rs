//! coldsite's pure core. It decides everything that happens in a failover and touches no
//! Kubernetes client: validation turns API objects into a domain model, the planner turns a
//! plan into a step graph, the executor drives that graph from persisted state and
//! observations, and the `Fabric` trait is the one seam to the platform.

pub mod cloudinit;
pub mod cycles;
pub mod driver;
pub mod executor;
pub mod fabric;
pub mod lifecycle;
pub mod listing;
pub mod model;
pub mod names;
pub mod planner;
pub mod reip;
pub mod rpo;
pub mod schedule;
pub mod sim;
pub mod simulation;
pub mod source_vm;
pub mod standing;
pub mod synthetic;
pub mod time;
pub mod validate;
