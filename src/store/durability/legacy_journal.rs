//! The page journal of earlier builds, which this build only replays.
//!
//! Builds up to `5f06bcc` (2026-11-27) wrote every page of the store file
//! also to one of two journal files beside it
//! (`processmanager.redb.journal-0` and `-1`), and took redb's syncs there
//! as one sequential write. After a
//! crash, the store file alone could lack pages whose sync the journal
//! took, so such a store is whole only once its journals are replayed onto
//! it. Once the write log made most commits non-durable, the journal no
//! longer earned a clear margin (BENCHMARKS.md, "The page journal against
//! none"), and it was removed. A store those builds left is still opened
//! correctly: a writable open replays what its journals hold, syncs the
//! store file and deletes them; a read-only open refuses such a store
//! until a daemon has done that.
//!
//! A journal record (framed by `framing`, magic "PMJ1", numbered by the
//! journal's round) holds entries: a tag (1, write `data` at `offset`;
//! 2, set the file's length to `offset`), the offset (u64), the data's
//! length (u32), all little-endian, then the data. Replay takes the
//! journals oldest round first and stops at the first record that is torn
//! or of an earlier round.

use super::framing::{self, HEADER_BYTES};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x504d_4a31; // "PMJ1"
const TAG_WRITE: u8 = 1;
const TAG_SET_LEN: u8 = 2;
const ENTRY_HEADER_BYTES: usize = 13;

/// The journal files an earlier build kept beside a store file.
pub fn journal_paths(store: &Path) -> [PathBuf; 2] {
    let name = |i: usize| {
        let mut name = store.as_os_str().to_owned();
        name.push(format!(".journal-{i}"));
        PathBuf::from(name)
    };
    [name(0), name(1)]
}

/// True when the store file has journal records not yet replayed onto it:
/// an earlier build's writer did not stop cleanly.
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

/// Replays the journals an earlier build left beside `store` onto it (the
/// store file, open for writing), makes the result durable and deletes
/// them. Nothing to do, and nothing touched, when there are none. A second
/// process doing the same meanwhile is refused with `WouldBlock`.
pub fn replay_and_remove(path: &Path, store: &File) -> io::Result<()> {
    let paths = journal_paths(path);
    let mut journals = Vec::with_capacity(2);
    for path in &paths {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(journal) => journals.push(journal),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    let Some(first) = journals.first() else {
        return Ok(());
    };
    // The lock earlier builds took for as long as they ran: a daemon of
    // such a build still running holds it.
    match first.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the store's journal is locked by another process",
            ))
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(error),
    }
    replay(store, store.metadata()?.ino(), &journals)?;
    for path in &paths {
        super::remove_if_there(path)?;
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    tracing::info!(store = %path.display(), "removed the page journals an earlier build kept beside the store");
    Ok(())
}

/// Removes the journals of a store file that is about to be replaced.
pub fn remove(store: &Path) -> io::Result<()> {
    for path in journal_paths(store) {
        super::remove_if_there(&path)?;
    }
    Ok(())
}

fn read_record(
    journal: &File,
    ino: u64,
    pos: u64,
    capacity: u64,
) -> io::Result<Option<framing::Record>> {
    framing::read(journal, MAGIC, ino, pos, capacity)
}

fn first_record(journal: &File, ino: u64, capacity: u64) -> io::Result<Option<framing::Record>> {
    read_record(journal, ino, 0, capacity)
}

/// Replays the journals onto the store file, oldest round first, and makes
/// the result durable.
fn replay(store: &File, ino: u64, journals: &[File]) -> io::Result<()> {
    let mut rounds = Vec::new();
    for journal in journals {
        let capacity = journal.metadata()?.len();
        if let Some(first) = first_record(journal, ino, capacity)? {
            rounds.push((first.number, journal, capacity));
        }
    }
    if rounds.is_empty() {
        return Ok(());
    }
    rounds.sort_by_key(|(round, _, _)| *round);
    let mut replayed = 0u64;
    for (round, journal, capacity) in &rounds {
        let mut pos = 0;
        while let Some(record) = read_record(journal, ino, pos, *capacity)? {
            if record.number != *round {
                break;
            }
            apply(store, &record.payload)?;
            pos += (HEADER_BYTES + record.payload.len()) as u64;
            replayed += 1;
        }
    }
    store.sync_data()?;
    tracing::info!(
        records = replayed,
        "replayed the store's page journal after an unclean stop of an earlier build"
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an earlier build wrote: records of `entries` in `journal`, from
    /// its start, numbered `round`, for the store file `store`.
    fn write_journal(store: &Path, journal: usize, round: u64, records: &[&[(u8, u64, &[u8])]]) {
        let ino = std::fs::metadata(store).unwrap().ino();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&journal_paths(store)[journal])
            .unwrap();
        let mut pos = 0u64;
        for entries in records {
            let mut record = vec![0u8; HEADER_BYTES];
            for (tag, offset, data) in *entries {
                record.push(*tag);
                record.extend_from_slice(&offset.to_le_bytes());
                record.extend_from_slice(&(data.len() as u32).to_le_bytes());
                record.extend_from_slice(data);
            }
            framing::seal(&mut record, MAGIC, round, ino);
            file.write_all_at(&record, pos).unwrap();
            pos += record.len() as u64;
        }
        // Zero-filled after the records, as the journals were.
        file.write_all_at(&[0; 4096], pos).unwrap();
    }

    fn store_in(dir: &Path) -> (PathBuf, File) {
        let path = dir.join("store");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn an_earlier_builds_journal_is_replayed_onto_the_store_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(dir.path());
        write_journal(
            &path,
            0,
            1,
            &[
                &[(TAG_WRITE, 0, &[1; 4096])],
                &[(TAG_WRITE, 4096, &[2; 4096]), (TAG_SET_LEN, 12288, &[])],
            ],
        );
        assert!(has_pending_records(&path).unwrap());
        replay_and_remove(&path, &store).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 12288);
        assert!(bytes[..4096].iter().all(|b| *b == 1));
        assert!(bytes[4096..8192].iter().all(|b| *b == 2));
        assert!(journal_paths(&path).iter().all(|journal| !journal.exists()));
        assert!(!has_pending_records(&path).unwrap());
    }

    #[test]
    fn replay_takes_the_older_round_first_and_stops_at_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(dir.path());
        // Round 2 in journal 0 (newer), round 1 in journal 1 (older): both
        // write page 0, and the newer must win.
        write_journal(
            &path,
            0,
            2,
            &[
                &[(TAG_WRITE, 0, &[2; 4096])],
                &[(TAG_WRITE, 4096, &[9; 4096])],
            ],
        );
        write_journal(&path, 1, 1, &[&[(TAG_WRITE, 0, &[1; 4096])]]);
        // The second record of round 2 was torn by the crash.
        let journal = OpenOptions::new()
            .write(true)
            .open(&journal_paths(&path)[0])
            .unwrap();
        let second_payload = (HEADER_BYTES + ENTRY_HEADER_BYTES + 4096 + HEADER_BYTES + 100) as u64;
        journal.write_all_at(&[0; 64], second_payload).unwrap();
        replay_and_remove(&path, &store).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 2));
        assert!(
            bytes[4096..8192].iter().all(|b| *b == 0),
            "the torn record counts as never written"
        );
    }

    #[test]
    fn a_journal_never_replays_onto_a_file_that_replaced_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = store_in(dir.path());
        write_journal(&path, 0, 1, &[&[(TAG_WRITE, 0, &[1; 4096])]]);
        // A restore renames another file into place.
        let restored = dir.path().join("restored");
        std::fs::write(&restored, vec![0u8; 8192]).unwrap();
        std::fs::rename(&restored, &path).unwrap();
        assert!(!has_pending_records(&path).unwrap());
        let store = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        replay_and_remove(&path, &store).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn a_running_daemon_of_an_earlier_build_keeps_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(dir.path());
        write_journal(&path, 0, 1, &[&[(TAG_WRITE, 0, &[1; 4096])]]);
        let held = File::open(&journal_paths(&path)[0]).unwrap();
        held.lock().unwrap();
        let refused = replay_and_remove(&path, &store).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(journal_paths(&path)[0].exists());
    }
}
