//! A write log: one of two preallocated files beside the store
//! (`processmanager.redb.groups` and `processmanager.redb.groups.2`), each
//! holding groups acknowledged since the store's last apply step, one
//! framed record each (`framing`, magic "PMG1"). `super` says when records
//! are appended and replayed, and when a log starts over.
//!
//! A record counts only if its number follows the one before it, so the
//! records of earlier rounds that a shorter round did not overwrite, and a
//! record torn by a crash, end the log.

use super::framing::{self, HEADER_BYTES};
use super::LogFile;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The size of the log file, unless told otherwise.
pub const DEFAULT_LOG_BYTES: u64 = 32 << 20;
/// The smallest log: room for a few groups of single events.
const MIN_LOG_BYTES: u64 = 64 << 10;

const MAGIC: u32 = 0x504d_4731; // "PMG1"

/// The two log files of a store file.
pub fn log_paths(store: &Path) -> [PathBuf; 2] {
    [".groups", ".groups.2"].map(|suffix| {
        let mut name = store.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// One group read back from the log: its number and payload.
use super::framing::Record as LoggedGroup;

/// True when a log of a store file holds groups numbered after
/// `durable`, which the store file lacks until a writer replays them.
pub fn has_pending(store: &Path, durable: u64) -> io::Result<bool> {
    let ino = std::fs::metadata(store)?.ino();
    for path in log_paths(store) {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if !pending_in(&file, ino, durable)?.0.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Debug)]
pub struct WriteLog {
    file: Box<dyn LogFile>,
    ino: u64,
    /// The size asked for; the file takes it when the log starts over.
    capacity: u64,
    /// Where records may end now: the file's size, which is `capacity`
    /// unless pending groups were kept in a larger file.
    limit: u64,
    /// Where the next record goes.
    pos: u64,
    /// The record being built: room for its header, then its payload.
    buffer: Vec<u8>,
}

impl WriteLog {
    /// Opens (or creates) the two logs of a store file, `total` bytes long
    /// together. Each takes its size when it next starts over.
    pub fn open_pair(store: &Path, total: u64) -> io::Result<[WriteLog; 2]> {
        let ino = std::fs::metadata(store)?.ino();
        let [first, second] = log_paths(store).map(|path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        });
        Ok([
            WriteLog::on(Box::new(first?), ino, Some(total / 2))?,
            WriteLog::on(Box::new(second?), ino, Some(total / 2))?,
        ])
    }

    /// The log in `file`, of the store file with inode `ino`.
    pub fn on(file: Box<dyn LogFile>, ino: u64, capacity: Option<u64>) -> io::Result<WriteLog> {
        let len = file.size()?;
        let capacity = match capacity {
            Some(capacity) => capacity.max(MIN_LOG_BYTES),
            None if len == 0 => DEFAULT_LOG_BYTES,
            None => len.max(MIN_LOG_BYTES),
        };
        Ok(WriteLog {
            file,
            ino,
            capacity,
            limit: len.min(capacity),
            pos: 0,
            buffer: Vec::new(),
        })
    }

    /// The groups numbered after `durable`, in order: what the last
    /// process logged and acknowledged after its last durable commit.
    pub fn pending(&self, durable: u64) -> io::Result<Vec<LoggedGroup>> {
        Ok(pending_in(&*self.file, self.ino, durable)?.0)
    }

    /// Makes the file `capacity` bytes of real zeros where it is shorter
    /// (writing into a hole would make every sync write the block map),
    /// and starts the log over. Call once the store holds every pending
    /// group durably.
    pub fn start_over(&mut self) -> io::Result<()> {
        self.size(true)?;
        self.pos = 0;
        Ok(())
    }

    /// Brings the file to `capacity`: grows it always, shrinks it only
    /// when `shrink` (nothing in it is needed any more).
    fn size(&mut self, shrink: bool) -> io::Result<()> {
        let len = self.file.size()?;
        self.limit = if shrink {
            self.capacity
        } else {
            len.max(self.capacity)
        };
        if len != self.limit {
            if len > self.limit {
                self.file.set_len(self.limit)?;
            } else {
                let zeros = vec![0u8; 1 << 20];
                let mut at = len;
                while at < self.limit {
                    let n = (self.limit - at).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
            }
            self.file.sync_all()?;
        }
        Ok(())
    }

    /// The size the log takes when it starts over.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of records since the log started over.
    pub fn written(&self) -> u64 {
        self.pos
    }

    /// Appends group `number` and syncs it; `false`, with nothing written,
    /// when the record does not fit in what is left of the log.
    pub fn append(&mut self, number: u64, payload: &[u8]) -> io::Result<bool> {
        let len = (HEADER_BYTES + payload.len()) as u64;
        if self.pos + len > self.limit || payload.len() > u32::MAX as usize {
            return Ok(false);
        }
        self.buffer.clear();
        self.buffer.resize(HEADER_BYTES, 0);
        self.buffer.extend_from_slice(payload);
        framing::seal(&mut self.buffer, MAGIC, number, self.ino);
        self.file.write_all_at(&self.buffer, self.pos)?;
        self.file.sync_data()?;
        self.pos += len;
        Ok(true)
    }
}

/// The groups of a log numbered after `durable`, in order, and where the
/// log's valid records end.
fn pending_in(
    file: &(impl LogFile + ?Sized),
    ino: u64,
    durable: u64,
) -> io::Result<(Vec<LoggedGroup>, u64)> {
    let len = file.size()?;
    let mut groups = Vec::new();
    let mut pos = 0;
    let mut previous: Option<u64> = None;
    while let Some(group) = framing::read(file, MAGIC, ino, pos, len)? {
        if previous.is_some_and(|previous| group.number != previous + 1) {
            break;
        }
        pos += (HEADER_BYTES + group.payload.len()) as u64;
        previous = Some(group.number);
        if group.number > durable {
            groups.push(group);
        }
    }
    Ok((groups, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> WriteLog {
        let store = dir.join("store");
        if !store.exists() {
            std::fs::write(&store, b"").unwrap();
        }
        let [mut log, _] = WriteLog::open_pair(&store, 2 * MIN_LOG_BYTES).unwrap();
        log.start_over().unwrap();
        log
    }

    fn reopened(dir: &Path) -> WriteLog {
        let [log, _] = WriteLog::open_pair(&dir.join("store"), 2 * MIN_LOG_BYTES).unwrap();
        log
    }

    fn numbers(groups: &[LoggedGroup]) -> Vec<u64> {
        groups.iter().map(|group| group.number).collect()
    }

    #[test]
    fn groups_after_the_durable_one_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        for number in 1..=5 {
            assert!(log.append(number, &[number as u8; 100]).unwrap());
        }
        let pending = reopened(dir.path()).pending(3).unwrap();
        assert_eq!(numbers(&pending), [4, 5]);
        assert_eq!(pending[0].payload, [4u8; 100]);
    }

    #[test]
    fn a_shorter_round_ends_where_the_earlier_round_begins_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        for number in 1..=6 {
            log.append(number, &[1; 50]).unwrap();
        }
        // An apply step holds group 6; the next round is shorter.
        log.start_over().unwrap();
        log.append(7, &[2; 50]).unwrap();
        log.append(8, &[2; 50]).unwrap();
        assert_eq!(numbers(&log.pending(6).unwrap()), [7, 8]);
    }

    #[test]
    fn right_after_an_apply_step_nothing_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        for number in 1..=6 {
            log.append(number, &[1; 50]).unwrap();
        }
        // The process died after the apply step that holds group 6,
        // before the next round wrote anything.
        log.start_over().unwrap();
        assert!(log.pending(6).unwrap().is_empty());
    }

    #[test]
    fn a_torn_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(1, &[1; 100]).unwrap();
        log.append(2, &[2; 100]).unwrap();
        log.append(3, &[3; 100]).unwrap();
        // The second record's payload only half reached the disk.
        let second = (HEADER_BYTES + 100 + HEADER_BYTES + 50) as u64;
        log.file.write_all_at(&[0; 50], second).unwrap();
        assert_eq!(numbers(&log.pending(0).unwrap()), [1]);
    }

    #[test]
    fn a_log_never_replays_onto_a_file_that_replaced_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(1, &[1; 10]).unwrap();
        let store = dir.path().join("store");
        assert!(has_pending(&store, 0).unwrap());
        // A restore renames another file into place.
        let restored = dir.path().join("restored");
        std::fs::write(&restored, b"").unwrap();
        std::fs::rename(&restored, &store).unwrap();
        assert!(!has_pending(&store, 0).unwrap());
    }

    #[test]
    fn either_log_may_hold_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::write(&store, b"").unwrap();
        let [mut first, mut second] = WriteLog::open_pair(&store, 2 * MIN_LOG_BYTES).unwrap();
        first.start_over().unwrap();
        second.start_over().unwrap();
        second.append(1, &[1; 10]).unwrap();
        assert!(has_pending(&store, 0).unwrap());
        assert!(!has_pending(&store, 1).unwrap());
    }

    #[test]
    fn a_smaller_size_is_taken_when_the_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::write(&store, b"").unwrap();
        let [mut large, _] = WriteLog::open_pair(&store, 8 * MIN_LOG_BYTES).unwrap();
        large.start_over().unwrap();
        let far = 3 * MIN_LOG_BYTES as usize / 2;
        large.append(1, &vec![1; far]).unwrap();
        large.append(2, &[2; 10]).unwrap();
        // Restarted with a smaller log while both groups are pending: they
        // are read whole, and the file shrinks once it starts over.
        let [mut small, _] = WriteLog::open_pair(&store, 2 * MIN_LOG_BYTES).unwrap();
        assert_eq!(numbers(&small.pending(0).unwrap()), [1, 2]);
        small.start_over().unwrap();
        assert_eq!(
            std::fs::metadata(&log_paths(&store)[0]).unwrap().len(),
            MIN_LOG_BYTES
        );
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let big = vec![7u8; MIN_LOG_BYTES as usize];
        assert!(!log.append(1, &big).unwrap());
        assert!(log.pending(0).unwrap().is_empty());
        assert!(log.append(1, &[1; 10]).unwrap());
    }
}
