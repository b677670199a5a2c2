//! The file under the store: redb's own file backend with a write-ahead
//! journal in front of its syncs.
//!
//! A durable redb commit writes its pages where they live in the file,
//! scattered, and syncs twice (its two-phase commit, which quick repair
//! needs). Syncing scattered pages is what such a commit spends most of its
//! time on: on this machine's virtio disk each page is its own request. So
//! every write still goes to its place in the store file at once (where
//! redb reads it back, and where a checkpoint's sync finds it), and is also
//! appended to a journal; where redb asks for a sync, the journal gets the
//! one sequential write and the `fdatasync`, and the store file is left to
//! the kernel. (Most commits are not durable ones any more: the write log,
//! `store::grouplog`, makes groups durable in between.)
//!
//! Two journal files take turns. When the active one is full, writing goes
//! on in the other, and a background thread syncs the store file once,
//! which makes everything the full journal holds durable in place (a
//! checkpoint); only then may that journal be written over.
//!
//! After a crash, opening the store for writing first replays the journals,
//! oldest first, onto the store file: the result is what the store file
//! would hold had every acknowledged sync gone to it directly. Replay stops
//! at the first record that is torn or belongs to an earlier round, so a
//! record that was being written when the process died counts as never
//! written, as an unsynced write does for redb. Records carry the store
//! file's inode, so a journal never replays onto a file that replaced its
//! store (a restore).

use super::framing::{self, Record, HEADER_BYTES};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The size of each of the two journal files, unless told otherwise.
pub const DEFAULT_JOURNAL_BYTES: u64 = 32 << 20;
/// The smallest journal: a record must fit in it with room to spare.
const MIN_JOURNAL_BYTES: u64 = 64 << 10;
/// Entries are written out once this much is waiting, even between syncs,
/// so that a large transaction does not gather in memory; a quarter of the
/// journal at most.
const FLUSH_BYTES: usize = 4 << 20;
/// A write larger than this is journaled in pieces, so that every record
/// fits in an empty journal; an eighth of the journal at most.
const PIECE_BYTES: usize = 1 << 20;

const MAGIC: u32 = 0x504d_4a31; // "PMJ1"
const TAG_WRITE: u8 = 1;
const TAG_SET_LEN: u8 = 2;
const ENTRY_HEADER_BYTES: usize = 13;

/// The journal files of a store file.
pub fn journal_paths(store: &Path) -> [PathBuf; 2] {
    let name = |i: usize| {
        let mut name = store.as_os_str().to_owned();
        name.push(format!(".journal-{i}"));
        PathBuf::from(name)
    };
    [name(0), name(1)]
}

/// True when the store file has journal records that are not yet replayed
/// onto it: its last writer did not stop cleanly, or is still running.
pub fn has_pending_records(store: &Path) -> io::Result<bool> {
    let Ok(file) = File::open(store) else {
        return Ok(false);
    };
    let ino = file.metadata()?.ino();
    for path in journal_paths(store) {
        let journal = match File::open(&path) {
            Ok(journal) => journal,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if first_record(&journal, ino, journal.metadata()?.len())?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when the file at `store` is neither missing, nor empty, nor a redb
/// file, and has no journals whose replay could make it one: no journals
/// should be created beside it.
pub fn is_foreign(store: &Path) -> io::Result<bool> {
    const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    if journal_paths(store).iter().any(|path| path.exists()) {
        return Ok(false);
    }
    let file = match File::open(store) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut start = [0u8; REDB_MAGIC.len()];
    if len < start.len() as u64 {
        return Ok(true);
    }
    file.read_exact_at(&mut start, 0)?;
    Ok(start != REDB_MAGIC)
}

/// Removes the journals of a store file that is about to be replaced.
pub fn remove(store: &Path) -> io::Result<()> {
    for path in journal_paths(store) {
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct JournaledFile {
    inner: FileBackend,
    ino: u64,
    state: Mutex<State>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct State {
    journals: [File; 2],
    active: usize,
    /// Where the next record goes in the active journal.
    pos: u64,
    epoch: u64,
    /// The next record: room for its header, then the entries not yet
    /// written out.
    pending: Vec<u8>,
    capacity: u64,
    flush_bytes: usize,
    piece_bytes: usize,
}

/// What the writer and the checkpoint thread share.
#[derive(Debug)]
struct Shared {
    store: File,
    checkpoint: Mutex<Checkpoint>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Checkpoint {
    /// A full journal whose records the store file does not yet hold
    /// durably.
    waiting: Option<usize>,
    failed: Option<io::ErrorKind>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Checkpoint> {
        self.checkpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut checkpoint = self.lock();
        loop {
            if let Some(journal) = checkpoint.waiting {
                drop(checkpoint);
                let synced = self.store.sync_data();
                checkpoint = self.lock();
                match synced {
                    Ok(()) => checkpoint.waiting = None,
                    Err(error) => {
                        tracing::error!(%error, journal, "syncing the store file for a journal checkpoint failed");
                        checkpoint.failed = Some(error.kind());
                        checkpoint.waiting = None;
                    }
                }
                self.changed.notify_all();
            } else if checkpoint.stop {
                return;
            } else {
                checkpoint = self
                    .changed
                    .wait(checkpoint)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Lets the checkpoint thread end once it is idle.
    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Waits until no checkpoint is running.
    fn wait_idle(&self) -> io::Result<()> {
        let mut checkpoint = self.lock();
        while checkpoint.waiting.is_some() {
            checkpoint = self
                .changed
                .wait(checkpoint)
                .unwrap_or_else(|e| e.into_inner());
        }
        match checkpoint.failed {
            Some(kind) => Err(io::Error::new(
                kind,
                "a journal checkpoint failed to sync the store file",
            )),
            None => Ok(()),
        }
    }
}

impl JournaledFile {
    /// Opens the store file for writing, replaying its journals first.
    /// Each journal is made `capacity` bytes long; `None` keeps their size,
    /// or takes the default for new ones.
    pub fn open(path: &Path, capacity: Option<u64>) -> io::Result<Self> {
        let store = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let ino = store.metadata()?.ino();
        let journals = journal_paths(path).map(|path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        });
        let [first, second] = journals;
        let journals = [first?, second?];
        // Only one writer may replay and append: the lock on the first
        // journal lives as long as this handle. redb's own lock on the store
        // file comes later, after the replay this must guard.
        match journals[0].try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the store's journal is locked by another process",
                ))
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(error),
        }
        let last_epoch = replay(&store, ino, &journals)?;
        // Sized only now: a journal is empty once replayed.
        let capacity = match capacity {
            Some(capacity) => capacity,
            None => journals[0].metadata()?.len(),
        };
        let capacity = if capacity == 0 {
            DEFAULT_JOURNAL_BYTES
        } else {
            capacity.max(MIN_JOURNAL_BYTES)
        };
        for journal in &journals {
            size_journal(journal, capacity)?;
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        let checkpoint_store = store.try_clone()?;
        let inner = FileBackend::new(store).map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            store: checkpoint_store,
            checkpoint: Mutex::new(Checkpoint::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("pm-checkpoint".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            inner,
            ino,
            state: Mutex::new(State {
                journals,
                active: 0,
                pos: 0,
                epoch: last_epoch + 1,
                pending: vec![0; HEADER_BYTES],
                capacity,
                flush_bytes: FLUSH_BYTES.min((capacity / 4) as usize),
                piece_bytes: PIECE_BYTES.min((capacity / 8) as usize),
            }),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what is pending to the active journal as one record, moving
    /// to the other journal when it does not fit.
    fn write_record(&self, state: &mut State) -> io::Result<()> {
        if state.pending.len() == HEADER_BYTES {
            return Ok(());
        }
        let len = state.pending.len() as u64;
        if state.pos + len > state.capacity {
            self.switch_journal(state)?;
        }
        // Entries are written out before they pass a quarter of a journal.
        debug_assert!(len <= state.capacity);
        framing::seal(&mut state.pending, MAGIC, state.epoch, self.ino);
        state.journals[state.active].write_all_at(&state.pending, state.pos)?;
        state.pos += len;
        state.pending.truncate(HEADER_BYTES);
        Ok(())
    }

    fn switch_journal(&self, state: &mut State) -> io::Result<()> {
        let next = 1 - state.active;
        // Records written out ahead of a sync (a large transaction) may sit
        // unsynced at the end of this journal; the next sync only reaches
        // the next journal, and replay must never find a later record
        // without the earlier ones.
        state.journals[state.active].sync_data()?;
        // The next journal may be written over only once the store file
        // holds its records durably: wait for its checkpoint.
        self.shared.wait_idle()?;
        // Everything in the full journal is already in the store file's
        // pages; one sync of the store file makes it durable there.
        self.shared.lock().waiting = Some(state.active);
        self.shared.changed.notify_all();
        state.active = next;
        state.pos = 0;
        state.epoch += 1;
        Ok(())
    }

    fn push_entry(pending: &mut Vec<u8>, tag: u8, offset: u64, data: &[u8]) {
        pending.push(tag);
        pending.extend_from_slice(&offset.to_le_bytes());
        pending.extend_from_slice(&(data.len() as u32).to_le_bytes());
        pending.extend_from_slice(data);
    }

    /// Leaves the store file holding everything durably and the journals
    /// empty, so that nothing needs replaying.
    fn checkpoint_all(&self) -> io::Result<()> {
        let mut state = self.lock();
        self.write_record(&mut state)?;
        self.shared.wait_idle()?;
        self.shared.store.sync_data()?;
        for journal in &state.journals {
            invalidate(journal)?;
        }
        state.pos = 0;
        state.epoch += 1;
        Ok(())
    }
}

impl Drop for JournaledFile {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// Makes an empty journal `capacity` bytes long.
fn size_journal(journal: &File, capacity: u64) -> io::Result<()> {
    let len = journal.metadata()?.len();
    if len > capacity {
        journal.set_len(capacity)?;
        journal.sync_all()?;
    } else if len < capacity {
        // Real zeros rather than a hole: writing into a hole makes every
        // fdatasync also write the file's block map.
        let zeros = vec![0u8; 1 << 20];
        let mut at = len;
        while at < capacity {
            let n = (capacity - at).min(zeros.len() as u64) as usize;
            journal.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        journal.sync_all()?;
    }
    Ok(())
}

fn read_record(journal: &File, ino: u64, pos: u64, capacity: u64) -> io::Result<Option<Record>> {
    framing::read(journal, MAGIC, ino, pos, capacity)
}

fn first_record(journal: &File, ino: u64, capacity: u64) -> io::Result<Option<Record>> {
    read_record(journal, ino, 0, capacity)
}

/// Replays the journals onto the store file, oldest round first, makes the
/// result durable and empties the journals. Returns the newest epoch seen.
fn replay(store: &File, ino: u64, journals: &[File; 2]) -> io::Result<u64> {
    let mut rounds = Vec::new();
    for journal in journals {
        let capacity = journal.metadata()?.len();
        if let Some(first) = first_record(journal, ino, capacity)? {
            rounds.push((first.number, journal, capacity));
        }
    }
    if rounds.is_empty() {
        return Ok(0);
    }
    rounds.sort_by_key(|(epoch, _, _)| *epoch);
    let mut replayed = 0u64;
    for (epoch, journal, capacity) in &rounds {
        let mut pos = 0;
        while let Some(record) = read_record(journal, ino, pos, *capacity)? {
            if record.number != *epoch {
                break;
            }
            apply(store, &record.payload)?;
            pos += (HEADER_BYTES + record.payload.len()) as u64;
            replayed += 1;
        }
    }
    store.sync_data()?;
    for journal in journals {
        invalidate(journal)?;
    }
    tracing::info!(
        records = replayed,
        "replayed the store's journal after an unclean stop"
    );
    Ok(rounds.last().map_or(0, |(epoch, _, _)| *epoch))
}

fn apply(store: &File, payload: &[u8]) -> io::Result<()> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed journal record");
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < ENTRY_HEADER_BYTES {
            return Err(malformed());
        }
        let tag = rest[0];
        let offset = u64::from_le_bytes(rest[1..9].try_into().unwrap());
        let len = u32::from_le_bytes(rest[9..13].try_into().unwrap()) as usize;
        let data = rest
            .get(ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + len)
            .ok_or_else(malformed)?;
        match tag {
            TAG_WRITE => store.write_all_at(data, offset)?,
            TAG_SET_LEN => store.set_len(offset)?,
            _ => return Err(malformed()),
        }
        rest = &rest[ENTRY_HEADER_BYTES + len..];
    }
    Ok(())
}

/// Makes a journal read as empty: its first record is gone.
fn invalidate(journal: &File) -> io::Result<()> {
    journal.write_all_at(&[0; HEADER_BYTES], 0)?;
    journal.sync_data()
}

impl StorageBackend for JournaledFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)?;
        let mut state = self.lock();
        Self::push_entry(&mut state.pending, TAG_SET_LEN, len, &[]);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.lock();
        self.write_record(&mut state)?;
        state.journals[state.active].sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        // In place first: a record is only ever written after the writes
        // it holds, so a checkpoint's sync of the store file covers them.
        self.inner.write(offset, data)?;
        let mut state = self.lock();
        let piece_bytes = state.piece_bytes;
        for (i, piece) in data.chunks(piece_bytes).enumerate() {
            let at = offset + (i * piece_bytes) as u64;
            Self::push_entry(&mut state.pending, TAG_WRITE, at, piece);
            if state.pending.len() >= state.flush_bytes {
                self.write_record(&mut state)?;
            }
        }
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        let result = self.checkpoint_all();
        self.shared.stop();
        let closed = self.inner.close();
        result.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE]
    }

    fn read_page(store: &Path, offset: u64) -> Vec<u8> {
        let mut out = page(0);
        File::open(store)
            .unwrap()
            .read_exact_at(&mut out, offset)
            .unwrap();
        out
    }

    /// What the disk would hold had the in-place writes never reached it.
    fn lose_in_place_write(store: &Path, offset: u64) {
        let file = OpenOptions::new().write(true).open(store).unwrap();
        file.write_all_at(&page(0xEE), offset).unwrap();
    }

    fn open(store: &Path, capacity: u64) -> JournaledFile {
        JournaledFile::open(store, Some(capacity)).unwrap()
    }

    #[test]
    fn a_synced_write_is_replayed_into_the_store_file_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, 1 << 20);
        file.set_len(4 * PAGE as u64).unwrap();
        file.write(0, &page(1)).unwrap();
        file.write(2 * PAGE as u64, &page(2)).unwrap();
        file.sync_data().unwrap();
        file.write(3 * PAGE as u64, &page(3)).unwrap();
        // A crash: no close, and the store file lost its in-place writes.
        drop(file);
        assert!(has_pending_records(&store).unwrap());
        lose_in_place_write(&store, 0);
        lose_in_place_write(&store, 2 * PAGE as u64);
        lose_in_place_write(&store, 3 * PAGE as u64);

        let file = open(&store, 1 << 20);
        assert_eq!(read_page(&store, 0), page(1));
        assert_eq!(read_page(&store, 2 * PAGE as u64), page(2));
        // Never synced, so never promised: replay leaves it as it found it.
        assert_eq!(read_page(&store, 3 * PAGE as u64), page(0xEE));
        // Replayed once, and only once.
        assert!(!has_pending_records(&store).unwrap());
        file.close().unwrap();
    }

    #[test]
    fn replay_stops_at_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, 1 << 20);
        file.set_len(2 * PAGE as u64).unwrap();
        file.sync_data().unwrap();
        file.write(0, &page(1)).unwrap();
        file.sync_data().unwrap();
        file.write(PAGE as u64, &page(2)).unwrap();
        file.sync_data().unwrap();
        drop(file);
        // Damage the last record's payload, as a write cut short would.
        let first = (HEADER_BYTES + ENTRY_HEADER_BYTES) as u64;
        let second = (HEADER_BYTES + ENTRY_HEADER_BYTES + PAGE) as u64;
        let journal = OpenOptions::new()
            .write(true)
            .open(&journal_paths(&store)[0])
            .unwrap();
        journal
            .write_all_at(&[9], first + second + HEADER_BYTES as u64 + 100)
            .unwrap();
        lose_in_place_write(&store, 0);
        lose_in_place_write(&store, PAGE as u64);

        open(&store, 1 << 20).close().unwrap();
        assert_eq!(read_page(&store, 0), page(1));
        assert_eq!(read_page(&store, PAGE as u64), page(0xEE));
    }

    #[test]
    fn journals_take_turns_and_replay_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, MIN_JOURNAL_BYTES);
        file.set_len(PAGE as u64).unwrap();
        // About fifteen syncs fill a journal: these go round both several
        // times, each waiting for the other's checkpoint.
        for round in 0..100u8 {
            file.write(0, &page(round)).unwrap();
            file.sync_data().unwrap();
        }
        drop(file);
        lose_in_place_write(&store, 0);

        let file = open(&store, MIN_JOURNAL_BYTES);
        assert_eq!(read_page(&store, 0), page(99));
        file.close().unwrap();
    }

    #[test]
    fn a_clean_close_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, 1 << 20);
        file.set_len(PAGE as u64).unwrap();
        file.write(0, &page(7)).unwrap();
        file.sync_data().unwrap();
        assert!(has_pending_records(&store).unwrap());
        file.close().unwrap();
        drop(file);
        assert!(!has_pending_records(&store).unwrap());
        assert_eq!(read_page(&store, 0), page(7));
    }

    #[test]
    fn a_journal_never_replays_onto_a_file_that_replaced_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, 1 << 20);
        file.set_len(PAGE as u64).unwrap();
        file.write(0, &page(1)).unwrap();
        file.sync_data().unwrap();
        drop(file);
        // A restore moves another file in under the same name.
        let other = dir.path().join("other");
        std::fs::write(&other, page(5)).unwrap();
        std::fs::rename(&other, &store).unwrap();
        assert!(!has_pending_records(&store).unwrap());

        open(&store, 1 << 20).close().unwrap();
        assert_eq!(read_page(&store, 0), page(5));
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let first = open(&store, 1 << 20);
        let refused = JournaledFile::open(&store, Some(1 << 20)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        first.close().unwrap();
        drop(first);
        open(&store, 1 << 20).close().unwrap();
    }

    #[test]
    fn a_large_write_is_journaled_in_pieces_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = open(&store, MIN_JOURNAL_BYTES);
        // More than a journal holds, in one write: it goes in as records
        // that each fit, spread over both journals.
        let big: Vec<u8> = (0..96 * 1024).map(|i| (i % 251) as u8).collect();
        file.set_len(big.len() as u64).unwrap();
        file.write(0, &big).unwrap();
        file.sync_data().unwrap();
        drop(file);
        for journal in journal_paths(&store) {
            assert_eq!(std::fs::metadata(journal).unwrap().len(), MIN_JOURNAL_BYTES);
        }
        File::create(&store).unwrap();

        open(&store, MIN_JOURNAL_BYTES).close().unwrap();
        assert_eq!(std::fs::read(&store).unwrap(), big);
    }
}
