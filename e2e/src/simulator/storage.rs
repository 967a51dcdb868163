//! Simulated volume binding (a provisioner that provisions instantly) and PVC protection.
//!
//! A Pending PVC becomes `Bound` with `status.capacity.storage` = its request and
//! `status.accessModes` = its spec's. One with a data source binds only once the source
//! is usable: a VolumeSnapshot that is `readyToUse`, a Bound PVC (clone), or a VolSync
//! ReplicationDestination with a ready `latestImage` (volume populator). Other data
//! sources stay Pending. No PersistentVolume objects are created and `spec.volumeName`
//! stays empty.
//!
//! kube-controller-manager here does not run the PVC-protection controller, so the
//! simulator plays it: a deleted PVC loses its `kubernetes.io/pvc-protection` finalizer
//! once no unfinished pod and no VirtualMachineInstance in its namespace uses it.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch};
use serde_json::{Value, json};

use super::resources::{REPLICATION_DESTINATION, VIRTUAL_MACHINE_INSTANCE, VOLUME_SNAPSHOT};
use super::util::{self, str_at};
use super::{Ctx, SiteState};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &mut SiteState) -> Result<()> {
    let pvcs: Vec<PersistentVolumeClaim> = ctx.list_typed(site).await?;
    let mut in_use: Option<HashSet<(String, String)>> = None;
    for pvc in &pvcs {
        let namespace = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let result = if pvc.metadata.deletion_timestamp.is_some() {
            let protected = pvc
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == PVC_PROTECTION));
            if !protected {
                continue;
            }
            if in_use.is_none() {
                in_use = Some(claims_in_use(ctx, site).await?);
            }
            if in_use
                .as_ref()
                .is_some_and(|used| used.contains(&(namespace.clone(), name.clone())))
            {
                continue;
            }
            release(ctx, site, pvc).await
        } else if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            bind(ctx, site, pvc).await
        } else {
            continue;
        };
        if let Err(e) = result {
            state.errors.push(e.context(format!("PVC {namespace}/{name}")));
        }
    }
    Ok(())
}

/// `(namespace, claim)` of every PVC an unfinished pod or a VMI mounts.
async fn claims_in_use(ctx: &Ctx, site: usize) -> Result<HashSet<(String, String)>> {
    let mut used = HashSet::new();
    let pods: Vec<Pod> = ctx.list_typed(site).await?;
    for pod in pods {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if finished {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(claim) = &volume.persistent_volume_claim {
                used.insert((namespace.clone(), claim.claim_name.clone()));
            }
        }
    }
    for vmi in ctx.list(VIRTUAL_MACHINE_INSTANCE, site).await?.unwrap_or_default() {
        let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
        let volumes = vmi.data.pointer("/spec/volumes").and_then(Value::as_array);
        for volume in volumes.into_iter().flatten() {
            let claim =
                str_at(volume, "/persistentVolumeClaim/claimName").or_else(|| str_at(volume, "/dataVolume/name"));
            if let Some(claim) = claim {
                used.insert((namespace.clone(), claim.to_owned()));
            }
        }
    }
    Ok(used)
}

async fn release(ctx: &Ctx, site: usize, pvc: &PersistentVolumeClaim) -> Result<()> {
    let namespace = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let rest: Vec<&String> = pvc
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != PVC_PROTECTION)
        .collect();
    let patch = json!({"metadata": {
        "resourceVersion": pvc.metadata.resource_version,
        "finalizers": if rest.is_empty() { Value::Null } else { json!(rest) },
    }});
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client(site), namespace);
    match api.patch(name, &util::params(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e).context("removing the pvc-protection finalizer"),
    }
}

/// Whether the data source of a PVC can be restored from now.
async fn source_ready(ctx: &Ctx, site: usize, pvc: &PersistentVolumeClaim) -> Result<bool> {
    let namespace = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let (group, kind, name, source_namespace) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) => (
            r.api_group.clone().unwrap_or_default(),
            r.kind.clone(),
            r.name.clone(),
            r.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
        ),
        (None, Some(s)) => (
            s.api_group.clone().unwrap_or_default(),
            s.kind.clone(),
            s.name.clone(),
            namespace.to_owned(),
        ),
        (None, None) => return Ok(true),
    };
    let client = ctx.client(site);
    let snapshot_ready = |snapshot: Option<kube::api::DynamicObject>| {
        snapshot.is_some_and(|s| {
            s.metadata.deletion_timestamp.is_none()
                && s.data.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true)
        })
    };
    match (group.as_str(), kind.as_str()) {
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => {
            let snapshot = VOLUME_SNAPSHOT
                .namespaced(client, &source_namespace)
                .get_opt(&name)
                .await
                .with_context(|| format!("reading VolumeSnapshot {source_namespace}/{name}"))?;
            Ok(snapshot_ready(snapshot))
        }
        ("", "PersistentVolumeClaim") => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client, &source_namespace);
            let source = api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading PVC {source_namespace}/{name}"))?;
            Ok(source.is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Bound")))
        }
        ("volsync.backube", "ReplicationDestination") => {
            let rd = REPLICATION_DESTINATION
                .namespaced(client.clone(), &source_namespace)
                .get_opt(&name)
                .await
                .with_context(|| format!("reading ReplicationDestination {source_namespace}/{name}"))?;
            let Some(image) = rd.and_then(|rd| str_at(&rd.data, "/status/latestImage/name").map(str::to_owned)) else {
                return Ok(false);
            };
            let snapshot = VOLUME_SNAPSHOT
                .namespaced(client, &source_namespace)
                .get_opt(&image)
                .await
                .with_context(|| format!("reading VolumeSnapshot {source_namespace}/{image}"))?;
            Ok(snapshot_ready(snapshot))
        }
        _ => Ok(false), // no populator for it here
    }
}

async fn bind(ctx: &Ctx, site: usize, pvc: &PersistentVolumeClaim) -> Result<()> {
    if !source_ready(ctx, site, pvc).await? {
        return Ok(());
    }
    let namespace = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    let mut capacity = HashMap::new();
    if let Some(request) = request {
        capacity.insert("storage", request);
    }
    let patch = json!({"status": {
        "phase": "Bound",
        "capacity": capacity,
        "accessModes": spec.access_modes.unwrap_or_default(),
    }});
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client(site), namespace);
    api.patch_status(name, &util::params(), &Patch::Merge(&patch))
        .await
        .context("binding")?;
    tracing::debug!(site = %ctx.site_name(site), "PVC {namespace}/{name} is Bound");
    Ok(())
}
