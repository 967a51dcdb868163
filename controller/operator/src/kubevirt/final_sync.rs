//! The final sync of a planned action, one disk at a time, through VolSync's manual
//! triggers: what to do next given the ReplicationSource, the ReplicationDestination and the
//! destination's mover Job, as read.
//!
//! It relies on causality, not on clocks (VolSync's times are whole seconds from each site's
//! own clock). VolSync records `status.lastManualSync = spec.trigger.manual` when *any* sync
//! completes, and a tag set during a sync is absorbed by that sync. So:
//!
//! 1. The destination is tagged first, and the source only once the destination's mover Job
//!    listens (active, not yet succeeded) for that tag: a destination finishing an older
//!    sync as its tag arrives records the tag and goes idle, and a source tagged then would
//!    wait for a listener that never comes.
//! 2. The source is tagged only while idle (no `status.lastSyncStartTime`), guarded by its
//!    resourceVersion: the sync that consumes the tag started after the tag, hence after the
//!    power-off. A manual trigger wins over the schedule, so no other sync starts.
//! 3. The point is adopted once both ends recorded their tags: the destination's sync that
//!    recorded its tag received the source's final sync, the only one in flight.
//!
//! Three ways it can still go wrong are mended rather than waited out. A destination that
//! recorded its tag before the source was tagged (an older sync absorbed it) is tagged
//! again. And if it absorbed the tag in the moment between the listening check and the
//! source's tag, the source's mover finds no listener and fails (`latestMoverStatus.result:
//! Failed`) while the destination sits idle: the destination is tagged again, and VolSync's
//! next mover attempt lands in the new listener. The same holds for a sync this run did not
//! start (an app-consistent sync the run took the VM over from): its source retries for ever
//! while the destination idles on a trigger it recorded, and nobody else will tag it now. The
//! destination is tagged, the old sync lands there, and the final sync follows it.
//!
//! Every tag is `<run uid>-<resourceVersion of the object tagged>`: each attempt has its own,
//! and a tag of another run (a cancelled planned failover) is replaced.

use serde_json::Value;

use super::dynamic::str_at;

/// What the final sync of one disk needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Set `tag` on the destination.
    TagDestination { tag: String },
    /// Set `tag` on the source if it is still at `source_version`.
    TagSource { tag: String, source_version: String },
    /// A sync is under way, or the destination is not listening yet.
    Wait,
    /// Both ends completed the final sync: adopt the destination's image.
    Adopt,
}

/// The three objects as read; `None` for what does not exist (yet).
pub struct Ends<'a> {
    pub source: &'a Value,
    pub destination: Option<&'a Value>,
    /// The destination's rsync-TLS mover Job (`volsync-rsync-tls-dst-<name>`).
    pub destination_job: Option<&'a Value>,
}

pub fn tag_of<'a>(run: &str, object: &'a Value) -> Option<&'a str> {
    str_at(object, "/spec/trigger/manual").filter(|t| t.strip_prefix(run).is_some_and(|rest| rest.starts_with('-')))
}

fn consumed(object: &Value, tag: &str) -> bool {
    str_at(object, "/status/lastManualSync") == Some(tag)
}

fn new_tag(run: &str, object: &Value) -> String {
    format!("{run}-{}", str_at(object, "/metadata/resourceVersion").unwrap_or("0"))
}

/// A mover Job that waits for a transfer: running and not yet done.
fn listening(job: Option<&Value>) -> bool {
    let count = |field: &str| job.and_then(|j| j.pointer(field)).and_then(Value::as_i64).unwrap_or(0);
    job.is_some() && count("/status/active") > 0 && count("/status/succeeded") == 0
}

/// `run` is the run's uid.
pub fn next(run: &str, ends: &Ends<'_>) -> Next {
    let rs = ends.source;
    let Some(rd) = ends.destination else {
        return Next::Wait;
    };
    let rd_tag = tag_of(run, rd).filter(|t| !t.is_empty());
    // The destination recorded its manual trigger and waits for another: nothing listens.
    let rd_idle = str_at(rd, "/spec/trigger/manual").is_some_and(|t| !t.is_empty() && consumed(rd, t));
    match tag_of(run, rs) {
        Some(rs_tag) => {
            let destination_done = rd_tag.is_some_and(|t| consumed(rd, t));
            if consumed(rs, rs_tag) && destination_done {
                Next::Adopt
            } else if !consumed(rs, rs_tag)
                && destination_done
                && str_at(rs, "/status/latestMoverStatus/result") == Some("Failed")
            {
                Next::TagDestination { tag: new_tag(run, rd) }
            } else {
                Next::Wait
            }
        }
        None => {
            let running = str_at(rs, "/status/lastSyncStartTime").is_some_and(|t| !t.is_empty());
            match rd_tag {
                _ if running && rd_idle => Next::TagDestination { tag: new_tag(run, rd) },
                _ if running => Next::Wait,
                Some(t) if !consumed(rd, t) => match str_at(rs, "/metadata/resourceVersion") {
                    Some(version) if listening(ends.destination_job) => Next::TagSource {
                        tag: new_tag(run, rs),
                        source_version: version.to_owned(),
                    },
                    _ => Next::Wait,
                },
                _ => Next::TagDestination { tag: new_tag(run, rd) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RUN: &str = "run-uid";

    fn source(version: &str, manual: Option<&str>, started: Option<&str>, last_manual: Option<&str>) -> Value {
        json!({
            "metadata": {"resourceVersion": version},
            "spec": {"trigger": {"schedule": if manual.is_some() { None } else { Some("*/5 * * * *") }, "manual": manual}},
            "status": {"lastSyncTime": "2026-11-26T10:00:40Z", "lastSyncStartTime": started, "lastManualSync": last_manual},
        })
    }

    fn destination(version: &str, manual: Option<&str>, last_manual: Option<&str>) -> Value {
        json!({"metadata": {"resourceVersion": version},
               "spec": {"trigger": {"manual": manual}},
               "status": {"lastManualSync": last_manual, "lastSyncTime": "2026-11-26T10:00:30Z",
                          "latestImage": {"kind": "VolumeSnapshot", "name": "img"}}})
    }

    fn job(active: i64, succeeded: i64) -> Value {
        json!({"status": {"active": active, "succeeded": succeeded}})
    }

    fn next_of(rs: &Value, rd: Option<&Value>, j: Option<&Value>) -> Next {
        next(
            RUN,
            &Ends {
                source: rs,
                destination: rd,
                destination_job: j,
            },
        )
    }

    #[test]
    fn the_destination_is_tagged_first() {
        let rs = source("42", None, None, None);
        let rd = destination("7", None, None);
        assert_eq!(
            next_of(&rs, Some(&rd), Some(&job(1, 0))),
            Next::TagDestination {
                tag: "run-uid-7".into()
            }
        );
        assert_eq!(next_of(&rs, None, None), Next::Wait, "no destination yet");
    }

    #[test]
    fn the_source_is_tagged_once_the_destination_listens() {
        let rs = source("42", None, None, None);
        let rd = destination("8", Some("run-uid-7"), None);
        assert_eq!(next_of(&rs, Some(&rd), None), Next::Wait, "no mover Job yet");
        assert_eq!(
            next_of(&rs, Some(&rd), Some(&job(1, 1))),
            Next::Wait,
            "the Job finished a transfer: not listening any more"
        );
        assert_eq!(
            next_of(&rs, Some(&rd), Some(&job(1, 0))),
            Next::TagSource {
                tag: "run-uid-42".into(),
                source_version: "42".into()
            }
        );
    }

    #[test]
    fn a_sync_running_before_the_tag_is_waited_out_not_tagged() {
        // Tagging now would let this sync, which may have started before the power-off,
        // stand for the final one.
        let rs = source("42", None, Some("2026-11-26T10:00:39Z"), None);
        let rd = destination("8", Some("run-uid-7"), None);
        assert_eq!(next_of(&rs, Some(&rd), Some(&job(1, 0))), Next::Wait);
    }

    #[test]
    fn a_destination_tag_absorbed_by_an_older_sync_is_set_again() {
        // The destination was finishing a scheduled sync as its tag arrived: it recorded the
        // tag and went idle, with nothing listening for the final sync.
        let rs = source("42", None, None, None);
        let rd = destination("9", Some("run-uid-7"), Some("run-uid-7"));
        assert_eq!(
            next_of(&rs, Some(&rd), None),
            Next::TagDestination {
                tag: "run-uid-9".into()
            }
        );
    }

    #[test]
    fn waits_until_both_ends_completed_then_adopts() {
        let rs = source("50", Some("run-uid-42"), Some("2026-11-26T10:00:41Z"), None);
        let rd = destination("9", Some("run-uid-7"), None);
        assert_eq!(next_of(&rs, Some(&rd), Some(&job(1, 0))), Next::Wait);
        let rs = source("51", Some("run-uid-42"), None, Some("run-uid-42"));
        assert_eq!(next_of(&rs, Some(&rd), None), Next::Wait, "destination not done");
        let rd = destination("10", Some("run-uid-7"), Some("run-uid-7"));
        assert_eq!(next_of(&rs, Some(&rd), None), Next::Adopt);
    }

    #[test]
    fn a_source_that_found_no_listener_gets_a_new_one() {
        // The destination absorbed its tag between the listening check and the source's tag:
        // the source's mover gave up, and would retry forever against nobody.
        let failed = json!({
            "metadata": {"resourceVersion": "60"},
            "spec": {"trigger": {"manual": "run-uid-42"}},
            "status": {"lastSyncStartTime": "2026-11-26T10:00:41Z", "lastManualSync": null,
                       "latestMoverStatus": {"result": "Failed"}},
        });
        let rd = destination("11", Some("run-uid-7"), Some("run-uid-7"));
        assert_eq!(
            next_of(&failed, Some(&rd), None),
            Next::TagDestination {
                tag: "run-uid-11".into()
            }
        );
        // While the mover still tries, the destination that recorded its tag may simply be
        // ahead of the source: wait.
        let trying = source("61", Some("run-uid-42"), Some("2026-11-26T10:00:41Z"), None);
        assert_eq!(next_of(&trying, Some(&rd), None), Next::Wait);
    }

    #[test]
    fn an_app_sync_taken_over_while_its_source_finds_no_listener_gets_one() {
        // The VM was claimed in the middle of an app-consistent sync whose destination absorbed
        // its tag: the source retries against an idle destination, and the app sync is no
        // longer driven. Waiting for the source to go idle would wait for ever.
        let stuck = json!({
            "metadata": {"resourceVersion": "70"},
            "spec": {"trigger": {"manual": "app-41"}},
            "status": {"lastSyncStartTime": "2026-11-26T10:00:41Z", "lastManualSync": "app-30"},
        });
        let idle = destination("14", Some("app-40"), Some("app-40"));
        assert_eq!(
            next_of(&stuck, Some(&idle), None),
            Next::TagDestination {
                tag: "run-uid-14".into()
            }
        );
        // Once tagged, the destination listens: the old sync lands there, then ours follows.
        let listening = destination("15", Some("run-uid-14"), Some("app-40"));
        assert_eq!(next_of(&stuck, Some(&listening), Some(&job(1, 0))), Next::Wait);
        // A destination still listening for the old sync's tag is not disturbed.
        let waiting = destination("16", Some("app-40"), Some("app-39"));
        assert_eq!(next_of(&stuck, Some(&waiting), Some(&job(1, 0))), Next::Wait);
        // Without a manual trigger a destination always listens again after a sync.
        let scheduled = destination("17", None, Some("app-40"));
        assert_eq!(next_of(&stuck, Some(&scheduled), None), Next::Wait);
    }

    #[test]
    fn another_runs_tags_are_replaced() {
        let rs = source("42", Some("an-earlier-run-7"), None, Some("an-earlier-run-7"));
        let rd = destination("12", Some("an-earlier-run-3"), Some("an-earlier-run-3"));
        assert_eq!(
            next_of(&rs, Some(&rd), None),
            Next::TagDestination {
                tag: "run-uid-12".into()
            }
        );
        // A uid that merely starts like this run's is another run's.
        let rd = destination("13", Some("run-uidX-7"), None);
        assert!(matches!(next_of(&rs, Some(&rd), None), Next::TagDestination { .. }));
    }
}
