//! `validate`: manifests checked offline, first as the API server would check each object
//! (schema and CEL rules), then across objects as the controller would (references, cycles,
//! network coverage, address clashes).

use std::path::PathBuf;

use coldsite_engine::validate::{self, Problem, Severity};
use kube::ResourceExt;

use crate::load;

/// Checks every manifest under `paths`; `Ok(false)` when any has an error.
pub fn run(paths: &[PathBuf], namespace: &str, quiet: bool) -> anyhow::Result<bool> {
    let loaded = load::load(paths, namespace)?;
    let mut errors = 0usize;
    for (file, e) in &loaded.unreadable {
        println!("✗ {}: {e}", file.display());
        errors += 1;
    }
    for (file, what, v) in &loaded.violations {
        println!("✗ {}: {what}: {v}", file.display());
        errors += 1;
    }
    if !quiet {
        for (file, what, update) in &loaded.accepted {
            let verb = if *update { "update of " } else { "" };
            println!("✓ {}: {verb}{what}", file.display());
        }
    }

    let inv = &loaded.inventory;
    let mut problems: Vec<Problem> = Vec::new();
    for m in inv.mappings.values() {
        problems.extend(validate::validate_mapping(m, inv));
    }
    for p in inv.protected_vms.values() {
        // Plans report their VMs' problems with more context; lone VMs report their own.
        let planned = loaded
            .plans
            .iter()
            .any(|plan| plan.spec.groups.iter().any(|g| g.vms.contains(&p.name_any())));
        if !planned {
            problems.extend(validate::validate_protected_vm(p, inv));
        }
    }
    for plan in &loaded.plans {
        match validate::validate_plan(plan, inv) {
            Ok((_, warnings)) => problems.extend(warnings),
            Err(list) => problems.extend(list),
        }
    }
    for run in &loaded.runs {
        let ns = run.namespace().unwrap_or_default();
        let plan = loaded
            .plans
            .iter()
            .find(|p| p.name_any() == run.spec.plan && p.namespace().unwrap_or_default() == ns);
        if let Some(plan) = plan {
            problems.extend(validate::validate_run(run, plan));
        } else {
            problems.push(Problem {
                severity: Severity::Warning,
                object: format!("RecoveryRun {ns}/{}", run.name_any()),
                field: "spec.plan".into(),
                message: format!("RecoveryPlan {ns}/{} is not among these manifests", run.spec.plan),
            });
        }
    }
    problems.sort_by(|a, b| (a.severity, &a.object).cmp(&(b.severity, &b.object)));
    problems.dedup();
    let mut warnings = 0usize;
    for p in &problems {
        match p.severity {
            Severity::Error => {
                errors += 1;
                println!("✗ {p}");
            }
            Severity::Warning => {
                warnings += 1;
                println!("! {p}");
            }
        }
    }
    println!(
        "{} coldsite object(s) in {} file(s): {}{}",
        loaded.accepted.len()
            + loaded
                .violations
                .iter()
                .map(|(_, w, _)| w)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        loaded.files,
        if errors == 0 {
            "valid".to_owned()
        } else {
            format!("{errors} error(s)")
        },
        if warnings == 0 {
            String::new()
        } else {
            format!(", {warnings} warning(s)")
        }
    );
    Ok(errors == 0)
}
