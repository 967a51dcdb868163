//! Where a plan's Job scripts run, and under what: a namespace that enforces a Pod Security
//! profile, and the ServiceAccount made for scripts, bound to nothing. The namespace is
//! `coldsite-scripts-<run's namespace>` on every cluster, coldsite's own, so that a tenant's
//! scripts never share a namespace with another tenant's or with VMs (whose launcher pods
//! need more than `restricted`). At a site coldsite makes it, enforcing the Site's profile;
//! on the management cluster the chart makes it (`rbac.managementScripts.namespaces`),
//! enforcing `restricted`. Before a Job exists its pod goes through the cluster's own
//! admission as a dry run: Pod Security refuses pods, not Jobs, and a refused pod would
//! leave a Job that never starts and says nothing to the run.

use coldsite_api::site::{PodSecurityLevel, SCRIPT_SERVICE_ACCOUNT};
use coldsite_engine::fabric::FabricError;
use coldsite_engine::names;
use serde_json::{Value, json};

use crate::kubevirt::dynamic::{NAMESPACE, POD, SERVICE_ACCOUNT, SiteApi, classify, str_at};
use crate::kubevirt::objects::MANAGED_BY;

/// The label Pod Security admission enforces.
pub const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Where one run's Job scripts go on one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    pub namespace: String,
    /// The weakest profile the namespace may enforce.
    pub level: PodSecurityLevel,
    /// Who may allow a weaker profile, for messages.
    weaker: &'static str,
    /// Who makes the namespace when coldsite may not, for messages.
    made_by: &'static str,
}

impl Confinement {
    /// Scripts of management namespace `run_namespace` at a site allowing `level`.
    pub fn at_site(run_namespace: &str, level: PodSecurityLevel) -> Self {
        Self {
            namespace: names::scripts_namespace(run_namespace),
            level,
            weaker: ", or let the Site allow a weaker profile (spec.scriptPodSecurity)",
            made_by: "",
        }
    }

    /// Scripts of management namespace `run_namespace` on the management cluster.
    pub fn on_management(run_namespace: &str) -> Self {
        Self {
            namespace: names::scripts_namespace(run_namespace),
            level: PodSecurityLevel::Restricted,
            weaker: "",
            made_by: "; the chart makes it for each namespace in rbac.managementScripts.namespaces",
        }
    }

    /// Makes the namespace and the ServiceAccount unless they exist, and checks what the
    /// namespace enforces. Reads first: the chart's identity on the management cluster may
    /// only read what the chart made.
    pub async fn prepare(&self, api: &SiteApi) -> Result<(), FabricError> {
        let namespace = api
            .read_or_create(NAMESPACE, &self.namespace_manifest())
            .await
            .map_err(|e| FabricError {
                message: format!("{}{}", e.message, if e.retryable() { "" } else { self.made_by }),
                ..e
            })?;
        self.check(&api.site, &namespace)?;
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": SCRIPT_SERVICE_ACCOUNT, "namespace": self.namespace,
                         "labels": {MANAGED_BY: "coldsite"}}});
        api.read_or_create(SERVICE_ACCOUNT, &account).await.map(|_| ())
    }

    fn namespace_manifest(&self) -> Value {
        let level = self.level.as_str();
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace, "labels": {
            MANAGED_BY: "coldsite",
            ENFORCE: level, "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": level, "pod-security.kubernetes.io/warn-version": "latest",
            "pod-security.kubernetes.io/audit": level, "pod-security.kubernetes.io/audit-version": "latest",
        }}})
    }

    /// Refuses a namespace that enforces less than the profile, naming the fix.
    pub fn check(&self, site: &str, namespace: &Value) -> Result<(), FabricError> {
        let label = str_at(namespace, &format!("/metadata/labels/{}", ENFORCE.replace('/', "~1")));
        match PodSecurityLevel::from_label(label) {
            Some(found) if found >= self.level => Ok(()),
            _ => Err(FabricError::permanent(format!(
                "site {site}: namespace {ns} enforces Pod Security {found}, and scripts run only where at least \
                 {want} is enforced: `kubectl label namespace {ns} {ENFORCE}={want} --overwrite`{weaker}",
                ns = self.namespace,
                found = label.map_or("nothing (no enforce label)".to_owned(), |l| format!("{l:?}")),
                want = self.level.as_str(),
                weaker = self.weaker,
            ))),
        }
    }

    /// The Job's pod through the cluster's admission, without creating anything; a refusal
    /// is permanent and carries the admission's reason (Pod Security names each violation).
    pub async fn admit(&self, api: &SiteApi, action: &str, job: &Value) -> Result<(), FabricError> {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"], "namespace": self.namespace,
                         "labels": job["spec"]["template"]["metadata"]["labels"]},
            "spec": job["spec"]["template"]["spec"]});
        match api.dry_run_create(POD, &pod).await {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Err(FabricError::permanent(format!(
                "action {action}: site {} refuses its pod in namespace {} (Pod Security {} enforced, ServiceAccount \
                 {SCRIPT_SERVICE_ACCOUNT}): {}",
                api.site,
                self.namespace,
                self.level.as_str(),
                s.message
            ))),
            Err(e) => Err(classify(&api.site, &format!("admitting the pod of action {action}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldsite_engine::fabric::FailureKind;

    fn ns(label: Option<&str>) -> Value {
        match label {
            Some(l) => json!({"metadata": {"name": "x", "labels": {ENFORCE: l}}}),
            None => json!({"metadata": {"name": "x"}}),
        }
    }

    #[test]
    fn a_namespace_enforcing_less_than_the_profile_is_refused_with_the_fix() {
        let c = Confinement::at_site("exchange", PodSecurityLevel::Restricted);
        assert_eq!(c.namespace, "coldsite-scripts-exchange");
        assert!(c.check("dr", &ns(Some("restricted"))).is_ok());
        for weaker in [None, Some("baseline"), Some("privileged"), Some("bogus")] {
            let e = c.check("dr", &ns(weaker)).unwrap_err();
            assert_eq!(e.kind, FailureKind::Permanent);
            assert!(
                e.message.contains(
                    "kubectl label namespace coldsite-scripts-exchange pod-security.kubernetes.io/enforce=restricted"
                ),
                "{}",
                e.message
            );
            assert!(e.message.contains("spec.scriptPodSecurity"), "{}", e.message);
        }
    }

    #[test]
    fn a_site_allowing_baseline_accepts_baseline_and_stronger_only() {
        let c = Confinement::at_site("exchange", PodSecurityLevel::Baseline);
        assert!(c.check("dr", &ns(Some("baseline"))).is_ok());
        assert!(c.check("dr", &ns(Some("restricted"))).is_ok());
        assert!(c.check("dr", &ns(Some("privileged"))).is_err());
        assert!(c.check("dr", &ns(None)).is_err());
    }

    #[test]
    fn coldsite_makes_its_namespaces_enforce_the_sites_profile() {
        let c = Confinement::at_site("exchange", PodSecurityLevel::Baseline);
        let made = c.namespace_manifest();
        assert_eq!(made["metadata"]["labels"][ENFORCE], "baseline");
        assert!(c.check("dr", &made).is_ok());
    }

    #[test]
    fn management_scripts_need_their_namespace_to_enforce_restricted() {
        let c = Confinement::on_management("exchange");
        assert_eq!(c.namespace, "coldsite-scripts-exchange");
        let e = c.check("management", &ns(None)).unwrap_err();
        assert!(e.message.contains("enforces Pod Security nothing"), "{}", e.message);
        assert!(!e.message.contains("spec.scriptPodSecurity"), "{}", e.message);
    }
}
