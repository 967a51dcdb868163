//! Unprotecting a VM: its replication, recovery points and group rounds' cuts go at both
//! sites.

use coldsite_api::ProtectedVM;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kubevirt::dynamic::{
    CONFIG_MAP, PVC, REPLICATION_DESTINATION, REPLICATION_SOURCE, SECRET, VOLUME_GROUP_SNAPSHOT, VOLUME_SNAPSHOT,
    str_at,
};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::{CUT_OF, PROTECTED_VM, rsync_secret_name};

/// Removes replication objects and recovery points at both sites.
pub async fn cleanup(pvm: &ProtectedVM, ctx: &Context) -> Result<Action> {
    let spec = &pvm.spec;
    let ns = spec
        .vm
        .namespace
        .clone()
        .or_else(|| pvm.namespace())
        .unwrap_or_default();
    let fabric: KubeVirtFabric = ctx.fabric(&spec.primary_site, &spec.recovery_site).await?;
    let selector = format!("{PROTECTED_VM}={}", pvm.name_any());
    let mut gone = Vec::new();
    for site_name in [&spec.primary_site, &spec.recovery_site] {
        // A Site deleted from coldsite (a site lost for good) is not waited for: what
        // replication left there stays there.
        if ctx.site(site_name).await?.is_none() {
            gone.push(site_name.as_str());
            continue;
        }
        let site = fabric.site(site_name).map_err(|e| Error::Site {
            site: site_name.clone(),
            message: format!("cannot remove replication: {}", e.message),
        })?;
        // The key is deleted by name: coldsite's identity may not list Secrets at a site.
        site.delete(SECRET, Some(&ns), &rsync_secret_name(&pvm.name_any()))
            .await
            .map_err(|e| Error::Fabric(e.message))?;
        fabric.keys.forget(site_name, &ns, &pvm.name_any());
        // Group rounds' cuts, where the site cuts groups (elsewhere the kind may not exist).
        let cuts = [
            (VOLUME_GROUP_SNAPSHOT, selector.clone()),
            (PVC, format!("{selector},{CUT_OF}")),
        ];
        let groups = [&fabric.primary, &fabric.recovery]
            .iter()
            .any(|m| &m.name == site_name && m.group_snapshot_class.is_some());
        let kinds = [REPLICATION_SOURCE, REPLICATION_DESTINATION, VOLUME_SNAPSHOT, CONFIG_MAP]
            .map(|k| (k, selector.clone()))
            .into_iter()
            .chain(cuts.into_iter().filter(|_| groups));
        for (kind, selector) in kinds {
            for o in site
                .list(kind, Some(&ns), &selector)
                .await
                .map_err(|e| Error::Fabric(e.message))?
            {
                let name = str_at(&o, "/metadata/name").unwrap_or_default();
                site.delete(kind, Some(&ns), name)
                    .await
                    .map_err(|e| Error::Fabric(e.message))?;
            }
        }
    }
    let note = if gone.is_empty() {
        "replication and recovery points removed at both sites".to_owned()
    } else {
        format!(
            "replication and recovery points removed; Site {} no longer exists, so nothing was removed there",
            gone.join(" and ")
        )
    };
    ctx.event(pvm, !gone.is_empty(), "ProtectionRemoved", "Unprotect", note)
        .await;
    ctx.metrics
        .forget_vm(&pvm.namespace().unwrap_or_default(), &pvm.name_any());
    Ok(Action::await_change())
}
