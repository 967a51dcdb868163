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

/// Whether `desired` would write anything over `current`, compared as the API server
/// stores them: times to the second, say, so a status built from in-memory times with
/// nanoseconds does not differ from the one read back with the same seconds.
pub fn unchanged<S: Serialize>(current: Option<&S>, desired: &S) -> bool {
    current
        .is_some_and(|c| matches!((serde_json::to_value(c), serde_json::to_value(desired)), (Ok(a), Ok(b)) if a == b))
}

/// Applies `desired` as the object's status unless it is [`unchanged`]; with a `version`
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
    S: Serialize,
{
    if unchanged(current, desired) {
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use coldsite_engine::time::to_k8s;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::unchanged;

    fn at(nanos: u32, second: u32) -> Option<Time> {
        Some(to_k8s(
            Utc.with_ymd_and_hms(2026, 12, 2, 20, 0, second).unwrap() + chrono::Duration::nanoseconds(nanos.into()),
        ))
    }

    #[test]
    fn a_status_is_unchanged_when_it_differs_only_below_what_the_api_server_keeps() {
        assert!(
            unchanged(Some(&at(0, 1)), &at(123_456_789, 1)),
            "the wire keeps whole seconds"
        );
        assert!(!unchanged(Some(&at(0, 1)), &at(0, 2)));
        assert!(!unchanged(None, &at(0, 1)), "no status yet is a change");
    }
}
