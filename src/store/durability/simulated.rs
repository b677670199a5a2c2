//! A disk that loses power, for tests: the files of one store (the store
//! file under redb, the write log) keep what was written in a volatile
//! copy and what was synced in a durable one. `cut_after` picks the moment
//! power goes: after that many more writes and syncs, nothing written
//! becomes durable any more, though the process, which cannot know, goes
//! on. `power_back` then leaves each file as the disk kept it: its last
//! synced contents, every write after that lost, as LazyFS does.

use super::LogFile;
use redb::{BackendError, StorageBackend};
use std::collections::HashMap;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct SimulatedDisk {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<&'static str, Contents>,
    /// Writes and syncs left before the power goes; `None`: it stays.
    ops_left: Option<u64>,
    powered: bool,
}

#[derive(Debug, Default, Clone)]
struct Contents {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

impl SimulatedDisk {
    pub fn new() -> Arc<SimulatedDisk> {
        Arc::new(SimulatedDisk {
            state: Mutex::new(State {
                powered: true,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file called `name` on this disk (created empty when missing).
    pub fn file(self: &Arc<Self>, name: &'static str) -> SimulatedFile {
        self.lock().files.entry(name).or_default();
        SimulatedFile {
            disk: self.clone(),
            name,
        }
    }

    /// The power goes after `ops` more writes and syncs.
    pub fn cut_after(&self, ops: u64) {
        self.lock().ops_left = Some(ops);
    }

    /// True once the power has gone: whatever the process did since is
    /// lost, and nobody heard of it.
    pub fn is_down(&self) -> bool {
        !self.lock().powered
    }

    /// Power again: every file holds what was last synced to it.
    pub fn power_back(&self) {
        let mut state = self.lock();
        for contents in state.files.values_mut() {
            contents.volatile = contents.durable.clone();
        }
        state.powered = true;
        state.ops_left = None;
    }
}

impl State {
    /// Counts one write or sync; false once the power is gone.
    fn reaches_disk(&mut self) -> bool {
        if let Some(left) = self.ops_left.as_mut() {
            if *left == 0 {
                self.powered = false;
            } else {
                *left -= 1;
            }
        }
        self.powered
    }
}

#[derive(Debug)]
pub struct SimulatedFile {
    disk: Arc<SimulatedDisk>,
    name: &'static str,
}

impl SimulatedFile {
    fn with<T>(&self, f: impl FnOnce(&mut Contents, bool) -> T) -> T {
        let mut state = self.disk.lock();
        let powered = state.reaches_disk();
        f(
            state.files.get_mut(self.name).expect("made by `file`"),
            powered,
        )
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.disk.lock();
        let contents = &state.files[self.name].volatile;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if end > contents.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&contents[start..end]);
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64) {
        // The process goes on writing after the power went, in its own
        // view; none of it will be kept.
        self.with(|contents, _| {
            let start = offset as usize;
            let end = start + buf.len();
            if contents.volatile.len() < end {
                contents.volatile.resize(end, 0);
            }
            contents.volatile[start..end].copy_from_slice(buf);
        });
    }

    fn resize(&self, len: u64) {
        self.with(|contents, _| contents.volatile.resize(len as usize, 0));
    }

    fn sync(&self) {
        self.with(|contents, powered| {
            if powered {
                contents.durable = contents.volatile.clone();
            }
        });
    }

    fn volatile_len(&self) -> u64 {
        self.disk.lock().files[self.name].volatile.len() as u64
    }
}

impl LogFile for SimulatedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.volatile_len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.resize(len);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sync();
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync();
        Ok(())
    }
}

impl StorageBackend for SimulatedFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.volatile_len())
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        SimulatedFile::read(self, out, offset)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.resize(len);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.sync();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        SimulatedFile::write(self, data, offset);
        Ok(())
    }
    // One process uses the disk: every lock is granted.
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}
