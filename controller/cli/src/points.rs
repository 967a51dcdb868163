//! `points`: the recovery points of a plan's VMs or of one ProtectedVM, as their status lists
//! them, with each point's consistency (crash or app, and `group` when every disk is from
//! one instant) and age.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use coldsite_api::protected_vm::Consistency;
use coldsite_api::{ProtectedVM, RecoveryPlan};
use coldsite_engine::fabric::RecoveryPoint;
use coldsite_engine::rpo;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;
use crate::view::{self, duration};

/// Pure: the table of points, one row per point, VMs in the order given.
pub fn table(pvms: &[ProtectedVM], now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "VM".to_owned(),
        "POINT".to_owned(),
        "CONSISTENCY".to_owned(),
        "AGE".to_owned(),
        "AT".to_owned(),
    ]];
    for pvm in pvms {
        let status = pvm.status.as_ref();
        let at = status
            .and_then(|s| s.active_site.as_deref())
            .map(|active| other_site(pvm, active))
            .unwrap_or("-");
        let points = status.and_then(|s| s.recovery_points.as_ref());
        let listed = points.map(|p| p.points.as_slice()).unwrap_or_default();
        if listed.is_empty() {
            rows.push([
                pvm.name_any(),
                "(none yet)".into(),
                "-".into(),
                "-".into(),
                at.to_owned(),
            ]);
        }
        for point in listed {
            let t = DateTime::<Utc>::from_timestamp(point.time.0.as_second(), 0).unwrap_or(now);
            rows.push([
                pvm.name_any(),
                view::time(t),
                point.consistency.words(point.one_instant).into(),
                duration((now - t).num_seconds()),
                at.to_owned(),
            ]);
        }
        let held = points.map_or(0, |p| p.count as usize);
        if held > listed.len() {
            rows.push([
                pvm.name_any(),
                format!("(and {} older)", held - listed.len()),
                "-".into(),
                "-".into(),
                at.to_owned(),
            ]);
        }
    }
    render(&rows)
}

/// Pure: for each of the plan's consistency groups, the instant a run would restore all its
/// members from, among the points their status lists.
pub fn consistency_groups(plan: &RecoveryPlan, pvms: &[ProtectedVM], now: DateTime<Utc>) -> String {
    use coldsite_api::recovery_run::RecoveryPointSelector as Asked;
    let mut out = String::new();
    for cg in &plan.spec.consistency_groups {
        let lists: Vec<Vec<RecoveryPoint>> = cg
            .vms
            .iter()
            .map(|vm| {
                pvms.iter()
                    .find(|p| p.name_any() == *vm)
                    .map(engine_points)
                    .unwrap_or_default()
            })
            .collect();
        // The listed points are the newest: retention (a century here) does not prune them.
        let century = std::time::Duration::from_secs(100 * 365 * 86_400);
        let members: Vec<(&[RecoveryPoint], std::time::Duration)> = lists.iter().map(|l| (&l[..], century)).collect();
        let at = |asked: &Asked| match rpo::choose_common(&members, asked, now) {
            Ok(p) => format!(
                "{} ({})",
                view::time(p.time),
                if p.app_consistent { "app" } else { "crash" }
            ),
            Err(_) => "none yet".to_owned(),
        };
        out.push_str(&format!(
            "consistency group {} ({}): all restore from {}; newest app-consistent for all: {}\n",
            cg.name,
            cg.vms.join(", "),
            at(&Asked::Latest),
            at(&Asked::LatestAppConsistent),
        ));
    }
    out
}

/// The points a ProtectedVM's status lists, as the engine sees them.
fn engine_points(pvm: &ProtectedVM) -> Vec<RecoveryPoint> {
    let listed = pvm.status.as_ref().and_then(|s| s.recovery_points.as_ref());
    listed
        .map(|p| p.points.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(RecoveryPoint {
                time: DateTime::<Utc>::from_timestamp(p.time.0.as_second(), 0)?,
                app_consistent: p.consistency == Consistency::App,
                one_instant: p.one_instant,
            })
        })
        .collect()
}

/// Pure: the plan's VMs, group by group in startup order.
pub fn vms_in_startup_order(plan: &RecoveryPlan) -> Vec<String> {
    view::startup_order(plan)
        .iter()
        .filter_map(|name| plan.spec.groups.iter().find(|g| g.name == *name))
        .flat_map(|g| g.vms.iter().cloned())
        .collect()
}

/// Where a VM's points are: the site it would recover to.
fn other_site<'a>(pvm: &'a ProtectedVM, active: &str) -> &'a str {
    if active == pvm.spec.primary_site {
        &pvm.spec.recovery_site
    } else {
        &pvm.spec.primary_site
    }
}

fn render(rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `points TARGET`: rplan/NAME, pvm/NAME, or a bare NAME (a plan if one has that name, else a
/// ProtectedVM).
pub async fn points(c: &Cluster, target: &str) -> anyhow::Result<bool> {
    let plans = Api::<RecoveryPlan>::namespaced(c.client.clone(), &c.namespace);
    let pvms = Api::<ProtectedVM>::namespaced(c.client.clone(), &c.namespace);
    let (kind, name) = match target.split_once('/') {
        Some((kind, name)) => (Some(kind.split('.').next().unwrap_or(kind).to_ascii_lowercase()), name),
        None => (None, target),
    };
    let (plan_only, pvm_only) = match kind.as_deref() {
        None => (false, false),
        Some("rplan" | "recoveryplan" | "recoveryplans" | "plan") => (true, false),
        Some("pvm" | "protectedvm" | "protectedvms") => (false, true),
        Some(other) => bail!("{other:?} is not a kind `points` lists; use rplan/NAME or pvm/NAME"),
    };
    let plan = match pvm_only {
        true => None,
        false => plans
            .get_opt(name)
            .await
            .with_context(|| format!("reading RecoveryPlan {}/{name}", c.namespace))?,
    };
    let listed = match &plan {
        Some(plan) => {
            let order = vms_in_startup_order(plan);
            let mut all = pvms
                .list(&ListParams::default())
                .await
                .context("listing ProtectedVMs")?
                .items;
            all.retain(|p| order.contains(&p.name_any()));
            all.sort_by_key(|p| order.iter().position(|n| *n == p.name_any()));
            all
        }
        None if plan_only => bail!("no RecoveryPlan {name} in namespace {}", c.namespace),
        None => match pvms.get_opt(name).await.context("reading the ProtectedVM")? {
            Some(p) => vec![p],
            None => bail!(
                "no RecoveryPlan or ProtectedVM named {name} in namespace {} (kubectl get rplan,pvm -n {} lists them)",
                c.namespace,
                c.namespace
            ),
        },
    };
    print!("{}", table(&listed, Utc::now()));
    if let Some(plan) = &plan {
        print!("{}", consistency_groups(plan, &listed, Utc::now()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvm(name: &str, points: serde_json::Value, count: i32) -> ProtectedVM {
        serde_json::from_value(json!({
            "apiVersion": "coldsite.io/v1alpha1", "kind": "ProtectedVM",
            "metadata": {"name": name, "namespace": "exchange"},
            "spec": {"vm": {"name": name}, "primarySite": "hq", "recoverySite": "dr",
                     "networkMapping": "hq-to-dr", "replication": {"rpo": "15m"}},
            "status": {"activeSite": "hq", "recoveryPoints": {"count": count, "points": points}},
        }))
        .unwrap()
    }

    #[test]
    fn a_plans_vms_come_group_by_group_in_startup_order() {
        let plan = view::fixtures::plan();
        let vms = vms_in_startup_order(&plan);
        assert_eq!(vms.first().map(String::as_str), Some("dc01"), "{vms:?}");
        assert!(
            vms.contains(&"exch-mbx01".to_owned()) && vms.contains(&"exch-cas01".to_owned()),
            "{vms:?}"
        );
        let position = |vm: &str| vms.iter().position(|v| v == vm);
        assert!(position("dc01") < position("exch-mbx01") && position("exch-mbx01") < position("exch-cas01"));
    }

    #[test]
    fn lists_each_point_with_its_consistency_and_age_newest_first() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap().to_utc();
        let mbx = pvm(
            "exch-mbx01",
            json!([
                {"time": "2026-12-01T11:45:00Z", "consistency": "Crash", "oneInstant": true},
                {"time": "2026-12-01T11:00:00Z", "consistency": "App"},
            ]),
            5,
        );
        let text = table(&[mbx, pvm("dc01", json!([]), 0)], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VM") && lines[0].contains("CONSISTENCY"), "{text}");
        assert!(
            lines[1].contains("2026-12-01 11:45:00Z")
                && lines[1].contains("crash, group")
                && lines[1].contains("15m00s"),
            "a group snapshot's point says so: {text}"
        );
        assert!(
            lines[2].contains("11:00:00Z") && lines[2].contains("app") && !lines[2].contains("group"),
            "{text}"
        );
        assert!(lines[2].contains("1h00m"), "{text}");
        assert!(lines[3].contains("(and 3 older)"), "{text}");
        assert!(
            lines[4].starts_with("dc01") && lines[4].contains("(none yet)"),
            "{text}"
        );
        assert!(
            lines[1].trim_end().ends_with("dr"),
            "points are at the recovery site: {text}"
        );
    }

    #[test]
    fn a_consistency_group_shows_the_instant_all_its_members_restore_from() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap().to_utc();
        let mut plan = view::fixtures::plan();
        plan.spec.consistency_groups = vec![coldsite_api::recovery_plan::ConsistencyGroup {
            name: "mail".into(),
            vms: vec!["exch-mbx01".into(), "exch-cas01".into()],
        }];
        let mbx = pvm(
            "exch-mbx01",
            json!([
                {"time": "2026-12-01T11:45:00Z", "consistency": "Crash", "oneInstant": true},
                {"time": "2026-12-01T11:30:00Z", "consistency": "App", "oneInstant": true},
            ]),
            2,
        );
        let cas = pvm(
            "exch-cas01",
            json!([{"time": "2026-12-01T11:30:00Z", "consistency": "App", "oneInstant": true}]),
            1,
        );
        let text = consistency_groups(&plan, &[mbx, cas], now);
        assert_eq!(
            text.trim(),
            "consistency group mail (exch-mbx01, exch-cas01): all restore from 2026-12-01 11:30:00Z (app); \
             newest app-consistent for all: 2026-12-01 11:30:00Z (app)"
        );
    }
}
