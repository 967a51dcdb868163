//! `link`: gives the management cluster a kubeconfig for a site. It reads the site identity
//! the chart installs on a site cluster (`siteAccess.create=true`), builds a kubeconfig
//! for it from one of your kubectl contexts, checks that it authenticates, and stores it in
//! the Secret the Site names (or will name) on the management cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coldsite_api::Site;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{
    AuthInfo, Context as KubeContext, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use crate::cluster::{Cluster, whoami};

/// The chart labels the site identity's objects with this component.
const SITE_ACCESS_SELECTOR: &str = "app.kubernetes.io/component=site-access";

#[derive(clap::Args)]
pub struct LinkArgs {
    /// The Site's name, e.g. contoso-hq.
    pub site: String,
    /// Your kubectl context for the site cluster.
    #[arg(long, value_name = "CONTEXT")]
    pub site_context: String,
    /// Where the chart installed the site identity on the site cluster.
    #[arg(long, value_name = "NS", default_value = "coldsite-system")]
    pub site_namespace: String,
    /// The ServiceAccount to use (default: the one the chart labelled site-access).
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// The site's API server URL as the management cluster reaches it (default: the
    /// context's server).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Lifetime of a requested token, when the chart made no long-lived token Secret.
    #[arg(long, default_value = "8760h", value_parser = crate::parse_timeout)]
    pub token_duration: Duration,
    /// Namespace of the Secret when the Site does not exist yet: where the chart lets the
    /// controller read kubeconfigs.
    #[arg(long, value_name = "NS", default_value = "coldsite-system")]
    pub secret_namespace: String,
    /// Do not check that the kubeconfig authenticates (when this machine cannot reach
    /// the --server the management cluster uses).
    #[arg(long)]
    pub no_verify: bool,
}

/// Where the kubeconfig goes: the Secret the Site names, or the default one for a new Site.
struct Target {
    namespace: String,
    name: String,
    key: String,
    site_exists: bool,
}

async fn target(mgmt: &Cluster, a: &LinkArgs) -> anyhow::Result<Target> {
    let sites: Api<Site> = Api::all(mgmt.client.clone());
    match sites.get_opt(&a.site).await.context("reading the Site")? {
        Some(site) => {
            let Some(cluster) = site.spec.cluster else {
                bail!(
                    "Site {} has no spec.cluster: it is the management cluster itself, which needs no kubeconfig",
                    a.site
                );
            };
            let r = cluster.kubeconfig_secret_ref;
            Ok(Target {
                namespace: r.namespace,
                name: r.name,
                key: r.key,
                site_exists: true,
            })
        }
        None => Ok(Target {
            namespace: a.secret_namespace.clone(),
            name: format!("{}-kubeconfig", a.site),
            key: "kubeconfig".into(),
            site_exists: false,
        }),
    }
}

fn read_kubeconfig(path: Option<&PathBuf>) -> anyhow::Result<Kubeconfig> {
    match path {
        Some(p) => Kubeconfig::read_from(p).with_context(|| format!("reading {}", p.display())),
        None => Kubeconfig::read().context("reading your kubeconfig ($KUBECONFIG or ~/.kube/config)"),
    }
}

/// The site's cluster entry for `context`, with its certificate authority embedded.
fn site_cluster(kc: &Kubeconfig, context: &str, server: Option<&str>) -> anyhow::Result<kube::config::Cluster> {
    let Some(ctx) = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
    else {
        let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "--site-context: there is no context {context:?} in your kubeconfig (it has: {})",
            known.join(", ")
        );
    };
    let mut cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| {
            format!(
                "context {context:?} names cluster {:?}, which is not in the kubeconfig",
                ctx.cluster
            )
        })?;
    if cluster.certificate_authority_data.is_none()
        && let Some(file) = cluster.certificate_authority.take()
    {
        let pem = std::fs::read(&file).with_context(|| format!("reading certificate-authority {file}"))?;
        // ByteString serializes as base64, the kubeconfig's encoding for -data fields.
        cluster.certificate_authority_data = serde_json::to_value(ByteString(pem))?.as_str().map(str::to_owned);
    }
    if let Some(s) = server {
        cluster.server = Some(s.to_owned());
    }
    ensure!(
        cluster.server.is_some(),
        "context {context:?} has no server; pass --server"
    );
    cluster.proxy_url = None;
    Ok(cluster)
}

/// The site identity's ServiceAccount: the one named, or the only one the chart labelled.
async fn service_account(site: &Client, a: &LinkArgs) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(site.clone(), &a.site_namespace);
    if let Some(name) = &a.service_account {
        api.get(name).await.with_context(|| {
            format!(
                "ServiceAccount {}/{name} at context {}",
                a.site_namespace, a.site_context
            )
        })?;
        return Ok(name.clone());
    }
    let found: Vec<String> = api
        .list(&ListParams::default().labels(SITE_ACCESS_SELECTOR))
        .await
        .with_context(|| {
            format!(
                "listing ServiceAccounts in {} at context {}",
                a.site_namespace, a.site_context
            )
        })?
        .into_iter()
        .map(|s| s.name_any())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no coldsite site identity in namespace {} at context {}: install it there with\n  \
             helm --kube-context {} install coldsite charts/coldsite -n {} --create-namespace --skip-crds \
             --set controller.enabled=false --set siteAccess.create=true\n\
             or name another ServiceAccount with --service-account",
            a.site_namespace,
            a.site_context,
            a.site_context,
            a.site_namespace
        ),
        many => bail!(
            "several site identities in {} at context {}: {}; choose one with --service-account",
            a.site_namespace,
            a.site_context,
            many.join(", ")
        ),
    }
}

/// A token for the ServiceAccount: the chart's long-lived token Secret when there is one
/// (waiting briefly for the token controller to fill it), else a TokenRequest.
async fn token(site: &Client, a: &LinkArgs, sa: &str) -> anyhow::Result<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(site.clone(), &a.site_namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ours: Vec<Secret> = secrets
            .list(&ListParams::default().labels(SITE_ACCESS_SELECTOR))
            .await
            .with_context(|| format!("listing Secrets in {} at context {}", a.site_namespace, a.site_context))?
            .into_iter()
            .filter(|s| {
                s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                    && s.annotations()
                        .get("kubernetes.io/service-account.name")
                        .map(String::as_str)
                        == Some(sa)
            })
            .collect();
        let Some(secret) = ours.first() else { break };
        let filled = secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .filter(|t| !t.is_empty());
        if let Some(t) = filled {
            return Ok((
                t,
                format!(
                    "the long-lived token of Secret {}/{} (delete that Secret to revoke it)",
                    a.site_namespace,
                    secret.name_any()
                ),
            ));
        }
        ensure!(
            Instant::now() < deadline,
            "Secret {}/{} has no token yet: is the token controller of kube-controller-manager running at context {}?",
            a.site_namespace,
            secret.name_any(),
            a.site_context
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(a.token_duration.as_secs() as i64),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(site.clone(), &a.site_namespace)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {}/{sa}", a.site_namespace))?;
    let status = answer.status.context("the TokenRequest has no status")?;
    Ok((
        status.token,
        format!(
            "a token that expires at {} (run link again before then)",
            status.expiration_timestamp.0
        ),
    ))
}

/// A kubeconfig for `user` with `token` at `cluster`, named after the site.
fn kubeconfig(site: &str, cluster: kube::config::Cluster, user: &str, token: String) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: site.to_owned(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.to_owned(),
            auth_info: Some(AuthInfo {
                token: Some(token.into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: site.to_owned(),
            context: Some(KubeContext {
                cluster: site.to_owned(),
                user: Some(user.to_owned()),
                ..KubeContext::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(site.to_owned()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    }
}

/// `kubeconfig`: the file the contexts come from (None: $KUBECONFIG, ~/.kube/config).
pub async fn link(mgmt: &Cluster, kubeconfig_file: Option<&PathBuf>, a: &LinkArgs) -> anyhow::Result<bool> {
    let target = target(mgmt, a).await?;
    let kc = read_kubeconfig(kubeconfig_file)?;
    let cluster = site_cluster(&kc, &a.site_context, a.server.as_deref())?;
    let options = KubeConfigOptions {
        context: Some(a.site_context.clone()),
        ..KubeConfigOptions::default()
    };
    let site = Client::try_from(Config::from_custom_kubeconfig(kc, &options).await?)?;
    let sa = service_account(&site, a).await?;
    let (token, token_origin) = token(&site, a, &sa).await?;
    let server = cluster.server.clone().unwrap_or_default();
    let built = kubeconfig(&a.site, cluster, &format!("coldsite-{}", a.site), token);
    let yaml = serde_yaml_ng::to_string(&built)?;

    let expected = format!("system:serviceaccount:{}:{sa}", a.site_namespace);
    if !a.no_verify {
        let config = Config::from_custom_kubeconfig(built, &KubeConfigOptions::default()).await?;
        let me = whoami(&Client::try_from(config)?).await;
        ensure!(
            me.as_deref() == Some(expected.as_str()),
            "the kubeconfig built for {} does not authenticate at {server} as {expected} (the server says: {}); \
             if the management cluster reaches the site by another address, pass it with --server, \
             and --no-verify when this machine cannot reach that address",
            a.site,
            me.unwrap_or_else(|| "no answer".into())
        );
    }

    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": target.name, "namespace": target.namespace,
                     "labels": {"app.kubernetes.io/part-of": "coldsite", "coldsite.io/site": a.site}},
        "type": "Opaque",
        "stringData": {target.key.clone(): yaml},
    });
    Api::<Secret>::namespaced(mgmt.client.clone(), &target.namespace)
        .patch(
            &target.name,
            &PatchParams::apply("kubectl-coldsite").force(),
            &Patch::Apply(&secret),
        )
        .await
        .with_context(|| format!("writing Secret {}/{}", target.namespace, target.name))?;

    println!(
        "secret/{} written in namespace {} (key {}): ServiceAccount {}/{sa} at {server} (context {}), with {token_origin}",
        target.name, target.namespace, target.key, a.site_namespace, a.site_context
    );
    if !a.no_verify {
        println!("checked: it authenticates there as {expected}");
    }
    if target.site_exists {
        println!(
            "Site {} names this Secret; the controller picks it up on its next reconcile",
            a.site
        );
    } else {
        println!(
            "Site {} does not exist yet: its spec.cluster.kubeconfigSecretRef must be \
             {{namespace: {}, name: {}, key: {}}}",
            a.site, target.namespace, target.name, target.key
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig_with_ca_file(ca: &std::path::Path) -> Kubeconfig {
        Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: hq-cluster\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user:\n    token: t\n\
             contexts:\n- name: hq\n  context:\n    cluster: hq-cluster\n    user: admin\n\
             current-context: hq\n",
            ca.display()
        ))
        .unwrap()
    }

    #[test]
    fn the_site_cluster_is_taken_from_the_context_with_its_ca_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n").unwrap();
        let kc = kubeconfig_with_ca_file(&ca);
        let c = site_cluster(&kc, "hq", None).unwrap();
        assert_eq!(c.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(c.certificate_authority, None, "a file path means nothing in a Secret");
        let data: ByteString = serde_json::from_value(json!(c.certificate_authority_data.unwrap())).unwrap();
        assert_eq!(data.0, std::fs::read(&ca).unwrap());
        let c = site_cluster(&kc, "hq", Some("https://hq.example:6443")).unwrap();
        assert_eq!(c.server.as_deref(), Some("https://hq.example:6443"));
        let err = site_cluster(&kc, "dr", None).unwrap_err().to_string();
        assert!(
            err.contains("--site-context") && err.contains("\"dr\"") && err.contains("it has: hq"),
            "{err}"
        );
    }

    #[test]
    fn the_built_kubeconfig_authenticates_with_the_token_only() {
        let cluster = kube::config::Cluster {
            server: Some("https://10.0.0.1:6443".into()),
            certificate_authority_data: Some("Y2E=".into()),
            ..Default::default()
        };
        let yaml = serde_yaml_ng::to_string(&kubeconfig(
            "contoso-hq",
            cluster,
            "coldsite-contoso-hq",
            "s3cret".into(),
        ))
        .unwrap();
        let back = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(back.current_context.as_deref(), Some("contoso-hq"));
        let user = back.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.client_certificate_data.is_none() && user.exec.is_none());
        assert!(yaml.contains("token: s3cret"), "{yaml}");
    }
}
