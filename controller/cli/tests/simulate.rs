//! `simulate` on the Exchange example: the timeline the README shows.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn simulate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-coldsite"))
        .arg("simulate")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The run as JSON, and whether the command exited 0 (it does not when the run fails).
fn run_json(args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["examples/exchange", "--output", "json"];
    all.extend_from_slice(args);
    let (ok, out) = simulate(&all);
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (ok, json)
}

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, run) = run_json(args);
    assert!(ok, "{run}");
    run
}

fn step<'a>(run: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}"))
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn test_failover_prints_identity_then_approval_then_mailbox_then_client_access() {
    let (ok, out) = simulate(&["examples/exchange", "--approve-after", "5m"]);
    assert!(ok, "{out}");
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} not in:\n{out}"));
    assert!(at("● identity") < at("waited 5m for approval"));
    assert!(at("waited 5m for approval") < at("vm exch-mbx01"));
    assert!(at("● mailbox") < at("● client-access"));
    assert!(out.contains("Succeeded. Estimated RTO"), "{out}");
}

#[test]
fn the_json_timeline_keeps_the_order_and_the_gate() {
    let run = json(&["--approve-after", "10m"]);
    assert_eq!(run["phase"], "Succeeded");
    let dc_up = time(&step(&run, "identity/vm/dc01/ready")["finishedAt"]);
    let fsmo = step(&run, "identity/post/verify-ad");
    let gate = step(&run, "mailbox/pre/confirm-ad-replication");
    let mbx_on = time(&step(&run, "mailbox/vm/exch-mbx01/power-on")["startedAt"]);
    let mbx_up = time(&step(&run, "mailbox/vm/exch-mbx01/ready")["finishedAt"]);
    let mount = time(&step(&run, "mailbox/post/mount-databases")["finishedAt"]);
    let cas_on = time(&step(&run, "client-access/vm/exch-cas01/power-on")["startedAt"]);
    assert!(time(&fsmo["startedAt"]) >= dc_up);
    assert!(time(&gate["startedAt"]) >= time(&fsmo["finishedAt"]));
    // The gate held for the ten minutes nobody approved.
    assert_eq!(
        (time(&gate["finishedAt"]) - time(&gate["startedAt"])).num_seconds(),
        600
    );
    assert!(mbx_on >= time(&gate["finishedAt"]));
    assert!(cas_on >= mount && mount >= mbx_up);
    assert!(run["rtoSeconds"].as_u64().unwrap() > 600);
}

#[test]
fn planned_failover_shuts_down_in_reverse_and_runs_dns() {
    let run = json(&["--action", "PlannedFailover"]);
    assert_eq!(run["phase"], "Succeeded");
    let stopped = |g: &str| time(&step(&run, &format!("{g}/shutdown"))["finishedAt"]);
    assert!(stopped("client-access") <= stopped("mailbox") && stopped("mailbox") <= stopped("identity"));
    let sync = step(&run, "identity/vm/dc01/final-sync");
    let restore = step(&run, "identity/vm/dc01/restore-disks");
    assert_eq!(sync["recoveryPoint"], restore["recoveryPoint"]);
    // The final sync of a stopped VM: its disks were still.
    assert_eq!(restore["recoveryPointConsistency"], "App");
    assert!(time(&sync["recoveryPoint"]) >= time(&step(&run, "identity/vm/dc01/stop-source")["finishedAt"]));
    assert_eq!(step(&run, "client-access/post/update-dns")["state"], "Succeeded");
}

#[test]
fn nobody_approving_fails_the_run_at_the_gate() {
    let (ok, out) = simulate(&["examples/exchange", "--approve-after", "never"]);
    assert!(!ok);
    assert!(out.contains("no approval within 2h"), "{out}");
    assert!(out.contains("Failed."), "{out}");
}

#[test]
fn a_boot_failure_is_reported_against_its_vm() {
    let (ok, out) = simulate(&["examples/exchange", "--boot-failure", "exch-mbx01"]);
    assert!(!ok);
    assert!(
        out.contains("mailbox/vm/exch-mbx01/ready: timed out after 10m"),
        "{out}"
    );
}

#[test]
fn unplanned_failover_with_hq_down() {
    // Unreachable is not down: without --force the run waits for HQ to answer.
    let (ok, waited) = run_json(&["--action", "Failover", "--site-down", "contoso-hq"]);
    assert!(!ok && waited["phase"] == "Failed", "{waited}");
    // Shutdown goes in reverse order: client access first.
    let stop = step(&waited, "client-access/vm/exch-cas01/stop-source");
    assert_eq!(stop["state"], "Failed", "{stop}");
    assert!(stop["message"].as_str().unwrap().contains("timed out"), "{stop}");
    assert!(
        waited["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !(s["kind"] == "PowerOn" && s["state"] == "Succeeded")),
        "nothing may start at DR while HQ may still run its copies: {waited}"
    );

    let run = json(&["--action", "Failover", "--site-down", "contoso-hq", "--force"]);
    assert_eq!(run["phase"], "Succeeded");
    let stop = step(&run, "identity/vm/dc01/stop-source");
    assert!(
        stop["message"]
            .as_str()
            .unwrap()
            .contains("source site down, not waited for"),
        "{stop}"
    );
}

#[test]
fn latest_app_consistent_restores_the_mailbox_from_a_frozen_point_and_names_the_fix_for_the_others() {
    let (ok, out) = simulate(&["examples/exchange", "--recovery-point", "LatestAppConsistent"]);
    assert!(!ok, "{out}");
    // exch-mbx01 has appConsistentInterval: its restore succeeds from such a point.
    assert!(!out.contains("exch-mbx01/restore-disks:"), "{out}");
    let (_, run) = run_json(&["--recovery-point", "LatestAppConsistent"]);
    assert_eq!(
        step(&run, "mailbox/vm/exch-mbx01/restore-disks")["recoveryPointConsistency"],
        "App"
    );
    let latest = json(&[]);
    assert_eq!(
        step(&latest, "identity/vm/dc01/restore-disks")["recoveryPointConsistency"],
        "Crash"
    );
    for vm in ["dc01", "exch-cas01"] {
        assert!(
            out.contains(&format!(
                "VM {vm}: no application-consistent recovery point within retention; it has no \
                 spec.replication.appConsistentInterval: set one, or run with recoveryPoint Latest"
            )),
            "{out}"
        );
    }
}

#[test]
fn a_repoint_halts_restores_and_starts_each_vm_at_dr_from_the_older_point() {
    let asked = "2026-12-31T21:00:00Z";
    let run = json(&["--action", "ChangeRecoveryPoint", "--recovery-point", asked]);
    assert_eq!(run["phase"], "Succeeded");
    let halted = |g: &str| time(&step(&run, &format!("{g}/shutdown"))["finishedAt"]);
    assert!(halted("client-access") <= halted("mailbox") && halted("mailbox") <= halted("identity"));
    for (group, vm) in [
        ("identity", "dc01"),
        ("mailbox", "exch-mbx01"),
        ("client-access", "exch-cas01"),
    ] {
        let at = |kind: &str| step(&run, &format!("{group}/vm/{vm}/{kind}")).clone();
        let restore = at("restore-disks");
        assert!(
            time(&restore["recoveryPoint"]) <= time(&serde_json::json!(asked)),
            "{restore}"
        );
        assert!(time(&at("halt")["finishedAt"]) <= time(&restore["startedAt"]));
        assert_eq!(at("ready")["state"], "Succeeded");
    }
    let ids: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        !ids.iter()
            .any(|id| id.ends_with("stop-source") || id.contains("/pre/") || id.contains("/post/")),
        "a repoint leaves the primary alone and runs no script unasked: {ids:?}"
    );
}

/// The Exchange example with HQ cutting group snapshots, the client access server syncing on
/// a 10-minute RPO (its points fall on another schedule than the mailbox's), and, when
/// `grouped`, the two in a consistency group: each VM's restore, as the run records it.
fn restores_of_mailbox_and_client_access(grouped: bool) -> (serde_json::Value, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let from = repo().join("examples/exchange");
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("primary-site")).unwrap();
    std::fs::copy(
        from.join("primary-site/virtual-machines.yaml"),
        dir.path().join("primary-site/virtual-machines.yaml"),
    )
    .unwrap();
    let edit = |file: &str, from: &str, to: &str| {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    edit(
        "00-sites.yaml",
        "# volumeGroupSnapshotClassName: ceph-rbd-groupsnap",
        "volumeGroupSnapshotClassName: ceph-rbd-groupsnap",
    );
    let cas = "name: exch-cas01\n";
    let pvms = std::fs::read_to_string(dir.path().join("20-protected-vms.yaml")).unwrap();
    let at = pvms.find(cas).unwrap();
    let (head, tail) = pvms.split_at(at);
    std::fs::write(
        dir.path().join("20-protected-vms.yaml"),
        format!("{head}{}", tail.replacen("rpo: 15m", "rpo: 10m", 1)),
    )
    .unwrap();
    if grouped {
        edit(
            "30-recovery-plan.yaml",
            "  recoverySite: contoso-dr\n",
            "  recoverySite: contoso-dr\n  consistencyGroups:\n    - name: mail\n      vms: [exch-mbx01, exch-cas01]\n",
        );
    }
    let (ok, out) = simulate(&[dir.path().to_str().unwrap(), "--output", "json"]);
    assert!(ok, "{out}");
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        step(&run, "mailbox/vm/exch-mbx01/restore-disks").clone(),
        step(&run, "client-access/vm/exch-cas01/restore-disks").clone(),
    )
}

#[test]
fn a_consistency_group_restores_its_vms_from_one_instant() {
    let (mbx, cas) = restores_of_mailbox_and_client_access(false);
    assert_ne!(
        mbx["recoveryPoint"], cas["recoveryPoint"],
        "on their own the two restore their own newest points"
    );
    let (mbx, cas) = restores_of_mailbox_and_client_access(true);
    assert_eq!(mbx["recoveryPoint"], cas["recoveryPoint"], "one instant for the group");
    // The simulated sites sync every 7 and every 5 minutes: instants both hold are 35 apart.
    assert_eq!(time(&mbx["recoveryPoint"]).timestamp() % (35 * 60), 0, "{mbx}");
}
