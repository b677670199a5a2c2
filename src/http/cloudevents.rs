//! CloudEvents 1.0 over HTTP: structured, batch and binary modes mapped
//! onto the events of this API, and the webhook validation handshake
//! (`OPTIONS`). A CloudEvent becomes the same `EventInput` a plain event
//! is read into, so every rule, limit and dedup of version 1 applies as it
//! is; only the names in an error are those of the CloudEvent.
//!
//! Mapping: `type` (after the optional `cloudevents.type_prefix`) is the
//! event type, `subject` the process id, `id` the event id, `time` the
//! event's `occurred_at`, and `data` (a JSON object) the other fields.

use super::problem::ApiError;
use crate::config::CloudEventsConfig;
use crate::domain::IncomingEvent;
use crate::domain::{EventInput, EventType, InvalidField};
use hyper::HeaderMap;
use percent_encoding::percent_decode_str;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The attributes this API maps, as named in structured mode; binary mode
/// names them `ce-<name>`.
const SPECVERSION: &str = "specversion";
const ID: &str = "id";
const SOURCE: &str = "source";
const TYPE: &str = "type";
const SUBJECT: &str = "subject";
const TIME: &str = "time";
const DATACONTENTTYPE: &str = "datacontenttype";

/// The fields of a plain event that CloudEvent attributes give, with the
/// attribute each comes from: `data` must not hold them too.
const FROM_ATTRIBUTES: [(&str, &str); 4] = [
    ("type", TYPE),
    ("process_id", SUBJECT),
    ("event_id", ID),
    ("occurred_at", TIME),
];

/// How a request to `POST /v1/events` carries its events, told by its
/// headers alone.
#[derive(Debug)]
pub enum Framing {
    /// This API's own JSON: one event object or an array of them.
    Plain,
    /// `application/cloudevents+json`: one CloudEvent, attributes and
    /// data in the body.
    Structured,
    /// `application/cloudevents-batch+json`: an array of structured ones.
    Batch,
    /// `ce-*` headers hold the attributes; the body is `data`.
    Binary(BinaryAttributes),
    /// Neither JSON nor a CloudEvent.
    Unsupported,
}

impl Framing {
    pub fn of(headers: &HeaderMap) -> Framing {
        let content_type = headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        // Any `ce-` header makes it binary mode: one without
        // `ce-specversion` is told so, rather than read as a plain event.
        if headers.keys().any(|name| name.as_str().starts_with("ce-")) {
            // The body is `data`: JSON, or nothing at all.
            return match content_type {
                Some(media) if !is_json_media(media) => Framing::Unsupported,
                _ => Framing::Binary(BinaryAttributes::from_headers(headers)),
            };
        }
        let Some(media) = content_type else {
            return Framing::Unsupported;
        };
        let essence = media.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/cloudevents+json") {
            Framing::Structured
        } else if essence.eq_ignore_ascii_case("application/cloudevents-batch+json") {
            Framing::Batch
        } else if is_json_media(media) {
            Framing::Plain
        } else {
            Framing::Unsupported
        }
    }
}

/// `application/json` or any `application/*+json`, with or without
/// parameters, in any case.
pub fn is_json_media(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let token = |text: &str| {
        !text.is_empty()
            && !text
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    };
    kind.eq_ignore_ascii_case("application")
        && token(subtype)
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .get(subtype.len().saturating_sub(5)..)
                .is_some_and(|end| end.eq_ignore_ascii_case("+json")))
}

/// The `ce-*` headers of a binary-mode CloudEvent, percent-decoded as the
/// HTTP binding says; a header that does not decode to UTF-8 is kept as
/// the error it causes.
#[derive(Debug, Default)]
pub struct BinaryAttributes {
    values: Vec<(&'static str, Result<String, ()>)>,
}

impl BinaryAttributes {
    fn from_headers(headers: &HeaderMap) -> BinaryAttributes {
        let values = [SPECVERSION, ID, SOURCE, TYPE, SUBJECT, TIME]
            .into_iter()
            .filter_map(|name| {
                let value = headers.get(format!("ce-{name}"))?;
                let decoded = value.to_str().map_err(|_| ()).and_then(|text| {
                    percent_decode_str(text)
                        .decode_utf8()
                        .map(|text| text.into_owned())
                        .map_err(|_| ())
                });
                Some((name, decoded))
            })
            .collect();
        BinaryAttributes { values }
    }

    fn get(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.values.iter().find(|(known, _)| *known == name) {
            None => Ok(None),
            Some((_, Ok(text))) => Ok(Some(Value::String(text.clone()))),
            Some((_, Err(()))) => Err(invalid(
                Naming::Binary,
                name,
                "the header must be percent-encoded UTF-8 text",
            )),
        }
    }
}

/// Which names an error uses: the attribute's in structured mode, its
/// header's in binary mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    Structured,
    Binary,
}

impl Naming {
    fn name(self, attribute: &str) -> String {
        match self {
            Naming::Structured => attribute.to_owned(),
            Naming::Binary => format!("ce-{attribute}"),
        }
    }
}

fn invalid(naming: Naming, attribute: &str, detail: impl Into<String>) -> ApiError {
    ApiError::InvalidEvent(InvalidField::new(naming.name(attribute), detail))
}

/// One structured-mode CloudEvent (a JSON object).
pub fn decode_structured(
    json: &[u8],
    settings: &CloudEventsConfig,
    received_at: i64,
) -> Result<IncomingEvent, ApiError> {
    let value: Value = serde_json::from_slice(json).map_err(|error| syntax_error(&error))?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::InvalidEvent(InvalidField::new(
            "body",
            "a structured CloudEvent is one JSON object; send several as an array with Content-Type application/cloudevents-batch+json",
        )));
    };
    if object.contains_key("data_base64") {
        return Err(invalid(
            Naming::Structured,
            "data_base64",
            "`data` must be JSON: this API does not take `data_base64`",
        ));
    }
    let data = object.remove("data");
    let mut take = |name: &str| Ok(object.remove(name));
    let attributes = Attributes::read(&mut take, Naming::Structured)?;
    // What is left are extension attributes (and `dataschema`): kept by no
    // one, but held to the spec so that a misspelt field is not lost
    // silently.
    for (name, value) in &object {
        check_extension(name, value)?;
    }
    map_event(attributes, data, Naming::Structured, settings, received_at)
}

/// A batch-mode body: an array of structured CloudEvents, each judged
/// alone, as a batch of plain events is.
pub fn decode_batch(
    json: &[u8],
    max_batch: usize,
    settings: &CloudEventsConfig,
    received_at: i64,
) -> Result<Vec<Result<IncomingEvent, ApiError>>, ApiError> {
    let items: Vec<&RawValue> = match serde_json::from_slice(json) {
        Ok(items) => items,
        Err(error) if error.is_data() => {
            return Err(ApiError::InvalidEvent(InvalidField::new(
                "body",
                "a CloudEvents batch is a JSON array of structured CloudEvents; send one alone with Content-Type application/cloudevents+json",
            )))
        }
        Err(error) => return Err(syntax_error(&error)),
    };
    if items.len() > max_batch {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch has {} events; at most {max_batch} are allowed (set the sender's maximum events per batch to at most {max_batch})",
            items.len()
        )));
    }
    Ok(items
        .iter()
        .map(|item| decode_structured(item.get().as_bytes(), settings, received_at))
        .collect())
}

/// A binary-mode CloudEvent: its attributes from the headers, the body as
/// `data` (empty for none).
pub fn decode_binary(
    attributes: &BinaryAttributes,
    body: &[u8],
    settings: &CloudEventsConfig,
    received_at: i64,
) -> Result<IncomingEvent, ApiError> {
    let data = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(body).map_err(|error| syntax_error(&error))?)
    };
    let mut take = |name: &str| attributes.get(name);
    // In binary mode the data's media type is the request's Content-Type,
    // already found to be JSON.
    let attributes = Attributes::read(&mut take, Naming::Binary)?;
    map_event(attributes, data, Naming::Binary, settings, received_at)
}

/// An attribute this API does not read: its name must be one the spec
/// allows (lower-case letters and digits) and its value a string, a
/// boolean, an integer, or null.
fn check_extension(name: &str, value: &Value) -> Result<(), ApiError> {
    let detail = if name.is_empty()
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    {
        format!("`{name}` is not a CloudEvents attribute: attribute names are lower-case letters and digits; put the event's fields in `data`")
    } else {
        let integral = |number: &serde_json::Number| {
            number.is_i64() || number.is_u64() || number.as_f64().is_some_and(|n| n.fract() == 0.0)
        };
        match value {
            Value::Null | Value::String(_) => return Ok(()),
            _ if name == "dataschema" => "`dataschema` must be a URI (a string)".to_owned(),
            Value::Bool(_) => return Ok(()),
            Value::Number(number) if integral(number) => return Ok(()),
            _ => format!("the attribute `{name}` must be a string, a boolean or an integer"),
        }
    };
    Err(ApiError::InvalidEvent(InvalidField::new(name, detail)))
}

fn syntax_error(error: &serde_json::Error) -> ApiError {
    ApiError::MalformedJson {
        detail: error.to_string(),
        line: error.line(),
        column: error.column(),
    }
}

/// The context attributes this API reads, each checked to be a string.
struct Attributes {
    id: String,
    kind: String,
    subject: String,
    time: Option<String>,
}

impl Attributes {
    fn read(
        take: &mut dyn FnMut(&str) -> Result<Option<Value>, ApiError>,
        naming: Naming,
    ) -> Result<Attributes, ApiError> {
        let mut string = |name: &str, required: Option<&str>| -> Result<Option<String>, ApiError> {
            match take(name)? {
                None | Some(Value::Null) => match required {
                    Some(why) => Err(invalid(
                        naming,
                        name,
                        format!("`{}` is required: {why}", naming.name(name)),
                    )),
                    None => Ok(None),
                },
                Some(Value::String(text)) => Ok(Some(text)),
                Some(_) => Err(invalid(
                    naming,
                    name,
                    format!("`{}` must be a string", naming.name(name)),
                )),
            }
        };
        let version = string(SPECVERSION, Some("this endpoint takes CloudEvents 1.0"))?;
        if version.as_deref() != Some("1.0") {
            return Err(invalid(
                naming,
                SPECVERSION,
                format!(
                    "`{}` must be \"1.0\"; this endpoint takes CloudEvents 1.0",
                    naming.name(SPECVERSION)
                ),
            ));
        }
        let id = string(
            ID,
            Some("it is the event's id, which makes a redelivery a duplicate"),
        )?
        .unwrap_or_default();
        let source = string(SOURCE, Some("every CloudEvent names its source"))?.unwrap_or_default();
        for (name, value) in [(ID, &id), (SOURCE, &source)] {
            if value.is_empty() {
                return Err(invalid(
                    naming,
                    name,
                    format!("`{}` must not be empty", naming.name(name)),
                ));
            }
        }
        let kind = string(TYPE, Some("it names the event type"))?.unwrap_or_default();
        let subject = string(
            SUBJECT,
            Some("it is the id of the process the event is about"),
        )?
        .unwrap_or_default();
        let time = string(TIME, None)?;
        if naming == Naming::Structured {
            if let Some(media) = string(DATACONTENTTYPE, None)? {
                if !is_json_media(&media) {
                    return Err(invalid(
                        naming,
                        DATACONTENTTYPE,
                        format!("`datacontenttype` is `{media}`; `data` must be JSON (application/json)"),
                    ));
                }
            }
        }
        Ok(Attributes {
            id,
            kind,
            subject,
            time,
        })
    }
}

/// The event type a CloudEvent `type` names: one of this API's event types
/// a sender may send, with or without the configured prefix.
fn event_type(kind: &str, naming: Naming, prefix: &str) -> Result<EventType, ApiError> {
    let bare = if prefix.is_empty() {
        kind
    } else {
        kind.strip_prefix(prefix).unwrap_or(kind)
    };
    match EventType::parse(bare) {
        Some(parsed) if !parsed.is_daemon_only() => Ok(parsed),
        _ => {
            let known = EventType::ALL
                .iter()
                .map(|kind| kind.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let after = if prefix.is_empty() {
                String::new()
            } else {
                format!(", each optionally after the prefix `{prefix}`")
            };
            Err(invalid(
                naming,
                TYPE,
                format!(
                    "`{kind}` is not an event type of this API; `{}` must be one of {known}{after}",
                    naming.name(TYPE)
                ),
            ))
        }
    }
}

/// Turns the attributes and data into this API's event and validates it
/// by the rules every event meets.
fn map_event(
    attributes: Attributes,
    data: Option<Value>,
    naming: Naming,
    settings: &CloudEventsConfig,
    received_at: i64,
) -> Result<IncomingEvent, ApiError> {
    let kind = event_type(&attributes.kind, naming, &settings.type_prefix)?;
    let mut fields = match data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(fields)) => fields,
        Some(_) => {
            return Err(ApiError::InvalidEvent(InvalidField::new(
                "data",
                "`data` must be a JSON object holding the event's other fields (task_id, name, progress, error, attributes, …)",
            )))
        }
    };
    for (field, attribute) in FROM_ATTRIBUTES {
        if fields.contains_key(field) {
            return Err(ApiError::InvalidEvent(InvalidField::new(
                format!("data.{field}"),
                format!(
                    "`{field}` is given by the CloudEvents attribute `{}`; leave it out of `data`",
                    naming.name(attribute)
                ),
            )));
        }
    }
    fields.insert("type".into(), Value::String(kind.as_str().to_owned()));
    fields.insert("process_id".into(), Value::String(attributes.subject));
    fields.insert("event_id".into(), Value::String(attributes.id));
    if let Some(time) = attributes.time {
        fields.insert("occurred_at".into(), Value::String(time));
    }
    let input: EventInput =
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            rename(super::ingest::json_error(&inner, &path), naming)
        })?;
    let event = input
        .validate(None)
        .map_err(|invalid| rename(ApiError::InvalidEvent(invalid), naming))?;
    Ok(IncomingEvent::new(event, received_at))
}

/// Names a field of the mapped event as the CloudEvent has it.
fn rename(error: ApiError, naming: Naming) -> ApiError {
    let ApiError::InvalidEvent(mut invalid) = error else {
        return error;
    };
    let (head, rest) = match invalid.field.split_once('.') {
        Some((head, rest)) => (head.to_owned(), Some(rest.to_owned())),
        None => (invalid.field.clone(), None),
    };
    invalid.field = match FROM_ATTRIBUTES.iter().find(|(field, _)| *field == head) {
        Some((field, attribute)) => {
            invalid.detail = format!(
                "{} (the CloudEvents attribute `{}` is this API's `{field}`)",
                invalid.detail,
                naming.name(attribute)
            );
            let mut name = naming.name(attribute);
            if let Some(rest) = rest {
                name = format!("{name}.{rest}");
            }
            name
        }
        None => format!("data.{}", invalid.field),
    };
    ApiError::InvalidEvent(invalid)
}

/// What the validation handshake (`OPTIONS /v1/events`) answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Not a handshake: a plain `OPTIONS`, answered with `Allow`.
    Plain,
    /// Delivery from this origin is welcome.
    Allowed { origin: String },
    /// Delivery from this origin is not.
    Refused { origin: String },
    /// `WebHook-Request-Origin` is not a DNS name.
    Malformed,
}

impl Handshake {
    pub fn judge(headers: &HeaderMap, settings: &CloudEventsConfig) -> Handshake {
        let Some(origin) = headers.get("webhook-request-origin") else {
            return Handshake::Plain;
        };
        // A DNS expression such as `eventgrid.azure.net`.
        let well_formed = (1..=253).contains(&origin.len())
            && origin
                .as_bytes()
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'*'));
        let Ok(origin) = origin.to_str().map(str::to_owned) else {
            return Handshake::Malformed;
        };
        if !well_formed {
            return Handshake::Malformed;
        }
        let allowed = settings
            .allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(&origin));
        if allowed {
            Handshake::Allowed { origin }
        } else {
            Handshake::Refused { origin }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn settings(prefix: &str) -> CloudEventsConfig {
        CloudEventsConfig {
            type_prefix: prefix.to_owned(),
            ..CloudEventsConfig::default()
        }
    }

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidEvent(invalid) => invalid.field,
            other => panic!("expected an invalid event, got {other:?}"),
        }
    }

    #[test]
    fn a_structured_event_maps_onto_the_api() {
        let json = br#"{"specversion":"1.0","id":"e-1","source":"/orchestrator","type":"com.example.pm.task.started",
            "subject":"run-1","time":"2026-01-02T03:04:05Z","datacontenttype":"application/json",
            "data":{"task_id":"build","name":"Build"},"traceparent":"00-abc-def-01"}"#;
        let incoming = decode_structured(json, &settings("com.example.pm."), 0).unwrap();
        let event = &incoming.event;
        assert_eq!(event.kind, EventType::TaskStarted);
        assert_eq!(event.process_id, "run-1");
        assert_eq!(event.event_id.as_deref(), Some("e-1"));
        assert_eq!(event.task_id.as_deref(), Some("build"));
        assert_eq!(event.name.as_deref(), Some("Build"));
        assert!(event.occurred_at.is_some());
    }

    #[test]
    fn errors_name_the_cloudevents_attribute() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"id":"1","source":"s","type":"process.started","subject":"p"}"#, "specversion"),
            (br#"{"specversion":"0.3","id":"1","source":"s","type":"process.started","subject":"p"}"#, "specversion"),
            (br#"{"specversion":"1.0","source":"s","type":"process.started","subject":"p"}"#, "id"),
            (br#"{"specversion":"1.0","id":"1","type":"process.started","subject":"p"}"#, "source"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"com.other.thing","subject":"p"}"#, "type"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"process.started"}"#, "subject"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"process.started","subject":"p","time":"yesterday"}"#, "time"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"process.started","subject":"p","datacontenttype":"text/plain","data":"x"}"#, "datacontenttype"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"task.started","subject":"p","data":{"task_id":7}}"#, "data.task_id"),
        ];
        for (json, field) in cases {
            let error = decode_structured(json, &settings(""), 0).unwrap_err();
            assert_eq!(field_of(error), field, "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn extension_attributes_are_held_to_the_spec() {
        let with = |extra: &str| {
            let json = format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"process.started","subject":"p",{extra}}}"#
            );
            decode_structured(json.as_bytes(), &settings(""), 0)
        };
        assert!(with(
            r#""traceparent":"00-1-2-01","sequence":7,"flag":true,"dataschema":"https://x/y""#
        )
        .is_ok());
        assert_eq!(
            field_of(with(r#""data_base64":"aGk=""#).unwrap_err()),
            "data_base64"
        );
        assert_eq!(field_of(with(r#""Task_ID":"t""#).unwrap_err()), "Task_ID");
        assert_eq!(field_of(with(r#""depth":1.5"#).unwrap_err()), "depth");
        assert_eq!(field_of(with(r#""tags":["a"]"#).unwrap_err()), "tags");
    }

    #[test]
    fn data_cannot_repeat_what_attributes_give() {
        let json = br#"{"specversion":"1.0","id":"1","source":"s","type":"process.started","subject":"p","data":{"process_id":"q"}}"#;
        let error = decode_structured(json, &settings(""), 0).unwrap_err();
        assert_eq!(field_of(error), "data.process_id");
    }

    #[test]
    fn daemon_made_types_cannot_be_sent() {
        let json = br#"{"specversion":"1.0","id":"1","source":"s","type":"process.stalled","subject":"p"}"#;
        let error = decode_structured(json, &settings(""), 0).unwrap_err();
        assert_eq!(field_of(error), "type");
    }

    #[test]
    fn binary_mode_reads_percent_encoded_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e%20one"),
            ("ce-source", "/x"),
            ("ce-type", "process.started"),
            ("ce-subject", "run%3A1"),
            ("content-type", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let Framing::Binary(attributes) = Framing::of(&headers) else {
            panic!("not binary");
        };
        let incoming = decode_binary(&attributes, br#"{"name":"n"}"#, &settings(""), 0).unwrap();
        assert_eq!(incoming.event.process_id, "run:1");
        assert_eq!(incoming.event.event_id.as_deref(), Some("e one"));
        headers.insert("ce-subject", HeaderValue::from_static("run%FF"));
        let Framing::Binary(attributes) = Framing::of(&headers) else {
            panic!("not binary");
        };
        let error = decode_binary(&attributes, b"", &settings(""), 0).unwrap_err();
        assert_eq!(field_of(error), "ce-subject");
        headers.remove("ce-subject");
        let Framing::Binary(attributes) = Framing::of(&headers) else {
            panic!("not binary");
        };
        let error = decode_binary(&attributes, b"", &settings(""), 0).unwrap_err();
        assert_eq!(field_of(error), "ce-subject");
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case_with_parameters() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(is_json_media(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/xml",
            "application/jsonx",
            "json",
            "application/+jso",
            "application/a/b+json",
            "application/a b+json",
        ] {
            assert!(!is_json_media(no), "{no}");
        }
    }

    #[test]
    fn framing_follows_the_headers() {
        let framing = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
            Framing::of(&headers)
        };
        assert!(matches!(
            framing("application/cloudevents+json; charset=utf-8"),
            Framing::Structured
        ));
        assert!(matches!(
            framing("Application/CloudEvents-Batch+JSON"),
            Framing::Batch
        ));
        assert!(matches!(framing("application/json"), Framing::Plain));
        assert!(matches!(framing("text/plain"), Framing::Unsupported));
        assert!(matches!(
            Framing::of(&HeaderMap::new()),
            Framing::Unsupported
        ));
    }

    #[test]
    fn the_handshake_allows_configured_origins_only() {
        let request = |origin: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "webhook-request-origin",
                HeaderValue::from_str(origin).unwrap(),
            );
            headers
        };
        let any = CloudEventsConfig::default();
        assert_eq!(
            Handshake::judge(&request("eventgrid.azure.net"), &any),
            Handshake::Allowed {
                origin: "eventgrid.azure.net".into()
            }
        );
        let only = CloudEventsConfig {
            allowed_origins: vec!["eventgrid.azure.net".into()],
            ..CloudEventsConfig::default()
        };
        assert!(matches!(
            Handshake::judge(&request("EventGrid.Azure.Net"), &only),
            Handshake::Allowed { .. }
        ));
        assert!(matches!(
            Handshake::judge(&request("evil.example"), &only),
            Handshake::Refused { .. }
        ));
        assert_eq!(Handshake::judge(&HeaderMap::new(), &only), Handshake::Plain);
        assert_eq!(Handshake::judge(&request(""), &any), Handshake::Malformed);
        assert_eq!(
            Handshake::judge(&request("a b"), &any),
            Handshake::Malformed
        );
    }
}
