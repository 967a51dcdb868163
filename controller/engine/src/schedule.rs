//! Drill schedules: five-field cron expressions or @-macros, read in UTC.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

/// The first time after `since` that `schedule` fires; `None` when it is not a cron
/// expression or never fires.
pub fn next_fire(schedule: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    croner::Cron::from_str(schedule)
        .ok()?
        .find_next_occurrence(&since, false)
        .ok()
}

/// Why `schedule` cannot drive drills, if it cannot: it does not parse, or no date matches
/// it (such as the 31st of February). Leap days count: a schedule on the 29th of February
/// fires every four years.
pub fn never_fires(schedule: &str) -> Option<String> {
    if let Err(e) = croner::Cron::from_str(schedule) {
        return Some(format!("{schedule:?} is not a cron expression: {e}"));
    }
    // Eight years hold every weekday of every date, the 29th of February included.
    let start = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single()?;
    match next_fire(schedule, start) {
        Some(t) if t < Utc.with_ymd_and_hms(2008, 1, 1, 0, 0, 0).single()? => None,
        _ => Some(format!(
            "{schedule:?} never fires: no date matches its day of month, month and day of week together"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_that_never_fire_are_named() {
        for never in ["0 3 31 2 *", "0 3 30 2 *", "0 3 31 4 *", "0 0 31 6 *"] {
            assert!(never_fires(never).is_some(), "{never}");
        }
        for fires in ["0 3 * * 6", "@weekly", "0 3 29 2 *", "0 3 31 * *", "*/15 * * * *"] {
            assert_eq!(never_fires(fires), None, "{fires}");
        }
        assert!(never_fires("every night").is_some_and(|m| m.contains("not a cron expression")));
    }
}
