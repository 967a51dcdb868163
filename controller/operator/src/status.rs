//! Status writes: server-side apply under the controller's field manager, and only when
//! the status changed, so an idle cluster sees no writes.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "coldsite-controller";

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The status was already as desired.
    Unchanged,
    /// The object changed since it was read at `version`: the status was built from an older
    /// one, and is not written over the newer.
    Stale,
}

/// Applies `desired` as the object's status unless it equals `current`; with a `version`
/// (the resourceVersion it was read at), only while the object is still at it, so that a
/// reconcile that started from a cache a write behind does not undo that write.
pub async fn apply<K, S>(
    api: &Api<K>,
    name: &str,
    version: Option<&str>,
    current: Option<&S>,
    desired: &S,
) -> Result<Written>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(Written::Unchanged);
    }
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    if let Some(v) = version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    match api
        .patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(Written::Yes),
        Err(kube::Error::Api(s)) if s.code == 409 && version.is_some() => Ok(Written::Stale),
        Err(e) => Err(Error::kube(format!("writing status of {} {name}", K::kind(&())))(e)),
    }
}
