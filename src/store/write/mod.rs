//! The apply step: one write group's events, deletions and daemon work,
//! decided by the domain's rules against the state as the group left it,
//! and written into the pending layers (`store::layers`) by one part per
//! concern, each owning its tables:
//!
//! - `records`: processes and tasks, their ids and attributes;
//! - `history` and `idempotency`: each process's events and event ids;
//! - `indexes`: what listings walk, with the counts of statuses and stalls;
//! - `due`: when stalls and deadlines come due;
//! - `feed`: the change feed, its time marks and its floor;
//! - `summaries`: the duration summaries;
//! - `retention`: which finished processes go, and when.
//!
//! Only the writer thread (and recovery, and offline maintenance) use
//! this. A `WriteBatch` sees what every earlier group and its own earlier
//! events did, so several events for one process in one group build on
//! each other exactly as if applied one by one.

mod due;
mod feed;
mod history;
mod idempotency;
mod indexes;
mod records;
mod retention;
mod summaries;
#[cfg(test)]
mod tests;

pub use records::indexed_values;

use crate::codec;
use crate::domain::{
    self, caps, timing, Caps, EventOutcome, FinishedProcess, IncomingEvent, Millis, Outcome, Scope,
    Source, StoredResult, TimeoutDefaults,
};
use crate::store::layers::{Applied, Writing};
use crate::store::schema::{
    self, decode_or_corrupt, Counters, DedupRecord, Due, FeedEntry, HistoryRecordRef, META_COUNTERS,
};
use crate::store::StoreError;
use records::{Attributes, CachedProcess, Changed, Records};
use std::sync::Arc;

/// How many due entries one group looks at, at most: a burst of them (a
/// restart after a long stop) is worked off over several groups, with
/// ingest in between.
pub const MAX_DUE_PER_GROUP: usize = 1000;

/// The parts of one group's apply step, the changed processes and tasks
/// not yet written back, and the counters as they will be once it is done.
pub struct WriteBatch<'a> {
    records: Records<'a>,
    history: history::History<'a>,
    idempotency: idempotency::Idempotency<'a>,
    indexes: indexes::Indexes<'a>,
    due: due::DueTimes<'a>,
    feed: feed::Feed<'a>,
    summaries: summaries::Summaries<'a>,
    meta: crate::store::layers::WriteTable<'a, &'static str, &'static [u8]>,
    pub counters: Counters,
    /// What one process may keep (`domain::caps`).
    caps: Caps,
    timeouts: Arc<TimeoutDefaults>,
    /// The processes that ended (turned terminal, or were removed) in this
    /// batch, for whoever waits on them.
    pub ended: Vec<String>,
    /// The events the daemon made in this batch, with what became of them.
    pub made: Vec<(domain::EventType, EventOutcome)>,
}

/// Reads the counters as the pending state (or the store file) has them.
pub fn load_counters(
    meta: &impl crate::store::layers::Lookup<&'static str, &'static [u8]>,
) -> Result<Counters, StoreError> {
    match meta.lookup(META_COUNTERS)? {
        Some(bytes) => decode_or_corrupt("counters", &bytes),
        None => Ok(Counters::default()),
    }
}

/// Runs `work` on a batch over a store no daemon holds, and writes what it
/// did to the store file in one durable step: for offline maintenance
/// (`compact --purge-finished-before`) and tests. Returns what `work`
/// returned.
pub fn offline<T>(
    db: &redb::Database,
    work: impl FnOnce(&mut WriteBatch<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let applied = Applied::begin(db)?;
    let last_group = schema::logged_group(&applied.transaction().open_table(schema::META)?)?;
    let layer = crate::store::layers::SharedLayer::default();
    let writing = Writing::new(None, layer.clone(), last_group + 1);
    let mut batch = WriteBatch::open(&writing, &applied, load_counters(&writing.meta(&applied))?)?;
    let out = work(&mut batch)?;
    batch.finish()?;
    drop(writing);
    drop(applied);
    let set = layer
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The same group number as before: the store's write logs, if any,
    // hold nothing after it.
    crate::store::durability::apply_step(db, &[&set], last_group, true)?;
    Ok(out)
}

impl<'a> WriteBatch<'a> {
    /// A batch writing group `writing.group()` over the store file as
    /// `applied` has it, starting from `counters`.
    pub fn open(
        writing: &'a Writing,
        applied: &'a Applied,
        counters: Counters,
    ) -> Result<Self, StoreError> {
        let meta = writing.meta(applied);
        let attribute_keys = schema::indexed_attributes(&*meta)?;
        Ok(WriteBatch {
            records: Records::open(writing, applied, attribute_keys),
            history: history::History::open(writing, applied),
            idempotency: idempotency::Idempotency::open(writing, applied),
            indexes: indexes::Indexes::open(writing, applied),
            due: due::DueTimes::open(writing, applied),
            feed: feed::Feed::open(writing, applied),
            summaries: summaries::Summaries::open(writing, applied),
            meta,
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
    pub fn set_timeouts(&mut self, timeouts: Arc<TimeoutDefaults>) {
        self.timeouts = timeouts;
    }

    /// Writes what is left to write (the changed processes and tasks with
    /// their index entries, the summaries, the counters); call once, at
    /// the end of the group.
    pub fn finish(mut self) -> Result<Counters, StoreError> {
        self.write_back()?;
        self.summaries.write()?;
        self.meta
            .insert(META_COUNTERS, codec::encode(&self.counters).as_slice())?;
        Ok(self.counters)
    }

    /// Writes the processes and tasks changed since the last call, with
    /// their index entries. The writer calls it after each request, while
    /// the records it read are still in the CPU's cache; `finish` too.
    pub fn write_back(&mut self) -> Result<(), StoreError> {
        for Changed {
            ordinal,
            mut cached,
        } in self.records.write_back()?
        {
            if cached.attributes == (Attributes::Loaded { changed: true }) {
                let now = indexed_values(self.records.attribute_keys(), &cached.process.attributes);
                let before = std::mem::replace(&mut cached.indexed_attributes, now);
                self.indexes
                    .update_attributes(ordinal, &before, &cached.indexed_attributes)?;
            }
            let process = &cached.process;
            let finished = match &cached.indexed {
                Some(before) => {
                    self.indexes
                        .update(ordinal, before, process, &mut self.counters)?
                }
                None => self.indexes.add(ordinal, process, &mut self.counters)?,
            };
            if let (true, Some(finished_at)) = (finished, process.finished_at) {
                self.summaries.ended(process, finished_at)?;
            }
        }
        Ok(())
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
        let known_ordinal = self.records.ordinal_of(&event.process_id)?;

        if let (Some(ordinal), Some(event_id)) = (known_ordinal, &event.event_id) {
            if let Some(seen) = self.idempotency.seen(ordinal, event_id)? {
                if seen.fingerprint != incoming.fingerprint {
                    return Ok(EventOutcome::KeyReused { seq: seen.seq });
                }
                let cached = self.records.take(ordinal)?;
                let process_status = cached.process.status;
                self.records.put_back(ordinal, cached);
                return Ok(EventOutcome::Duplicate {
                    original: seen.result,
                    seq: seen.seq,
                    process_status,
                });
            }
        }

        let (ordinal, mut cached) = match known_ordinal {
            Some(ordinal) => {
                let cached = self.records.take(ordinal)?;
                // A deadline that passed, not yet acted on (the writer
                // looks at due entries between groups): it times the
                // process out before this event is weighed, as it would
                // have a moment earlier.
                match timing::passed_deadline(&cached.process, now) {
                    Some(deadline) if source == Source::Sender => {
                        let process_id = cached.process.id.clone();
                        self.records.put_back(ordinal, cached);
                        self.time_out(&process_id, deadline, now)?;
                        (ordinal, self.records.take(ordinal)?)
                    }
                    _ => (ordinal, cached),
                }
            }
            None => {
                let created_at = now.max(self.counters.last_created_at);
                let process = domain::Process::new(event.process_id.clone(), created_at);
                (self.counters.next_ordinal, CachedProcess::new(process))
            }
        };
        // Only a process event with attributes reads or changes them.
        let brings_attributes =
            event.kind.scope() == Scope::Process && !event.attributes.is_empty();
        if brings_attributes {
            self.records.load_attributes(ordinal, &mut cached)?;
        }
        let process = &mut cached.process;
        let was_terminal = process.status.is_terminal();
        let had_type = process.process_type.is_some();
        let deadline_before = process.deadline;
        let at = event.occurred_at.unwrap_or(incoming.received_at);

        // Nothing of an event refused here is applied: the records stay
        // as they were.
        let refuse = |batch: &mut Self, cached: CachedProcess, outcome| {
            if known_ordinal.is_some() {
                batch.records.put_back(ordinal, cached);
            }
            Ok(outcome)
        };
        let (outcome, task_status) = match event.kind.scope() {
            Scope::Process => {
                if let Err(limit) = caps::check(process, None, false, event, at, &self.caps) {
                    return refuse(self, cached, EventOutcome::OverLimit(limit));
                }
                (domain::apply(process, None, false, event, at), None)
            }
            Scope::Task => {
                let task_id = event.task_id.as_deref().unwrap_or_default();
                let (task_ordinal, mut task, is_new) =
                    self.records.task(ordinal, process, task_id, now)?;
                if let Err(limit) = caps::check(process, Some(&task), is_new, event, at, &self.caps)
                {
                    return refuse(self, cached, EventOutcome::OverLimit(limit));
                }
                let outcome = domain::apply(process, Some(&mut task), is_new, event, at);
                let stored = !matches!(outcome, Outcome::Conflict { .. });
                let task_status = (outcome == Outcome::Accepted || !is_new).then_some(task.status);
                if outcome == Outcome::Accepted && is_new {
                    process.task_total += 1;
                    self.records.name_task(ordinal, task_id, task_ordinal)?;
                }
                if stored && (outcome == Outcome::Accepted || !is_new) {
                    if source == Source::Sender {
                        // Any event for the task is a sign of its life.
                        task.heard_at = now;
                        task.stalled_since = None;
                        if !task.status.is_terminal() && !process.status.is_terminal() {
                            self.due.heartbeat(
                                (ordinal, Due::TaskHeartbeat, task_ordinal),
                                task.heartbeat_timeout,
                                task.heard_at,
                                &mut task.heartbeat_check,
                            )?;
                        }
                    }
                    self.records.put_task(ordinal, task_ordinal, task);
                }
                (outcome, task_status)
            }
        };
        let result = match outcome {
            Outcome::Conflict { current_status } => {
                return refuse(self, cached, EventOutcome::Conflict { current_status });
            }
            Outcome::Accepted => StoredResult::Accepted,
            Outcome::Stale => StoredResult::Stale,
        };
        let process = &mut cached.process;
        // A type's defaults come with the first event that gives the type,
        // accepted or (filling in a type the process lacked) stale.
        if !had_type {
            timing::take_type_defaults(process, &self.timeouts, event);
        }
        if source == Source::Sender {
            process.heard_at = now;
            process.stalled_since = None;
        }
        if process.status.is_terminal() {
            // Only a running process can be stalled: the daemon's own
            // time-out ends a stall as a sender's end does.
            process.stalled_since = None;
        } else {
            if let Some(deadline) = process
                .deadline
                .filter(|_| process.deadline != deadline_before)
            {
                self.due.deadline(ordinal, deadline)?;
            }
            self.due.heartbeat(
                (ordinal, Due::Heartbeat, 0),
                process.heartbeat_timeout,
                process.heard_at,
                &mut process.heartbeat_check,
            )?;
        }

        let seq = self.append(
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
            self.idempotency.remember(ordinal, event_id, &dedup)?;
        }
        if known_ordinal.is_none() {
            self.records.name(&process.id, ordinal)?;
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
        self.records.put_back(ordinal, cached);
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
    fn append(
        &mut self,
        ordinal: u64,
        process: &mut domain::Process,
        (event, result, received_at, source): (&domain::Event, StoredResult, Millis, Source),
        task_status: Option<domain::Status>,
    ) -> Result<u64, StoreError> {
        let seq = self.counters.last_seq + 1;
        self.counters.last_seq = seq;
        self.counters.events_total += 1;
        process.event_count += 1;
        process.last_seq = seq;
        self.history.append(
            ordinal,
            &HistoryRecordRef {
                seq,
                result,
                received_at,
                event,
                source,
            },
        )?;
        self.feed.append(
            seq,
            &FeedEntry::Event {
                ordinal,
                kind: event.kind,
                process_status: process.status,
                task_status,
            },
        )?;
        Ok(seq)
    }

    /// Times out `process_id`, whose deadline passed: the daemon's
    /// `process.timed_out`, under every rule a sender's is. The process
    /// must be in the cache or the tables, not taken out of them.
    fn time_out(
        &mut self,
        process_id: &str,
        deadline: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        let incoming = IncomingEvent::made(timing::deadline_event(process_id, deadline), now);
        let outcome = self.apply_from(&incoming, now, Source::Daemon)?;
        self.made.push((incoming.event.kind, outcome));
        Ok(())
    }

    /// Records a stall of the process at `ordinal` (or of its task
    /// `task`): it has been silent since `since` (when its heartbeat
    /// timeout passed).
    fn stall(
        &mut self,
        ordinal: u64,
        mut cached: CachedProcess,
        task: Option<(u32, domain::Task)>,
        since: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        let process = &mut cached.process;
        let event = timing::stall_event(
            &process.id,
            task.as_ref().map(|(_, task)| task.id.as_str()),
            since,
        );
        let task_status = match task {
            Some((task_ordinal, mut task)) => {
                task.stalled_since = Some(since);
                let status = task.status;
                self.records.put_task(ordinal, task_ordinal, task);
                Some(status)
            }
            None => {
                process.stalled_since = Some(since);
                None
            }
        };
        let seq = self.append(
            ordinal,
            process,
            (&event, StoredResult::Accepted, now, Source::Daemon),
            task_status,
        )?;
        self.made.push((
            event.kind,
            EventOutcome::Stored {
                result: StoredResult::Accepted,
                seq,
                process_status: process.status,
                task_status,
                finished: None,
            },
        ));
        cached.changed = true;
        self.records.put_back(ordinal, cached);
        Ok(())
    }

    /// Looks at the due entries up to `now` (at most `MAX_DUE_PER_GROUP`):
    /// times out processes past their deadline, records stalls, and moves
    /// heartbeat checks of processes heard from since to their new due
    /// time. Returns how many entries it took.
    pub fn fire_due(&mut self, now: Millis) -> Result<usize, StoreError> {
        let taken = self.due.take(now, MAX_DUE_PER_GROUP)?;
        for &(due, ordinal, code, task_ordinal) in &taken {
            // Ordinals are never reused: a removed process's entries find nothing.
            if !self.records.exists(ordinal)? {
                continue;
            }
            let mut cached = self.records.take(ordinal)?;
            match Due::from_code(code) {
                Some(Due::Deadline) => {
                    let live = cached.process.deadline == Some(due)
                        && !cached.process.status.is_terminal();
                    let process_id = cached.process.id.clone();
                    self.records.put_back(ordinal, cached);
                    if live {
                        self.time_out(&process_id, due, now)?;
                    }
                }
                Some(Due::Heartbeat) => {
                    if !timing::is_current_check(cached.process.heartbeat_check, due) {
                        // Moved to an earlier check since: this one is spent.
                        self.records.put_back(ordinal, cached);
                        continue;
                    }
                    cached.process.heartbeat_check = None;
                    cached.changed = true;
                    match timing::process_silent_since(&cached.process) {
                        None => self.records.put_back(ordinal, cached),
                        Some(since) if since > now => {
                            // Heard from since this check was set: check again later.
                            self.due.check_at((ordinal, Due::Heartbeat, 0), since)?;
                            cached.process.heartbeat_check = Some(since);
                            self.records.put_back(ordinal, cached);
                        }
                        Some(since) => self.stall(ordinal, cached, None, since, now)?,
                    }
                }
                Some(Due::TaskHeartbeat) => {
                    let task = self.records.task_at(ordinal, task_ordinal)?;
                    let Some(mut task) =
                        task.filter(|task| timing::is_current_check(task.heartbeat_check, due))
                    else {
                        self.records.put_back(ordinal, cached);
                        continue;
                    };
                    task.heartbeat_check = None;
                    match timing::task_silent_since(&cached.process, &task) {
                        None => {
                            self.records.put_task(ordinal, task_ordinal, task);
                            self.records.put_back(ordinal, cached);
                        }
                        Some(since) if since > now => {
                            self.due
                                .check_at((ordinal, Due::TaskHeartbeat, task_ordinal), since)?;
                            task.heartbeat_check = Some(since);
                            self.records.put_task(ordinal, task_ordinal, task);
                            self.records.put_back(ordinal, cached);
                        }
                        Some(since) => {
                            self.stall(ordinal, cached, Some((task_ordinal, task)), since, now)?
                        }
                    }
                }
                None => self.records.put_back(ordinal, cached),
            }
        }
        Ok(taken.len())
    }

    /// The earliest due time, if any.
    pub fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.due.next()
    }

    /// Removes a process with its tasks, history, idempotency keys and index
    /// entries. Its events leave the feed; with `announce_at` (the server
    /// clock) one `process.deleted` entry takes their place, without it the
    /// feed floor rises to the last seq (an offline purge: a consumer
    /// resuming before it is told to start over). Returns false when there
    /// is no such process.
    pub fn delete_process(
        &mut self,
        process_id: &str,
        announce_at: Option<Millis>,
    ) -> Result<bool, StoreError> {
        let Some((ordinal, cached)) = self.records.remove(process_id)? else {
            return Ok(false);
        };
        let seqs = self.history.remove(ordinal)?;
        self.idempotency.remove(ordinal)?;
        self.feed.remove(&seqs)?;
        match announce_at {
            Some(at) => {
                let seq = self.counters.last_seq + 1;
                self.counters.last_seq = seq;
                self.feed.append(
                    seq,
                    &FeedEntry::Deleted {
                        process_id: process_id.to_owned(),
                        process_type: cached.process.process_type.clone(),
                        at,
                    },
                )?;
            }
            None => self.feed.raise_floor(self.counters.last_seq)?,
        }
        self.ended.push(process_id.to_owned());
        // The index entries, and the counts, are those the tables hold.
        if let Some(indexed) = &cached.indexed {
            self.indexes.remove(
                ordinal,
                indexed,
                (cached.process.created_at, cached.process.finished_at),
                &cached.indexed_attributes,
                &mut self.counters,
            )?;
        }
        self.counters.events_total = self
            .counters
            .events_total
            .saturating_sub(cached.process.event_count);
        Ok(true)
    }

    /// Marks the feed with the time at `now`: entries from the next seq on
    /// are no older.
    pub fn mark_feed(&mut self, now: Millis) -> Result<(), StoreError> {
        self.feed.mark(self.counters.last_seq + 1, now)
    }

    /// Drops feed entries written before `before`, at most `limit`;
    /// returns whether some are left to drop.
    pub fn trim_feed(&mut self, before: Millis, limit: usize) -> Result<bool, StoreError> {
        self.feed.trim(before, limit)
    }

    /// When trimming the feed to `keep` milliseconds would next drop
    /// something.
    pub fn next_feed_trim(&self, keep: Millis) -> Result<Option<Millis>, StoreError> {
        self.feed.next_trim(keep)
    }
}

/// A store of empty tables in memory, and a layer over it, for a part to
/// be tested alone: `run` hands a part's tables group by group.
#[cfg(test)]
pub(crate) mod scratch {
    use crate::store::layers::{Applied, Pending, SharedLayer, Writing};

    pub struct Scratch {
        pub db: redb::Database,
        pub layer: SharedLayer,
        group: u64,
    }

    impl Scratch {
        pub fn new() -> Scratch {
            let db = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .unwrap();
            let txn = db.begin_write().unwrap();
            crate::store::schema::create_tables(&txn).unwrap();
            txn.commit().unwrap();
            Scratch {
                db,
                layer: SharedLayer::default(),
                group: 0,
            }
        }

        /// Runs `work` as the next group.
        pub fn group<T>(&mut self, work: impl FnOnce(&Writing, &Applied) -> T) -> T {
            self.group += 1;
            let applied = Applied::begin(&self.db).unwrap();
            let writing = Writing::new(None, self.layer.clone(), self.group);
            work(&writing, &applied)
        }

        /// Reads what every group so far left.
        pub fn read<T>(&self, work: impl FnOnce(&Pending, &Applied) -> T) -> T {
            let applied = Applied::begin(&self.db).unwrap();
            let pending = Pending::new(None, self.layer.clone(), self.group);
            work(&pending, &applied)
        }

        /// Applies the layer to the store file and starts a new one.
        pub fn apply(&mut self) {
            let layer = std::mem::take(&mut self.layer);
            let set = layer.read().unwrap();
            crate::store::durability::apply_step(&self.db, &[&set], self.group, false).unwrap();
        }
    }
}
