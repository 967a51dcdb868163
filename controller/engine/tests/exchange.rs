//! Cross-object validation and planning on the Exchange example, and on broken variants of
//! it: each problem is reported with the object, the field and the fix.

use std::path::Path;

use coldsite_api::manifest::{ColdsiteObject, into_typed, parse_documents};
use coldsite_api::recovery_run::StepKind;
use coldsite_api::{FailoverKind, RunAction};
use coldsite_api::{RecoveryPlan, protected_vm::NicOverride};
use coldsite_engine::model::{Direction, PlanModel};
use coldsite_engine::planner::{self, PlanOptions, StepGraph};
use coldsite_engine::source_vm;
use coldsite_engine::validate::{Inventory, Problem, Severity, validate_mapping, validate_plan};
use kube::ResourceExt;

fn exchange() -> (Inventory, RecoveryPlan) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/exchange");
    let mut inv = Inventory::default();
    let mut plan = None;
    for file in [
        "00-sites.yaml",
        "10-network-mapping.yaml",
        "20-protected-vms.yaml",
        "30-recovery-plan.yaml",
        "primary-site/virtual-machines.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for mut doc in parse_documents(&text).unwrap() {
            if doc["kind"] == "VirtualMachine" {
                let vm = source_vm::from_manifest(&doc, "exchange").unwrap();
                inv.source_vms.insert((vm.namespace.clone(), vm.name.clone()), vm);
                continue;
            }
            if doc["kind"] != "Site" {
                doc["metadata"]["namespace"] = "exchange".into();
            }
            match into_typed(&doc).unwrap() {
                ColdsiteObject::Site(s) => {
                    inv.sites.insert(s.name_any(), *s);
                }
                ColdsiteObject::NetworkMapping(m) => {
                    inv.mappings.insert(("exchange".into(), m.name_any()), *m);
                }
                ColdsiteObject::ProtectedVM(p) => {
                    inv.protected_vms.insert(("exchange".into(), p.name_any()), *p);
                }
                ColdsiteObject::RecoveryPlan(p) => plan = Some(*p),
                ColdsiteObject::RecoveryRun(_) => {}
            }
        }
    }
    (inv, plan.unwrap())
}

fn model() -> PlanModel {
    let (inv, plan) = exchange();
    validate_plan(&plan, &inv).unwrap().0
}

fn errors(result: Result<(PlanModel, Vec<Problem>), Vec<Problem>>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(list) => list
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect(),
    }
}

fn has(errors: &[String], text: &str) {
    assert!(
        errors.iter().any(|e| e.contains(text)),
        "no error containing {text:?} in {errors:#?}"
    );
}

#[test]
fn exchange_resolves_with_mapped_addresses() {
    let m = model();
    let order: Vec<&str> = m
        .startup_order()
        .into_iter()
        .map(|g| m.groups[g].name.as_str())
        .collect();
    assert_eq!(order, ["identity", "mailbox", "client-access"]);
    let vm = |name: &str| m.vms.iter().find(|v| v.name == name).unwrap();
    let addrs = |p: &coldsite_engine::reip::NicPlan| p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // The static override wins for the domain controller (IPv4); IPv6 follows the subnet rule.
    assert_eq!(
        addrs(&vm("dc01").nics[0].recovered),
        ["10.50.1.10/24", "fd00:c0:50::10/64"]
    );
    // The others keep their host bits.
    assert_eq!(
        addrs(&vm("exch-mbx01").nics[0].recovered),
        ["10.50.1.20/24", "fd00:c0:50::20/64"]
    );
    assert_eq!(vm("exch-mbx01").nics[0].target_network, "contoso/dr-lan");
    assert_eq!(
        vm("exch-mbx01").nics[0].test_network.as_deref(),
        Some("contoso/dr-isolated")
    );
    // Failback brings them home to their original addresses.
    assert_eq!(
        addrs(&vm("exch-cas01").nics[0].returned),
        ["10.0.1.30/24", "fd00:c0:1::30/64"]
    );
    assert_eq!(vm("exch-mbx01").disks, ["exch-mbx01-system", "exch-mbx01-data"]);
}

#[test]
fn a_dependency_cycle_is_named_by_its_groups() {
    let (inv, mut plan) = exchange();
    plan.spec.groups[0].depends_on = Some(vec!["client-access".into()]);
    let e = errors(validate_plan(&plan, &inv));
    has(&e, "cycle: identity → client-access → mailbox → identity");
}

#[test]
fn a_vm_in_two_groups_is_refused() {
    let (inv, mut plan) = exchange();
    plan.spec.groups[2].vms.push("dc01".into());
    has(
        &errors(validate_plan(&plan, &inv)),
        "ProtectedVM dc01 is already in group identity",
    );
}

fn consistency_group(name: &str, vms: &[&str]) -> coldsite_api::recovery_plan::ConsistencyGroup {
    coldsite_api::recovery_plan::ConsistencyGroup {
        name: name.into(),
        vms: vms.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn with_group_snapshots(inv: &mut Inventory) {
    let hq = inv.sites.get_mut("contoso-hq").unwrap();
    hq.spec.storage.as_mut().unwrap().volume_group_snapshot_class_name = Some("ceph-rbd-groupsnap".into());
}

#[test]
fn a_consistency_group_cuts_its_members_with_each_other() {
    let (mut inv, mut plan) = exchange();
    with_group_snapshots(&mut inv);
    plan.spec.consistency_groups = vec![consistency_group("mail", &["exch-mbx01", "exch-cas01"])];
    let (m, _) = validate_plan(&plan, &inv).unwrap();
    let names: Vec<&str> = m.consistency_groups[0]
        .vms
        .iter()
        .map(|&i| m.vms[i].name.as_str())
        .collect();
    assert_eq!(names, ["exch-mbx01", "exch-cas01"]);
    let cut_with = |name: &str| m.vms.iter().find(|v| v.name == name).unwrap().cut_with.clone();
    assert_eq!(cut_with("exch-mbx01"), ["exch-cas01", "exch-mbx01"]);
    assert_eq!(cut_with("exch-mbx01"), cut_with("exch-cas01"));
    assert!(cut_with("dc01").is_empty());
    assert_eq!(
        m.vms.iter().find(|v| v.name == "exch-mbx01").unwrap().round_driver(),
        "exch-cas01"
    );
}

/// Marks `plan` Valid for its current generation, as the plan reconciler would.
fn found_valid(plan: &mut coldsite_api::RecoveryPlan) {
    plan.metadata.generation = Some(3);
    let status = plan.status.get_or_insert_with(Default::default);
    status.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Valid".into(),
        status: "True".into(),
        observed_generation: Some(3),
        reason: "Valid".into(),
        message: String::new(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-01T00:00:00Z".parse().unwrap(),
        ),
    }];
}

/// A plan without consistency groups cuts a VM as protection does: with the group another
/// valid plan puts it in, so its runs' reprotects set up what the group's rounds expect.
#[test]
fn a_vm_in_another_plans_group_is_cut_with_that_group() {
    let (mut inv, plan) = exchange();
    with_group_snapshots(&mut inv);
    let mut mail = plan.clone();
    mail.metadata.name = Some("exchange-mail".into());
    mail.spec.consistency_groups = vec![consistency_group("mail", &["exch-mbx01", "exch-cas01"])];
    inv.plans
        .insert(("exchange".into(), "exchange-mail".into()), mail.clone());
    let cut_with = |inv: &Inventory, name: &str| {
        let (m, _) = validate_plan(&plan, inv).unwrap();
        m.vms.iter().find(|v| v.name == name).unwrap().cut_with.clone()
    };
    // Not yet found valid: its group does not take effect anywhere.
    assert!(cut_with(&inv, "exch-mbx01").is_empty());
    found_valid(&mut mail);
    assert_eq!(
        coldsite_engine::validate::cut_with([&mail], "exch-mbx01"),
        ["exch-cas01", "exch-mbx01"]
    );
    inv.plans
        .insert(("exchange".into(), "exchange-mail".into()), mail.clone());
    assert_eq!(cut_with(&inv, "exch-mbx01"), ["exch-cas01", "exch-mbx01"]);
    assert!(cut_with(&inv, "dc01").is_empty());
    // Edited since it was found valid: its groups wait for the new verdict.
    mail.metadata.generation = Some(4);
    inv.plans.insert(("exchange".into(), "exchange-mail".into()), mail);
    assert!(cut_with(&inv, "exch-mbx01").is_empty());
}

#[test]
fn consistency_groups_name_what_cannot_be_cut_together() {
    let (mut inv, mut plan) = exchange();
    plan.spec.consistency_groups = vec![
        consistency_group("mail", &["exch-mbx01", "exch-cas01"]),
        consistency_group("all", &["dc01", "exch-cas01", "exch-mbx02"]),
    ];
    let e = errors(validate_plan(&plan, &inv));
    has(
        &e,
        "spec.consistencyGroups: Site contoso-hq names no spec.storage.volumeGroupSnapshotClassName",
    );
    has(
        &e,
        "spec.consistencyGroups[1].vms[1]: ProtectedVM exch-cas01 is already in consistency group mail",
    );
    has(
        &e,
        "spec.consistencyGroups[1].vms[2]: ProtectedVM exch-mbx02 is not in any of spec.groups",
    );
    // A VM in a consistency group of a plan made before this one stays that plan's.
    with_group_snapshots(&mut inv);
    let mut first = plan.clone();
    first.metadata.name = Some("exchange-mail".into());
    first.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-01T00:00:00Z".parse().unwrap(),
    ));
    first.spec.consistency_groups = vec![consistency_group("mailbox", &["exch-mbx01", "dc01"])];
    plan.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-02T00:00:00Z".parse().unwrap(),
    ));
    plan.spec.consistency_groups.truncate(1);
    inv.plans
        .insert(("exchange".into(), "exchange-mail".into()), first.clone());
    has(
        &errors(validate_plan(&plan, &inv)),
        "spec.consistencyGroups[0].vms[0]: ProtectedVM exch-mbx01 is already in consistency group mailbox of plan \
         exchange-mail, which came first",
    );
    assert!(validate_plan(&first, &inv).is_ok(), "the first plan keeps its group");
    inv.plans.clear();
    // Members' VMs in two namespaces cannot be one group snapshot's.
    let cas = inv
        .protected_vms
        .get_mut(&("exchange".into(), "exch-cas01".into()))
        .unwrap();
    cas.spec.vm.namespace = Some("exchange-edge".into());
    let vm = inv
        .source_vms
        .get(&("exchange".into(), "exch-cas01".into()))
        .unwrap()
        .clone();
    inv.source_vms.insert(("exchange-edge".into(), "exch-cas01".into()), vm);
    let e = errors(validate_plan(&plan, &inv));
    has(
        &e,
        "the VM of ProtectedVM exch-cas01 is in namespace exchange-edge, the group's others in exchange",
    );
}

#[test]
fn missing_references_are_named() {
    let (mut inv, mut plan) = exchange();
    plan.spec.groups[1].vms.push("exch-mbx02".into());
    plan.spec.recovery_site = "contoso-dr2".into();
    inv.mappings.clear();
    let e = errors(validate_plan(&plan, &inv));
    has(
        &e,
        "spec.groups[1].vms[1]: ProtectedVM exchange/exch-mbx02 does not exist",
    );
    has(&e, "spec.recoverySite: Site \"contoso-dr2\" does not exist");
}

#[test]
fn a_vm_protected_between_other_sites_is_refused() {
    let (mut inv, plan) = exchange();
    inv.protected_vms
        .get_mut(&("exchange".into(), "exch-cas01".into()))
        .unwrap()
        .spec
        .recovery_site = "contoso-hq".into();
    inv.protected_vms
        .get_mut(&("exchange".into(), "exch-cas01".into()))
        .unwrap()
        .spec
        .primary_site = "contoso-dr".into();
    has(
        &errors(validate_plan(&plan, &inv)),
        "ProtectedVM exch-cas01 is protected from contoso-dr to contoso-hq",
    );
}

#[test]
fn unmapped_networks_and_missing_test_networks_are_refused() {
    let (mut inv, plan) = exchange();
    let vm = inv
        .source_vms
        .get_mut(&("exchange".into(), "exch-cas01".into()))
        .unwrap();
    vm.nics[0].network = "contoso/dmz".into();
    inv.mappings
        .get_mut(&("exchange".into(), "hq-to-dr".into()))
        .unwrap()
        .spec
        .networks[0]
        .test = None;
    let e = errors(validate_plan(&plan, &inv));
    has(
        &e,
        "network contoso/dmz has no rule in NetworkMapping hq-to-dr: add spec.networks[] with source.network contoso/dmz",
    );
    has(
        &e,
        "network contoso/corp-lan has no test network in NetworkMapping hq-to-dr",
    );
}

#[test]
fn clashing_and_stray_static_addresses_are_refused() {
    let (mut inv, plan) = exchange();
    let pvm = inv
        .protected_vms
        .get_mut(&("exchange".into(), "exch-cas01".into()))
        .unwrap();
    pvm.spec.recovery = Some(coldsite_api::protected_vm::RecoveryOverrides {
        nics: vec![NicOverride {
            name: "corp".into(),
            ip: Some("10.50.1.20/24".into()),
            gateway: None,
            test_ip: None,
            test_gateway: None,
        }],
        cpu: None,
        memory: None,
    });
    let e = errors(validate_plan(&plan, &inv));
    has(&e, "recovered address 10.50.1.20 is also given to exch-mbx01/corp");

    let (mut inv, plan) = exchange();
    let pvm = inv.protected_vms.get_mut(&("exchange".into(), "dc01".into())).unwrap();
    pvm.spec.recovery.as_mut().unwrap().nics[0].ip = Some("192.168.7.10/24".into());
    pvm.spec.recovery.as_mut().unwrap().nics[0].gateway = None;
    has(
        &errors(validate_plan(&plan, &inv)),
        "192.168.7.10/24 is outside the target subnets of contoso/dr-lan",
    );
}

#[test]
fn test_addresses_must_be_unique_too() {
    let (mut inv, plan) = exchange();
    for name in ["exch-mbx01", "exch-cas01"] {
        let pvm = inv.protected_vms.get_mut(&("exchange".into(), name.into())).unwrap();
        pvm.spec.recovery = Some(coldsite_api::protected_vm::RecoveryOverrides {
            nics: vec![NicOverride {
                name: "corp".into(),
                ip: None,
                gateway: None,
                test_ip: Some("192.168.100.5/24".into()),
                test_gateway: None,
            }],
            cpu: None,
            memory: None,
        });
    }
    has(
        &errors(validate_plan(&plan, &inv)),
        "test address 192.168.100.5 is also given to",
    );
}

#[test]
fn mappings_report_unknown_sites_and_overlaps_across_networks() {
    let (mut inv, _) = exchange();
    let mut nm = inv.mappings.values().next().unwrap().clone();
    let mut second = nm.spec.networks[0].clone();
    second.source.network = "contoso/voice".into();
    second.subnets[0].source = "10.0.0.0/16".into();
    second.subnets[0].target = "10.60.0.0/16".into();
    second.subnets[0].gateway = None;
    second.subnets.truncate(1);
    nm.spec.networks.push(second);
    nm.spec.target_site = "nowhere".into();
    inv.sites.remove("nowhere");
    let problems: Vec<String> = validate_mapping(&nm, &inv).iter().map(ToString::to_string).collect();
    has(&problems, "spec.targetSite: Site \"nowhere\" does not exist");
    has(&problems, "10.0.0.0/16 overlaps 10.0.1.0/24 of spec.networks[0]");
}

/// The graph of `action` from the primary to the recovery site.
fn forward(m: &PlanModel, action: RunAction) -> StepGraph {
    planner::plan(
        m,
        PlanOptions {
            action,
            direction: Direction::Forward,
            shutdown_source: true,
        },
    )
}

fn ids(g: &StepGraph) -> Vec<&str> {
    g.steps.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn test_failover_graph_orders_groups_and_filters_actions() {
    let m = model();
    let g = forward(&m, RunAction::TestFailover);
    let ids = ids(&g);
    assert!(ids.contains(&"mailbox/pre/confirm-ad-replication"));
    assert!(ids.contains(&"mailbox/vm/exch-mbx01/power-on"));
    // update-dns runs only in real failovers.
    assert!(!ids.contains(&"client-access/post/update-dns"));
    assert!(
        !g.steps
            .iter()
            .any(|s| s.kind == StepKind::PowerOff || s.kind == StepKind::FinalSync)
    );
    // Power-on waits for the group's start, which waits for the manual gate and identity.
    let power_on = &g.steps[g.find("mailbox/vm/exch-mbx01/power-on").unwrap()];
    let start = g.find("mailbox/start").unwrap();
    assert!(power_on.deps.contains(&start));
    let start_deps: Vec<&str> = g.steps[start].deps.iter().map(|&d| g.steps[d].id.as_str()).collect();
    assert_eq!(start_deps, ["identity/done", "mailbox/pre/confirm-ad-replication"]);
    // Restores wait for nothing: disks are ready before the group's turn.
    assert!(
        g.steps[g.find("client-access/vm/exch-cas01/restore-disks").unwrap()]
            .deps
            .is_empty()
    );
}

#[test]
fn planned_failover_stops_in_reverse_order_and_syncs() {
    let m = model();
    let g = forward(&m, RunAction::PlannedFailover);
    let deps = |id: &str| -> Vec<&str> {
        g.steps[g.find(id).unwrap()]
            .deps
            .iter()
            .map(|&d| g.steps[d].id.as_str())
            .collect()
    };
    assert!(deps("client-access/vm/exch-cas01/stop-source").is_empty());
    assert_eq!(deps("mailbox/vm/exch-mbx01/stop-source"), ["client-access/shutdown"]);
    assert_eq!(deps("identity/vm/dc01/stop-source"), ["mailbox/shutdown"]);
    assert_eq!(deps("identity/vm/dc01/final-sync"), ["identity/vm/dc01/stop-source"]);
    assert_eq!(deps("identity/vm/dc01/restore-disks"), ["identity/vm/dc01/final-sync"]);
    assert!(ids(&g).contains(&"client-access/post/update-dns"));
    // Same inputs, same graph.
    let again = forward(&m, RunAction::PlannedFailover);
    assert_eq!(ids(&g), ids(&again));
}

#[test]
fn a_repoint_halts_each_copy_before_restoring_it_and_runs_no_script_unasked() {
    let m = model();
    let g = forward(&m, RunAction::ChangeRecoveryPoint);
    let deps = |id: &str| -> Vec<&str> {
        g.steps[g.find(id).unwrap_or_else(|| panic!("no step {id}"))]
            .deps
            .iter()
            .map(|&d| g.steps[d].id.as_str())
            .collect()
    };
    // Halted at the recovery site in reverse startup order, restored only once halted.
    assert!(deps("client-access/vm/exch-cas01/halt").is_empty());
    assert_eq!(deps("identity/vm/dc01/halt"), ["mailbox/shutdown"]);
    assert_eq!(deps("identity/vm/dc01/restore-disks"), ["identity/vm/dc01/halt"]);
    assert_eq!(deps("mailbox/start"), ["identity/done"]);
    assert!(
        !g.steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::PowerOff | StepKind::CheckSource | StepKind::FinalSync)),
        "a repoint does not touch the primary"
    );
    // The VMs keep their identity: no DNS update, gate or check runs again unless asked.
    assert!(g.steps.iter().all(|s| s.action.is_none()), "{:?}", ids(&g));
}

#[test]
fn a_repoint_runs_the_actions_that_ask_for_it() {
    let (inv, mut plan) = exchange();
    let checks = plan
        .spec
        .groups
        .iter_mut()
        .flat_map(|g| g.post.iter_mut())
        .find(|a| a.name == "verify-ad")
        .expect("identity's post action");
    checks.when = vec![FailoverKind::Failover, FailoverKind::ChangeRecoveryPoint];
    let m = validate_plan(&plan, &inv).unwrap().0;
    let g = forward(&m, RunAction::ChangeRecoveryPoint);
    let actions: Vec<&str> = g
        .steps
        .iter()
        .filter(|s| s.action.is_some())
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(actions, ["identity/post/verify-ad"]);
}

#[test]
fn commit_and_reprotect_have_their_own_graphs() {
    let m = model();
    for (action, kind) in [
        (RunAction::Commit, StepKind::Commit),
        (RunAction::Reprotect, StepKind::ReverseReplication),
    ] {
        let g = forward(&m, action);
        assert_eq!(g.len(), 3);
        assert!(g.steps.iter().all(|s| s.kind == kind && s.deps.is_empty()));
    }
}

#[test]
fn a_protected_vm_reaches_another_namespace_only_where_both_sites_grant_it() {
    use coldsite_api::site::NamespaceGrant;
    use coldsite_engine::validate::validate_protected_vm;
    let (mut inv, _) = exchange();
    let key = ("exchange".to_owned(), "dc01".to_owned());
    let mut pvm = inv.protected_vms[&key].clone();
    pvm.spec.vm.namespace = Some("payroll".into());
    let refusals = |inv: &Inventory, pvm: &coldsite_api::ProtectedVM| -> Vec<String> {
        validate_protected_vm(pvm, inv)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect()
    };
    let errors = refusals(&inv, &pvm);
    has(
        &errors,
        "spec.vm.namespace: namespace payroll at Site contoso-hq is not granted to namespace exchange",
    );
    has(&errors, "namespace payroll at Site contoso-dr is not granted");
    has(&errors, "spec.namespaceGrants: [{from: exchange, to: [payroll]}]");

    // A grant at the primary alone is not enough: failover would act in payroll at DR.
    let grant = NamespaceGrant {
        from: "exchange".into(),
        to: vec!["payroll".into()],
    };
    inv.sites
        .get_mut("contoso-hq")
        .unwrap()
        .spec
        .namespace_grants
        .push(grant.clone());
    let errors = refusals(&inv, &pvm);
    assert!(
        !errors.iter().any(|e| e.contains("contoso-hq is not granted")),
        "{errors:#?}"
    );
    has(&errors, "namespace payroll at Site contoso-dr is not granted");
    // A grant to another management namespace does not count.
    inv.sites
        .get_mut("contoso-dr")
        .unwrap()
        .spec
        .namespace_grants
        .push(NamespaceGrant {
            from: "finance".into(),
            to: vec!["payroll".into()],
        });
    has(
        &refusals(&inv, &pvm),
        "namespace payroll at Site contoso-dr is not granted",
    );
    inv.sites
        .get_mut("contoso-dr")
        .unwrap()
        .spec
        .namespace_grants
        .push(grant);
    let errors = refusals(&inv, &pvm);
    assert!(!errors.iter().any(|e| e.contains("not granted")), "{errors:#?}");
}

/// The pod template of the plan's first Job script (the identity group's verify-ad).
fn first_job_pod(plan: &mut RecoveryPlan) -> &mut k8s_openapi::api::core::v1::PodSpec {
    let script = plan.spec.groups[0].post[0].script.as_mut().unwrap();
    let job = script.job.as_mut().unwrap();
    job.spec.as_mut().unwrap().template.spec.as_mut().unwrap()
}

#[test]
fn a_script_runs_only_as_the_scripts_service_account() {
    let (inv, mut plan) = exchange();
    first_job_pod(&mut plan).service_account_name = Some("coldsite-script".into());
    assert!(
        validate_plan(&plan, &inv).is_ok(),
        "naming the scripts' own account is fine"
    );
    first_job_pod(&mut plan).service_account_name = Some("kubevirt-operator".into());
    has(
        &errors(validate_plan(&plan, &inv)),
        "spec.groups[0].post[0].script.job.spec.template.spec.serviceAccountName: scripts run as the ServiceAccount \
         coldsite-script",
    );
}

#[test]
fn each_namespace_tests_in_its_own_namespace_unless_a_shared_one_is_granted() {
    let (mut inv, plan) = exchange();
    let model = validate_plan(&plan, &inv).unwrap().0;
    assert_eq!(model.recovery.test_namespace_for("exchange"), "coldsite-test-exchange");
    assert_eq!(
        model.recovery.test_namespace_for("sharepoint"),
        "coldsite-test-sharepoint"
    );
    let dr = inv.sites.get_mut("contoso-dr").unwrap();
    dr.spec.test_namespace = Some("shared-tests".into());
    has(
        &errors(validate_plan(&plan, &inv)),
        "spec.recoverySite: Site contoso-dr keeps test copies in its shared testNamespace shared-tests, which is \
         not granted to namespace exchange",
    );
    let dr = inv.sites.get_mut("contoso-dr").unwrap();
    dr.spec.namespace_grants = vec![coldsite_api::site::NamespaceGrant {
        from: "exchange".into(),
        to: vec!["shared-tests".into()],
    }];
    let model = validate_plan(&plan, &inv).unwrap().0;
    assert_eq!(model.recovery.test_namespace_for("exchange"), "shared-tests");
}
