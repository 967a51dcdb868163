//! Reaching the management cluster as kubectl would: `--kubeconfig` or `$KUBECONFIG`,
//! `--context`, `--cluster`, `--user`, `-n/--namespace`, or the in-cluster config.

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How to reach the management cluster, where coldsite runs.
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE", help_heading = "Cluster options")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME", help_heading = "Cluster options")]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true, value_name = "NAME", help_heading = "Cluster options")]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true, value_name = "NAME", help_heading = "Cluster options")]
    pub user: Option<String>,
    /// The namespace to work in (default: the context's namespace). For validate and
    /// simulate: the namespace of objects that name none (default: `default`).
    #[arg(short, long, global = true, value_name = "NS", help_heading = "Cluster options")]
    pub namespace: Option<String>,
}

/// A client and the namespace to work in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl ClusterArgs {
    pub async fn connect(&self) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await?
            }
            None if self.context.is_some() || self.cluster.is_some() || self.user.is_some() => {
                Config::from_kubeconfig(&options).await?
            }
            None => Config::infer()
                .await
                .context("no cluster to talk to: set KUBECONFIG, pass --kubeconfig, or run in a pod")?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)?;
        Ok(Cluster { client, namespace })
    }
}

/// The field manager that records an approval or a run as this person's: `kubectl-coldsite:`
/// and the user name the API server authenticates us as, or `kubectl-coldsite` when it will
/// not say.
pub async fn field_manager(client: &Client) -> String {
    match whoami(client).await {
        Some(user) => {
            let mut m = format!("kubectl-coldsite:{user}");
            // The API server allows 128 printable characters.
            m.retain(|c| !c.is_control());
            m.chars().take(128).collect()
        }
        None => "kubectl-coldsite".to_owned(),
    }
}

/// The authenticated user name, from a SelfSubjectReview.
pub async fn whoami(client: &Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = SelfSubjectReview::default();
    let answer = api.create(&kube::api::PostParams::default(), &review).await.ok()?;
    answer.status?.user_info?.username.filter(|u| !u.is_empty())
}
