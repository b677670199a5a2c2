//! Opening a store: for the daemon's writer (creating a new one), for the
//! tools (read-only, or held so that no daemon starts on it), and the
//! schema check that refuses what this build cannot read.

use super::durability;
use super::error::StoreError;
use super::schema::{
    self, Counters, META, META_COUNTERS, META_SCHEMA_VERSION, META_STORE_ID, SCHEMA_VERSION,
};
use super::sizing;
use crate::codec;
use redb::backends::FileBackend;
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    TableHandle,
};
use std::path::Path;

fn builder(cache_bytes: usize) -> Builder {
    let mut builder = Builder::new();
    builder
        .set_cache_size(cache_bytes)
        // The daemon holds the file alone; the tools read a live store
        // through it.
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

/// The store file under redb, opened (or created) for writing.
fn backend(path: &Path) -> Result<FileBackend, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| StoreError::Redb(redb::Error::Io(error)))?;
    FileBackend::new(file).map_err(|error| map_open_error(path, error))
}

/// Opens the store for the daemon's writer, which recovers what its write
/// log holds (`durability::Durability::open`): creates the store and its
/// tables when missing, and checks its schema version.
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

/// Checks the schema version of a store just opened for writing, or makes
/// a new one: its tables, its meta, and its id.
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
            // Made once, with the store: backups, restores and compaction
            // keep it; a new store gets a new one.
            meta.insert(
                META_STORE_ID,
                codec::encode(&uuid::Uuid::new_v4().to_string()).as_slice(),
            )?;
        }
    }
    // Create every table, so that readers never meet a missing one.
    schema::create_tables(&txn)?;
    txn.commit()?;
    Ok(db)
}

/// Opens an existing store, or a backup file, read-only; it may be in use
/// by a daemon. Checks the schema version.
pub fn open_read_only(path: &Path, cache_bytes: usize) -> Result<ReadOnlyDatabase, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
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
/// contents (no schema check): only to hold it, so that no
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
