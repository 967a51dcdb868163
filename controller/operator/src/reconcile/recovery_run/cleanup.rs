//! What a test failover created goes when it is cancelled or deleted: at both sites, and
//! its scripts' Jobs on the management cluster. Other runs leave their effects when deleted:
//! they are the recovery.

use coldsite_api::recovery_plan::ScriptSite;
use coldsite_api::{RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::driver::RunContext;
use coldsite_engine::fabric::{Fabric, Progress, RunRef};
use coldsite_engine::model::Direction;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Result};

/// Deletes what the test created at both sites; true once nothing is left.
pub async fn remove_test_resources<F: Fabric>(fabric: &F, rctx: &RunContext) -> Result<bool> {
    let (source, target) = rctx.plan.sites(rctx.run.direction);
    let mut done = true;
    for site in [target, source] {
        match fabric.delete_test_resources(&rctx.run, site).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => done = false,
            Err(e) => {
                return Err(Error::Site {
                    site: site.name.clone(),
                    message: format!("cleaning up the test: {}", e.message),
                });
            }
        }
    }
    Ok(done)
}

/// On deletion: a test failover removes everything it created, at every site, before the
/// run goes. Other runs leave their effects: they are the recovery.
pub async fn cleanup(run: &RecoveryRun, ctx: &Context) -> Result<Action> {
    let uid = run.uid().unwrap_or_default();
    if let Ok(mut m) = ctx.runs.lock() {
        m.remove(&uid);
    }
    if run.spec.action != RunAction::TestFailover || run.status.as_ref().and_then(|s| s.start_time.as_ref()).is_none() {
        return Ok(Action::await_change());
    }
    let ns = run.namespace().unwrap_or_default();
    let plan = Api::<RecoveryPlan>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&run.spec.plan)
        .await
        .map_err(Error::kube("reading the plan"))?;
    let (primary, recovery) = match (&plan, &run.status) {
        (Some(p), _) => (p.spec.primary_site.clone(), p.spec.recovery_site.clone()),
        (None, Some(s)) => (
            s.source_site.clone().unwrap_or_default(),
            s.target_site.clone().unwrap_or_default(),
        ),
        (None, None) => return Ok(Action::await_change()),
    };
    let fabric = ctx.fabric(&primary, &recovery).await?;
    let run_ref = RunRef {
        namespace: ns,
        name: run.name_any(),
        uid,
        action: run.spec.action,
        direction: Direction::Forward,
    };
    let mut left = false;
    for (site, model) in [(&recovery, &fabric.recovery), (&primary, &fabric.primary)] {
        match fabric.delete_test_resources(&run_ref, model).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => left = true,
            Err(e) => {
                return Err(Error::Site {
                    site: site.clone(),
                    message: format!("cleaning up the test: {}", e.message),
                });
            }
        }
    }
    // Scripts on the management cluster, for plans with some that run in a test (the chart
    // grants listing there only in the namespaces of such plans).
    let management_scripts = plan.as_ref().is_some_and(|p| {
        p.spec
            .groups
            .iter()
            .flat_map(|g| g.pre.iter().chain(&g.post))
            .filter(|a| a.when.is_empty() || a.when.iter().any(|k| k.matches(RunAction::TestFailover)))
            .any(|a| {
                a.script
                    .as_ref()
                    .is_some_and(|s| s.site == Some(ScriptSite::Management))
            })
    });
    if management_scripts {
        match fabric.delete_management_scripts(&run_ref).await {
            Ok(Progress::Done(())) => {}
            Ok(Progress::InProgress { .. }) => left = true,
            Err(e) => {
                return Err(Error::Fabric(format!(
                    "cleaning up the test's scripts on the management cluster: {}",
                    e.message
                )));
            }
        }
    }
    if left {
        // The finalizer stays until the next pass finds nothing.
        return Err(Error::Fabric("test resources are being deleted".into()));
    }
    ctx.event(
        run,
        false,
        "CleanedUp",
        "Cleanup",
        "everything the test created was removed".into(),
    )
    .await;
    Ok(Action::await_change())
}
