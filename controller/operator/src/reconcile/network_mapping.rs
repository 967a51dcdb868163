//! NetworkMapping: `Valid`, from the checks that need more than the object itself.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coldsite_api::NetworkMapping;
use coldsite_api::common::condition;
use coldsite_api::network_mapping::NetworkMappingStatus;
use coldsite_engine::validate::{self, Inventory, Severity};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::error::Result;

pub async fn reconcile(nm: Arc<NetworkMapping>, ctx: Arc<Context>) -> Result<Action> {
    let ns = nm.namespace().unwrap_or_default();
    let inv = Inventory {
        sites: crate::inventory::sites(&ctx).await?,
        ..Inventory::default()
    };
    let problems: Vec<String> = validate::validate_mapping(&nm, &inv)
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    let mut status = nm.status.clone().unwrap_or_default();
    let (ok, reason, message) = match problems.as_slice() {
        [] => (
            true,
            "Valid",
            format!(
                "{} network(s) map {} → {}",
                nm.spec.networks.len(),
                nm.spec.source_site,
                nm.spec.target_site
            ),
        ),
        [one] if one.contains("does not exist") => (false, "UnknownSite", one.clone()),
        [one] if one.contains("overlaps") => (false, "OverlappingSubnets", one.clone()),
        many => (false, "Invalid", many.join("; ")),
    };
    let now = coldsite_engine::time::to_k8s(Utc::now());
    let was_ok = coldsite_api::common::find_condition(&status.conditions, condition::VALID).map(|c| c.status == "True");
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: condition::VALID,
            ok,
            reason,
            message: message.clone(),
        },
        nm.metadata.generation,
        now,
    );
    status.observed_generation = nm.metadata.generation;
    if was_ok != Some(ok) {
        ctx.event(nm.as_ref(), !ok, reason, "Validate", message).await;
    }
    let api = Api::<NetworkMapping>::namespaced(ctx.client.clone(), &ns);
    crate::status::apply(
        &api,
        &nm.name_any(),
        None,
        nm.status.as_ref(),
        &NetworkMappingStatus { ..status },
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}
