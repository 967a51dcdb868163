//! Cross-object validation: dereferenced API objects in, a [`PlanModel`] or a list of
//! problems out, each naming the object, the field and the fix. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use coldsite_api::network_mapping::{NetworkMapping, NetworkRule};
use coldsite_api::protected_vm::{NicOverride, ProtectedVM};
use coldsite_api::recovery_plan::{
    Action, RecoveryGroup, RecoveryPlan, WEBHOOK_HTTPS_MESSAGE, Webhook, WebhookTransport,
};
use coldsite_api::recovery_run::RecoveryRun;
use coldsite_api::site::{SCRIPT_SERVICE_ACCOUNT, Site};
use ipnet::IpNet;
use k8s_openapi::api::batch::v1::JobTemplateSpec;
use kube::ResourceExt;

use crate::model::{
    ActionKind, ActionModel, ConsistencyGroupModel, GroupModel, NicModel, PlanModel, ProbeModel, ReadinessModel,
    SiteModel, VmModel, parse_duration,
};
use crate::reip::{self, NicPlan, SourceNic, StaticAddress, SubnetMap};
use crate::source_vm::{SourceVm, SourceVmNic};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Severity {
    /// The plan cannot run as written.
    Error,
    /// Something could not be checked.
    Warning,
}

/// One thing wrong, with where and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `Kind namespace/name`.
    pub object: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}: {}", self.object, self.field, self.message)
    }
}

/// Everything validation may look up, keyed by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub sites: BTreeMap<String, Site>,
    pub mappings: BTreeMap<(String, String), NetworkMapping>,
    pub protected_vms: BTreeMap<(String, String), ProtectedVM>,
    /// VirtualMachines at primary sites, by namespace and name.
    pub source_vms: BTreeMap<(String, String), SourceVm>,
    /// The plans of the namespace, for what one plan claims that another holds (a VM in
    /// two plans' consistency groups).
    pub plans: BTreeMap<(String, String), RecoveryPlan>,
}

struct Problems {
    object: String,
    list: Vec<Problem>,
}

impl Problems {
    fn new(object: String) -> Self {
        Self {
            object,
            list: Vec::new(),
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            severity,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Error)
    }
}

fn ns_of<K: kube::Resource>(o: &K) -> String {
    o.meta().namespace.clone().unwrap_or_else(|| "default".into())
}

/// Checks a NetworkMapping against the sites it names and its own rules as a whole.
pub fn validate_mapping(nm: &NetworkMapping, inv: &Inventory) -> Vec<Problem> {
    let mut p = Problems::new(format!("NetworkMapping {}/{}", ns_of(nm), nm.name_any()));
    for (field, site) in [
        ("spec.sourceSite", &nm.spec.source_site),
        ("spec.targetSite", &nm.spec.target_site),
    ] {
        if !inv.sites.contains_key(site) {
            p.error(
                field,
                format!("Site {site:?} does not exist; create it or fix the name"),
            );
        }
    }
    // Source subnets must not overlap across networks either: one address, one translation.
    let mut sources: Vec<(usize, IpNet)> = Vec::new();
    let mut targets: Vec<(usize, IpNet)> = Vec::new();
    for (i, rule) in nm.spec.networks.iter().enumerate() {
        for (j, s) in rule.subnets.iter().enumerate() {
            let field = format!("spec.networks[{i}].subnets[{j}]");
            match SubnetMap::from_rule(s) {
                Ok(m) => {
                    for (k, other) in &sources {
                        if *k != i && (other.contains(&m.source) || m.source.contains(other)) {
                            p.error(
                                format!("{field}.source"),
                                format!(
                                    "{} overlaps {} of spec.networks[{k}]; an address would map two ways",
                                    m.source, other
                                ),
                            );
                        }
                    }
                    for (k, other) in &targets {
                        if other.contains(&m.target) || m.target.contains(other) {
                            p.error(
                                format!("{field}.target"),
                                format!("{} overlaps target {} of spec.networks[{k}]; two source subnets would land on the same addresses", m.target, other),
                            );
                        }
                    }
                    sources.push((i, m.source));
                    targets.push((i, m.target));
                }
                Err(e) => p.error(field, e.to_string()),
            }
        }
    }
    p.list
}

/// Checks a ProtectedVM's references.
pub fn validate_protected_vm(pvm: &ProtectedVM, inv: &Inventory) -> Vec<Problem> {
    match vm_model(pvm, inv) {
        Ok((_, warnings)) => warnings,
        Err(problems) => problems,
    }
}

/// Resolves one ProtectedVM on its own, as its reconciler needs it.
pub fn vm_model(pvm: &ProtectedVM, inv: &Inventory) -> Result<(VmModel, Vec<Problem>), Vec<Problem>> {
    let ns = ns_of(pvm);
    let mut p = Problems::new(format!("ProtectedVM {ns}/{}", pvm.name_any()));
    let vm = resolve_vm(pvm, &ns, inv, &mut p, "spec", &mut TakenAddresses::default());
    match vm {
        Some(vm) if !p.has_errors() => Ok((vm, p.list)),
        _ => Err(p.list),
    }
}

fn check_pvm_refs<'a>(pvm: &ProtectedVM, ns: &str, inv: &'a Inventory, p: &mut Problems) -> Option<&'a NetworkMapping> {
    let spec = &pvm.spec;
    for (field, site) in [
        ("spec.primarySite", &spec.primary_site),
        ("spec.recoverySite", &spec.recovery_site),
    ] {
        if !inv.sites.contains_key(site) {
            p.error(
                field,
                format!("Site {site:?} does not exist; create it or fix the name"),
            );
        }
    }
    let mapping = inv.mappings.get(&(ns.to_owned(), spec.network_mapping.clone()));
    match mapping {
        None => p.error(
            "spec.networkMapping",
            format!("NetworkMapping {ns}/{} does not exist; create it or fix the name", spec.network_mapping),
        ),
        Some(nm) if nm.spec.source_site != spec.primary_site || nm.spec.target_site != spec.recovery_site => p.error(
            "spec.networkMapping",
            format!(
                "NetworkMapping {} maps {} → {}, but this VM is protected from {} to {}; use a mapping for that direction",
                spec.network_mapping, nm.spec.source_site, nm.spec.target_site, spec.primary_site, spec.recovery_site
            ),
        ),
        Some(_) => {}
    }
    let vm_ns = spec.vm.namespace.clone().unwrap_or_else(|| ns.to_owned());
    granted(ns, &vm_ns, [&spec.primary_site, &spec.recovery_site], inv, p);
    if !inv.source_vms.contains_key(&(vm_ns.clone(), spec.vm.name.clone())) {
        p.warning(
            "spec.vm",
            format!(
                "VirtualMachine {vm_ns}/{} was not found, so its NICs and addresses were not checked",
                spec.vm.name
            ),
        );
    }
    mapping
}

/// Tenancy: a ProtectedVM reaches the VM of its own namespace at both sites, and another
/// namespace only where the Site grants it to the ProtectedVM's namespace.
fn granted<'a>(ns: &str, vm_ns: &str, sites: impl IntoIterator<Item = &'a String>, inv: &Inventory, p: &mut Problems) {
    for name in sites {
        if let Some(site) = inv.sites.get(name)
            && !site.grants(ns, vm_ns)
        {
            p.error(
                "spec.vm.namespace",
                format!(
                    "namespace {vm_ns} at Site {name} is not granted to namespace {ns}: a ProtectedVM protects the VM \
                     of its own namespace; a cluster administrator can grant more on the Site: \
                     spec.namespaceGrants: [{{from: {ns}, to: [{vm_ns}]}}]"
                ),
            );
        }
    }
}

/// Checks a run against its plan: every approval names a manual action of the plan (a
/// misspelt one would leave the real gate waiting), and one that runs in this action.
pub fn validate_run(run: &RecoveryRun, plan: &RecoveryPlan) -> Vec<Problem> {
    let mut p = Problems::new(format!(
        "RecoveryRun {}/{}",
        run.namespace().unwrap_or_default(),
        run.name_any()
    ));
    let manual: Vec<&Action> = plan
        .spec
        .groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .filter(|a| a.manual.is_some())
        .collect();
    let names: Vec<&str> = manual.iter().map(|a| a.name.as_str()).collect();
    for (i, approval) in run.spec.approvals.iter().enumerate() {
        let field = format!("spec.approvals[{i}]");
        match manual.iter().find(|a| a.name == *approval) {
            None => p.error(
                field,
                format!(
                    "{approval:?} is not a manual action of RecoveryPlan {}; its manual actions: {}",
                    run.spec.plan,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ),
            Some(a) if !(a.when.is_empty() || a.when.iter().any(|k| k.matches(run.spec.action))) => p.warning(
                field,
                format!(
                    "{approval:?} does not run in a {:?}, so this approval has no effect",
                    run.spec.action
                ),
            ),
            Some(_) => {}
        }
    }
    p.list
}

/// Resolves and checks a plan; on success the model the planner works on.
pub fn validate_plan(plan: &RecoveryPlan, inv: &Inventory) -> Result<(PlanModel, Vec<Problem>), Vec<Problem>> {
    let ns = ns_of(plan);
    let mut p = Problems::new(format!("RecoveryPlan {ns}/{}", plan.name_any()));
    let spec = &plan.spec;

    let primary = site_model(inv, &spec.primary_site, "spec.primarySite", &ns, &mut p);
    let recovery = site_model(inv, &spec.recovery_site, "spec.recoverySite", &ns, &mut p);
    let depends = group_order(&spec.groups, &mut p);
    let (groups, mut vms) = members(plan, &ns, inv, depends, &mut p);
    let consistency_groups = consistency_groups(plan, inv, &mut vms, primary.as_ref(), &mut p);
    let auto_approve = drill(plan, &groups, &mut p);

    if p.has_errors() {
        return Err(p.list);
    }
    let (Some(primary), Some(recovery)) = (primary, recovery) else {
        return Err(p.list);
    };
    Ok((
        PlanModel {
            namespace: ns,
            name: plan.name_any(),
            primary,
            recovery,
            groups,
            vms,
            consistency_groups,
            auto_approve,
        },
        p.list,
    ))
}

/// Each group's dependencies, by index: the previous group unless it names its own, which
/// must be other groups of the plan and form no cycle.
fn group_order(groups: &[RecoveryGroup], p: &mut Problems) -> Vec<Vec<usize>> {
    let group_index: BTreeMap<&str, usize> = groups.iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
    let mut depends: Vec<Vec<usize>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let deps = match &g.depends_on {
            None if i > 0 => vec![i - 1],
            None => Vec::new(),
            Some(names) => names
                .iter()
                .filter_map(|n| match group_index.get(n.as_str()) {
                    Some(&j) if j != i => Some(j),
                    _ => {
                        p.error(
                            format!("spec.groups[{i}].dependsOn"),
                            format!("{n:?} is not another group of this plan"),
                        );
                        None
                    }
                })
                .collect(),
        };
        depends.push(deps);
    }
    if let Some(cycle) = find_cycle(&depends) {
        let names: Vec<&str> = cycle.iter().map(|&i| groups[i].name.as_str()).collect();
        p.error(
            "spec.groups[].dependsOn",
            format!(
                "groups depend on each other in a cycle: {}; remove one of these dependencies",
                names.join(" → ")
            ),
        );
    }
    depends
}

/// The groups' models and their VMs: each VM in one group, each resolvable, each protected
/// between the plan's sites.
fn members(
    plan: &RecoveryPlan,
    ns: &str,
    inv: &Inventory,
    depends: Vec<Vec<usize>>,
    p: &mut Problems,
) -> (Vec<GroupModel>, Vec<VmModel>) {
    let spec = &plan.spec;
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    let mut vms: Vec<VmModel> = Vec::new();
    let mut groups: Vec<GroupModel> = Vec::new();
    let mut taken = TakenAddresses::default();
    for ((gi, g), depends_on) in spec.groups.iter().enumerate().zip(depends) {
        let mut vm_indexes = Vec::new();
        for (vi, vm_name) in g.vms.iter().enumerate() {
            let field = format!("spec.groups[{gi}].vms[{vi}]");
            if let Some(&other) = owner.get(vm_name.as_str()) {
                p.error(
                    field,
                    format!(
                        "ProtectedVM {vm_name} is already in group {}; a VM belongs to one group",
                        spec.groups[other].name
                    ),
                );
                continue;
            }
            owner.insert(vm_name, gi);
            let Some(pvm) = inv.protected_vms.get(&(ns.to_owned(), vm_name.clone())) else {
                p.error(
                    field,
                    format!("ProtectedVM {ns}/{vm_name} does not exist; create it or fix the name"),
                );
                continue;
            };
            if pvm.spec.primary_site != spec.primary_site || pvm.spec.recovery_site != spec.recovery_site {
                p.error(
                    field,
                    format!(
                        "ProtectedVM {vm_name} is protected from {} to {}, but the plan recovers {} to {}",
                        pvm.spec.primary_site, pvm.spec.recovery_site, spec.primary_site, spec.recovery_site
                    ),
                );
                continue;
            }
            if let Some(vm) = resolve_vm(pvm, ns, inv, p, &field, &mut taken) {
                vm_indexes.push(vms.len());
                vms.push(vm);
            }
        }
        groups.push(GroupModel {
            name: g.name.clone(),
            vms: vm_indexes,
            depends_on,
            readiness: readiness_model(&g.readiness, gi, p),
            pre: actions(&g.pre, &format!("spec.groups[{gi}].pre"), p),
            post: actions(&g.post, &format!("spec.groups[{gi}].post"), p),
        });
    }
    (groups, vms)
}

/// The drill's schedule checked, and its auto-approvals, each a manual action of the plan.
fn drill(plan: &RecoveryPlan, groups: &[GroupModel], p: &mut Problems) -> Vec<String> {
    let drill = plan.spec.drill.as_ref();
    if let Some(why) = drill.and_then(|d| crate::schedule::never_fires(&d.schedule)) {
        p.error(
            "spec.drill.schedule",
            format!("{why}; pick dates that exist, such as '0 3 * * 6'"),
        );
    }
    let auto_approve = drill.map(|d| d.auto_approve.clone()).unwrap_or_default();
    let manual: BTreeSet<&str> = groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .filter(|a| a.is_manual())
        .map(|a| a.name.as_str())
        .collect();
    for name in &auto_approve {
        if !manual.contains(name.as_str()) {
            p.error(
                "spec.drill.autoApprove",
                format!("{name:?} is not a manual action of this plan"),
            );
        }
    }
    auto_approve
}

/// The plan's consistency groups over its resolved VMs, each member's `cut_with` set: every
/// member a VM of the plan, in one group only, all in one VM namespace (a group snapshot
/// selects claims of one namespace), at a primary Site that cuts groups.
fn consistency_groups(
    plan: &RecoveryPlan,
    inv: &Inventory,
    vms: &mut [VmModel],
    primary: Option<&SiteModel>,
    p: &mut Problems,
) -> Vec<ConsistencyGroupModel> {
    let spec = &plan.spec;
    if !spec.consistency_groups.is_empty() && primary.is_some_and(|s| s.group_snapshot_class.is_none()) {
        p.error(
            "spec.consistencyGroups",
            format!(
                "Site {} names no spec.storage.volumeGroupSnapshotClassName, so it cannot cut several VMs at one \
                 instant: set one there (a VolumeGroupSnapshotClass of its CSI driver), or remove the consistency groups",
                spec.primary_site
            ),
        );
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut models = Vec::new();
    for (ci, cg) in spec.consistency_groups.iter().enumerate() {
        let mut members: Vec<usize> = Vec::new();
        for (vi, name) in cg.vms.iter().enumerate() {
            let field = format!("spec.consistencyGroups[{ci}].vms[{vi}]");
            if let Some(other) = owner.insert(name, &cg.name) {
                p.error(
                    field,
                    format!("ProtectedVM {name} is already in consistency group {other}; a VM is cut with one group"),
                );
                continue;
            }
            if let Some((other, group)) = cut_by_an_older_plan(plan, name, inv) {
                p.error(
                    field,
                    format!(
                        "ProtectedVM {name} is already in consistency group {group} of plan {other}, which came \
                         first; a VM is cut with one group: remove it from one of the two"
                    ),
                );
                continue;
            }
            let Some(i) = vms.iter().position(|v| &v.name == name) else {
                p.error(
                    field,
                    format!(
                        "ProtectedVM {name} is not in any of spec.groups; add it to a recovery group, or remove it here"
                    ),
                );
                continue;
            };
            if let Some(&first) = members.first()
                && vms[first].vm_namespace != vms[i].vm_namespace
            {
                p.error(
                    field,
                    format!(
                        "the VM of ProtectedVM {name} is in namespace {}, the group's others in {}: one group snapshot \
                         cuts claims of one namespace; move the VMs into one namespace or split the group",
                        vms[i].vm_namespace, vms[first].vm_namespace
                    ),
                );
                continue;
            }
            members.push(i);
        }
        let mut names: Vec<String> = members.iter().map(|&i| vms[i].name.clone()).collect();
        names.sort();
        for &i in &members {
            vms[i].cut_with = names.clone();
        }
        models.push(ConsistencyGroupModel {
            name: cg.name.clone(),
            vms: members,
        });
    }
    cut_with_groups_of_other_plans(plan, inv, vms);
    models
}

/// The namespace's plans other than `plan`.
fn other_plans<'a>(
    plan: &RecoveryPlan,
    inv: &'a Inventory,
) -> impl Iterator<Item = &'a RecoveryPlan> + Clone + use<'a> {
    let (namespace, name) = (plan.namespace(), plan.name_any());
    inv.plans
        .values()
        .filter(move |o| o.namespace() == namespace && o.name_any() != name)
}

/// A VM no group of this plan lists is cut as protection cuts it: with its group in another
/// plan, if one lists it.
fn cut_with_groups_of_other_plans(plan: &RecoveryPlan, inv: &Inventory, vms: &mut [VmModel]) {
    for vm in vms.iter_mut().filter(|v| v.cut_with.is_empty()) {
        vm.cut_with = cut_with(other_plans(plan, inv), &vm.name);
    }
}

/// Whether the plan's `Valid` condition is True for its current generation: its consistency
/// groups take effect from then on.
pub fn valid_as_it_stands(plan: &RecoveryPlan) -> bool {
    let conditions = plan
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    coldsite_api::common::find_condition(conditions, coldsite_api::common::condition::VALID)
        .is_some_and(|c| c.status == "True" && c.observed_generation == plan.metadata.generation)
}

/// The ProtectedVMs `vm` is cut with: the members, sorted, of the first consistency group of
/// a plan among `plans` that is valid as it stands and lists it; empty when none does. Until
/// a plan is found valid (a member misspelt, a Site that cannot cut groups) its VMs are cut
/// on their own, and its Valid condition says why. Validation keeps a VM in one group of
/// the valid plans, so protection and every run agree on it.
pub fn cut_with<'a>(plans: impl IntoIterator<Item = &'a RecoveryPlan>, vm: &str) -> Vec<String> {
    let mut members = plans
        .into_iter()
        .filter(|p| valid_as_it_stands(p))
        .flat_map(|p| &p.spec.consistency_groups)
        .find(|g| g.vms.iter().any(|v| v == vm))
        .map(|g| g.vms.clone())
        .unwrap_or_default();
    members.sort();
    members.dedup();
    members
}

/// The plan created before `plan` (by time, then name) in its namespace whose consistency
/// group lists `vm`, with that group's name: the first plan keeps the VM.
fn cut_by_an_older_plan<'a>(plan: &RecoveryPlan, vm: &str, inv: &'a Inventory) -> Option<(String, &'a str)> {
    let key = |p: &RecoveryPlan| (p.metadata.creation_timestamp.clone(), p.name_any());
    other_plans(plan, inv).filter(|o| key(o) < key(plan)).find_map(|o| {
        let group = o
            .spec
            .consistency_groups
            .iter()
            .find(|g| g.vms.iter().any(|v| v == vm))?;
        Some((o.name_any(), group.name.as_str()))
    })
}

/// A plan's site; its shared test namespace, if it has one, must be granted to the plan's
/// namespace, since tests at either site put copies there.
fn site_model(inv: &Inventory, name: &str, field: &str, ns: &str, p: &mut Problems) -> Option<SiteModel> {
    match inv.sites.get(name) {
        Some(site) => {
            if let Some(shared) = site.spec.test_namespace.as_deref()
                && !site.grants(ns, shared)
            {
                p.error(
                    field,
                    format!(
                        "Site {name} keeps test copies in its shared testNamespace {shared}, which is not granted to \
                         namespace {ns}: a cluster administrator can grant it (spec.namespaceGrants: [{{from: {ns}, \
                         to: [{shared}]}}]) or remove testNamespace, so that each namespace's tests get their own"
                    ),
                );
            }
            Some(SiteModel::of(name, Some(site)))
        }
        None => {
            p.error(
                field,
                format!("Site {name:?} does not exist; create it or fix the name"),
            );
            None
        }
    }
}

/// The inverse rules for failback: an explicit mapping for the other direction wins.
fn return_rules(inv: &Inventory, ns: &str, nm: &NetworkMapping, rule: &NetworkRule) -> Vec<SubnetMap> {
    let explicit = inv.mappings.iter().find(|((m_ns, _), m)| {
        m_ns == ns && m.spec.source_site == nm.spec.target_site && m.spec.target_site == nm.spec.source_site
    });
    if let Some((_, back)) = explicit
        && let Some(r) = back
            .spec
            .networks
            .iter()
            .find(|r| r.source.network == rule.target.network)
    {
        return r.subnets.iter().filter_map(|s| SubnetMap::from_rule(s).ok()).collect();
    }
    reip::invert(
        &rule
            .subnets
            .iter()
            .filter_map(|s| SubnetMap::from_rule(s).ok())
            .collect::<Vec<_>>(),
    )
}

fn resolve_vm(
    pvm: &ProtectedVM,
    ns: &str,
    inv: &Inventory,
    p: &mut Problems,
    field: &str,
    taken: &mut TakenAddresses,
) -> Option<VmModel> {
    let name = pvm.name_any();
    let mapping = check_pvm_refs(pvm, ns, inv, p)?;
    let spec = &pvm.spec;
    let vm_ns = spec.vm.namespace.clone().unwrap_or_else(|| ns.to_owned());
    let source = inv.source_vms.get(&(vm_ns.clone(), spec.vm.name.clone()));
    let nics = match source {
        Some(source) => {
            let vm = VmNics {
                name: &name,
                pvm,
                ns,
                inv,
                mapping,
                overrides: spec.recovery.as_ref().map(|r| r.nics.as_slice()).unwrap_or_default(),
            };
            vm.unknown_overrides(source, p);
            source.nics.iter().filter_map(|nic| vm.resolve(nic, taken, p)).collect()
        }
        None => Vec::new(),
    };
    let duration = |text: &str, f: &str, p: &mut Problems| match parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            p.error(format!("{field}: ProtectedVM {name}: {f}"), e);
            None
        }
    };
    let rpo = duration(&spec.replication.rpo, "spec.replication.rpo", p)?;
    let retention = duration(&spec.replication.retention, "spec.replication.retention", p)?;
    let app_consistent_interval = match &spec.replication.app_consistent_interval {
        Some(t) => Some(duration(t, "spec.replication.appConsistentInterval", p)?),
        None => None,
    };
    Some(VmModel {
        name,
        namespace: ns.to_owned(),
        vm_namespace: vm_ns,
        vm_name: spec.vm.name.clone(),
        disks: source.map(|s| s.disks.clone()).unwrap_or_default(),
        nics,
        rpo,
        retention,
        app_consistent_interval,
        cpu: spec.recovery.as_ref().and_then(|r| r.cpu),
        memory: spec
            .recovery
            .as_ref()
            .and_then(|r| r.memory.as_ref().map(|q| q.0.clone())),
        cut_with: Vec::new(),
    })
}

/// The addresses the plan's VMs already hold, each with its holder, after recovery and in a
/// test: no two NICs may share one.
#[derive(Default)]
struct TakenAddresses {
    recovered: BTreeMap<IpAddr, String>,
    test: BTreeMap<IpAddr, String>,
}

/// What resolving one ProtectedVM's NICs reads.
struct VmNics<'a> {
    name: &'a str,
    pvm: &'a ProtectedVM,
    ns: &'a str,
    inv: &'a Inventory,
    mapping: &'a NetworkMapping,
    overrides: &'a [NicOverride],
}

impl VmNics<'_> {
    /// Each of `spec.recovery.nics` names an interface of the VM.
    fn unknown_overrides(&self, source: &SourceVm, p: &mut Problems) {
        for o in self.overrides {
            if !source.nics.iter().any(|n| n.name == o.name) {
                p.error(
                    format!("ProtectedVM {}: spec.recovery.nics", self.name),
                    format!(
                        "VirtualMachine {}/{} has no NIC {:?}; use one of its interface names",
                        source.namespace, source.name, o.name
                    ),
                );
            }
        }
    }

    /// One NIC: its mapping rule and test network, and its addresses after recovery, in a
    /// test and on the way back.
    fn resolve(&self, nic: &SourceVmNic, taken: &mut TakenAddresses, p: &mut Problems) -> Option<NicModel> {
        let (name, mapping_name) = (self.name, &self.pvm.spec.network_mapping);
        let Some(rule) = self
            .mapping
            .spec
            .networks
            .iter()
            .find(|r| r.source.network == nic.network)
        else {
            p.error(
                format!("ProtectedVM {name}: NIC {}", nic.name),
                format!(
                    "network {} has no rule in NetworkMapping {mapping_name}: add spec.networks[] with source.network {}",
                    nic.network, nic.network
                ),
            );
            return None;
        };
        let Some(test_network) = rule.test.as_ref().map(|t| t.network.clone()) else {
            p.error(
                format!("ProtectedVM {name}: NIC {}", nic.name),
                format!(
                    "network {} has no test network in NetworkMapping {mapping_name}: set test.network so test failovers stay isolated",
                    nic.network
                ),
            );
            return None;
        };
        let rules: Vec<SubnetMap> = rule
            .subnets
            .iter()
            .filter_map(|s| SubnetMap::from_rule(s).ok())
            .collect();
        let o = self.overrides.iter().find(|o| o.name == nic.name);
        let static_ip = o.and_then(|o| overridden(StaticAddress::from_override(o), name, p));
        if let Some(s) = &static_ip
            && !rules.is_empty()
            && !rules.iter().any(|r| r.target.contains(&s.ip.addr()))
        {
            let targets: Vec<String> = rules.iter().map(|r| r.target.to_string()).collect();
            p.error(
                format!("ProtectedVM {name}: spec.recovery.nics[{}].ip", nic.name),
                format!(
                    "{} is outside the target subnets of {} ({}); pick an address inside one",
                    s.ip,
                    rule.target.network,
                    targets.join(", ")
                ),
            );
        }
        let recovered = reip::plan_nic(&nic.nic, &rules, static_ip);
        let test = match o.and_then(|o| overridden(StaticAddress::from_test_override(o), name, p)) {
            Some(s) => reip::plan_nic(&nic.nic, &[], Some(s)),
            // The test network is isolated: the recovered addresses cannot clash there.
            None => recovered.clone(),
        };
        let returned = returned_plan(
            &nic.nic,
            &recovered,
            &return_rules(self.inv, self.ns, self.mapping, rule),
        );
        let who = format!("{name}/{}", nic.name);
        unique_addresses(&recovered, &who, &mut taken.recovered, "recovered", p);
        unique_addresses(&test, &who, &mut taken.test, "test", p);
        Some(NicModel {
            name: nic.name.clone(),
            mac: nic.nic.mac.clone(),
            source_network: nic.network.clone(),
            target_network: rule.target.network.clone(),
            test_network: Some(test_network),
            recovered,
            test,
            returned,
        })
    }
}

/// Failback brings the VM home with the inverse translation; addresses that do not invert
/// (static overrides outside every rule) fall back to the VM's original ones.
fn returned_plan(original: &SourceNic, recovered: &NicPlan, inverse: &[SubnetMap]) -> NicPlan {
    let as_source = SourceNic {
        name: recovered.name.clone(),
        mac: recovered.mac.clone(),
        addresses: recovered.addresses.clone(),
        gateway4: recovered.gateway4,
        gateway6: recovered.gateway6,
    };
    let back = reip::plan_nic(&as_source, inverse, None);
    if back.addresses.len() == original.addresses.len() {
        back
    } else {
        reip::plan_nic(original, &reip::identity_rules(&original.addresses), None)
    }
}

fn overridden(
    parsed: Result<Option<StaticAddress>, reip::ReipError>,
    vm: &str,
    p: &mut Problems,
) -> Option<StaticAddress> {
    parsed.unwrap_or_else(|e| {
        p.error(format!("ProtectedVM {vm}"), e.to_string());
        None
    })
}

fn unique_addresses(plan: &NicPlan, who: &str, seen: &mut BTreeMap<IpAddr, String>, what: &str, p: &mut Problems) {
    for a in &plan.addresses {
        if let Some(other) = seen.get(&a.addr()) {
            p.error(
                format!("NIC {who}"),
                format!(
                    "{what} address {} is also given to {other}; recovered addresses must be unique in the plan",
                    a.addr()
                ),
            );
        } else {
            seen.insert(a.addr(), who.to_owned());
        }
    }
}

fn readiness_model(r: &coldsite_api::recovery_plan::Readiness, gi: usize, p: &mut Problems) -> ReadinessModel {
    let timeout = parse_duration(&r.timeout).unwrap_or_else(|e| {
        p.error(format!("spec.groups[{gi}].readiness.timeout"), e);
        std::time::Duration::from_secs(600)
    });
    ReadinessModel {
        vm_ready: r.vm_ready,
        guest_agent: r.guest_agent,
        probes: r
            .probes
            .iter()
            .filter_map(|pr| match (&pr.tcp, &pr.http) {
                (Some(t), _) => Some(ProbeModel::Tcp {
                    port: t.port,
                    nic: pr.nic.clone(),
                }),
                (_, Some(h)) => Some(ProbeModel::Http {
                    port: h.port,
                    path: h.path.clone(),
                    https: h.scheme == coldsite_api::recovery_plan::HttpScheme::Https,
                    nic: pr.nic.clone(),
                }),
                _ => None,
            })
            .collect(),
        timeout,
    }
}

/// Refuses a webhook URL that would send the run's context in clear without the plan's
/// consent, and warns where the plan consented.
fn webhook_transport(w: &Webhook, field: &str, p: &mut Problems) -> Option<()> {
    match w.transport() {
        WebhookTransport::Refused => {
            p.error(field, WEBHOOK_HTTPS_MESSAGE);
            None
        }
        WebhookTransport::InsecureHttp => {
            p.warning(
                field,
                format!(
                    "{} is plain http (insecureHttp): the run's context and signature travel in clear",
                    w.url
                ),
            );
            Some(())
        }
        WebhookTransport::Https | WebhookTransport::LoopbackHttp => Some(()),
    }
}

fn actions(list: &[Action], field: &str, p: &mut Problems) -> Vec<ActionModel> {
    list.iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let field = format!("{field}[{i}]");
            let (kind, timeout) = match (&a.script, &a.manual) {
                (Some(s), None) => {
                    let timeout = parse_duration(&s.timeout)
                        .map_err(|e| p.error(format!("{field}.script.timeout"), e))
                        .ok()?;
                    let kind = match (&s.job, &s.webhook) {
                        (Some(job), None) => ActionKind::Job {
                            site: s.site.unwrap_or_default(),
                            template: job_template(job, &format!("{field}.script.job"), p)?,
                        },
                        (None, Some(w)) => {
                            webhook_transport(w, &format!("{field}.script.webhook.url"), p)?;
                            ActionKind::Webhook {
                                url: w.url.clone(),
                                secret: w.secret_ref.clone(),
                                request_timeout: parse_duration(&w.timeout)
                                    .map_err(|e| p.error(format!("{field}.script.webhook.timeout"), e))
                                    .ok()?,
                            }
                        }
                        _ => {
                            p.error(format!("{field}.script"), "set exactly one of job or webhook");
                            return None;
                        }
                    };
                    (kind, Some(timeout))
                }
                (None, Some(m)) => {
                    let timeout = match &m.timeout {
                        Some(t) => Some(
                            parse_duration(t)
                                .map_err(|e| p.error(format!("{field}.manual.timeout"), e))
                                .ok()?,
                        ),
                        None => None,
                    };
                    (
                        ActionKind::Manual {
                            instructions: m.instructions.clone(),
                        },
                        timeout,
                    )
                }
                _ => {
                    p.error(field, "set exactly one of script or manual");
                    return None;
                }
            };
            Some(ActionModel {
                name: a.name.clone(),
                kind,
                on_error: a.on_error,
                when: a.when.clone(),
                timeout,
            })
        })
        .collect()
}

/// A script's Job template: it has containers, and runs as the scripts' ServiceAccount,
/// the one identity a site's administrator grants scripts API access through.
fn job_template(job: &JobTemplateSpec, field: &str, p: &mut Problems) -> Option<Box<JobTemplateSpec>> {
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        p.error(field, "the Job template needs spec.template.spec.containers");
        return None;
    };
    if pod.containers.is_empty() {
        p.error(field, "the Job template needs spec.template.spec.containers");
        return None;
    }
    for (key, value) in [
        ("serviceAccountName", &pod.service_account_name),
        ("serviceAccount", &pod.service_account),
    ] {
        if value.as_deref().is_some_and(|v| v != SCRIPT_SERVICE_ACCOUNT) {
            p.error(
                format!("{field}.spec.template.spec.{key}"),
                format!(
                    "scripts run as the ServiceAccount {SCRIPT_SERVICE_ACCOUNT}; remove {key}, and have the \
                     site's administrator bind the roles the script needs to {SCRIPT_SERVICE_ACCOUNT}"
                ),
            );
            return None;
        }
    }
    Some(Box::new(job.clone()))
}

/// A cycle in a dependency list, as the indices along it (first repeated at the end).
fn find_cycle(depends: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, depends: &[Vec<usize>], mark: &mut [Mark], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        mark[i] = Mark::Open;
        stack.push(i);
        for &d in &depends[i] {
            match mark[d] {
                Mark::Open => {
                    let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    cycle.push(d);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, depends, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark[i] = Mark::Done;
        None
    }
    let mut mark = vec![Mark::New; depends.len()];
    for i in 0..depends.len() {
        if mark[i] == Mark::New
            && let Some(c) = visit(i, depends, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}
