//! When an answer is durable, in one place: the write logs, the numbers of
//! write groups, and the apply steps that make the store file hold them.
//!
//! The writer applies a group of requests into the pending layers
//! (`store::layers`), then hands its record here, and answers once that
//! returns:
//!
//! 1. **Number.** Groups are numbered from 1, one after another; a group's
//!    number is the version of everything it put in the layers.
//! 2. **Log.** The group's inputs (its requests and the server clock it
//!    used, encoded by the writer) are appended to the current write log
//!    (`write_log`) as one record, written and synced with one
//!    `fdatasync`. From here on the group survives a crash, and readers
//!    may see it.
//! 3. **Apply.** Many groups later the writer freezes the active layer,
//!    turns to the other write log (empty by then), and a second thread
//!    writes the frozen layer into the store file in one durable redb
//!    commit (`apply_step`), each table in key order and each key once,
//!    with the number of the last group it holds (`META`,
//!    `logged_group`). The log that held those groups then starts over.
//!    A group whose record is too large for a write log is made durable
//!    by an apply step of its own instead.
//! 4. **Recover.** At start, the groups the two logs hold numbered after
//!    the store's `logged_group` are applied again, in order, through the
//!    writer's own code, into layers applied in one step
//!    (`Durability::open`). Applying a group is deterministic given the
//!    state before it, its inputs and its clock, so the store ends exactly
//!    where it was, the same seqs included.
//!
//! So a 2xx follows step 2 for its group, and a crash at any moment loses
//! only groups nobody was answered for. The logs' records are numbered
//! and checksummed, and carry the store file's inode: a torn record, a
//! stale one from an earlier round, or a log beside a file that replaced
//! its store (a restore) ends replay there (`framing`).

mod framing;
#[cfg(test)]
pub mod simulated;
mod write_log;

use super::layers::{Applied, LayerSet, SharedLayer, Writing};
use super::schema::{self, Counters, META, META_LOGGED_GROUP};
use super::write::{load_counters, WriteBatch};
use super::StoreError;
use crate::codec;
use crate::progress::{Progress, Show, Unit};
use redb::{Database, ReadableDatabase};
use std::io;
use std::path::Path;
pub use write_log::{log_paths, WriteLog, DEFAULT_LOG_BYTES};

/// A logged group read back for recovery: its number and what the writer
/// encoded.
pub use framing::Record as LoggedGroup;

/// The two write logs of one store and where the writer is in them.
pub struct Durability {
    logs: [WriteLog; 2],
    /// The log new groups go to; the other holds the groups of the apply
    /// step under way, or nothing.
    current: usize,
    /// The number of the last group made, logged or applied.
    number: u64,
    quick_repair: bool,
}

/// Whether a group's record went into the current write log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Logged and synced: the group is durable.
    Yes,
    /// The current log has no room for it: turn to the other log (once the
    /// apply step under way, if any, is done) and try again.
    NoRoom,
    /// No write log could ever hold it: make it durable by an apply step.
    TooLarge,
}

impl Durability {
    /// Opens the two write logs of the store at `path` (`log_bytes` long
    /// in all) and recovers the store: the groups the logs hold that the
    /// store file lacks are applied again with `replay`, and written to
    /// the store file in one durable step. Returns the counters as of the
    /// last group.
    pub fn open(
        db: &Database,
        path: &Path,
        log_bytes: u64,
        quick_repair: bool,
        replay: impl FnMut(&mut WriteBatch<'_>, &LoggedGroup) -> Result<(), StoreError>,
    ) -> Result<(Durability, Counters), StoreError> {
        let logs = WriteLog::open_pair(path, log_bytes).map_err(io_error)?;
        Durability::with_logs(db, logs, quick_repair, replay)
    }

    /// `open`, with the write logs already open.
    pub fn with_logs(
        db: &Database,
        mut logs: [WriteLog; 2],
        quick_repair: bool,
        mut replay: impl FnMut(&mut WriteBatch<'_>, &LoggedGroup) -> Result<(), StoreError>,
    ) -> Result<(Durability, Counters), StoreError> {
        let durable = schema::logged_group(&db.begin_read()?.open_table(META)?)?;
        let mut groups = Vec::new();
        for log in &logs {
            groups.extend(log.pending(durable).map_err(io_error)?);
        }
        groups.sort_by_key(|group| group.number);
        // Only an unbroken run after the store's last group counts.
        let unbroken = groups
            .iter()
            .zip(durable + 1..)
            .take_while(|(group, number)| group.number == *number)
            .count();
        groups.truncate(unbroken);
        let applied = Applied::begin(db)?;
        let mut counters = load_counters(&applied.transaction().open_table(META)?)?;
        let mut number = durable;
        if let Some(last) = groups.last().map(|group| group.number) {
            let layer = SharedLayer::default();
            let progress = Progress::new(
                "replaying the write logs",
                Unit::Groups,
                groups.len() as u64,
                Show::Log,
            );
            for group in &groups {
                tracing::debug!(number = group.number, "replaying a logged group");
                let writing = Writing::new(None, layer.clone(), group.number);
                let mut batch = WriteBatch::open(&writing, &applied, counters)?;
                replay(&mut batch, group)?;
                counters = batch.finish()?;
                progress.add(1);
            }
            progress.finish();
            drop(applied);
            apply_step(
                db,
                &[&layer.read().unwrap_or_else(|e| e.into_inner())],
                last,
                quick_repair,
            )?;
            number = last;
            tracing::info!(
                groups = groups.len(),
                "replayed the write logs: the groups acknowledged after the last apply step"
            );
        }
        for log in &mut logs {
            log.start_over().map_err(io_error)?;
        }
        Ok((
            Durability {
                logs,
                current: 0,
                number,
                quick_repair,
            },
            counters,
        ))
    }

    /// The number the next group gets.
    pub fn next_number(&self) -> u64 {
        self.number + 1
    }

    pub fn quick_repair(&self) -> bool {
        self.quick_repair
    }

    /// Logs the record of group `next_number()` in the current log, and
    /// syncs it. An I/O error here leaves the log and the layers telling
    /// different stories, so it ends the process (a supervisor restarts
    /// the daemon, which replays what was logged).
    pub fn log(&mut self, record: &[u8]) -> Logged {
        let log = &mut self.logs[self.current];
        if record.len() as u64 + framing::HEADER_BYTES as u64 > log.capacity() {
            return Logged::TooLarge;
        }
        match log.append(self.number + 1, record) {
            Ok(true) => {
                self.number += 1;
                Logged::Yes
            }
            Ok(false) => Logged::NoRoom,
            Err(error) => exit_after_logging(&error),
        }
    }

    /// Group `next_number()` was made durable by an apply step of its own.
    pub fn applied_unlogged(&mut self) {
        self.number += 1;
    }

    /// Bytes of records in the current log.
    pub fn written(&self) -> u64 {
        self.logs[self.current].written()
    }

    /// The size of each log.
    pub fn capacity(&self) -> u64 {
        self.logs[self.current].capacity()
    }

    /// Turns to the other log for the groups from now on. Call once the
    /// store file holds every group the other log held (no apply step is
    /// under way).
    pub fn turn(&mut self) {
        self.current = 1 - self.current;
    }

    /// The store file holds every group up to the last one made: both logs
    /// start over, the current one included.
    pub fn all_applied(&mut self) {
        for log in &mut self.logs {
            if let Err(error) = log.start_over() {
                exit_after_logging(&error);
            }
        }
    }

    /// The store file holds the groups of the log that is not current
    /// (the apply step of them is done): it starts over.
    pub fn other_applied(&mut self) {
        if let Err(error) = self.logs[1 - self.current].start_over() {
            exit_after_logging(&error);
        }
    }
}

/// Writes frozen layers (oldest first) into the store file, with the
/// number of the last group they hold, in one durable commit; returns how
/// many keys it wrote. On an error nothing of them is in the store file.
pub fn apply_step(
    db: &Database,
    layers: &[&LayerSet],
    last_group: u64,
    quick_repair: bool,
) -> Result<u64, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(quick_repair);
    let mut written = 0;
    for layer in layers {
        written += layer.apply_to(&txn)?;
    }
    txn.open_table(META)?
        .insert(META_LOGGED_GROUP, codec::encode(&last_group).as_slice())?;
    txn.commit()?;
    Ok(written)
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

impl LogFile for std::fs::File {
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
        std::fs::File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        std::fs::File::sync_all(self)
    }
}

/// Leaves nothing half-applied: an error after the group is in the log
/// would make the store and the log tell different stories.
fn exit_after_logging(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "the write log failed; exiting so that a supervisor restarts the daemon, which replays the log");
    std::process::exit(1);
}

fn io_error(error: io::Error) -> StoreError {
    StoreError::Redb(redb::Error::Io(error))
}

/// True when the write logs of the store at `path` hold groups the store
/// file lacks: a daemon crashed after acknowledging them, and only a
/// daemon (`Durability::open`) applies them.
pub fn needs_recovery(path: &Path, db: &impl ReadableDatabase) -> Result<bool, StoreError> {
    let durable = schema::logged_group(&db.begin_read()?.open_table(META)?)?;
    write_log::has_pending(path, durable)
        .map_err(|error| failed_beside(path, "read the write log", error))
}

/// Removes what is kept beside a store file that is about to be replaced.
pub fn remove_beside(store: &Path) -> io::Result<()> {
    for path in log_paths(store) {
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Doing `what` with a file kept beside the store failed.
fn failed_beside(path: &Path, what: &str, error: io::Error) -> StoreError {
    StoreError::Redb(redb::Error::Io(io::Error::new(
        error.kind(),
        format!("cannot {what} beside {}: {error}", path.display()),
    )))
}
