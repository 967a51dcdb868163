//! `report`: a run as a self-contained HTML page (inline CSS, an inline SVG Gantt chart of
//! every step) or as Markdown with the same facts. Pure functions of a [`RunView`].

use std::fmt::Write;

use chrono::{DateTime, Utc};
use coldsite_api::recovery_run::{StepKind, StepState};

use crate::view::{RunView, Step, duration, time};

/// One row of the timeline: a section heading, or a step with its label and depth.
enum Row<'a> {
    /// A section: its name, and the span of its steps.
    Heading(String, Option<(DateTime<Utc>, Option<DateTime<Utc>>)>),
    Step {
        label: String,
        step: &'a Step,
    },
}

fn rows(v: &RunView) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    if v.has_shutdown() {
        let steps: Vec<&Step> = v
            .groups
            .iter()
            .flat_map(|g| g.vms.iter().flat_map(|vm| &vm.source_steps).chain(&g.shutdown))
            .collect();
        out.push(Row::Heading(v.stop_phase().0.to_lowercase(), span(&steps)));
        for g in v.groups.iter().rev() {
            for vm in &g.vms {
                for s in &vm.source_steps {
                    out.push(Row::Step {
                        label: format!("{} · {}", vm.name, s.short()),
                        step: s,
                    });
                }
            }
            if let Some(s) = &g.shutdown {
                out.push(Row::Step {
                    label: format!("{} shutdown", g.name),
                    step: s,
                });
            }
        }
    }
    for g in &v.groups {
        out.push(Row::Heading(g.name.clone(), g.started().map(|a| (a, g.finished()))));
        for s in &g.pre {
            out.push(Row::Step {
                label: format!("pre {}", s.short()),
                step: s,
            });
        }
        for s in g.barriers.iter().filter(|b| b.kind == Some(StepKind::Start)) {
            out.push(Row::Step {
                label: "start".into(),
                step: s,
            });
        }
        for vm in &g.vms {
            for s in &vm.steps {
                out.push(Row::Step {
                    label: format!("{} · {}", vm.name, s.short()),
                    step: s,
                });
            }
        }
        for s in g.barriers.iter().filter(|b| b.kind == Some(StepKind::Ready)) {
            out.push(Row::Step {
                label: "ready".into(),
                step: s,
            });
        }
        for s in &g.post {
            out.push(Row::Step {
                label: format!("post {}", s.short()),
                step: s,
            });
        }
        for s in g.barriers.iter().filter(|b| b.kind == Some(StepKind::Done)) {
            out.push(Row::Step {
                label: "done".into(),
                step: s,
            });
        }
    }
    if !v.other.is_empty() {
        out.push(Row::Heading("other".into(), span(&v.other.iter().collect::<Vec<_>>())));
        for s in &v.other {
            out.push(Row::Step {
                label: s.id.clone(),
                step: s,
            });
        }
    }
    out
}

fn span(steps: &[&Step]) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let start = steps.iter().filter_map(|s| s.started).min()?;
    let done = steps.iter().all(|s| s.state.is_terminal());
    Some((
        start,
        if done {
            steps.iter().filter_map(|s| s.finished).max()
        } else {
            None
        },
    ))
}

fn color(state: StepState) -> &'static str {
    match state {
        StepState::Succeeded => "#2e7d32",
        StepState::FailedContinued => "#ef6c00",
        StepState::Failed => "#c62828",
        StepState::Running => "#1565c0",
        StepState::WaitingForApproval => "#f9a825",
        StepState::Pending => "#9e9e9e",
        StepState::Skipped => "#bdbdbd",
    }
}

fn state_word(state: StepState) -> &'static str {
    match state {
        StepState::Succeeded => "Succeeded",
        StepState::FailedContinued => "Failed, continued",
        StepState::Failed => "Failed",
        StepState::Running => "Running",
        StepState::WaitingForApproval => "Waiting for approval",
        StepState::Pending => "Pending",
        StepState::Skipped => "Skipped",
    }
}

fn kind_word(step: &Step) -> String {
    match step.kind {
        Some(k) => format!("{k:?}"),
        None => String::new(),
    }
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A tick interval giving at most about ten ticks over `span` seconds.
fn tick(span: i64) -> i64 {
    const STEPS: [i64; 16] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600,
    ];
    STEPS.into_iter().find(|s| span / s <= 10).unwrap_or(43200)
}

fn clock(seconds: i64) -> String {
    if seconds >= 3600 {
        format!("{}:{:02}:{:02}", seconds / 3600, (seconds % 3600) / 60, seconds % 60)
    } else {
        format!("{}:{:02}", seconds / 60, seconds % 60)
    }
}

/// The time span the chart covers: the run's start to its end (or now).
fn bounds(v: &RunView) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let steps = v.all_steps();
    let start = v.started.or_else(|| steps.iter().filter_map(|s| s.started).min())?;
    let end = steps
        .iter()
        .filter_map(|s| s.finished.or(s.started.map(|_| v.now)))
        .chain(v.completed)
        .max()
        .unwrap_or(v.now)
        .max(start + chrono::Duration::seconds(1));
    Some((start, end))
}

/// The Gantt chart: one row and one `rect.bar` per step that has started, coloured by
/// state, with the group headings and a time axis in minutes from the start.
pub fn gantt_svg(v: &RunView) -> String {
    const LABEL: f64 = 270.0;
    const CHART: f64 = 640.0;
    const ROW: f64 = 18.0;
    const TOP: f64 = 28.0;
    let rows = rows(v);
    let height = TOP + ROW * rows.len() as f64 + 12.0;
    let width = LABEL + CHART + 20.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="gantt" role="img" aria-label="Timeline of the run's steps" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="11">"#
    );
    let Some((start, end)) = bounds(v) else {
        svg.push_str(r#"<text x="10" y="20">The run has not started: no timeline yet.</text></svg>"#);
        return svg;
    };
    let span = (end - start).num_seconds().max(1);
    let x = |t: DateTime<Utc>| LABEL + CHART * ((t - start).num_milliseconds() as f64 / 1000.0) / span as f64;
    // Axis and grid.
    let step = tick(span);
    let mut t = 0;
    while t <= span {
        let px = LABEL + CHART * t as f64 / span as f64;
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#e0e0e0"/><text x="{px:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            TOP - 6.0,
            height - 8.0,
            TOP - 10.0,
            clock(t)
        );
        t += step;
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        match row {
            Row::Heading(name, range) => {
                let _ = write!(
                    svg,
                    r##"<rect class="heading" x="0" y="{y}" width="{width}" height="{ROW}" fill="#f1f3f6"/><text x="6" y="{:.1}" font-weight="600">{}</text>"##,
                    y + 13.0,
                    esc(name)
                );
                if let Some((a, b)) = range {
                    let x0 = x(*a);
                    let w = (x(b.unwrap_or(v.now)) - x0).max(3.0);
                    let _ = write!(
                        svg,
                        r##"<rect class="span" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="4" fill="#90a4ae"/>"##,
                        y + 7.0
                    );
                }
            }
            Row::Step { label, step } => {
                let _ = write!(
                    svg,
                    r##"<text x="18" y="{:.1}" fill="#222">{}</text>"##,
                    y + 13.0,
                    esc(label)
                );
                let Some(a) = step.started else {
                    let _ = write!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" fill="#999">not started</text>"##,
                        LABEL + 4.0,
                        y + 13.0
                    );
                    continue;
                };
                let b = step.finished.unwrap_or(v.now);
                let x0 = x(a);
                let w = (x(b) - x0).max(3.0);
                let secs = step.seconds(v.now).unwrap_or(0);
                let _ = write!(
                    svg,
                    r#"<rect class="bar" data-step="{id}" data-state="{state:?}" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" rx="2" fill="{fill}"><title>{id}: {word}, {took}</title></rect>"#,
                    y + 3.0,
                    ROW - 6.0,
                    id = esc(&step.id),
                    state = step.state,
                    fill = color(step.state),
                    word = state_word(step.state),
                    took = duration(secs),
                );
                if w > 40.0 && secs > 0 {
                    let _ = write!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" fill="#fff" font-size="10">{}</text>"##,
                        x0 + 4.0,
                        y + 12.5,
                        duration(secs)
                    );
                } else if secs > 0 {
                    let _ = write!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="10">{}</text>"##,
                        x0 + w + 4.0,
                        y + 12.5,
                        duration(secs)
                    );
                }
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

fn approvals_by(by: &[String]) -> String {
    if by.is_empty() {
        "unknown".into()
    } else {
        by.iter()
            .map(|m| match m.split_once(':') {
                Some(("kubectl-coldsite", user)) => format!("{user} (kubectl-coldsite)"),
                _ => m.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// What the summary says, as (label, value) pairs, shared by both formats.
fn summary(v: &RunView) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("Run", format!("{}/{}", v.namespace, v.name)),
        ("Plan", v.plan.clone()),
        ("Action", v.action.to_string()),
        ("Phase", format!("{:?}", v.phase)),
    ];
    if let (Some(a), Some(b)) = (&v.source_site, &v.target_site) {
        out.push(("Sites", format!("{a} → {b}")));
    }
    out.push(("Started", opt_time(v.started)));
    out.push(("Completed", opt_time(v.completed)));
    out.push((
        "RTO",
        match (v.rto_seconds, v.elapsed()) {
            (Some(r), _) => duration(r),
            (None, Some(e)) => format!("not finished ({} so far)", duration(e)),
            _ => "-".into(),
        },
    ));
    out.push(("Recovery point requested", v.requested_point.clone()));
    if let Some(p) = &v.progress {
        out.push(("Steps done", p.clone()));
    }
    if let Some(m) = &v.message {
        out.push(("Reason", m.clone()));
    }
    out
}

/// The approvals table's rows, for both formats.
fn approval_rows(v: &RunView) -> impl Iterator<Item = Vec<String>> + '_ {
    v.approvals.iter().map(|a| {
        vec![
            a.action.clone(),
            approvals_by(&a.by),
            opt_time(a.given_at),
            opt_time(a.observed_at),
            a.waited.map(duration).unwrap_or_else(|| "-".into()),
        ]
    })
}

const POINT_COLUMNS: [&str; 6] = [
    "VM",
    "Group",
    "Recovery point used",
    "Consistency",
    "Age at the start",
    "State",
];

/// Per VM: group, recovery point, its consistency, how old it was when the run started,
/// and its state.
fn points(v: &RunView) -> Vec<[String; 6]> {
    v.groups
        .iter()
        .flat_map(|g| {
            g.vms.iter().map(move |vm| {
                let age = match (vm.point, v.started) {
                    (Some(p), Some(s)) => {
                        let d = (s - p.time).num_seconds();
                        if d >= 0 {
                            format!("{} before the start", duration(d))
                        } else {
                            format!("{} after the start (final sync)", duration(-d))
                        }
                    }
                    _ => "-".into(),
                };
                [
                    vm.name.clone(),
                    g.name.clone(),
                    match &vm.replaced {
                        Some(r) => format!(
                            "{}; {}",
                            opt_time(vm.point.map(|p| p.time)),
                            r.describe(|t| opt_time(Some(t)))
                        ),
                        None => opt_time(vm.point.map(|p| p.time)),
                    },
                    vm.point.map_or("-", |p| p.consistency_word()).to_owned(),
                    age,
                    if vm.recorded {
                        state_word(vm.state()).to_owned()
                    } else if v.is_finished() {
                        "no record (a later run replaced it)".into()
                    } else {
                        "not started".into()
                    },
                ]
            })
        })
        .collect()
}

/// A step's time: the clock alone on the run's first day, else the full time.
fn step_time(t: Option<DateTime<Utc>>, day: Option<DateTime<Utc>>) -> String {
    match (t, day) {
        (Some(t), Some(d)) if t.date_naive() == d.date_naive() => t.format("%H:%M:%S").to_string(),
        (t, _) => opt_time(t),
    }
}

fn step_cells(s: &Step, v: &RunView) -> [String; 8] {
    let now = v.now;
    [
        s.id.clone(),
        kind_word(s),
        state_word(s.state).to_owned(),
        step_time(s.started, v.started),
        step_time(s.finished, v.started),
        match s.seconds(now) {
            Some(d) if s.finished.is_some() => duration(d),
            Some(d) => format!("{} (running)", duration(d)),
            None => "-".into(),
        },
        s.attempts.to_string(),
        s.message.clone().unwrap_or_default(),
    ]
}

const STEP_HEADERS: [&str; 8] = [
    "Step",
    "Kind",
    "State",
    "Started (UTC)",
    "Finished (UTC)",
    "Duration",
    "Attempts",
    "Message",
];

const CSS: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1000px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
.sub { color: #555; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; min-width: 8rem; }
.card .k { font-size: .75rem; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 1.2rem; font-weight: 600; }
.Succeeded { color: #2e7d32; } .Failed { color: #c62828; } .WaitingForApproval, .Running { color: #b26a00; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f6f7f9; }
table.kv td:first-child { width: 14rem; font-weight: 600; color: #444; }
td.id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; }
.legend span { display: inline-block; margin-right: 1rem; font-size: .8rem; }
.legend i { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; margin-right: .3rem; vertical-align: middle; }
.chart { overflow-x: auto; }
footer { margin-top: 2rem; color: #888; font-size: .8rem; }
"#;

fn html_table(out: &mut String, headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>, id_col: bool) {
    if headers.iter().all(|h| h.is_empty()) {
        out.push_str("<table class=\"kv\"><tbody>\n");
    } else {
        out.push_str("<table><thead><tr>");
        for h in headers {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr></thead><tbody>\n");
    }
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            if i == 0 && id_col {
                let _ = write!(out, r#"<td class="id">{}</td>"#, esc(cell));
            } else {
                let _ = write!(out, "<td>{}</td>", esc(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// The report as one HTML page with no external assets.
pub fn html(v: &RunView) -> String {
    let mut out = String::new();
    let title = format!("{} of {}: {}", v.action, v.plan, v.name);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>coldsite report: {}</title><style>{CSS}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", esc(&title));
    let sites = match (&v.source_site, &v.target_site) {
        (Some(a), Some(b)) => format!("{a} → {b} · "),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        r#"<p class="sub">RecoveryRun {}/{} · {}started {}</p>"#,
        esc(&v.namespace),
        esc(&v.name),
        esc(&sites),
        esc(&opt_time(v.started))
    );
    let rto = match (v.rto_seconds, v.elapsed()) {
        (Some(r), _) => duration(r),
        (None, Some(e)) => format!("{}…", duration(e)),
        _ => "-".into(),
    };
    let vm_count: usize = v.groups.iter().map(|g| g.vms.len()).sum();
    out.push_str(r#"<div class="cards">"#);
    for (k, val, class) in [
        ("Phase", format!("{:?}", v.phase), format!("{:?}", v.phase)),
        ("RTO", rto, String::new()),
        ("Steps", v.all_steps().len().to_string(), String::new()),
        ("VMs", vm_count.to_string(), String::new()),
        ("Approvals", v.approvals.len().to_string(), String::new()),
    ] {
        let _ = write!(
            out,
            r#"<div class="card"><div class="k">{}</div><div class="v {}">{}</div></div>"#,
            esc(k),
            esc(&class),
            esc(&val)
        );
    }
    out.push_str("</div>\n<h2>Summary</h2>\n");
    html_table(
        &mut out,
        &["", ""],
        summary(v).into_iter().map(|(k, val)| vec![k.to_owned(), val]),
        false,
    );
    out.push_str("<h2>Timeline</h2>\n<p class=\"legend\">");
    for s in [
        StepState::Succeeded,
        StepState::Running,
        StepState::WaitingForApproval,
        StepState::FailedContinued,
        StepState::Failed,
        StepState::Pending,
    ] {
        let _ = write!(
            out,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            color(s),
            state_word(s)
        );
    }
    out.push_str("</p>\n<div class=\"chart\">");
    out.push_str(&gantt_svg(v));
    out.push_str("</div>\n<h2>Recovery points</h2>\n");
    html_table(&mut out, &POINT_COLUMNS, points(v).into_iter().map(Vec::from), true);
    out.push_str("<h2>Approvals</h2>\n");
    if v.approvals.is_empty() {
        out.push_str("<p>No manual action was approved in this run.</p>\n");
    } else {
        html_table(
            &mut out,
            &["Action", "Approved by", "Approved at", "Gate passed", "Waited"],
            approval_rows(v),
            true,
        );
    }
    if !v.waits.is_empty() {
        out.push_str("<h2>Waiting for approval</h2>\n<ul>");
        for w in &v.waits {
            let _ = write!(
                out,
                "<li><b>{}</b> ({}){}: {}</li>",
                esc(&w.action),
                esc(&w.step),
                w.since.map(|t| format!(" since {}", time(t))).unwrap_or_default(),
                esc(w.instructions.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Steps</h2>\n");
    html_table(
        &mut out,
        &STEP_HEADERS,
        v.all_steps().into_iter().map(|s| Vec::from(step_cells(s, v))),
        true,
    );
    let _ = write!(
        out,
        "<footer>Generated by kubectl-coldsite at {}. Times are UTC.</footer>\n</body></html>\n",
        time(v.now)
    );
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(out: &mut String, headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// The report as Markdown: the same facts, the timeline as the steps table.
pub fn markdown(v: &RunView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {} of {}: {}\n", v.action, v.plan, v.name);
    md_table(
        &mut out,
        &["", ""],
        summary(v).into_iter().map(|(k, val)| vec![format!("**{k}**"), val]),
    );
    out.push_str("## Recovery points\n\n");
    md_table(&mut out, &POINT_COLUMNS, points(v).into_iter().map(Vec::from));
    out.push_str("## Approvals\n\n");
    if v.approvals.is_empty() {
        out.push_str("No manual action was approved in this run.\n\n");
    } else {
        md_table(
            &mut out,
            &["Action", "Approved by", "Approved at", "Gate passed", "Waited"],
            approval_rows(v),
        );
    }
    for w in &v.waits {
        let _ = writeln!(
            out,
            "**Waiting for approval:** `{}` ({}): {}\n",
            w.action,
            w.step,
            w.instructions.as_deref().unwrap_or("")
        );
    }
    out.push_str("## Steps\n\n");
    md_table(
        &mut out,
        &STEP_HEADERS,
        v.all_steps().into_iter().map(|s| {
            let mut c = Vec::from(step_cells(s, v));
            c[0] = format!("`{}`", c[0]);
            c
        }),
    );
    let _ = writeln!(
        out,
        "_Generated by kubectl-coldsite at {}. Times are UTC._",
        time(v.now)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{fixtures, run_view};

    #[test]
    fn the_svg_has_one_bar_per_step() {
        let v = run_view(&fixtures::finished());
        let svg = gantt_svg(&v);
        let steps = v.all_steps();
        assert_eq!(steps.len(), 24);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), steps.len());
        for s in &steps {
            assert!(svg.contains(&format!(r#"data-step="{}""#, s.id)), "{} has no bar", s.id);
        }
        // Groups are headings, in startup order, and the axis has ticks.
        let at = |s: &str| svg.find(s).unwrap();
        assert!(at(">identity<") < at(">mailbox<") && at(">mailbox<") < at(">client-access<"));
        assert!(svg.contains(">0:00<") && svg.contains(">3:00<"), "{svg}");
        assert!(svg.contains(r##"fill="#2e7d32""##));
    }

    #[test]
    fn bars_sit_where_their_steps_ran() {
        let v = run_view(&fixtures::finished());
        let svg = gantt_svg(&v);
        // The gate waited from 0:40 to 2:40 of a 3:27 run: x from 270+640*40/207.
        let bar = svg
            .split("<rect ")
            .find(|r| r.contains(r#"data-step="mailbox/pre/confirm-ad-replication""#))
            .unwrap();
        assert!(bar.contains(r#"x="393.7""#), "{bar}");
        assert!(bar.contains(r#"width="371.0""#), "{bar}");
    }

    #[test]
    fn a_waiting_run_has_bars_for_started_steps_only() {
        let v = run_view(&fixtures::waiting());
        let svg = gantt_svg(&v);
        let started = v.all_steps().iter().filter(|s| s.started.is_some()).count();
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), started);
        assert!(svg.contains("not started"));
        assert!(svg.contains(r#"data-state="WaitingForApproval""#));
    }

    #[test]
    fn a_repoint_report_records_both_points() {
        let v = run_view(&fixtures::repointed());
        for page in [html(&v), markdown(&v)] {
            assert!(
                page.contains("2026-03-01 09:55:00Z; replaces 2026-03-01 09:59:00Z (crash) of run exchange-failover-1"),
                "{page}"
            );
        }
    }

    #[test]
    fn the_html_is_self_contained_and_has_every_fact() {
        let v = run_view(&fixtures::finished());
        let page = html(&v);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            !page.contains("http://")
                || page.matches("http://").count() == page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(!page.contains("https://") && !page.contains("<link") && !page.contains("<script"));
        assert!(page.contains("<style>") && page.contains("<svg"));
        assert!(page.contains("<div class=\"v \">3m27s</div>"), "RTO card");
        assert!(page.contains("alice (kubectl-coldsite)"), "who approved");
        assert!(page.contains("2026-03-01 10:02:30Z"), "when the approval was given");
        assert!(page.contains("2026-03-01 09:55:00Z"), "the recovery point used");
        assert!(page.contains("<td>app</td>"), "the point's consistency");
        assert!(page.contains("5m00s before the start"));
        for s in v.all_steps() {
            assert!(page.contains(&format!(r#"<td class="id">{}</td>"#, s.id)), "{}", s.id);
        }
        assert!(page.contains("<td>2m00s</td>"), "the gate's duration");
    }

    #[test]
    fn the_markdown_table_lists_every_step() {
        let v = run_view(&fixtures::finished());
        let md = markdown(&v);
        for s in v.all_steps() {
            assert_eq!(md.matches(&format!("| `{}` |", s.id)).count(), 1, "{}\n{md}", s.id);
        }
        assert!(md.contains("| **RTO** | 3m27s |"), "{md}");
        assert!(md.contains("| confirm-ad-replication | alice (kubectl-coldsite) | 2026-03-01 10:02:30Z | 2026-03-01 10:02:40Z | 2m00s |"), "{md}");
        assert!(
            md.contains("| exch-mbx01 | mailbox | 2026-03-01 09:55:00Z | app | 5m00s before the start | Succeeded |"),
            "{md}"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let mut d = fixtures::finished();
        d.run.status.as_mut().unwrap().steps[2].message = Some("<script>alert(1)</script>".into());
        d.run.status.as_mut().unwrap().steps[2].state = StepState::FailedContinued;
        let page = html(&run_view(&d));
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
    }
}
