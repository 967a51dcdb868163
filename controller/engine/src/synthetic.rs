//! Generated plans for the simulation tests and the benchmark: seeded random plans of any
//! size, with dependencies, actions and addressing, already in model form.

use std::time::Duration;

use coldsite_api::FailoverKind;
use coldsite_api::recovery_plan::{OnError, ScriptSite};
use ipnet::IpNet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{ActionKind, ActionModel, GroupModel, NicModel, PlanModel, ReadinessModel, SiteModel, VmModel};
use crate::reip::{self, SourceNic, SubnetMap};

/// The shape of a generated plan.
#[derive(Clone, Debug)]
pub struct Shape {
    pub groups: usize,
    pub vms_per_group: usize,
    /// Chance that a group gets each kind of pre or post action.
    pub action_chance: f64,
    /// Groups depend on random earlier groups instead of only the previous one.
    pub random_dependencies: bool,
}

fn site(name: &str) -> SiteModel {
    SiteModel {
        name: name.into(),
        test_namespace: Some("drill".into()),
        ..SiteModel::default()
    }
}

fn job_template() -> Box<k8s_openapi::api::batch::v1::JobTemplateSpec> {
    Box::default()
}

fn action(rng: &mut ChaCha8Rng, name: String) -> ActionModel {
    let kind = match rng.random_range(0..3) {
        0 => ActionKind::Manual {
            instructions: "check and approve".into(),
        },
        1 => ActionKind::Job {
            site: ScriptSite::Recovery,
            template: job_template(),
        },
        _ => ActionKind::Webhook {
            url: "https://hooks.example/run".into(),
            secret: coldsite_api::common::LocalSecretKeyRef {
                name: "hook".into(),
                key: "key".into(),
            },
            request_timeout: Duration::from_secs(30),
        },
    };
    let manual = matches!(kind, ActionKind::Manual { .. });
    let when = if rng.random_bool(0.2) {
        vec![
            FailoverKind::PlannedFailover,
            FailoverKind::Failover,
            FailoverKind::Failback,
        ]
    } else {
        Vec::new()
    };
    ActionModel {
        name,
        kind,
        on_error: if rng.random_bool(0.3) {
            OnError::Continue
        } else {
            OnError::Fail
        },
        when,
        // Every gate times out eventually, so a run nobody approves still ends.
        timeout: Some(Duration::from_secs(if manual { 3600 } else { 1800 })),
    }
}

/// A plan of `shape`, deterministic in `seed`. VM `i` has the address 10.x.y.z in a /16
/// that maps to 10.(x+100).y.z.
pub fn plan(seed: u64, shape: &Shape) -> PlanModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rules = vec![SubnetMap {
        source: "10.0.0.0/16".parse().unwrap_or_else(|_| IpNet::default()),
        target: "10.100.0.0/16".parse().unwrap_or_else(|_| IpNet::default()),
        gateway: "10.100.0.1".parse().ok(),
        dns: Vec::new(),
        search: Vec::new(),
    }];
    let inverse = reip::invert(&rules);
    let mut vms = Vec::new();
    let mut groups = Vec::new();
    for g in 0..shape.groups {
        let mut members = Vec::new();
        for v in 0..shape.vms_per_group {
            let i = vms.len();
            let name = format!("vm-{g}-{v}");
            let host = i + 10;
            let addr: IpNet = format!("10.0.{}.{}/16", host / 250, host % 250 + 2)
                .parse()
                .unwrap_or_else(|_| IpNet::default());
            let source = SourceNic {
                name: "lan".into(),
                mac: Some(format!(
                    "02:00:00:{:02x}:{:02x}:{:02x}",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                )),
                addresses: vec![addr],
                gateway4: "10.0.0.1".parse().ok(),
                gateway6: None,
            };
            let recovered = reip::plan_nic(&source, &rules, None);
            let back = SourceNic {
                addresses: recovered.addresses.clone(),
                ..source.clone()
            };
            let returned = reip::plan_nic(&back, &inverse, None);
            vms.push(VmModel {
                name: name.clone(),
                namespace: "apps".into(),
                vm_namespace: "apps".into(),
                vm_name: name,
                disks: vec![format!("vm-{g}-{v}-root")],
                nics: vec![NicModel {
                    name: "lan".into(),
                    mac: source.mac.clone(),
                    source_network: "corp/lan".into(),
                    target_network: "dr/lan".into(),
                    test_network: Some("dr/isolated".into()),
                    test: recovered.clone(),
                    recovered,
                    returned,
                }],
                rpo: Duration::from_secs(15 * 60),
                retention: Duration::from_secs(24 * 3600),
                app_consistent_interval: rng.random_bool(0.5).then_some(Duration::from_secs(3600)),
                cpu: None,
                memory: None,
                cut_with: Vec::new(),
            });
            members.push(i);
        }
        let depends_on = if g == 0 {
            Vec::new()
        } else if shape.random_dependencies {
            let mut d: Vec<usize> = (0..g).filter(|_| rng.random_bool(0.4)).collect();
            if d.is_empty() && rng.random_bool(0.7) {
                d.push(g - 1);
            }
            d
        } else {
            vec![g - 1]
        };
        let mut pre = Vec::new();
        let mut post = Vec::new();
        for k in 0..2 {
            if rng.random_bool(shape.action_chance) {
                pre.push(action(&mut rng, format!("g{g}-pre-{k}")));
            }
            if rng.random_bool(shape.action_chance) {
                post.push(action(&mut rng, format!("g{g}-post-{k}")));
            }
        }
        groups.push(GroupModel {
            name: format!("group-{g}"),
            vms: members,
            depends_on,
            readiness: ReadinessModel {
                vm_ready: true,
                guest_agent: false,
                probes: Vec::new(),
                timeout: Duration::from_secs(20 * 60),
            },
            pre,
            post,
        });
    }
    PlanModel {
        namespace: "apps".into(),
        name: format!("plan-{seed}"),
        primary: site("site-a"),
        recovery: site("site-b"),
        groups,
        vms,
        consistency_groups: Vec::new(),
        auto_approve: Vec::new(),
    }
}
