//! VolSync's rsync-TLS mover containers, which need a network and disks: the simulated
//! kubelet runs them through here. Followed: `mover-rsync-tls/client.sh` and `server.sh` of
//! `github.com/backube/volsync` v0.14.0. VolSync's controller itself is real.
//!
//! - **Server** (the destination's mover): listens until a client has completed a transfer
//!   into its volume, then exits 0 after
//!   [`SimConfig::mover_exit_delay`](super::SimConfig::mover_exit_delay) (or the site's
//!   `slow_mover_exit` fault); server.sh waits for the client's "complete" signal the same
//!   way. It never exits on its own otherwise.
//! - **Client** (the source's mover): connects to `DESTINATION_ADDRESS`:`DESTINATION_PORT`
//!   (8000 by default) through the [network]: the address must reach a
//!   Service whose selector matches a running server, and both movers' `psk.txt` must be
//!   equal, as TLS-PSK requires. Then, after
//!   [`SimConfig::sync_duration`](super::SimConfig::sync_duration), the destination volume
//!   holds exactly the source volume's data, the server is told the transfer is complete,
//!   and the client exits 0. A client that reaches no server within
//!   [`SimConfig::mover_retry_window`](super::SimConfig::mover_retry_window) (client.sh
//!   tries five times over about a minute) exits 1, and VolSync retries with a new Job.
//!   A client whose ReplicationSource is `stalled` (a fault) never connects.

use std::sync::Arc;

use anyhow::{Context, Result};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch};
use serde_json::json;

use super::disk;
use super::network;
use super::util;
use super::{Ctx, SiteState};

/// The server pod annotation that stands for server.sh's control file `complete`.
const COMPLETE: &str = "sim.coldsite.io/transfer-complete";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// Which end of a transfer a mover pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// The role of a VolSync rsync-TLS mover pod, from its labels and command.
pub(crate) fn role(pod: &Pod) -> Option<Role> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(COMPONENT_LABEL).map(String::as_str) != Some("rsync-tls-mover") {
        return None;
    }
    let command = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.command.iter().flatten().chain(c.args.iter().flatten()))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    if command.contains("client.sh") {
        Some(Role::Client)
    } else if command.contains("server.sh") {
        Some(Role::Server)
    } else {
        None
    }
}

fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The claim and Secret a mover mounts as `data` and `keys`.
fn volumes(pod: &Pod) -> (Option<String>, Option<String>) {
    let mut claim = None;
    let mut secret = None;
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        match v.name.as_str() {
            "data" => claim = v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()),
            "keys" => secret = v.secret.as_ref().and_then(|s| s.secret_name.clone()),
            _ => {}
        }
    }
    (claim, secret)
}

fn psk(ctx: &Ctx, site: usize, namespace: &str, secret: Option<&str>) -> Option<Vec<u8>> {
    let secret = ctx.cache(site).secrets.get(Some(namespace), secret?)?;
    secret.data.as_ref()?.get("psk.txt").map(|b| b.0.clone())
}

/// Runs a mover's container one step; `Some(exit code)` once it has exited.
pub(crate) async fn step(ctx: &Ctx, site: usize, state: &SiteState, pod: &Pod, role: Role) -> Result<Option<i32>> {
    match role {
        Role::Server => Ok(serve(ctx, site, state, pod)),
        Role::Client => send(ctx, site, state, pod).await,
    }
}

fn serve(ctx: &Ctx, site: usize, state: &SiteState, pod: &Pod) -> Option<i32> {
    let completed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(COMPLETE));
    if !completed {
        return None;
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let delay = ctx
        .faults()
        .slow_mover_exit(ctx.site_name(site))
        .unwrap_or(ctx.config.mover_exit_delay);
    (state.since(&format!("mover-exit:{uid}")) >= delay).then_some(0)
}

/// A running server pod behind `endpoint`, not yet used by another transfer.
fn server_behind(ctx: &Ctx, endpoint: &network::Endpoint) -> Option<Arc<Pod>> {
    let namespace = endpoint.service.metadata.namespace.as_deref().unwrap_or_default();
    let selector = endpoint.service.spec.as_ref()?.selector.as_ref()?;
    ctx.cache(endpoint.site)
        .pods
        .matching(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            p.metadata.namespace.as_deref() == Some(namespace)
                && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && role(p) == Some(Role::Server)
                && !p
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(COMPLETE))
        })
        .into_iter()
        .next()
}

async fn send(ctx: &Ctx, site: usize, state: &SiteState, pod: &Pod) -> Result<Option<i32>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let source_name = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NAME_LABEL))
        .and_then(|n| n.strip_prefix("src-"))
        .unwrap_or_default()
        .to_owned();
    if ctx.faults().stalled(ctx.site_name(site), namespace, &source_name) {
        return Ok(None);
    }
    let Some(address) = env(pod, "DESTINATION_ADDRESS") else {
        tracing::info!(site = %ctx.site_name(site), "mover {namespace}/{source_name}: Remote host address must be provided in DESTINATION_ADDRESS");
        return Ok(Some(1));
    };
    let server = match network::resolve(ctx, site, address) {
        Some(endpoint) => server_behind(ctx, &endpoint).map(|p| (endpoint.site, p)),
        None => None,
    };
    let (client_claim, client_secret) = volumes(pod);
    let connected = match &server {
        Some((server_site, server_pod)) => {
            let (_, server_secret) = volumes(server_pod);
            let server_ns = server_pod.metadata.namespace.as_deref().unwrap_or_default();
            let ours = psk(ctx, site, namespace, client_secret.as_deref());
            let theirs = psk(ctx, *server_site, server_ns, server_secret.as_deref());
            ours.is_some() && ours == theirs
        }
        None => false,
    };
    let Some((server_site, server_pod)) = server.filter(|_| connected) else {
        if state.since(&format!("mover-connect:{uid}")) >= ctx.config.mover_retry_window {
            tracing::info!(site = %ctx.site_name(site), "mover {namespace}/{source_name}: no rsync-TLS server answered at {address}; giving up");
            return Ok(Some(1));
        }
        return Ok(None);
    };
    state.since(&format!("mover-connect:{uid}"));
    if state.since(&format!("mover-transfer:{uid}")) < ctx.config.sync_duration {
        return Ok(None);
    }
    let (Some(source_claim), (Some(target_claim), _)) = (client_claim, volumes(&server_pod)) else {
        return Ok(Some(1));
    };
    let data = disk::read(&ctx.client(site), namespace, &source_claim)
        .await?
        .with_context(|| format!("the source volume {source_claim} is not bound"))?;
    let server_ns = server_pod.metadata.namespace.clone().unwrap_or_default();
    disk::update(&ctx.client(server_site), &server_ns, &target_claim, |d| {
        *d = data.clone()
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client(server_site), &server_ns);
    let patch = json!({"metadata": {"annotations": {COMPLETE: uid}}});
    pods.patch(
        server_pod.metadata.name.as_deref().unwrap_or_default(),
        &util::params(),
        &Patch::Merge(&patch),
    )
    .await
    .context("signalling the server")?;
    tracing::debug!(
        site = %ctx.site_name(site),
        "mover {namespace}/{source_name}: {} writes sent to {} at {address}",
        data.generation(),
        ctx.site_name(server_site)
    );
    Ok(Some(0))
}
