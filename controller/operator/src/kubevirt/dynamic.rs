//! Typed-enough access to the site APIs coldsite drives without Rust types of its own
//! (KubeVirt, VolSync, CSI snapshots), and the mapping of their errors onto the fabric's.

use chrono::{DateTime, Utc};
use coldsite_engine::fabric::FabricError;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::kubevirt::points::SnapshotPoint;
use crate::status::MANAGER;

/// A kind at a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

pub const VM: Kind = Kind {
    group: "kubevirt.io",
    version: "v1",
    kind: "VirtualMachine",
    plural: "virtualmachines",
};
pub const VMI: Kind = Kind {
    group: "kubevirt.io",
    version: "v1",
    kind: "VirtualMachineInstance",
    plural: "virtualmachineinstances",
};
pub const REPLICATION_SOURCE: Kind = Kind {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationSource",
    plural: "replicationsources",
};
pub const REPLICATION_DESTINATION: Kind = Kind {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationDestination",
    plural: "replicationdestinations",
};
pub const VOLUME_SNAPSHOT: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshot",
    plural: "volumesnapshots",
};
pub const VOLUME_SNAPSHOT_CONTENT: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshotContent",
    plural: "volumesnapshotcontents",
};
/// external-snapshotter's group snapshots (v8.3 and later serve `v1beta2`).
pub const VOLUME_GROUP_SNAPSHOT: Kind = Kind {
    group: "groupsnapshot.storage.k8s.io",
    version: "v1beta2",
    kind: "VolumeGroupSnapshot",
    plural: "volumegroupsnapshots",
};
pub const PVC: Kind = Kind {
    group: "",
    version: "v1",
    kind: "PersistentVolumeClaim",
    plural: "persistentvolumeclaims",
};
pub const SECRET: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
};
pub const CONFIG_MAP: Kind = Kind {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
};
pub const JOB: Kind = Kind {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
};
pub const SERVICE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
};
pub const SERVICE_ACCOUNT: Kind = Kind {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
};
pub const POD: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
};
pub const NAMESPACE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
};

impl Kind {
    pub(crate) fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.group, self.version, self.kind), self.plural)
    }
}

/// One site's API, by name for messages.
#[derive(Clone)]
pub struct SiteApi {
    pub site: String,
    pub client: Client,
    /// The site's watches, for reads that tolerate a cache a moment behind.
    pub watch: Option<std::sync::Arc<crate::site_watch::SiteWatch>>,
}

impl SiteApi {
    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = kind.resource();
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn err(&self, what: String) -> impl FnOnce(kube::Error) -> FabricError + '_ {
        move |e| classify(&self.site, &what, e)
    }

    pub async fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Option<Value>, FabricError> {
        let found = self
            .api(kind, namespace)
            .get_opt(name)
            .await
            .map_err(self.err(format!("reading {} {}", kind.kind, name)))?;
        Ok(found.map(to_value))
    }

    pub async fn list(&self, kind: Kind, namespace: Option<&str>, selector: &str) -> Result<Vec<Value>, FabricError> {
        let list = self
            .api(kind, namespace)
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(self.err(format!("listing {} {selector}", kind.plural)))?;
        Ok(list.items.into_iter().map(to_value).collect())
    }

    /// One object coldsite labelled (see [`crate::site_watch`]), from the site's watch once it
    /// has listed that kind, else read now: at most a moment behind, for decisions a later
    /// pass corrects. An object without coldsite's labels may read as absent.
    pub async fn get_labelled(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, FabricError> {
        match self.watched(kind, namespace, name) {
            Some(cached) => Ok(cached),
            None => self.get(kind, Some(namespace), name).await,
        }
    }

    /// A VirtualMachine from the site's watch once it has listed them (every namespace), else
    /// read now: at most a moment behind, for decisions a later look corrects.
    pub async fn get_vm(&self, namespace: &str, name: &str) -> Result<Option<Value>, FabricError> {
        match self.watch.as_ref().and_then(|w| w.vm(namespace, name)) {
            Some(cached) => Ok(cached),
            None => self.get(VM, Some(namespace), name).await,
        }
    }

    /// A PVC from the site's watch once it has listed them; one the watch does not show yet
    /// (just made) is read now, so a disk is never taken for missing on a watch's delay.
    pub async fn get_pvc(&self, namespace: &str, name: &str) -> Result<Option<Value>, FabricError> {
        match self.watch.as_ref().and_then(|w| w.disk(namespace, name)) {
            Some(Some(cached)) => Ok(Some(cached)),
            _ => self.get(PVC, Some(namespace), name).await,
        }
    }

    /// What `read` makes of each VirtualMachine of a namespace, from the site's watch once it
    /// has listed them, else listed now; made as each is read.
    pub async fn read_vms<T>(
        &self,
        namespace: &str,
        mut read: impl FnMut(Value) -> Option<T>,
    ) -> Result<Vec<T>, FabricError> {
        if let Some(watch) = &self.watch
            && let Some(cached) = watch.read_vms(namespace, &mut read)
        {
            return Ok(cached);
        }
        Ok(self
            .list(VM, Some(namespace), "")
            .await?
            .into_iter()
            .filter_map(read)
            .collect())
    }

    /// An object coldsite labels as the site's watch shows it (a VolumeSnapshot's metadata
    /// only); `None` when there is no watch of its kind or it has not listed yet.
    pub fn watched(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        self.watch.as_ref()?.labelled(kind, namespace, name)
    }

    /// One of VolSync's snapshots not yet adopted, from the site's watch once it has listed
    /// them, else read now: one the watch does not show (just made, or just adopted) is read.
    pub async fn get_image(&self, namespace: &str, name: &str) -> Result<Option<Value>, FabricError> {
        match self.watch.as_ref().and_then(|w| w.image(namespace, name)) {
            Some(Some(image)) => Ok(Some(image)),
            _ => self.get(VOLUME_SNAPSHOT, Some(namespace), name).await,
        }
    }

    /// A Service VolSync made, from the site's watch once it has listed them, else read now.
    /// One the watch does not show yet reads as absent: it only explains a wait, and the
    /// next look explains it again.
    pub async fn get_volsync_service(&self, namespace: &str, name: &str) -> Result<Option<Value>, FabricError> {
        match self.watch.as_ref().and_then(|w| w.volsync_service(namespace, name)) {
            Some(cached) => Ok(cached),
            None => self.get(SERVICE, Some(namespace), name).await,
        }
    }

    /// A disk's recovery points, oldest first, from the site's watch; `None` until it has
    /// listed them (or without a watch).
    pub fn watched_points(&self, namespace: &str, pvm: &str, disk: &str) -> Option<Vec<SnapshotPoint>> {
        self.watch.as_ref()?.points(namespace, pvm, disk)
    }

    /// What `read` makes of each object coldsite labelled in a namespace that also carries
    /// `labels`, made as each is read, as [`Self::get_labelled`]: no LIST per reconcile once
    /// the watch has listed.
    pub async fn read_labelled<T>(
        &self,
        kind: Kind,
        namespace: &str,
        labels: &[(&str, &str)],
        mut read: impl FnMut(Value) -> Option<T>,
    ) -> Result<Vec<T>, FabricError> {
        if let Some(watch) = &self.watch
            && let Some(cached) = watch.read_labelled(kind, namespace, labels, &mut read)
        {
            return Ok(cached);
        }
        let selector = labels
            .iter()
            .fold(crate::kubevirt::objects::managed_selector(), |s, (k, v)| {
                format!("{s},{k}={v}")
            });
        Ok(self
            .list(kind, Some(namespace), &selector)
            .await?
            .into_iter()
            .filter_map(read)
            .collect())
    }

    /// Creates the object unless one of that name exists; returns what is there. Like every
    /// write of coldsite's at a site, with strict field validation: a field the site's
    /// schema does not know is an error, not silently dropped.
    pub async fn create_if_absent(&self, kind: Kind, object: &Value) -> Result<Value, FabricError> {
        let (namespace, name) = namespace_and_name(object);
        match self.post(kind, object, "").await {
            Ok(o) => Ok(to_value(o)),
            Err(kube::Error::Api(s)) if s.code == 409 => self
                .get(kind, namespace, name)
                .await?
                .ok_or_else(|| FabricError::transient(format!("{} {name} vanished after a conflict", kind.kind))),
            Err(e) => Err(classify(&self.site, &format!("creating {} {name}", kind.kind), e)),
        }
    }

    /// Creates the object unless one of that name exists, without reading it: for what
    /// coldsite may write but not read (the replication keys).
    pub async fn create_unless_exists(&self, kind: Kind, object: &Value) -> Result<(), FabricError> {
        match self.post(kind, object, "").await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => {
                let (_, name) = namespace_and_name(object);
                Err(classify(&self.site, &format!("creating {} {name}", kind.kind), e))
            }
        }
    }

    /// Puts the object through the site's admission without creating it (`dryRun=All`).
    pub async fn dry_run_create(&self, kind: Kind, object: &Value) -> Result<(), kube::Error> {
        self.post(kind, object, "&dryRun=All").await.map(|_| ())
    }

    async fn post(&self, kind: Kind, object: &Value, query: &str) -> Result<DynamicObject, kube::Error> {
        let (namespace, _) = namespace_and_name(object);
        let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
        let path = <DynamicObject as kube::Resource>::url_path(&kind.resource(), namespace);
        // kube's PostParams cannot ask for strict validation.
        let request = http::Request::post(format!("{path}?fieldManager={MANAGER}&fieldValidation=Strict{query}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(kube::Error::HttpError)?;
        self.client.request::<DynamicObject>(request).await
    }

    /// A PUT to a subresource of a VirtualMachineInstance in KubeVirt's aggregated API
    /// (`subresources.kubevirt.io/v1`: `freeze`, `unfreeze`), which virt-api answers.
    pub async fn vmi_subresource(
        &self,
        namespace: &str,
        vmi: &str,
        sub: &str,
        body: &Value,
    ) -> Result<(), kube::Error> {
        let path =
            format!("/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{vmi}/{sub}");
        let request = http::Request::put(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).map_err(kube::Error::SerdeError)?)
            .map_err(kube::Error::HttpError)?;
        self.client.request_text(request).await.map(|_| ())
    }

    /// Server-side apply of the fields coldsite owns, unless the live object already holds
    /// every one of them as given: a steady reconcile reads, and writes nothing. The object
    /// carries a digest of what was applied ([`APPLIED`]), so a field coldsite stops setting
    /// is noticed too, and removed by the next apply.
    pub async fn apply(&self, kind: Kind, object: &Value) -> Result<Value, FabricError> {
        let (namespace, name) = namespace_and_name(object);
        let desired = with_digest(object);
        match self.get(kind, namespace, name).await? {
            Some(live) if holds(&live, &desired) => Ok(live),
            _ => self.server_side_apply(kind, &desired).await,
        }
    }

    /// [`Self::apply`] of an object coldsite labels, reading what is live from the site's
    /// watch once it has listed (a watch a change behind costs one write that changes nothing).
    pub async fn apply_labelled(&self, kind: Kind, object: &Value) -> Result<Value, FabricError> {
        let (namespace, name) = namespace_and_name(object);
        let desired = with_digest(object);
        match self.watched(kind, namespace.unwrap_or_default(), name) {
            Some(Some(live)) if holds(&live, &desired) => Ok(live),
            Some(_) => self.server_side_apply(kind, &desired).await,
            None => self.apply(kind, object).await,
        }
    }

    async fn server_side_apply(&self, kind: Kind, desired: &Value) -> Result<Value, FabricError> {
        let (namespace, name) = namespace_and_name(desired);
        let o = self
            .api(kind, namespace)
            .patch(
                name,
                &PatchParams::apply(MANAGER).force().validation_strict(),
                &Patch::Apply(desired),
            )
            .await
            .map_err(self.err(format!("applying {} {name}", kind.kind)))?;
        Ok(to_value(o))
    }

    pub async fn merge(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Option<Value>, FabricError> {
        match self
            .api(kind, namespace)
            .patch(name, &strict(), &Patch::Merge(patch))
            .await
        {
            Ok(o) => Ok(Some(to_value(o))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(classify(&self.site, &format!("patching {} {name}", kind.kind), e)),
        }
    }

    /// A merge patch that applies only while the object is at `version`; `false` when it
    /// changed meanwhile (or is gone), to be read again.
    pub async fn merge_at_version(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        version: &str,
        patch: &Value,
    ) -> Result<bool, FabricError> {
        let mut patch = patch.clone();
        patch["metadata"]["resourceVersion"] = Value::from(version);
        match self
            .api(kind, namespace)
            .patch(name, &strict(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
            Err(e) => Err(classify(&self.site, &format!("patching {} {name}", kind.kind), e)),
        }
    }

    pub async fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<(), FabricError> {
        match self
            .api(kind, namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(&self.site, &format!("deleting {} {name}", kind.kind), e)),
        }
    }

    /// Makes sure a namespace exists, for restored and test VMs; one seen lately is not read.
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), FabricError> {
        if self.watch.as_ref().is_some_and(|w| w.namespace_seen(name)) {
            return Ok(());
        }
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.read_or_create(NAMESPACE, &ns).await?;
        if let Some(w) = &self.watch {
            w.saw_namespace(name);
        }
        Ok(())
    }

    /// What exists under the object's name, else the object, created. Reads first, so an
    /// identity that may only read what an administrator made needs no right to create it.
    pub async fn read_or_create(&self, kind: Kind, object: &Value) -> Result<Value, FabricError> {
        let (namespace, name) = namespace_and_name(object);
        match self.get(kind, namespace, name).await? {
            Some(found) => Ok(found),
            None => self.create_if_absent(kind, object).await,
        }
    }
}

/// Merge patches under coldsite's field manager, with strict field validation.
fn strict() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    }
    .validation_strict()
}

/// Annotation with the digest of what coldsite last applied to an object.
pub const APPLIED: &str = "coldsite.io/applied";

/// The object with the digest of its JSON in the [`APPLIED`] annotation.
fn with_digest(object: &Value) -> Value {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    let mut desired = object.clone();
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        annotations[APPLIED] = Value::String(hex::encode(&Sha256::digest(&bytes)[..12]));
    }
    desired
}

/// Whether `live` holds every field of `desired` with the same value: objects by key,
/// lists item by item and of the same length.
pub fn holds(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, v)| l.get(k).is_some_and(|lv| holds(lv, v))),
        (Value::Array(l), Value::Array(d)) => l.len() == d.len() && l.iter().zip(d).all(|(a, b)| holds(a, b)),
        (l, d) => l == d,
    }
}

fn namespace_and_name(object: &Value) -> (Option<&str>, &str) {
    (
        object.pointer("/metadata/namespace").and_then(Value::as_str),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// An API error in fabric terms: 5xx, 429 and conflicts are worth retrying; other 4xx are
/// not; no answer at all means the site is unreachable.
pub fn classify(site: &str, what: &str, e: kube::Error) -> FabricError {
    match e {
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 || s.code == 409 => {
            FabricError::transient(format!("site {site}: {what}: {} ({})", s.message, s.code))
        }
        kube::Error::Api(s) => FabricError::permanent(format!("site {site}: {what}: {} ({})", s.message, s.code)),
        other => FabricError::unreachable(format!("site {site}: {what}: {other}")),
    }
}

/// A string at a JSON pointer.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// A timestamp as the API writes them (RFC 3339).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// The timestamp at `pointer`.
pub fn time_at(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    str_at(v, pointer).and_then(parse_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_holds_what_was_applied_whatever_else_it_carries() {
        let desired = json!({"metadata": {"name": "d", "labels": {"a": "1"}},
                             "spec": {"ports": [{"port": 80}], "mode": "x"}});
        let live = json!({"metadata": {"name": "d", "uid": "u", "labels": {"a": "1", "b": "2"}},
                          "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "mode": "x"},
                          "status": {"address": "10.0.0.1"}});
        assert!(holds(&live, &desired));
        let changed = |pointer: &str, v: Value| {
            let mut l = live.clone();
            *l.pointer_mut(pointer).unwrap() = v;
            holds(&l, &desired)
        };
        assert!(!changed("/spec/mode", json!("y")), "a changed value is re-applied");
        assert!(!changed("/metadata/labels/a", json!("2")));
        assert!(
            !changed("/spec/ports", json!([{"port": 80}, {"port": 81}])),
            "lists compare whole"
        );
        assert!(
            !holds(&json!({"metadata": {"name": "d"}}), &desired),
            "a missing field is re-applied"
        );
    }

    #[test]
    fn a_field_no_longer_wanted_changes_the_digest_so_it_is_applied_away() {
        let before = with_digest(&json!({"metadata": {"name": "d"}, "spec": {"pvc": "disk", "mode": "x"}}));
        let now = with_digest(&json!({"metadata": {"name": "d"}, "spec": {"mode": "x"}}));
        assert!(!holds(&before, &now), "the live object still has spec.pvc: apply again");
        assert!(holds(&now, &now));
    }
}
