//! What a test failover created goes when it is cancelled or deleted: at both sites, and
//! its scripts' Jobs on the management cluster. Other runs leave their effects when deleted:
//! they are the recovery. On request (the annotation [`DISCARD_PARTIAL`], which
//! `kubectl coldsite cleanup --discard-partial` sets), a failover that ended half-way also
//! removes what it left at the target for the VMs it did not move.

use coldsite_api::recovery_plan::ScriptSite;
use coldsite_api::recovery_run::DISCARD_PARTIAL;
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, RunAction};
use coldsite_engine::driver::RunContext;
use coldsite_engine::fabric::{Fabric, Progress, RunRef};
use coldsite_engine::model::Direction;
use coldsite_engine::standing;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::admission::finished;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kubevirt::fabric::PartialVm;

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
/// run goes. Other runs leave their effects: they are the recovery; a failover that ended
/// half-way removes its partial results if asked.
pub async fn cleanup(run: &RecoveryRun, ctx: &Context) -> Result<Action> {
    let uid = run.uid().unwrap_or_default();
    if let Ok(mut m) = ctx.runs.lock() {
        m.remove(&uid);
    }
    if run.status.as_ref().and_then(|s| s.start_time.as_ref()).is_none() {
        return Ok(Action::await_change());
    }
    if run.spec.action == RunAction::TestFailover {
        return remove_test(run, ctx, &uid).await;
    }
    if run.annotations().get(DISCARD_PARTIAL).is_some_and(|v| v == "true") && finished(run) {
        return discard_partial(run, ctx, &uid).await;
    }
    Ok(Action::await_change())
}

/// Removes everything a test created, at both sites and on the management cluster.
async fn remove_test(run: &RecoveryRun, ctx: &Context, uid: &str) -> Result<Action> {
    let uid = uid.to_owned();
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
    let management_scripts = plan.as_ref().is_some_and(tests_script_on_management);
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

/// Whether a test of the plan runs scripts on the management cluster.
fn tests_script_on_management(plan: &RecoveryPlan) -> bool {
    plan.spec
        .groups
        .iter()
        .flat_map(|g| g.pre.iter().chain(&g.post))
        .filter(|a| a.when.is_empty() || a.when.iter().any(|k| k.matches(RunAction::TestFailover)))
        .any(|a| {
            a.script
                .as_ref()
                .is_some_and(|s| s.site == Some(ScriptSite::Management))
        })
}

/// Removes what the run left at its target for each VM it held last and did not move there.
/// VMs another run has claimed since are that run's to adopt.
async fn discard_partial(run: &RecoveryRun, ctx: &Context, uid: &str) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    let Some(target) = run.status.as_ref().and_then(|s| s.target_site.clone()) else {
        return Ok(Action::await_change());
    };
    let pvms = Api::<ProtectedVM>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing ProtectedVMs"))?;
    let mut left = false;
    let mut discarded = Vec::new();
    for pvm in &pvms.items {
        let Some(last) = pvm.status.as_ref().and_then(|s| s.last_run.as_ref()) else {
            continue;
        };
        if last.run_uid.as_deref() != Some(uid) || last.phase.is_none() || standing::outcome(last).completed {
            continue;
        }
        let fabric = ctx.fabric(&pvm.spec.primary_site, &pvm.spec.recovery_site).await?;
        let name = pvm.name_any();
        let vm = PartialVm {
            pvm: &name,
            namespace: pvm.spec.vm.namespace.as_deref().unwrap_or(&ns),
        };
        match fabric.discard_partial(uid, &target, &vm).await {
            Ok(Progress::Done(())) => discarded.push(name),
            Ok(Progress::InProgress { .. }) => left = true,
            Err(e) => {
                return Err(Error::Site {
                    site: target,
                    message: format!("discarding what the run left for {name}: {}", e.message),
                });
            }
        }
    }
    if left {
        return Err(Error::Fabric("the run's partial results are being deleted".into()));
    }
    let note = format!(
        "removed what the run left at {target} for the VMs it did not move: {}",
        if discarded.is_empty() {
            "none".to_owned()
        } else {
            coldsite_engine::listing::some_of(&discarded)
        }
    );
    ctx.event(run, false, "PartialDiscarded", "Cleanup", note).await;
    Ok(Action::await_change())
}
