//! The `validate` command as a CI job would run it.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn validate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-coldsite"))
        .arg("validate")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The example's top-level manifests (not its VirtualMachines or runs) in a temporary folder.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("examples/exchange")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn exchange_example_is_valid() {
    let (ok, out) = validate(&["examples/exchange"]);
    assert!(ok, "{out}");
    assert!(out.contains("9 coldsite object(s)"), "{out}");
    assert!(
        !out.contains("warning"),
        "the VM manifests let every NIC be checked: {out}"
    );
    assert!(
        out.contains("✓ examples/exchange/30-recovery-plan.yaml: RecoveryPlan default/exchange"),
        "{out}"
    );
}

#[test]
fn each_invalid_example_fails_with_its_message() {
    for entry in std::fs::read_dir(repo().join("examples/invalid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().find_map(|l| l.strip_prefix("# expect: ")).unwrap();
        let (ok, out) = validate(&[path.to_str().unwrap()]);
        assert!(!ok, "{} passed validation", path.display());
        assert!(out.contains(expect), "{}: {expect:?} not in:\n{out}", path.display());
    }
}

#[test]
fn a_missing_path_is_an_error_not_a_pass() {
    let (ok, _) = validate(&["examples/no-such-folder"]);
    assert!(!ok);
}

#[test]
fn cross_object_problems_fail_validation() {
    let dir = example_copy();
    let plan = std::fs::read_to_string(dir.path().join("30-recovery-plan.yaml")).unwrap();
    // identity now waits for client-access, which waits for mailbox, which waits for identity.
    let cyclic = plan.replacen(
        "    - name: identity\n      vms: [dc01]\n",
        "    - name: identity\n      vms: [dc01]\n      dependsOn: [client-access]\n",
        1,
    );
    std::fs::write(dir.path().join("30-recovery-plan.yaml"), cyclic).unwrap();
    let (ok, out) = validate(&[dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("groups depend on each other in a cycle: identity → client-access → mailbox → identity"),
        "{out}"
    );
    // Without the VirtualMachine manifests the NICs cannot be checked, and validate says so.
    assert!(
        out.contains("VirtualMachine default/dc01 was not found, so its NICs and addresses were not checked"),
        "{out}"
    );
}

#[test]
fn an_approval_must_name_a_manual_action_of_the_plan() {
    let dir = example_copy();
    let run = |approvals: &str| {
        format!(
            "apiVersion: coldsite.io/v1alpha1\nkind: RecoveryRun\nmetadata: {{name: r}}\n\
             spec: {{plan: exchange, action: TestFailover, approvals: {approvals}}}\n"
        )
    };
    std::fs::write(dir.path().join("run.yaml"), run("[confirm-ad-replicaton]")).unwrap();
    let (ok, out) = validate(&["--quiet", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "RecoveryRun default/r: spec.approvals[0]: \"confirm-ad-replicaton\" is not a manual action of \
             RecoveryPlan exchange; its manual actions: confirm-ad-replication"
        ),
        "{out}"
    );
    std::fs::write(dir.path().join("run.yaml"), run("[confirm-ad-replication]")).unwrap();
    let (ok, out) = validate(&["--quiet", dir.path().to_str().unwrap()]);
    assert!(ok, "the right name passes: {out}");
}

#[test]
fn a_drill_schedule_that_never_fires_is_refused_and_a_plain_http_webhook_warned_about() {
    let dir = example_copy();
    let path = dir.path().join("30-recovery-plan.yaml");
    let plan = std::fs::read_to_string(&path).unwrap();
    let schedule = plan
        .lines()
        .find(|l| l.trim_start().starts_with("schedule:"))
        .unwrap()
        .to_owned();
    std::fs::write(&path, plan.replace(&schedule, "    schedule: \"0 3 31 2 *\"")).unwrap();
    let (ok, out) = validate(&["--quiet", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("spec.drill.schedule: \"0 3 31 2 *\" never fires"), "{out}");

    // Plain http with the plan's consent passes, with a warning the plan's status repeats.
    let url = "https://automation.contoso.com/hooks/exchange/mount-databases";
    assert!(plan.contains(url));
    let consented = plan.replace(
        url,
        "http://automation.contoso.com/hooks/exchange/mount-databases\n              insecureHttp: true",
    );
    std::fs::write(&path, consented).unwrap();
    let (ok, out) = validate(&[dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("is plain http (insecureHttp): the run's context and signature travel in clear"),
        "{out}"
    );
}
