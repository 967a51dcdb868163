//! Standard conditions with stable transition times: the time moves only when the status
//! really changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set, before its transition time is decided.
pub struct Desired<'a> {
    pub type_: &'a str,
    pub ok: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Sets `desired` in `conditions`, keeping the old transition time unless the status flips.
pub fn set(conditions: &mut Vec<Condition>, desired: Desired<'_>, generation: Option<i64>, now: Time) {
    let status = if desired.ok { "True" } else { "False" };
    let message = truncate(&desired.message, 1024);
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = desired.reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: desired.type_.into(),
            status: status.into(),
            reason: desired.reason.into(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

/// Messages in conditions stay short; the apiserver caps them at 32 KiB.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let mut c = Vec::new();
        set(
            &mut c,
            Desired {
                type_: "Ready",
                ok: true,
                reason: "A",
                message: "m".into(),
            },
            Some(1),
            t(10),
        );
        set(
            &mut c,
            Desired {
                type_: "Ready",
                ok: true,
                reason: "B",
                message: "n".into(),
            },
            Some(2),
            t(20),
        );
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, "B");
        set(
            &mut c,
            Desired {
                type_: "Ready",
                ok: false,
                reason: "C",
                message: "o".into(),
            },
            Some(2),
            t(30),
        );
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(c.len(), 1);
    }
}
