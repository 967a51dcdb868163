//! The Helm chart (`charts/coldsite`) on a real API server.
//!
//! `chart_crds_are_the_repository_crds`: the chart ships `crds/` unchanged.
//! `chart_lints_renders_and_passes_server_dry_run`: `helm lint --strict` and `helm template`
//! at the default values and at each `charts/coldsite/ci/*-values.yaml`; every render is
//! applied with `kubectl apply --dry-run=server` (with stand-in CRDs for the two
//! monitoring.coreos.com kinds), the controller's Pod passes the restricted Pod Security
//! Standard, and the alerts and dashboard query only metrics the controller exports.
//!
//! That the chart's RBAC is enough, and no more than that, is proven by `e2e/tests/readme.rs`:
//! it installs the chart as the README says and runs the controller with a token of the
//! chart's ServiceAccount through the Exchange test failover, then checks what it is refused.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use coldsite_e2e::ControlPlane;
use coldsite_e2e::chart::{chart_dir, helm, kubectl};
use coldsite_e2e::manifests::{apply, install_crds, repo_root};
use serde_json::{Value, json};

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

/// The chart installs the image `dist/build.sh` tags with the crates' version.
#[test]
fn chart_app_version_is_the_crates_version() -> Result<()> {
    let chart: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    ensure!(
        chart["appVersion"] == env!("CARGO_PKG_VERSION"),
        "charts/coldsite/Chart.yaml appVersion is {} but the crates are {}: set appVersion: \"{}\"",
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
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
    descs.extend(m.plan_proven_timestamp_seconds.desc());
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
        "default" | "single-replica-values.yaml" | "monitoring-values.yaml" | "shard-values.yaml" => {
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
                    ensure!(!args.contains("--namespace"), "every namespace by default: {args}");
                    let crd_names: Vec<String> = coldsite_api::crds()
                        .iter()
                        .filter_map(|c| c.metadata.name.clone())
                        .collect();
                    let reads_its_crds = docs.iter().any(|d| {
                        d["kind"] == "ClusterRole"
                            && d["rules"].as_array().into_iter().flatten().any(|r| {
                                r["resources"] == json!(["customresourcedefinitions"])
                                    && r["verbs"] == json!(["get"])
                                    && r["resourceNames"] == json!(crd_names)
                            })
                    });
                    ensure!(reads_its_crds, "get on its own CRDs, by name");
                    ensure!(
                        !k.contains("ServiceMonitor") && !k.contains("PrometheusRule") && !k.contains("ConfigMap"),
                        "monitoring is opt-in: {k:?}"
                    );
                }
                "shard-values.yaml" => {
                    ensure!(
                        args.contains("--namespace=exchange")
                            && args.contains("--namespace=sap")
                            && args.contains("--lease-name=coldsite-controller-shard-a"),
                        "a shard lists its namespaces and leads through its own Lease: {args}"
                    );
                    let lease_granted = docs.iter().any(|d| {
                        d["kind"] == "Role"
                            && d["rules"].as_array().into_iter().flatten().any(|r| {
                                r["resourceNames"]
                                    .as_array()
                                    .is_some_and(|n| n.contains(&json!("coldsite-controller-shard-a")))
                            })
                    });
                    ensure!(lease_granted, "the shard's Lease is granted by name");
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
                        "ColdsitePlanNotTested",
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
    // The chart makes coldsite-scripts-<namespace> itself; a server dry run cannot put the
    // Role and the ServiceAccount into a namespace it only pretended to create.
    for ns in [
        "coldsite-ci",
        "coldsite-ci-exchange",
        "coldsite-ci-sharepoint",
        "coldsite-ci-kubeconfigs",
        "coldsite-scripts-coldsite-ci-exchange",
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
