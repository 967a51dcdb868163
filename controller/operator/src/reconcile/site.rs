//! Site: is its API reachable, and does it run KubeVirt, VolSync and CSI snapshots?

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coldsite_api::Site;
use coldsite_api::common::condition;
use coldsite_api::site::{SiteCapabilities, SiteStatus};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::Result;

const PROBE_EVERY: Duration = Duration::from_secs(60);
/// `lastProbeTime` is a heartbeat: written at most this often when nothing else changed.
const HEARTBEAT: i64 = 300;

/// What a probe found.
struct Probe {
    version: Result<String, String>,
    capabilities: SiteCapabilities,
}

async fn probe(client: &Client) -> Probe {
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .map_err(|e| e.to_string());
    let mut caps = SiteCapabilities::default();
    if let Ok(groups) = client.list_api_groups().await {
        let has = |g: &str, v: &str| {
            groups
                .groups
                .iter()
                .any(|x| x.name == g && x.versions.iter().any(|x| x.version == v))
        };
        caps.kubevirt = has("kubevirt.io", "v1");
        caps.volsync = has("volsync.backube", "v1alpha1");
        caps.snapshots = has("snapshot.storage.k8s.io", "v1");
    }
    caps.kubernetes_version = version.as_ref().ok().cloned();
    Probe {
        version,
        capabilities: caps,
    }
}

/// Pure: the status a probe result means.
fn build_status(
    site: &Site,
    found: Result<&Probe, String>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> SiteStatus {
    let mut status = site.status.clone().unwrap_or_default();
    let generation = site.metadata.generation;
    let failure = match &found {
        Err(message) => Some(message.clone()),
        Ok(Probe {
            version: Err(message), ..
        }) => Some(message.clone()),
        Ok(_) => None,
    };
    match (found, failure) {
        (_, Some(message)) => {
            conditions::set(
                &mut status.conditions,
                Desired {
                    type_: condition::REACHABLE,
                    ok: false,
                    reason: "Unreachable",
                    message: message.clone(),
                },
                generation,
                now.clone(),
            );
            conditions::set(
                &mut status.conditions,
                Desired {
                    type_: condition::READY,
                    ok: false,
                    reason: "Unreachable",
                    message,
                },
                generation,
                now.clone(),
            );
        }
        (Err(_), None) => {}
        (Ok(p), None) => {
            let c = &p.capabilities;
            let version = p.version.as_ref().map(String::as_str).unwrap_or_default();
            conditions::set(
                &mut status.conditions,
                Desired {
                    type_: condition::REACHABLE,
                    ok: true,
                    reason: "APIServerAnswered",
                    message: format!("Kubernetes {version}"),
                },
                generation,
                now.clone(),
            );
            let missing: Vec<&str> = [
                (c.kubevirt, "KubeVirt (kubevirt.io/v1)"),
                (c.volsync, "VolSync (volsync.backube/v1alpha1)"),
                (c.snapshots, "CSI snapshots (snapshot.storage.k8s.io/v1)"),
            ]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, what)| what)
            .collect();
            let (ok, reason, message) = if missing.is_empty() {
                (
                    true,
                    "CapabilitiesPresent",
                    "KubeVirt, VolSync and CSI snapshots are installed".to_owned(),
                )
            } else {
                (
                    false,
                    "MissingCapabilities",
                    format!("not installed: {}", missing.join(", ")),
                )
            };
            conditions::set(
                &mut status.conditions,
                Desired {
                    type_: condition::READY,
                    ok,
                    reason,
                    message,
                },
                generation,
                now.clone(),
            );
            status.capabilities = Some(c.clone());
        }
    }
    status.replication_service_type = Some(
        site.spec
            .replication
            .as_ref()
            .map(|r| r.service_type)
            .unwrap_or_default(),
    );
    status.observed_generation = generation;
    status
}

pub async fn reconcile(site: Arc<Site>, ctx: Arc<Context>) -> Result<Action> {
    let name = site.name_any();
    let now = coldsite_engine::time::to_k8s(Utc::now());
    let client = ctx.sites.client(&site).await;
    let found = match &client {
        Ok(c) => Ok(probe(c).await),
        Err(e) => Err(e.to_string()),
    };
    let mut status = build_status(&site, found.as_ref().map_err(Clone::clone), now.clone());
    let reachable = found.as_ref().is_ok_and(|p| p.version.is_ok());
    ctx.metrics
        .site_reachable
        .with_label_values(&[&name])
        .set(if reachable { 1.0 } else { 0.0 });
    let old = site.status.clone().unwrap_or_default();
    let stale = old
        .last_probe_time
        .as_ref()
        .is_none_or(|t| now.0.as_second() - t.0.as_second() >= HEARTBEAT);
    status.last_probe_time = if stale || status.conditions != old.conditions || status.capabilities != old.capabilities
    {
        Some(now)
    } else {
        old.last_probe_time.clone()
    };
    let was = coldsite_api::common::is_condition_true(&old.conditions, condition::REACHABLE);
    if was != reachable && !old.conditions.is_empty() {
        let note = if reachable {
            "the site's API server answers again".to_owned()
        } else {
            found.as_ref().err().cloned().unwrap_or_else(|| "no answer".into())
        };
        ctx.event(
            site.as_ref(),
            !reachable,
            if reachable { "Reachable" } else { "Unreachable" },
            "Probe",
            note,
        )
        .await;
    }
    crate::status::apply(
        &Api::<Site>::all(ctx.client.clone()),
        &name,
        None,
        site.status.as_ref(),
        &status,
    )
    .await?;
    Ok(Action::requeue(PROBE_EVERY))
}
