//! KubeVirt's virt-api as far as coldsite calls it: the `freeze` and `unfreeze`
//! subresources of VirtualMachineInstances in the aggregated API `subresources.kubevirt.io/v1`.
//! Played because virt-api would forward them to virt-handler and the guest agent, which need
//! a node.
//!
//! It is served the way KubeVirt serves it: an APIService registered with the site's
//! kube-apiserver ([`registration`]), answered over TLS by this server, which trusts only
//! the aggregation layer's front proxy (the client CA kube-apiserver publishes in
//! `kube-system/extension-apiserver-authentication`). Requests therefore pass the real
//! aggregation layer, authentication and RBAC (`update` on `virtualmachineinstances/freeze`).
//!
//! The guest's state lives at the site, not here, so any number of simulators may share one
//! server: a freeze sets the VMI's `status.fsFreezeStatus` to `frozen` (as virt-handler
//! reports it) and records when the guest thaws by itself ([`THAW_AT`], KubeVirt's
//! `unfreezeTimeout`); the [kubevirt](super::kubevirt) part thaws it then, and the CSI
//! snapshotter marks what it cuts of a frozen guest's disks as quiesced.
//! Followed: `pkg/virt-api/rest/subresource.go` (`FreezeVMIRequestHandler`,
//! `UnfreezeVMIRequestHandler`) of `kubevirt.io/kubevirt` v1.7.0.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;

use super::resources::VIRTUAL_MACHINE_INSTANCE;
use super::util::{self, str_at};
use crate::pki;

pub const GROUP: &str = "subresources.kubevirt.io";
pub const VERSION: &str = "v1";
/// Where KubeVirt installs virt-api; the Service here names this server.
pub const NAMESPACE: &str = "kubevirt";
pub const SERVICE: &str = "virt-api";
/// The VMI annotation with the time (RFC 3339) a frozen guest thaws by itself.
pub const THAW_AT: &str = "sim.coldsite.io/thaw-at";
/// What `status.fsFreezeStatus` shows while the guest's filesystems are frozen.
pub const FROZEN: &str = "frozen";

/// A running server; it lives as long as the process (its thread is detached).
pub struct VirtApi {
    pub port: u16,
    /// The CA of its serving certificate, for the APIService's `caBundle`.
    pub ca_pem: String,
}

impl VirtApi {
    /// Starts serving on loopback for the cluster `kubeconfig_yaml` (admin) reaches, on a
    /// thread of its own: it outlives the tokio runtime of the caller.
    pub fn start(kubeconfig_yaml: String) -> Result<Self> {
        let service_host = format!("{SERVICE}.{NAMESPACE}.svc");
        let (ca, serving) = pki::serving("coldsite-sim-virt-api", &[&service_host, "localhost"])?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding virt-api's port")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name(format!("sim-virt-api-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    if let Err(e) = serve(listener, &kubeconfig_yaml, &serving).await {
                        tracing::error!("simulated virt-api stopped: {e:#}");
                    }
                })
            })?;
        Ok(Self {
            port,
            ca_pem: ca.cert_pem,
        })
    }

    /// What registers this server with the site: KubeVirt's namespace, a Service that
    /// resolves to it, and the APIService.
    pub fn registration(&self) -> Vec<Value> {
        registration(self.port, &self.ca_pem)
    }
}

/// The objects that route `subresources.kubevirt.io/v1` to a server on `port` of this host.
/// The Service is an ExternalName one: kube-apiserver resolves it without endpoints, and
/// verifies the server's certificate for `virt-api.kubevirt.svc`.
pub fn registration(port: u16, ca_pem: &str) -> Vec<Value> {
    use base64::Engine as _;
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                            "labels": {"sim.coldsite.io/simulated": "virt-api"}},
               "spec": {"type": "ExternalName", "externalName": "localhost",
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}}),
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": format!("{VERSION}.{GROUP}")},
               "spec": {"group": GROUP, "version": VERSION,
                        "service": {"namespace": NAMESPACE, "name": SERVICE, "port": port},
                        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                        "groupPriorityMinimum": 1000, "versionPriority": 15}}),
    ]
}

async fn serve(listener: std::net::TcpListener, kubeconfig_yaml: &str, serving: &pki::CertKey) -> Result<()> {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig_yaml).context("parsing the kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&client, serving).await?));
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, client) = (acceptor.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(handle(&client, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// TLS that requires a client certificate from the front proxy, whose CA kube-apiserver
/// publishes for aggregated servers.
async fn tls_config(client: &Client, serving: &pki::CertKey) -> Result<rustls::ServerConfig> {
    let published: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let mut found = None;
    for _ in 0..100 {
        found = published
            .get_opt("extension-apiserver-authentication")
            .await?
            .and_then(|c| c.data?.get("requestheader-client-ca-file").cloned());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = found.ok_or_else(|| anyhow!("kube-apiserver publishes no requestheader client CA"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

type Reply = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `metav1.Status` failure, as virt-api answers errors.
fn failure(code: StatusCode, message: String) -> Reply {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// virt-handler's 400, as virt-api returns it to the caller.
fn handler_error(message: &str) -> Reply {
    failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("Internal error occurred: unexpected return code 400 (400 Bad Request), message: {message}"),
    )
}

fn resource_list() -> Value {
    let sub = |name: &str| {
        json!({"name": format!("virtualmachineinstances/{name}"), "singularName": "", "namespaced": true,
               "kind": "VirtualMachineInstance", "verbs": ["update"]})
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
           "resources": [sub("freeze"), sub("unfreeze")]})
}

async fn handle(client: &Client, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    let user = req
        .headers()
        .get("x-remote-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let prefix = format!("/apis/{GROUP}/{VERSION}");
    if method == Method::GET && path == prefix {
        return reply(StatusCode::OK, &resource_list());
    }
    if method == Method::GET && path == "/apis" {
        // A plain APIGroupList, as virt-api serves: the aggregator then reads the legacy
        // discovery document above.
        let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
        return reply(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [{"name": GROUP, "versions": [version], "preferredVersion": version}]}),
        );
    }
    let Some(rest) = path.strip_prefix(&format!("{prefix}/namespaces/")) else {
        return failure(StatusCode::NOT_FOUND, format!("the server could not find {path}"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (method, parts.as_slice()) {
        (Method::PUT, [ns, "virtualmachineinstances", name, "freeze"]) => {
            tracing::info!(user, "simulated virt-api: freeze {ns}/{name}");
            freeze(client, ns, name, &body).await
        }
        (Method::PUT, [ns, "virtualmachineinstances", name, "unfreeze"]) => {
            tracing::info!(user, "simulated virt-api: unfreeze {ns}/{name}");
            unfreeze(client, ns, name).await
        }
        _ => failure(StatusCode::NOT_FOUND, format!("the server could not find {path}")),
    }
}

/// The running VMI with a connected guest agent, or virt-api's answer when there is none.
async fn agent_vmi(client: &Client, ns: &str, name: &str) -> Result<Value, Reply> {
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(client.clone(), ns);
    let vmi = match vmis.get_opt(name).await {
        Ok(Some(v)) => v.data,
        Ok(None) => {
            return Err(failure(
                StatusCode::NOT_FOUND,
                format!("virtualmachineinstance.kubevirt.io \"{name}\" not found"),
            ));
        }
        Err(e) => return Err(failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if str_at(&vmi, "/status/phase") != Some("Running") {
        return Err(failure(
            StatusCode::CONFLICT,
            format!(
                "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"{name}\": VM is not running"
            ),
        ));
    }
    if !util::condition_true(vmi.pointer("/status/conditions"), "AgentConnected") {
        // virt-handler answers 400 when libvirt's fsfreeze fails; virt-api passes it on as 500.
        return Err(handler_error("guest agent is not connected"));
    }
    Ok(vmi)
}

async fn freeze(client: &Client, ns: &str, name: &str, body: &[u8]) -> Reply {
    let timeout: Duration = match serde_json::from_slice::<Value>(body) {
        Ok(v) => match str_at(&v, "/unfreezeTimeout") {
            Some(text) => match text.parse::<kube::core::Duration>() {
                Ok(d) if !d.is_negative() => d.into(),
                _ => return handler_error("failed to unmarshal unfreeze timeout"),
            },
            None => return handler_error("Unfreeze timeout in freeze request is not set"),
        },
        Err(_) => return handler_error("failed to unmarshal unfreeze timeout"),
    };
    if let Err(reply) = agent_vmi(client, ns, name).await {
        return reply;
    }
    let thaw_at = chrono::Utc::now() + timeout;
    let patch = json!({"metadata": {"annotations": {THAW_AT: thaw_at.to_rfc3339()}},
                       "status": {"fsFreezeStatus": FROZEN}});
    set(client, ns, name, &patch).await
}

async fn unfreeze(client: &Client, ns: &str, name: &str) -> Reply {
    if let Err(reply) = agent_vmi(client, ns, name).await {
        return reply;
    }
    set(client, ns, name, &thaw_patch()).await
}

/// What thaws a guest.
pub fn thaw_patch() -> Value {
    json!({"metadata": {"annotations": {THAW_AT: null}}, "status": {"fsFreezeStatus": null}})
}

async fn set(client: &Client, ns: &str, name: &str, patch: &Value) -> Reply {
    let vmis = VIRTUAL_MACHINE_INSTANCE.namespaced(client.clone(), ns);
    // Like upstream, VMIs have no status subresource.
    match vmis.patch(name, &util::params(), &Patch::Merge(patch)).await {
        Ok(_) => Response::new(Full::new(Bytes::new())),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Whether the guest of a VMI is frozen, as virt-handler reports it.
pub fn frozen(vmi: &Value) -> bool {
    str_at(vmi, "/status/fsFreezeStatus") == Some(FROZEN)
}

/// Whether a frozen guest's `unfreezeTimeout` has passed.
pub fn thaw_due(vmi: &DynamicObject, now: chrono::DateTime<chrono::Utc>) -> bool {
    let thaw_at = vmi.metadata.annotations.as_ref().and_then(|a| a.get(THAW_AT));
    frozen(&vmi.data)
        && thaw_at
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_none_or(|t| t <= now)
}
