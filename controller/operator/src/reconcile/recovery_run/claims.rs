//! Claims: a run owns a VM by writing itself into the ProtectedVM's `status.lastRun`, with
//! the ProtectedVM's resourceVersion as a precondition, so that of two runs racing for one
//! VM exactly one wins (the other's write conflicts and it waits). The claim ends when the
//! run records its phase there.
//!
//! A VM that an earlier run of the same movement already moved (a retry after a run that
//! moved some VMs and not others) is claimed with the steps that run completed for it, so the
//! new run takes them as done and goes on from there.

use coldsite_api::protected_vm::VmRunStatus;
use coldsite_api::recovery_run::{RunPhase, StepState, StepStatus};
use coldsite_api::{ProtectedVM, RecoveryRun, RunAction};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::RUN_MANAGER;
use crate::context::Context;
use crate::error::{Error, Result};

/// Claims `pvm` for `run` unless it changed since it was read: `false` when another writer
/// came first (read again and decide again). `done`: an earlier run already moved it.
pub async fn claim(ctx: &Context, pvm: &ProtectedVM, run: &RecoveryRun, done: bool) -> Result<bool> {
    let earlier = pvm.status.as_ref().and_then(|s| s.last_run.as_ref()).filter(|_| done);
    let part = VmRunStatus {
        run: run.name_any(),
        run_uid: run.uid(),
        action: Some(run.spec.action),
        phase: None,
        recovery_point: earlier.and_then(|e| e.recovery_point.clone()),
        recovery_point_consistency: earlier.and_then(|e| e.recovery_point_consistency),
        recovery_point_one_instant: earlier.is_some_and(|e| e.recovery_point_one_instant),
        steps: earlier.map(taken_over).unwrap_or_default(),
        replaced_point: (run.spec.action == RunAction::ChangeRecoveryPoint)
            .then(|| pvm.status.as_ref()?.last_run.as_ref()?.point_in_use())
            .flatten(),
    };
    write_part(ctx, pvm, &part, pvm.resource_version().as_deref()).await
}

/// Writes a VM's part of a run into its ProtectedVM's `status.lastRun`, as the runs' field
/// manager. With `version`, only while the ProtectedVM is still at that resourceVersion:
/// `false` when it changed meanwhile (read again and decide again).
pub async fn write_part(ctx: &Context, pvm: &ProtectedVM, part: &VmRunStatus, version: Option<&str>) -> Result<bool> {
    let mut patch = serde_json::json!({
        "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
        "status": {"lastRun": part},
    });
    if let Some(v) = version {
        patch["metadata"] = serde_json::json!({"resourceVersion": v});
    }
    let api: Api<ProtectedVM> = Api::namespaced(ctx.client.clone(), &pvm.namespace().unwrap_or_default());
    match api
        .patch_status(
            &pvm.name_any(),
            &PatchParams::apply(RUN_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 && version.is_some() => Ok(false),
        Err(e) => Err(Error::kube(format!(
            "writing ProtectedVM {} status.lastRun",
            pvm.name_any()
        ))(e)),
    }
}

/// The steps an earlier run completed for a VM it moved, as a new run takes them over.
fn taken_over(earlier: &VmRunStatus) -> Vec<StepStatus> {
    earlier
        .steps
        .iter()
        .filter(|s| s.state == StepState::Succeeded)
        .map(|s| StepStatus {
            message: Some(match &s.message {
                Some(m) => format!("done by run {}: {m}", earlier.run),
                None => format!("done by run {}", earlier.run),
            }),
            ..s.clone()
        })
        .collect()
}

/// Claims each VM in order (with whether an earlier run already moved it), stopping at the
/// first that another writer changed meanwhile; the next admission reads them again.
pub async fn claim_all(ctx: &Context, pvms: &[(&ProtectedVM, bool)], run: &RecoveryRun) -> Result<()> {
    for &(pvm, done) in pvms {
        if !claim(ctx, pvm, run, done).await? {
            tracing::debug!(run = %run.name_any(), protected_vm = %pvm.name_any(), "claim lost a race; reading again");
            break;
        }
    }
    Ok(())
}

/// Ends `run`'s claims on the VMs it holds and has not released, recording `phase` as how it
/// ended for them (a run refused or cancelled after it claimed them; or a run that is gone).
pub async fn release(
    ctx: &Context,
    pvms: &[&ProtectedVM],
    run_name: &str,
    run_uid: &str,
    phase: RunPhase,
) -> Result<()> {
    for pvm in pvms {
        let Some(last) = pvm.status.as_ref().and_then(|s| s.last_run.clone()) else {
            continue;
        };
        if last.run_uid.as_deref() != Some(run_uid) || last.phase.is_some() {
            continue;
        }
        let part = VmRunStatus {
            phase: Some(phase),
            ..last
        };
        // Only over the copy read: the run may have recorded more of this VM meanwhile.
        if !write_part(ctx, pvm, &part, pvm.resource_version().as_deref()).await? {
            tracing::debug!(run = run_name, protected_vm = %pvm.name_any(), "changed since read; released later");
        }
    }
    Ok(())
}
