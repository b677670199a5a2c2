//! Whether a store read waited for the disk.
//!
//! The daemon answers a point read on the async worker that took the
//! request while the store's pages are in memory, and on the read pool
//! once they are not (`http::point_read`). To tell the two apart, the
//! store's reads made inside `watch` first ask the kernel for the page
//! cache alone (`preadv2` with `RWF_NOWAIT`). When that would have to wait
//! for the disk, or the file system cannot say, the read is made as usual
//! and the watch reports that it waited.

use rustix::io::{preadv2, ReadWriteFlags};
use std::cell::Cell;
use std::fs::File;
use std::io::IoSliceMut;

thread_local! {
    /// Inside `watch`: whether a read waited so far. Outside: `None`.
    static WATCHED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Puts the thread's watch back as it was, even if the read panics.
struct Restore(Option<bool>);

impl Drop for Restore {
    fn drop(&mut self) {
        WATCHED.set(self.0);
    }
}

/// Runs `read` and says whether any store read inside it waited for the
/// disk (or could not be served from the page cache alone).
pub fn watch<T>(read: impl FnOnce() -> T) -> (T, bool) {
    let restore = Restore(WATCHED.replace(Some(false)));
    let result = read();
    let waited = WATCHED.get() == Some(true);
    drop(restore);
    (result, waited)
}

/// For the store's file backend: inside `watch`, fills `out` from `file`
/// at `offset` if the page cache holds all of it, and returns true. Returns
/// false, having read nothing of use, when the caller must read as usual.
pub(crate) fn read_if_cached(file: &File, offset: u64, out: &mut [u8]) -> bool {
    if WATCHED.get().is_none() {
        return false;
    }
    let length = out.len();
    match preadv2(
        file,
        &mut [IoSliceMut::new(out)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(read) if read == length => true,
        // Would block, a part only, or not supported here.
        _ => {
            WATCHED.set(Some(true));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{fadvise, Advice};
    use std::io::Write;
    use std::num::NonZeroU64;
    use std::os::unix::fs::FileExt;

    /// Reads a page as the store's backend does; true if the page cache
    /// alone served it.
    fn read_page(file: &File, page: u64) -> bool {
        let mut out = [0u8; 4096];
        if read_if_cached(file, page * 4096, &mut out) {
            assert_eq!(out, [7u8; 4096]);
            return true;
        }
        file.read_exact_at(&mut out, page * 4096).unwrap();
        false
    }

    #[test]
    fn a_watched_read_says_whether_the_page_cache_held_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let mut file = File::create(&path).unwrap();
        file.write_all(&[7u8; 64 * 4096]).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();

        // Unwatched reads are never answered from the cache alone.
        assert!(!read_page(&file, 0));

        // Just written, so cached: served from the cache, unless this file
        // system cannot tell (then every watched read counts as waiting,
        // and the daemon reads on its read pool as it would without this).
        let (cached, waited) = watch(|| read_page(&file, 0));
        assert_eq!(cached, !waited);
        let can_tell = cached;

        // Dropped from the page cache (clean pages, so the advice is
        // followed): the read waits, and says so.
        fadvise(&file, 0, NonZeroU64::new(64 * 4096), Advice::DontNeed).unwrap();
        assert_eq!(watch(|| read_page(&file, 8)), (false, true));

        // Read back in by then.
        assert_eq!(watch(|| read_page(&file, 8)), (can_tell, !can_tell));
    }
}
