//! Consistent copies of a store, and opening files that may be damaged.
//!
//! A backup is written table by table from one read transaction, so it is
//! the store exactly as of one commit however long the copy takes and
//! whatever the writer does meanwhile. The copy is itself a store: every
//! command and the daemon open it as they would any other.

use super::layers::Merged;
use super::schema::{
    self, Counters, BY_CORRELATION, BY_CREATED, BY_FINISHED, BY_STALLED, BY_STATUS, BY_TYPE, DUE,
    EVENTS, FEED, FEED_MARKS, META, PROCESS_IDS, RECORDS,
};
use super::{read::Snapshot, StoreError};
use crate::progress::Progress;
use redb::{Builder, Database, Durability, Key, TableDefinition, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Entries copied per write transaction, so that a large store never has
/// to fit in one transaction's memory.
const COPY_CHUNK: usize = 50_000;

/// Copies one table, as `source` merges it, into `target`.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    source: &Merged<'_, K, V>,
    target: &Database,
    definition: TableDefinition<K, V>,
    progress: &Progress,
) -> Result<(), StoreError> {
    let mut entries = source.range::<K::SelfType<'_>>(..)?.peekable();
    loop {
        crate::progress::check()?;
        let mut txn = target.begin_write()?;
        // Only the last commit needs to be durable; it makes all before it so.
        txn.set_durability(Durability::None)?;
        {
            let mut out = txn.open_table(definition)?;
            for copied in 1..=COPY_CHUNK {
                let Some(entry) = entries.next() else { break };
                let (key, value) = entry?;
                out.insert(key.value(), value.value())?;
                if copied.is_multiple_of(4096) {
                    progress.add(4096);
                }
            }
        }
        txn.commit()?;
        if entries.peek().is_none() {
            return Ok(());
        }
    }
}

/// Writes the store as `snapshot` sees it (the store file under whatever
/// is pending, as of one acknowledged group) into a new store file at
/// `path`, durably, and returns the counters it holds. `path` must not
/// exist or be empty. Counts the entries it copies on `progress` (of
/// those the store file holds: a daemon's pending ones come on top).
pub fn write_snapshot(
    snapshot: &Snapshot,
    path: &Path,
    progress: &Progress,
) -> Result<Counters, StoreError> {
    progress.set_total(file_entries(snapshot)?);
    // Everything below reads this one snapshot: the copy is the store as
    // of one group, whatever the writer does meanwhile.
    let counters = snapshot.counters()?;
    let target = Builder::new().set_cache_size(16 << 20).create(path)?;
    {
        let txn = target.begin_write()?;
        schema::create_tables(&txn)?;
        txn.commit()?;
    }
    copy_table(&snapshot.meta(), &target, META, progress)?;
    copy_table(&snapshot.process_ids(), &target, PROCESS_IDS, progress)?;
    copy_table(&snapshot.records(), &target, RECORDS, progress)?;
    copy_table(&snapshot.events(), &target, EVENTS, progress)?;
    copy_table(&snapshot.by_created(), &target, BY_CREATED, progress)?;
    copy_table(&snapshot.by_status(), &target, BY_STATUS, progress)?;
    copy_table(&snapshot.by_type(), &target, BY_TYPE, progress)?;
    copy_table(
        &snapshot.by_correlation(),
        &target,
        BY_CORRELATION,
        progress,
    )?;
    copy_table(&snapshot.feed_entries(), &target, FEED, progress)?;
    copy_table(&snapshot.due(), &target, DUE, progress)?;
    copy_table(&snapshot.by_stalled(), &target, BY_STALLED, progress)?;
    copy_table(&snapshot.by_finished(), &target, BY_FINISHED, progress)?;
    copy_table(&snapshot.feed_marks(), &target, FEED_MARKS, progress)?;
    copy_table(
        &snapshot.by_correlation_prefix(),
        &target,
        schema::BY_CORRELATION_PREFIX,
        progress,
    )?;
    copy_table(
        &snapshot.by_attribute(),
        &target,
        schema::BY_ATTRIBUTE,
        progress,
    )?;
    copy_table(
        &snapshot.duration_summaries(),
        &target,
        schema::DURATIONS,
        progress,
    )?;
    // A final durable commit makes every chunk before it durable.
    target.begin_write()?.commit()?;
    target.close()?;
    Ok(counters)
}

/// The entries of every table of the store file behind `snapshot`.
fn file_entries(snapshot: &Snapshot) -> Result<u64, StoreError> {
    use redb::ReadableTableMetadata;
    let txn = snapshot.file_transaction();
    let mut total = 0;
    for table in txn.list_tables()? {
        total += txn.open_untyped_table(table)?.len()?;
    }
    Ok(total)
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Flushes a file and the directory entry that names it, so a rename
/// survives a crash.
pub fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A file that may have been damaged outside redb, opened through a private
/// copy with redb's integrity check, so that damage is an error rather than
/// a panic and the original is never written.
pub struct CheckedCopy {
    pub db: Database,
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Copies `file` into a temporary directory beside `near` and opens the
/// copy with a full integrity check, counting the bytes it copies on
/// `copying` and waiting on `checking`.
pub fn open_checked_copy(
    file: &Path,
    near: &Path,
    (copying, checking): (&Progress, &Progress),
) -> Result<CheckedCopy, StoreError> {
    if !file.is_file() {
        return Err(StoreError::Missing {
            path: file.to_owned(),
        });
    }
    let dir = tempfile::Builder::new()
        .prefix(".pm-check-")
        .tempdir_in(near)
        .map_err(|error| StoreError::Redb(redb::Error::Io(error)))?;
    let path = dir.path().join(super::STORE_FILE);
    copy_file(file, &path, copying)?;
    copying.finish();
    let db = checking
        .while_waiting(|| {
            Builder::new()
                .set_cache_size(16 << 20)
                .set_check_integrity_on_open(true)
                .open(&path)
        })
        .map_err(|error| StoreError::Damaged {
            path: file.to_owned(),
            detail: error.to_string(),
        })?;
    checking.finish();
    super::check_schema(file, &db)?;
    Ok(CheckedCopy {
        db,
        _dir: dir,
        path,
    })
}

/// Copies `from` to `to`, counting the bytes on `progress`, and stops
/// when asked to (the caller removes what was copied).
fn copy_file(from: &Path, to: &Path, progress: &Progress) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |error: std::io::Error| StoreError::Redb(redb::Error::Io(error));
    let mut source = File::open(from).map_err(io)?;
    progress.set_total(source.metadata().map_err(io)?.len());
    let mut target = File::create(to).map_err(io)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        crate::progress::check()?;
        let read = source.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        target.write_all(&buffer[..read]).map_err(io)?;
        progress.add(read as u64);
    }
    target.sync_all().map_err(io)
}

impl CheckedCopy {
    /// Closes the checked copy and moves it to `target`, replacing what is
    /// there; the copy sits beside `target`, so the move is one rename.
    pub fn install(self, target: &Path) -> Result<(), StoreError> {
        let CheckedCopy {
            db,
            _dir: dir,
            path,
        } = self;
        db.close()?;
        let io = |error: std::io::Error| StoreError::Redb(redb::Error::Io(error));
        std::fs::rename(&path, target).map_err(io)?;
        // The write logs of the store just replaced belong to it alone.
        super::durability::remove_beside(target).map_err(io)?;
        sync_file_and_dir(target).map_err(io)?;
        drop(dir);
        Ok(())
    }
}
