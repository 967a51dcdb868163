//! Status writes: server-side apply under the controller's field manager, and only when
//! the status changed, so an idle cluster sees no writes.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "coldsite-controller";

/// Applies `desired` as the object's status unless it equals `current`. Returns whether
/// it wrote.
pub async fn apply<K, S>(api: &Api<K>, name: &str, current: Option<&S>, desired: &S) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube(format!("writing status of {} {name}", K::kind(&()))))?;
    Ok(true)
}
