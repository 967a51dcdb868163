//! A simulated node and kubelet, which need a machine: there is no scheduler and no kubelet
//! in the e2e control planes.
//!
//! The simulator keeps a Ready Node [`NODE_NAME`] and runs three kinds of pods on it,
//! binding each through the `pods/binding` subresource (as the scheduler does) and
//! reporting it `Running` once every PVC it mounts is Bound (as a kubelet mounts them):
//! - **Job pods of scripts** (coldsite's): after `SimConfig::job_duration` the containers
//!   exit 0, or N when the container's env has `COLDSITE_SIM_EXIT_CODE=N`.
//! - **VolSync's rsync-TLS movers**: their containers run as [`mover`] says.
//! - **virt-launcher pods** of VirtualMachineInstances: they run until deleted.
//!
//! With `restartPolicy: Never` a pod whose containers exited is `Succeeded` or `Failed`;
//! with `OnFailure` failed containers restart (the Job controller counts the restarts).
//! The Job controller does the rest. Deleted pods on the node are removed at once, as a
//! kubelet confirms a termination. Other pods are left alone (Pending).

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PostParams};
use serde_json::{Value, json};

use super::mover;
use super::util::{self, k8s_time};
use super::{Ctx, SiteState, each, lock};

/// The simulated node's name.
pub const NODE_NAME: &str = "coldsite-sim-node";
/// Env var of a Job's container that makes it exit with that code.
pub const EXIT_CODE_ENV: &str = "COLDSITE_SIM_EXIT_CODE";

const NODE_RECHECK: Duration = Duration::from_secs(10);

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    if lock(&state.node_checked).is_none_or(|t| t.elapsed() > NODE_RECHECK) {
        ensure_node(ctx, site).await?;
        *lock(&state.node_checked) = Some(std::time::Instant::now());
    }
    let pods = ctx.cache(site).pods.all();
    let ours: Vec<_> = pods
        .iter()
        .filter_map(|pod| Some((pod.as_ref(), workload(pod)?)))
        .collect();
    each(state, ours, |(pod, workload)| async move {
        step(ctx, site, state, pod, workload).await.with_context(|| {
            format!(
                "pod {}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
    })
    .await;
    Ok(())
}

async fn ensure_node(ctx: &Ctx, site: usize) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client(site));
    let node = match nodes.get_opt(NODE_NAME).await.context("reading the simulated node")? {
        Some(node) => node,
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(NODE_NAME.into()),
                    labels: Some(
                        [
                            ("kubernetes.io/hostname", NODE_NAME),
                            ("kubernetes.io/os", "linux"),
                            ("coldsite.io/simulated", "true"),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    ),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(node) => node,
                Err(e) if util::is_conflict(&e) => nodes.get(NODE_NAME).await?,
                Err(e) => return Err(e).context("creating the simulated node"),
            }
        }
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        let now = k8s_time(Utc::now());
        let resources = json!({"cpu": "64", "memory": "256Gi", "pods": "1100"});
        let patch = json!({"status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "coldsite site simulator: simulated kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "capacity": resources,
            "allocatable": resources,
        }});
        nodes
            .patch_status(NODE_NAME, &util::params(), &Patch::Merge(&patch))
            .await
            .context("marking the simulated node Ready")?;
        tracing::info!(site = %ctx.site_name(site), "node {NODE_NAME} is Ready");
    }
    Ok(())
}

/// What a pod runs, for the pods this kubelet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Script,
    Mover(mover::Role),
    Launcher,
}

fn workload(pod: &Pod) -> Option<Workload> {
    if let Some(role) = mover::role(pod) {
        return Some(Workload::Mover(role));
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get("kubevirt.io").map(String::as_str) == Some("virt-launcher") {
        return Some(Workload::Launcher);
    }
    let owned_by_job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"));
    owned_by_job.then_some(Workload::Script)
}

/// Whether every PVC the pod mounts is Bound, so a kubelet could start it.
fn volumes_ready(ctx: &Ctx, site: usize, pod: &Pod) -> bool {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let claims = &ctx.cache(site).claims;
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|volume| volume.persistent_volume_claim.as_ref())
        .all(|claim| {
            claims
                .get(Some(namespace), &claim.claim_name)
                .and_then(|c| c.status.as_ref()?.phase.clone())
                .is_some_and(|p| p == "Bound")
        })
}

fn exit_code(container: &k8s_openapi::api::core::v1::Container) -> i32 {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == EXIT_CODE_ENV)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn pod_condition(type_: &str, status: bool, reason: Option<&str>, now: &str) -> Value {
    let mut c = json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "lastTransitionTime": now,
    });
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    c
}

async fn step(ctx: &Ctx, site: usize, state: &SiteState, pod: &Pod, workload: Workload) -> Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client(site), namespace);
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let node = spec.node_name.as_deref();

    if pod.metadata.deletion_timestamp.is_some() {
        if node == Some(NODE_NAME) {
            // The kubelet confirms the termination.
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match pods.delete(name, &params).await {
                Ok(_) => {}
                Err(e) if util::is_not_found(&e) => {}
                Err(e) => return Err(e).context("deleting"),
            }
        }
        return Ok(());
    }
    let Some(node) = node else {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(NODE_NAME.into()),
                ..ObjectReference::default()
            },
        };
        match pods
            .create_subresource::<Binding, Value>("binding", name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_conflict(&e) || util::is_not_found(&e) => {}
            Err(e) => return Err(e).context("binding to the simulated node"),
        }
        return Ok(());
    };
    if node != NODE_NAME {
        return Ok(());
    }
    let now = k8s_time(Utc::now());
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let restarts: i32 = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    match phase {
        "Pending" if !volumes_ready(ctx, site, pod) => {}
        "Pending" => {
            let containers: Vec<Value> = spec
                .containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "image": c.image.clone().unwrap_or_default(),
                        "imageID": "",
                        "containerID": format!("sim://{uid}/{}", c.name),
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect();
            let patch = json!({"status": {
                "phase": "Running",
                "startTime": now,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "conditions": [
                    pod_condition("PodReadyToStartContainers", true, None, &now),
                    pod_condition("Initialized", true, None, &now),
                    pod_condition("Ready", true, None, &now),
                    pod_condition("ContainersReady", true, None, &now),
                    pod_condition("PodScheduled", true, None, &now),
                ],
                "containerStatuses": containers,
            }});
            pods.patch_status(name, &util::params(), &Patch::Merge(&patch))
                .await
                .context("reporting Running")?;
            state.since(&format!("pod:{uid}:{restarts}"));
        }
        "Running" => {
            let exit = match workload {
                Workload::Script => {
                    (state.since(&format!("pod:{uid}:{restarts}")) >= ctx.config.job_duration).then_some(None)
                }
                Workload::Mover(role) => mover::step(ctx, site, state, pod, role).await?.map(Some),
                Workload::Launcher => None,
            };
            if let Some(code) = exit {
                terminate(&pods, pod, &spec, &status, &now, code).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Ends the run of every running container with `code`, or its own exit code (see
/// [`EXIT_CODE_ENV`]) when `None`.
async fn terminate(
    pods: &Api<Pod>,
    pod: &Pod,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    status: &k8s_openapi::api::core::v1::PodStatus,
    now: &str,
    code: Option<i32>,
) -> Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let restart_on_failure = spec.restart_policy.as_deref() == Some("OnFailure");
    let previous = status.container_statuses.clone().unwrap_or_default();
    let mut all_done = true;
    let mut any_failed = false;
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let old = previous.iter().find(|s| s.name == c.name);
            let restarts = old.map_or(0, |s| s.restart_count);
            let started = old
                .and_then(|s| s.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.to_owned());
            let code = code.unwrap_or_else(|| exit_code(c));
            let terminated = json!({
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started,
                "finishedAt": now,
                "containerID": format!("sim://{}/{}", pod.metadata.uid.as_deref().unwrap_or_default(), c.name),
            });
            let base = json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("sim://{}/{}", pod.metadata.uid.as_deref().unwrap_or_default(), c.name),
            });
            let mut s = base;
            if code != 0 && restart_on_failure {
                all_done = false;
                s["restartCount"] = json!(restarts + 1);
                s["ready"] = json!(true);
                s["started"] = json!(true);
                s["lastState"] = json!({"terminated": terminated});
                s["state"] = json!({"running": {"startedAt": now}});
            } else {
                any_failed |= code != 0;
                s["restartCount"] = json!(restarts);
                s["ready"] = json!(false);
                s["started"] = json!(false);
                s["state"] = json!({"terminated": terminated});
            }
            s
        })
        .collect();
    let patch = if all_done {
        let phase = if any_failed { "Failed" } else { "Succeeded" };
        json!({"status": {
            "phase": phase,
            "conditions": [
                pod_condition("PodReadyToStartContainers", false, None, now),
                pod_condition("Initialized", true, None, now),
                pod_condition("Ready", false, Some("PodCompleted"), now),
                pod_condition("ContainersReady", false, Some("PodCompleted"), now),
                pod_condition("PodScheduled", true, None, now),
            ],
            "containerStatuses": statuses,
        }})
    } else {
        json!({"status": {"containerStatuses": statuses}})
    };
    pods.patch_status(name, &util::params(), &Patch::Merge(&patch))
        .await
        .context("reporting termination")?;
    tracing::debug!("pod {name}: containers terminated");
    Ok(())
}
