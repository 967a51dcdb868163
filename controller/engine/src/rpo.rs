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

/// Points past retention, to prune. The newest point is always kept, whatever its age, so a
/// VM whose replication stalled still has something to recover from.
pub fn expired(points: &[RecoveryPoint], now: DateTime<Utc>, retention: Duration) -> Vec<RecoveryPoint> {
    let floor = retention_floor(now, retention);
    let newest = points.iter().map(|p| p.time).max();
    points
        .iter()
        .filter(|p| p.time < floor && Some(p.time) != newest)
        .cloned()
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("no recovery point exists yet")]
    None,
    #[error("no application-consistent recovery point within retention")]
    NoAppConsistent,
    #[error("no recovery point at or before {0} within retention (oldest kept: {1})")]
    NoneBefore(DateTime<Utc>, String),
}

/// The point a run restores: never newer than asked, never outside retention.
pub fn choose_point(
    points: &[RecoveryPoint],
    selector: &RecoveryPointSelector,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<RecoveryPoint, PointError> {
    let floor = retention_floor(now, retention);
    let kept = points.iter().filter(|p| p.time >= floor && p.time <= now);
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
                    .filter(|p| p.time >= floor)
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
    use super::*;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + min * 60, 0).unwrap_or_default()
    }

    fn points() -> Vec<RecoveryPoint> {
        (0..10)
            .map(|i| RecoveryPoint {
                time: at(i * 10),
                app_consistent: i % 3 == 0,
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
    fn pruning_keeps_the_newest_even_when_old() {
        let old = vec![
            RecoveryPoint {
                time: at(0),
                app_consistent: false,
            },
            RecoveryPoint {
                time: at(10),
                app_consistent: false,
            },
        ];
        let gone = expired(&old, at(500), Duration::from_secs(3600));
        assert_eq!(gone, vec![old[0].clone()]);
    }
}
