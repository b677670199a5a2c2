//! The JSON shapes of the API, borrowed from the stored records.

use crate::domain::Source;
use crate::domain::{Attempt, ErrorInfo, Millis, Process, Progress, Status, Task, TaskCounts};
use crate::store::durations::{Summary, TERMINAL};
use crate::store::read::FeedItem;
use crate::store::schema::{Counters, HistoryRecord};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use time::OffsetDateTime;

/// A timestamp written as RFC 3339 in UTC with milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timestamp(pub Millis);

pub fn format_millis(millis: Millis) -> String {
    Timestamp(millis).to_string()
}

impl Timestamp {
    /// The RFC 3339 text, for years 0 to 9999.
    ///
    /// The calendar comes from `time`; the digits are put in place by hand,
    /// because `fmt` machinery (or a format description) cost several times
    /// more, and this runs about fifteen times for every process a query
    /// returns.
    fn rfc3339(self) -> Option<[u8; 24]> {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()?;
        let (year, month, day) = at.to_calendar_date();
        let year = u32::try_from(year).ok().filter(|year| *year <= 9999)?;
        let (hour, minute, second, milli) = at.to_hms_milli();
        let mut text = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut text[0..4], year);
        put_digits(&mut text[5..7], u8::from(month).into());
        put_digits(&mut text[8..10], day.into());
        put_digits(&mut text[11..13], hour.into());
        put_digits(&mut text[14..16], minute.into());
        put_digits(&mut text[17..19], second.into());
        put_digits(&mut text[20..23], milli.into());
        Some(text)
    }
}

/// Writes `value` in decimal into all of `slot`, zero-padded on the left.
fn put_digits(slot: &mut [u8], mut value: u32) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rfc3339() {
            // Only ASCII digits and separators were written.
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            // Only ASCII digits and separators were written.
            Some(text) => serializer
                .serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?),
            None => serializer.collect_str(&self.0),
        }
    }
}

/// Progress without the parts the sender left out.
#[derive(Serialize)]
pub struct ProgressView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl<'a> From<&'a Progress> for ProgressView<'a> {
    fn from(progress: &'a Progress) -> Self {
        ProgressView {
            percent: progress.percent,
            current: progress.current,
            total: progress.total,
            message: progress.message.as_deref(),
        }
    }
}

/// `{"running": 1, "succeeded": 3}`: statuses with at least one task.
pub struct TaskCountsView<'a>(&'a TaskCounts);

impl Serialize for TaskCountsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (status, count) in self.0.non_zero() {
            map.serialize_entry(status.as_str(), &count)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
pub struct ProcessView<'a> {
    id: &'a str,
    name: Option<&'a str>,
    process_type: Option<&'a str>,
    correlation_id: Option<&'a str>,
    status: Status,
    progress: Option<ProgressView<'a>>,
    error: Option<&'a ErrorInfo>,
    attributes: &'a BTreeMap<String, String>,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    updated_at: Timestamp,
    finished_at: Option<Timestamp>,
    duration_ms: Option<i64>,
    event_count: u64,
    last_seq: u64,
    task_counts: TaskCountsView<'a>,
    heartbeat_timeout: Option<u32>,
    deadline: Option<Timestamp>,
    stalled_since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<Vec<TaskView<'a>>>,
}

impl<'a> ProcessView<'a> {
    /// The process as listed: without its tasks.
    pub fn summary(process: &'a Process) -> Self {
        ProcessView {
            id: &process.id,
            name: process.name.as_deref(),
            process_type: process.process_type.as_deref(),
            correlation_id: process.correlation_id.as_deref(),
            status: process.status,
            progress: process.progress.as_ref().map(ProgressView::from),
            error: process.error.as_ref(),
            attributes: &process.attributes,
            created_at: Timestamp(process.created_at),
            started_at: process.started_at.map(Timestamp),
            // Every stored process had an event applied, which sets it; the
            // fallback only guards a record written by hand.
            updated_at: Timestamp(if process.updated_at == Millis::MIN {
                process.created_at
            } else {
                process.updated_at
            }),
            finished_at: process.finished_at.map(Timestamp),
            duration_ms: process.duration_ms(),
            event_count: process.event_count,
            last_seq: process.last_seq,
            task_counts: TaskCountsView(&process.task_counts),
            heartbeat_timeout: process.heartbeat_timeout,
            deadline: process.deadline.map(Timestamp),
            stalled_since: process.stalled_since.map(Timestamp),
            tasks: None,
        }
    }

    pub fn with_tasks(process: &'a Process, tasks: &'a [Task]) -> Self {
        ProcessView {
            tasks: Some(tasks.iter().map(TaskView::from).collect()),
            ..ProcessView::summary(process)
        }
    }
}

#[derive(Serialize)]
pub struct AttemptView<'a> {
    attempt: u32,
    status: Status,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    error: Option<&'a ErrorInfo>,
}

impl<'a> From<&'a Attempt> for AttemptView<'a> {
    fn from(attempt: &'a Attempt) -> Self {
        AttemptView {
            attempt: attempt.attempt,
            status: attempt.status,
            started_at: attempt.started_at.map(Timestamp),
            finished_at: attempt.finished_at.map(Timestamp),
            error: attempt.error.as_ref(),
        }
    }
}

#[derive(Serialize)]
pub struct TaskView<'a> {
    id: &'a str,
    name: Option<&'a str>,
    status: Status,
    attempt: u32,
    progress: Option<ProgressView<'a>>,
    error: Option<&'a ErrorInfo>,
    attributes: &'a BTreeMap<String, String>,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    updated_at: Timestamp,
    finished_at: Option<Timestamp>,
    attempts: Vec<AttemptView<'a>>,
    heartbeat_timeout: Option<u32>,
    stalled_since: Option<Timestamp>,
}

impl<'a> From<&'a Task> for TaskView<'a> {
    fn from(task: &'a Task) -> Self {
        TaskView {
            id: &task.id,
            name: task.name.as_deref(),
            status: task.status,
            attempt: task.attempt,
            progress: task.progress.as_ref().map(ProgressView::from),
            error: task.error.as_ref(),
            attributes: &task.attributes,
            created_at: Timestamp(task.created_at),
            started_at: task.started_at.map(Timestamp),
            updated_at: Timestamp(task.updated_at.unwrap_or(task.created_at)),
            finished_at: task.finished_at.map(Timestamp),
            attempts: task.attempts.iter().map(AttemptView::from).collect(),
            heartbeat_timeout: task.heartbeat_timeout,
            stalled_since: task.stalled_since.map(Timestamp),
        }
    }
}

/// One event of a process's history: its bookkeeping, then the fields it was sent with.
#[derive(Serialize)]
pub struct HistoryView<'a> {
    seq: u64,
    event_id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    task_id: Option<&'a str>,
    result: &'static str,
    occurred_at: Timestamp,
    received_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorInfo>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_timeout: Option<u32>,
    /// Absent when the event left it alone; `null` when it cleared it.
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<Option<Timestamp>>,
    /// `processmanager` for the events the daemon made; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
}

/// The `source` of what the daemon made.
pub const DAEMON_SOURCE: &str = "processmanager";

impl<'a> From<&'a HistoryRecord> for HistoryView<'a> {
    fn from(record: &'a HistoryRecord) -> Self {
        let event = &record.event;
        HistoryView {
            seq: record.seq,
            event_id: event.event_id.as_deref(),
            kind: event.kind.as_str(),
            task_id: event.task_id.as_deref(),
            result: record.result.as_str(),
            occurred_at: Timestamp(record.occurred_at()),
            received_at: Timestamp(record.received_at),
            name: event.name.as_deref(),
            process_type: event.process_type.as_deref(),
            correlation_id: event.correlation_id.as_deref(),
            progress: event.progress.as_ref().map(ProgressView::from),
            error: event.error.as_ref(),
            attributes: &event.attributes,
            heartbeat_timeout: event.heartbeat_timeout,
            deadline: event.deadline.map(|deadline| deadline.map(Timestamp)),
            source: (record.source == Source::Daemon).then_some(DAEMON_SOURCE),
        }
    }
}

/// One item of the change feed: the history item, whose process, and the
/// statuses the event left.
#[derive(Serialize)]
pub struct FeedItemView<'a> {
    process_id: &'a str,
    process_status: Status,
    task_status: Option<Status>,
    #[serde(flatten)]
    history: HistoryView<'a>,
}

/// A removed process, as the change feed tells it.
#[derive(Serialize)]
pub struct DeletedItemView<'a> {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    process_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_type: Option<&'a str>,
    occurred_at: Timestamp,
    received_at: Timestamp,
    source: &'static str,
}

/// The answer of `GET /v1/stats/durations` (and `inspect durations`): the
/// summary of `process_type`, or of every type, with the window covered.
pub fn durations_json(
    summaries: &BTreeMap<String, Summary>,
    process_type: Option<&str>,
    (from, to): (Millis, Millis),
) -> serde_json::Value {
    let mut body = match process_type {
        Some(kind) => summary_json(summaries.get(kind)),
        None => serde_json::json!({"process_types": summaries
            .iter()
            .map(|(kind, summary)| (kind.clone(), summary_json(Some(summary))))
            .collect::<serde_json::Map<_, _>>()}),
    };
    body["finished_after"] = format_millis(from).into();
    body["finished_before"] = format_millis(to).into();
    body
}

/// One summary; `None` for a type with no process in the window.
fn summary_json(summary: Option<&Summary>) -> serde_json::Value {
    let counts = summary.map_or([0; 4], |summary| summary.counts);
    let by_status: serde_json::Map<String, serde_json::Value> = TERMINAL
        .iter()
        .zip(counts)
        .map(|(status, count)| (status.as_str().to_owned(), count.into()))
        .collect();
    let quantiles = summary
        .filter(|summary| summary.sketch.count() > 0)
        .map(|summary| {
            serde_json::json!({
                "p50": summary.quantile(0.5),
                "p90": summary.quantile(0.9),
                "p99": summary.quantile(0.99),
                "max": summary.quantile(1.0),
            })
        });
    serde_json::json!({
        "count": counts.iter().sum::<u64>(),
        "by_status": by_status,
        "duration_ms": quantiles,
    })
}

/// Writes one feed item as JSON into `out`.
pub fn write_feed_item(item: &FeedItem, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match item {
        FeedItem::Event {
            process_id,
            record,
            process_status,
            task_status,
        } => serde_json::to_writer(
            out,
            &FeedItemView {
                process_id,
                process_status: *process_status,
                task_status: *task_status,
                history: HistoryView::from(record.as_ref()),
            },
        ),
        FeedItem::Deleted {
            seq,
            process_id,
            process_type,
            at,
        } => serde_json::to_writer(
            out,
            &DeletedItemView {
                seq: *seq,
                kind: "process.deleted",
                process_id,
                process_type: process_type.as_deref(),
                occurred_at: Timestamp(*at),
                received_at: Timestamp(*at),
                source: DAEMON_SOURCE,
            },
        ),
    }
}

/// `GET /v1/stats`: the counters, and how many processes are stalled.
/// `GET /v1/stats`: the counters, the stalled count (in the counters), and
/// the store's id.
pub struct StatsView<'a>(pub &'a Counters, pub &'a str);

impl Serialize for StatsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct ByStatus<'a>(&'a Counters);
        impl Serialize for ByStatus<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                // Every process status, zeros included; `skipped` is a task's only.
                for status in Status::ALL.into_iter().filter(|s| *s != Status::Skipped) {
                    map.serialize_entry(
                        status.as_str(),
                        &self.0.processes_by_status[usize::from(status.code())],
                    )?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("processes", &ByStatus(self.0))?;
        map.serialize_entry("stalled", &self.0.stalled)?;
        map.serialize_entry("processes_total", &self.0.processes_total())?;
        map.serialize_entry("events_total", &self.0.events_total)?;
        map.serialize_entry("last_seq", &self.0.last_seq)?;
        map.serialize_entry("store_id", self.1)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_exactly_milliseconds_in_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_795_600_800_123), "2026-11-25T10:00:00.123Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_millis(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        // Past year 9999 RFC 3339 has no form: the milliseconds as they are.
        assert_eq!(format_millis(253_402_300_800_000), "253402300800000");
    }

    proptest::proptest! {
        /// The hand-placed digits agree with `time`'s own RFC 3339 writer,
        /// in JSON as in text.
        #[test]
        fn timestamps_match_the_time_crate(millis in -62_167_219_200_000i64..253_402_300_800_000) {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap();
            let expected = at
                .format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                ))
                .unwrap();
            proptest::prop_assert_eq!(format_millis(millis), expected.clone());
            proptest::prop_assert_eq!(
                serde_json::to_string(&Timestamp(millis)).unwrap(),
                format!("\"{expected}\"")
            );
        }
    }
}
