//! The KubeVirt/VolSync fabric: the engine's seam to real site clusters.

pub mod app_consistent;
pub mod dynamic;
pub mod fabric;
pub mod final_sync;
pub mod group_cut;
pub mod objects;
pub mod points;
