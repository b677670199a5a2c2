//! When an answer is durable, in one place: the write log, the numbers of
//! write groups, and when a commit is made durable in the store file.
//!
//! The writer applies a group of requests in one redb transaction, then
//! hands it here (`Durability::commit`), and answers once that returns:
//!
//! 1. **Number.** Groups are numbered from 1, one after another. The
//!    transaction records its group's number in the store (`META`,
//!    `logged_group`), so a store knows which groups it holds.
//! 2. **Log.** The group's inputs (its requests and the server clock it
//!    used, encoded by the writer) are appended to the write log
//!    (`write_log`) as one record, written and synced with one
//!    `fdatasync`. From here on the group survives a crash.
//! 3. **Commit.** The transaction is committed without redb's durability:
//!    readers see it at once, and nothing else is synced. Should that
//!    commit fail, the record is taken back out of the log (synced too)
//!    before the failure is answered: nothing of the group remains.
//! 4. **Checkpoint.** Every `CHECKPOINT_GROUPS` groups, once
//!    `CHECKPOINT_BYTES` (or an eighth of a small log) are logged, for a
//!    group whose record does not fit in what is left of the log, and at
//!    a clean stop, the commit is made durable instead, by redb's own
//!    two-phase commit, and the log starts over. The store file alone then
//!    holds every group up to that one.
//! 5. **Recover.** At start, and after the store is reopened following an
//!    I/O error, the groups the log holds numbered after the store's
//!    `logged_group` are applied again, in order, through the writer's
//!    own code (`Durability::recover`). Applying a group is deterministic
//!    given the store before it, its inputs and its clock, so the store
//!    ends exactly where it was, the same seqs included.
//!
//! So a 2xx follows step 2 for its group, and a crash at any moment loses
//! only groups nobody was answered for. The log's records are numbered and
//! checksummed, and carry the store file's inode: a torn record, a stale
//! one from an earlier round, or a log beside a file that replaced its
//! store (a restore) ends replay there (`framing`).
//!
//! Earlier builds also kept a page journal beside the store; a store they
//! left is replayed from it once and the journal deleted
//! (`legacy_journal`).

mod framing;
mod legacy_journal;
#[cfg(test)]
pub mod simulated;
mod write_log;

use super::schema::{self, Counters, META, META_LOGGED_GROUP};
use super::write::{load_counters, WriteBatch};
use super::{codec, StoreError};
use redb::{Database, ReadableDatabase, WriteTransaction};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
pub use write_log::{log_path, WriteLog, DEFAULT_LOG_BYTES};

/// Groups committed without redb's durability between two durable
/// commits, at most. A durable commit writes out every page changed since
/// the last, scattered, and syncs twice, while writes wait; with runs
/// interleaved, nearly every event changes pages of its own, so rarer
/// durable commits pay off: at 10,000 active runs, 500 instead of 50 took
/// single events from 0.185x to 0.246x of the HTTP floor and their p99
/// from 33 ms to 9 ms (`cargo bench --bench write_path`).
pub const CHECKPOINT_GROUPS: u32 = 500;
/// Or fewer, once this much is logged. What the log holds is what a start
/// after a crash applies again: 2 MiB of small batched events (about
/// 50,000) replay in about half a second. 8 MiB measured no faster than
/// 2 MiB at 10,000 active runs, and took 1.5 s to replay. A log smaller
/// than 16 MiB (on a small volume) takes an eighth of its size instead:
/// applying logged groups again needs room on the disk in proportion to
/// what it applies, and after an I/O error on a full volume there is
/// little left.
pub const CHECKPOINT_BYTES: u64 = 2 << 20;

/// A logged group read back for recovery: its number and what the writer
/// encoded.
pub use framing::Record as LoggedGroup;

/// The write log of one store and where the writer is in it.
pub struct Durability {
    log: WriteLog,
    /// The number of the last group committed.
    number: u64,
    quick_repair: bool,
}

impl Durability {
    /// Opens the write log of the store at `path` (`log_bytes` long) and
    /// recovers the store (`recover`). Returns the counters as of the last
    /// group.
    pub fn open(
        db: &Database,
        path: &Path,
        log_bytes: u64,
        quick_repair: bool,
        apply: impl FnMut(&mut WriteBatch<'_>, &LoggedGroup) -> Result<(), StoreError>,
    ) -> Result<(Durability, Counters), StoreError> {
        let log = WriteLog::open(path, Some(log_bytes)).map_err(io_error)?;
        Durability::with_log(db, log, quick_repair, apply)
    }

    /// `open`, with a write log already open.
    pub fn with_log(
        db: &Database,
        log: WriteLog,
        quick_repair: bool,
        apply: impl FnMut(&mut WriteBatch<'_>, &LoggedGroup) -> Result<(), StoreError>,
    ) -> Result<(Durability, Counters), StoreError> {
        let mut durability = Durability {
            log,
            number: 0,
            quick_repair,
        };
        let counters = durability.recover(db, apply)?;
        Ok((durability, counters))
    }

    /// Applies the groups logged after the store's last durable commit, in
    /// order, with `apply`, in one transaction committed without redb's
    /// durability (the log keeps them until the next checkpoint, so that
    /// this needs no sync). Returns the counters.
    pub fn recover(
        &mut self,
        db: &Database,
        mut apply: impl FnMut(&mut WriteBatch<'_>, &LoggedGroup) -> Result<(), StoreError>,
    ) -> Result<Counters, StoreError> {
        let mut txn = self.begin(db)?;
        let durable = schema::logged_group(&txn.open_table(META)?)?;
        let groups = self.log.pending(durable).map_err(io_error)?;
        let Some(last) = groups.last().map(|group| group.number) else {
            let counters = load_counters(&txn)?;
            txn.abort()?;
            self.log.start_over().map_err(io_error)?;
            self.number = durable;
            return Ok(counters);
        };
        let mut batch = WriteBatch::open(&txn, load_counters(&txn)?)?;
        for group in &groups {
            tracing::debug!(number = group.number, "replaying a logged group");
            apply(&mut batch, group)?;
        }
        let counters = batch.finish()?;
        set_logged_group(&txn, last)?;
        txn.set_durability(redb::Durability::None)?;
        txn.commit()?;
        self.log.append_after_pending(durable).map_err(io_error)?;
        self.number = last;
        tracing::info!(
            groups = groups.len(),
            "replayed the write log: the groups acknowledged after the last durable commit"
        );
        Ok(counters)
    }

    /// A write transaction for the next group.
    pub fn begin(&self, db: &Database) -> Result<WriteTransaction, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(self.quick_repair);
        Ok(txn)
    }

    /// Makes the group applied in `txn` durable and visible: logs `record`
    /// (built only when it is logged) and commits without redb's
    /// durability, or at a checkpoint commits durably and starts the log
    /// over. On an error nothing of the group is kept, in the log or the
    /// store.
    pub fn commit(
        &mut self,
        mut txn: WriteTransaction,
        record: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), StoreError> {
        let number = self.number + 1;
        set_logged_group(&txn, number)?;
        let logged = self.log.groups() < CHECKPOINT_GROUPS
            && self.log.written() < CHECKPOINT_BYTES.min(self.log.capacity() / 8)
            && match self.log.append(number, &record()) {
                Ok(fits) => fits,
                Err(error) => exit_after_logging(&error),
            };
        if logged {
            let committed = txn
                .set_durability(redb::Durability::None)
                .map_err(StoreError::from)
                .and_then(|()| txn.commit().map_err(StoreError::from));
            if let Err(error) = committed {
                // Not applied: take it out of the log before saying so.
                if let Err(retract) = self.log.retract_last() {
                    exit_after_logging(&retract);
                }
                return Err(error);
            }
        } else {
            txn.commit()?;
            self.log
                .start_over()
                .unwrap_or_else(|error| exit_after_logging(&error));
        }
        self.number = number;
        Ok(())
    }

    /// Makes everything committed durable in the store file, so that it is
    /// whole without its log; at a clean stop.
    pub fn checkpoint(&mut self, db: &Database) -> Result<(), StoreError> {
        if self.log.groups() == 0 {
            return Ok(());
        }
        let txn = self.begin(db)?;
        set_logged_group(&txn, self.number)?;
        txn.commit()?;
        self.log.start_over().map_err(io_error)
    }
}

/// What the write log needs of its file: `std::fs::File`, or in tests a
/// disk that can lose power (`simulated`).
pub trait LogFile: std::fmt::Debug + Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the data written so far durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the data and the file's size durable.
    fn sync_all(&self) -> io::Result<()>;
}

impl LogFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// Records in the store that it holds write group `number`.
fn set_logged_group(txn: &WriteTransaction, number: u64) -> Result<(), StoreError> {
    txn.open_table(META)?
        .insert(META_LOGGED_GROUP, codec::encode(&number).as_slice())?;
    Ok(())
}

/// Leaves nothing half-applied: an error after the group is in the log
/// would make the store and the log tell different stories.
fn exit_after_logging(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "a logged group could not be committed; exiting so that a supervisor restarts the daemon, which replays the log");
    std::process::exit(1);
}

fn io_error(error: io::Error) -> StoreError {
    StoreError::Redb(redb::Error::Io(error))
}

/// True when the write log of the store at `path` holds groups the store
/// file lacks: a daemon crashed after acknowledging them, and only a
/// daemon (`Durability::recover`) applies them.
pub fn needs_recovery(path: &Path, db: &impl ReadableDatabase) -> Result<bool, StoreError> {
    let durable = schema::logged_group(&db.begin_read()?.open_table(META)?)?;
    write_log::has_pending(path, durable)
        .map_err(|error| failed_beside(path, "read the write log", error))
}

/// True when an earlier build's journal holds pages the store file lacks
/// (`legacy_journal`), which only a writable open replays.
pub fn needs_journal_replay(path: &Path) -> Result<bool, StoreError> {
    legacy_journal::has_pending_records(path)
        .map_err(|error| failed_beside(path, "read the journal", error))
}

/// Opens the store file for writing (creating it when missing), after
/// replaying the journal an earlier build may have left beside it.
pub fn open_store_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error)?;
    legacy_journal::replay_and_remove(path, &file).map_err(|error| match error.kind() {
        io::ErrorKind::WouldBlock => StoreError::Locked {
            path: path.to_owned(),
        },
        // Reading the journal, writing its pages to the store file, or
        // removing it: the error names which.
        _ => failed_beside(path, "apply the journal an earlier build left", error),
    })?;
    Ok(file)
}

/// Removes what is kept beside a store file that is about to be replaced.
pub fn remove_beside(store: &Path) -> io::Result<()> {
    legacy_journal::remove(store)?;
    remove_if_there(&log_path(store))
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Doing `what` with a file kept beside the store failed.
fn failed_beside(path: &Path, what: &str, error: io::Error) -> StoreError {
    StoreError::Redb(redb::Error::Io(io::Error::new(
        error.kind(),
        format!("cannot {what} beside {}: {error}", path.display()),
    )))
}
