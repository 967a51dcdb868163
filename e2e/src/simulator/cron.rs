//! VolSync's `spec.trigger.schedule`: standard five-field cron expressions, evaluated on
//! a compressed clock.
//!
//! **Compressed time.** Real VolSync schedules are minutes to hours apart; tests cannot
//! wait that long. The simulator evaluates schedules on a *simulated clock* that runs
//! `time_scale` times faster than the real one, anchored at 2020-01-01T00:00:00Z:
//! `sim = anchor + (real - anchor) × time_scale`. With the default scale of 60, one cron
//! minute lasts one real second: `*/5 * * * *` fires every 5 real seconds and
//! `0 */2 * * *` every 2 real minutes. Every timestamp the simulator *writes*
//! (`lastSyncTime`, `nextSyncTime`, ...) is real time.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, Timelike, Utc};

/// A parsed cron schedule: minute, hour, day of month, month, day of week; with lists
/// (`1,5`), ranges (`1-5`), steps (`*/15`, `0-30/10`, `5/10`), month and weekday names
/// (`JAN`, `MON`) and the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`,
/// `@daily`, `@midnight` and `@hourly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    // Like robfig/cron (VolSync's parser): when either day field is a plain `*`, both
    // must match; when both are restricted, either may.
    day_of_month_star: bool,
    day_of_week_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl FromStr for Schedule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let expr = match spec.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!(
                "cron schedule {spec:?} must have 5 fields (minute hour day-of-month month day-of-week)"
            ));
        };
        let (minutes, _) = field(minute, 0, 59, None).map_err(|e| format!("minute: {e}"))?;
        let (hours, _) = field(hour, 0, 23, None).map_err(|e| format!("hour: {e}"))?;
        let (days_of_month, day_of_month_star) = field(dom, 1, 31, None).map_err(|e| format!("day of month: {e}"))?;
        let (months, _) = field(month, 1, 12, Some((&MONTHS, 1))).map_err(|e| format!("month: {e}"))?;
        let (mut days_of_week, day_of_week_star) =
            field(dow, 0, 7, Some((&WEEKDAYS, 0))).map_err(|e| format!("day of week: {e}"))?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1; // 7 is Sunday too
        }
        Ok(Self {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            day_of_month_star,
            day_of_week_star,
        })
    }
}

/// Parses one field into a bit set; the flag tells whether it contained a plain `*`.
fn field(text: &str, min: u32, max: u32, names: Option<(&[&str], u32)>) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some((names, first)) = names
            && let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s))
        {
            return Ok(first + i as u32);
        }
        s.parse::<u32>().map_err(|_| format!("{s:?} is not a number"))
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                Some(
                    step.parse::<u32>()
                        .map_err(|_| format!("step {step:?} is not a number"))?,
                ),
            ),
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            star |= step.unwrap_or(1) == 1;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step.is_some() { max } else { v })
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of {part:?} is zero"));
        }
        if low < min || high > max || low > high {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.days_of_month & (1 << t.day()) != 0;
        let dow = self.days_of_week & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.day_of_month_star || self.day_of_week_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `t` (at a whole minute) that the schedule fires;
    /// `None` if it never fires within five years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = t.with_second(0)?.with_nanosecond(0)? + ChronoDuration::minutes(1);
        let last_year = t.year() + 5;
        while t.year() <= last_year {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?.and_utc();
                continue;
            }
            if !self.day_matches(t) {
                t = t.date_naive().succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc();
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)? + ChronoDuration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += ChronoDuration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// The compressed clock on which schedules are evaluated (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    scale: f64,
}

/// 2020-01-01T00:00:00Z, where the simulated and the real clock agree.
const ANCHOR_SECS: f64 = 1_577_836_800.0;

/// The largest supported `time_scale`: beyond it simulated dates leave chrono's range.
pub const MAX_TIME_SCALE: f64 = 10_000.0;

impl Clock {
    /// A clock running `scale` times faster than real time (clamped to
    /// `0.001..=MAX_TIME_SCALE`).
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() {
            scale.clamp(0.001, MAX_TIME_SCALE)
        } else {
            1.0
        };
        Self { scale }
    }

    fn secs(t: DateTime<Utc>) -> f64 {
        t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
    }

    fn at(secs: f64) -> Option<DateTime<Utc>> {
        let millis = (secs * 1000.0).round();
        DateTime::from_timestamp_millis(millis as i64)
    }

    /// Simulated time at real time `real`.
    pub fn to_sim(&self, real: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Self::at(ANCHOR_SECS + (Self::secs(real) - ANCHOR_SECS) * self.scale)
    }

    /// Real time at simulated time `sim`.
    pub fn to_real(&self, sim: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Self::at(ANCHOR_SECS + (Self::secs(sim) - ANCHOR_SECS) / self.scale)
    }

    /// The real time of the schedule's first firing after real time `after`.
    pub fn next_fire(&self, schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.to_real(schedule.next_after(self.to_sim(after)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(spec: &str, after: &str) -> String {
        let schedule: Schedule = spec.parse().unwrap();
        schedule
            .next_after(at(after))
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(next("*/5 * * * *", "2024-03-01T10:02:30Z"), "2024-03-01T10:05:00Z");
        assert_eq!(next("*/5 * * * *", "2024-03-01T10:05:00Z"), "2024-03-01T10:10:00Z");
        assert_eq!(next("15 */6 * * *", "2024-03-01T10:00:00Z"), "2024-03-01T12:15:00Z");
        assert_eq!(next("0 0 * * *", "2024-12-31T23:59:00Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next("0 9 * * MON-FRI", "2024-03-01T10:00:00Z"), "2024-03-04T09:00:00Z");
        assert_eq!(next("0 0 1 JAN,jul *", "2024-03-01T10:00:00Z"), "2024-07-01T00:00:00Z");
        assert_eq!(next("@hourly", "2024-03-01T10:00:00Z"), "2024-03-01T11:00:00Z");
        assert_eq!(next("0 0 * * 7", "2024-03-01T10:00:00Z"), "2024-03-03T00:00:00Z");
        assert_eq!(next("5/20 * * * *", "2024-03-01T10:26:00Z"), "2024-03-01T10:45:00Z");
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(next("0 0 13 * 5", "2024-03-01T10:00:00Z"), "2024-03-08T00:00:00Z");
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "* * * *", "61 * * * *", "*/0 * * * *", "x * * * *", "@every 5m"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?} parsed");
        }
        let never: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(never.next_after(at("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn one_cron_minute_per_real_second_at_scale_60() {
        let clock = Clock::new(60.0);
        let schedule: Schedule = "*/5 * * * *".parse().unwrap();
        let t0 = at("2025-06-01T12:00:00.300Z");
        let first = clock.next_fire(&schedule, t0).unwrap();
        let second = clock.next_fire(&schedule, first).unwrap();
        assert_eq!((second - first).num_milliseconds(), 5000);
        assert!(first > t0 && (first - t0).num_milliseconds() <= 5000);
        // Whole real seconds: the boundaries line up with metav1.Time's precision.
        assert_eq!(first.timestamp_subsec_millis(), 0);
        let hourly: Schedule = "0 */2 * * *".parse().unwrap();
        let a = clock.next_fire(&hourly, t0).unwrap();
        let b = clock.next_fire(&hourly, a).unwrap();
        assert_eq!((b - a).num_seconds(), 120);
        // Scale 1 is real time.
        let real = Clock::new(1.0);
        assert_eq!(real.next_fire(&schedule, t0).unwrap(), at("2025-06-01T12:05:00Z"));
    }
}
