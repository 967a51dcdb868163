//! Typed-enough access to the site APIs coldsite drives without Rust types of its own
//! (KubeVirt, VolSync, CSI snapshots), and the mapping of their errors onto the fabric's.

use coldsite_engine::fabric::FabricError;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::status::MANAGER;

/// A kind at a site.
#[derive(Clone, Copy, Debug)]
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

    /// Server-side apply of the fields coldsite owns.
    pub async fn apply(&self, kind: Kind, object: &Value) -> Result<Value, FabricError> {
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let o = self
            .api(kind, namespace)
            .patch(
                name,
                &PatchParams::apply(MANAGER).force().validation_strict(),
                &Patch::Apply(object),
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

    /// Makes sure a namespace exists, for restored and test VMs.
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), FabricError> {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.read_or_create(NAMESPACE, &ns).await.map(|_| ())
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
