//! Recovery-point and RPO math: the sync schedule an RPO needs, which points retention keeps,
//! and which point a run restores.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coldsite_api::recovery_run::RecoveryPointSelector;

use crate::executor::chrono_duration;
use crate::fabric::RecoveryPoint;

/// How often to sync so that the data at risk stays under the RPO: a sync every half RPO
/// leaves room for the sync's own duration. Whole minutes, at least one.
pub fn sync_interval(rpo: Duration) -> Duration {
    let minutes = (rpo.as_secs() / 120).max(1);
    Duration::from_secs(minutes * 60)
}

/// When a VM that replicates at rest is looked at again: often enough to adopt each sync's
/// point soon after it lands (a quarter of the sync interval, between 30 s and 5 minutes),
/// and no later than the moment its newest point would miss the RPO, so that is reported
/// when it happens.
pub fn next_look(rpo: Duration, newest: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    const SOONEST: Duration = Duration::from_secs(30);
    const LATEST: Duration = Duration::from_secs(300);
    let regular = (sync_interval(rpo) / 4).clamp(SOONEST, LATEST);
    match (newest + chrono_duration(rpo) - now).to_std() {
        Ok(until_missed) if until_missed < regular => until_missed + Duration::from_secs(1),
        _ => regular,
    }
}

/// A cron schedule for VolSync's `trigger.schedule` that syncs at least every `interval`.
pub fn cron_schedule(interval: Duration) -> String {
    let minutes = (interval.as_secs() / 60).max(1);
    match minutes {
        m if m < 60 => {
            // Cron steps restart each hour: pick the largest divisor of 60 not above m.
            let step = (1..=m).rev().find(|d| 60 % d == 0).unwrap_or(1);
            format!("*/{step} * * * *")
        }
        m => {
            let hours = (m / 60).clamp(1, 24);
            let step = (1..=hours).rev().find(|d| 24 % d == 0).unwrap_or(1);
            format!("0 */{step} * * *")
        }
    }
}

/// Seconds of data lost if the source failed now.
pub fn current_rpo(now: DateTime<Utc>, last_sync: Option<DateTime<Utc>>) -> Option<i64> {
    last_sync.map(|t| (now - t).num_seconds().max(0))
}

/// The oldest time a point may have and still be kept.
pub fn retention_floor(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    now - chrono_duration(retention)
}

/// Whether retention keeps a point: younger than `retention`, or the newest of all, whatever
/// its age, so that a VM whose replication stopped (a lost primary) still has something to
/// recover from. This is the retention window that runs choose from (DESIGN §4.6).
fn kept_by(floor: DateTime<Utc>, newest: Option<DateTime<Utc>>) -> impl Fn(&RecoveryPoint) -> bool {
    move |p| p.time >= floor || Some(p.time) == newest
}

/// Points past retention, to prune.
pub fn expired(points: &[RecoveryPoint], now: DateTime<Utc>, retention: Duration) -> Vec<RecoveryPoint> {
    let kept = kept_by(retention_floor(now, retention), points.iter().map(|p| p.time).max());
    points.iter().filter(|p| !kept(p)).cloned().collect()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("no recovery point exists yet")]
    None,
    #[error("no application-consistent recovery point within retention")]
    NoAppConsistent,
    #[error("no recovery point at or before {0} within retention (oldest kept: {1})")]
    NoneBefore(DateTime<Utc>, String),
    #[error(
        "no recovery point{0} that every VM of the consistency group holds from one instant within retention; \
         its VMs get such points from the rounds that cut them together"
    )]
    NoCommon(&'static str),
}

/// The point a consistency group's members all restore, from each member's points and
/// retention: the newest instant every member holds a point at (each disk of each member cut
/// then), app-consistent only if every member's point is, never newer than asked, never one
/// that a member's retention prunes.
pub fn choose_common(
    members: &[(&[RecoveryPoint], Duration)],
    selector: &RecoveryPointSelector,
    now: DateTime<Utc>,
) -> Result<RecoveryPoint, PointError> {
    let kept: Vec<Vec<&RecoveryPoint>> = members
        .iter()
        .map(|(points, retention)| {
            let retained = kept_by(retention_floor(now, *retention), points.iter().map(|p| p.time).max());
            points.iter().filter(|p| retained(p) && p.time <= now).collect()
        })
        .collect();
    let Some((first, rest)) = kept.split_first() else {
        return Err(PointError::None);
    };
    let at = |list: &[&RecoveryPoint], t: DateTime<Utc>| list.iter().find(|p| p.time == t).map(|p| (*p).clone());
    let common = first.iter().filter_map(|p| {
        let all: Option<Vec<RecoveryPoint>> = rest.iter().map(|l| at(l, p.time)).collect();
        all.map(|others| RecoveryPoint {
            time: p.time,
            app_consistent: p.app_consistent && others.iter().all(|o| o.app_consistent),
            one_instant: true,
        })
    });
    let (asked, why) = match selector {
        RecoveryPointSelector::Latest => (None, ""),
        RecoveryPointSelector::LatestAppConsistent => (None, " app-consistent for all"),
        RecoveryPointSelector::At(t) => (Some(crate::time::from_k8s(t)), " at or before the time asked"),
    };
    let app_only = matches!(selector, RecoveryPointSelector::LatestAppConsistent);
    common
        .filter(|p| (!app_only || p.app_consistent) && asked.is_none_or(|t| p.time <= t))
        .max_by_key(|p| p.time)
        .ok_or(PointError::NoCommon(why))
}

/// The point a run restores: never newer than asked, never one that retention prunes.
pub fn choose_point(
    points: &[RecoveryPoint],
    selector: &RecoveryPointSelector,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<RecoveryPoint, PointError> {
    let floor = retention_floor(now, retention);
    let retained = kept_by(floor, points.iter().map(|p| p.time).max());
    let kept = points.iter().filter(|p| retained(p) && p.time <= now);
    let best = match selector {
        RecoveryPointSelector::Latest => kept.max_by_key(|p| p.time).ok_or(PointError::None),
        RecoveryPointSelector::LatestAppConsistent => kept
            .filter(|p| p.app_consistent)
            .max_by_key(|p| p.time)
            .ok_or(PointError::NoAppConsistent),
        RecoveryPointSelector::At(t) => {
            let t = crate::time::from_k8s(t);
            kept.filter(|p| p.time <= t).max_by_key(|p| p.time).ok_or_else(|| {
                let oldest = points
                    .iter()
                    .filter(|p| retained(p))
                    .map(|p| p.time)
                    .min()
                    .map_or_else(|| "none".to_owned(), |t| t.to_rfc3339());
                PointError::NoneBefore(t, oldest)
            })
        }
    };
    best.cloned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vm_at_rest_is_looked_at_by_its_rpo_and_when_its_rpo_would_be_missed() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let mins = |m: i64| now - chrono::TimeDelta::minutes(m);
        let secs = Duration::from_secs;
        // Short RPOs keep the 30 s look; long ones wait up to 5 minutes.
        assert_eq!(next_look(secs(120), mins(0), now), secs(30));
        assert_eq!(next_look(secs(15 * 60), mins(0), now), secs(105));
        assert_eq!(next_look(secs(24 * 3600), mins(0), now), secs(300));
        // A point about to miss the RPO: looked at just after it does.
        assert_eq!(next_look(secs(24 * 3600), mins(24 * 60 - 2), now), secs(121));
        // Missed already: the regular look.
        assert_eq!(next_look(secs(24 * 3600), mins(25 * 60), now), secs(300));
    }

    use super::*;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + min * 60, 0).unwrap_or_default()
    }

    fn points() -> Vec<RecoveryPoint> {
        (0..10)
            .map(|i| RecoveryPoint {
                time: at(i * 10),
                app_consistent: i % 3 == 0,
                one_instant: false,
            })
            .collect()
    }

    #[test]
    fn rpo_maps_to_schedule() {
        assert_eq!(sync_interval(Duration::from_secs(15 * 60)), Duration::from_secs(7 * 60));
        assert_eq!(cron_schedule(Duration::from_secs(7 * 60)), "*/6 * * * *");
        assert_eq!(cron_schedule(Duration::from_secs(60)), "*/1 * * * *");
        assert_eq!(cron_schedule(Duration::from_secs(5 * 3600)), "0 */4 * * *");
    }

    #[test]
    fn latest_within_retention() {
        let p = choose_point(
            &points(),
            &RecoveryPointSelector::Latest,
            at(95),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(p.time, at(90));
    }

    #[test]
    fn point_in_time_is_never_newer_than_asked() {
        let sel = RecoveryPointSelector::At(crate::time::to_k8s(at(55)));
        let p = choose_point(&points(), &sel, at(95), Duration::from_secs(3 * 3600)).unwrap();
        assert_eq!(p.time, at(50));
    }

    #[test]
    fn point_outside_retention_is_refused() {
        let sel = RecoveryPointSelector::At(crate::time::to_k8s(at(15)));
        let err = choose_point(&points(), &sel, at(95), Duration::from_secs(3600)).unwrap_err();
        assert!(matches!(err, PointError::NoneBefore(..)), "{err}");
    }

    #[test]
    fn app_consistent_picks_the_frozen_one() {
        let p = choose_point(
            &points(),
            &RecoveryPointSelector::LatestAppConsistent,
            at(95),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(p.time, at(90));
        let p = choose_point(
            &points(),
            &RecoveryPointSelector::LatestAppConsistent,
            at(85),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(p.time, at(60));
    }

    #[test]
    fn the_newest_point_stays_usable_when_replication_stopped_longer_than_retention() {
        // The primary was lost at minute 90 and the failover starts ten hours later.
        let late = at(600);
        let hour = Duration::from_secs(3600);
        let p = choose_point(&points(), &RecoveryPointSelector::Latest, late, hour).unwrap();
        assert_eq!(p.time, at(90));
        let asked = RecoveryPointSelector::At(crate::time::to_k8s(at(95)));
        assert_eq!(choose_point(&points(), &asked, late, hour).unwrap().time, at(90));
        // Only the newest: the older ones are pruned and must not be chosen.
        let older = RecoveryPointSelector::At(crate::time::to_k8s(at(85)));
        assert!(matches!(
            choose_point(&points(), &older, late, hour),
            Err(PointError::NoneBefore(..))
        ));
        assert_eq!(
            choose_point(&points(), &RecoveryPointSelector::LatestAppConsistent, late, hour),
            Ok(points()[9].clone()),
            "the newest (minute 90) is app-consistent"
        );
    }

    proptest::proptest! {
        /// Runs choose from exactly what pruning keeps.
        #[test]
        fn a_chosen_point_is_never_one_pruning_removes(
            minutes in proptest::collection::vec(0i64..1000, 1..20),
            now in 0i64..2000,
            retention_minutes in 1u64..500,
            app in proptest::collection::vec(proptest::bool::ANY, 20),
        ) {
            let points: Vec<RecoveryPoint> = minutes
                .iter()
                .zip(&app)
                .map(|(m, a)| RecoveryPoint { time: at(*m), app_consistent: *a, one_instant: false })
                .collect();
            let retention = Duration::from_secs(retention_minutes * 60);
            let gone = expired(&points, at(now), retention);
            for selector in [RecoveryPointSelector::Latest, RecoveryPointSelector::LatestAppConsistent] {
                if let Ok(p) = choose_point(&points, &selector, at(now), retention) {
                    proptest::prop_assert!(!gone.contains(&p), "{p:?} is pruned: {gone:?}");
                    proptest::prop_assert!(p.time <= at(now));
                }
            }
        }
    }

    #[test]
    fn pruning_keeps_the_newest_even_when_old() {
        let old = vec![
            RecoveryPoint {
                time: at(0),
                app_consistent: false,
                one_instant: false,
            },
            RecoveryPoint {
                time: at(10),
                app_consistent: false,
                one_instant: false,
            },
        ];
        let gone = expired(&old, at(500), Duration::from_secs(3600));
        assert_eq!(gone, vec![old[0].clone()]);
    }

    fn pt(min: i64, app: bool) -> RecoveryPoint {
        RecoveryPoint {
            time: at(min),
            app_consistent: app,
            one_instant: true,
        }
    }

    #[test]
    fn a_consistency_group_restores_the_newest_instant_every_member_holds() {
        let hour = Duration::from_secs(3600);
        let db = [pt(0, true), pt(10, false), pt(20, true), pt(30, false)];
        // The app server's round at 30 is not adopted yet; its own point at 25 is no group's.
        let app = [pt(0, true), pt(10, false), pt(20, false), pt(25, false)];
        let members = [(&db[..], hour), (&app[..], hour)];
        let latest = choose_common(&members, &RecoveryPointSelector::Latest, at(40)).unwrap();
        assert_eq!(latest.time, at(20));
        assert!(!latest.app_consistent, "app-consistent only if every member's point is");
        let app_point = choose_common(&members, &RecoveryPointSelector::LatestAppConsistent, at(40)).unwrap();
        assert_eq!(app_point.time, at(0));
        let asked = RecoveryPointSelector::At(crate::time::to_k8s(at(15)));
        assert_eq!(choose_common(&members, &asked, at(40)).unwrap().time, at(10));
        // Never newer than now, never what a member's retention prunes.
        assert_eq!(
            choose_common(&members, &RecoveryPointSelector::Latest, at(15))
                .unwrap()
                .time,
            at(10)
        );
        let short = [(&db[..], hour), (&app[..], Duration::from_secs(60))];
        assert_eq!(
            choose_common(&short, &RecoveryPointSelector::Latest, at(70)),
            Err(PointError::NoCommon("")),
            "the app server keeps only its newest point (25), which the database lacks"
        );
    }

    proptest::proptest! {
        /// The group's point is one every member holds, and no newer instant all hold would do.
        #[test]
        fn a_group_point_is_held_by_every_member_and_is_the_newest_so(
            members in proptest::collection::vec(proptest::collection::btree_set(0i64..40, 0..12), 1..5),
            now in 0i64..50,
            latest in proptest::bool::ANY,
        ) {
            let lists: Vec<Vec<RecoveryPoint>> = members
                .iter()
                .map(|times| times.iter().map(|m| pt(*m, m % 3 == 0)).collect())
                .collect();
            let day = Duration::from_secs(86_400);
            let input: Vec<(&[RecoveryPoint], Duration)> = lists.iter().map(|l| (&l[..], day)).collect();
            let selector = if latest { RecoveryPointSelector::Latest } else { RecoveryPointSelector::LatestAppConsistent };
            let fits = |m: i64| m <= now && (latest || m % 3 == 0) && members.iter().all(|t| t.contains(&m));
            let best = (0..40).filter(|m| fits(*m)).max();
            match choose_common(&input, &selector, at(now)) {
                Ok(p) => proptest::prop_assert_eq!(Some(p.time), best.map(at)),
                Err(_) => proptest::prop_assert_eq!(best, None),
            }
        }
    }
}
