//! Every table of the store, how its keys are laid out, and the records kept
//! beside the domain's own.
//!
//! Each process gets an ordinal in creation order. The records of one
//! process live under keys that start with that ordinal, so a commit of
//! events for recently active processes dirties few pages: the process, its
//! tasks and its task-id map in `records`, where reading a process with its
//! tasks is one range scan; its idempotency keys and its history in
//! `events`, under the same key layout. Kept apart, the pages a GET reads
//! (`records` and `process_ids`) are about a sixth of the store, and stay
//! in memory where the whole store would not.

use super::layers::Lookup;
use crate::codec;
use crate::domain::{Event, Millis, Source, Status, StoredResult};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Bump when the layout or a record changes; `open` refuses other versions.
/// Version 6 is release 0.2.0's, the first released: the stores of the
/// unreleased builds before it (versions 1 to 5) are not read.
/// `tests/fixtures/` holds a store of each released version, which this
/// build must open.
pub const SCHEMA_VERSION: u32 = 6;

/// `schema_version`, `counters` and `logged_group`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// process id -> ordinal.
pub const PROCESS_IDS: TableDefinition<&str, u64> = TableDefinition::new("process_ids");
/// (ordinal, record kind, sub-key) -> record, for the kinds kept with the
/// process; see `record_key` and `Kind::is_event`.
pub const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// The same keys for the idempotency and history kinds.
pub const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// (created_at, ordinal): newest-first listing and the created_after/before filters.
pub const BY_CREATED: TableDefinition<(i64, u64), ()> = TableDefinition::new("by_created");
/// (status code, ordinal).
pub const BY_STATUS: TableDefinition<(u8, u64), ()> = TableDefinition::new("by_status");
/// (process_type, status code, ordinal): type filters, alone or with
/// statuses, walk exactly the processes they return.
pub const BY_TYPE: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("by_type_status");
/// (correlation_id, ordinal).
pub const BY_CORRELATION: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_correlation");

/// seq -> `FeedEntry`: the change feed, every stored event (and every
/// removal) in seq order, written by the commit that writes the event.
pub const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// (due time, ordinal, `Due` code, task ordinal): what the writer must look
/// at when, oldest first. An entry may be out of date (the process heard
/// from since, or finished); the writer checks the record when it fires.
pub const DUE: TableDefinition<(i64, u64, u8, u32), ()> = TableDefinition::new("due");
/// (ordinal): the processes stalled now.
pub const BY_STALLED: TableDefinition<u64, ()> = TableDefinition::new("by_stalled");
/// (terminal status code, finished_at, ordinal): finished processes,
/// oldest end first, for retention and purges. A status and `finished_at`
/// never change once terminal, so an entry is written once.
pub const BY_FINISHED: TableDefinition<(u8, i64, u64), ()> = TableDefinition::new("by_finished");
/// seq -> time: feed entries from this seq on were written at or after
/// this time. One mark every little while, so that the feed can be trimmed
/// by age (`feed.retention`) without a time in every entry.
pub const FEED_MARKS: TableDefinition<u64, i64> = TableDefinition::new("feed_marks");

/// (prefix, ordinal) -> the rest of the correlation id: each process with a
/// correlation id has an entry for every prefix of 1, 2, 4, 8, 16 and 32
/// bytes (up to the end of the character they end in) the id is long
/// enough for. A
/// `correlation_id_prefix` query walks the longest of these its prefix
/// covers, newest first, and checks the rest against the entry's value,
/// without reading a record it does not return (`correlation_prefixes`).
pub const BY_CORRELATION_PREFIX: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("by_correlation_prefix");
/// (attribute key, value, ordinal): for the keys named in
/// `index.attributes` only; `META_INDEXED_ATTRIBUTES` lists them.
pub const BY_ATTRIBUTE: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("by_attribute");
/// (process type, resolution, bucket start) -> `store::durations::Summary`:
/// how long the processes of a type that ended in that bucket took. An
/// untyped process counts under the empty type.
pub const DURATIONS: TableDefinition<(&str, u8, i64), &[u8]> = TableDefinition::new("durations");

pub const META_SCHEMA_VERSION: &str = "schema_version";
/// The store's id, a UUID made with the store (`store_id`).
pub const META_STORE_ID: &str = "store_id";
/// The attribute keys `BY_ATTRIBUTE` holds entries for, sorted.
pub const META_INDEXED_ATTRIBUTES: &str = "indexed_attributes";
/// The last seq removed from the feed without a trace (an offline purge):
/// a consumer resuming before it may have missed something.
pub const META_FEED_FLOOR: &str = "feed_floor";
pub const META_COUNTERS: &str = "counters";
/// The number of the last write group the store holds, for replaying the
/// write log (`store::durability`).
pub const META_LOGGED_GROUP: &str = "logged_group";

/// Record kinds, the byte after the ordinal in a `RECORDS` key. Their order
/// puts a process right before its tasks, so one scan reads both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// sub-key empty; value `domain::Process`, without its attributes
    /// since they have a record of their own (sub-key
    /// `PROCESS_ATTRIBUTES`).
    Process = 0,
    /// sub-key: task ordinal, u32 big-endian; value `domain::Task`.
    Task = 1,
    /// sub-key: task id; value: task ordinal, u32 big-endian.
    TaskId = 2,
    /// sub-key: event id; value `DedupRecord`.
    Dedup = 3,
    /// sub-key: seq, u64 big-endian; value `HistoryRecord`.
    History = 4,
}

impl Kind {
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::Process,
            1 => Kind::Task,
            2 => Kind::TaskId,
            3 => Kind::Dedup,
            4 => Kind::History,
            _ => return None,
        })
    }

    /// Whether records of this kind live in `EVENTS` rather than `RECORDS`.
    pub fn is_event(self) -> bool {
        matches!(self, Kind::Dedup | Kind::History)
    }
}

/// A `RECORDS` key. Big-endian numbers make byte order the numeric order.
/// The sub-key, under `Kind::Process`, of a process's attributes (value
/// `BTreeMap<String, String>`; absent when it has none). Apart from the
/// process record, so that an event that leaves them alone does not
/// rewrite them: what an event costs does not grow with what its process
/// keeps. The key sorts right after the process record's, so one range
/// reads both.
pub const PROCESS_ATTRIBUTES: &[u8] = b"a";

pub fn record_key(ordinal: u64, kind: Kind, sub_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + sub_key.len());
    key.extend_from_slice(&ordinal.to_be_bytes());
    key.push(kind as u8);
    key.extend_from_slice(sub_key);
    key
}

/// The first key after every record of `kind` for `ordinal`.
pub fn record_kind_end(ordinal: u64, kind: Kind) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key.push(kind as u8 + 1);
    key
}

/// Every key of a process: from its first record up to the next ordinal.
pub fn process_range(ordinal: u64) -> (Vec<u8>, Vec<u8>) {
    (
        ordinal.to_be_bytes().to_vec(),
        ordinal.saturating_add(1).to_be_bytes().to_vec(),
    )
}

/// The sequence number of a history key.
pub fn history_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

pub fn task_ordinal_bytes(ordinal: u32) -> [u8; 4] {
    ordinal.to_be_bytes()
}

pub fn task_ordinal_from(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// One event in a process's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub seq: u64,
    pub result: StoredResult,
    pub received_at: Millis,
    pub event: Event,
    pub source: Source,
}

/// A `HistoryRecord` borrowing its event, for writing without a copy. The
/// same fields in the same order encode to the same bytes.
#[derive(Serialize)]
pub struct HistoryRecordRef<'a> {
    pub seq: u64,
    pub result: StoredResult,
    pub received_at: Millis,
    pub event: &'a Event,
    pub source: Source,
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedEntry {
    /// A history record, under (ordinal, `Kind::History`, seq) in `EVENTS`,
    /// with what its process and task were once it was applied.
    Event {
        ordinal: u64,
        kind: crate::domain::EventType,
        process_status: Status,
        task_status: Option<Status>,
    },
    /// A process removed with its tasks and history.
    Deleted {
        process_id: String,
        process_type: Option<String>,
        at: Millis,
    },
}

/// What a `DUE` entry asks the writer to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Due {
    /// The process's deadline.
    Deadline = 0,
    /// The process's heartbeat timeout.
    Heartbeat = 1,
    /// A task's heartbeat timeout (the key's task ordinal).
    TaskHeartbeat = 2,
}

impl Due {
    pub fn from_code(code: u8) -> Option<Due> {
        Some(match code {
            0 => Due::Deadline,
            1 => Due::Heartbeat,
            2 => Due::TaskHeartbeat,
            _ => return None,
        })
    }
}

impl HistoryRecord {
    pub fn occurred_at(&self) -> Millis {
        self.event.occurred_at.unwrap_or(self.received_at)
    }
}

/// What an idempotency key was first answered with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub seq: u64,
    pub result: StoredResult,
    /// SHA-256 (first 16 bytes) of the event as first sent.
    pub fingerprint: [u8; 16],
}

/// Store-wide numbers kept by the writer and written once per commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub last_seq: u64,
    pub next_ordinal: u64,
    /// Creation times never go backwards in ordinal order, so that the
    /// `BY_CREATED` order and the ordinal order are one and the same.
    pub last_created_at: Millis,
    pub events_total: u64,
    pub processes_by_status: [u64; 7],
    /// Processes stalled now: the entries of `BY_STALLED`.
    pub stalled: u64,
}

impl Counters {
    pub fn processes_total(&self) -> u64 {
        self.processes_by_status.iter().sum()
    }

    pub fn count_status(&mut self, status: Status, change: i64) {
        let slot = &mut self.processes_by_status[usize::from(status.code())];
        *slot = slot.saturating_add_signed(change);
    }
}

/// The number of the last write group the store holds (`store::durability`),
/// from its `META` table, read or written; 0 before the first.
pub fn logged_group(
    meta: &impl Lookup<&'static str, &'static [u8]>,
) -> Result<u64, super::StoreError> {
    meta_number(meta, META_LOGGED_GROUP, "logged group number")
}

/// A number kept in `META` under `key`, 0 when it was never written.
fn meta_number(
    meta: &impl Lookup<&'static str, &'static [u8]>,
    key: &str,
    what: &str,
) -> Result<u64, super::StoreError> {
    match meta.lookup(key)? {
        Some(bytes) => decode_or_corrupt(what, &bytes),
        None => Ok(0),
    }
}

/// The store's id (`META_STORE_ID`).
pub fn store_id(
    meta: &impl Lookup<&'static str, &'static [u8]>,
) -> Result<String, super::StoreError> {
    match meta.lookup(META_STORE_ID)? {
        Some(bytes) => decode_or_corrupt("store id", &bytes),
        None => Err(super::StoreError::Corrupt {
            what: "store id".into(),
            source: codec::CodecError::Empty,
        }),
    }
}

/// Creates every table that is missing, so that readers never meet one.
pub fn create_tables(txn: &redb::WriteTransaction) -> Result<(), super::StoreError> {
    txn.open_table(META)?;
    txn.open_table(PROCESS_IDS)?;
    txn.open_table(RECORDS)?;
    txn.open_table(EVENTS)?;
    txn.open_table(BY_CREATED)?;
    txn.open_table(BY_STATUS)?;
    txn.open_table(BY_TYPE)?;
    txn.open_table(BY_CORRELATION)?;
    txn.open_table(FEED)?;
    txn.open_table(DUE)?;
    txn.open_table(BY_STALLED)?;
    txn.open_table(BY_FINISHED)?;
    txn.open_table(FEED_MARKS)?;
    txn.open_table(BY_CORRELATION_PREFIX)?;
    txn.open_table(BY_ATTRIBUTE)?;
    txn.open_table(DURATIONS)?;
    Ok(())
}

/// A value of the `META` table or `RECORDS` table that could not be read.
pub fn decode_or_corrupt<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, super::StoreError> {
    codec::decode(bytes).map_err(|source| super::StoreError::Corrupt {
        what: what.to_owned(),
        source,
    })
}

/// The process record of `ordinal`, if the store holds one.
pub fn process_record(
    records: &impl Lookup<&'static [u8], &'static [u8]>,
    ordinal: u64,
) -> Result<Option<crate::domain::Process>, super::StoreError> {
    let key = record_key(ordinal, Kind::Process, &[]);
    match records.lookup(key.as_slice())? {
        Some(bytes) => decode_or_corrupt("process record", &bytes).map(Some),
        None => Ok(None),
    }
}

/// The feed floor (`META_FEED_FLOOR`), 0 when nothing was ever dropped.
pub fn feed_floor(
    meta: &impl Lookup<&'static str, &'static [u8]>,
) -> Result<u64, super::StoreError> {
    meta_number(meta, META_FEED_FLOOR, "feed floor")
}

/// The attribute keys the attribute index holds (`META_INDEXED_ATTRIBUTES`),
/// none when it was never written.
pub fn indexed_attributes(
    meta: &impl Lookup<&'static str, &'static [u8]>,
) -> Result<Vec<String>, super::StoreError> {
    match meta.lookup(META_INDEXED_ATTRIBUTES)? {
        Some(bytes) => decode_or_corrupt("indexed attribute keys", &bytes),
        None => Ok(Vec::new()),
    }
}

/// The prefix lengths, in bytes, that `BY_CORRELATION_PREFIX` holds.
const PREFIX_LENGTHS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// `text` cut after `length` bytes, or after the character those end in.
fn cut(text: &str, length: usize) -> &str {
    let mut end = length.min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    &text[..end]
}

/// The `BY_CORRELATION_PREFIX` entries of a correlation id: each prefix
/// with the rest of the id. The same prefix may come twice (a cut at a
/// character boundary); the second is the same entry.
pub fn correlation_prefixes(correlation_id: &str) -> impl Iterator<Item = (&str, &str)> {
    PREFIX_LENGTHS
        .into_iter()
        .take_while(move |length| *length <= correlation_id.len())
        .map(move |length| {
            let prefix = cut(correlation_id, length);
            (prefix, &correlation_id[prefix.len()..])
        })
        .filter(|(prefix, _)| !prefix.is_empty())
}

/// The `BY_CORRELATION_PREFIX` prefix that a query for ids starting with
/// `wanted` (not empty) walks: the longest indexed one it covers. Every id
/// starting with `wanted` has an entry under it.
pub fn prefix_to_walk(wanted: &str) -> &str {
    let length = PREFIX_LENGTHS
        .into_iter()
        .rev()
        .find(|length| *length <= wanted.len())
        .unwrap_or(1);
    cut(wanted, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_with_a_prefix_has_an_entry_where_the_query_walks() {
        let ids = [
            "a",
            "ab",
            "order-1234",
            "order-123456789",
            "€",
            "x€y",
            "tenant-42/order-7",
        ];
        for id in ids {
            let entries: Vec<_> = correlation_prefixes(id).collect();
            for (prefix, rest) in &entries {
                assert_eq!(format!("{prefix}{rest}"), id);
            }
            for end in (1..=id.len()).filter(|end| id.is_char_boundary(*end)) {
                let wanted = &id[..end];
                let walked = prefix_to_walk(wanted);
                assert!(wanted.starts_with(walked), "{wanted} walks {walked}");
                assert!(
                    entries.iter().any(|(prefix, _)| *prefix == walked),
                    "{id} has no entry under {walked}, which {wanted} walks"
                );
            }
        }
        assert_eq!(prefix_to_walk("order-1234"), "order-12");
        assert_eq!(correlation_prefixes("€").count(), 2);
    }
}
