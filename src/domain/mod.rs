//! Processes, tasks, events and the transition rules: pure data and pure
//! functions, no I/O. The writer thread is the only caller that persists what
//! these rules decide; everything here is testable without a store.

pub mod caps;
mod event;
pub mod model;
mod outcome;
mod rules;
mod status;
pub mod timing;

pub use caps::{Caps, LimitExceeded};
pub use event::{
    is_valid_event_id, is_valid_id, parse_timestamp, ErrorInfo, Event, EventInput, EventType,
    InvalidField, Progress, Scope, MAX_ATTRIBUTE_KEY_BYTES, MAX_HEARTBEAT_TIMEOUT_SECS,
};
pub use outcome::{
    EventOutcome, FinishedProcess, IncomingEvent, PurgeStep, Purged, Source, StoredResult,
};
pub use rules::{apply, Attempt, Outcome, Process, Task};
pub use status::{Status, TaskCounts};
pub use timing::{TimeoutDefaults, TypeTimeouts};

/// Milliseconds since the Unix epoch, UTC. Every stored timestamp uses it:
/// the API promises millisecond precision, and an integer orders and
/// compares without surprises.
pub type Millis = i64;

#[cfg(test)]
mod rules_tests;
