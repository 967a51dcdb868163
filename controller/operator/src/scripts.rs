//! Plan actions that run code: Jobs on a site or the management cluster (confined as
//! `script_confinement` says), and webhooks
//! signed with HMAC-SHA256. Both receive the run's context and an idempotency key, so a
//! repeat after a crash has no second effect. A webhook's signature covers its timestamp,
//! idempotency key and body (receivers reject old timestamps, so a captured request cannot
//! be replayed later); redirects are not followed, and only the answer's status line reaches
//! the run's status.

use std::time::Duration;

use coldsite_api::site::SCRIPT_SERVICE_ACCOUNT;
use coldsite_engine::fabric::{FabricError, FabricResult, Progress, ScriptLocation, ScriptRequest};
use coldsite_engine::model::ActionKind;
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::http_client::HttpClient;
use crate::kubevirt::dynamic::{CONFIG_MAP, JOB, SECRET, SiteApi, str_at};
use crate::kubevirt::fabric::KubeVirtFabric;
use crate::kubevirt::objects::{self, RUN_UID};
use crate::mac::hmac_sha256_hex;
use crate::script_confinement::Confinement;

/// Header names of a webhook call.
pub const SIGNATURE_HEADER: &str = "x-coldsite-signature";
pub const IDEMPOTENCY_HEADER: &str = "x-coldsite-idempotency-key";
pub const TIMESTAMP_HEADER: &str = "x-coldsite-timestamp";

/// Where scripts find their context inside a Job's containers.
pub const CONTEXT_DIR: &str = "/coldsite";

#[derive(Clone)]
pub struct ScriptRunner {
    pub http: HttpClient,
}

/// `v1=<hex>`: HMAC-SHA256 under the key of `v1:<timestamp>:<idempotency key>:<body>`,
/// what the receiver recomputes from the request's headers and body.
pub fn signature(key: &[u8], timestamp: i64, idempotency_key: &str, body: &[u8]) -> String {
    let prefix = format!("v1:{timestamp}:{idempotency_key}:");
    format!("v1={}", hmac_sha256_hex(key, &[prefix.as_bytes(), body]))
}

/// One signed webhook call, as sent.
pub struct WebhookCall<'a> {
    /// The action's name, for messages.
    pub name: &'a str,
    pub url: &'a str,
    pub key: &'a [u8],
    pub idempotency_key: &'a str,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl WebhookCall<'_> {
    /// POSTs the body, signed at the current time. Success is a 2xx; 408, 429 and 5xx are
    /// worth a retry; anything else (a redirect included) is not. Messages carry the status
    /// line only: the answer's body may hold what the plan author must not read through
    /// coldsite.
    pub async fn send(self, http: &HttpClient) -> FabricResult<()> {
        let timestamp = chrono::Utc::now().timestamp();
        let request = http::Request::post(self.url)
            .header("content-type", "application/json")
            .header("user-agent", "coldsite-controller")
            .header(IDEMPOTENCY_HEADER, self.idempotency_key)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                SIGNATURE_HEADER,
                signature(self.key, timestamp, self.idempotency_key, &self.body),
            )
            .body(Full::new(Bytes::from(self.body)))
            .map_err(|e| FabricError::permanent(format!("webhook {}: {e}", self.name)))?;
        let code = match http.send(request, self.timeout).await {
            Ok((code, _)) => code,
            Err(e) => return Err(FabricError::transient(format!("webhook {}: {e}", self.name))),
        };
        let status = http::StatusCode::from_u16(code).map_or_else(
            |_| code.to_string(),
            |s| {
                format!("{code} {}", s.canonical_reason().unwrap_or(""))
                    .trim_end()
                    .to_owned()
            },
        );
        match code {
            200..=299 => Ok(Progress::Done(())),
            408 | 429 | 500.. => Err(FabricError::transient(format!(
                "webhook {} answered {status}",
                self.name
            ))),
            300..=399 => Err(FabricError::permanent(format!(
                "webhook {} answered {status}; redirects are not followed: set webhook.url to the final address",
                self.name
            ))),
            _ => Err(FabricError::permanent(format!(
                "webhook {} answered {status}",
                self.name
            ))),
        }
    }
}

impl ScriptRunner {
    pub async fn run(&self, fabric: &KubeVirtFabric, req: &ScriptRequest<'_>) -> FabricResult<()> {
        match &req.action.kind {
            ActionKind::Job { template, .. } => {
                let ns = req.run.namespace.as_str();
                let (site, confinement) = match &req.location {
                    ScriptLocation::Site(s) => (fabric.site(&s.name)?, Confinement::at_site(ns, s.script_pod_security)),
                    ScriptLocation::Management => (&fabric.management, Confinement::on_management(ns)),
                };
                self.job(site, &confinement, req, template).await
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
        WebhookCall {
            name: &req.action.name,
            url,
            key,
            idempotency_key: &req.idempotency_key,
            body,
            timeout,
        }
        .send(&self.http)
        .await
    }

    async fn job(
        &self,
        site: &SiteApi,
        confinement: &Confinement,
        req: &ScriptRequest<'_>,
        template: &k8s_openapi::api::batch::v1::JobTemplateSpec,
    ) -> FabricResult<()> {
        let ns = confinement.namespace.as_str();
        let tag = objects::run_tag(&req.run.uid);
        let name = objects::dns_name(&format!("coldsite-{tag}-{}", req.action.name));
        if let Some(job) = site.get(JOB, Some(ns), &name).await? {
            return job_progress(&job, req, &name);
        }
        confinement.prepare(site).await?;
        let context_name = objects::dns_name(&format!("{name}-context"));
        let labels =
            json!({RUN_UID: req.run.uid, objects::MANAGED_BY: "coldsite", "coldsite.io/action": req.action.name});
        let job = job_manifest(template, req, ns, &name, &context_name, labels.clone())?;
        confinement.admit(site, &req.action.name, &job).await?;
        let context =
            serde_json::to_string_pretty(&req.context_json()).map_err(|e| FabricError::permanent(e.to_string()))?;
        site.create_if_absent(
            CONFIG_MAP,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": context_name, "namespace": ns, "labels": labels},
                    "data": {"context.json": context}}),
        )
        .await?;
        let created = site.create_if_absent(JOB, &job).await?;
        job_progress(&created, req, &name)
    }
}

fn job_progress(job: &Value, req: &ScriptRequest<'_>, name: &str) -> FabricResult<()> {
    if objects::made_by_run(job) != Some(req.run.uid.as_str()) {
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
        pod.insert("serviceAccountName".into(), json!(SCRIPT_SERVICE_ACCOUNT));
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
    use coldsite_engine::fabric::FailureKind;

    #[test]
    fn the_signature_covers_timestamp_idempotency_key_and_body() {
        // Computed with Python's hmac module, as the README's receiver snippet does.
        let s = signature(
            b"Jefe",
            1_700_000_000,
            "uid-1/mount-databases",
            b"what do ya want for nothing?",
        );
        assert_eq!(s, "v1=2af4f798f9e7e702f089463cff52ae8e1edb35e8188fccf72fa3a23b7119ea6f");
        // A replay with another timestamp or key does not carry a valid signature.
        assert_ne!(
            s,
            signature(
                b"Jefe",
                1_700_000_001,
                "uid-1/mount-databases",
                b"what do ya want for nothing?"
            )
        );
        assert_ne!(
            s,
            signature(
                b"Jefe",
                1_700_000_000,
                "uid-2/mount-databases",
                b"what do ya want for nothing?"
            )
        );
    }

    /// The README's receiver snippet, run by Python, accepts what coldsite signs and refuses
    /// a replay of it six minutes later or under another idempotency key.
    #[test]
    fn the_readme_verification_snippet_accepts_a_signed_call_and_refuses_replays() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
        let start = readme.find("  ```python\n").expect("a python block in the README") + "  ```python\n".len();
        let end = start + readme[start..].find("  ```\n").expect("its end");
        let snippet: String = readme[start..end]
            .lines()
            .map(|l| l.strip_prefix("  ").unwrap_or(l).to_owned() + "\n")
            .collect();
        let now = chrono::Utc::now().timestamp();
        let body = r#"{"run":"exchange-test"}"#;
        // Signed at `signed`; the headers say `sent` and `idem`.
        let check = |signed: i64, sent: i64, idem: &str| {
            let sig = signature(b"key", signed, "uid-1/mount", body.as_bytes());
            let script = format!(
                "{snippet}\nimport sys\nheaders = {{'X-Coldsite-Timestamp': '{sent}', \
                 'X-Coldsite-Idempotency-Key': '{idem}', 'X-Coldsite-Signature': '{sig}'}}\n\
                 sys.exit(0 if verify(b'key', headers, b'{body}') else 1)\n"
            );
            std::process::Command::new("python3")
                .args(["-c", &script])
                .status()
                .expect("python3")
                .success()
        };
        assert!(check(now, now, "uid-1/mount"), "the snippet refuses a valid call");
        assert!(
            !check(now - 360, now - 360, "uid-1/mount"),
            "the snippet accepts a stale timestamp"
        );
        assert!(
            !check(now - 360, now, "uid-1/mount"),
            "the snippet accepts a changed timestamp"
        );
        assert!(
            !check(now, now, "uid-2/mount"),
            "the snippet accepts another idempotency key"
        );
    }

    /// A receiver on loopback answering every request with `status`, `location` and a body
    /// holding a secret; returns its URL and the requests' headers it saw.
    async fn receiver(
        status: u16,
        location: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>) {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        record.lock().expect("lock").push(req.headers().clone());
                        async move {
                            http::Response::builder()
                                .status(status)
                                .header("location", location)
                                .body(Full::new(Bytes::from_static(b"internal: db-password=hunter2")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, seen)
    }

    async fn call(url: &str) -> FabricResult<()> {
        WebhookCall {
            name: "mount",
            url,
            key: b"k",
            idempotency_key: "uid-1/mount",
            body: b"{}".to_vec(),
            timeout: Duration::from_secs(5),
        }
        .send(&HttpClient::new().expect("client"))
        .await
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_no_answer_body_reaches_status() {
        let (target, followed) = receiver(200, "").await;
        let location: &'static str = Box::leak(target.into_boxed_str());
        let (url, seen) = receiver(302, location).await;
        let err = call(&url).await.expect_err("a redirect is refused");
        assert_eq!(err.kind, FailureKind::Permanent, "{err:?}");
        assert!(err.message.contains("answered 302 Found"), "{err:?}");
        assert!(err.message.contains("redirects are not followed"), "{err:?}");
        assert!(!err.message.contains("hunter2"), "{err:?}");
        assert_eq!(seen.lock().expect("lock").len(), 1);
        assert!(followed.lock().expect("lock").is_empty(), "the redirect was followed");

        let (url, _) = receiver(503, "").await;
        let err = call(&url).await.expect_err("503");
        assert_eq!(err.kind, FailureKind::Transient, "{err:?}");
        assert!(err.message.ends_with("answered 503 Service Unavailable"), "{err:?}");
        let (url, _) = receiver(403, "").await;
        let err = call(&url).await.expect_err("403");
        assert_eq!(err.kind, FailureKind::Permanent, "{err:?}");
        assert!(!err.message.contains("hunter2"), "{err:?}");
    }

    #[tokio::test]
    async fn a_call_carries_its_timestamp_key_and_a_signature_over_them() {
        let (url, seen) = receiver(204, "").await;
        call(&url).await.expect("a 2xx succeeds");
        let headers = seen.lock().expect("lock")[0].clone();
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let timestamp: i64 = get(TIMESTAMP_HEADER).parse().expect("a unix timestamp");
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
        assert_eq!(get(IDEMPOTENCY_HEADER), "uid-1/mount");
        assert_eq!(get(SIGNATURE_HEADER), signature(b"k", timestamp, "uid-1/mount", b"{}"));
    }
}
