//! Record layouts written before version 1.1, read into today's records.
//!
//! Version 1.1 added heartbeat timeouts, deadlines and stalls to processes,
//! tasks and events, and the source of each history record. Values written
//! before carry format byte 1 (`codec::Evolved`) and are read through the
//! structs here, whose fields are the old ones in the old order; they are
//! never written again in that layout.

use super::codec::Evolved;
use super::schema::{HistoryRecord, Source, StoredResult};
use crate::domain::{
    Attempt, ErrorInfo, Event, EventType, Millis, Process, Progress, Status, Task, TaskCounts,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub struct ProcessV1 {
    id: String,
    name: Option<String>,
    process_type: Option<String>,
    correlation_id: Option<String>,
    status: Status,
    progress: Option<Progress>,
    error: Option<ErrorInfo>,
    attributes: BTreeMap<String, String>,
    created_at: Millis,
    started_at: Option<Millis>,
    updated_at: Millis,
    finished_at: Option<Millis>,
    last_update_at: Option<Millis>,
    event_count: u64,
    last_seq: u64,
    task_counts: TaskCounts,
    task_total: u32,
}

impl From<ProcessV1> for Process {
    fn from(old: ProcessV1) -> Process {
        Process {
            heard_at: old.created_at,
            id: old.id,
            name: old.name,
            process_type: old.process_type,
            correlation_id: old.correlation_id,
            status: old.status,
            progress: old.progress,
            error: old.error,
            attributes: old.attributes,
            created_at: old.created_at,
            started_at: old.started_at,
            updated_at: old.updated_at,
            finished_at: old.finished_at,
            last_update_at: old.last_update_at,
            event_count: old.event_count,
            last_seq: old.last_seq,
            task_counts: old.task_counts,
            task_total: old.task_total,
            heartbeat_timeout: None,
            deadline: None,
            stalled_since: None,
            heartbeat_check: None,
        }
    }
}

impl Evolved for Process {
    type V1 = ProcessV1;
}

#[derive(Deserialize)]
pub struct TaskV1 {
    id: String,
    name: Option<String>,
    status: Status,
    attempt: u32,
    progress: Option<Progress>,
    error: Option<ErrorInfo>,
    attributes: BTreeMap<String, String>,
    created_at: Millis,
    started_at: Option<Millis>,
    updated_at: Option<Millis>,
    finished_at: Option<Millis>,
    attempts: Vec<Attempt>,
}

impl From<TaskV1> for Task {
    fn from(old: TaskV1) -> Task {
        Task {
            heard_at: old.created_at,
            id: old.id,
            name: old.name,
            status: old.status,
            attempt: old.attempt,
            progress: old.progress,
            error: old.error,
            attributes: old.attributes,
            created_at: old.created_at,
            started_at: old.started_at,
            updated_at: old.updated_at,
            finished_at: old.finished_at,
            attempts: old.attempts,
            heartbeat_timeout: None,
            stalled_since: None,
            heartbeat_check: None,
        }
    }
}

impl Evolved for Task {
    type V1 = TaskV1;
}

/// An event as stored and logged before version 1.1.
#[derive(Deserialize, serde::Serialize)]
pub struct EventV1 {
    pub event_id: Option<String>,
    pub kind: EventType,
    pub process_id: String,
    pub task_id: Option<String>,
    pub occurred_at: Option<Millis>,
    pub name: Option<String>,
    pub process_type: Option<String>,
    pub correlation_id: Option<String>,
    pub progress: Option<Progress>,
    pub error: Option<ErrorInfo>,
    pub attributes: BTreeMap<String, String>,
}

impl From<EventV1> for Event {
    fn from(old: EventV1) -> Event {
        Event {
            event_id: old.event_id,
            kind: old.kind,
            process_id: old.process_id,
            task_id: old.task_id,
            occurred_at: old.occurred_at,
            name: old.name,
            process_type: old.process_type,
            correlation_id: old.correlation_id,
            progress: old.progress,
            error: old.error,
            attributes: old.attributes,
            heartbeat_timeout: None,
            deadline: None,
        }
    }
}

/// An event's fields of before version 1.1, borrowed: what an event without
/// the new fields is fingerprinted by, so a resend across an upgrade is
/// still recognised.
#[derive(serde::Serialize)]
pub struct EventV1Ref<'a> {
    event_id: &'a Option<String>,
    kind: EventType,
    process_id: &'a str,
    task_id: &'a Option<String>,
    occurred_at: Option<Millis>,
    name: &'a Option<String>,
    process_type: &'a Option<String>,
    correlation_id: &'a Option<String>,
    progress: &'a Option<Progress>,
    error: &'a Option<ErrorInfo>,
    attributes: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Event> for EventV1Ref<'a> {
    fn from(event: &'a Event) -> Self {
        EventV1Ref {
            event_id: &event.event_id,
            kind: event.kind,
            process_id: &event.process_id,
            task_id: &event.task_id,
            occurred_at: event.occurred_at,
            name: &event.name,
            process_type: &event.process_type,
            correlation_id: &event.correlation_id,
            progress: &event.progress,
            error: &event.error,
            attributes: &event.attributes,
        }
    }
}

#[derive(Deserialize)]
pub struct HistoryRecordV1 {
    seq: u64,
    result: StoredResult,
    received_at: Millis,
    event: EventV1,
}

impl From<HistoryRecordV1> for HistoryRecord {
    fn from(old: HistoryRecordV1) -> HistoryRecord {
        HistoryRecord {
            seq: old.seq,
            result: old.result,
            received_at: old.received_at,
            event: old.event.into(),
            source: Source::Sender,
        }
    }
}

impl Evolved for HistoryRecord {
    type V1 = HistoryRecordV1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    #[test]
    fn records_written_before_timeouts_read_into_todays_layout() {
        #[derive(serde::Serialize)]
        struct OldHistory<'a> {
            seq: u64,
            result: StoredResult,
            received_at: Millis,
            event: EventV1Ref<'a>,
        }
        let mut event = crate::domain::model::bare_event(EventType::TaskFailed, Some("t"));
        event.error = Some(ErrorInfo {
            code: "E".into(),
            message: "m".into(),
        });
        let old = codec::encode(&OldHistory {
            seq: 9,
            result: StoredResult::Accepted,
            received_at: 77,
            event: EventV1Ref::from(&event),
        });
        let read: HistoryRecord = codec::decode_evolved(&old).unwrap();
        assert_eq!(
            read,
            HistoryRecord {
                seq: 9,
                result: StoredResult::Accepted,
                received_at: 77,
                event: event.clone(),
                source: Source::Sender,
            }
        );
        // Today's layout round-trips, and is not mistaken for the old one.
        let mut timed = event;
        timed.heartbeat_timeout = Some(30);
        let new = HistoryRecord {
            seq: 10,
            result: StoredResult::Stale,
            received_at: 78,
            event: timed,
            source: Source::Daemon,
        };
        let bytes = codec::encode_evolved(&new);
        assert_eq!(codec::decode_evolved::<HistoryRecord>(&bytes).unwrap(), new);
        assert!(codec::decode::<HistoryRecord>(&bytes).is_err());
    }
}
