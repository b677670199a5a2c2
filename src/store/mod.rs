//! The redb store: tables and their layout, the codec, the schema version,
//! the write path the writer thread drives, and the read queries.

pub mod backup;
pub mod codec;
pub mod durability;
pub mod durations;
pub mod legacy;
pub mod maintenance;
pub mod read;
pub mod schema;
pub mod search;
pub mod sizing;
pub mod write;

use redb::backends::FileBackend;
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    TableHandle,
};
use schema::{Counters, META, META_COUNTERS, META_SCHEMA_VERSION, SCHEMA_VERSION};
use std::path::{Path, PathBuf};

/// The store file inside a data directory.
pub const STORE_FILE: &str = "processmanager.redb";

pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {} is in use by another process; stop the daemon that holds it, or use a command that reads a live store", path.display())]
    Locked { path: PathBuf },
    #[error("the store {} has schema version {found}, but this build reads version {expected}; run the ProcessManager release that wrote it, or restore a backup made by this one", path.display())]
    SchemaMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("the store {} has schema version {found}, from an earlier build; start `processmanager serve` on it once, which upgrades it in place", path.display())]
    Outdated { path: PathBuf, found: u32 },
    #[error("{} is not a ProcessManager store; point --data-dir at a ProcessManager data directory, or move the file away to start a new store", path.display())]
    NotAStore { path: PathBuf },
    #[error("{} is damaged and cannot be used ({detail}); restore it from another backup", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("the store {} was not stopped cleanly and its write log (or an earlier build's journal) is not yet replayed; start `processmanager serve` on it once, which recovers it, then try again", path.display())]
    NeedsRecovery { path: PathBuf },
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("the store is being reopened after an I/O error")]
    Reopening,
    #[error("the stored {what} is damaged: {source}; run `processmanager inspect verify` and restore from a backup")]
    Corrupt {
        what: String,
        source: codec::CodecError,
    },
    #[error("storage error: {0}")]
    Redb(#[from] redb::Error),
}

macro_rules! redb_error_into_store_error {
    ($($kind:ty),*) => {$(
        impl From<$kind> for StoreError {
            fn from(error: $kind) -> Self {
                StoreError::Redb(error.into())
            }
        }
    )*};
}
redb_error_into_store_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

impl StoreError {
    /// True when the disk is full: the write may succeed once there is room.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(io)) if io.kind() == std::io::ErrorKind::StorageFull
        )
    }

    /// True when redb will refuse every further use of the handle, which
    /// must then be reopened.
    pub fn poisons_handle(&self) -> bool {
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

fn builder(cache_bytes: usize) -> Builder {
    let mut builder = Builder::new();
    builder
        .set_cache_size(cache_bytes)
        // The writer holds the file alone: redb commits without its own
        // durability only then (the write log makes them durable).
        .set_concurrency_mode(ConcurrencyMode::ExclusiveWriter);
    builder
}

fn map_open_error(path: &Path, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        // redb's word for a file that is not a redb database at all.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::NotAStore {
                path: path.to_owned(),
            }
        }
        other => other.into(),
    }
}

/// Opens the store for writing, creating it (and its tables) when missing,
/// and checks its schema version. Refuses a store whose write log holds
/// groups it lacks: only the daemon's writer recovers those.
pub fn open_writable(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let db = open_for_writer(path, cache_bytes)?;
    refuse_pending_groups(path, &db)?;
    Ok(db)
}

/// `NeedsRecovery` when the store's write log holds groups after the last
/// one the store file holds.
fn refuse_pending_groups(path: &Path, db: &impl ReadableDatabase) -> Result<(), StoreError> {
    if durability::needs_recovery(path, db)? {
        return Err(StoreError::NeedsRecovery {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The file under redb, after what an earlier build's journal held is
/// replayed onto it (`durability::legacy_journal`).
fn backend(path: &Path) -> Result<FileBackend, StoreError> {
    FileBackend::new(durability::open_store_file(path)?)
        .map_err(|error| map_open_error(path, error))
}

/// Opens the store for the daemon's writer, which recovers what its write
/// log holds (`durability::Durability::open`): creates the store and its
/// tables when missing, checks its schema version and upgrades an older
/// one.
pub fn open_for_writer(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let db = builder(cache_bytes)
        .create_with_backend(backend(path)?)
        .map_err(|error| map_open_error(path, error))?;
    prepare_for_writer(path, db)
}

/// `open_for_writer` on a file of a simulated disk
/// (`durability::simulated`).
#[cfg(test)]
pub fn open_simulated(
    file: durability::simulated::SimulatedFile,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    let path = Path::new("simulated");
    let db = builder(cache_bytes)
        .create_with_backend(file)
        .map_err(|error| map_open_error(path, error))?;
    prepare_for_writer(path, db)
}

/// Checks the schema version of a store just opened for writing, upgrades
/// an older one, or makes a new one: its tables and meta.
fn prepare_for_writer(path: &Path, db: Database) -> Result<Database, StoreError> {
    let txn = db.begin_write()?;
    let existing: Vec<String> = txn
        .list_tables()?
        .map(|table| table.name().to_owned())
        .collect();
    let version = {
        let meta = txn.open_table(META)?;
        let stored = meta.get(META_SCHEMA_VERSION)?;
        match stored {
            Some(bytes) => Some(schema::decode_or_corrupt::<u32>(
                "schema version",
                bytes.value(),
            )?),
            None => None,
        }
    };
    match version {
        Some(found @ 1..=4) => upgrade(&txn, found)?,
        Some(found) if found != SCHEMA_VERSION => {
            return Err(StoreError::SchemaMismatch {
                path: path.to_owned(),
                found,
                expected: SCHEMA_VERSION,
            })
        }
        Some(_) => {}
        None if existing.iter().any(|name| name != "meta") => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
            })
        }
        None => {
            let mut meta = txn.open_table(META)?;
            meta.insert(
                META_SCHEMA_VERSION,
                codec::encode(&SCHEMA_VERSION).as_slice(),
            )?;
            meta.insert(
                META_COUNTERS,
                codec::encode(&Counters::default()).as_slice(),
            )?;
        }
    }
    // Create every table, so that readers never meet a missing one.
    txn.open_table(schema::PROCESS_IDS)?;
    txn.open_table(schema::RECORDS)?;
    txn.open_table(schema::EVENTS)?;
    txn.open_table(schema::BY_CREATED)?;
    txn.open_table(schema::BY_STATUS)?;
    txn.open_table(schema::BY_TYPE)?;
    txn.open_table(schema::BY_CORRELATION)?;
    create_later_tables(&txn)?;
    txn.commit()?;
    Ok(db)
}

/// Opens (creating them when missing) the tables added since version 3.
fn create_later_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(schema::FEED)?;
    txn.open_table(schema::DUE)?;
    txn.open_table(schema::BY_STALLED)?;
    txn.open_table(schema::BY_FINISHED)?;
    txn.open_table(schema::FEED_MARKS)?;
    txn.open_table(schema::BY_CORRELATION_PREFIX)?;
    txn.open_table(schema::BY_ATTRIBUTE)?;
    txn.open_table(schema::DURATIONS)?;
    Ok(())
}

/// Upgrades a store of schema `version` to this build's, in `txn`.
fn upgrade(txn: &redb::WriteTransaction, version: u32) -> Result<(), StoreError> {
    if version < 2 {
        upgrade_from_v1(txn)?;
    }
    if version < 3 {
        upgrade_from_v2(txn)?;
    }
    if version < 4 {
        upgrade_from_v3(txn)?;
    }
    if version < 5 {
        upgrade_from_v4(txn)?;
    }
    txn.open_table(META)?.insert(
        META_SCHEMA_VERSION,
        codec::encode(&SCHEMA_VERSION).as_slice(),
    )?;
    Ok(())
}

/// Version 5: the correlation prefix index and the duration summaries,
/// built from the correlation and finished indexes.
fn upgrade_from_v4(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    tracing::info!("upgrading the store from schema version 4: indexing correlation prefixes and summing durations");
    let prefixed = search::build_correlation_prefixes(txn)?;
    let counted = durations::build(txn)?;
    tracing::info!(prefixed, counted, "store upgraded to schema version 5");
    Ok(())
}

/// Version 1 kept idempotency keys and history in `records`: move them to
/// `events`, inside the transaction that opens the store, so the upgrade
/// happens whole or not at all.
fn upgrade_from_v1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    fn is_event(key: &[u8]) -> bool {
        key.get(8)
            .and_then(|code| schema::Kind::from_code(*code))
            .is_some_and(schema::Kind::is_event)
    }
    tracing::info!("upgrading the store from schema version 1: moving events to their own table");
    let mut records = txn.open_table(schema::RECORDS)?;
    let mut events = txn.open_table(schema::EVENTS)?;
    let mut moved: u64 = 0;
    for entry in records.iter()? {
        let (key, value) = entry?;
        if is_event(key.value()) {
            events.insert(key.value(), value.value())?;
            moved += 1;
        }
    }
    records.retain(|key, _| !is_event(key))?;
    let mut meta = txn.open_table(META)?;
    meta.insert(META_SCHEMA_VERSION, codec::encode(&2u32).as_slice())?;
    tracing::info!(moved, "store upgraded to schema version 2");
    Ok(())
}

/// Version 2 had no change feed: build it from the history kept, with
/// each event's process and task status as the rules decided them, found
/// by replaying each process's history through the same rules.
fn upgrade_from_v2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use crate::domain::{self, Outcome, Process, Task};
    use schema::{FeedEntry, HistoryRecord, Kind};
    use std::collections::HashMap;
    tracing::info!(
        "upgrading the store to schema version 3: building the change feed from the history kept"
    );
    let events = txn.open_table(schema::EVENTS)?;
    let mut feed = txn.open_table(schema::FEED)?;
    let mut current: Option<(u64, Process, HashMap<String, Task>)> = None;
    let mut entries: u64 = 0;
    for entry in events.iter()? {
        let (key, value) = entry?;
        let key = key.value();
        if key.get(8) != Some(&(Kind::History as u8)) {
            continue;
        }
        let Some(ordinal) = key
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        let record: HistoryRecord =
            schema::decode_evolved_or_corrupt("history record", value.value())?;
        if current.as_ref().is_none_or(|(at, _, _)| *at != ordinal) {
            let process = Process::new(record.event.process_id.clone(), record.received_at);
            current = Some((ordinal, process, HashMap::new()));
        }
        let Some((_, process, tasks)) = current.as_mut() else {
            continue;
        };
        let event = &record.event;
        let at = record.occurred_at();
        let task_status = match event.task_id.as_deref() {
            None => {
                domain::apply(process, None, false, event, at);
                None
            }
            Some(task_id) => {
                let is_new = !tasks.contains_key(task_id);
                let mut task = tasks
                    .remove(task_id)
                    .unwrap_or_else(|| Task::new(task_id.to_owned(), record.received_at));
                let outcome = domain::apply(process, Some(&mut task), is_new, event, at);
                let status = (outcome == Outcome::Accepted || !is_new).then_some(task.status);
                if outcome == Outcome::Accepted || !is_new {
                    tasks.insert(task_id.to_owned(), task);
                }
                status
            }
        };
        feed.insert(
            record.seq,
            codec::encode(&FeedEntry::Event {
                ordinal,
                kind: event.kind,
                process_status: process.status,
                task_status,
            })
            .as_slice(),
        )?;
        entries += 1;
        if entries.is_multiple_of(1_000_000) {
            tracing::info!(entries, "building the change feed");
        }
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(META_SCHEMA_VERSION, codec::encode(&3u32).as_slice())?;
    tracing::info!(entries, "store upgraded to schema version 3");
    Ok(())
}

/// Version 3 had no finished index: build it from the records of the
/// terminal processes.
fn upgrade_from_v3(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use crate::domain::Status;
    tracing::info!("upgrading the store from schema version 3: indexing finished processes");
    let by_status = txn.open_table(schema::BY_STATUS)?;
    let records = txn.open_table(schema::RECORDS)?;
    let mut by_finished = txn.open_table(schema::BY_FINISHED)?;
    let mut indexed: u64 = 0;
    for status in Status::PROCESS_ENDS {
        for entry in by_status.range((status.code(), 0)..=(status.code(), u64::MAX))? {
            let ordinal = entry?.0.value().1;
            let finished_at =
                schema::process_record(&records, ordinal)?.and_then(|process| process.finished_at);
            if let Some(finished_at) = finished_at {
                by_finished.insert((status.code(), finished_at, ordinal), ())?;
                indexed += 1;
            }
        }
    }
    tracing::info!(indexed, "finished processes indexed (schema version 4)");
    Ok(())
}

/// Upgrades a writable copy of an older store, such as a backup being
/// restored or inspected, to this build's schema.
pub fn upgrade_in_place(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let version: u32 = {
        let meta = txn.open_table(META)?;
        let stored = meta.get(META_SCHEMA_VERSION)?;
        match stored {
            Some(bytes) => schema::decode_or_corrupt("schema version", bytes.value())?,
            None => SCHEMA_VERSION,
        }
    };
    if version < SCHEMA_VERSION {
        upgrade(&txn, version)?;
    }
    create_later_tables(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Opens an existing store, or a backup file, read-only; it may be in use
/// by a daemon. Checks the schema version.
pub fn open_read_only(path: &Path, cache_bytes: usize) -> Result<ReadOnlyDatabase, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    // A store an earlier build left with journal records is not whole until
    // a writable open replays them. With a writer of that build running,
    // the open below is refused as `Locked`, and the tools ask it instead.
    if durability::needs_journal_replay(path)? && !held_by_writer(path) {
        return Err(StoreError::NeedsRecovery {
            path: path.to_owned(),
        });
    }
    let db = builder(cache_bytes)
        .open_read_only(path)
        .map_err(|error| match error {
            // The store file's last commits were not durable ones: a daemon
            // stopped without its final checkpoint, and its write log holds
            // them. A read-only open cannot repair it; a daemon recovers it.
            redb::DatabaseError::RepairAborted => StoreError::NeedsRecovery {
                path: path.to_owned(),
            },
            other => map_open_error(path, other),
        })?;
    check_schema(path, &db)?;
    refuse_pending_groups(path, &db)?;
    Ok(db)
}

/// Opens an existing store for writing without reading or changing its
/// contents (no schema check, no upgrade): only to hold it, so that no
/// daemon starts on it meanwhile.
pub fn hold(path: &Path) -> Result<Database, StoreError> {
    builder(1 << 20)
        .create_with_backend(backend(path)?)
        .map_err(|error| map_open_error(path, error))
}

/// True when a daemon (a writer in another process) has the store open.
/// Asks the file locks only: nothing is written.
pub fn held_by_writer(path: &Path) -> bool {
    matches!(
        Builder::new().open_read_only(path),
        Err(redb::DatabaseError::DatabaseAlreadyOpen)
    )
}

/// Checks that a readable database is a ProcessManager store of this
/// build's schema version.
pub fn check_schema(path: &Path, db: &impl ReadableDatabase) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
            })
        }
        Err(other) => return Err(other.into()),
    };
    let found = match meta.get(META_SCHEMA_VERSION)? {
        Some(bytes) => schema::decode_or_corrupt::<u32>("schema version", bytes.value())?,
        None => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
            })
        }
    };
    if found < SCHEMA_VERSION {
        return Err(StoreError::Outdated {
            path: path.to_owned(),
            found,
        });
    }
    if found != SCHEMA_VERSION {
        return Err(StoreError::SchemaMismatch {
            path: path.to_owned(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Free space on the disk of the store at `store`, for this user, when the
/// system says.
pub fn free_bytes(store: &Path) -> Option<u64> {
    sizing::Volume::of(store.parent()?)
        .ok()
        .flatten()
        .map(|volume| volume.free_bytes)
}

#[cfg(test)]
mod tests {
    use super::read::Snapshot;
    use super::schema::{Kind, EVENTS, RECORDS};
    use super::write::{load_counters, IncomingEvent, WriteBatch};
    use super::*;
    use crate::domain::model::bare_event;
    use crate::domain::{EventType, Process, Status};
    use redb::{ReadableTable, ReadableTableMetadata};

    fn event(process: &str, kind: EventType, task: Option<&str>, id: &str) -> IncomingEvent {
        let mut event = bare_event(kind, task);
        event.process_id = process.into();
        event.event_id = Some(id.into());
        IncomingEvent {
            event,
            fingerprint: [7; 16],
            received_at: 1_795_600_800_000,
        }
    }

    /// Lays the store out as version 1 did: every record in `records`.
    fn downgrade_to_v1(db: &Database) {
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            let mut events = txn.open_table(EVENTS).unwrap();
            for entry in events.iter().unwrap() {
                let (key, value) = entry.unwrap();
                records.insert(key.value(), value.value()).unwrap();
            }
            events.retain(|_, _| false).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA_VERSION, codec::encode(&1u32).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    /// One event for `apply_all`: process, kind, attributes, event id.
    type AttributedEvent<'a> = (&'a str, EventType, &'a [(&'a str, &'a str)], &'a str);

    /// Applies `events` in one committed transaction.
    fn apply_all(db: &Database, events: &[AttributedEvent<'_>]) {
        let txn = db.begin_write().unwrap();
        let mut batch = WriteBatch::open(&txn, load_counters(&txn).unwrap()).unwrap();
        for (process, kind, attributes, id) in events {
            let mut incoming = event(process, *kind, None, id);
            incoming.event.attributes = attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            batch.apply(&incoming, 1_795_600_800_000).unwrap();
            batch.write_back().unwrap();
        }
        batch.finish().unwrap();
        txn.commit().unwrap();
    }

    fn attributes_of(db: &Database, process: &str) -> Vec<(String, String)> {
        let snapshot = Snapshot::begin(db).unwrap();
        let attributes = snapshot.process(process).unwrap().unwrap().attributes;
        let (with_tasks, _) = snapshot.process_with_tasks(process).unwrap().unwrap();
        assert_eq!(with_tasks.attributes, attributes, "both reads agree");
        attributes.into_iter().collect()
    }

    #[test]
    fn attributes_live_in_their_own_record_and_older_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_writable(&store_path(dir.path()), 1 << 20).unwrap();
        apply_all(
            &db,
            &[(
                "p",
                EventType::ProcessStarted,
                &[("a", "1"), ("b", "2")],
                "e1",
            )],
        );
        let record = |db: &Database, sub_key: &[u8]| -> Option<Vec<u8>> {
            let txn = db.begin_read().unwrap();
            let records = txn.open_table(RECORDS).unwrap();
            let key = schema::record_key(0, Kind::Process, sub_key);
            records
                .get(key.as_slice())
                .unwrap()
                .map(|v| v.value().to_vec())
        };
        let core: Process = codec::decode_evolved(&record(&db, &[]).unwrap()).unwrap();
        assert!(core.attributes.is_empty(), "the process record holds none");
        assert!(record(&db, schema::PROCESS_ATTRIBUTES).is_some());
        let kept = vec![("a".to_string(), "1".to_string()), ("b".into(), "2".into())];
        assert_eq!(attributes_of(&db, "p"), kept);

        // An event without attributes leaves their record as it was.
        let before = record(&db, schema::PROCESS_ATTRIBUTES);
        apply_all(&db, &[("p", EventType::ProcessHeartbeat, &[], "e2")]);
        assert_eq!(record(&db, schema::PROCESS_ATTRIBUTES), before);
        assert_eq!(attributes_of(&db, "p"), kept);

        // A record from before the split, attributes inline: read as it is,
        // and moved out when next written.
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            let mut legacy: Process = codec::decode_evolved(&record(&db, &[]).unwrap()).unwrap();
            legacy.attributes = kept.iter().cloned().collect();
            records
                .insert(
                    schema::record_key(0, Kind::Process, &[]).as_slice(),
                    codec::encode_evolved(&legacy).as_slice(),
                )
                .unwrap();
            records
                .remove(schema::record_key(0, Kind::Process, schema::PROCESS_ATTRIBUTES).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(attributes_of(&db, "p"), kept);
        apply_all(
            &db,
            &[("p", EventType::ProcessProgress, &[("c", "3")], "e3")],
        );
        let core: Process = codec::decode_evolved(&record(&db, &[]).unwrap()).unwrap();
        assert!(core.attributes.is_empty());
        assert_eq!(attributes_of(&db, "p").len(), 3);
        let report = maintenance::verify(&Snapshot::begin(&db).unwrap()).unwrap();
        assert!(report.is_sound(), "{:?}", report.problems);
    }

    fn finished_entries(db: &Database) -> Vec<(u8, i64, u64)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(schema::BY_FINISHED).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| entry.unwrap().0.value())
            .collect()
    }

    fn prefix_entries(db: &Database) -> Vec<(String, u64, String)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(schema::BY_CORRELATION_PREFIX).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, rest) = entry.unwrap();
                let (prefix, ordinal) = key.value();
                (prefix.to_owned(), ordinal, rest.value().to_owned())
            })
            .collect()
    }

    /// Each summary as (type, resolution, start, counts, durations kept,
    /// median, max): what a query reads of it.
    #[allow(clippy::type_complexity)]
    fn duration_entries(db: &Database) -> Vec<(String, u8, i64, [u64; 4], usize, u64, u64)> {
        let snapshot = Snapshot::begin(db).unwrap();
        let txn = snapshot.transaction();
        let table = txn.open_table(schema::DURATIONS).unwrap();
        let mut out = Vec::new();
        for entry in table.iter().unwrap() {
            let (key, _) = entry.unwrap();
            let (kind, resolution, start) = key.value();
            let width = [60_000, 3_600_000, 86_400_000][usize::from(resolution)];
            let summaries = snapshot
                .durations(Some(kind), (start, start + width))
                .unwrap();
            let summary = &summaries[kind];
            out.push((
                kind.to_owned(),
                resolution,
                start,
                summary.counts,
                summary.sketch.count(),
                summary.quantile(0.5).map_or(0, f64::to_bits),
                summary.quantile(1.0).map_or(0, f64::to_bits),
            ));
        }
        out
    }

    fn feed_entries(db: &Database) -> Vec<(u64, Vec<u8>)> {
        let txn = db.begin_read().unwrap();
        let feed = txn.open_table(schema::FEED).unwrap();
        feed.iter()
            .unwrap()
            .map(|entry| {
                let (seq, value) = entry.unwrap();
                (seq.value(), value.value().to_vec())
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]
        /// A version 2 store has no feed and no finished index: the upgrade
        /// builds the feed from the history, replaying each process's
        /// events through the rules, and the index from the records, and
        /// gets exactly the entries the writer would have written.
        #[test]
        fn the_feed_built_from_a_version_2_history_is_the_one_the_writer_writes(
            steps in proptest::collection::vec(
                (0u8..3, proptest::sample::select(EventType::ALL.to_vec()), 0u8..3, 0i64..5),
                1..60,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = store_path(dir.path());
            let db = open_writable(&path, 1 << 20).unwrap();
            let txn = db.begin_write().unwrap();
            let mut batch = WriteBatch::open(&txn, load_counters(&txn).unwrap()).unwrap();
            for (index, (process, kind, task, at)) in steps.iter().enumerate() {
                let task_id = format!("t{task}");
                let task = (kind.scope() == crate::domain::Scope::Task).then_some(task_id.as_str());
                let mut incoming = event(&format!("p{process}"), *kind, task, &format!("e{index}"));
                incoming.event.occurred_at = Some(1_795_600_800_000 + at * 1000);
                if task.is_none() && *at > 0 {
                    incoming.event.correlation_id = Some(format!("order-ü{at}-{process}"));
                    incoming.event.process_type = Some(format!("type{}", at % 2));
                }
                batch.apply(&incoming, 1_795_600_800_000).unwrap();
            }
            batch.finish().unwrap();
            txn.commit().unwrap();
            let written = feed_entries(&db);
            let finished = finished_entries(&db);
            let prefixes = prefix_entries(&db);
            let durations = duration_entries(&db);
            // As version 2 left it: no feed, no finished index, version 2.
            let txn = db.begin_write().unwrap();
            txn.open_table(schema::FEED).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(schema::BY_FINISHED).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(schema::BY_CORRELATION_PREFIX).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(schema::DURATIONS).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA_VERSION, codec::encode(&2u32).as_slice())
                .unwrap();
            txn.commit().unwrap();
            drop(db);
            let db = open_writable(&path, 1 << 20).unwrap();
            proptest::prop_assert_eq!(feed_entries(&db), written);
            // The finished index too, built by the step from version 3, and
            // the prefixes and durations, built by the step from version 4.
            proptest::prop_assert_eq!(finished_entries(&db), finished);
            proptest::prop_assert_eq!(prefix_entries(&db), prefixes);
            proptest::prop_assert_eq!(duration_entries(&db), durations);
        }
    }

    #[test]
    fn a_version_1_store_is_upgraded_on_open_with_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        let db = open_writable(&path, 1 << 20).unwrap();
        let txn = db.begin_write().unwrap();
        let mut batch = WriteBatch::open(&txn, load_counters(&txn).unwrap()).unwrap();
        for (process, kind, task, id) in [
            ("a", EventType::ProcessStarted, None, "e1"),
            ("a", EventType::TaskStarted, Some("t"), "e2"),
            ("b", EventType::ProcessStarted, None, "e3"),
            ("a", EventType::TaskSucceeded, Some("t"), "e4"),
            ("a", EventType::ProcessSucceeded, None, "e5"),
        ] {
            batch
                .apply(&event(process, kind, task, id), 1_795_600_800_000)
                .unwrap();
        }
        batch.finish().unwrap();
        txn.commit().unwrap();
        let history_of = |db: &Database, id: &str| {
            let snapshot = Snapshot::begin(db).unwrap();
            let page = snapshot.history(id, 0, 100).unwrap().unwrap();
            let (process, tasks) = snapshot.process_with_tasks(id).unwrap().unwrap();
            (page.items, process, tasks)
        };
        let before = (history_of(&db, "a"), history_of(&db, "b"));
        assert_eq!(before.0 .0.len(), 4);
        downgrade_to_v1(&db);
        drop(db);

        // Read-only opens cannot upgrade, and say what will.
        let refused = open_read_only(&path, 1 << 20).err().unwrap();
        assert!(matches!(refused, StoreError::Outdated { found: 1, .. }));
        assert!(refused.to_string().contains("processmanager serve"));

        // restore and inspect --file upgrade their private copy, and leave
        // the file they were given as it was.
        let copy = backup::open_checked_copy(&path, dir.path()).unwrap();
        assert_eq!(
            (history_of(&copy.db, "a"), history_of(&copy.db, "b")),
            before
        );
        drop(copy);
        assert!(matches!(
            open_read_only(&path, 1 << 20),
            Err(StoreError::Outdated { found: 1, .. })
        ));

        let db = open_writable(&path, 1 << 20).unwrap();
        assert_eq!((history_of(&db, "a"), history_of(&db, "b")), before);
        let snapshot = Snapshot::begin(&db).unwrap();
        let report = maintenance::verify(&snapshot).unwrap();
        assert!(report.is_sound(), "{:?}", report.problems);
        let txn = db.begin_read().unwrap();
        let records = txn.open_table(RECORDS).unwrap();
        for entry in records.iter().unwrap() {
            let kind = Kind::from_code(entry.unwrap().0.value()[8]).unwrap();
            assert!(!kind.is_event(), "{kind:?} left in records");
        }
        assert_eq!(txn.open_table(EVENTS).unwrap().len().unwrap(), 10);
        drop(db);
        assert!(open_read_only(&path, 1 << 20).is_ok());
    }

    enum Step {
        Event(Box<IncomingEvent>),
        Delete(&'static str),
    }

    #[derive(Clone, Copy)]
    enum Commits {
        /// One transaction a step.
        Step,
        /// One transaction a group of steps, as one batch request.
        Group,
        /// One transaction a group, as one request a step: the writer
        /// writes back after each request.
        GroupWrittenBackEveryStep,
    }

    fn apply_steps(groups: &[&[Step]], commits: Commits) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = open_writable(&store_path(dir.path()), 1 << 20).unwrap();
        let transactions: Vec<&[Step]> = match commits {
            Commits::Step => groups.iter().flat_map(|group| group.chunks(1)).collect(),
            _ => groups.to_vec(),
        };
        for chunk in transactions {
            let txn = db.begin_write().unwrap();
            let mut batch = WriteBatch::open(&txn, load_counters(&txn).unwrap()).unwrap();
            for step in chunk {
                match step {
                    Step::Event(incoming) => {
                        batch.apply(incoming, 1_795_600_800_000).unwrap();
                    }
                    Step::Delete(id) => {
                        batch.delete_process(id, Some(1_795_600_800_000)).unwrap();
                    }
                }
                if let Commits::GroupWrittenBackEveryStep = commits {
                    batch.write_back().unwrap();
                }
            }
            batch.finish().unwrap();
            txn.commit().unwrap();
        }
        (dir, db)
    }

    /// Everything a reader can see: counters, each process with its tasks
    /// and history, and the list pages that each index answers.
    fn visible_state(db: &Database, ids: &[&str]) -> String {
        let snapshot = Snapshot::begin(db).unwrap();
        let report = maintenance::verify(&snapshot).unwrap();
        assert!(report.is_sound(), "{:?}", report.problems);
        let mut state = format!("{:?}\n", snapshot.counters().unwrap());
        for id in ids {
            let process = snapshot.process_with_tasks(id).unwrap();
            let history = snapshot.full_history(id).unwrap();
            state += &format!("{id}: {process:?} {history:?}\n");
        }
        for status in Status::ALL {
            for process_type in [None, Some("import".to_owned())] {
                let query = read::ListQuery {
                    statuses: vec![status],
                    process_type,
                    limit: 100,
                    ..Default::default()
                };
                let page = snapshot.list(&query).unwrap();
                let ids: Vec<_> = page.items.iter().map(|process| &process.id).collect();
                state += &format!("{query:?}: {ids:?}\n");
            }
        }
        let query = read::ListQuery {
            correlation_id: Some("tenant".into()),
            limit: 100,
            ..Default::default()
        };
        let ids: Vec<_> = snapshot
            .list(&query)
            .unwrap()
            .items
            .into_iter()
            .map(|p| p.id)
            .collect();
        state + &format!("tenant: {ids:?}\n")
    }

    #[test]
    fn a_group_ends_as_one_commit_a_request_would() {
        let typed = |process, id| {
            let mut incoming = event(process, EventType::ProcessStarted, None, id);
            incoming.event.process_type = Some("import".into());
            incoming.event.correlation_id = Some("tenant".into());
            Step::Event(Box::new(incoming))
        };
        let plain = |process, kind, task, id| Step::Event(Box::new(event(process, kind, task, id)));
        let before = [
            typed("e", "e1"),
            plain("e", EventType::TaskStarted, Some("t"), "e2"),
            typed("f", "f1"),
        ];
        let steps = [
            // Changed in the group, status and all, then deleted: its index
            // entries are those of the last commit.
            plain("e", EventType::TaskSucceeded, Some("t"), "e3"),
            plain("e", EventType::ProcessSucceeded, None, "e4"),
            Step::Delete("e"),
            plain("f", EventType::ProcessFailed, None, "f2"),
            typed("a", "a1"),
            plain("a", EventType::TaskStarted, Some("t"), "a2"),
            plain("a", EventType::TaskSucceeded, Some("t"), "a3"),
            plain("a", EventType::TaskStarted, Some("u"), "a4"),
            // A duplicate, a reused key and a conflict, all within the group.
            plain("a", EventType::TaskSucceeded, Some("t"), "a3"),
            plain("a", EventType::TaskFailed, Some("t"), "a3"),
            plain("a", EventType::ProcessSucceeded, None, "a5"),
            plain("a", EventType::ProcessFailed, None, "a6"),
            typed("b", "b1"),
            plain("b", EventType::ProcessFailed, None, "b2"),
            // Deleted after changes the group has not written yet, then
            // created again under a new ordinal.
            Step::Delete("a"),
            plain("a", EventType::TaskStarted, Some("t"), "a1"),
            typed("c", "c1"),
            Step::Delete("c"),
            Step::Delete("missing"),
            plain("b", EventType::ProcessSucceeded, None, "b3"),
            plain("d", EventType::ProcessSucceeded, None, "d1"),
        ];
        let ids = ["a", "b", "c", "d", "e", "f"];
        let (_one, grouped) = apply_steps(&[&before, &steps], Commits::Group);
        let (_each, separate) = apply_steps(&[&before, &steps], Commits::Step);
        let (_written, written_back) =
            apply_steps(&[&before, &steps], Commits::GroupWrittenBackEveryStep);
        let state = visible_state(&grouped, &ids);
        assert_eq!(state, visible_state(&separate, &ids));
        assert_eq!(state, visible_state(&written_back, &ids));
        // And the steps did what they say.
        let snapshot = Snapshot::begin(&grouped).unwrap();
        let (a, tasks) = snapshot.process_with_tasks("a").unwrap().unwrap();
        assert_eq!((a.event_count, tasks.len()), (1, 1));
        assert!(snapshot.process("c").unwrap().is_none());
        assert!(snapshot.process("e").unwrap().is_none());
        assert_eq!(
            snapshot.process("f").unwrap().unwrap().status,
            Status::Failed
        );
        assert_eq!(
            snapshot.process("b").unwrap().unwrap().status,
            Status::Failed
        );
    }

    #[test]
    fn verify_finds_an_event_in_the_wrong_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_writable(&store_path(dir.path()), 1 << 20).unwrap();
        let txn = db.begin_write().unwrap();
        let mut batch = WriteBatch::open(&txn, load_counters(&txn).unwrap()).unwrap();
        batch
            .apply(
                &event("a", EventType::ProcessStarted, None, "e1"),
                1_795_600_800_000,
            )
            .unwrap();
        batch.finish().unwrap();
        txn.commit().unwrap();
        downgrade_to_v1(&db);
        let report = maintenance::verify(&Snapshot::begin(&db).unwrap()).unwrap();
        assert!(!report.is_sound());
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.contains("is in the records table")),
            "{:?}",
            report.problems
        );
    }
}
