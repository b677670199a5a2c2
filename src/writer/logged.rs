//! The write log's record of a group (`store::durability`): the requests,
//! and the server clock, caps and timeout defaults their apply step used,
//! so that replaying it decides the same. Its layout is versioned, and a
//! test pins this version's bytes: a log written by one release must
//! replay on the next.

use super::{apply_work, Work};
use crate::codec;
use crate::domain::{Caps, Millis, TimeoutDefaults};
use crate::store::durability::LoggedGroup as Record;
use crate::store::write::WriteBatch;
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
        version: LOGGED_GROUP_V1,
        now,
        caps,
        timeouts,
        works,
    })
}

/// Applies a logged group again, as it was applied when it was logged.
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
/// and timeout defaults their apply step used, so that replaying it
/// decides the same.
#[derive(serde::Serialize)]
struct LoggedGroupRef<'a> {
    /// `LOGGED_GROUP_V1`.
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

/// The layout of release 0.2.0, the first byte of a logged group's body.
/// A later layout gets the next number, and `decode_logged_group` keeps
/// decoding this one.
const LOGGED_GROUP_V1: u8 = 1;

/// A logged group of this build's layout.
fn decode_logged_group(payload: &[u8]) -> Result<LoggedGroup, codec::CodecError> {
    match payload.get(1) {
        Some(&LOGGED_GROUP_V1) => codec::decode(payload),
        Some(&other) => Err(codec::CodecError::UnknownFormat(other)),
        None => Err(codec::CodecError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{full_event, import_timeouts};
    use super::*;
    use crate::domain::{IncomingEvent, PurgeStep, Status};

    /// The write log's record, byte for byte. A log written by one release
    /// must replay on the next: if this fails, the layout of a logged
    /// group changed (a variant of `Work` moved, a field of an event or of
    /// a purge step came or went). Give the new layout a new version and
    /// keep `decode_logged_group` decoding this one; only then pin the new
    /// bytes.
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
            version: LOGGED_GROUP_V1,
            now: 1_764_000_000_789,
            caps,
            timeouts: &timeouts,
            works: works.iter().collect(),
        });
        assert_eq!(hex::encode(&bytes), PINNED_LOGGED_GROUP_V1);
        // And the pinned bytes replay as what was logged.
        let replayed = decode_logged_group(&hex::decode(PINNED_LOGGED_GROUP_V1).unwrap()).unwrap();
        assert_eq!(
            (replayed.version, replayed.now, replayed.caps),
            (1, 1_764_000_000_789, caps)
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

    const PINNED_LOGGED_GROUP_V1: &str = "0101fd2ad62f6d35030000fb0001fc0000010040fb004007140106696d706f7274011e01fbd00704000101056b65792d310b0672756e2d343201046c6f616401fdf6d02f6d3503000001094c6f616420726f77730106696d706f727401076f726465722d3701010000000000002940010501280104726f7773010754696d656f757404736c6f77010674656e616e740461636d6501fb2c010101fd801f426d3503000009090909090909090909090909090909fd90d32f6d35030000010572756e2d3702030102fd00d0ca9f170300000106696d706f72740102fd0008b3f7120300004d0801fd0080599033030000";
}
