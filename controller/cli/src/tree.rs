//! `status` as text: a run as a tree of groups, actions, VMs and their steps; a plan with its
//! conditions, groups and VMs. Pure functions of the views, with or without colour.

use chrono::{DateTime, Utc};
use coldsite_api::common::find_condition;
use coldsite_api::protected_vm::ReplicationHealth;
use coldsite_api::recovery_plan::{Action, DrillSummary};
use coldsite_api::recovery_run::{StepKind, StepState};
use coldsite_api::{ProtectedVM, RecoveryPlan, RunAction};
use coldsite_engine::time::from_k8s;
use kube::ResourceExt;

use crate::view::{GroupView, RunView, Step, VmView, duration, startup_order, time};

/// Groups with more VMs than this show only the VMs that are not done, and a count.
const VMS_SHOWN: usize = 12;

/// ANSI styling, or none.
#[derive(Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// A state's mark and word, coloured by what it means.
    pub fn state(self, s: StepState) -> String {
        let (mark, word, code) = match s {
            StepState::Succeeded => ("✓", "Succeeded", "32"),
            StepState::FailedContinued => ("✗", "Failed (continued)", "33"),
            StepState::Failed => ("✗", "Failed", "31"),
            StepState::Running => ("▶", "Running", "36"),
            StepState::WaitingForApproval => ("⏸", "Waiting for approval", "33;1"),
            StepState::Pending => ("·", "Pending", "2"),
            StepState::Skipped => ("–", "Skipped", "2"),
        };
        self.paint(code, &format!("{mark} {word}"))
    }
}

/// Characters a terminal shows: ANSI colour sequences take no room.
fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

fn pad(text: &str, width: usize) -> String {
    let n = visible_len(text);
    if n >= width {
        format!("{text} ")
    } else {
        format!("{text}{}", " ".repeat(width - n))
    }
}

/// `3m12s`, or `3m12s…` while it runs, or nothing before it starts.
fn took(step: &Step, now: DateTime<Utc>) -> String {
    match step.seconds(now) {
        Some(s) if step.finished.is_some() => duration(s),
        Some(s) => format!("{}…", duration(s)),
        None => String::new(),
    }
}

fn action_kind(step: &Step) -> &'static str {
    match step.kind {
        Some(StepKind::Manual) => "manual",
        Some(StepKind::Job) => "Job",
        Some(StepKind::Webhook) => "webhook",
        _ => "action",
    }
}

fn step_line(out: &mut Vec<String>, prefix: &str, label: &str, step: &Step, now: DateTime<Utc>, st: Style) {
    let mut line = format!(
        "{prefix}{}{}{}",
        pad(label, 42usize.saturating_sub(prefix.chars().count())),
        pad(&st.state(step.state), 24),
        took(step, now)
    );
    if step.attempts > 1 {
        line.push_str(&st.dim(&format!("  ({} attempts)", step.attempts)));
    }
    if let Some(m) = &step.message
        && step.state != StepState::Succeeded
    {
        line.push_str(&format!("  {}", st.dim(m)));
    }
    out.push(line.trim_end().to_owned());
}

fn vm_lines(out: &mut Vec<String>, lead: &str, last: bool, vm: &VmView, v: &RunView, st: Style) {
    let (now, v_finished) = (v.now, v.is_finished());
    let (branch, cont) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
    let mut point = match vm.point {
        Some(p) => format!("  recovery point {} ({})", time(p.time), p.consistency_word()),
        None => String::new(),
    };
    if let Some(r) = &vm.replaced {
        point.push_str(&format!(
            "{}{}",
            if point.is_empty() { "  " } else { ", " },
            r.describe(time)
        ));
    }
    if !vm.recorded {
        out.push(format!(
            "{lead}{branch}vm {}  {}",
            vm.name,
            st.dim(if v_finished {
                "no record of this run (a later run replaced it)"
            } else {
                "not started yet"
            })
        ));
        return;
    }
    let total = match (vm.started(), vm.finished()) {
        (Some(a), Some(b)) => duration((b - a).num_seconds()),
        (Some(a), None) if vm.state() != StepState::Pending => format!("{}…", duration((now - a).num_seconds())),
        _ => String::new(),
    };
    let header = format!(
        "{lead}{branch}{}{}{}",
        pad(
            &format!("vm {}", vm.name),
            42usize.saturating_sub(lead.chars().count() + 3)
        ),
        pad(&st.state(vm.state()), 24),
        total
    );
    out.push(format!("{}{}", header.trim_end(), st.dim(&point)));
    for (i, s) in vm.steps.iter().enumerate() {
        let b = if i + 1 == vm.steps.len() { "└─ " } else { "├─ " };
        step_line(out, &format!("{lead}{cont}{b}"), s.short(), s, now, st);
    }
}

fn group_lines(out: &mut Vec<String>, g: &GroupView, v: &RunView, st: Style) {
    let now = v.now;
    let span = match (g.started(), g.finished()) {
        (Some(a), Some(b)) => duration((b - a).num_seconds()),
        (Some(a), None) => format!("{}…", duration((now - a).num_seconds())),
        _ => String::new(),
    };
    let counts = g
        .progress
        .as_ref()
        .map(|p| format!("  {}/{} VMs up", p.succeeded, p.total))
        .unwrap_or_default();
    out.push(
        format!(
            "{}{}{}{}",
            pad(&st.bold(&format!("● {}", g.name)), 42),
            pad(&st.state(g.state()), 24),
            span,
            st.dim(&counts)
        )
        .trim_end()
        .to_owned(),
    );
    enum Item<'a> {
        Action(&'a str, &'a Step),
        Vm(&'a VmView),
        More(usize),
    }
    let mut items: Vec<Item> = g.pre.iter().map(|s| Item::Action("pre", s)).collect();
    if g.vms.len() > VMS_SHOWN {
        let shown: Vec<&VmView> = g.vms.iter().filter(|v| v.state() != StepState::Succeeded).collect();
        let hidden = g.vms.len() - shown.len().min(VMS_SHOWN);
        items.extend(shown.into_iter().take(VMS_SHOWN).map(Item::Vm));
        if hidden > 0 {
            items.push(Item::More(hidden));
        }
    } else {
        items.extend(g.vms.iter().map(Item::Vm));
    }
    items.extend(g.post.iter().map(|s| Item::Action("post", s)));
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let last = i + 1 == n;
        let branch = if last { "└─ " } else { "├─ " };
        match item {
            Item::Action(phase, s) => {
                let label = format!("{phase} {} ({})", s.short(), action_kind(s));
                step_line(out, branch, &label, s, now, st);
                if let Some(w) = v.waits.iter().find(|w| w.step == s.id) {
                    let cont = if last { "   " } else { "│  " };
                    let mut note = String::from("needs approval: kubectl coldsite approve RUN ACTION")
                        .replace("RUN", &v.name)
                        .replace("ACTION", &w.action);
                    if let Some(t) = &w.timeout {
                        note.push_str(&format!(" (times out after {t})"));
                    }
                    out.push(format!("{branch_cont}{}", st.yellow(&note), branch_cont = cont));
                }
            }
            Item::Vm(vm) => vm_lines(out, "", last, vm, v, st),
            Item::More(k) => out.push(format!(
                "{branch}{}",
                st.dim(&format!("… and {k} more VMs, all succeeded"))
            )),
        }
    }
}

/// A run as a tree, with a header, the approval waits and how to approve, the source
/// shutdown in reverse order, then each group in startup order.
pub fn render_run(v: &RunView, st: Style) -> String {
    let mut out: Vec<String> = Vec::new();
    run_header(&mut out, v, st);
    wait_lines(&mut out, v, st);
    if v.has_shutdown() {
        shutdown_lines(&mut out, v, st);
    }
    out.push(String::new());
    out.push(st.bold(&format!(
        "Recovery{}",
        v.target_site.as_ref().map(|s| format!(" at {s}")).unwrap_or_default()
    )));
    for g in &v.groups {
        group_lines(&mut out, g, v, st);
    }
    for s in &v.other {
        step_line(&mut out, "● ", &s.id, s, v.now, st);
    }
    approval_lines(&mut out, v, st);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The run's title, its phase and progress on one line, and what it is doing or why it ended.
fn run_header(out: &mut Vec<String>, v: &RunView, st: Style) {
    let sites = match (&v.source_site, &v.target_site) {
        (Some(a), Some(b)) => format!(": {a} → {b}"),
        _ => String::new(),
    };
    out.push(format!(
        "{} {}/{}  {} of plan {}{sites}",
        st.bold("RecoveryRun"),
        v.namespace,
        v.name,
        v.action,
        v.plan
    ));
    let phase = match v.phase {
        coldsite_api::recovery_run::RunPhase::Succeeded => st.green("Succeeded"),
        coldsite_api::recovery_run::RunPhase::Failed => st.red("Failed"),
        coldsite_api::recovery_run::RunPhase::WaitingForApproval => st.yellow("WaitingForApproval"),
        p => format!("{p:?}"),
    };
    let mut facts = vec![format!("Phase {phase}")];
    if let Some(p) = &v.progress {
        facts.push(format!("steps {p}"));
    }
    if let Some(t) = v.started {
        facts.push(format!("started {}", time(t)));
    }
    match (v.rto_seconds, v.elapsed()) {
        (Some(rto), _) => facts.push(format!("RTO {}", duration(rto))),
        (None, Some(e)) => facts.push(format!("elapsed {}", duration(e))),
        _ => {}
    }
    if matches!(
        v.action,
        RunAction::TestFailover | RunAction::Failover | RunAction::ChangeRecoveryPoint
    ) {
        facts.push(format!("recovery point {}", v.requested_point));
    }
    out.push(facts.join(" · "));
    if v.deleting {
        out.push(st.yellow("Being deleted: the controller's finalizer is cleaning up."));
    }
    if v.cancel && !v.is_finished() {
        out.push(st.yellow("Cancel requested: nothing new starts."));
    }
    if let Some(m) = &v.message {
        let line = format!("Reason {m}");
        out.push(if v.phase.is_finished() {
            st.red(&line)
        } else {
            st.yellow(&line)
        });
    }
}

/// Each approval the run waits for, with the command that gives it.
fn wait_lines(out: &mut Vec<String>, v: &RunView, st: Style) {
    for w in &v.waits {
        out.push(String::new());
        let mut head = format!("⏸ Waiting for approval of {} ({})", st.bold(&w.action), w.step);
        if let Some(t) = w.since {
            head.push_str(&format!(" for {}", duration((v.now - t).num_seconds())));
        }
        if let Some(t) = &w.timeout {
            head.push_str(&format!(", times out after {t}"));
        }
        out.push(st.yellow(&head));
        if let Some(i) = &w.instructions {
            for line in wrap(i, 88) {
                out.push(format!("  {line}"));
            }
        }
        out.push(format!(
            "  Approve: kubectl coldsite approve {} {} -n {}",
            v.name, w.action, v.namespace
        ));
    }
}

/// The source VMs' stops, by group in reverse order.
fn shutdown_lines(out: &mut Vec<String>, v: &RunView, st: Style) {
    out.push(String::new());
    let (what, site) = v.stop_phase();
    out.push(st.bold(&format!(
        "{what}{}, in reverse order",
        site.as_ref().map(|s| format!(" at {s}")).unwrap_or_default()
    )));
    for g in v.groups.iter().rev() {
        let stops: Vec<(&str, &Step)> = g
            .vms
            .iter()
            .flat_map(|vm| vm.source_steps.iter().map(move |s| (vm.name.as_str(), s)))
            .collect();
        if let Some(s) = &g.shutdown {
            step_line(out, "● ", &g.name, s, v.now, st);
        }
        for (i, (vm, s)) in stops.iter().enumerate() {
            let branch = if i + 1 == stops.len() { "└─ " } else { "├─ " };
            step_line(out, branch, &format!("vm {vm} {}", s.short()), s, v.now, st);
        }
    }
}

/// The approvals given, and whether their gates were passed.
fn approval_lines(out: &mut Vec<String>, v: &RunView, st: Style) {
    if !v.approvals.is_empty() {
        out.push(String::new());
        out.push(st.bold("Approvals"));
        for a in &v.approvals {
            let by = if a.by.is_empty() {
                "unknown".to_owned()
            } else {
                a.by.join(", ")
            };
            let mut line = format!("  {} by {by}", a.action);
            if let Some(t) = a.given_at {
                line.push_str(&format!(" at {}", time(t)));
            }
            match a.observed_at {
                Some(t) => line.push_str(&format!("; gate passed {}", time(t))),
                None => line.push_str("; gate not reached yet"),
            }
            out.push(line);
        }
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn condition_line(plan: &RecoveryPlan, type_: &str, st: Style) -> String {
    let conds = plan
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match find_condition(conds, type_) {
        Some(c) => {
            let word = match c.status.as_str() {
                "True" => st.green("True "),
                "False" => st.red("False"),
                s => st.yellow(s),
            };
            format!("  {:<6} {word}  {}: {}", type_, c.reason, c.message)
        }
        None => format!(
            "  {:<6} {}",
            type_,
            st.dim("unknown (the controller has not reported yet)")
        ),
    }
}

fn describe_action(phase: &str, a: &Action) -> String {
    let what = if let Some(m) = &a.manual {
        match &m.timeout {
            Some(t) => format!("manual, times out after {t}"),
            None => "manual".to_owned(),
        }
    } else if a.script.as_ref().is_some_and(|s| s.webhook.is_some()) {
        "webhook".to_owned()
    } else {
        "Job".to_owned()
    };
    let when = if a.when.is_empty() {
        String::new()
    } else {
        format!(
            "; only in {}",
            a.when.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", ")
        )
    };
    format!("{phase} {} ({what}{when})", a.name)
}

/// The plan's last drill: how it ended, its figures, its run, and why it failed.
fn drill_line(d: &DrillSummary) -> String {
    let mut line = format!("Last drill: {} at {}", d.result, time(from_k8s(&d.time)));
    if let Some(rto) = d.rto_seconds {
        line.push_str(&format!(", RTO {}", duration(rto)));
    }
    if let Some(rpo) = d.rpo_seconds {
        line.push_str(&format!(", RPO {}", duration(rpo)));
    }
    if let Some(run) = &d.run {
        line.push_str(&format!(" ({run})"));
    }
    if let Some(why) = &d.message {
        line.push_str(&format!(": {why}"));
    }
    line
}

/// The plan's groups in startup order, each with what it waits for and its actions.
fn group_outline(plan: &RecoveryPlan, st: Style) -> Vec<String> {
    let mut out = Vec::new();
    for name in startup_order(plan) {
        let Some(g) = plan.spec.groups.iter().find(|g| g.name == name) else {
            continue;
        };
        let after = match &g.depends_on {
            Some(d) if d.is_empty() => String::new(),
            Some(d) => format!(" (after {})", d.join(", ")),
            None => {
                let i = plan.spec.groups.iter().position(|x| x.name == name).unwrap_or(0);
                if i > 0 {
                    format!(" (after {})", plan.spec.groups[i - 1].name)
                } else {
                    String::new()
                }
            }
        };
        out.push(format!("● {}{after}", st.bold(&g.name)));
        let mut items: Vec<String> = g.pre.iter().map(|a| describe_action("pre ", a)).collect();
        items.push(format!("vms: {}", g.vms.join(", ")));
        items.extend(g.post.iter().map(|a| describe_action("post", a)));
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            out.push(format!("{}{item}", if i + 1 == n { "└─ " } else { "├─ " }));
        }
    }
    out
}

/// One VM's protection: phase, where it runs, health, its RPO now (live, from its last sync)
/// against its target, and its points.
fn vm_row(vm: &str, p: &ProtectedVM, now: DateTime<Utc>, st: Style) -> String {
    let s = p.status.clone().unwrap_or_default();
    let health = s
        .replication
        .as_ref()
        .map(|r| format!("{:?}", r.health))
        .unwrap_or_else(|| "-".into());
    let rpo_now = s
        .replication
        .as_ref()
        .filter(|r| r.health != ReplicationHealth::Paused)
        .and_then(|r| coldsite_engine::rpo::current_rpo(now, r.last_sync_time.as_ref().map(from_k8s)))
        .map(duration)
        .unwrap_or_else(|| "-".into());
    let points = s.recovery_points.clone().unwrap_or_default();
    let latest = points.latest.as_ref().map(|t| {
        let t = from_k8s(t);
        format!("{} ({} ago)", time(t), duration((now - t).num_seconds()))
    });
    let met = coldsite_api::common::is_condition_true(&s.conditions, "RpoMet");
    let rpo = format!("{rpo_now}/{}", p.spec.replication.rpo);
    format!(
        "  {:<20} {:<13} {:<16} {:<9} {} {:>6}  {}",
        vm,
        s.phase.map(|x| format!("{x:?}")).unwrap_or_else(|| "-".into()),
        s.active_site.clone().unwrap_or_else(|| "-".into()),
        health,
        if met { pad(&rpo, 14) } else { st.yellow(&pad(&rpo, 14)) },
        points.count,
        latest.unwrap_or_else(|| "-".into())
    )
}

/// A plan: its conditions, groups in startup order with their actions, each VM's protection,
/// and its last run and drill.
pub fn render_plan(plan: &RecoveryPlan, pvms: &[ProtectedVM], now: DateTime<Utc>, st: Style) -> String {
    let mut out = Vec::new();
    let status = plan.status.clone().unwrap_or_default();
    let vm_count: usize = plan.spec.groups.iter().map(|g| g.vms.len()).sum();
    out.push(format!(
        "{} {}/{}  {} → {}, {vm_count} VM(s) in {} group(s)",
        st.bold("RecoveryPlan"),
        plan.namespace().unwrap_or_default(),
        plan.name_any(),
        plan.spec.primary_site,
        plan.spec.recovery_site,
        plan.spec.groups.len()
    ));
    out.push(condition_line(plan, "Valid", st));
    out.push(condition_line(plan, "Ready", st));
    if let Some(r) = status.estimated_rpo_seconds {
        out.push(format!("  Worst current RPO {}", duration(r)));
    }
    out.push(String::new());
    out.push(st.bold("Groups, in startup order"));
    out.extend(group_outline(plan, st));
    out.push(String::new());
    out.push(st.bold("VMs"));
    out.push(format!(
        "  {:<20} {:<13} {:<16} {:<9} {:<14} {:>6}  {}",
        "NAME", "PHASE", "ACTIVE SITE", "HEALTH", "RPO NOW/TARGET", "POINTS", "LATEST POINT"
    ));
    for vm in plan.spec.groups.iter().flat_map(|g| &g.vms) {
        out.push(match pvms.iter().find(|p| &p.name_any() == vm) {
            Some(p) => vm_row(vm, p, now, st),
            None => format!("  {:<20} {}", vm, st.red("no such ProtectedVM")),
        });
    }
    if let Some(r) = &status.last_run {
        out.push(String::new());
        let mut line = format!(
            "Last run: {} ({}) {}",
            r.name,
            r.action.map(|a| a.to_string()).unwrap_or_default(),
            r.phase.map(|p| format!("{p:?}")).unwrap_or_default()
        );
        if let Some(t) = &r.start_time {
            line.push_str(&format!(", started {}", time(from_k8s(t))));
        }
        if let Some(rto) = r.rto_seconds {
            line.push_str(&format!(", RTO {}", duration(rto)));
        }
        out.push(line);
    }
    if let Some(d) = &status.last_drill {
        out.push(drill_line(d));
    }
    match status
        .last_successful_test
        .as_ref()
        .and_then(|t| Some((t, t.completion_time.as_ref()?)))
    {
        Some((t, done)) => out.push(format!("Last successful test: {} at {}", t.name, time(from_k8s(done)))),
        None => out.push(st.yellow(&format!(
            "Last successful test: none yet (kubectl coldsite test {} proves the plan)",
            plan.metadata.name.as_deref().unwrap_or_default()
        ))),
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures;
    use crate::view::run_view;

    const PLAIN: Style = Style { color: false };

    #[test]
    fn a_finished_run_reads_as_a_tree_in_startup_order() {
        let text = render_run(&run_view(&fixtures::finished()), PLAIN);
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{text}"));
        assert!(at("● identity") < at("● mailbox") && at("● mailbox") < at("● client-access"));
        assert!(at("vm dc01") < at("post verify-ad (Job)"));
        assert!(at("pre confirm-ad-replication (manual)") < at("vm exch-mbx01"));
        assert!(text.contains("RTO 3m27s"), "{text}");
        assert!(text.contains("recovery point 2026-03-01 09:55:00Z (app)"), "{text}");
        assert!(text.contains("power-on"), "{text}");
        assert!(
            text.contains("confirm-ad-replication by kubectl-coldsite:alice at 2026-03-01 10:02:30Z"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour when asked for none");
    }

    #[test]
    fn the_last_drill_names_its_run_its_figures_and_why_it_failed() {
        let drill = |v: serde_json::Value| drill_line(&serde_json::from_value(v).unwrap());
        assert_eq!(
            drill(
                serde_json::json!({"time": "2026-12-05T03:00:00Z", "run": "exchange-drill-202612050300",
                "result": "Failed", "message": "ActionDoesNotFit: VM dc01 has no recovery point"})
            ),
            "Last drill: Failed at 2026-12-05 03:00:00Z (exchange-drill-202612050300): \
             ActionDoesNotFit: VM dc01 has no recovery point"
        );
        assert_eq!(
            drill(
                serde_json::json!({"time": "2026-12-05T03:10:00Z", "run": "d", "result": "Succeeded",
                "rtoSeconds": 75, "rpoSeconds": 300})
            ),
            "Last drill: Succeeded at 2026-12-05 03:10:00Z, RTO 1m15s, RPO 5m00s (d)"
        );
    }

    #[test]
    fn a_point_of_one_instant_says_group() {
        let mut d = fixtures::finished();
        let mbx = d
            .pvms
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some("exch-mbx01"))
            .unwrap();
        mbx.status
            .as_mut()
            .and_then(|s| s.last_run.as_mut())
            .unwrap()
            .recovery_point_one_instant = true;
        let text = render_run(&run_view(&d), PLAIN);
        let mbx = &text[text.find("vm exch-mbx01").unwrap()..];
        assert!(
            mbx.contains("recovery point 2026-03-01 09:55:00Z (app, group)"),
            "{text}"
        );
        let dc = &text[text.find("vm dc01").unwrap()..text.find("vm exch-mbx01").unwrap()];
        assert!(dc.contains("(app)") && !dc.contains("group)"), "{text}");
    }

    #[test]
    fn a_repoint_shows_the_point_each_vm_left_and_the_one_it_runs_on() {
        let text = render_run(&run_view(&fixtures::repointed()), PLAIN);
        assert!(
            text.contains(
                "recovery point 2026-03-01 09:55:00Z (app), replaces 2026-03-01 09:59:00Z (crash) of run exchange-failover-1"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_wait_shows_the_action_the_time_and_the_instructions() {
        let text = render_run(&run_view(&fixtures::waiting()), PLAIN);
        assert!(
            text.contains("⏸ Waiting for approval of confirm-ad-replication (mailbox/pre/confirm-ad-replication) for 1m40s, times out after 2h"),
            "{text}"
        );
        assert!(text.contains("Open AD Sites and Services"), "{text}");
        assert!(
            text.contains("kubectl coldsite approve exchange-test-1 confirm-ad-replication -n contoso"),
            "{text}"
        );
        assert!(text.contains("vm exch-cas01  not started yet"), "{text}");
        assert!(text.contains("Phase WaitingForApproval"), "{text}");
    }

    #[test]
    fn a_hold_or_a_failure_says_why() {
        let mut d = fixtures::waiting();
        let cond = serde_json::json!({"type": "Succeeded", "status": "False", "reason": "PlanChanged",
            "message": "RecoveryPlan exchange changed during the run", "lastTransitionTime": "2026-03-01T10:01:00Z"});
        d.run.status.as_mut().unwrap().conditions = vec![serde_json::from_value(cond).unwrap()];
        let text = render_run(&run_view(&d), PLAIN);
        assert!(
            text.contains("Reason PlanChanged: RecoveryPlan exchange changed during the run"),
            "{text}"
        );
        let status = d.run.status.as_mut().unwrap();
        status.conditions[0].reason = "WaitingForApproval".into();
        assert!(
            !render_run(&run_view(&d), PLAIN).contains("Reason"),
            "routine progress is not a reason"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let text = render_run(&run_view(&fixtures::finished()), Style { color: true });
        assert!(text.contains("\x1b[32m✓ Succeeded\x1b[0m"));
    }

    #[test]
    fn a_plan_shows_conditions_groups_and_vms() {
        let plan = fixtures::plan();
        let text = render_plan(&plan, &[], Utc::now(), PLAIN);
        assert!(text.contains("Valid  unknown"), "{text}");
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{text}"));
        assert!(at("● identity") < at("● mailbox (after identity)"));
        assert!(
            text.contains("pre  confirm-ad-replication (manual, times out after 2h)"),
            "{text}"
        );
        assert!(
            text.contains("post update-dns (Job; only in Failover, PlannedFailover, Failback)"),
            "{text}"
        );
        assert!(text.contains("dc01                 no such ProtectedVM"), "{text}");
    }

    #[test]
    fn a_plan_says_when_a_test_last_proved_it() {
        let mut plan = fixtures::plan();
        let text = render_plan(&plan, &[], Utc::now(), PLAIN);
        assert!(
            text.contains("Last successful test: none yet (kubectl coldsite test exchange proves the plan)"),
            "{text}"
        );
        plan.status.get_or_insert_default().last_successful_test = Some(
            serde_json::from_value(serde_json::json!({
                "name": "exchange-test-1", "completionTime": "2026-11-20T10:00:00Z"
            }))
            .unwrap(),
        );
        let text = render_plan(&plan, &[], Utc::now(), PLAIN);
        assert!(text.contains("Last successful test: exchange-test-1 at "), "{text}");
    }
}
