//! Applying events and deletions inside one redb write transaction.
//!
//! Only the writer thread uses this. A `WriteBatch` sees the state as it
//! stands inside its transaction, so several events for the same process in
//! one group commit build on each other exactly as if committed one by one.
//!
//! A batch of webhooks often carries several events of one process (a task
//! starts and finishes, the run progresses). The process and task records a
//! request changes are therefore kept in memory and written once, with
//! their index entries, by `write_back` after the request (not after the
//! whole group, whose thousands of events would have pushed the pages read
//! out of the CPU's cache by then); history and idempotency records, and
//! the id maps, are written as each event is applied.

use super::schema::{
    self, decode_evolved_or_corrupt, decode_or_corrupt, record_key, Counters, DedupRecord, Due,
    FeedEntry, HistoryRecordRef, Kind, Source, StoredResult, BY_ATTRIBUTE, BY_CORRELATION,
    BY_CORRELATION_PREFIX, BY_CREATED, BY_FINISHED, BY_STALLED, BY_STATUS, BY_TYPE, DUE, DURATIONS,
    EVENTS, FEED, FEED_MARKS, META, META_COUNTERS, META_FEED_FLOOR, PROCESS_IDS, RECORDS,
};
use super::{codec, StoreError};
use crate::domain::{
    self, caps, Caps, ErrorInfo, Event, EventType, LimitExceeded, Millis, Outcome, Process, Scope,
    Status, Task,
};
use redb::{ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A process type's defaults (`[timeouts]` in the config), given to a
/// process when it first gets that type, for what its events did not set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeTimeouts {
    pub heartbeat_timeout: Option<u32>,
    /// From the process's creation, in milliseconds.
    pub deadline_after_ms: Option<i64>,
}

/// Defaults by process type. Part of every logged write group, as caps are.
pub type TimeoutDefaults = BTreeMap<String, TypeTimeouts>;

/// How many due entries one group looks at, at most: a burst of them (a
/// restart after a long stop) is worked off over several groups, with
/// ingest in between.
pub const MAX_DUE_PER_GROUP: usize = 1000;

/// One validated event on its way to the store.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IncomingEvent {
    pub event: Event,
    /// Identifies the event's content for the idempotency check.
    pub fingerprint: [u8; 16],
    /// Server clock when the request arrived.
    pub received_at: Millis,
}

impl IncomingEvent {
    /// The event with its fingerprint, received at `received_at`.
    pub fn new(event: Event, received_at: Millis) -> IncomingEvent {
        use sha2::{Digest, Sha256};
        // An event without the fields of version 1.1 hashes as before
        // them, so that a resend across an upgrade is still a duplicate.
        let bytes = if event.has_timing() {
            codec::encode_evolved(&event)
        } else {
            codec::encode(&super::legacy::EventV1Ref::from(&event))
        };
        let digest = Sha256::digest(bytes);
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        IncomingEvent {
            event,
            fingerprint,
            received_at,
        }
    }
}

/// What the store did with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Stored now, as accepted or stale.
    Stored {
        result: StoredResult,
        seq: u64,
        process_status: Status,
        task_status: Option<Status>,
        /// Set when this event made the process terminal.
        finished: Option<FinishedProcess>,
    },
    /// Stored earlier under the same idempotency key with the same content.
    Duplicate {
        original: StoredResult,
        seq: u64,
        process_status: Status,
    },
    /// A different terminal status than the current one; not stored.
    Conflict { current_status: Status },
    /// The idempotency key was used before for different content; not stored.
    KeyReused { seq: u64 },
    /// It would take its process or task past a cap; not stored.
    OverLimit(LimitExceeded),
}

/// A process that an event has just made terminal, for the duration metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedProcess {
    pub process_type: Option<String>,
    /// From its start to its terminal event; `None` if it never ran.
    pub duration_ms: Option<i64>,
}

/// The fields of a process that its index entries are made of, as the
/// tables hold them: enough to move its entries, without keeping a second
/// copy of the whole record.
struct IndexedFields {
    status: Status,
    process_type: Option<String>,
    correlation_id: Option<String>,
    stalled: bool,
}

impl IndexedFields {
    fn of(process: &Process) -> Self {
        IndexedFields {
            status: process.status,
            process_type: process.process_type.clone(),
            correlation_id: process.correlation_id.clone(),
            stalled: process.stalled_since.is_some(),
        }
    }
}

/// A process read since the last write-back, as it stands now.
struct CachedProcess {
    process: Process,
    /// What its index entries in the tables were made from; `None` for a
    /// process created since the last write-back, which has none yet.
    indexed: Option<IndexedFields>,
    /// Its values of the indexed attribute keys as the attribute index
    /// holds them, once its attributes are loaded.
    indexed_attributes: Vec<(String, String)>,
    /// Changed since it was read: `write_back` writes it.
    changed: bool,
    /// Whether `process.attributes` holds its attributes yet.
    attributes: Attributes,
}

/// A cached process's attributes: read only for an event that brings some
/// (the others leave them alone), written only when one changed them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attributes {
    /// Still in their record; `process.attributes` is empty.
    InStore,
    /// In `process.attributes`; `changed` when they must be written.
    Loaded { changed: bool },
}

/// The tables of one write transaction, the process and task records
/// changed but not yet written back, and the counters as they will be once
/// it commits.
pub struct WriteBatch<'txn> {
    process_ids: Table<'txn, &'static str, u64>,
    records: Table<'txn, &'static [u8], &'static [u8]>,
    events: Table<'txn, &'static [u8], &'static [u8]>,
    by_created: Table<'txn, (i64, u64), ()>,
    by_status: Table<'txn, (u8, u64), ()>,
    by_type: Table<'txn, (&'static str, u8, u64), ()>,
    by_correlation: Table<'txn, (&'static str, u64), ()>,
    by_correlation_prefix: Table<'txn, (&'static str, u64), &'static str>,
    by_attribute: Table<'txn, (&'static str, &'static str, u64), ()>,
    /// The keys `by_attribute` holds, as the store lists them.
    attribute_keys: Vec<String>,
    durations: Table<'txn, (&'static str, u8, i64), &'static [u8]>,
    /// Duration summaries changed in this transaction.
    pending_durations: super::durations::Pending,
    by_stalled: Table<'txn, u64, ()>,
    by_finished: Table<'txn, (u8, i64, u64), ()>,
    feed_marks: Table<'txn, u64, i64>,
    feed: Table<'txn, u64, &'static [u8]>,
    due: Table<'txn, (i64, u64, u8, u32), ()>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    /// By ordinal.
    processes: HashMap<u64, CachedProcess>,
    /// Changed tasks, by process ordinal and task ordinal.
    tasks: HashMap<(u64, u32), Task>,
    pub counters: Counters,
    /// What one process may keep (`domain::caps`).
    caps: Caps,
    timeouts: std::sync::Arc<TimeoutDefaults>,
    /// The processes that ended (turned terminal, or were removed) in this
    /// batch, for whoever waits on them.
    pub ended: Vec<String>,
    /// The events the daemon made in this batch, with what became of them.
    pub made: Vec<(EventType, EventOutcome)>,
}

/// Reads the counters as last committed.
pub fn load_counters(txn: &WriteTransaction) -> Result<Counters, StoreError> {
    let meta = txn.open_table(META)?;
    let bytes = meta.get(META_COUNTERS)?;
    match bytes {
        Some(bytes) => decode_or_corrupt("counters", bytes.value()),
        None => Ok(Counters::default()),
    }
}

impl<'txn> WriteBatch<'txn> {
    pub fn open(txn: &'txn WriteTransaction, counters: Counters) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        Ok(WriteBatch {
            attribute_keys: schema::indexed_attributes(&meta)?,
            meta,
            by_correlation_prefix: txn.open_table(BY_CORRELATION_PREFIX)?,
            by_attribute: txn.open_table(BY_ATTRIBUTE)?,
            durations: txn.open_table(DURATIONS)?,
            pending_durations: Default::default(),
            process_ids: txn.open_table(PROCESS_IDS)?,
            records: txn.open_table(RECORDS)?,
            events: txn.open_table(EVENTS)?,
            by_created: txn.open_table(BY_CREATED)?,
            by_status: txn.open_table(BY_STATUS)?,
            by_type: txn.open_table(BY_TYPE)?,
            by_correlation: txn.open_table(BY_CORRELATION)?,
            by_stalled: txn.open_table(BY_STALLED)?,
            by_finished: txn.open_table(BY_FINISHED)?,
            feed_marks: txn.open_table(FEED_MARKS)?,
            feed: txn.open_table(FEED)?,
            due: txn.open_table(DUE)?,
            processes: HashMap::new(),
            tasks: HashMap::new(),
            counters,
            caps: Caps::UNLIMITED,
            timeouts: Default::default(),
            ended: Vec::new(),
            made: Vec::new(),
        })
    }

    /// Refuses the events applied from now on that would take a process
    /// past `caps`; until it is called, nothing is capped.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// The per-type defaults given to processes from now on.
    pub fn set_timeouts(&mut self, timeouts: std::sync::Arc<TimeoutDefaults>) {
        self.timeouts = timeouts;
    }

    /// Writes the changed processes and tasks, their index entries and the
    /// counters; call once, before committing.
    pub fn finish(mut self) -> Result<Counters, StoreError> {
        self.write_back()?;
        self.pending_durations.write(&mut self.durations)?;
        self.meta
            .insert(META_COUNTERS, codec::encode(&self.counters).as_slice())?;
        Ok(self.counters)
    }

    /// Writes the processes and tasks changed since the last call, with
    /// their index entries, and forgets them. The writer calls it after
    /// each request, while the pages it read are still in the CPU's cache;
    /// `finish` calls it too.
    pub fn write_back(&mut self) -> Result<(), StoreError> {
        // In key order: neighbours in the tree are written one after another.
        let mut processes = Vec::with_capacity(self.processes.len());
        processes.extend(self.processes.drain().filter(|(_, cached)| cached.changed));
        processes.sort_unstable_by_key(|&(ordinal, _)| ordinal);
        for (ordinal, mut cached) in processes {
            let attributes_changed = cached.attributes == (Attributes::Loaded { changed: true });
            if attributes_changed {
                self.reindex_attributes(ordinal, &mut cached)?;
            }
            // The attributes go to their own record, and only when changed.
            let attributes = std::mem::take(&mut cached.process.attributes);
            self.records.insert(
                record_key(ordinal, Kind::Process, &[]).as_slice(),
                codec::encode_evolved(&cached.process).as_slice(),
            )?;
            if attributes_changed {
                let key = record_key(ordinal, Kind::Process, schema::PROCESS_ATTRIBUTES);
                if attributes.is_empty() {
                    self.records.remove(key.as_slice())?;
                } else {
                    self.records
                        .insert(key.as_slice(), codec::encode(&attributes).as_slice())?;
                }
            }
            match &cached.indexed {
                Some(before) => self.reindex(ordinal, before, &cached.process)?,
                None => self.index_new(ordinal, &cached.process)?,
            }
        }
        let mut tasks: Vec<_> = self.tasks.drain().collect();
        tasks.sort_unstable_by_key(|&(key, _)| key);
        for ((ordinal, task_ordinal), task) in tasks {
            self.records.insert(
                record_key(
                    ordinal,
                    Kind::Task,
                    &schema::task_ordinal_bytes(task_ordinal),
                )
                .as_slice(),
                codec::encode_evolved(&task).as_slice(),
            )?;
        }
        Ok(())
    }

    fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        kind: Kind,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let table = if kind.is_event() {
            &self.events
        } else {
            &self.records
        };
        match table.get(key)? {
            Some(bytes) => decode_or_corrupt(what, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_record(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if kind.is_event() {
            self.events.insert(key, value)?;
        } else {
            self.records.insert(key, value)?;
        }
        Ok(())
    }

    fn get_evolved<T: codec::Evolved>(
        &self,
        what: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.records.get(key)? {
            Some(bytes) => decode_evolved_or_corrupt(what, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Applies one event of a sender with the domain rules; `now` is the
    /// server clock.
    pub fn apply(
        &mut self,
        incoming: &IncomingEvent,
        now: Millis,
    ) -> Result<EventOutcome, StoreError> {
        self.apply_from(incoming, now, Source::Sender)
    }

    fn apply_from(
        &mut self,
        incoming: &IncomingEvent,
        now: Millis,
        source: Source,
    ) -> Result<EventOutcome, StoreError> {
        let event = &incoming.event;
        let known_ordinal = self
            .process_ids
            .get(event.process_id.as_str())?
            .map(|o| o.value());

        if let (Some(ordinal), Some(event_id)) = (known_ordinal, &event.event_id) {
            let key = record_key(ordinal, Kind::Dedup, event_id.as_bytes());
            if let Some(seen) =
                self.get_record::<DedupRecord>("idempotency record", Kind::Dedup, &key)?
            {
                if seen.fingerprint != incoming.fingerprint {
                    return Ok(EventOutcome::KeyReused { seq: seen.seq });
                }
                let cached = self.take_process(ordinal)?;
                let process_status = cached.process.status;
                self.processes.insert(ordinal, cached);
                return Ok(EventOutcome::Duplicate {
                    original: seen.result,
                    seq: seen.seq,
                    process_status,
                });
            }
        }

        let (ordinal, mut cached) = match known_ordinal {
            Some(ordinal) => {
                let cached = self.take_process(ordinal)?;
                // A deadline that passed, not yet acted on (the writer
                // looks at due entries between groups): it times the
                // process out before this event is weighed, as it would
                // have a moment earlier.
                let overdue = cached.process.deadline.filter(|deadline| *deadline <= now);
                match overdue {
                    Some(deadline)
                        if source == Source::Sender && !cached.process.status.is_terminal() =>
                    {
                        let process_id = cached.process.id.clone();
                        self.processes.insert(ordinal, cached);
                        self.time_out(process_id, deadline, now)?;
                        (ordinal, self.take_process(ordinal)?)
                    }
                    _ => (ordinal, cached),
                }
            }
            None => {
                let created_at = now.max(self.counters.last_created_at);
                let process = Process::new(event.process_id.clone(), created_at);
                let cached = CachedProcess {
                    process,
                    indexed: None,
                    indexed_attributes: Vec::new(),
                    changed: false,
                    attributes: Attributes::Loaded { changed: false },
                };
                (self.counters.next_ordinal, cached)
            }
        };
        // Only a process event with attributes reads or changes them.
        let brings_attributes =
            event.kind.scope() == Scope::Process && !event.attributes.is_empty();
        if brings_attributes {
            self.load_attributes(ordinal, &mut cached)?;
        }
        let process = &mut cached.process;
        let was_terminal = process.status.is_terminal();
        let had_type = process.process_type.is_some();
        let deadline_before = process.deadline;
        let at = event.occurred_at.unwrap_or(incoming.received_at);

        let over_limit = |batch: &mut Self, cached: CachedProcess, limit| {
            // Nothing of the event is applied; the records stay as they were.
            if known_ordinal.is_some() {
                batch.processes.insert(ordinal, cached);
            }
            Ok(EventOutcome::OverLimit(limit))
        };
        let (outcome, task_status) = match event.kind.scope() {
            Scope::Process => {
                if let Err(limit) = caps::check(process, None, false, event, at, &self.caps) {
                    return over_limit(self, cached, limit);
                }
                (domain::apply(process, None, false, event, at), None)
            }
            Scope::Task => {
                let task_id = event.task_id.as_deref().unwrap_or_default();
                let (task_ordinal, mut task, is_new) =
                    self.load_or_new_task(ordinal, process, task_id, now)?;
                if let Err(limit) = caps::check(process, Some(&task), is_new, event, at, &self.caps)
                {
                    return over_limit(self, cached, limit);
                }
                let outcome = domain::apply(process, Some(&mut task), is_new, event, at);
                let stored = !matches!(outcome, Outcome::Conflict { .. });
                let task_status = (outcome == Outcome::Accepted || !is_new).then_some(task.status);
                if outcome == Outcome::Accepted && is_new {
                    process.task_total += 1;
                    let map_key = record_key(ordinal, Kind::TaskId, task_id.as_bytes());
                    self.put_record(
                        Kind::TaskId,
                        &map_key,
                        &schema::task_ordinal_bytes(task_ordinal),
                    )?;
                }
                if stored && (outcome == Outcome::Accepted || !is_new) {
                    if source == Source::Sender {
                        // Any event for the task is a sign of its life.
                        task.heard_at = now;
                        task.stalled_since = None;
                        if !task.status.is_terminal() && !process.status.is_terminal() {
                            schedule_heartbeat(
                                &mut self.due,
                                (ordinal, Due::TaskHeartbeat, task_ordinal),
                                task.heartbeat_timeout,
                                task.heard_at,
                                &mut task.heartbeat_check,
                            )?;
                        }
                    }
                    self.tasks.insert((ordinal, task_ordinal), task);
                }
                (outcome, task_status)
            }
        };
        let result = match outcome {
            Outcome::Conflict { current_status } => {
                // The rules left the records as they were.
                if known_ordinal.is_some() {
                    self.processes.insert(ordinal, cached);
                }
                return Ok(EventOutcome::Conflict { current_status });
            }
            Outcome::Accepted => StoredResult::Accepted,
            Outcome::Stale => StoredResult::Stale,
        };
        // A type's defaults come with the first event that gives the type,
        // accepted or (filling in a type the process lacked) stale.
        if !had_type {
            if let Some(defaults) = process
                .process_type
                .as_ref()
                .and_then(|kind| self.timeouts.get(kind))
            {
                if process.heartbeat_timeout.is_none() {
                    process.heartbeat_timeout = defaults.heartbeat_timeout;
                }
                if process.deadline.is_none() && event.deadline.is_none() {
                    process.deadline = defaults
                        .deadline_after_ms
                        .map(|after| process.created_at.saturating_add(after));
                }
            }
        }
        if source == Source::Sender {
            process.heard_at = now;
            process.stalled_since = None;
        }
        if process.status.is_terminal() {
            // Only a running process can be stalled: the daemon's own
            // time-out ends a stall as a sender's end does.
            process.stalled_since = None;
        }
        if !process.status.is_terminal() {
            if let Some(deadline) = process
                .deadline
                .filter(|_| process.deadline != deadline_before)
            {
                self.due
                    .insert((deadline, ordinal, Due::Deadline as u8, 0), ())?;
            }
            schedule_heartbeat(
                &mut self.due,
                (ordinal, Due::Heartbeat, 0),
                process.heartbeat_timeout,
                process.heard_at,
                &mut process.heartbeat_check,
            )?;
        }

        let seq = self.append_history(
            ordinal,
            process,
            (event, result, incoming.received_at, source),
            task_status,
        )?;
        let process_status = process.status;
        if let Some(event_id) = &event.event_id {
            let dedup = DedupRecord {
                seq,
                result,
                fingerprint: incoming.fingerprint,
            };
            self.put_record(
                Kind::Dedup,
                &record_key(ordinal, Kind::Dedup, event_id.as_bytes()),
                &codec::encode(&dedup),
            )?;
        }
        if known_ordinal.is_none() {
            // Later events, in this transaction and after, find it by id.
            self.process_ids.insert(process.id.as_str(), ordinal)?;
            self.counters.next_ordinal = ordinal + 1;
            self.counters.last_created_at = process.created_at;
        }
        let finished = (!was_terminal && process_status.is_terminal()).then(|| FinishedProcess {
            process_type: process.process_type.clone(),
            duration_ms: process.duration_ms(),
        });
        if finished.is_some() {
            self.ended.push(process.id.clone());
        }
        cached.changed = true;
        // A stale event may fill in attributes the process lacked.
        if brings_attributes {
            cached.attributes = Attributes::Loaded { changed: true };
        }
        self.processes.insert(ordinal, cached);
        Ok(EventOutcome::Stored {
            result,
            seq,
            process_status,
            task_status,
            finished,
        })
    }

    /// Gives `event` the next seq and stores it in the history of the
    /// process at `ordinal`, and in the feed with the statuses it left.
    /// Returns its seq.
    fn append_history(
        &mut self,
        ordinal: u64,
        process: &mut Process,
        (event, result, received_at, source): (&Event, StoredResult, Millis, Source),
        task_status: Option<Status>,
    ) -> Result<u64, StoreError> {
        let seq = self.counters.last_seq + 1;
        self.counters.last_seq = seq;
        self.counters.events_total += 1;
        process.event_count += 1;
        process.last_seq = seq;
        let history = HistoryRecordRef {
            seq,
            result,
            received_at,
            event,
            source,
        };
        self.put_record(
            Kind::History,
            &record_key(ordinal, Kind::History, &seq.to_be_bytes()),
            &codec::encode_evolved(&history),
        )?;
        self.feed.insert(
            seq,
            codec::encode(&FeedEntry::Event {
                ordinal,
                kind: event.kind,
                process_status: process.status,
                task_status,
            })
            .as_slice(),
        )?;
        Ok(seq)
    }

    /// Times out `process_id`, whose deadline passed: the daemon's
    /// `process.timed_out`, under every rule a sender's is. The process
    /// must be in the cache or the tables, not taken out of them.
    fn time_out(
        &mut self,
        process_id: String,
        deadline: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut event = domain::model::bare_event(EventType::ProcessTimedOut, None);
        event.process_id = process_id;
        event.occurred_at = Some(deadline);
        event.error = Some(ErrorInfo {
            code: "deadline_exceeded".into(),
            message: "the process did not finish by its deadline (the event's occurred_at)".into(),
        });
        let incoming = IncomingEvent {
            event,
            fingerprint: [0; 16],
            received_at: now,
        };
        let outcome = self.apply_from(&incoming, now, Source::Daemon)?;
        self.made.push((EventType::ProcessTimedOut, outcome));
        Ok(())
    }

    /// Records a stall of the process at `ordinal` (or of its task
    /// `task`): it has been silent since `since` (when its heartbeat
    /// timeout passed).
    fn stall(
        &mut self,
        ordinal: u64,
        mut cached: CachedProcess,
        task: Option<(u32, Task)>,
        since: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        let process = &mut cached.process;
        let kind = if task.is_some() {
            EventType::TaskStalled
        } else {
            EventType::ProcessStalled
        };
        let mut event = domain::model::bare_event(kind, None);
        event.process_id = process.id.clone();
        event.occurred_at = Some(since);
        let task_status = match task {
            Some((task_ordinal, mut task)) => {
                event.task_id = Some(task.id.clone());
                task.stalled_since = Some(since);
                let status = task.status;
                self.tasks.insert((ordinal, task_ordinal), task);
                Some(status)
            }
            None => {
                process.stalled_since = Some(since);
                None
            }
        };
        let seq = self.append_history(
            ordinal,
            process,
            (&event, StoredResult::Accepted, now, Source::Daemon),
            task_status,
        )?;
        self.made.push((
            kind,
            EventOutcome::Stored {
                result: StoredResult::Accepted,
                seq,
                process_status: process.status,
                task_status,
                finished: None,
            },
        ));
        cached.changed = true;
        self.processes.insert(ordinal, cached);
        Ok(())
    }

    /// Removes finished processes as `step` says, oldest end first, each
    /// with a `process.deleted` item in the feed at `now`: at most
    /// `step.limit` of them, after looking at no more than eight times as
    /// many entries of the finished index. Returns how many it removed and,
    /// when it stopped before the end, where the next step goes on.
    pub fn purge(&mut self, step: &PurgeStep, now: Millis) -> Result<Purged, StoreError> {
        self.write_back()?;
        let limit = step.limit.max(1) as usize;
        let budget = limit.saturating_mul(8);
        let mut cuts = step.cuts.clone();
        cuts.sort_by_key(|(status, _)| status.code());
        let mut doomed = Vec::new();
        let mut looked = 0;
        let mut stopped_at = None;
        'statuses: for (status, cut) in cuts {
            let code = status.code();
            let start = match step.after {
                Some(after) if after.0 > code => continue,
                Some(after) if after.0 == code => std::ops::Bound::Excluded(after),
                _ => std::ops::Bound::Included((code, i64::MIN, 0)),
            };
            let end = std::ops::Bound::Excluded((code, cut, 0));
            for entry in self.by_finished.range::<(u8, i64, u64)>((start, end))? {
                let key = entry?.0.value();
                looked += 1;
                let process = self.get_evolved::<Process>(
                    "process record",
                    &record_key(key.2, Kind::Process, &[]),
                )?;
                if let Some(process) = process.filter(|process| {
                    step.process_type
                        .as_ref()
                        .is_none_or(|wanted| process.process_type.as_ref() == Some(wanted))
                }) {
                    doomed.push(process.id);
                }
                if doomed.len() == limit || looked == budget {
                    // Perhaps the last; the next step finds out.
                    stopped_at = Some(key);
                    break 'statuses;
                }
            }
        }
        let mut deleted = 0;
        for process_id in doomed {
            if self.delete_process(&process_id, Some(now))? {
                deleted += 1;
            }
        }
        Ok(Purged {
            deleted,
            next: stopped_at,
        })
    }

    /// Marks the feed with the time at `now`: entries from the next seq on
    /// are no older. What `trim_feed` goes by.
    pub fn mark_feed(&mut self, now: Millis) -> Result<(), StoreError> {
        self.feed_marks.insert(self.counters.last_seq + 1, now)?;
        Ok(())
    }

    /// Drops feed entries written before `before` (as far as the marks
    /// tell), at most `limit` of them, and raises the feed floor past them:
    /// a consumer resuming from before the floor is told (410) to start
    /// over. Returns whether some are left to drop.
    pub fn trim_feed(&mut self, before: Millis, limit: usize) -> Result<bool, StoreError> {
        let mut cut = None;
        for mark in self.feed_marks.iter()? {
            let (seq, at) = mark?;
            if at.value() > before {
                break;
            }
            cut = Some(seq.value());
        }
        let Some(cut) = cut else {
            return Ok(false);
        };
        let mut dropped = Vec::new();
        for entry in self.feed.range(..cut)? {
            if dropped.len() == limit {
                break;
            }
            dropped.push(entry?.0.value());
        }
        for &seq in &dropped {
            self.feed.remove(seq)?;
        }
        let more = dropped.len() == limit;
        let floor = if more {
            dropped.last().copied().unwrap_or(0)
        } else {
            // Everything before the mark is gone; the marks before it too.
            self.feed_marks.retain_in(..cut, |_, _| false)?;
            cut - 1
        };
        if floor > schema::feed_floor(&self.meta)? {
            self.meta
                .insert(META_FEED_FLOOR, codec::encode(&floor).as_slice())?;
        }
        Ok(more)
    }

    /// When trimming the feed to `keep` milliseconds would next drop
    /// something: the second mark's time, plus `keep`.
    pub fn next_feed_trim(&self, keep: Millis) -> Result<Option<Millis>, StoreError> {
        Ok(match self.feed_marks.iter()?.nth(1) {
            Some(mark) => Some(mark?.1.value().saturating_add(keep)),
            None => None,
        })
    }

    /// When the first finished process comes due for removal under
    /// `retention` (how long each terminal status is kept), if any is kept.
    pub fn next_expiry(&self, retention: &[(Status, i64)]) -> Result<Option<Millis>, StoreError> {
        let mut next: Option<Millis> = None;
        for &(status, keep) in retention {
            let code = status.code();
            if let Some(entry) = self
                .by_finished
                .range((code, i64::MIN, 0)..=(code, i64::MAX, u64::MAX))?
                .next()
            {
                let expires = entry?.0.value().1.saturating_add(keep);
                next = Some(next.map_or(expires, |known| known.min(expires)));
            }
        }
        Ok(next)
    }

    /// The earliest due entry's time, if any.
    pub fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self.due.first()?.map(|(key, _)| key.value().0))
    }

    /// Looks at the due entries up to `now` (at most `MAX_DUE_PER_GROUP`):
    /// times out processes past their deadline, records stalls, and moves
    /// heartbeat checks of processes heard from since to their new due
    /// time. Returns how many entries it took.
    pub fn fire_due(&mut self, now: Millis) -> Result<usize, StoreError> {
        let mut taken = Vec::new();
        for entry in self.due.range(..=(now, u64::MAX, u8::MAX, u32::MAX))? {
            if taken.len() == MAX_DUE_PER_GROUP {
                break;
            }
            taken.push(entry?.0.value());
        }
        for &key in &taken {
            self.due.remove(key)?;
        }
        for &(due, ordinal, code, task_ordinal) in &taken {
            // Ordinals are never reused: a removed process's entries find nothing.
            if !self.process_exists(ordinal)? {
                continue;
            }
            let mut cached = self.take_process(ordinal)?;
            let process = &mut cached.process;
            match Due::from_code(code) {
                Some(Due::Deadline) => {
                    let live = process.deadline == Some(due) && !process.status.is_terminal();
                    let process_id = process.id.clone();
                    self.processes.insert(ordinal, cached);
                    if live {
                        self.time_out(process_id, due, now)?;
                    }
                }
                Some(Due::Heartbeat) => {
                    if process.heartbeat_check != Some(due) {
                        // Moved to an earlier check since: this one is spent.
                        self.processes.insert(ordinal, cached);
                        continue;
                    }
                    process.heartbeat_check = None;
                    cached.changed = true;
                    let process = &mut cached.process;
                    let silent_since = match process.heartbeat_timeout {
                        Some(timeout)
                            if !process.status.is_terminal() && process.stalled_since.is_none() =>
                        {
                            process.heard_at.saturating_add(i64::from(timeout) * 1000)
                        }
                        _ => {
                            self.processes.insert(ordinal, cached);
                            continue;
                        }
                    };
                    if silent_since > now {
                        // Heard from since this check was set: check again later.
                        self.due
                            .insert((silent_since, ordinal, Due::Heartbeat as u8, 0), ())?;
                        process.heartbeat_check = Some(silent_since);
                        self.processes.insert(ordinal, cached);
                    } else {
                        self.stall(ordinal, cached, None, silent_since, now)?;
                    }
                }
                Some(Due::TaskHeartbeat) => {
                    let task = self.task_at(ordinal, task_ordinal, &cached.process)?;
                    let Some(mut task) = task.filter(|task| task.heartbeat_check == Some(due))
                    else {
                        self.processes.insert(ordinal, cached);
                        continue;
                    };
                    task.heartbeat_check = None;
                    let silent_since = match task.heartbeat_timeout {
                        Some(timeout)
                            if !task.status.is_terminal()
                                && !cached.process.status.is_terminal()
                                && task.stalled_since.is_none() =>
                        {
                            task.heard_at.saturating_add(i64::from(timeout) * 1000)
                        }
                        _ => {
                            self.tasks.insert((ordinal, task_ordinal), task);
                            self.processes.insert(ordinal, cached);
                            continue;
                        }
                    };
                    if silent_since > now {
                        self.due.insert(
                            (
                                silent_since,
                                ordinal,
                                Due::TaskHeartbeat as u8,
                                task_ordinal,
                            ),
                            (),
                        )?;
                        task.heartbeat_check = Some(silent_since);
                        self.tasks.insert((ordinal, task_ordinal), task);
                        self.processes.insert(ordinal, cached);
                    } else {
                        self.stall(
                            ordinal,
                            cached,
                            Some((task_ordinal, task)),
                            silent_since,
                            now,
                        )?;
                    }
                }
                None => {
                    self.processes.insert(ordinal, cached);
                }
            }
        }
        Ok(taken.len())
    }

    fn process_exists(&self, ordinal: u64) -> Result<bool, StoreError> {
        Ok(self.processes.contains_key(&ordinal)
            || self
                .records
                .get(record_key(ordinal, Kind::Process, &[]).as_slice())?
                .is_some())
    }

    /// A task by its ordinal, as the transaction left it.
    fn task_at(
        &self,
        ordinal: u64,
        task_ordinal: u32,
        process: &Process,
    ) -> Result<Option<Task>, StoreError> {
        if let Some(task) = self.tasks.get(&(ordinal, task_ordinal)) {
            return Ok(Some(task.clone()));
        }
        let key = record_key(
            ordinal,
            Kind::Task,
            &schema::task_ordinal_bytes(task_ordinal),
        );
        self.get_evolved("task record", &key)
            .map_err(|error| match error {
                StoreError::Corrupt { source, .. } => StoreError::Corrupt {
                    what: format!("task record {task_ordinal} of process {}", process.id),
                    source,
                },
                other => other,
            })
    }

    /// The process at `ordinal` as the transaction left it, taken out of
    /// the cache (put it back when done) or read from the table.
    fn take_process(&mut self, ordinal: u64) -> Result<CachedProcess, StoreError> {
        if let Some(cached) = self.processes.remove(&ordinal) {
            return Ok(cached);
        }
        let process: Process = self
            .get_evolved("process record", &record_key(ordinal, Kind::Process, &[]))?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("process record of ordinal {ordinal}"),
                source: codec::CodecError::Empty,
            })?;
        // A record from before attributes had their own holds them itself:
        // they move to their record when it is next written.
        let attributes = if process.attributes.is_empty() {
            Attributes::InStore
        } else {
            Attributes::Loaded { changed: true }
        };
        Ok(CachedProcess {
            indexed_attributes: indexed_values(&self.attribute_keys, &process.attributes),
            indexed: Some(IndexedFields::of(&process)),
            process,
            changed: false,
            attributes,
        })
    }

    /// Reads a cached process's attributes, if they are still in the store.
    fn load_attributes(&self, ordinal: u64, cached: &mut CachedProcess) -> Result<(), StoreError> {
        if cached.attributes == Attributes::InStore {
            let key = record_key(ordinal, Kind::Process, schema::PROCESS_ATTRIBUTES);
            if let Some(attributes) = self.get_record("process attributes", Kind::Process, &key)? {
                cached.process.attributes = attributes;
            }
            cached.attributes = Attributes::Loaded { changed: false };
            cached.indexed_attributes =
                indexed_values(&self.attribute_keys, &cached.process.attributes);
        }
        Ok(())
    }

    fn load_or_new_task(
        &self,
        ordinal: u64,
        process: &Process,
        task_id: &str,
        now: Millis,
    ) -> Result<(u32, Task, bool), StoreError> {
        let map_key = record_key(ordinal, Kind::TaskId, task_id.as_bytes());
        let task_ordinal = match self.records.get(map_key.as_slice())? {
            Some(bytes) => schema::task_ordinal_from(bytes.value()),
            None => None,
        };
        let Some(task_ordinal) = task_ordinal else {
            return Ok((process.task_total, Task::new(task_id.to_owned(), now), true));
        };
        if let Some(task) = self.tasks.get(&(ordinal, task_ordinal)) {
            return Ok((task_ordinal, task.clone(), false));
        }
        let key = record_key(
            ordinal,
            Kind::Task,
            &schema::task_ordinal_bytes(task_ordinal),
        );
        let task = self
            .get_evolved("task record", &key)?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("task record {task_id} of process {}", process.id),
                source: codec::CodecError::Empty,
            })?;
        Ok((task_ordinal, task, false))
    }

    /// The index entries of a process new in this transaction, as it is now.
    fn index_new(&mut self, ordinal: u64, process: &Process) -> Result<(), StoreError> {
        self.counters.count_status(process.status, 1);
        self.by_created.insert((process.created_at, ordinal), ())?;
        self.by_status
            .insert((process.status.code(), ordinal), ())?;
        if let Some(process_type) = &process.process_type {
            self.by_type
                .insert((process_type.as_str(), process.status.code(), ordinal), ())?;
        }
        if let Some(correlation_id) = &process.correlation_id {
            self.by_correlation
                .insert((correlation_id.as_str(), ordinal), ())?;
            self.index_correlation_prefixes(ordinal, correlation_id)?;
        }
        if process.stalled_since.is_some() {
            self.by_stalled.insert(ordinal, ())?;
        }
        // Its attribute entries were written by `write_back`, which holds
        // its attributes apart from the record by now.
        self.index_finished(ordinal, process)
    }

    /// Moves a process's entries in the attribute index to the values its
    /// attributes have now.
    fn reindex_attributes(
        &mut self,
        ordinal: u64,
        cached: &mut CachedProcess,
    ) -> Result<(), StoreError> {
        if self.attribute_keys.is_empty() {
            return Ok(());
        }
        let now = indexed_values(&self.attribute_keys, &cached.process.attributes);
        let before = std::mem::replace(&mut cached.indexed_attributes, now);
        let now = &cached.indexed_attributes;
        for (key, value) in before.iter().filter(|entry| !now.contains(entry)) {
            self.by_attribute
                .remove((key.as_str(), value.as_str(), ordinal))?;
        }
        for (key, value) in now.iter().filter(|entry| !before.contains(entry)) {
            self.by_attribute
                .insert((key.as_str(), value.as_str(), ordinal), ())?;
        }
        Ok(())
    }

    fn index_correlation_prefixes(
        &mut self,
        ordinal: u64,
        correlation_id: &str,
    ) -> Result<(), StoreError> {
        for (prefix, rest) in schema::correlation_prefixes(correlation_id) {
            self.by_correlation_prefix.insert((prefix, ordinal), rest)?;
        }
        Ok(())
    }

    fn unindex_correlation_prefixes(
        &mut self,
        ordinal: u64,
        correlation_id: &str,
    ) -> Result<(), StoreError> {
        for (prefix, _) in schema::correlation_prefixes(correlation_id) {
            self.by_correlation_prefix.remove((prefix, ordinal))?;
        }
        Ok(())
    }

    /// A terminal process's entry in the finished index, written once: its
    /// status and `finished_at` never change again.
    fn index_finished(&mut self, ordinal: u64, process: &Process) -> Result<(), StoreError> {
        if let (true, Some(finished_at)) = (process.status.is_terminal(), process.finished_at) {
            self.by_finished
                .insert((process.status.code(), finished_at, ordinal), ())?;
            self.pending_durations.add(
                &self.durations,
                process.process_type.as_deref(),
                (process.status, finished_at, process.duration_ms()),
            )?;
        }
        Ok(())
    }

    fn reindex(
        &mut self,
        ordinal: u64,
        before: &IndexedFields,
        after: &Process,
    ) -> Result<(), StoreError> {
        if before.status != after.status {
            self.by_status.remove((before.status.code(), ordinal))?;
            self.by_status.insert((after.status.code(), ordinal), ())?;
            self.counters.count_status(before.status, -1);
            self.counters.count_status(after.status, 1);
            if !before.status.is_terminal() {
                self.index_finished(ordinal, after)?;
            }
        }
        if before.process_type != after.process_type || before.status != after.status {
            if let Some(old) = &before.process_type {
                self.by_type
                    .remove((old.as_str(), before.status.code(), ordinal))?;
            }
            if let Some(new) = &after.process_type {
                self.by_type
                    .insert((new.as_str(), after.status.code(), ordinal), ())?;
            }
        }
        let stalled = after.stalled_since.is_some();
        if before.stalled != stalled {
            if stalled {
                self.by_stalled.insert(ordinal, ())?;
            } else {
                self.by_stalled.remove(ordinal)?;
            }
        }
        if before.correlation_id != after.correlation_id {
            if let Some(old) = &before.correlation_id {
                self.by_correlation.remove((old.as_str(), ordinal))?;
                self.unindex_correlation_prefixes(ordinal, old)?;
            }
            if let Some(new) = &after.correlation_id {
                self.by_correlation.insert((new.as_str(), ordinal), ())?;
                self.index_correlation_prefixes(ordinal, new)?;
            }
        }
        Ok(())
    }

    /// Removes a process with its tasks, history, idempotency keys and index
    /// entries. Its events leave the feed; with `announce_at` (the server
    /// clock) one `process.deleted` entry takes their place, without it the
    /// caller raises the feed floor (`schema::META_FEED_FLOOR`). Returns
    /// false when there is no such process.
    pub fn delete_process(
        &mut self,
        process_id: &str,
        announce_at: Option<Millis>,
    ) -> Result<bool, StoreError> {
        let Some(ordinal) = self.process_ids.remove(process_id)?.map(|o| o.value()) else {
            return Ok(false);
        };
        // What was changed of it and not yet written goes too.
        let mut cached = self.take_process(ordinal)?;
        if !self.attribute_keys.is_empty() && cached.indexed.is_some() {
            // Its entries in the attribute index are made of them.
            self.load_attributes(ordinal, &mut cached)?;
        }
        self.tasks.retain(|&(task_of, _), _| task_of != ordinal);
        let history_start = record_key(ordinal, Kind::History, &[]);
        let history_end = schema::record_kind_end(ordinal, Kind::History);
        let mut seqs = Vec::new();
        for entry in self
            .events
            .range(history_start.as_slice()..history_end.as_slice())?
        {
            if let Some(seq) = schema::history_seq(entry?.0.value()) {
                seqs.push(seq);
            }
        }
        for seq in seqs {
            self.feed.remove(seq)?;
        }
        if let Some(at) = announce_at {
            let seq = self.counters.last_seq + 1;
            self.counters.last_seq = seq;
            self.feed.insert(
                seq,
                codec::encode(&FeedEntry::Deleted {
                    process_id: process_id.to_owned(),
                    process_type: cached.process.process_type.clone(),
                    at,
                })
                .as_slice(),
            )?;
        }
        self.ended.push(process_id.to_owned());
        let (start, end) = schema::process_range(ordinal);
        self.records
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        self.events
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        // The index entries, and the count, are those the tables hold.
        if let Some(indexed) = &cached.indexed {
            let created_at = cached.process.created_at;
            self.by_created.remove((created_at, ordinal))?;
            self.by_status.remove((indexed.status.code(), ordinal))?;
            if let Some(process_type) = &indexed.process_type {
                self.by_type
                    .remove((process_type.as_str(), indexed.status.code(), ordinal))?;
            }
            if let Some(correlation_id) = &indexed.correlation_id {
                self.by_correlation
                    .remove((correlation_id.as_str(), ordinal))?;
                self.unindex_correlation_prefixes(ordinal, correlation_id)?;
            }
            for (key, value) in &cached.indexed_attributes {
                self.by_attribute
                    .remove((key.as_str(), value.as_str(), ordinal))?;
            }
            if indexed.stalled {
                self.by_stalled.remove(ordinal)?;
            }
            if let (true, Some(finished_at)) =
                (indexed.status.is_terminal(), cached.process.finished_at)
            {
                self.by_finished
                    .remove((indexed.status.code(), finished_at, ordinal))?;
            }
            self.counters.count_status(indexed.status, -1);
        }
        self.counters.events_total = self
            .counters
            .events_total
            .saturating_sub(cached.process.event_count);
        Ok(true)
    }
}

/// The values of `keys` among `attributes`, in the order of `keys`.
pub(crate) fn indexed_values(
    keys: &[String],
    attributes: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|key| Some((key.clone(), attributes.get(key)?.clone())))
        .collect()
}

/// One step of removing finished processes: a retention step, or one of a
/// bulk `DELETE /v1/processes?finished_before=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeStep {
    /// (terminal status, cut): processes of that status finished before
    /// the cut.
    pub cuts: Vec<(Status, Millis)>,
    /// Only processes of this type.
    pub process_type: Option<String>,
    /// The entry of the finished index the last step stopped at.
    pub after: Option<(u8, Millis, u64)>,
    /// Processes removed in this step at most.
    pub limit: u32,
    /// Also drop feed entries written before this time (retention steps).
    pub trim_feed_before: Option<Millis>,
}

/// What a purge step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purged {
    pub deleted: u64,
    /// Where the next step goes on; `None` when nothing is left.
    pub next: Option<(u8, Millis, u64)>,
}

/// Makes sure a heartbeat check waits in `due` no later than the moment
/// the timeout passes from `heard_at`. An earlier check already there is
/// enough: when it fires it moves itself to the moment then due, so that a
/// process heard from often costs no writes to the due table.
fn schedule_heartbeat(
    due: &mut Table<'_, (i64, u64, u8, u32), ()>,
    (ordinal, what, task_ordinal): (u64, Due, u32),
    timeout: Option<u32>,
    heard_at: Millis,
    check: &mut Option<Millis>,
) -> Result<(), StoreError> {
    let Some(timeout) = timeout else {
        return Ok(());
    };
    let at = heard_at.saturating_add(i64::from(timeout) * 1000);
    if check.is_none_or(|scheduled| at < scheduled) {
        due.insert((at, ordinal, what as u8, task_ordinal), ())?;
        *check = Some(at);
    }
    Ok(())
}
