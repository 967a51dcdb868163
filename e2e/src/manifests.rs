//! The repository's manifests against a real API server: `crds/` installed once per
//! control plane, and objects from `examples/` created with server-side apply or a plain
//! create, both with strict field validation as `kubectl` asks for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::{NetworkMapping, ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use kube::{Client, Resource};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::ControlPlane;

/// The field manager of everything these helpers write.
pub const FIELD_MANAGER: &str = "coldsite-e2e";

/// How long a CRD may take to become Established.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The root of the source tree (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `.yaml` files under `dir`, recursively, sorted by path.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The non-empty YAML documents of a file, as JSON.
pub fn read_documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    coldsite_api::manifest::parse_documents(&text).with_context(|| format!("{}", path.display()))
}

/// The text of a `# expect: TEXT` line: what a rejection of the manifest must contain.
pub fn expectation(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect:"))
        .map(|e| e.trim().to_owned())
}

/// Whether the object is of a coldsite kind (`coldsite.io/v1alpha1`).
pub fn is_coldsite(object: &Value) -> bool {
    object.get("apiVersion").and_then(Value::as_str) == Some(coldsite_api::API_VERSION)
}

/// The object's `kind`.
pub fn kind_of(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// The object's `metadata.name`.
pub fn name_of(object: &Value) -> Result<&str> {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .with_context(|| format!("{} has no metadata.name", kind_of(object)))
}

fn gvk_of(object: &Value) -> Result<GroupVersionKind> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .context("object has no apiVersion")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind_of(object)))
}

/// The resource of the object's kind and whether it is namespaced. Coldsite kinds come
/// from the types; other kinds are looked up on the server.
pub async fn resource_of(client: &Client, object: &Value) -> Result<(ApiResource, bool)> {
    fn typed<K: Resource<DynamicType = ()>>(namespaced: bool) -> (ApiResource, bool) {
        (ApiResource::erase::<K>(&()), namespaced)
    }
    if is_coldsite(object) {
        return Ok(match kind_of(object) {
            "Site" => typed::<Site>(false),
            "NetworkMapping" => typed::<NetworkMapping>(true),
            "ProtectedVM" => typed::<ProtectedVM>(true),
            "RecoveryPlan" => typed::<RecoveryPlan>(true),
            "RecoveryRun" => typed::<RecoveryRun>(true),
            other => bail!("{other} is not a coldsite kind"),
        });
    }
    let gvk = gvk_of(object)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {gvk:?}"))?;
    Ok((resource, caps.scope == Scope::Namespaced))
}

/// An API for the object's kind, in `namespace` when the kind is namespaced.
pub async fn dynamic_api(
    client: &Client,
    object: &Value,
    namespace: &str,
) -> Result<(Api<DynamicObject>, ApiResource)> {
    let (resource, namespaced) = resource_of(client, object).await?;
    let api = if namespaced {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    Ok((api, resource))
}

/// Server-side apply with strict field validation, forcing conflicts.
pub fn apply_params(field_manager: &str) -> PatchParams {
    PatchParams::apply(field_manager).force().validation_strict()
}

/// Server-side applies `object` (namespaced kinds into `namespace`) as [`FIELD_MANAGER`],
/// with strict field validation. The API error, if any, is returned as is.
pub async fn apply(
    client: &Client,
    object: &Value,
    namespace: &str,
) -> Result<std::result::Result<DynamicObject, kube::Error>> {
    let (api, _) = dynamic_api(client, object, namespace).await?;
    let name = name_of(object)?;
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        && api.namespace().is_some()
    {
        meta.insert("namespace".into(), namespace.into());
    }
    Ok(api
        .patch(name, &apply_params(FIELD_MANAGER), &Patch::Apply(&object))
        .await)
}

/// Creates `object` with a POST and `fieldValidation=Strict`, as `kubectl create` does
/// (kube's `PostParams` cannot ask for strict validation).
pub async fn create_strict(
    client: &Client,
    object: &Value,
    namespace: &str,
) -> Result<std::result::Result<DynamicObject, kube::Error>> {
    let (resource, namespaced) = resource_of(client, object).await?;
    let path = DynamicObject::url_path(&resource, namespaced.then_some(namespace));
    let mut object = object.clone();
    if namespaced && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), namespace.into());
    }
    let request = http::Request::post(format!("{path}?fieldManager={FIELD_MANAGER}&fieldValidation=Strict"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&object)?)?;
    Ok(client.request::<DynamicObject>(request).await)
}

/// The API server's refusal: its HTTP code and message; an error if the request was
/// accepted or failed without an API status.
pub fn refusal<T>(outcome: std::result::Result<T, kube::Error>) -> Result<(u16, String)> {
    match outcome {
        Ok(_) => bail!("the API server accepted the request"),
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        Err(other) => Err(other).context("request failed without an API status"),
    }
}

/// The CRDs of `crds/`, as shipped.
pub fn shipped_crds() -> Result<Vec<CustomResourceDefinition>> {
    yaml_files(&repo_root().join("crds"))?
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

/// Installs `crds/` with server-side apply and waits until each CRD is Established.
/// Done once per control plane in this process; later calls wait for the first.
pub async fn install_crds(cp: &ControlPlane) -> Result<()> {
    static INSTALLED: Mutex<Option<HashMap<String, Arc<OnceCell<()>>>>> = Mutex::new(None);
    let cell = INSTALLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry(cp.server_url().to_owned())
        .or_default()
        .clone();
    cell.get_or_try_init(|| async {
        let client = cp.client().await?;
        let crds = shipped_crds()?;
        apply_crds(&client, &crds).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    Ok(())
}

/// Server-side applies the CRDs and waits until each is Established.
pub async fn apply_crds(client: &Client, crds: &[CustomResourceDefinition]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in crds {
        let name = crd.metadata.name.clone().context("a CRD has no name")?;
        // k8s-openapi serializes apiVersion and kind, which server-side apply needs.
        // The status's message names the rule the server refused.
        api.patch(&name, &apply_params(FIELD_MANAGER), &Patch::Apply(crd))
            .await
            .map_err(|e| anyhow::anyhow!("the API server refused CRD {name}: {e:?}"))?;
        names.push(name);
    }
    let started = Instant::now();
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                break;
            }
            ensure!(
                started.elapsed() < ESTABLISH_TIMEOUT,
                "CRD {name} not Established after {}s: {conditions:?}",
                ESTABLISH_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
