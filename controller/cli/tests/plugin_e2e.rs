//! `kubectl-coldsite` against a real kube-apiserver: the Exchange example with the site
//! simulator and `coldsite-controller` running, driven only through the plugin's commands,
//! as an operator would: refuse a test while the plan is not Ready, start one once it is,
//! see it wait for approval, approve it, follow it to the end, report it (HTML rendered in
//! headless Chromium, and Markdown) and clean it up. Tab completion runs through kubectl's
//! own plugin completion.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun};
use coldsite_e2e::ControlPlane;
use coldsite_e2e::exchange::{ControllerProcess, Scenario, Topology, wait_for};
use coldsite_e2e::plugin::Plugin;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

fn condition(plan: &RecoveryPlan, t: &str) -> Option<String> {
    plan.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
        .map(|c| c.status.clone())
}

fn in_order(text: &str, parts: &[&str]) -> Result<()> {
    let mut at = 0;
    for p in parts {
        match text[at..].find(p) {
            Some(i) => at += i + p.len(),
            None => bail!("{p:?} missing or out of order in:\n{text}"),
        }
    }
    Ok(())
}

/// Every step id of a run: its own, and each VM's from the ProtectedVMs.
async fn step_ids(s: &Scenario, run: &RecoveryRun) -> Result<Vec<String>> {
    let mut ids: Vec<String> = run
        .status
        .as_ref()
        .map(|st| st.steps.iter().map(|x| x.id.clone()).collect())
        .unwrap_or_default();
    for p in Api::<ProtectedVM>::namespaced(s.management.clone(), &s.ns)
        .list(&ListParams::default())
        .await?
    {
        if let Some(last) = p.status.and_then(|st| st.last_run)
            && last.run_uid == run.uid()
        {
            ids.extend(last.steps.into_iter().map(|x| x.id));
        }
    }
    Ok(ids)
}

/// The HTML report in headless Chromium: the DOM has the chart and every step; a screenshot
/// is kept for people. Skips when Chromium is missing, except in CI.
fn render_in_chromium(report: &Path, ids: &[String]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/render-report.sh");
    let have = std::env::var_os("CHROMIUM").is_some()
        || ["chromium", "chromium-browser", "google-chrome"].iter().any(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !have {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!(
                "CI=true but Chromium is not installed: .ci/run must run `controller/cli/tests/render-report.sh --install` first"
            );
        }
        coldsite_e2e::skips::record(
            "rendering the HTML report in headless Chromium (plugin_e2e)",
            "Chromium is not installed; `controller/cli/tests/render-report.sh --install` installs it",
        );
        return Ok(());
    }
    let out = Command::new("bash").arg(&script).arg(report).args(ids).output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.success(),
        "the rendered report misses something ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    let png = report.with_extension("png");
    ensure!(
        std::fs::metadata(&png).map(|m| m.len() > 10_000).unwrap_or(false),
        "screenshot {} is missing or blank",
        png.display()
    );
    Ok(())
}

/// Whether any of the scenario's VMs is still without a recovery point.
async fn plugin_vms_enabling(s: &Scenario) -> Result<bool> {
    let pvms: Api<coldsite_api::ProtectedVM> = Api::namespaced(s.management.clone(), &s.ns);
    for p in pvms.list(&ListParams::default()).await?.items {
        if p.status.and_then(|st| st.recovery_points).is_none_or(|r| r.count == 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `kubectl __complete <words>` with the plugin and its completion helper on PATH.
fn complete_via_kubectl(cp: &ControlPlane, words: &[&str]) -> Result<String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl_complete-coldsite"))
        .parent()
        .context("bin dir")?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = cp.kubectl().arg("__complete").args(words).env("PATH", path).output()?;
    ensure!(out.status.success(), "kubectl __complete {words:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_drives_a_test_failover_end_to_end() -> Result<()> {
    let started = Instant::now();
    let controller_bin =
        tokio::task::spawn_blocking(|| coldsite_e2e::workspace_binary("coldsite-operator", "coldsite-controller"))
            .await??;
    let mgmt = ControlPlane::shared().await?;
    let recovery = ControlPlane::shared_recovery().await?;
    let s = Scenario::set_up(
        &Topology {
            management: mgmt,
            primary: mgmt,
            recovery,
        },
        "plugin",
    )
    .await?;
    let plugin = Plugin {
        exe: env!("CARGO_BIN_EXE_kubectl-coldsite").into(),
        kubeconfig: mgmt.kubeconfig_path().to_owned(),
        ns: s.ns.clone(),
    };
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-e2e");
    std::fs::create_dir_all(&out_dir)?;

    // No controller yet: the plan has no conditions, so nothing may start.
    let why = plugin.refused(&["test", "exchange"]).await?;
    ensure!(
        why.contains("refusing to start a TestFailover") && why.contains("not Valid") && why.contains("--force"),
        "{why}"
    );

    let log = mgmt.dir().join(format!("controller-{}.log", s.ns));
    let mut ctl = ControllerProcess::start(
        &controller_bin,
        mgmt.kubeconfig_path(),
        log,
        &["--no-leader-election", "--lease-namespace", &s.ns],
    )?;
    let result = async {
        let plans: Api<RecoveryPlan> = Api::namespaced(s.management.clone(), &s.ns);
        let runs: Api<RecoveryRun> = Api::namespaced(s.management.clone(), &s.ns);
        let valid = wait_for("the plan to be Valid", Duration::from_secs(60), || async {
            let p = plans.get("exchange").await?;
            Ok((condition(&p, "Valid").as_deref() == Some("True")).then_some(p))
        })
        .await;
        let plan = match valid {
            Ok(p) => p,
            Err(e) => bail!("{e:#}; the plan's status: {:?}", plans.get("exchange").await?.status),
        };
        let enabling = plugin_vms_enabling(&s).await?;
        if condition(&plan, "Ready").as_deref() != Some("True") && enabling {
            let why = plugin.refused(&["test", "exchange"]).await?;
            ensure!(why.contains("not Ready"), "refused for not being Ready: {why}");
            // --force overrides the plan's readiness, not a VM's state: a VM without a
            // recovery point has nothing to test, and the controller would refuse the run.
            let why = plugin.refused(&["test", "exchange", "--force", "--dry-run"]).await?;
            ensure!(
                why.contains("with no recovery point yet") && why.contains("wait until it has a recovery point"),
                "refused for the VMs' state: {why}"
            );
        } else {
            eprintln!("note: the plan was Ready before the not-Ready refusal could be checked");
        }
        let plan_text = plugin.ok(&["status", "rplan/exchange"]).await?;
        in_order(
            &plan_text,
            &[
                "Valid  True",
                "● identity",
                "● mailbox",
                "● client-access",
                "VMs",
                "dc01",
            ],
        )?;

        wait_for("the plan to be Ready", Duration::from_secs(180), || async {
            let p = plans.get("exchange").await?;
            Ok((condition(&p, "Ready").as_deref() == Some("True")).then_some(()))
        })
        .await?;
        // --dry-run shows what would be created without creating it.
        let yaml = plugin.ok(&["test", "exchange", "--dry-run"]).await?;
        ensure!(
            yaml.contains("kind: RecoveryRun") && yaml.contains("action: TestFailover"),
            "{yaml}"
        );
        ensure!(
            runs.list(&ListParams::default()).await?.items.is_empty(),
            "dry run created nothing"
        );
        let t0 = Instant::now();
        let created = plugin.ok(&["test", "exchange"]).await?;
        let name = created
            .lines()
            .find_map(|l| l.strip_prefix("recoveryrun.coldsite.io/"))
            .and_then(|l| l.split(' ').next())
            .with_context(|| format!("no run name in: {created}"))?
            .to_owned();
        let stamp = name.strip_prefix("exchange-test-").context("generated name")?;
        ensure!(
            stamp.len() == 15 && stamp.chars().filter(|c| *c == '-').count() == 1,
            "name {name}"
        );

        // The gate holds; status shows what it waits for, since when and what to do.
        wait_for("the run to wait for approval", Duration::from_secs(150), || async {
            let r = runs.get(&name).await?;
            Ok((r.status.and_then(|x| x.phase) == Some(RunPhase::WaitingForApproval)).then_some(()))
        })
        .await?;
        let waiting = plugin.ok(&["status", &name]).await?;
        ensure!(
            waiting
                .contains("⏸ Waiting for approval of confirm-ad-replication (mailbox/pre/confirm-ad-replication) for"),
            "{waiting}"
        );
        ensure!(
            waiting.contains("times out after 2h") && waiting.contains("FSMO roles"),
            "{waiting}"
        );
        ensure!(
            waiting.contains(&format!(
                "kubectl coldsite approve {name} confirm-ad-replication -n {}",
                s.ns
            )),
            "{waiting}"
        );
        ensure!(!waiting.contains('\x1b'), "no colour into a pipe");
        in_order(
            &waiting,
            &[
                "● identity",
                "vm dc01",
                "post verify-ad (Job)",
                "✓ Succeeded",
                "● mailbox",
            ],
        )?;

        // Tab completion through kubectl's plugin completion (kubectl_complete-coldsite).
        let runs_offered = complete_via_kubectl(mgmt, &["coldsite", "-n", &s.ns, "approve", ""])?;
        ensure!(
            runs_offered
                .lines()
                .any(|l| l.starts_with(&format!("{name}\tTestFailover of exchange")))
                && runs_offered.trim_end().ends_with(":4"),
            "{runs_offered}"
        );
        let actions_offered = complete_via_kubectl(mgmt, &["coldsite", "-n", &s.ns, "approve", &name, "conf"])?;
        ensure!(
            actions_offered
                .lines()
                .any(|l| l.starts_with("confirm-ad-replication\t")),
            "{actions_offered}"
        );

        let why = plugin.refused(&["approve", &name, "mount-databases"]).await?;
        ensure!(
            why.contains("not a manual action") && why.contains("confirm-ad-replication"),
            "{why}"
        );
        let approved = plugin.ok(&["approve", &name, "confirm-ad-replication"]).await?;
        ensure!(
            approved.contains("as kubectl-coldsite:coldsite-e2e-admin") && approved.contains("goes on now"),
            "{approved}"
        );
        let again = plugin.ok(&["approve", &name, "confirm-ad-replication"]).await?;
        ensure!(again.contains("already approved"), "{again}");

        // Follow it to the end, as a person watching would.
        let watched = plugin
            .ok_within(&["status", &name, "--watch"], Duration::from_secs(300))
            .await?;
        ensure!(watched.contains("Phase Succeeded"), "{watched}");
        let rto = t0.elapsed();
        let run = runs.get(&name).await?;
        ensure!(
            run.status.as_ref().and_then(|x| x.phase) == Some(RunPhase::Succeeded),
            "succeeded"
        );
        let owners: Vec<String> = run
            .managed_fields()
            .iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("confirm-ad-replication"))
            })
            .filter_map(|m| m.manager.clone())
            .collect();
        ensure!(
            owners == ["kubectl-coldsite:coldsite-e2e-admin"],
            "the approval is owned by the person: {owners:?}"
        );

        let done = plugin.ok(&["status", &format!("rrun/{name}")]).await?;
        in_order(
            &done,
            &[
                "Phase Succeeded",
                "● identity",
                "vm dc01",
                "recovery point",
                "● mailbox",
                "pre confirm-ad-replication (manual)",
                "vm exch-mbx01",
                "recovery point",
                "post mount-databases (webhook)",
                "● client-access",
                "vm exch-cas01",
                "recovery point",
                "Approvals",
                "confirm-ad-replication by kubectl-coldsite:coldsite-e2e-admin",
            ],
        )?;
        ensure!(done.contains("power-on") && done.contains("restore-disks"), "{done}");
        ensure!(
            done.matches(" (crash)").count() + done.matches(" (app)").count() == 3,
            "each VM's recovery point with its consistency: {done}"
        );
        ensure!(
            !done.contains("update-dns"),
            "update-dns does not run in a test: {done}"
        );

        // Reports.
        let ids = step_ids(&s, &run).await?;
        ensure!(ids.len() >= 24, "steps of the run and its VMs: {ids:?}");
        let html_path = out_dir.join(format!("{name}.html"));
        plugin
            .ok(&["report", &name, "-o", html_path.to_str().context("path")?])
            .await?;
        let html = std::fs::read_to_string(&html_path)?;
        ensure!(html.contains("<svg") && html.contains("RTO"), "an HTML report");
        for id in &ids {
            ensure!(html.contains(&format!("data-step=\"{id}\"")), "no bar for {id}");
        }
        ensure!(
            html.matches("<rect class=\"bar\"").count() == ids.len(),
            "one bar per step"
        );
        ensure!(html.contains("coldsite-e2e-admin (kubectl-coldsite)"), "who approved");
        let md = plugin.ok(&["report", &name, "--format", "markdown"]).await?;
        for id in &ids {
            ensure!(
                md.contains(&format!("| `{id}` |")),
                "{id} not in the Markdown table:\n{md}"
            );
        }
        ensure!(md.contains("| **Phase** | Succeeded |"), "{md}");
        render_in_chromium(&html_path, &ids)?;

        let why = plugin.refused(&["approve", &name, "confirm-ad-replication"]).await?;
        ensure!(why.contains("has finished"), "{why}");
        // Its test copies are still there: another test would collide with them.
        let why = plugin.refused(&["test", "exchange"]).await?;
        ensure!(
            why.contains("has not been cleaned up") && why.contains(&format!("kubectl coldsite cleanup {name}")),
            "{why}"
        );

        // Forced, a second test waits in the controller until the first is cleaned up.
        let drill = "exchange-drill";
        let waiter = plugin.clone();
        let queued = tokio::spawn(async move {
            waiter
                .ok_within(
                    &[
                        "test",
                        "exchange",
                        "--force",
                        "--approve",
                        "confirm-ad-replication",
                        "--name",
                        drill,
                        "--wait",
                    ],
                    Duration::from_secs(420),
                )
                .await
        });
        let held = wait_for(
            "the second test to wait for the first one's cleanup",
            Duration::from_secs(60),
            || async {
                let r = runs.get(drill).await?;
                let st = r.status.unwrap_or_default();
                Ok(st
                    .conditions
                    .iter()
                    .find(|c| c.reason == "WaitingForCleanup")
                    .filter(|_| st.phase == Some(RunPhase::Pending) && st.start_time.is_none())
                    .map(|c| c.message.clone()))
            },
        )
        .await?;
        ensure!(held.contains(&format!("kubectl coldsite cleanup {name}")), "{held}");

        // Cleanup deletes the run once the controller removed what the test made.
        let cleaned = plugin.ok_within(&["cleanup", &name], Duration::from_secs(180)).await?;
        ensure!(
            cleaned.contains("TestFailover")
                && cleaned.contains(&format!("RecoveryRun {name} is gone"))
                && cleaned.contains("nothing the test created remains"),
            "{cleaned}"
        );
        ensure!(runs.get_opt(&name).await?.is_none(), "the run is gone");
        let why = plugin.refused(&["status", &name]).await?;
        ensure!(
            why.contains(&format!("no RecoveryRun or RecoveryPlan named {name}")),
            "{why}"
        );

        // The second test starts now, approved up front; `--wait` followed it to the end.
        let waited = queued.await??;
        ensure!(
            waited.contains(&format!("recoveryrun.coldsite.io/{drill} created")) && waited.contains("Phase Succeeded"),
            "{waited}"
        );
        let md = plugin.ok(&["report", drill, "--format", "markdown"]).await?;
        ensure!(
            md.contains("| confirm-ad-replication | coldsite-e2e-admin (kubectl-coldsite) |"),
            "an approval given at creation has its owner too:\n{md}"
        );
        let last_run = format!("Last run: {drill} (TestFailover) Succeeded");
        wait_for(
            "the plan's status to name the last run",
            Duration::from_secs(30),
            || async {
                let text = plugin.ok(&["status", "exchange"]).await?;
                Ok(text.contains(&last_run).then_some(()))
            },
        )
        .await?;
        let cleaned = plugin.ok_within(&["cleanup", drill], Duration::from_secs(180)).await?;
        ensure!(cleaned.contains("is gone"), "{cleaned}");

        eprintln!(
            "plugin e2e: test failover took {:.0}s from `test` to Succeeded; whole test {:.0}s",
            rto.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", ctl.log_tail(40));
    }
    let _ = ctl.kill().await;
    result
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _kubectl__coldsite"),
        ("zsh", "#compdef kubectl-coldsite"),
        ("fish", "complete -c kubectl-coldsite"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-coldsite"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {marker:?} not in the script");
        for cmd in ["status", "approve", "failback", "report"] {
            assert!(text.contains(cmd), "{shell}: no {cmd}");
        }
    }
}

#[test]
fn every_command_explains_itself() {
    for cmd in [
        "status",
        "approve",
        "test",
        "failover",
        "planned",
        "commit",
        "reprotect",
        "failback",
        "cleanup",
        "report",
        "link",
        "completion",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-coldsite"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().count() > 8, "{cmd} --help says too little:\n{text}");
        assert!(text.contains("--namespace"), "{cmd}: cluster options");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-coldsite"))
        .args(["failover", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--recovery-point",
        "--no-shutdown-source",
        "--approve",
        "--dry-run",
        "--force",
        "--wait",
    ] {
        assert!(text.contains(flag), "failover --help has no {flag}");
    }
}
