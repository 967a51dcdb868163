//! Where a run's time went: for each group, from its start until the last of its VMs had
//! its disks restored, was created, was powered on, was ready at the site and was seen ready
//! by coldsite, then until the group was ready and done, and the wait before the next group
//! started. Read from the run's own records (group steps in the run, VM steps in each
//! ProtectedVM's `status.lastRun`) and from when the site's VMIs became Ready.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use coldsite_api::recovery_run::{StepKind, StepStatus};
use coldsite_engine::time::from_k8s;

/// The stretches of one group, in seconds, in the order a group goes through them.
pub const STAGES: [&str; 8] = [
    "before the group started (previous group done, or the run's start)",
    "started -> last VM's disks restored",
    "-> last VM created",
    "-> last VM powered on",
    "-> last VM ready at the site (simulated boot)",
    "-> last VM seen ready by coldsite",
    "-> group ready",
    "-> group done",
];

/// Seconds per stage, summed over the groups, and the same for the slowest group.
#[derive(Debug, Default, PartialEq)]
pub struct Breakdown {
    pub total: [f64; STAGES.len()],
    pub slowest: [f64; STAGES.len()],
    /// Each VM from power-on to ready at the site (the simulated boot), p50 and max.
    pub boot: (f64, f64),
    /// Each VM from ready at the site until coldsite's readiness step saw it, p50 and max.
    pub noticed: (f64, f64),
}

fn finished(s: &StepStatus) -> Option<DateTime<Utc>> {
    s.finished_at.as_ref().map(from_k8s)
}

/// The last finish of `kind` among `steps` of `group`.
fn last(steps: &[StepStatus], group: &str, kind: StepKind) -> Option<DateTime<Utc>> {
    steps
        .iter()
        .filter(|s| s.kind == Some(kind) && s.group.as_deref() == Some(group))
        .filter_map(finished)
        .max()
}

/// The stretches of each group in `groups` (the run's order), from `start` (the run's).
/// `site_ready`: when each VM (by the name its steps target) was Ready at the site.
pub fn breakdown(
    start: DateTime<Utc>,
    groups: &[String],
    run_steps: &[StepStatus],
    vm_steps: &[StepStatus],
    site_ready: &BTreeMap<String, DateTime<Utc>>,
) -> Breakdown {
    let mut out = Breakdown::default();
    let mut previous_done = start;
    let mut per_group = Vec::new();
    for g in groups {
        let Some(started) = last(run_steps, g, StepKind::Start) else {
            continue;
        };
        let marks = [
            Some(previous_done),
            Some(started),
            last(vm_steps, g, StepKind::RestoreDisks),
            last(vm_steps, g, StepKind::CreateVm),
            last(vm_steps, g, StepKind::PowerOn),
            vm_steps
                .iter()
                .filter(|s| s.kind == Some(StepKind::VmReady) && s.group.as_deref() == Some(g.as_str()))
                .filter_map(|s| site_ready.get(s.target.as_deref()?))
                .max()
                .copied(),
            last(vm_steps, g, StepKind::VmReady),
            last(run_steps, g, StepKind::Ready),
            last(run_steps, g, StepKind::Done),
        ];
        let mut stretch = [0.0; STAGES.len()];
        let mut at = previous_done;
        for (i, mark) in marks.iter().skip(1).enumerate() {
            if let Some(t) = mark {
                stretch[i] = (*t - at).as_seconds_f64().max(0.0);
                at = at.max(*t);
            }
        }
        previous_done = at;
        per_group.push(stretch);
    }
    for stretch in &per_group {
        for (i, s) in stretch.iter().enumerate() {
            out.total[i] += s;
        }
    }
    if let Some(slowest) = per_group
        .iter()
        .max_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum::<f64>()))
    {
        out.slowest = *slowest;
    }
    let (mut boot, mut noticed) = (Vec::new(), Vec::new());
    for (vm, m) in vm_marks(vm_steps) {
        if let Some(ready) = site_ready.get(vm) {
            boot.extend(m.on.map(|on| (*ready - on).as_seconds_f64().max(0.0)));
            noticed.extend(m.seen.map(|seen| (seen - *ready).as_seconds_f64().max(0.0)));
        }
    }
    (out.boot, out.noticed) = (p50_max(boot), p50_max(noticed));
    out
}

/// A VM's power-on and readiness finishes.
#[derive(Default)]
struct Marks {
    on: Option<DateTime<Utc>>,
    seen: Option<DateTime<Utc>>,
}

/// Each VM's marks, by the name its steps target.
fn vm_marks(vm_steps: &[StepStatus]) -> BTreeMap<&str, Marks> {
    let mut by_vm: BTreeMap<&str, Marks> = BTreeMap::new();
    for s in vm_steps {
        let Some(vm) = s.target.as_deref() else { continue };
        match s.kind {
            Some(StepKind::PowerOn) => by_vm.entry(vm).or_default().on = finished(s),
            Some(StepKind::VmReady) => by_vm.entry(vm).or_default().seen = finished(s),
            _ => {}
        }
    }
    by_vm
}

fn p50_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    match values.last() {
        Some(max) => (values[values.len() / 2], *max),
        None => (0.0, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use coldsite_api::recovery_run::StepState;
    use coldsite_engine::time::to_k8s;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + s, 0).unwrap()
    }

    fn step(group: &str, kind: StepKind, target: &str, done: i64) -> StepStatus {
        StepStatus {
            id: format!("{group}/{target}/{kind:?}"),
            group: Some(group.into()),
            kind: Some(kind),
            target: Some(target.into()),
            state: StepState::Succeeded,
            finished_at: Some(to_k8s(at(done))),
            ..Default::default()
        }
    }

    #[test]
    fn each_groups_time_is_split_at_its_last_vms_marks() {
        let groups = vec!["a".to_owned(), "b".to_owned()];
        let run = vec![
            step("a", StepKind::Start, "a", 1),
            step("a", StepKind::Ready, "a", 40),
            step("a", StepKind::Done, "a", 41),
            step("b", StepKind::Start, "b", 43),
            step("b", StepKind::Ready, "b", 90),
            step("b", StepKind::Done, "b", 90),
        ];
        let mut vms = Vec::new();
        for (vm, restored, on, ready) in [("v1", 5, 7, 37), ("v2", 6, 9, 39)] {
            vms.push(step("a", StepKind::RestoreDisks, vm, restored));
            vms.push(step("a", StepKind::CreateVm, vm, restored + 1));
            vms.push(step("a", StepKind::PowerOn, vm, on));
            vms.push(step("a", StepKind::VmReady, vm, ready));
        }
        for (kind, done) in [
            (StepKind::RestoreDisks, 50),
            (StepKind::CreateVm, 51),
            (StepKind::PowerOn, 52),
            (StepKind::VmReady, 85),
        ] {
            vms.push(step("b", kind, "v3", done));
        }
        let site_ready: BTreeMap<String, DateTime<Utc>> = [("v1", 36), ("v2", 38), ("v3", 82)]
            .map(|(vm, t)| (vm.to_owned(), at(t)))
            .into();
        let b = breakdown(at(0), &groups, &run, &vms, &site_ready);
        assert_eq!(b.total, [3.0, 12.0, 2.0, 3.0, 59.0, 4.0, 6.0, 1.0]);
        assert_eq!(b.slowest, [2.0, 7.0, 1.0, 1.0, 30.0, 3.0, 5.0, 0.0]);
        assert_eq!(b.total.iter().sum::<f64>(), 90.0, "the stretches add up to the run");
        assert_eq!(b.boot, (29.0, 30.0), "v1 29 s, v2 29 s, v3 30 s");
        assert_eq!(b.noticed, (1.0, 3.0), "v1 1 s, v2 1 s, v3 3 s");
    }
}
