//! Small helpers shared by the simulated controllers: JSON access, timestamps in the
//! Kubernetes formats, conditions, and status patches that write only what changed.

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::FIELD_MANAGER;

/// The string at `pointer` (RFC 6901, e.g. `/spec/runStrategy`), if any.
pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The non-empty string at `pointer`.
pub(crate) fn nonempty_str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    str_at(value, pointer).filter(|s| !s.is_empty())
}

/// A `metav1.Time` string: RFC 3339 in UTC with whole seconds.
pub(crate) fn k8s_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Bytes of a resource quantity such as `10Gi`, `500M` or `1073741824`; `None` for
/// forms the simulator does not need (milli-units, exponents).
pub(crate) fn quantity_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    Some((number * factor).round() as i64)
}

/// A standard condition. `lastTransitionTime` is kept from `previous` (the current list)
/// when the status of this type did not change.
pub(crate) fn condition(previous: Option<&Value>, type_: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = previous
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|c| str_at(c, "/type") == Some(type_)));
    let since = match old {
        Some(old) if str_at(old, "/status") == Some(status) => old
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(k8s_time(Utc::now()))),
        _ => json!(k8s_time(Utc::now())),
    };
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    })
}

/// Whether a condition list holds `type_` with status True.
pub(crate) fn condition_true(conditions: Option<&Value>, type_: &str) -> bool {
    conditions.and_then(Value::as_array).is_some_and(|list| {
        list.iter()
            .any(|c| str_at(c, "/type") == Some(type_) && str_at(c, "/status") == Some("True"))
    })
}

/// The part of `desired` that differs from `current`: a JSON merge patch for a status.
/// A `null` in `desired` removes the field (and is left out when it is already absent).
pub(crate) fn delta(current: Option<&Value>, desired: &Map<String, Value>) -> Map<String, Value> {
    desired
        .iter()
        .filter(|(key, want)| {
            let have = current.and_then(|c| c.get(key.as_str()));
            match (have, want) {
                (None | Some(Value::Null), Value::Null) => false,
                (Some(have), want) => have != *want,
                (None, _) => true,
            }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Where a kind keeps its status: behind the status subresource, or in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusAt {
    Subresource,
    Object,
}

/// Merge-patches the fields of `desired` that differ from the object's status. Returns
/// whether anything was written: an idle simulator does not write.
pub(crate) async fn patch_status(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    desired: Map<String, Value>,
    at: StatusAt,
) -> Result<bool> {
    let changes = delta(object.data.get("status"), &desired);
    if changes.is_empty() {
        return Ok(false);
    }
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({ "status": Value::Object(changes) });
    let pp = params();
    let result = match at {
        StatusAt::Subresource => api.patch_status(name, &pp, &Patch::Merge(&patch)).await,
        StatusAt::Object => api.patch(name, &pp, &Patch::Merge(&patch)).await,
    };
    result.with_context(|| format!("patching status of {}", describe(object)))?;
    Ok(true)
}

/// Field-manager params for patches, with strict field validation: what the simulator
/// writes must pass upstream's schemas, as the real components' writes do.
pub(crate) fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
    .validation_strict()
}

/// `Kind namespace/name` for logs and errors.
pub(crate) fn describe(object: &DynamicObject) -> String {
    let kind = object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("object");
    match &object.metadata.namespace {
        Some(ns) => format!("{kind} {ns}/{}", object.metadata.name.as_deref().unwrap_or("?")),
        None => format!("{kind} {}", object.metadata.name.as_deref().unwrap_or("?")),
    }
}

/// `namespace/name` of an object.
pub(crate) fn key_of(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether an API error is a 404 (object or resource type absent).
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Whether an API error is a 409 (already exists, or a conflict).
pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 * 1024 * 1024 * 1024));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1024"), Some(1024));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("100m"), None);
    }

    #[test]
    fn delta_writes_only_changes() {
        let current = json!({"a": 1, "b": "x", "gone": true});
        let desired = json!({"a": 1, "b": "y", "gone": null, "absent": null, "new": 2});
        let d = delta(Some(&current), desired.as_object().unwrap());
        assert_eq!(Value::Object(d), json!({"b": "y", "gone": null, "new": 2}));
    }

    #[test]
    fn condition_keeps_transition_time_while_status_holds() {
        let old = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let same = condition(Some(&old), "Ready", true, "R", "m");
        assert_eq!(same["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let flipped = condition(Some(&old), "Ready", false, "R", "m");
        assert_ne!(flipped["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }
}
