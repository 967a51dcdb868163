//! coldsite's requests as each kube-apiserver's audit log records them: the bench gives the
//! controller an identity of its own and an audit policy that logs only that identity, so
//! the log holds exactly what coldsite asked, with the server's own timestamps.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The identity the bench gives coldsite at every cluster.
pub const USER: &str = "system:serviceaccount:coldsite-system:coldsite";

/// An audit policy recording, at Metadata level, only coldsite's requests.
pub fn policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\", \"ResponseStarted\"]\n\
         rules:\n  - level: Metadata\n    users: [\"{USER}\"]\n  - level: None\n"
    )
}

/// One request, as the typed view of an audit event needs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub verb: String,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    pub request_received_timestamp: DateTime<Utc>,
    pub stage_timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

impl Request {
    /// `resource` or `resource/subresource`.
    pub fn resource(&self) -> String {
        let r = self.object_ref.as_ref();
        match (
            r.and_then(|r| r.resource.as_deref()),
            r.and_then(|r| r.subresource.as_deref()),
        ) {
            (Some(res), Some(sub)) => format!("{res}/{sub}"),
            (Some(res), None) => res.to_owned(),
            _ => "(non-resource)".to_owned(),
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// Seconds the server took; a watch counts for as long as it stayed open.
    pub fn seconds(&self) -> f64 {
        (self.stage_timestamp - self.request_received_timestamp).as_seconds_f64()
    }
}

/// Every request in the log that completed in `[from, to)`.
pub fn read(log: &Path, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Request>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let r: Request = serde_json::from_str(line).with_context(|| format!("an audit event: {line}"))?;
        if r.stage_timestamp >= from && r.stage_timestamp < to {
            out.push(r);
        }
    }
    Ok(out)
}

/// Requests by `verb resource`.
pub fn by_verb_and_resource<'a>(requests: impl IntoIterator<Item = &'a Request>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in requests {
        *counts.entry(format!("{} {}", r.verb, r.resource())).or_default() += 1;
    }
    counts
}

/// The q-quantile (0..=1) of the non-watch requests' server time, in seconds.
pub fn latency_quantile(requests: &[Request], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = requests
        .iter()
        .filter(|r| r.verb != "watch")
        .map(Request::seconds)
        .collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    s.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &str = r#"{"kind":"Event","verb":"get","objectRef":{"resource":"secrets","namespace":"a","name":"k"},"requestReceivedTimestamp":"2026-12-01T10:00:00.000000Z","stageTimestamp":"2026-12-01T10:00:00.010000Z","userAgent":"coldsite-controller/0.1.0"}
{"kind":"Event","verb":"patch","objectRef":{"resource":"protectedvms","subresource":"status"},"requestReceivedTimestamp":"2026-12-01T10:00:01.000000Z","stageTimestamp":"2026-12-01T10:00:01.030000Z"}
{"kind":"Event","verb":"watch","objectRef":{"resource":"virtualmachines"},"requestReceivedTimestamp":"2026-12-01T09:00:00.000000Z","stageTimestamp":"2026-12-01T10:00:02.000000Z"}
{"kind":"Event","verb":"get","requestReceivedTimestamp":"2026-12-01T10:00:05.000000Z","stageTimestamp":"2026-12-01T10:00:05.001000Z"}
"#;

    #[test]
    fn requests_are_counted_by_verb_and_resource_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        std::fs::write(&log, EVENTS).unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let all = read(&log, at("2026-12-01T10:00:00Z"), at("2026-12-01T10:00:03Z")).unwrap();
        assert_eq!(all.len(), 3, "the request after the window is left out");
        let counts = by_verb_and_resource(&all);
        assert_eq!(counts.get("get secrets"), Some(&1));
        assert_eq!(counts.get("patch protectedvms/status"), Some(&1));
        assert_eq!(counts.get("watch virtualmachines"), Some(&1));
        assert_eq!(all.iter().filter(|r| r.is_write()).count(), 1);
        let p100 = latency_quantile(&all, 1.0).unwrap();
        assert!((p100 - 0.03).abs() < 1e-9, "watches do not count as latency: {p100}");
        assert!(policy().contains(USER));
    }
}
