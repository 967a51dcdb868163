//! The Helm chart (`charts/coldsite`) against a real control plane: `helm` and `kubectl`
//! runs with their output checked, ServiceAccount tokens (TokenRequest and token Secrets),
//! and kubeconfigs that authenticate with such a token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::ControlPlane;
use crate::manifests::repo_root;

/// `charts/coldsite`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/coldsite")
}

/// Runs `cmd` (with `stdin` piped in when given) and returns its stdout; a failure carries
/// the command line, the exit status and stderr.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String> {
    let line = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("starting {line}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("stdin")?;
        // Written from a thread: a large input must not deadlock against a full stdout pipe.
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let out = child.wait_with_output().with_context(|| format!("running {line}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{line} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    Ok(stdout)
}

/// `helm <args>` against `cp`.
pub fn helm(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let mut cmd = cp.helm();
    cmd.args(args);
    run(cmd, None)
}

/// `kubectl <args>` against `cp`, with `stdin` when given.
pub fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = cp.kubectl();
    cmd.args(args);
    run(cmd, stdin)
}

/// A token for a ServiceAccount from the TokenRequest API (`serviceaccounts/token`).
pub async fn request_token(admin: &Client, namespace: &str, service_account: &str, seconds: i64) -> Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(seconds),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{service_account}"))?;
    let token = answer.status.map(|s| s.token).unwrap_or_default();
    if token.is_empty() {
        bail!("TokenRequest for {namespace}/{service_account} returned no token");
    }
    Ok(token)
}

/// A kubeconfig for `cp` (its server and CA) that authenticates with a bearer token.
pub fn token_kubeconfig(cp: &ControlPlane, user: &str, token: &str) -> Result<String> {
    let admin = Kubeconfig::from_yaml(cp.kubeconfig_yaml()).context("parsing the admin kubeconfig")?;
    let ca = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("the admin kubeconfig has no CA")?;
    let name = format!("{}-{user}", cp.name());
    Ok([
        "apiVersion: v1".to_owned(),
        "kind: Config".to_owned(),
        "clusters:".to_owned(),
        format!("- name: \"{name}\""),
        "  cluster:".to_owned(),
        format!("    server: \"{}\"", cp.server_url()),
        format!("    certificate-authority-data: {ca}"),
        "users:".to_owned(),
        format!("- name: \"{user}\""),
        "  user:".to_owned(),
        format!("    token: \"{token}\""),
        "contexts:".to_owned(),
        format!("- name: \"{name}\""),
        "  context:".to_owned(),
        format!("    cluster: \"{name}\""),
        format!("    user: \"{user}\""),
        format!("current-context: \"{name}\""),
        String::new(),
    ]
    .join("\n"))
}

/// Writes a kubeconfig readable by its owner only.
pub fn write_kubeconfig(path: &Path, yaml: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(yaml.as_bytes())?;
    Ok(())
}

/// A client from a kubeconfig's text.
pub async fn client_from(kubeconfig: &str) -> Result<Client> {
    let kc = Kubeconfig::from_yaml(kubeconfig).context("parsing a kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Client::try_from(config).context("building a client")
}

/// `coldsite-controller` run as the chart's Deployment would run it, where no kubelet can:
/// a process with a TokenRequest token of the Deployment's ServiceAccount and the
/// Deployment's own arguments (leader election in the release namespace under
/// `identity`). Returns the process and the token's kubeconfig.
pub async fn start_chart_controller(
    cp: &ControlPlane,
    release_ns: &str,
    deployment: &str,
    binary: &Path,
    identity: &str,
) -> Result<(crate::exchange::ControllerProcess, String)> {
    use k8s_openapi::api::apps::v1::Deployment;
    let admin = cp.client().await?;
    let pod = Api::<Deployment>::namespaced(admin.clone(), release_ns)
        .get(deployment)
        .await
        .with_context(|| format!("reading Deployment {release_ns}/{deployment}"))?
        .spec
        .and_then(|s| s.template.spec)
        .context("the Deployment has no pod template")?;
    let service_account = pod.service_account_name.clone().unwrap_or_else(|| "default".into());
    let args: Vec<String> = pod
        .containers
        .into_iter()
        .next()
        .and_then(|c| c.args)
        .context("the Deployment's container args")?
        .into_iter()
        .filter(|a| !a.starts_with("--metrics-address"))
        .chain([
            "--lease-namespace".into(),
            release_ns.to_owned(),
            "--identity".into(),
            identity.to_owned(),
        ])
        .collect();
    let token = request_token(&admin, release_ns, &service_account, 3600).await?;
    let kubeconfig_text = token_kubeconfig(cp, &service_account, &token)?;
    let kubeconfig = cp
        .dir()
        .join(format!("{release_ns}-{deployment}-{identity}.kubeconfig"));
    write_kubeconfig(&kubeconfig, &kubeconfig_text)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = cp.dir().join(format!("controller-{release_ns}-{identity}.log"));
    let process = crate::exchange::ControllerProcess::start(binary, &kubeconfig, log, &args)?;
    Ok((process, kubeconfig_text))
}
