//! Plan actions that run code: Jobs on a site or the management cluster, and webhooks
//! signed with HMAC-SHA256. Both receive the run's context and an idempotency key, so a
//! repeat after a crash has no second effect.

use std::time::Duration;

use coldsite_engine::fabric::{FabricError, FabricResult, Progress, ScriptLocation, ScriptRequest};
use coldsite_engine::model::ActionKind;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::http_client::HttpClient;
use crate::kubevirt::dynamic::{CONFIG_MAP, JOB, SECRET, SiteApi, str_at};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::{self, RUN_UID};

/// Header names of a webhook call.
pub const SIGNATURE_HEADER: &str = "x-coldsite-signature";
pub const IDEMPOTENCY_HEADER: &str = "x-coldsite-idempotency-key";

/// Where scripts find their context inside a Job's containers.
pub const CONTEXT_DIR: &str = "/coldsite";

#[derive(Clone)]
pub struct ScriptRunner {
    pub http: HttpClient,
}

/// `sha256=<hex>` of the body under the key: what the receiver recomputes.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// HMAC accepts keys of any length; this cannot happen.
fn unreachable_hmac() -> Hmac<Sha256> {
    match Hmac::<Sha256>::new_from_slice(b"coldsite") {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

impl ScriptRunner {
    pub async fn run(&self, fabric: &KubeVirtFabric, req: &ScriptRequest<'_>) -> FabricResult<()> {
        match &req.action.kind {
            ActionKind::Job { template, .. } => {
                let site = match &req.location {
                    ScriptLocation::Site(s) => fabric.site(&s.name)?,
                    ScriptLocation::Management => &fabric.management,
                };
                self.job(site, req, template).await
            }
            ActionKind::Webhook {
                url,
                secret,
                request_timeout,
            } => {
                let data = fabric
                    .management
                    .get(SECRET, Some(&req.run.namespace), &secret.name)
                    .await?
                    .ok_or_else(|| {
                        FabricError::permanent(format!(
                            "webhook {}: Secret {}/{} not found",
                            req.action.name, req.run.namespace, secret.name
                        ))
                    })?;
                let key = str_at(&data, &format!("/data/{}", secret.key))
                    .and_then(|b64| serde_json::from_value::<k8s_openapi::ByteString>(json!(b64)).ok())
                    .map(|b| b.0)
                    .ok_or_else(|| {
                        FabricError::permanent(format!(
                            "webhook {}: Secret {} has no key {:?}",
                            req.action.name, secret.name, secret.key
                        ))
                    })?;
                self.webhook(url, &key, req, *request_timeout).await
            }
            ActionKind::Manual { .. } => Err(FabricError::permanent("a manual action is not a script")),
        }
    }

    async fn webhook(&self, url: &str, key: &[u8], req: &ScriptRequest<'_>, timeout: Duration) -> FabricResult<()> {
        let body = serde_json::to_vec(&req.context_json()).map_err(|e| FabricError::permanent(e.to_string()))?;
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", "coldsite-controller")
            .header(IDEMPOTENCY_HEADER, &req.idempotency_key)
            .header(SIGNATURE_HEADER, signature(key, &body))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FabricError::permanent(format!("webhook {}: {e}", req.action.name)))?;
        match self.http.send(request, timeout).await {
            Ok((code, _)) if (200..300).contains(&code) => Ok(Progress::Done(())),
            Ok((code, body)) if code == 408 || code == 429 || code >= 500 => Err(FabricError::transient(format!(
                "webhook {} answered {code}: {}",
                req.action.name,
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            ))),
            Ok((code, body)) => Err(FabricError::permanent(format!(
                "webhook {} answered {code}: {}",
                req.action.name,
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            ))),
            Err(e) => Err(FabricError::transient(format!("webhook {}: {e}", req.action.name))),
        }
    }

    async fn job(
        &self,
        site: &SiteApi,
        req: &ScriptRequest<'_>,
        template: &k8s_openapi::api::batch::v1::JobTemplateSpec,
    ) -> FabricResult<()> {
        let ns = req.run.namespace.as_str();
        let tag = objects::run_tag(&req.run.uid);
        let name = objects::dns_name(&format!("coldsite-{tag}-{}", req.action.name));
        if let Some(job) = site.get(JOB, Some(ns), &name).await? {
            return job_progress(&job, req, &name);
        }
        site.ensure_namespace(ns).await?;
        let context_name = objects::dns_name(&format!("{name}-context"));
        let context =
            serde_json::to_string_pretty(&req.context_json()).map_err(|e| FabricError::permanent(e.to_string()))?;
        let labels =
            json!({RUN_UID: req.run.uid, objects::MANAGED_BY: "coldsite", "coldsite.io/action": req.action.name});
        site.create_if_absent(
            CONFIG_MAP,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": context_name, "namespace": ns, "labels": labels},
                    "data": {"context.json": context}}),
        )
        .await?;
        let job = job_manifest(template, req, ns, &name, &context_name, labels)?;
        let created = site.create_if_absent(JOB, &job).await?;
        job_progress(&created, req, &name)
    }
}

fn job_progress(job: &Value, req: &ScriptRequest<'_>, name: &str) -> FabricResult<()> {
    if str_at(job, &format!("/metadata/labels/{}", RUN_UID.replace('/', "~1"))) != Some(req.run.uid.as_str()) {
        return Err(FabricError::permanent(format!(
            "Job {name} exists and belongs to another run"
        )));
    }
    let conditions = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is = |t: &str| conditions.iter().find(|c| c["type"] == t && c["status"] == "True");
    if is("Complete").is_some() {
        return Ok(Progress::Done(()));
    }
    if let Some(c) = is("Failed") {
        return Err(FabricError::permanent(format!(
            "Job {}/{name} failed: {}: {}",
            req.run.namespace,
            c["reason"].as_str().unwrap_or("Failed"),
            c["message"].as_str().unwrap_or_default()
        )));
    }
    Ok(Progress::InProgress {
        retry_after: Duration::from_secs(3),
    })
}

/// The Job of an action: the plan's template, with the run's context mounted at
/// `/coldsite/context.json` and named in the environment.
fn job_manifest(
    template: &k8s_openapi::api::batch::v1::JobTemplateSpec,
    req: &ScriptRequest<'_>,
    ns: &str,
    name: &str,
    context_name: &str,
    labels: Value,
) -> Result<Value, FabricError> {
    let mut spec = serde_json::to_value(&template.spec).map_err(|e| FabricError::permanent(e.to_string()))?;
    if spec.is_null() {
        return Err(FabricError::permanent(format!(
            "action {}: the Job template has no spec",
            req.action.name
        )));
    }
    let env: Vec<Value> = [
        ("COLDSITE_CONTEXT_FILE", format!("{CONTEXT_DIR}/context.json")),
        (
            "COLDSITE_PLAN",
            req.context["plan"]["name"].as_str().unwrap_or_default().to_owned(),
        ),
        ("COLDSITE_RUN", req.run.name.clone()),
        ("COLDSITE_RUN_UID", req.run.uid.clone()),
        ("COLDSITE_ACTION", req.action.name.clone()),
        (
            "COLDSITE_GROUP",
            req.context["group"].as_str().unwrap_or_default().to_owned(),
        ),
        ("COLDSITE_TEST", req.context["test"].to_string()),
        ("COLDSITE_IDEMPOTENCY_KEY", req.idempotency_key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| json!({"name": k, "value": v}))
    .collect();
    if let Some(containers) = spec
        .pointer_mut("/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for c in containers {
            let e = c.as_object_mut().map(|o| o.entry("env").or_insert_with(|| json!([])));
            if let Some(list) = e.and_then(Value::as_array_mut) {
                list.extend(env.iter().cloned());
            }
            let m = c
                .as_object_mut()
                .map(|o| o.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(list) = m.and_then(Value::as_array_mut) {
                list.push(json!({"name": "coldsite-context", "mountPath": CONTEXT_DIR, "readOnly": true}));
            }
        }
    }
    if let Some(pod) = spec.pointer_mut("/template/spec").and_then(Value::as_object_mut) {
        let v = pod.entry("volumes").or_insert_with(|| json!([]));
        if let Some(list) = v.as_array_mut() {
            list.push(json!({"name": "coldsite-context", "configMap": {"name": context_name}}));
        }
    }
    if spec.get("activeDeadlineSeconds").is_none()
        && let Some(t) = req.action.timeout
    {
        spec["activeDeadlineSeconds"] = json!(t.as_secs());
    }
    let mut all_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .map(|l| json!(l))
        .unwrap_or_else(|| json!({}));
    if let (Some(a), Some(b)) = (all_labels.as_object_mut(), labels.as_object()) {
        a.extend(b.clone());
    }
    Ok(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": all_labels,
                     "annotations": {"coldsite.io/idempotency-key": req.idempotency_key}},
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let s = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
