//! The write log's record of a group (`store::durability`): the requests,
//! and the server clock, caps and timeout defaults their transaction used,
//! so that replaying it decides the same. Its layout is versioned, and a
//! test pins this version's bytes: a log written by one build must replay
//! on the next.

use super::{apply_work, Work};
use crate::domain::{Caps, Millis};
use crate::store::codec;
use crate::store::durability::LoggedGroup as Record;
use crate::store::legacy::EventV1;
use crate::store::write::{IncomingEvent, TimeoutDefaults, WriteBatch};
use crate::store::StoreError;

/// The record of a group of `works`, applied at `now` with `caps` and
/// `timeouts`.
pub(super) fn encode(
    now: Millis,
    caps: Caps,
    timeouts: &TimeoutDefaults,
    works: Vec<&Work>,
) -> Vec<u8> {
    codec::encode(&LoggedGroupRef {
        version: LOGGED_GROUP_V3,
        now,
        caps,
        timeouts,
        works,
    })
}

/// Applies a logged group again, as the build that logged it applied it.
pub(super) fn replay(batch: &mut WriteBatch<'_>, record: &Record) -> Result<(), StoreError> {
    let group = decode_logged_group(&record.payload).map_err(|source| StoreError::Corrupt {
        what: format!("write log group {}", record.number),
        source,
    })?;
    tracing::debug!(
        number = record.number,
        layout = group.version,
        "replaying a logged group"
    );
    batch.set_caps(group.caps);
    batch.set_timeouts(std::sync::Arc::new(group.timeouts));
    // The feed's time marks are not replayed: they only pace its trimming,
    // and a mark missing makes a trim later, never wrong.
    for work in &group.works {
        apply_work(batch, work, group.now)?;
    }
    Ok(())
}

/// A group as the log keeps it: the requests, and the server clock, caps
/// and timeout defaults their transaction used, so that replaying it
/// decides the same.
#[derive(serde::Serialize)]
struct LoggedGroupRef<'a> {
    /// `LOGGED_GROUP_V3`.
    version: u8,
    now: Millis,
    caps: Caps,
    timeouts: &'a TimeoutDefaults,
    works: Vec<&'a Work>,
}

#[derive(serde::Deserialize)]
struct LoggedGroup {
    version: u8,
    now: Millis,
    caps: Caps,
    timeouts: TimeoutDefaults,
    works: Vec<Work>,
}

/// Work as logged before version 1.1: events in their old layout.
#[derive(serde::Deserialize)]
enum WorkV2 {
    Ingest(Vec<IncomingEventV2>),
    Delete(String),
}

#[derive(serde::Deserialize)]
struct IncomingEventV2 {
    event: EventV1,
    fingerprint: [u8; 16],
    received_at: Millis,
}

impl From<WorkV2> for Work {
    fn from(old: WorkV2) -> Work {
        match old {
            WorkV2::Ingest(events) => Work::Ingest(
                events
                    .into_iter()
                    .map(|old| IncomingEvent {
                        event: old.event.into(),
                        fingerprint: old.fingerprint,
                        received_at: old.received_at,
                    })
                    .collect(),
            ),
            WorkV2::Delete(id) => Work::Delete(id),
        }
    }
}

/// Logged groups with caps, before timeouts.
#[derive(serde::Deserialize)]
struct LoggedGroupV2 {
    version: u8,
    now: Millis,
    caps: Caps,
    works: Vec<WorkV2>,
}

/// Logged groups before caps: the clock and the requests.
#[derive(serde::Deserialize)]
struct LoggedGroupV1 {
    now: Millis,
    works: Vec<WorkV2>,
}

/// The first byte of a logged group's body since caps (2) and since
/// timeouts (3). A group logged before caps began with the varint of its
/// clock, whose first byte is 253 for any clock after 1970-01-25: none can
/// be mistaken for another.
const LOGGED_GROUP_V2: u8 = 2;
const LOGGED_GROUP_V3: u8 = 3;

/// A logged group, of this build's layout or one before (replayed as the
/// build that logged it applied it: without caps, without defaults).
fn decode_logged_group(payload: &[u8]) -> Result<LoggedGroup, codec::CodecError> {
    match payload.get(1) {
        Some(&LOGGED_GROUP_V3) => codec::decode(payload),
        Some(&LOGGED_GROUP_V2) => {
            let old: LoggedGroupV2 = codec::decode(payload)?;
            Ok(LoggedGroup {
                version: old.version,
                now: old.now,
                caps: old.caps,
                timeouts: TimeoutDefaults::new(),
                works: old.works.into_iter().map(Work::from).collect(),
            })
        }
        _ => {
            let old: LoggedGroupV1 = codec::decode(payload)?;
            Ok(LoggedGroup {
                version: 1,
                now: old.now,
                caps: Caps::UNLIMITED,
                timeouts: TimeoutDefaults::new(),
                works: old.works.into_iter().map(Work::from).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{full_event, import_timeouts};
    use super::*;
    use crate::domain::model::bare_event;
    use crate::domain::{EventType, Status};
    use crate::store::legacy::EventV1Ref;
    use crate::store::write::PurgeStep;

    #[test]
    fn groups_logged_by_earlier_builds_replay_as_those_builds_applied_them() {
        #[derive(serde::Serialize)]
        enum OldWork<'a> {
            Ingest(Vec<OldIncoming<'a>>),
            Delete(String),
        }
        #[derive(serde::Serialize)]
        struct OldIncoming<'a> {
            event: EventV1Ref<'a>,
            fingerprint: [u8; 16],
            received_at: Millis,
        }
        #[derive(serde::Serialize)]
        struct V1<'a> {
            now: Millis,
            works: Vec<OldWork<'a>>,
        }
        #[derive(serde::Serialize)]
        struct V2<'a> {
            version: u8,
            now: Millis,
            caps: Caps,
            works: Vec<OldWork<'a>>,
        }
        let old = codec::encode(&V1 {
            now: 1_764_000_000_000,
            works: vec![OldWork::Delete("run-1".into())],
        });
        // A varint of a clock after 1970-01-25 begins with 253.
        assert_eq!(old[1], 253);
        let decoded = decode_logged_group(&old).unwrap();
        assert_eq!(
            (decoded.version, decoded.now, decoded.caps),
            (1, 1_764_000_000_000, Caps::UNLIMITED)
        );
        assert!(decoded.timeouts.is_empty());
        assert!(matches!(&decoded.works[..], [Work::Delete(id)] if id == "run-1"));

        let caps = Caps {
            tasks_per_process: 7,
            ..Caps::default()
        };
        let mut event = bare_event(EventType::TaskStarted, Some("t"));
        event.event_id = Some("k".into());
        let v2 = codec::encode(&V2 {
            version: LOGGED_GROUP_V2,
            now: 5,
            caps,
            works: vec![OldWork::Ingest(vec![OldIncoming {
                event: EventV1Ref::from(&event),
                fingerprint: [3; 16],
                received_at: 4,
            }])],
        });
        let decoded = decode_logged_group(&v2).unwrap();
        assert_eq!((decoded.version, decoded.now, decoded.caps), (2, 5, caps));
        match &decoded.works[..] {
            [Work::Ingest(events)] => {
                assert_eq!(events[0].event, event);
                assert_eq!((events[0].fingerprint, events[0].received_at), ([3; 16], 4));
            }
            _ => panic!("the logged events did not come back"),
        }

        let mut timed = event;
        timed.heartbeat_timeout = Some(60);
        timed.deadline = Some(None);
        let works = [
            Work::Ingest(vec![IncomingEvent::new(timed.clone(), 4)]),
            Work::Tick,
        ];
        let timeouts = import_timeouts();
        let v3 = codec::encode(&LoggedGroupRef {
            version: LOGGED_GROUP_V3,
            now: 6,
            caps,
            timeouts: &timeouts,
            works: works.iter().collect(),
        });
        let decoded = decode_logged_group(&v3).unwrap();
        assert_eq!((decoded.version, decoded.now, decoded.caps), (3, 6, caps));
        assert_eq!(decoded.timeouts, timeouts);
        assert!(
            matches!(&decoded.works[..], [Work::Ingest(events), Work::Tick] if events[0].event == timed)
        );
    }

    /// The write log's record, byte for byte. A log written by this build
    /// must replay on the next: if this fails, the layout of a logged
    /// group changed (a variant of `Work` moved, a field of an event or of
    /// a purge step came or went). Give the new layout a new version and
    /// keep `decode_logged_group` decoding this one (as it does versions 1
    /// and 2); only then pin the new bytes.
    #[test]
    fn the_write_log_record_is_pinned_byte_for_byte() {
        let works = [
            Work::Ingest(vec![IncomingEvent {
                event: full_event(),
                fingerprint: [9; 16],
                received_at: 1_764_000_000_456,
            }]),
            Work::Delete("run-7".into()),
            Work::Tick,
            Work::Purge(PurgeStep {
                cuts: vec![(Status::Succeeded, 1_700_000_000_000)],
                process_type: Some("import".into()),
                after: Some((2, 1_690_000_000_000, 77)),
                limit: 8,
                trim_feed_before: Some(1_760_000_000_000),
            }),
        ];
        let timeouts = import_timeouts();
        let caps = Caps {
            tasks_per_process: 7,
            ..Caps::default()
        };
        let bytes = codec::encode(&LoggedGroupRef {
            version: LOGGED_GROUP_V3,
            now: 1_764_000_000_789,
            caps,
            timeouts: &timeouts,
            works: works.iter().collect(),
        });
        assert_eq!(hex::encode(&bytes), PINNED_LOGGED_GROUP_V3);
        // And the pinned bytes replay as what was logged.
        let replayed = decode_logged_group(&hex::decode(PINNED_LOGGED_GROUP_V3).unwrap()).unwrap();
        assert_eq!(
            (replayed.version, replayed.now, replayed.caps),
            (3, 1_764_000_000_789, caps)
        );
        assert_eq!(replayed.timeouts, timeouts);
        match &replayed.works[..] {
            [Work::Ingest(events), Work::Delete(id), Work::Tick, Work::Purge(step)] => {
                assert_eq!(events[0].event, full_event());
                assert_eq!(id, "run-7");
                assert_eq!(
                    (step.limit, step.after),
                    (8, Some((2, 1_690_000_000_000, 77)))
                );
            }
            _ => panic!("the pinned group did not replay"),
        }
    }

    const PINNED_LOGGED_GROUP_V3: &str = "0103fd2ad62f6d35030000fb0001fc0000010040fb004007140106696d706f7274011e01fbd00704000101056b65792d310b0672756e2d343201046c6f616401fdf6d02f6d3503000001094c6f616420726f77730106696d706f727401076f726465722d3701010000000000002940010501280104726f7773010754696d656f757404736c6f77010674656e616e740461636d6501fb2c010101fd801f426d3503000009090909090909090909090909090909fd90d32f6d35030000010572756e2d3702030102fd00d0ca9f170300000106696d706f72740102fd0008b3f7120300004d0801fd0080599033030000";
}
