//! How much of its volume the store sets aside: the preallocated write log
//! beside it (`log_bytes`) and
//! the free-space floor below which writes are refused. Unless configured,
//! both follow the volume's size, so that a 64 MiB volume (a small PVC, an
//! `emptyDir` with `sizeLimit`) serves as well as a large disk.

use super::durability::{log_paths, DEFAULT_LOG_BYTES};
use std::path::Path;

const MIB: u64 = 1 << 20;
/// The floor's default on a large volume.
const DEFAULT_MIN_FREE_BYTES: u64 = 64 * MIB;
/// What the store file needs to start and take its first events, beside
/// the fixed files and the floor.
const STARTING_ROOM_BYTES: u64 = MIB;

/// The sizes in force for one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The write log.
    pub log_bytes: u64,
    /// Writes are refused (503) while the volume has less free space.
    pub min_free_bytes: u64,
}

/// The volume's size and what is free on it, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Volume {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl Volume {
    /// The volume holding `dir`, as the system reports it to this user;
    /// `None` when the file system reports no size at all (a FUSE file
    /// system without `statfs`, some network file systems), which is not
    /// a full volume.
    pub fn of(dir: &Path) -> std::io::Result<Option<Volume>> {
        let stats = rustix::fs::statvfs(dir)?;
        Ok((stats.f_blocks > 0).then(|| Volume {
            total_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
            free_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        }))
    }

    /// What is assumed of a volume that reports no size: a large disk.
    pub const UNREPORTED: Volume = Volume {
        total_bytes: u64::MAX,
        free_bytes: u64::MAX,
    };
}

impl Sizes {
    /// The configured sizes (in MiB), or for what is not configured, a
    /// thirty-second of the volume for the write log (1 to 32 MiB) and a
    /// sixteenth for the floor (1 to 64 MiB): a 64 MiB volume sets aside
    /// 2 MiB and keeps 4 MiB free; from 1 GiB on, the defaults of a large
    /// disk, 32 MiB and 64 MiB.
    pub fn for_volume(volume: Volume, log_mib: Option<u64>, min_free_mib: Option<u64>) -> Sizes {
        let share = |divisor: u64, largest: u64| {
            (volume.total_bytes / divisor / MIB * MIB).clamp(MIB, largest)
        };
        Sizes {
            log_bytes: log_mib.map_or_else(|| share(32, DEFAULT_LOG_BYTES), |mib| mib * MIB),
            min_free_bytes: min_free_mib
                .map_or_else(|| share(16, DEFAULT_MIN_FREE_BYTES), |mib| mib * MIB),
        }
    }

    /// Refuses, in one sentence naming the settings, a volume without room
    /// for the write log still to be made, the floor, and a start. `store`
    /// is the store file's path; a log already there counts as made.
    pub fn check_room(&self, store: &Path, volume: Volume) -> Result<(), String> {
        let made: u64 = log_paths(store)
            .iter()
            .map(|path| std::fs::metadata(path).map_or(0, |meta| meta.len()))
            .sum();
        let to_make = self.log_bytes.saturating_sub(made);
        let needed = to_make + self.min_free_bytes + STARTING_ROOM_BYTES;
        if volume.free_bytes >= needed {
            return Ok(());
        }
        let mib = |bytes: u64| bytes.div_ceil(MIB);
        Err(format!(
            "the volume holding {} has {} MiB free, and the store needs {} MiB to start: {} MiB of write log (store.write_log_mib), a free-space floor of {} MiB (store.min_free_mib) and 1 MiB for the store itself; give it a larger volume or lower those settings",
            store.parent().unwrap_or(store).display(),
            volume.free_bytes / MIB,
            mib(needed),
            mib(self.log_bytes),
            mib(self.min_free_bytes),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(total_mib: u64) -> Volume {
        Volume {
            total_bytes: total_mib * MIB,
            free_bytes: total_mib * MIB,
        }
    }

    #[test]
    fn sizes_follow_the_volume_between_their_bounds() {
        let of = |total_mib| {
            let sizes = Sizes::for_volume(volume(total_mib), None, None);
            (sizes.log_bytes / MIB, sizes.min_free_bytes / MIB)
        };
        assert_eq!(of(8), (1, 1));
        assert_eq!(of(64), (2, 4));
        assert_eq!(of(256), (8, 16));
        assert_eq!(of(1024), (32, 64));
        assert_eq!(of(100 * 1024), (32, 64));
    }

    #[test]
    fn configured_sizes_win() {
        let sizes = Sizes::for_volume(volume(64), Some(5), Some(0));
        assert_eq!((sizes.log_bytes, sizes.min_free_bytes), (5 * MIB, 0));
    }

    #[test]
    fn a_volume_too_small_is_one_sentence_naming_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("processmanager.redb");
        let small = volume(2);
        let sizes = Sizes::for_volume(small, None, None);
        assert!(sizes.check_room(&store, volume(64)).is_ok());
        let refused = sizes.check_room(&store, small).unwrap_err();
        assert!(
            refused.contains("store.write_log_mib") && refused.contains("store.min_free_mib"),
            "{refused}"
        );
        assert!(!refused.contains('\n'), "{refused}");
        // A log already made takes no more room.
        for path in log_paths(&store) {
            std::fs::write(path, vec![0u8; MIB as usize / 2]).unwrap();
        }
        assert!(sizes.check_room(&store, small).is_ok());
    }
}
