//! Which ProtectedVMs a change seen by a site's watches concerns, so that they are
//! reconciled on it: the ones of that VM at that site, the one whose replication objects
//! changed there, or every one using a site whose VMs were listed anew (it answers again
//! after an outage), or every one when changes were missed; and the members of a plan's
//! consistency groups when those groups take effect or change. Of a ProtectedVM's own
//! changes, those to what its reconcile acts on ([`inputs`]).

use coldsite_api::{ProtectedVM, RecoveryPlan};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::site_watch::SiteChange;

/// What of a ProtectedVM its reconcile acts on: its spec, labels and annotations, its
/// finalizers and deletion, and the run that holds it (`status.lastRun`, which runs write).
/// Not the rest of its status, which the reconcile writes itself from what the sites show:
/// its own write would only wake it to find nothing new.
pub fn inputs(pvm: &ProtectedVM) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    let meta = &pvm.metadata;
    (meta.generation, &meta.labels, &meta.annotations, &meta.finalizers).hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    let last_run = pvm.status.as_ref().and_then(|s| s.last_run.as_ref());
    serde_json::to_string(&last_run).ok().hash(&mut hasher);
    Some(hasher.finish())
}

/// What the ProtectedVMs read from a plan: its consistency groups, once it is valid. Changes
/// of this hash, not each status write, reconcile the groups' members.
pub fn consistency_state(plan: &RecoveryPlan) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    coldsite_engine::validate::valid_as_it_stands(plan).hash(&mut hasher);
    for g in &plan.spec.consistency_groups {
        (&g.name, &g.vms).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// The ProtectedVMs the plan's consistency groups list.
pub fn cut_members(plan: &RecoveryPlan) -> Vec<ObjectRef<ProtectedVM>> {
    let ns = plan.namespace().unwrap_or_default();
    plan.spec
        .consistency_groups
        .iter()
        .flat_map(|g| &g.vms)
        .map(|vm| ObjectRef::new(vm).within(&ns))
        .collect()
}

/// `None`: changes were missed, so every ProtectedVM is concerned.
pub fn concerned<'a>(
    pvms: impl IntoIterator<Item = &'a ProtectedVM>,
    change: Option<&SiteChange>,
) -> Vec<ObjectRef<ProtectedVM>> {
    pvms.into_iter()
        .filter(|p| match change {
            None => true,
            Some(SiteChange::Listed { site }) => uses(p, site),
            Some(SiteChange::One { site, namespace, name }) => {
                uses(p, site) && &p.spec.vm.name == name && vm_namespace(p).as_ref() == Some(namespace)
            }
            Some(SiteChange::Replication { site, namespace, pvm }) => {
                uses(p, site) && &p.name_any() == pvm && vm_namespace(p).as_ref() == Some(namespace)
            }
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// Where the VM and its replication objects live at the sites.
fn vm_namespace(pvm: &ProtectedVM) -> Option<String> {
    pvm.spec.vm.namespace.clone().or_else(|| pvm.namespace())
}

fn uses(pvm: &ProtectedVM, site: &str) -> bool {
    pvm.spec.primary_site == site || pvm.spec.recovery_site == site
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm(name: &str, vm: &str, vm_namespace: Option<&str>, sites: (&str, &str)) -> ProtectedVM {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"vm": {"name": vm, "namespace": vm_namespace}, "primarySite": sites.0,
                     "recoverySite": sites.1, "networkMapping": "m"}
        }))
        .unwrap()
    }

    fn names(refs: Vec<ObjectRef<ProtectedVM>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_change_concerns_the_protected_vms_of_that_vm_at_that_site() {
        let all = [
            pvm("db", "db01", None, ("hq", "dr")),
            pvm("web", "web01", Some("frontend"), ("hq", "dr")),
            pvm("other-pair", "db01", None, ("branch", "cloud")),
        ];
        let one = |site: &str, namespace: &str, name: &str| SiteChange::One {
            site: site.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(names(concerned(&all, Some(&one("dr", "apps", "db01")))), ["db"]);
        assert_eq!(names(concerned(&all, Some(&one("hq", "frontend", "web01")))), ["web"]);
        assert!(concerned(&all, Some(&one("hq", "apps", "web01"))).is_empty());
        assert!(concerned(&all, Some(&one("elsewhere", "apps", "db01"))).is_empty());
        let replication = |site: &str, namespace: &str, pvm: &str| SiteChange::Replication {
            site: site.into(),
            namespace: namespace.into(),
            pvm: pvm.into(),
        };
        assert_eq!(names(concerned(&all, Some(&replication("dr", "apps", "db")))), ["db"]);
        assert_eq!(
            names(concerned(&all, Some(&replication("hq", "frontend", "web")))),
            ["web"]
        );
        assert!(
            concerned(&all, Some(&replication("hq", "apps", "web"))).is_empty(),
            "the VM lives elsewhere"
        );
        assert!(concerned(&all, Some(&replication("cloud", "apps", "db"))).is_empty());
        let listed = SiteChange::Listed { site: "hq".into() };
        assert_eq!(names(concerned(&all, Some(&listed))), ["db", "web"]);
        assert_eq!(names(concerned(&all, None)), ["db", "web", "other-pair"]);
    }

    #[test]
    fn a_protected_vms_own_status_writes_do_not_wake_it_but_a_run_or_its_spec_do() {
        let base = || {
            let mut p = pvm("db", "db01", None, ("hq", "dr"));
            p.metadata.generation = Some(1);
            p.metadata.finalizers = Some(vec!["coldsite.io/protection".into()]);
            p
        };
        let with = |change: fn(&mut ProtectedVM)| {
            let mut p = base();
            change(&mut p);
            inputs(&p)
        };
        let at_rest = inputs(&base());
        assert!(at_rest.is_some());
        let own_write = with(|p| {
            p.status = serde_json::from_value(serde_json::json!({"phase": "Protected",
                "replication": {"health": "Healthy", "lastSyncTime": "2026-12-05T08:00:00Z"},
                "recoveryPoints": {"count": 3}}))
            .unwrap();
        });
        assert_eq!(own_write, at_rest, "the reconcile's own status write");
        let claimed = |p: &mut ProtectedVM| {
            p.status = serde_json::from_value(serde_json::json!({"phase": "Protected",
                "lastRun": {"run": "drill-1", "runUid": "u1"}}))
            .unwrap();
        };
        let finished = |p: &mut ProtectedVM| {
            p.status = serde_json::from_value(serde_json::json!({"phase": "Protected",
                "lastRun": {"run": "drill-1", "runUid": "u1", "phase": "Succeeded"}}))
            .unwrap();
        };
        assert_ne!(with(claimed), at_rest, "a run claims it");
        assert_ne!(with(finished), with(claimed), "its run ends");
        assert_ne!(with(|p| p.metadata.generation = Some(2)), at_rest, "its spec changed");
        assert_ne!(with(|p| p.metadata.finalizers = None), at_rest, "its finalizer");
        assert_ne!(
            with(|p| p.metadata.deletion_timestamp =
                serde_json::from_value(serde_json::json!("2026-12-05T08:00:00Z")).unwrap()),
            at_rest,
            "deleted"
        );
        assert_ne!(
            with(|p| p.metadata.annotations = Some([("a".into(), "b".into())].into())),
            at_rest,
            "annotated"
        );
    }

    #[test]
    fn a_plans_consistency_groups_concern_their_members_when_they_take_effect_or_change() {
        let plan = |generation: i64, valid_for: i64, vms: &[&str]| -> RecoveryPlan {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "coldsite.io/v1alpha1", "kind": "RecoveryPlan",
                "metadata": {"name": "p", "namespace": "apps", "generation": generation},
                "spec": {"primarySite": "hq", "recoverySite": "dr", "groups": [{"name": "g", "vms": ["db", "app", "web"]}],
                         "consistencyGroups": [{"name": "tier", "vms": vms}]},
                "status": {"conditions": [{"type": "Valid", "status": "True", "reason": "Valid", "message": "",
                           "observedGeneration": valid_for, "lastTransitionTime": "2026-12-01T00:00:00Z"}]},
            }))
            .unwrap()
        };
        let state = |p: &RecoveryPlan| consistency_state(p).unwrap();
        let valid = plan(2, 2, &["db", "app"]);
        assert_eq!(names(cut_members(&valid)), ["db", "app"]);
        assert_ne!(
            state(&valid),
            state(&plan(2, 1, &["db", "app"])),
            "found valid as it stands: the groups take effect"
        );
        assert_ne!(
            state(&valid),
            state(&plan(2, 2, &["db", "app", "web"])),
            "a member added"
        );
        let mut restated = valid.clone();
        restated.status.as_mut().unwrap().vm_count = Some(3);
        assert_eq!(state(&valid), state(&restated), "other status writes concern no VM");
    }
}
