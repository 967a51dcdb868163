//! The dereference stage: everything a plan or a VM refers to, read from the management
//! cluster and the sites, as the engine's [`Inventory`].

use std::collections::{BTreeMap, BTreeSet};

use coldsite_api::{NetworkMapping, ProtectedVM, Site};
use coldsite_engine::model::VmModel;
use coldsite_engine::source_vm::{self, SourceVm};
use coldsite_engine::validate::{self, Inventory};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::context::{Cached, Context};
use crate::error::{Error, Result};
use crate::kubevirt::dynamic::{CONFIG_MAP, SiteApi, str_at};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::{self, PROTECTED_VM};

/// What a reconcile needs to see.
pub enum Scope<'a> {
    /// A plan or a run: every mapping and ProtectedVM of the namespace and their VMs.
    Namespace,
    /// Some ProtectedVMs (one, or a consistency group's members): their Sites, their
    /// mappings and their own VMs only, so that reconciling each of n VMs costs O(1) reads,
    /// not O(n).
    Vms(&'a [ProtectedVM]),
}

/// Every Site, by name.
pub async fn sites(ctx: &Context) -> Result<BTreeMap<String, Site>> {
    if let Some(stores) = ctx.stores() {
        return Ok(stores
            .sites
            .state()
            .into_iter()
            .map(|s| (s.name_any(), (*s).clone()))
            .collect());
    }
    let list = Api::<Site>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing Sites"))?;
    Ok(list.into_iter().map(|s| (s.name_any(), s)).collect())
}

/// The namespace's RecoveryRuns, from the shared cache of runs when there is one: no LIST
/// per reconcile.
pub async fn runs(ctx: &Context, namespace: &str) -> Result<Vec<coldsite_api::RecoveryRun>> {
    let stores = ctx.stores();
    in_namespace(ctx, stores.as_ref().map(|s| &s.runs), namespace, "RecoveryRuns").await
}

/// A namespaced kind read from the caches or the API.
pub trait Namespaced:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// The namespace's objects of a kind, from the cache when there is one.
async fn in_namespace<K>(ctx: &Context, store: Option<&Cached<K>>, namespace: &str, what: &str) -> Result<Vec<K>>
where
    K: Namespaced,
{
    match store {
        Some(store) => Ok(store
            .in_namespace(namespace)
            .into_iter()
            .map(|o| (*o).clone())
            .collect()),
        None => Api::<K>::namespaced(ctx.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(Error::kube(format!("listing {what}"))),
    }
}

/// One object of a kind by name, from the cache when there is one.
async fn named<K>(
    ctx: &Context,
    store: Option<&Cached<K>>,
    namespace: &str,
    name: &str,
    what: &str,
) -> Result<Option<K>>
where
    K: Namespaced,
{
    match store {
        Some(store) => Ok(store.get(&ObjectRef::new(name).within(namespace)).map(|o| (*o).clone())),
        None => Api::<K>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading {what}"))),
    }
}

/// Sites, and the mappings and ProtectedVMs in scope, and the VMs they protect: read live
/// from the primary site, or, when it cannot be reached, from the copies replication keeps
/// at the recovery site. Management objects come from the controllers' caches.
pub async fn load(ctx: &Context, namespace: &str, fabric: &KubeVirtFabric, scope: Scope<'_>) -> Result<Inventory> {
    let stores = ctx.stores();
    let mut inv = Inventory {
        sites: sites(ctx).await?,
        ..Inventory::default()
    };
    let (mappings, pvms) = match scope {
        Scope::Namespace => (
            in_namespace(ctx, stores.as_ref().map(|s| &s.mappings), namespace, "NetworkMappings").await?,
            in_namespace(
                ctx,
                stores.as_ref().map(|s| &s.protected_vms),
                namespace,
                "ProtectedVMs",
            )
            .await?,
        ),
        Scope::Vms(pvms) => {
            let cache = stores.as_ref().map(|s| &s.mappings);
            let names: BTreeSet<&str> = pvms.iter().map(|p| p.spec.network_mapping.as_str()).collect();
            let mut mappings = Vec::with_capacity(names.len());
            for name in names {
                mappings.extend(named::<NetworkMapping>(ctx, cache, namespace, name, "the NetworkMapping").await?);
            }
            (mappings, pvms.to_vec())
        }
    };
    for m in mappings {
        inv.mappings.insert((namespace.to_owned(), m.name_any()), m);
    }
    for p in pvms {
        inv.protected_vms.insert((namespace.to_owned(), p.name_any()), p);
    }
    if matches!(scope, Scope::Namespace) {
        let cache = stores.as_ref().map(|s| &s.plans);
        for p in in_namespace(ctx, cache, namespace, "RecoveryPlans").await? {
            inv.plans.insert((namespace.to_owned(), p.name_any()), p);
        }
    }
    let primary = fabric.site(&fabric.primary.name).ok();
    let recovery = fabric.site(&fabric.recovery.name).ok();
    match scope {
        Scope::Namespace => namespace_vms(&mut inv, namespace, primary, recovery).await,
        Scope::Vms(pvms) => {
            for pvm in pvms {
                own_vm(&mut inv, namespace, pvm, primary, recovery).await;
            }
        }
    }
    Ok(inv)
}

/// The VMs of the namespace's ProtectedVMs: live from the primary (its watch when it has
/// listed, else asked now), else from the copies of their manifests at the recovery site.
async fn namespace_vms(inv: &mut Inventory, namespace: &str, primary: Option<&SiteApi>, recovery: Option<&SiteApi>) {
    let vm_namespaces: BTreeSet<String> = inv
        .protected_vms
        .values()
        .map(|p| p.spec.vm.namespace.clone().unwrap_or_else(|| namespace.to_owned()))
        .collect();
    for ns in &vm_namespaces {
        if let Some(site) = primary {
            let live = site.read_vms(ns, |vm| source_vm::from_manifest(&vm, ns).ok()).await;
            for v in live.unwrap_or_default() {
                inv.source_vms.insert((v.namespace.clone(), v.name.clone()), v);
            }
        }
        let Some(site) = recovery else { continue };
        let copies = site
            .read_labelled(CONFIG_MAP, ns, &[], |copy| from_copy(inv, namespace, ns, &copy))
            .await
            .unwrap_or_default();
        for v in copies {
            inv.source_vms.insert((v.namespace.clone(), v.name.clone()), v);
        }
    }
}

/// The VM `pvm` protects: live from the primary (its watch when it has listed, else asked
/// now), else from the copy of its manifest at the recovery site.
async fn own_vm(
    inv: &mut Inventory,
    namespace: &str,
    pvm: &ProtectedVM,
    primary: Option<&SiteApi>,
    recovery: Option<&SiteApi>,
) {
    let ns = pvm.spec.vm.namespace.clone().unwrap_or_else(|| namespace.to_owned());
    let name = &pvm.spec.vm.name;
    let live = match primary {
        Some(site) => site.get_vm(&ns, name).await.ok().flatten(),
        None => None,
    };
    if let Some(v) = live.and_then(|vm| source_vm::from_manifest(&vm, &ns).ok()) {
        inv.source_vms.insert((v.namespace.clone(), v.name.clone()), v);
    } else if let Some(site) = recovery {
        let copy_name = objects::source_copy_name(&pvm.name_any());
        if let Ok(Some(copy)) = site.get_labelled(CONFIG_MAP, &ns, &copy_name).await
            && let Some(v) = from_copy(inv, namespace, &ns, &copy)
        {
            inv.source_vms.insert((v.namespace.clone(), v.name.clone()), v);
        }
    }
}

/// A VM the primary cannot show, from the copy of its manifest kept at the recovery site;
/// `None` for a copy of a VM the inventory already has, or of no ProtectedVM of it.
fn from_copy(inv: &Inventory, namespace: &str, vm_namespace: &str, copy: &Value) -> Option<SourceVm> {
    let pvm = str_at(copy, &format!("/metadata/labels/{}", PROTECTED_VM.replace('/', "~1")))?;
    let p = inv.protected_vms.get(&(namespace.to_owned(), pvm.to_owned()))?;
    let key = (vm_namespace.to_owned(), p.spec.vm.name.clone());
    if inv.source_vms.contains_key(&key) {
        return None;
    }
    let mut manifest = serde_json::from_str::<Value>(str_at(copy, "/data/vm.json")?).ok()?;
    manifest["metadata"]["name"] = Value::String(key.1.clone());
    manifest["metadata"]["namespace"] = Value::String(vm_namespace.to_owned());
    source_vm::from_manifest(&manifest, vm_namespace).ok()
}

/// The ProtectedVMs `pvm` is cut with ([`validate::cut_with`]), from the plans' cache without
/// cloning the plans: every ProtectedVM reconcile asks.
pub async fn cut_with(ctx: &Context, namespace: &str, pvm: &str) -> Result<Vec<String>> {
    Ok(match ctx.stores() {
        Some(stores) => validate::cut_with(stores.plans.in_namespace(namespace).iter().map(AsRef::as_ref), pvm),
        None => validate::cut_with(&in_namespace(ctx, None, namespace, "RecoveryPlans").await?, pvm),
    })
}

/// The members of the consistency group `vm` is cut with, as models, each from its
/// ProtectedVM and its VM: what its driver's rounds cut. Why not, naming the member, when
/// one cannot be resolved.
pub async fn cut_set(
    ctx: &Context,
    namespace: &str,
    fabric: &KubeVirtFabric,
    vm: &VmModel,
) -> Result<std::result::Result<Vec<VmModel>, String>> {
    let stores = ctx.stores();
    let cache = stores.as_ref().map(|s| &s.protected_vms);
    let mut others = Vec::with_capacity(vm.cut_with.len());
    for name in vm.cut_with.iter().filter(|n| **n != vm.name) {
        let pvm = named::<ProtectedVM>(ctx, cache, namespace, name, "a ProtectedVM of the consistency group").await?;
        let Some(pvm) = pvm else {
            return Ok(Err(format!(
                "ProtectedVM {namespace}/{name} of the consistency group does not exist; create it or remove it from \
                 the plan's spec.consistencyGroups"
            )));
        };
        others.push(pvm);
    }
    // One load for the whole set: its Sites, mappings and VMs.
    let inv = load(ctx, namespace, fabric, Scope::Vms(&others)).await?;
    let mut members = Vec::with_capacity(vm.cut_with.len());
    for name in &vm.cut_with {
        let Some(pvm) = others.iter().find(|p| p.name_any() == *name) else {
            members.push(vm.clone());
            continue;
        };
        match validate::vm_model(pvm, &inv) {
            Ok((mut member, _)) => {
                member.cut_with = vm.cut_with.clone();
                members.push(member);
            }
            Err(problems) => {
                let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
                return Ok(Err(format!(
                    "ProtectedVM {name} of the consistency group cannot be cut: {}",
                    why.join("; ")
                )));
            }
        }
    }
    Ok(Ok(members))
}
