//! The store's one error type, with the sentence each case tells a user.

use crate::codec;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {} is in use by another process; stop the daemon that holds it, or use a command that reads a live store", path.display())]
    Locked { path: PathBuf },
    #[error("the store {} has schema version {found}, but this build reads version {expected}; run the ProcessManager release that wrote it (version 5 and earlier: an unreleased build before 0.2.0, whose stores 0.2.0 does not read), or restore a backup made by this one", path.display())]
    SchemaMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{} is not a ProcessManager store; point --data-dir at a ProcessManager data directory, or move the file away to start a new store", path.display())]
    NotAStore { path: PathBuf },
    #[error("{} is damaged and cannot be used ({detail}); restore it from another backup", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("the store {} was not stopped cleanly and its write log is not yet replayed; start `processmanager serve` on it once, which recovers it, then try again", path.display())]
    NeedsRecovery { path: PathBuf },
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("the store is being reopened after an I/O error")]
    Reopening,
    /// The write logs are full and the groups in them cannot be applied
    /// to the store file now (the last step failed, `disk_full` or not);
    /// nothing is lost, and writes go on once a step succeeds.
    #[error("pending groups cannot be applied to the store file now{}", if *disk_full { ": the disk is full" } else { "" })]
    ApplyBehind { disk_full: bool },
    /// Asked to stop (Ctrl-C) before the work was done.
    #[error("interrupted")]
    Interrupted,
    #[error("the stored {what} is damaged: {source}; run `processmanager inspect verify` and restore from a backup")]
    Corrupt {
        what: String,
        source: codec::CodecError,
    },
    #[error("storage error: {0}")]
    Redb(#[from] redb::Error),
}

impl From<crate::progress::Interrupted> for StoreError {
    fn from(_: crate::progress::Interrupted) -> Self {
        StoreError::Interrupted
    }
}

macro_rules! redb_error_into_store_error {
    ($($kind:ty),*) => {$(
        impl From<$kind> for StoreError {
            fn from(error: $kind) -> Self {
                StoreError::Redb(error.into())
            }
        }
    )*};
}
redb_error_into_store_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

impl StoreError {
    /// True when the disk is full: the write may succeed once there is room.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(io)) if io.kind() == std::io::ErrorKind::StorageFull
        ) || matches!(self, StoreError::ApplyBehind { disk_full: true })
    }

    /// True when redb will refuse every further use of the handle, which
    /// must then be reopened.
    pub fn poisons_handle(&self) -> bool {
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}
