//! Events as the orchestrators send them, and their validation.
//!
//! `EventInput` is the wire shape (unknown fields refused); `Event` is what is
//! left once every rule of the API contract has been checked. Only an `Event`
//! ever reaches the writer, so nothing invalid can be stored.

use super::{Millis, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const MAX_ID_BYTES: usize = 200;
const MAX_LABEL_BYTES: usize = 200;
const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
const MAX_ERROR_BYTES: usize = 4096;
const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 128;
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;

/// Every event type of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "process.queued")]
    ProcessQueued,
    #[serde(rename = "process.started")]
    ProcessStarted,
    #[serde(rename = "process.progress")]
    ProcessProgress,
    #[serde(rename = "process.heartbeat")]
    ProcessHeartbeat,
    #[serde(rename = "process.succeeded")]
    ProcessSucceeded,
    #[serde(rename = "process.failed")]
    ProcessFailed,
    #[serde(rename = "process.cancelled")]
    ProcessCancelled,
    #[serde(rename = "process.timed_out")]
    ProcessTimedOut,
    #[serde(rename = "task.started")]
    TaskStarted,
    #[serde(rename = "task.progress")]
    TaskProgress,
    #[serde(rename = "task.succeeded")]
    TaskSucceeded,
    #[serde(rename = "task.failed")]
    TaskFailed,
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
    #[serde(rename = "task.skipped")]
    TaskSkipped,
    /// Made by the daemon, never sent: a process had no event for longer
    /// than its heartbeat timeout. Last, so that stored codes stay.
    #[serde(rename = "process.stalled")]
    ProcessStalled,
    /// Made by the daemon, never sent: the same for a task.
    #[serde(rename = "task.stalled")]
    TaskStalled,
}

/// Whether an event is about the process itself or about one of its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Process,
    Task,
}

impl EventType {
    /// Every type a sender may post.
    pub const ALL: [EventType; 14] = [
        EventType::ProcessQueued,
        EventType::ProcessStarted,
        EventType::ProcessProgress,
        EventType::ProcessHeartbeat,
        EventType::ProcessSucceeded,
        EventType::ProcessFailed,
        EventType::ProcessCancelled,
        EventType::ProcessTimedOut,
        EventType::TaskStarted,
        EventType::TaskProgress,
        EventType::TaskSucceeded,
        EventType::TaskFailed,
        EventType::TaskCancelled,
        EventType::TaskSkipped,
    ];

    pub fn scope(self) -> Scope {
        use EventType::*;
        match self {
            ProcessQueued | ProcessStarted | ProcessProgress | ProcessHeartbeat
            | ProcessSucceeded | ProcessFailed | ProcessCancelled | ProcessTimedOut
            | ProcessStalled => Scope::Process,
            TaskStarted | TaskProgress | TaskSucceeded | TaskFailed | TaskCancelled
            | TaskSkipped | TaskStalled => Scope::Task,
        }
    }

    /// The status a terminal event puts its process or task in; `None` for
    /// the non-terminal events.
    pub fn terminal_status(self) -> Option<Status> {
        use EventType::*;
        match self {
            ProcessSucceeded | TaskSucceeded => Some(Status::Succeeded),
            ProcessFailed | TaskFailed => Some(Status::Failed),
            ProcessCancelled | TaskCancelled => Some(Status::Cancelled),
            ProcessTimedOut => Some(Status::TimedOut),
            TaskSkipped => Some(Status::Skipped),
            _ => None,
        }
    }

    /// Only failures, time-outs and cancellations may carry an `error`.
    pub fn may_carry_error(self) -> bool {
        matches!(
            self.terminal_status(),
            Some(Status::Failed | Status::TimedOut | Status::Cancelled)
        )
    }

    pub fn as_str(self) -> &'static str {
        use EventType::*;
        match self {
            ProcessQueued => "process.queued",
            ProcessStarted => "process.started",
            ProcessProgress => "process.progress",
            ProcessHeartbeat => "process.heartbeat",
            ProcessSucceeded => "process.succeeded",
            ProcessFailed => "process.failed",
            ProcessCancelled => "process.cancelled",
            ProcessTimedOut => "process.timed_out",
            TaskStarted => "task.started",
            TaskProgress => "task.progress",
            TaskSucceeded => "task.succeeded",
            TaskFailed => "task.failed",
            TaskCancelled => "task.cancelled",
            TaskSkipped => "task.skipped",
            ProcessStalled => "process.stalled",
            TaskStalled => "task.stalled",
        }
    }

    /// Types only the daemon makes (`*.stalled`); a sender's is refused.
    pub fn is_daemon_only(self) -> bool {
        matches!(self, EventType::ProcessStalled | EventType::TaskStalled)
    }

    /// The type named `name`, as the API writes it.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .chain([EventType::ProcessStalled, EventType::TaskStalled])
            .find(|kind| kind.as_str() == name)
    }
}

/// The longest heartbeat timeout, in seconds: 30 days.
pub const MAX_HEARTBEAT_TIMEOUT_SECS: u32 = 2_592_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub percent: Option<f64>,
    pub current: Option<u64>,
    pub total: Option<u64>,
    pub message: Option<String>,
}

/// The wire shape of `progress`: as `Progress`, but `current` and `total`
/// are any JSON number with a whole value (`5` or `5.0`: JSON does not tell
/// them apart, and many senders write every number as a float).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressInput {
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    current: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    total: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

impl From<ProgressInput> for Progress {
    fn from(input: ProgressInput) -> Progress {
        Progress {
            percent: input.percent,
            current: input.current,
            total: input.total,
            message: input.message,
        }
    }
}

/// The largest whole number a JSON number carries exactly in every
/// language (2^53, JavaScript's safe range).
pub const MAX_WHOLE_NUMBER: u64 = 1 << 53;

/// A JSON object read into `T`, or null. serde would also read a struct
/// from an array of its fields in order; the API's objects are objects.
fn object_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    struct ObjectOnly<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
        type Value = Option<T>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an object or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_any(ObjectOnly(std::marker::PhantomData))
}

/// A JSON number whose value is a whole number from 0 to 2^53, written
/// either way (`4` or `4.0`), or null.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = match number.as_u64() {
        Some(whole) => Some(whole),
        None => number
            .as_f64()
            .filter(|value| value.fract() == 0.0 && *value >= 0.0)
            .filter(|value| *value <= MAX_WHOLE_NUMBER as f64)
            .map(|value| value as u64),
    };
    match whole {
        Some(whole) if whole <= MAX_WHOLE_NUMBER => Ok(Some(whole)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number from 0 to {MAX_WHOLE_NUMBER}, not {number}"
        ))),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorInfo {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The wire shape of one event. Field names are the API's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub process_id: String,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub process_type: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default, deserialize_with = "object_or_null")]
    pub progress: Option<ProgressInput>,
    #[serde(default, deserialize_with = "object_or_null")]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "whole_number")]
    pub heartbeat_timeout: Option<u64>,
    /// Absent: unchanged; `null`: cleared; a timestamp: set.
    #[serde(default, deserialize_with = "present")]
    pub deadline: Option<Option<String>>,
}

/// A field that is present, `null` included: `Some(None)` for `null`, and
/// (with `#[serde(default)]`) `None` when the field is absent.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A validated event. `occurred_at` stays `None` when the sender gave none,
/// so that a resend hashes to the same fingerprint; the writer substitutes
/// the receive time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
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
    /// Seconds without an event after which its process (or task) counts
    /// as stalled; set from now on.
    pub heartbeat_timeout: Option<u32>,
    /// A process's deadline: `Some(Some(t))` sets it, `Some(None)` clears it.
    pub deadline: Option<Option<Millis>>,
}

/// Which field of an event broke which rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidField {
    pub field: String,
    pub detail: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// True for a process or task id: 1 to 200 bytes of `[A-Za-z0-9._:~-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
}

/// True for an event id (an idempotency key): 1 to 200 bytes of printable ASCII.
pub fn is_valid_event_id(id: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&id.len()) && id.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the instants
/// that RFC 3339 can write in UTC, and so the ones the API shows.
const EARLIEST_MILLIS: Millis = -62_167_219_200_000;
const LATEST_MILLIS: Millis = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp with any offset to UTC milliseconds. An
/// instant whose UTC year falls outside 0000-9999 (`0000-01-01T00:00:00+01:00`
/// is in year -1) is refused: it could never be written back as RFC 3339.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Millis::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .ok()
        .filter(|millis| (EARLIEST_MILLIS..=LATEST_MILLIS).contains(millis))
}

fn check_id(field: &str, id: &str) -> Result<(), InvalidField> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("`{field}` must be 1 to 200 bytes of letters, digits and . _ : ~ -"),
        ))
    }
}

fn check_label(field: &str, value: &Option<String>) -> Result<(), InvalidField> {
    match value {
        Some(text) if text.len() > MAX_LABEL_BYTES => Err(InvalidField::new(
            field,
            format!(
                "`{field}` is {} bytes; at most {MAX_LABEL_BYTES} are allowed",
                text.len()
            ),
        )),
        _ => Ok(()),
    }
}

impl EventInput {
    /// Checks every rule of the contract. `fallback_event_id` is the
    /// `Idempotency-Key` or `webhook-id` header, used when the body has no
    /// `event_id`.
    pub fn validate(self, fallback_event_id: Option<&str>) -> Result<Event, InvalidField> {
        let (event_id, from) = match self.event_id {
            Some(id) => (Some(id), "`event_id`"),
            None => (
                fallback_event_id.map(str::to_owned),
                "the `Idempotency-Key` (or `webhook-id`) header, which keys an event without `event_id`,",
            ),
        };
        if let Some(id) = &event_id {
            if !is_valid_event_id(id) {
                return Err(InvalidField::new(
                    "event_id",
                    format!("{from} must be 1 to 200 bytes of printable ASCII"),
                ));
            }
        }
        if self.kind.is_daemon_only() {
            return Err(InvalidField::new(
                "type",
                format!(
                    "`{}` is made by ProcessManager when a heartbeat timeout passes; it cannot be sent",
                    self.kind.as_str()
                ),
            ));
        }
        check_id("process_id", &self.process_id)?;
        match (self.kind.scope(), &self.task_id) {
            (Scope::Task, None) => {
                return Err(InvalidField::new(
                    "task_id",
                    format!("`task_id` is required for `{}` events", self.kind.as_str()),
                ))
            }
            (Scope::Process, Some(_)) => {
                return Err(InvalidField::new(
                    "task_id",
                    format!(
                    "`task_id` is not allowed on `{}`: process events are about the whole process",
                    self.kind.as_str()
                ),
                ))
            }
            (_, Some(task_id)) => check_id("task_id", task_id)?,
            (Scope::Process, None) => {}
        }
        let occurred_at = match &self.occurred_at {
            None => None,
            Some(text) => Some(parse_timestamp(text).ok_or_else(|| {
                InvalidField::new(
                    "occurred_at",
                    "`occurred_at` must be an RFC 3339 timestamp such as 2026-11-25T10:00:00Z",
                )
            })?),
        };
        check_label("name", &self.name)?;
        check_label("process_type", &self.process_type)?;
        check_label("correlation_id", &self.correlation_id)?;
        let progress = self.progress.map(Progress::from);
        if let Some(progress) = &progress {
            validate_progress(progress)?;
        }
        if let Some(error) = &self.error {
            if !self.kind.may_carry_error() {
                return Err(InvalidField::new(
                    "error",
                    format!(
                        "`error` is only allowed on failed, timed_out and cancelled events, not on `{}`",
                        self.kind.as_str()
                    ),
                ));
            }
            if error.code.len() + error.message.len() > MAX_ERROR_BYTES {
                return Err(InvalidField::new(
                    "error",
                    format!("`error.code` and `error.message` together must be at most {MAX_ERROR_BYTES} bytes"),
                ));
            }
        }
        let attributes = self.attributes.unwrap_or_default();
        validate_attributes(&attributes)?;
        let heartbeat_timeout = match self.heartbeat_timeout {
            None => None,
            Some(secs) => Some(
                u32::try_from(secs)
                    .ok()
                    .filter(|secs| (1..=MAX_HEARTBEAT_TIMEOUT_SECS).contains(secs))
                    .ok_or_else(|| {
                        InvalidField::new(
                            "heartbeat_timeout",
                            format!("`heartbeat_timeout` must be whole seconds from 1 to {MAX_HEARTBEAT_TIMEOUT_SECS} (30 days)"),
                        )
                    })?,
            ),
        };
        let deadline = match self.deadline {
            None => None,
            Some(_) if self.kind.scope() == Scope::Task => {
                return Err(InvalidField::new(
                    "deadline",
                    "`deadline` belongs to the process: send it on a process event",
                ))
            }
            Some(None) => Some(None),
            Some(Some(text)) => Some(Some(parse_timestamp(&text).ok_or_else(|| {
                InvalidField::new(
                    "deadline",
                    "`deadline` must be an RFC 3339 timestamp such as 2026-11-25T10:00:00Z, or null to clear it",
                )
            })?)),
        };
        Ok(Event {
            heartbeat_timeout,
            deadline,
            event_id,
            kind: self.kind,
            process_id: self.process_id,
            task_id: self.task_id,
            occurred_at,
            name: self.name,
            process_type: self.process_type,
            correlation_id: self.correlation_id,
            progress,
            error: self.error,
            attributes,
        })
    }
}

fn validate_progress(progress: &Progress) -> Result<(), InvalidField> {
    if let Some(percent) = progress.percent {
        if !(0.0..=100.0).contains(&percent) {
            return Err(InvalidField::new(
                "progress.percent",
                "`progress.percent` must be within 0 and 100",
            ));
        }
    }
    if let (Some(current), Some(total)) = (progress.current, progress.total) {
        if current > total {
            return Err(InvalidField::new(
                "progress.current",
                format!("`progress.current` ({current}) is larger than `progress.total` ({total})"),
            ));
        }
    }
    if let Some(message) = &progress.message {
        if message.len() > MAX_PROGRESS_MESSAGE_BYTES {
            return Err(InvalidField::new(
                "progress.message",
                format!("`progress.message` must be at most {MAX_PROGRESS_MESSAGE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(InvalidField::new(
            "attributes",
            format!(
                "at most {MAX_ATTRIBUTES} attributes are allowed, got {}",
                attributes.len()
            ),
        ));
    }
    for (key, value) in attributes {
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY_BYTES {
            return Err(InvalidField::new(
                format!("attributes.{key}"),
                format!("attribute keys must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"),
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(InvalidField::new(
                format!("attributes.{key}"),
                format!("attribute values must be at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> EventInput {
        serde_json::from_str(json).expect("test input parses")
    }

    #[test]
    fn progress_and_error_are_objects_or_null_never_arrays() {
        let parsed = |json: &str| serde_json::from_str::<EventInput>(json);
        let event = parsed(
            r#"{"type":"process.failed","process_id":"p","progress":{"percent":5},"error":null}"#,
        )
        .unwrap();
        assert_eq!(event.progress.and_then(|p| p.percent), Some(5.0));
        assert!(event.error.is_none());
        for json in [
            r#"{"type":"process.failed","process_id":"p","progress":[null,null]}"#,
            r#"{"type":"process.failed","process_id":"p","error":["code","message"]}"#,
            r#"{"type":"process.failed","process_id":"p","progress":"half"}"#,
        ] {
            assert!(parsed(json).is_err(), "{json}");
        }
    }

    #[test]
    fn ids_follow_the_contract() {
        assert!(is_valid_id("08585409812345678901234567890CU12"));
        assert!(is_valid_id("a.b_c:d~e-f"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("has space"));
        assert!(!is_valid_id("slash/inside"));
        assert!(is_valid_id(&"x".repeat(200)));
        assert!(!is_valid_id(&"x".repeat(201)));
        assert!(is_valid_event_id("any printable !@#$ ok"));
        assert!(!is_valid_event_id("tab\tinside"));
    }

    #[test]
    fn header_key_is_used_only_when_the_body_has_none() {
        let from_body = input(r#"{"type":"process.started","process_id":"p","event_id":"body"}"#)
            .validate(Some("header"))
            .unwrap();
        assert_eq!(from_body.event_id.as_deref(), Some("body"));
        let from_header = input(r#"{"type":"process.started","process_id":"p"}"#)
            .validate(Some("header"))
            .unwrap();
        assert_eq!(from_header.event_id.as_deref(), Some("header"));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (r#"{"type":"task.started","process_id":"p"}"#, "task_id"),
            (
                r#"{"type":"process.started","process_id":"p","task_id":"t"}"#,
                "task_id",
            ),
            (
                r#"{"type":"process.started","process_id":"p q"}"#,
                "process_id",
            ),
            (
                r#"{"type":"process.started","process_id":"p","occurred_at":"yesterday"}"#,
                "occurred_at",
            ),
            (
                r#"{"type":"process.progress","process_id":"p","progress":{"percent":101}}"#,
                "progress.percent",
            ),
            (
                // The next double above 100: parsed exactly, it is over the limit.
                r#"{"type":"process.progress","process_id":"p","progress":{"percent":100.00000000000001}}"#,
                "progress.percent",
            ),
            (
                r#"{"type":"process.progress","process_id":"p","progress":{"current":5,"total":4}}"#,
                "progress.current",
            ),
            (
                r#"{"type":"process.succeeded","process_id":"p","error":{"code":"x","message":"y"}}"#,
                "error",
            ),
        ];
        for (json, field) in cases {
            let err = input(json).validate(None).unwrap_err();
            assert_eq!(err.field, field, "for {json}");
        }
    }

    #[test]
    fn progress_counts_take_any_whole_json_number() {
        let event = input(
            r#"{"type":"process.progress","process_id":"p","progress":{"current":5.0,"total":1e1}}"#,
        )
        .validate(None)
        .unwrap();
        let progress = event.progress.unwrap();
        assert_eq!((progress.current, progress.total), (Some(5), Some(10)));
        for refused in ["5.5", "-1", "-1.0", "1e300", "9007199254740993"] {
            let json = format!(
                r#"{{"type":"process.progress","process_id":"p","progress":{{"current":{refused}}}}}"#
            );
            let error = serde_json::from_str::<EventInput>(&json).unwrap_err();
            assert!(
                error.to_string().contains("whole number"),
                "{refused}: {error}"
            );
        }
    }

    #[test]
    fn timestamps_accept_any_offset() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_timestamp("1970-01-01T01:00:01.5+01:00"), Some(1500));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01"), None);
        // The edges of what UTC RFC 3339 can write, and just past them.
        assert_eq!(
            parse_timestamp("0000-01-01T00:00:00Z"),
            Some(EARLIEST_MILLIS)
        );
        assert_eq!(
            parse_timestamp("9999-12-31T23:59:59.999Z"),
            Some(LATEST_MILLIS)
        );
        assert_eq!(parse_timestamp("0000-01-01T00:00:00+00:01"), None);
        assert_eq!(parse_timestamp("9999-12-31T23:59:59-00:01"), None);
    }
}
