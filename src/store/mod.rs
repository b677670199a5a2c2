//! The redb store: tables and their layout, the codec, the schema version,
//! the write path the writer thread drives, and the read queries.

pub mod backup;
pub mod codec;
pub mod maintenance;
pub mod read;
pub mod schema;
pub mod write;

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
    #[error("{} is not a ProcessManager store; point --data-dir at a ProcessManager data directory, or move the file away to start a new store", path.display())]
    NotAStore { path: PathBuf },
    #[error("{} is damaged and cannot be used ({detail}); restore it from another backup", path.display())]
    Damaged { path: PathBuf, detail: String },
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
        // Lets `inspect` and `backup --data-dir` open the file read-only
        // while the daemon writes.
        .set_concurrency_mode(ConcurrencyMode::SingleWriter);
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
/// and checks its schema version.
pub fn open_writable(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let db = builder(cache_bytes)
        .create(path)
        .map_err(|error| map_open_error(path, error))?;
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
        }
    }
    // Create every table, so that readers never meet a missing one.
    txn.open_table(schema::PROCESS_IDS)?;
    txn.open_table(schema::RECORDS)?;
    txn.open_table(schema::BY_CREATED)?;
    txn.open_table(schema::BY_STATUS)?;
    txn.open_table(schema::BY_TYPE)?;
    txn.open_table(schema::BY_CORRELATION)?;
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
        .map_err(|error| map_open_error(path, error))?;
    check_schema(path, &db)?;
    Ok(db)
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
