//! The redb store: its tables and their layout (`schema`), the pending
//! state kept over them until it is applied (`layers`), the write path the
//! writer thread drives (`write`, in one part per concern), what makes a
//! write durable (`durability`), the read queries (`read`), and backups,
//! maintenance and sizing.

pub mod backup;
pub mod durability;
pub mod durations;
mod error;
pub mod layers;
pub mod maintenance;
mod open;
pub mod read;
pub mod schema;
pub mod search;
pub mod sizing;
pub mod write;

pub use error::StoreError;
#[cfg(test)]
pub use open::open_simulated;
pub use open::{
    check_schema, free_bytes, held_by_writer, hold, open_for_writer, open_read_only, open_writable,
};
use std::path::{Path, PathBuf};

/// The store file inside a data directory.
pub const STORE_FILE: &str = "processmanager.redb";

pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE)
}
