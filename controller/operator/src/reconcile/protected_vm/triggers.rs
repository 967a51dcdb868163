//! Which ProtectedVMs a change seen by a site's VM watch concerns, so that they are
//! reconciled on it: the ones of that VM at that site, or every one using a site whose VMs
//! were listed anew (it answers again after an outage), or every one when changes were missed.

use coldsite_api::ProtectedVM;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::site_watch::VmChange;

/// `None`: changes were missed, so every ProtectedVM is concerned.
pub fn concerned<'a>(
    pvms: impl IntoIterator<Item = &'a ProtectedVM>,
    change: Option<&VmChange>,
) -> Vec<ObjectRef<ProtectedVM>> {
    pvms.into_iter()
        .filter(|p| match change {
            None => true,
            Some(VmChange::Listed { site }) => uses(p, site),
            Some(VmChange::One { site, namespace, name }) => {
                let vm_namespace = p.spec.vm.namespace.clone().or_else(|| p.namespace());
                uses(p, site) && &p.spec.vm.name == name && vm_namespace.as_ref() == Some(namespace)
            }
        })
        .map(ObjectRef::from_obj)
        .collect()
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
        let one = |site: &str, namespace: &str, name: &str| VmChange::One {
            site: site.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(names(concerned(&all, Some(&one("dr", "apps", "db01")))), ["db"]);
        assert_eq!(names(concerned(&all, Some(&one("hq", "frontend", "web01")))), ["web"]);
        assert!(concerned(&all, Some(&one("hq", "apps", "web01"))).is_empty());
        assert!(concerned(&all, Some(&one("elsewhere", "apps", "db01"))).is_empty());
        let listed = VmChange::Listed { site: "hq".into() };
        assert_eq!(names(concerned(&all, Some(&listed))), ["db", "web"]);
        assert_eq!(names(concerned(&all, None)), ["db", "web", "other-pair"]);
    }
}
