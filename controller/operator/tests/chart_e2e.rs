//! The Helm chart (`charts/coldsite`) on a real API server.
//!
//! `chart_crds_are_the_repository_crds`: the chart ships `crds/` unchanged.
//! `chart_lints_renders_and_passes_server_dry_run`: `helm lint --strict` and `helm template`
//! at the default values and at each `charts/coldsite/ci/*-values.yaml`; every render is
//! applied with `kubectl apply --dry-run=server` (with stand-in CRDs for the two
//! monitoring.coreos.com kinds), the controller's Pod passes the restricted Pod Security
//! Standard, and the alerts and dashboard query only metrics the controller exports.
//! `chart_rbac_is_enough_for_the_exchange_test_failover`: `helm install` of the chart, then
//! `coldsite-controller` as a process with a token of the chart's ServiceAccount (the
//! Deployment's own arguments, leader election on) and the sites reached through the
//! chart's site identity: the Exchange test failover succeeds and cleans up, and the token
//! is refused what the chart does not grant.
//!
//! This binary has its own control planes, so its controller never meets another test's.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use coldsite_e2e::ControlPlane;
use coldsite_e2e::chart::{
    chart_dir, client_from, helm, kubectl, request_token, token_from_secret, token_kubeconfig, write_kubeconfig,
};
use coldsite_e2e::exchange::{ControllerProcess, Scenario, Topology, dynamic, virtual_machines, wait_for};
use coldsite_e2e::manifests::{apply, install_crds, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const VMS: [&str; 3] = ["dc01", "exch-mbx01", "exch-cas01"];

fn documents(text: &str) -> Result<Vec<Value>> {
    coldsite_api::manifest::parse_documents(text).context("parsing rendered manifests")
}

/// The kinds of the templates' objects (the CRDs of `crds/` aside).
fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .filter(|k| k != "CustomResourceDefinition")
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} rendered"))
}

/// The values files CI renders besides the defaults.
fn ci_values() -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(chart_dir().join("ci"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    ensure!(
        files.len() >= 3,
        "expected the chart's ci/*-values.yaml files: {files:?}"
    );
    Ok(files)
}

#[test]
fn chart_crds_are_the_repository_crds() -> Result<()> {
    let listing = |dir: &Path| -> Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect())
    };
    let (repo, chart) = (repo_root().join("crds"), chart_dir().join("crds"));
    let names = listing(&repo)?;
    ensure!(names.len() == 5, "five CRDs in crds/: {names:?}");
    ensure!(
        listing(&chart)? == names,
        "charts/coldsite/crds/ must hold exactly the files of crds/; copy them: cp crds/*.yaml charts/coldsite/crds/"
    );
    for n in &names {
        ensure!(
            std::fs::read(repo.join(n))? == std::fs::read(chart.join(n))?,
            "charts/coldsite/crds/{n} differs from crds/{n}; copy it: cp crds/*.yaml charts/coldsite/crds/"
        );
    }
    Ok(())
}

/// The names the controller registers, with a histogram's series suffixes.
fn exported_metrics() -> Result<BTreeSet<String>> {
    use prometheus::core::Collector;
    let m = coldsite_operator::metrics::Metrics::new()?;
    let mut descs = Vec::new();
    descs.extend(m.reconciles.desc());
    descs.extend(m.reconcile_errors.desc());
    descs.extend(m.reconcile_seconds.desc());
    descs.extend(m.vm_rpo_seconds.desc());
    descs.extend(m.vm_rpo_target_seconds.desc());
    descs.extend(m.vm_replication_healthy.desc());
    descs.extend(m.site_reachable.desc());
    descs.extend(m.step_seconds.desc());
    descs.extend(m.run_rto_seconds.desc());
    descs.extend(m.runs.desc());
    descs.extend(m.run_waiting_for_approval_seconds.desc());
    let mut names = BTreeSet::new();
    for d in descs {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            names.insert(format!("{}{suffix}", d.fq_name));
        }
    }
    Ok(names)
}

/// The `coldsite_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("coldsite_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn check_queries(what: &str, exprs: &[String], known: &BTreeSet<String>) -> Result<()> {
    ensure!(!exprs.is_empty(), "{what}: no queries");
    for e in exprs {
        let names = metric_names(e);
        ensure!(!names.is_empty(), "{what}: {e:?} queries no coldsite metric");
        for n in names {
            ensure!(
                known.contains(&n),
                "{what}: {e:?} queries {n}, which the controller does not export"
            );
        }
    }
    Ok(())
}

/// What every render must be, and what each values file changes.
fn check_render(name: &str, docs: &[Value], known: &BTreeSet<String>) -> Result<()> {
    let k = kinds(docs);
    let grants_secrets_cluster_wide = docs.iter().filter(|d| d["kind"] == "ClusterRole").any(|r| {
        r["rules"].as_array().into_iter().flatten().any(|rule| {
            rule["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == "secrets" || x == "*"))
        })
    });
    match name {
        "default" | "single-replica-values.yaml" | "monitoring-values.yaml" => {
            let dep = find(docs, "Deployment")?;
            let pod = &dep["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let sc = &c["securityContext"];
            ensure!(
                sc["allowPrivilegeEscalation"] == false
                    && sc["readOnlyRootFilesystem"] == true
                    && sc["capabilities"]["drop"] == json!(["ALL"])
                    && pod["securityContext"]["runAsNonRoot"] == true
                    && pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
                "{name}: restricted security context: {pod}"
            );
            ensure!(
                c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                    && c["readinessProbe"]["httpGet"]["path"] == "/readyz",
                "{name}: probes"
            );
            ensure!(
                c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string(),
                "{name}: resource requests"
            );
            let env: Vec<(&str, &str)> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| Some((e["name"].as_str()?, e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?)))
                .collect();
            ensure!(
                env.contains(&("POD_NAME", "metadata.name")) && env.contains(&("POD_NAMESPACE", "metadata.namespace")),
                "{name}: downward API env: {env:?}"
            );
            ensure!(k.contains("Service") && k.contains("ServiceAccount"), "{name}: {k:?}");
            ensure!(
                !grants_secrets_cluster_wide || name == "monitoring-values.yaml",
                "{name}: a ClusterRole grants Secrets; only managementIsSite/siteAccess may"
            );
            let args = c["args"].to_string();
            match name {
                "default" => {
                    ensure!(dep["spec"]["replicas"] == 2, "two replicas by default");
                    ensure!(
                        args.contains("--lease-name=coldsite-controller"),
                        "leader election on: {args}"
                    );
                    ensure!(
                        !k.contains("ServiceMonitor") && !k.contains("PrometheusRule") && !k.contains("ConfigMap"),
                        "monitoring is opt-in: {k:?}"
                    );
                }
                "single-replica-values.yaml" => {
                    ensure!(
                        dep["spec"]["replicas"] == 1 && args.contains("--no-leader-election"),
                        "{args}"
                    );
                    let leader_role = docs.iter().any(|d| {
                        d["kind"] == "Role"
                            && d["metadata"]["name"]
                                .as_str()
                                .is_some_and(|n| n.ends_with("-leader-election"))
                    });
                    ensure!(!k.contains("PodDisruptionBudget") && !leader_role, "{k:?}");
                }
                _ => {
                    ensure!(dep["spec"]["replicas"] == 3, "three replicas");
                    ensure!(
                        c["image"].as_str().is_some_and(|i| i.contains("@sha256:")),
                        "digest pin: {}",
                        c["image"]
                    );
                    let sm = find(docs, "ServiceMonitor")?;
                    ensure!(
                        sm["spec"]["endpoints"][0]["honorLabels"] == true,
                        "honorLabels keeps `namespace`"
                    );
                    let rule = find(docs, "PrometheusRule")?;
                    let rules: Vec<&Value> = rule["spec"]["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                        .collect();
                    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
                    for a in [
                        "ColdsiteRPOBreached",
                        "ColdsiteReplicationUnhealthy",
                        "ColdsiteRunFailed",
                        "ColdsiteRunWaitingForApproval",
                        "ColdsiteSiteUnreachable",
                    ] {
                        ensure!(alerts.contains(a), "alert {a} missing: {alerts:?}");
                    }
                    let waiting = rules
                        .iter()
                        .find(|r| r["alert"] == "ColdsiteRunWaitingForApproval")
                        .and_then(|r| r["expr"].as_str())
                        .unwrap_or_default();
                    ensure!(waiting.contains("> 2700"), "45 minutes from values: {waiting}");
                    let exprs: Vec<String> = rules
                        .iter()
                        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
                        .collect();
                    check_queries("PrometheusRule", &exprs, known)?;
                    let cm = find(docs, "ConfigMap")?;
                    ensure!(cm["metadata"]["labels"]["grafana_dashboard"] == "1", "sidecar label");
                    let shipped = std::fs::read_to_string(chart_dir().join("dashboards/coldsite.json"))?;
                    let json_text = cm["data"]["coldsite.json"].as_str().unwrap_or_default();
                    ensure!(
                        json_text.trim() == shipped.trim(),
                        "the ConfigMap carries dashboards/coldsite.json"
                    );
                    ensure!(
                        k.contains("ClusterRoleBinding") && grants_secrets_cluster_wide,
                        "managementIsSite"
                    );
                }
            }
        }
        "site-values.yaml" => {
            let want: BTreeSet<String> = ["ClusterRole", "ClusterRoleBinding", "Secret", "ServiceAccount"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            ensure!(k == want, "a site gets only its identity: {k:?}");
        }
        other => bail!("no expectations for values file {other}"),
    }
    Ok(())
}

const MONITORING_STAND_INS: &str = r#"
# Stand-ins for the Prometheus Operator's CRDs: the group, versions and kinds only, so the
# chart's ServiceMonitor and PrometheusRule can be dry-run against this API server.
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_and_passes_server_dry_run() -> Result<()> {
    let started = Instant::now();
    let cp = ControlPlane::shared().await?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let known = exported_metrics()?;

    // The dashboard: the panels the issue asks for, on metrics that exist.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("dashboards/coldsite.json"))?)?;
    let panels: Vec<&Value> = dashboard["panels"].as_array().into_iter().flatten().collect();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "RPO per VM vs target",
        "Replication health",
        "Runs finished",
        "Step duration",
        "RTO",
    ] {
        ensure!(
            titles.iter().any(|t| t.contains(want)),
            "dashboard panel {want:?} missing: {titles:?}"
        );
    }
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    check_queries("dashboard", &exprs, &known)?;

    // Namespaces the values files name, the CRDs, and stand-ins for the monitoring kinds.
    install_crds(cp).await?;
    kubectl(cp, &["apply", "--server-side", "-f", "-"], Some(MONITORING_STAND_INS))?;
    kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
        None,
    )?;
    let admin = cp.client().await?;
    for ns in [
        "coldsite-ci",
        "coldsite-ci-exchange",
        "coldsite-ci-sharepoint",
        "coldsite-ci-kubeconfigs",
    ] {
        apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ns,
        )
        .await??;
    }
    let restricted = "coldsite-ci-restricted";
    apply(
        &admin,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": restricted,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"}}}),
        restricted,
    )
    .await??;

    // The namespace does enforce: a Pod allowed to escalate privileges is refused there.
    apply(
        &admin,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "loose"}}),
        restricted,
    )
    .await??;
    let loose = json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "loose", "namespace": restricted},
                       "spec": {"serviceAccountName": "loose",
                                "containers": [{"name": "c", "image": "example.com/c:1",
                                "securityContext": {"allowPrivilegeEscalation": true}}]}});
    match kubectl(cp, &["apply", "--dry-run=server", "-f", "-"], Some(&loose.to_string())) {
        Err(e) if format!("{e:#}").contains("violates PodSecurity") => {}
        other => bail!("namespace {restricted} must enforce the restricted standard: {other:?}"),
    }

    let mut renders: Vec<(String, Vec<String>)> = vec![("default".into(), Vec::new())];
    for f in ci_values()? {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        renders.push((name, vec!["-f".into(), f.to_string_lossy().into_owned()]));
    }
    for (name, extra) in &renders {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let lint = helm(cp, &[&["lint", "--strict", chart][..], &extra].concat())
            .with_context(|| format!("helm lint ({name})"))?;
        ensure!(lint.contains("0 chart(s) failed"), "helm lint ({name}):\n{lint}");
        let text = helm(
            cp,
            &[
                &["template", "ci", chart, "-n", "coldsite-ci", "--include-crds"][..],
                &extra,
            ]
            .concat(),
        )
        .with_context(|| format!("helm template ({name})"))?;
        let docs = documents(&text)?;
        let crds = docs.iter().filter(|d| d["kind"] == "CustomResourceDefinition").count();
        ensure!(crds == 5, "{name}: the chart's five CRDs, got {crds}");
        check_render(name, &docs, &known).with_context(|| format!("render {name}"))?;
        // Every namespaced object names its namespace, as `helm install -n` would place it.
        let out = kubectl(cp, &["apply", "--dry-run=server", "-f", "-"], Some(&text))
            .with_context(|| format!("kubectl apply --dry-run=server ({name})"))?;
        let applied = out.lines().filter(|l| l.contains("(server dry run)")).count();
        ensure!(
            applied == docs.len(),
            "{name}: {applied} of {} objects dry-run:\n{out}",
            docs.len()
        );
        // The controller's Pod as the ReplicaSet would create it, in a namespace that
        // enforces the restricted Pod Security Standard.
        if let Some(dep) = docs.iter().find(|d| d["kind"] == "Deployment") {
            let mut pod_meta = dep["spec"]["template"]["metadata"].clone();
            pod_meta["name"] = json!("coldsite-controller-pss");
            pod_meta["namespace"] = json!(restricted);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
                             "spec": dep["spec"]["template"]["spec"]});
            let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            apply(
                &admin,
                &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
                restricted,
            )
            .await??;
            let out = kubectl(cp, &["apply", "--dry-run=server", "-f", "-"], Some(&pod.to_string()))
                .with_context(|| format!("{name}: the controller Pod under the restricted standard"))?;
            ensure!(out.contains("(server dry run)"), "{out}");
        }
    }
    eprintln!(
        "chart: {} renders linted and dry-run in {:.1}s",
        renders.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => bail!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// What the chart's ServiceAccount must not be able to do, and what it must.
async fn check_token_scope(token: &Client, s: &Scenario, release_ns: &str, elsewhere: &str) -> Result<()> {
    let secrets = |ns: &str| Api::<Secret>::namespaced(token.clone(), ns);
    // The scenario keeps admin kubeconfigs of both sites in its namespace: out of reach.
    forbidden(
        "get an admin kubeconfig Secret in the plan namespace",
        secrets(&s.ns).get(&format!("{}-kubeconfig", s.hq)).await,
    )?;
    forbidden(
        "get a Secret in another namespace",
        secrets(elsewhere).get("not-for-coldsite").await,
    )?;
    forbidden(
        "list Secrets where kubeconfigs live",
        secrets(release_ns).list(&ListParams::default()).await,
    )?;
    forbidden(
        "list Secrets of the plan namespace",
        secrets(&s.ns).list(&ListParams::default()).await,
    )?;
    // What it needs: the Sites' kubeconfigs and the plan's webhook key.
    secrets(release_ns)
        .get(&format!("{}-kubeconfig", s.hq))
        .await
        .context("reading a Site kubeconfig Secret")?;
    secrets(&s.ns)
        .get("exchange-dr-webhook")
        .await
        .context("reading the webhook Secret")?;
    // Sites and plans belong to people: no patch of the object itself, so no spec write.
    // (Dry runs: RBAC is checked before the dry run, and nothing changes if it were not.)
    let patch = Patch::Merge(json!({"spec": {"testNamespace": "elsewhere"}}));
    forbidden(
        "patch a Site",
        Api::<Site>::all(token.clone())
            .patch(&s.hq, &PatchParams::default().dry_run(), &patch)
            .await,
    )?;
    forbidden(
        "patch a RecoveryPlan",
        Api::<RecoveryPlan>::namespaced(token.clone(), &s.ns)
            .patch(
                "exchange",
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({"spec": {"groups": []}})),
            )
            .await,
    )?;
    forbidden(
        "delete a ProtectedVM",
        Api::<ProtectedVM>::namespaced(token.clone(), &s.ns)
            .delete(
                "dc01",
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                },
            )
            .await,
    )?;
    forbidden(
        "read another Lease",
        Api::<Lease>::namespaced(token.clone(), release_ns)
            .get("someone-else")
            .await,
    )?;
    forbidden(
        "list VMs at the management cluster (not a site in this install)",
        virtual_machines(token, &s.ns).list(&ListParams::default()).await,
    )?;
    Ok(())
}

async fn test_failover(s: &Scenario) -> Result<()> {
    let name = "exchange-test-chart";
    let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
    s.create_run(name, "TestFailover", &["confirm-ad-replication"]).await?;
    let run = wait_for(&format!("run {name} to finish"), Duration::from_secs(240), || async {
        let r = runs.get(name).await?;
        let finished = matches!(
            r.status.as_ref().and_then(|s| s.phase),
            Some(RunPhase::Succeeded | RunPhase::Failed)
        );
        Ok(finished.then_some(r))
    })
    .await?;
    let status = run.status.clone().unwrap_or_default();
    if status.phase != Some(RunPhase::Succeeded) {
        let failed: Vec<String> = status
            .steps
            .iter()
            .filter_map(|x| Some(format!("{}: {}", x.id, x.message.as_deref()?)))
            .filter(|m| !m.contains("not run: "))
            .collect();
        bail!("run {name} ended {:?}:\n{}", status.phase, failed.join("\n"));
    }
    ensure!(
        run.status.as_ref().and_then(|st| st.rto_seconds).is_some(),
        "RTO recorded"
    );
    let test_vms = virtual_machines(&s.recovery, &s.test_ns);
    for vm in VMS {
        let copy = test_vms.get(vm).await?;
        ensure!(copy.data["spec"]["runStrategy"] == "Always", "{vm} runs at DR");
    }
    let calls = s.webhook.calls();
    ensure!(
        !calls.is_empty() && calls.iter().all(|c| c.signature_valid),
        "the webhook was called with a valid signature (the key Secret was readable): {calls:?}"
    );
    let jobs = dynamic(&s.recovery, &s.ns, "batch", "v1", "Job", "jobs");
    ensure!(
        jobs.list(&ListParams::default().labels("coldsite.io/action=verify-ad"))
            .await?
            .items
            .len()
            == 1,
        "one verify-ad Job at the recovery site"
    );
    // Events are written with the chart's RBAC (failures to publish are only logged).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.management.clone(), &s.ns);
    let ours = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("coldsite-controller"))
        .count();
    ensure!(ours > 0, "coldsite-controller published Events in {}", s.ns);

    s.delete_test_run(name, Duration::from_secs(120)).await?;
    Ok(())
}

/// Lines of the controller's log that report a refusal, other than `allowed_with`'s.
fn refusals(log: &Path, allowed_with: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden") && !l.contains(allowed_with))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_enough_for_the_exchange_test_failover() -> Result<()> {
    let started = Instant::now();
    let mgmt = ControlPlane::shared().await?;
    let recovery = ControlPlane::shared_recovery().await?;
    let s = Scenario::set_up(
        &Topology {
            management: mgmt,
            primary: mgmt,
            recovery,
        },
        "chart",
    )
    .await?;
    let admin = s.management.clone();
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let site_values = chart_dir().join("ci/site-values.yaml");
    let site_values = site_values.to_str().context("values path")?;

    // The chart on the management cluster, allowed to read the plan's webhook key only.
    let release_ns = mgmt.create_namespace("coldsite-system").await?;
    let values = mgmt.dir().join(format!("{release_ns}-values.yaml"));
    std::fs::write(
        &values,
        format!(
            "rbac:\n  webhookSecrets:\n    - namespace: {}\n      names: [exchange-dr-webhook]\n",
            s.ns
        ),
    )?;
    let installed = helm(
        mgmt,
        &[
            "install",
            "coldsite",
            chart,
            "-n",
            &release_ns,
            "-f",
            values.to_str().context("values path")?,
        ],
    )?;
    ensure!(
        installed.contains(&format!("Lease {release_ns}/coldsite-controller")),
        "NOTES.txt:\n{installed}"
    );

    // The site identity at both sites (the primary shares the management server).
    let recovery_ns = recovery.create_namespace("coldsite-system").await?;
    helm(
        mgmt,
        &[
            "install",
            "hq",
            chart,
            "-n",
            &release_ns,
            "--skip-crds",
            "-f",
            site_values,
        ],
    )?;
    helm(
        recovery,
        &[
            "install",
            "coldsite",
            chart,
            "-n",
            &recovery_ns,
            "--skip-crds",
            "-f",
            site_values,
        ],
    )?;
    let recovery_admin = recovery.client().await?;
    for (site, cp, client, ns, secret) in [
        (&s.hq, mgmt, &admin, &release_ns, "hq-coldsite-site-token"),
        (&s.dr, recovery, &recovery_admin, &recovery_ns, "coldsite-site-token"),
    ] {
        let token = token_from_secret(client, ns, secret).await?;
        let kubeconfig = token_kubeconfig(cp, "coldsite-site", &token)?;
        apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{site}-kubeconfig")},
                    "stringData": {"kubeconfig": kubeconfig}}),
            &release_ns,
        )
        .await??;
        Api::<Site>::all(admin.clone())
            .patch(
                site,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"cluster": {"kubeconfigSecretRef": {
                    "namespace": release_ns, "name": format!("{site}-kubeconfig"), "key": "kubeconfig"}}}})),
            )
            .await?;
    }

    // A Secret the controller must never read, and a Site that asks it to.
    let elsewhere = mgmt.create_namespace("not-coldsite").await?;
    apply(
        &admin,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-for-coldsite"},
                "stringData": {"kubeconfig": mgmt.kubeconfig_yaml()}}),
        &elsewhere,
    )
    .await??;
    let outside = format!("outside-{}", s.ns);
    apply(
        &admin,
        &json!({"apiVersion": "coldsite.io/v1alpha1", "kind": "Site", "metadata": {"name": outside},
                "spec": {"testNamespace": s.test_ns,
                         "cluster": {"kubeconfigSecretRef": {"namespace": elsewhere, "name": "not-for-coldsite", "key": "kubeconfig"}}}}),
        "",
    )
    .await??;

    // The controller with a token of the chart's ServiceAccount and the Deployment's args.
    let token = request_token(&admin, &release_ns, "coldsite", 3600).await?;
    let kubeconfig_text = token_kubeconfig(mgmt, "coldsite", &token)?;
    let kubeconfig = mgmt.dir().join(format!("{release_ns}-controller.kubeconfig"));
    write_kubeconfig(&kubeconfig, &kubeconfig_text)?;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &release_ns)
        .get("coldsite")
        .await?;
    let mut args: Vec<String> = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.args)
        .context("the Deployment's container args")?
        .into_iter()
        .filter(|a| !a.starts_with("--metrics-address"))
        .collect();
    ensure!(
        !args.iter().any(|a| a == "--no-leader-election"),
        "leader election on: {args:?}"
    );
    args.extend([
        "--lease-namespace".into(),
        release_ns.clone(),
        "--identity".into(),
        "x".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = mgmt.dir().join(format!("controller-{release_ns}.log"));
    let mut ctl = ControllerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_coldsite-controller")),
        &kubeconfig,
        log.clone(),
        &args,
    )?;

    let result = async {
        let token_client = client_from(&kubeconfig_text).await?;
        check_token_scope(&token_client, &s, &release_ns, &elsewhere)
            .await
            .context("the token's scope")?;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns);
        wait_for("the controller to take the Lease", Duration::from_secs(60), || async {
            let holder = leases
                .get_opt("coldsite-controller")
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            Ok((holder.as_deref() == Some("x")).then_some(()))
        })
        .await?;
        s.wait_protected(Duration::from_secs(180)).await.context("protect")?;
        test_failover(&s).await.context("test failover")?;
        let sites: Api<Site> = Api::all(admin.clone());
        let message = wait_for(
            "the Site naming an out-of-scope Secret to be unreachable",
            Duration::from_secs(60),
            || async {
                let st = sites.get(&outside).await?.status.unwrap_or_default();
                Ok(st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Reachable" && c.status == "False")
                    .map(|c| c.message.clone()))
            },
        )
        .await?;
        ensure!(
            message.to_ascii_lowercase().contains("forbidden"),
            "the API server refused the Secret: {message}"
        );
        let refused = refusals(&log, &outside);
        ensure!(
            refused.is_empty(),
            "the controller was refused something:\n{}",
            refused.join("\n")
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(60));
    }
    let _ = ctl.kill().await;
    let _ = Api::<Site>::all(admin.clone())
        .delete(&outside, &DeleteParams::default())
        .await;
    eprintln!(
        "chart e2e: test failover with the chart's RBAC in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    result
}
