//! The dereference stage: everything a plan or a VM refers to, read from the management
//! cluster and the sites, as the engine's [`Inventory`].

use std::collections::BTreeSet;

use coldsite_api::{NetworkMapping, ProtectedVM, Site};
use coldsite_engine::source_vm;
use coldsite_engine::validate::Inventory;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kubevirt::dynamic::{CONFIG_MAP, VM, str_at};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::{MANAGED_BY, PROTECTED_VM};

/// Every Site, by name.
pub async fn sites(ctx: &Context) -> Result<std::collections::BTreeMap<String, Site>> {
    let list = Api::<Site>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing Sites"))?;
    Ok(list.into_iter().map(|s| (s.name_any(), s)).collect())
}

/// Sites, and the mappings and ProtectedVMs of a namespace, and the VMs they protect: read
/// live from the primary site, or, when it cannot be reached, from the copies replication
/// keeps at the recovery site.
pub async fn load(ctx: &Context, namespace: &str, fabric: &KubeVirtFabric) -> Result<Inventory> {
    let mut inv = Inventory::default();
    for s in Api::<Site>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing Sites"))?
    {
        inv.sites.insert(s.name_any(), s);
    }
    let mappings = Api::<NetworkMapping>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing NetworkMappings"))?;
    for m in mappings {
        inv.mappings.insert((namespace.to_owned(), m.name_any()), m);
    }
    let pvms = Api::<ProtectedVM>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing ProtectedVMs"))?;
    let vm_namespaces: BTreeSet<String> = pvms
        .iter()
        .map(|p| p.spec.vm.namespace.clone().unwrap_or_else(|| namespace.to_owned()))
        .collect();
    for p in pvms {
        inv.protected_vms.insert((namespace.to_owned(), p.name_any()), p);
    }
    for ns in &vm_namespaces {
        let live = match fabric.site(&fabric.primary) {
            Ok(site) => site.list(VM, Some(ns), "").await.ok(),
            Err(_) => None,
        };
        for vm in live.unwrap_or_default() {
            if let Ok(v) = source_vm::from_manifest(&vm, ns) {
                inv.source_vms.insert((v.namespace.clone(), v.name.clone()), v);
            }
        }
        // The copies at the recovery site stand in for VMs the primary cannot show.
        let Ok(site) = fabric.site(&fabric.recovery) else {
            continue;
        };
        let copies = site
            .list(CONFIG_MAP, Some(ns), &format!("{MANAGED_BY}=coldsite,{PROTECTED_VM}"))
            .await
            .unwrap_or_default();
        for copy in copies {
            let Some(pvm) = str_at(&copy, &format!("/metadata/labels/{}", PROTECTED_VM.replace('/', "~1"))) else {
                continue;
            };
            let Some(p) = inv.protected_vms.get(&(namespace.to_owned(), pvm.to_owned())) else {
                continue;
            };
            let key = (ns.clone(), p.spec.vm.name.clone());
            if inv.source_vms.contains_key(&key) {
                continue;
            }
            let Some(mut manifest) = str_at(&copy, "/data/vm.json").and_then(|t| serde_json::from_str::<Value>(t).ok())
            else {
                continue;
            };
            manifest["metadata"]["name"] = Value::String(key.1.clone());
            manifest["metadata"]["namespace"] = Value::String(ns.clone());
            if let Ok(v) = source_vm::from_manifest(&manifest, ns) {
                inv.source_vms.insert(key, v);
            }
        }
    }
    Ok(inv)
}
