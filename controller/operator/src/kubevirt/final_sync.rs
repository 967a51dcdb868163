//! The final sync of a planned action, one disk at a time, through VolSync's manual
//! trigger: what to do next given the ReplicationSource and ReplicationDestination as read.
//!
//! It relies on causality, not on clocks. VolSync records `status.lastManualSync =
//! spec.trigger.manual` when *any* sync completes, so a sync already running when the tag
//! is set would consume it with data copied before the source VM stopped. The tag is
//! therefore only set while the source is idle (no `status.lastSyncStartTime`), guarded by
//! its resourceVersion: the sync that consumes it started after the tag, hence after the
//! power-off. Times are not compared: VolSync's are whole seconds from the site's clock,
//! and a comparison with the controller's clock hung when a sync finished within the
//! second of the power-off (or would hang under clock skew).
//!
//! Each attempt has a tag of its own, `<run uid>-<source resourceVersion>`: when the
//! source changed between the destination's patch and its own, a sync may have consumed the
//! destination's tag, and a destination only receives again for a tag it has not seen.

use serde_json::Value;

use super::dynamic::str_at;

/// What the final sync of one disk needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Set `tag` on the destination, then on the source if it is still at
    /// `source_version`.
    Trigger { tag: String, source_version: String },
    /// A sync that may predate the power-off is running, or ours has not completed.
    Wait,
    /// Both ends completed the sync the tag asked for: adopt the destination's image.
    Adopt,
}

/// `run` is the run's uid; `rd` is `None` when the destination does not exist (yet).
pub fn next(run: &str, rs: &Value, rd: Option<&Value>) -> Next {
    let ours = |t: &&str| t.strip_prefix(run).is_some_and(|rest| rest.starts_with('-'));
    let Some(tag) = str_at(rs, "/spec/trigger/manual").filter(ours) else {
        let running = str_at(rs, "/status/lastSyncStartTime").is_some_and(|t| !t.is_empty());
        return match str_at(rs, "/metadata/resourceVersion") {
            Some(version) if !running => Next::Trigger {
                tag: format!("{run}-{version}"),
                source_version: version.to_owned(),
            },
            _ => Next::Wait,
        };
    };
    let consumed = |o: &Value| str_at(o, "/status/lastManualSync") == Some(tag);
    if consumed(rs) && rd.is_some_and(consumed) {
        Next::Adopt
    } else {
        Next::Wait
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RUN: &str = "run-uid";
    const TAG: &str = "run-uid-42";

    fn source(manual: Option<&str>, started: Option<&str>, last_manual: Option<&str>) -> Value {
        json!({
            "metadata": {"resourceVersion": "42"},
            "spec": {"trigger": {"schedule": if manual.is_some() { None } else { Some("*/5 * * * *") }, "manual": manual}},
            "status": {"lastSyncTime": "2026-11-26T10:00:40Z", "lastSyncStartTime": started, "lastManualSync": last_manual},
        })
    }

    fn destination(last_manual: Option<&str>, last_sync: &str) -> Value {
        json!({"status": {"lastManualSync": last_manual, "lastSyncTime": last_sync,
                          "latestImage": {"kind": "VolumeSnapshot", "name": "img"}}})
    }

    #[test]
    fn an_idle_source_is_triggered_at_the_version_read() {
        let rs = source(None, None, None);
        assert_eq!(
            next(RUN, &rs, None),
            Next::Trigger {
                tag: TAG.into(),
                source_version: "42".into()
            }
        );
    }

    #[test]
    fn a_sync_running_before_the_tag_is_waited_out_not_tagged() {
        // Tagging now would let this sync, which may have started before the power-off,
        // stand for the final one.
        let rs = source(None, Some("2026-11-26T10:00:39Z"), None);
        assert_eq!(next(RUN, &rs, None), Next::Wait);
    }

    #[test]
    fn waits_until_both_ends_completed_the_tagged_sync() {
        let rs = source(Some(TAG), Some("2026-11-26T10:00:41Z"), None);
        let rd = destination(None, "2026-11-26T10:00:30Z");
        assert_eq!(next(RUN, &rs, Some(&rd)), Next::Wait);

        let rs = source(Some(TAG), None, Some(TAG));
        assert_eq!(next(RUN, &rs, Some(&rd)), Next::Wait, "destination not done");
        assert_eq!(next(RUN, &rs, None), Next::Wait, "destination missing");

        let rs = source(Some(TAG), None, Some("an-earlier-run"));
        let rd = destination(Some(TAG), "2026-11-26T10:00:41Z");
        assert_eq!(next(RUN, &rs, Some(&rd)), Next::Wait, "source not done");
    }

    #[test]
    fn a_completed_sync_is_adopted_whatever_its_whole_second_time() {
        // VolSync's lastSyncTime has whole seconds from the site's clock: a sync that
        // finished within the second of the power-off reads as older than it. The first
        // version compared it with the controller's power-off time and waited forever.
        let rs = source(Some(TAG), None, Some(TAG));
        let rd = destination(Some(TAG), "2026-11-26T10:00:40Z");
        assert_eq!(next(RUN, &rs, Some(&rd)), Next::Adopt);
    }

    #[test]
    fn another_runs_tag_is_replaced() {
        let rs = source(Some("an-earlier-run-7"), None, Some("an-earlier-run-7"));
        assert!(matches!(next(RUN, &rs, None), Next::Trigger { .. }));
        // A uid that merely starts like this run's is another run's.
        let rs = source(Some("run-uidX-7"), None, None);
        assert!(matches!(next(RUN, &rs, None), Next::Trigger { .. }));
    }

    #[test]
    fn each_attempt_has_a_tag_the_destination_has_not_seen() {
        // The first attempt told the destination, then lost the race for the source; a
        // scheduled sync ran and the destination consumed that tag.
        let mut rs = source(None, None, None);
        rs["metadata"]["resourceVersion"] = json!("57");
        let rd = destination(Some(TAG), "2026-11-26T10:00:41Z");
        let Next::Trigger { tag, .. } = next(RUN, &rs, Some(&rd)) else {
            panic!("an idle source is triggered");
        };
        assert_ne!(tag, TAG);
        assert!(tag.starts_with("run-uid-"), "{tag}");
    }
}
