//! What the writer is asked and what it answers, as both sides see it: an
//! event on its way to the store, and what became of it.

use super::{Event, LimitExceeded, Millis, Status};
use serde::{Deserialize, Serialize};

/// One validated event on its way to the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncomingEvent {
    pub event: Event,
    /// Identifies the event's content for the idempotency check.
    pub fingerprint: [u8; 16],
    /// Server clock when the request arrived.
    pub received_at: Millis,
}

impl IncomingEvent {
    /// The event with its fingerprint (the first 16 bytes of the SHA-256
    /// of its stored encoding), received at `received_at`.
    pub fn new(event: Event, received_at: Millis) -> IncomingEvent {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(crate::codec::encode(&event));
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        IncomingEvent {
            event,
            fingerprint,
            received_at,
        }
    }

    /// An event the daemon makes itself (a stall, a deadline): never
    /// deduplicated, so it needs no fingerprint.
    pub fn made(event: Event, received_at: Millis) -> IncomingEvent {
        IncomingEvent {
            event,
            fingerprint: [0; 16],
            received_at,
        }
    }
}

/// What was decided for a stored event. Conflicts are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredResult {
    Accepted,
    Stale,
}

impl StoredResult {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredResult::Accepted => "accepted",
            StoredResult::Stale => "stale",
        }
    }
}

/// Who made an event: a sender, or the daemon itself (stalls, deadlines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Sender,
    Daemon,
}

/// What the writer did with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Stored now, as accepted or stale.
    Stored {
        result: StoredResult,
        seq: u64,
        process_status: Status,
        task_status: Option<Status>,
        /// Set when this event made the process terminal.
        finished: Option<FinishedProcess>,
    },
    /// Stored earlier under the same idempotency key with the same content.
    Duplicate {
        original: StoredResult,
        seq: u64,
        process_status: Status,
    },
    /// A different terminal status than the current one; not stored.
    Conflict { current_status: Status },
    /// The idempotency key was used before for different content; not stored.
    KeyReused { seq: u64 },
    /// It would take its process or task past a cap; not stored.
    OverLimit(LimitExceeded),
}

/// A process that an event has just made terminal, for the duration metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedProcess {
    pub process_type: Option<String>,
    /// From its start to its terminal event; `None` if it never ran.
    pub duration_ms: Option<i64>,
}

/// One step of removing finished processes: a retention step, or one of a
/// bulk `DELETE /v1/processes?finished_before=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeStep {
    /// (terminal status, cut): processes of that status finished before
    /// the cut.
    pub cuts: Vec<(Status, Millis)>,
    /// Only processes of this type.
    pub process_type: Option<String>,
    /// Where the last step stopped: (status code, finished_at, ordinal) of
    /// the last process it looked at.
    pub after: Option<(u8, Millis, u64)>,
    /// Processes removed in this step at most.
    pub limit: u32,
    /// Also drop feed entries written before this time (retention steps).
    pub trim_feed_before: Option<Millis>,
}

/// What a purge step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purged {
    pub deleted: u64,
    /// Where the next step goes on; `None` when nothing is left.
    pub next: Option<(u8, Millis, u64)>,
}
