//! Offline and admin work on a store: the logical integrity check, and
//! purging finished processes.
//!
//! The check walks the records and events tables once, together in key
//! order. All records of a process are adjacent in that order, so it holds
//! one process at a time in memory whatever the size of the store.

use super::read::Snapshot;
use super::schema::{
    self, decode_or_corrupt, history_seq, Counters, DedupRecord, HistoryRecord, Kind,
    BY_CORRELATION, BY_CREATED, BY_FINISHED, BY_STATUS, BY_TYPE, EVENTS, PROCESS_IDS, RECORDS,
};
use crate::progress::Progress;

use super::StoreError;
use crate::domain::{Millis, Process, Status, Task, TaskCounts};
use redb::{Database, ReadOnlyTable, ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Problems reported at most; past that only their number grows.
const MAX_REPORTED: usize = 100;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub processes: u64,
    pub events: u64,
    pub records: u64,
    /// The first problems found, each one sentence.
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl VerifyReport {
    pub fn is_sound(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_REPORTED {
            self.problems.push(text);
        }
    }
}

/// The records of one ordinal, gathered while walking.
#[derive(Default)]
struct Gathered {
    process: Option<Process>,
    /// Its attributes have a record of their own.
    has_attributes_record: bool,
    /// The attributes that record holds.
    attributes: BTreeMap<String, String>,
    tasks: Vec<(u32, Task)>,
    task_ids: Vec<(String, u32)>,
    history_seqs: HashSet<u64>,
    max_seq: u64,
    dedup_seqs: Vec<(String, u64)>,
}

struct Totals {
    by_status: [u64; 7],
    with_type: u64,
    with_correlation: u64,
    prefix_entries: u64,
    attribute_entries: u64,
    finished: u64,
    max_seq: u64,
    max_ordinal: Option<u64>,
}

/// Checks that every record decodes and that records, indexes and counters
/// agree, counting the records it reads on `progress`.
pub fn verify(snapshot: &Snapshot, progress: &Progress) -> Result<VerifyReport, StoreError> {
    let txn = snapshot.file_transaction();
    let mut report = VerifyReport::default();
    let counters = match snapshot.counters() {
        Ok(counters) => counters,
        Err(StoreError::Corrupt { what, source }) => {
            report.problem(format!("the {what} cannot be decoded: {source}"));
            Counters::default()
        }
        Err(other) => return Err(other),
    };
    let records = txn.open_table(RECORDS)?;
    let events = txn.open_table(EVENTS)?;
    let indexes = Indexes {
        process_ids: txn.open_table(PROCESS_IDS)?,
        by_created: txn.open_table(BY_CREATED)?,
        by_status: txn.open_table(BY_STATUS)?,
        by_type: txn.open_table(BY_TYPE)?,
        by_correlation: txn.open_table(BY_CORRELATION)?,
        by_finished: txn.open_table(BY_FINISHED)?,
        by_correlation_prefix: txn.open_table(schema::BY_CORRELATION_PREFIX)?,
        by_attribute: txn.open_table(schema::BY_ATTRIBUTE)?,
        attribute_keys: schema::indexed_attributes(&txn.open_table(schema::META)?)?,
    };
    let mut totals = Totals {
        by_status: [0; 7],
        with_type: 0,
        with_correlation: 0,
        prefix_entries: 0,
        attribute_entries: 0,
        finished: 0,
        max_seq: 0,
        max_ordinal: None,
    };

    progress.set_total(records.len()? + events.len()?);
    let mut current: Option<(u64, Gathered)> = None;
    let mut records = records.iter()?.peekable();
    let mut events = events.iter()?.peekable();
    loop {
        // The two tables share one key layout: take whichever key is next.
        let from_events = match (records.peek(), events.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(Ok((record, _))), Some(Ok((event, _)))) => event.value() < record.value(),
            (Some(Err(_)), _) => false,
            (_, Some(Err(_))) => true,
        };
        let entry = if from_events {
            events.next()
        } else {
            records.next()
        };
        let Some(entry) = entry else { break };
        let (key, value) = entry?;
        let (key, value) = (key.value(), value.value());
        report.records += 1;
        if report.records.is_multiple_of(4096) {
            progress.add(4096);
            crate::progress::check()?;
        }
        let Some((ordinal, kind, sub_key)) = split_key(key) else {
            report.problem(format!(
                "a record key of {} bytes has no valid kind",
                key.len()
            ));
            continue;
        };
        if kind.is_event() != from_events {
            report.problem(format!(
                "a {kind:?} record of ordinal {ordinal} is in the {} table",
                if from_events { "events" } else { "records" }
            ));
        }
        if current.as_ref().is_none_or(|(o, _)| *o != ordinal) {
            if let Some((done, gathered)) = current.take() {
                indexes.check_process(done, gathered, &mut report, &mut totals)?;
            }
            current = Some((ordinal, Gathered::default()));
        }
        let Some((_, gathered)) = current.as_mut() else {
            continue;
        };
        let described = |what: &str| format!("{what} of ordinal {ordinal}");
        match kind {
            Kind::Process if sub_key == schema::PROCESS_ATTRIBUTES => {
                match decode_or_corrupt::<BTreeMap<String, String>>("process attributes", value) {
                    Ok(attributes) if attributes.is_empty() => {
                        report.problem(described("an empty attributes record"))
                    }
                    Ok(attributes) => {
                        gathered.has_attributes_record = true;
                        gathered.attributes = attributes;
                    }
                    Err(error) => {
                        report.problem(format!("{}: {error}", described("the attributes record")))
                    }
                }
            }
            Kind::Process if !sub_key.is_empty() => {
                report.problem(described("a process record with an unknown sub-key"))
            }
            Kind::Process => match schema::decode_or_corrupt::<Process>("process record", value) {
                Ok(process) => gathered.process = Some(process),
                Err(error) => {
                    report.problem(format!("{}: {error}", described("the process record")))
                }
            },
            Kind::Task => match (
                schema::task_ordinal_from(sub_key),
                schema::decode_or_corrupt::<Task>("task record", value),
            ) {
                (Some(task_ordinal), Ok(task)) => gathered.tasks.push((task_ordinal, task)),
                (_, Err(error)) => {
                    report.problem(format!("{}: {error}", described("a task record")))
                }
                (None, _) => report.problem(described("a task record with a malformed key")),
            },
            Kind::TaskId => match (
                std::str::from_utf8(sub_key),
                schema::task_ordinal_from(value),
            ) {
                (Ok(task_id), Some(task_ordinal)) => {
                    gathered.task_ids.push((task_id.to_owned(), task_ordinal))
                }
                _ => report.problem(described("a malformed task id entry")),
            },
            Kind::Dedup => match decode_or_corrupt::<DedupRecord>("idempotency record", value) {
                Ok(dedup) => gathered
                    .dedup_seqs
                    .push((String::from_utf8_lossy(sub_key).into_owned(), dedup.seq)),
                Err(error) => {
                    report.problem(format!("{}: {error}", described("an idempotency record")))
                }
            },
            Kind::History => match (
                history_seq(key),
                schema::decode_or_corrupt::<HistoryRecord>("history record", value),
            ) {
                (Some(seq), Ok(record)) => {
                    if record.seq != seq {
                        report.problem(format!(
                            "{} says seq {} but is stored under {seq}",
                            described("a history record"),
                            record.seq
                        ));
                    }
                    gathered.history_seqs.insert(seq);
                    gathered.max_seq = gathered.max_seq.max(seq);
                }
                (_, Err(error)) => {
                    report.problem(format!("{}: {error}", described("a history record")))
                }
                (None, _) => report.problem(described("a history record with a malformed key")),
            },
        }
    }
    if let Some((done, gathered)) = current.take() {
        indexes.check_process(done, gathered, &mut report, &mut totals)?;
    }

    let processes = report.processes;
    for (name, length) in [
        ("process id", indexes.process_ids.len()?),
        ("created-order index", indexes.by_created.len()?),
        ("status index", indexes.by_status.len()?),
    ] {
        if length != processes {
            report.problem(format!(
                "the {name} table has {length} entries for {processes} processes"
            ));
        }
    }
    if indexes.by_type.len()? != totals.with_type {
        report.problem(format!(
            "the process type index has {} entries for {} typed processes",
            indexes.by_type.len()?,
            totals.with_type
        ));
    }
    if indexes.by_finished.len()? != totals.finished {
        report.problem(format!(
            "the finished index has {} entries for {} finished processes",
            indexes.by_finished.len()?,
            totals.finished
        ));
    }
    if indexes.by_correlation_prefix.len()? != totals.prefix_entries {
        report.problem(format!(
            "the correlation prefix index has {} entries where the correlation ids make {}",
            indexes.by_correlation_prefix.len()?,
            totals.prefix_entries
        ));
    }
    if indexes.by_attribute.len()? != totals.attribute_entries {
        report.problem(format!(
            "the attribute index has {} entries where the indexed attributes make {}",
            indexes.by_attribute.len()?,
            totals.attribute_entries
        ));
    }
    if indexes.by_correlation.len()? != totals.with_correlation {
        report.problem(format!(
            "the correlation index has {} entries for {} processes with a correlation id",
            indexes.by_correlation.len()?,
            totals.with_correlation
        ));
    }
    if counters.processes_by_status != totals.by_status {
        report.problem(format!(
            "the status counters {:?} differ from the records {:?}",
            counters.processes_by_status, totals.by_status
        ));
    }
    if counters.events_total != report.events {
        report.problem(format!(
            "the event counter says {} but the histories hold {}",
            counters.events_total, report.events
        ));
    }
    if counters.last_seq < totals.max_seq {
        report.problem(format!(
            "the last seq {} is below a stored seq {}",
            counters.last_seq, totals.max_seq
        ));
    }
    check_feed(txn, &counters, &mut report)?;
    if let Some(max_ordinal) = totals.max_ordinal {
        if counters.next_ordinal <= max_ordinal {
            report.problem(format!(
                "the next ordinal {} would reuse ordinal {max_ordinal}",
                counters.next_ordinal
            ));
        }
    }
    Ok(report)
}

/// Every history record has its feed entry, and every feed entry of an
/// event its history record.
fn check_feed(
    txn: &redb::ReadTransaction,
    counters: &Counters,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let feed = txn.open_table(schema::FEED)?;
    let events = txn.open_table(EVENTS)?;
    let mut pointing = 0u64;
    for entry in feed.iter()? {
        let (seq, value) = entry?;
        let seq = seq.value();
        if seq > counters.last_seq {
            report.problem(format!(
                "feed entry {seq} is past the last seq {}",
                counters.last_seq
            ));
        }
        match decode_or_corrupt::<schema::FeedEntry>("feed entry", value.value()) {
            Ok(schema::FeedEntry::Event { ordinal, .. }) => {
                let key = schema::record_key(ordinal, Kind::History, &seq.to_be_bytes());
                if events.get(key.as_slice())?.is_some() {
                    pointing += 1;
                } else {
                    report.problem(format!("feed entry {seq} points at no history record"));
                }
            }
            Ok(schema::FeedEntry::Deleted { .. }) => {}
            Err(error) => report.problem(format!("feed entry {seq}: {error}")),
        }
    }
    if pointing != report.events {
        report.problem(format!(
            "the feed holds {pointing} events of the {} in the histories",
            report.events
        ));
    }
    Ok(())
}

fn split_key(key: &[u8]) -> Option<(u64, Kind, &[u8])> {
    let ordinal = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let kind = Kind::from_code(*key.get(8)?)?;
    Some((ordinal, kind, &key[9..]))
}

/// The tables a process's records must agree with.
struct Indexes {
    process_ids: ReadOnlyTable<&'static str, u64>,
    by_created: ReadOnlyTable<(i64, u64), ()>,
    by_status: ReadOnlyTable<(u8, u64), ()>,
    by_type: ReadOnlyTable<(&'static str, u8, u64), ()>,
    by_correlation: ReadOnlyTable<(&'static str, u64), ()>,
    by_finished: ReadOnlyTable<(u8, i64, u64), ()>,
    by_correlation_prefix: ReadOnlyTable<(&'static str, u64), &'static str>,
    by_attribute: ReadOnlyTable<(&'static str, &'static str, u64), ()>,
    attribute_keys: Vec<String>,
}

impl Indexes {
    /// Checks one process's records, gathered while walking, against
    /// themselves and the indexes.
    fn check_process(
        &self,
        ordinal: u64,
        gathered: Gathered,
        report: &mut VerifyReport,
        totals: &mut Totals,
    ) -> Result<(), StoreError> {
        let Indexes {
            process_ids,
            by_created,
            by_status,
            by_type,
            by_correlation,
            by_finished,
            by_correlation_prefix,
            by_attribute,
            attribute_keys,
        } = self;
        totals.max_ordinal = totals.max_ordinal.max(Some(ordinal));
        report.events += gathered.history_seqs.len() as u64;
        totals.max_seq = totals.max_seq.max(gathered.max_seq);
        let Some(process) = gathered.process else {
            report.problem(format!(
                "records of ordinal {ordinal} have no process record"
            ));
            return Ok(());
        };
        if gathered.has_attributes_record && !process.attributes.is_empty() {
            report.problem(format!(
                "process {} keeps attributes both in its record and in a record of their own",
                process.id
            ));
        }
        report.processes += 1;
        totals.by_status[usize::from(process.status.code())] += 1;
        let id = &process.id;
        if process_ids.get(id.as_str())?.map(|o| o.value()) != Some(ordinal) {
            report.problem(format!(
                "process {id} is not found under its ordinal {ordinal} in the process id table"
            ));
        }
        if by_created.get((process.created_at, ordinal))?.is_none() {
            report.problem(format!(
                "process {id} is missing from the created-order index"
            ));
        }
        if by_status.get((process.status.code(), ordinal))?.is_none() {
            report.problem(format!(
                "process {id} is missing from the status index under {}",
                process.status
            ));
        }
        if let Some(process_type) = &process.process_type {
            totals.with_type += 1;
            let key = (process_type.as_str(), process.status.code(), ordinal);
            if by_type.get(key)?.is_none() {
                report.problem(format!("process {id} is missing from the type index"));
            }
        }
        if let (true, Some(finished_at)) = (process.status.is_terminal(), process.finished_at) {
            totals.finished += 1;
            if by_finished
                .get((process.status.code(), finished_at, ordinal))?
                .is_none()
            {
                report.problem(format!("process {id} is missing from the finished index"));
            }
        }
        if let Some(correlation_id) = &process.correlation_id {
            totals.with_correlation += 1;
            if by_correlation
                .get((correlation_id.as_str(), ordinal))?
                .is_none()
            {
                report.problem(format!(
                    "process {id} is missing from the correlation index"
                ));
            }
            let prefixes: BTreeMap<&str, &str> =
                schema::correlation_prefixes(correlation_id).collect();
            totals.prefix_entries += prefixes.len() as u64;
            for (prefix, rest) in prefixes {
                if by_correlation_prefix
                    .get((prefix, ordinal))?
                    .map(|v| v.value().to_owned())
                    != Some(rest.to_owned())
                {
                    report.problem(format!(
                        "process {id} is missing from the correlation prefix index under `{prefix}`"
                    ));
                }
            }
        }
        let attributes = if gathered.has_attributes_record {
            &gathered.attributes
        } else {
            &process.attributes
        };
        for (key, value) in super::write::indexed_values(attribute_keys, attributes) {
            totals.attribute_entries += 1;
            if by_attribute
                .get((key.as_str(), value.as_str(), ordinal))?
                .is_none()
            {
                report.problem(format!(
                    "process {id} is missing from the attribute index under {key}={value}"
                ));
            }
        }
        let events = gathered.history_seqs.len() as u64;
        if events != process.event_count {
            report.problem(format!(
                "process {id} counts {} events but its history holds {events}",
                process.event_count
            ));
        }
        if gathered.max_seq != process.last_seq {
            report.problem(format!(
                "process {id} says its last seq is {} but its history ends at {}",
                process.last_seq, gathered.max_seq
            ));
        }
        let mut counts = TaskCounts::default();
        let tasks_by_ordinal: HashMap<u32, &Task> =
            gathered.tasks.iter().map(|(o, t)| (*o, t)).collect();
        for (_, task) in &gathered.tasks {
            counts.add(task.status);
            if task.attempts.len() != task.attempt as usize {
                report.problem(format!(
                    "task {} of process {id} is on attempt {} but has {} attempt records",
                    task.id,
                    task.attempt,
                    task.attempts.len()
                ));
            }
        }
        if counts != process.task_counts || gathered.tasks.len() != process.task_total as usize {
            report.problem(format!(
                "process {id}'s task counts do not match its {} task records",
                gathered.tasks.len()
            ));
        }
        if gathered.task_ids.len() != gathered.tasks.len() {
            report.problem(format!(
                "process {id} has {} task ids for {} tasks",
                gathered.task_ids.len(),
                gathered.tasks.len()
            ));
        }
        for (task_id, task_ordinal) in &gathered.task_ids {
            if tasks_by_ordinal
                .get(task_ordinal)
                .is_none_or(|task| &task.id != task_id)
            {
                report.problem(format!(
                    "task id {task_id} of process {id} points at no matching task"
                ));
            }
        }
        for (event_id, seq) in &gathered.dedup_seqs {
            if !gathered.history_seqs.contains(seq) {
                report.problem(format!("idempotency key {event_id} of process {id} points at seq {seq}, which is not in its history"));
            }
        }
        Ok(())
    }
}

/// Process ids of finished processes whose `finished_at` is before `cut`,
/// found in the finished index.
pub fn finished_before(snapshot: &Snapshot, cut: Millis) -> Result<Vec<String>, StoreError> {
    let txn = snapshot.file_transaction();
    let by_finished = txn.open_table(BY_FINISHED)?;
    let records = txn.open_table(RECORDS)?;
    let mut ids = Vec::new();
    for status in Status::PROCESS_ENDS {
        let code = status.code();
        for entry in by_finished.range((code, i64::MIN, 0)..(code, cut, 0))? {
            let ordinal = entry?.0.value().2;
            if let Some(process) = schema::process_record(&records, ordinal)? {
                ids.push(process.id);
            }
        }
    }
    Ok(ids)
}

/// Deletes the given processes with everything that hangs off them, a few
/// thousand per transaction. Returns how many were deleted.
///
/// Nothing of an offline removal enters the change feed: the feed floor
/// rises to the last seq, so that a consumer resuming from before it is
/// told (410) to start over rather than miss the removals.
pub fn delete_processes(
    db: &Database,
    ids: &[String],
    progress: &Progress,
) -> Result<u64, StoreError> {
    progress.set_total(ids.len() as u64);
    let mut deleted = 0;
    for chunk in ids.chunks(1_000) {
        crate::progress::check()?;
        deleted += super::write::offline(db, |batch| {
            let mut removed = 0;
            for id in chunk {
                if batch.delete_process(id, None)? {
                    removed += 1;
                }
            }
            Ok(removed)
        })?;
        progress.add(chunk.len() as u64);
    }
    Ok(deleted)
}
