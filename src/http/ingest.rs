//! `POST /v1/events` and `DELETE /v1/processes/{id}`: read the body within
//! its limits, validate every event, hand valid ones to the writer, and
//! answer once they are committed.

use super::cloudevents::{self, Framing};
use super::problem::ApiError;
use super::signature::SignatureHeaders;
use super::{json_response, AppState, Response, BODY_MEMORY_FACTOR};
use crate::domain::StoredResult;
use crate::domain::{EventInput, InvalidField, Status};
use crate::domain::{EventOutcome, IncomingEvent};
use crate::writer::now_millis;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, LOCATION};
use hyper::{HeaderMap, Request, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A body this refuses before reading it whole stays in `body`, for the
/// caller to drain (`http::handle`).
pub async fn post_events(
    state: &AppState,
    request: &Request<()>,
    body: &mut Option<Incoming>,
) -> Result<Response, ApiError> {
    // With signing on, an unsigned request learns nothing but 401: the
    // media type is judged after the signature.
    let framing = Framing::of(request.headers());
    if matches!(framing, Framing::Unsupported) && state.webhooks.is_none() {
        return Err(ApiError::UnsupportedMediaType);
    }
    let header_key = idempotency_header(request.headers());
    // Only when webhooks must be signed: the body is read after the request
    // is taken apart, so keep the few headers the check needs.
    let signed = state
        .webhooks
        .as_ref()
        .map(|verifier| (verifier, SignatureHeaders::from_headers(request.headers())));
    // Held until the answer: the body, its parsed events, and their place
    // in the writer's queue all count against the budget.
    let (body, _budget) = read_body(
        request.headers(),
        body,
        state.limits.max_body_bytes,
        state.limits.body_read_timeout,
        &state.body_budget,
    )
    .await?;
    let received_at = now_millis();
    if let Some((verifier, headers)) = signed {
        verifier
            .verify(&headers, &body, received_at.div_euclid(1000))
            .map_err(ApiError::BadSignature)?;
    }
    let settings = &state.cloudevents;
    let decoded = match &framing {
        Framing::Unsupported => return Err(ApiError::UnsupportedMediaType),
        Framing::Plain => decode_body(
            &body,
            header_key.as_deref(),
            state.limits.max_batch,
            received_at,
        ),
        Framing::Structured => {
            cloudevents::decode_structured(&body, settings, received_at).map(DecodedBody::Single)
        }
        Framing::Batch => {
            cloudevents::decode_batch(&body, state.limits.max_batch, settings, received_at)
                .map(DecodedBody::Batch)
        }
        Framing::Binary(attributes) => {
            cloudevents::decode_binary(attributes, &body, settings, received_at)
                .map(DecodedBody::Single)
        }
    }
    .inspect_err(|error| {
        if matches!(error, ApiError::InvalidEvent(_)) {
            state.metrics.event_invalid(None);
        }
    })?;
    // A CloudEvents sender sees only the status: any item refused makes
    // the batch a 400, which Event Grid dead-letters, rather than a 2xx it
    // would count as all delivered. Plain batches keep their 200, whose
    // per-item answer our own clients read.
    let refused_status = match framing {
        Framing::Batch => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    match decoded {
        DecodedBody::Single(event) => ingest_one(state, event).await,
        DecodedBody::Batch(items) => ingest_batch(state, items, refused_status).await,
    }
}

/// A request body, decoded and validated; nothing of it has touched the store.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and moved straight on; a box would only add an allocation"
)]
pub enum DecodedBody {
    Single(IncomingEvent),
    /// Each item judged alone: an invalid one does not spoil the others.
    Batch(Vec<Result<IncomingEvent, ApiError>>),
}

/// Decodes one event object or an array of at most `max_batch`. What the
/// daemon runs on every body, and what the fuzzer feeds arbitrary bytes.
pub fn decode_body(
    body: &[u8],
    header_key: Option<&str>,
    max_batch: usize,
    received_at: i64,
) -> Result<DecodedBody, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(DecodedBody::Single(parse_event(
            body,
            header_key,
            received_at,
        )?)),
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|error| json_error(&error, "."))?;
            if items.len() > max_batch {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the batch has {} events; at most {max_batch} are allowed",
                    items.len()
                )));
            }
            Ok(DecodedBody::Batch(
                items
                    .iter()
                    .map(|item| parse_event(item.get().as_bytes(), None, received_at))
                    .collect(),
            ))
        }
        _ => Err(ApiError::NotJson),
    }
}

/// The idempotency key of a single event without `event_id`: the
/// `Idempotency-Key` header, else the `webhook-id` header. Judged (by the
/// rule for `event_id`) only where it is used, so it never outranks a
/// malformed body and never touches a batch.
fn idempotency_header(headers: &HeaderMap) -> Option<String> {
    ["idempotency-key", "webhook-id"]
        .into_iter()
        .find_map(|name| headers.get(name))
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// What a body of `bytes` costs the in-flight budget: itself, and what
/// parsing makes of it (about three times its size again, measured).
fn budget_charge(bytes: usize) -> u32 {
    u32::try_from(bytes.saturating_mul(BODY_MEMORY_FACTOR)).unwrap_or(u32::MAX)
}

/// Reads the whole body, refusing it with 413 as soon as it is known to be
/// too large, and with 429 once the bodies in flight would hold more than
/// the budget: before reading when `Content-Length` says so, or as soon as
/// a chunked body passes what is left. A refused body is left in `body`,
/// where the caller drains the rest of it, so a client still sending gets
/// the answer rather than a reset connection; one that failed to arrive
/// (broken, or too slow) is dropped, which closes the connection. The
/// permit returned holds the body's share of the budget.
async fn read_body(
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
    limit: usize,
    timeout: Duration,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, OwnedSemaphorePermit), ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let Ok(mut held) = budget
        .clone()
        .try_acquire_many_owned(budget_charge(declared.unwrap_or(0) as usize))
    else {
        return Err(ApiError::OverBudget);
    };
    let incoming = body.as_mut().ok_or_else(|| {
        ApiError::Internal("the request body was taken before it was read".into())
    })?;
    let mut collected =
        BytesMut::with_capacity(declared.map_or(8 * 1024, |length| length as usize));
    let read = async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|error| ApiError::MalformedJson {
                detail: format!("the body could not be read: {error}"),
                line: 0,
                column: 0,
            })?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > limit {
                    return Err(too_large());
                }
                // Declared bodies paid up front; chunked ones as they come.
                if declared.is_none() {
                    let more = budget
                        .clone()
                        .try_acquire_many_owned(budget_charge(data.len()))
                        .map_err(|_| ApiError::OverBudget)?;
                    held.merge(more);
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let read = tokio::time::timeout(timeout, read).await;
    match read {
        Ok(Ok(())) => Ok((collected.freeze(), held)),
        Ok(Err(refused @ (ApiError::PayloadTooLarge(_) | ApiError::OverBudget))) => Err(refused),
        Ok(Err(failed)) => {
            *body = None;
            Err(failed)
        }
        Err(_) => {
            *body = None;
            Err(ApiError::BodyTimeout)
        }
    }
}

/// Parses and validates one event. Syntax errors are 400 with line and
/// column; wrong shapes and broken rules are 422 naming the field.
fn parse_event(
    json: &[u8],
    header_key: Option<&str>,
    received_at: i64,
) -> Result<IncomingEvent, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let input: EventInput = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(input) => input,
        Err(error) => {
            // A syntax error anywhere in the body outranks a wrong shape
            // found before it: the body is malformed JSON first of all.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(json) {
                return Err(json_error(&syntax, "."));
            }
            let path = error.path().to_string();
            let inner = error.into_inner();
            return Err(json_error(&inner, &path));
        }
    };
    deserializer
        .end()
        .map_err(|error| json_error(&error, "."))?;
    let event = input.validate(header_key).map_err(ApiError::InvalidEvent)?;
    Ok(IncomingEvent::new(event, received_at))
}

pub(super) fn json_error(error: &serde_json::Error, path: &str) -> ApiError {
    if error.is_syntax() || error.is_eof() || error.is_io() {
        return ApiError::MalformedJson {
            detail: error.to_string(),
            line: error.line(),
            column: error.column(),
        };
    }
    let message = error.to_string();
    // serde names a missing or unknown field in its message, not the path.
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.split(prefix).nth(1))
        .and_then(|rest| rest.split('`').next());
    // The path already ends in an unknown field's name, but stops at the
    // parent of a missing one.
    let field = match (named, path) {
        (Some(name), "." | "") => name.to_owned(),
        (Some(name), parent) if message.starts_with("missing field") => format!("{parent}.{name}"),
        (_, "." | "") => "body".to_owned(),
        (_, path) => path.to_owned(),
    };
    let detail = match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    ApiError::InvalidEvent(InvalidField::new(field, detail))
}

async fn ingest_one(state: &AppState, incoming: IncomingEvent) -> Result<Response, ApiError> {
    let process_id = incoming.event.process_id.clone();
    let task_id = incoming.event.task_id.clone();
    let kind = incoming.event.kind;
    let outcomes = state.core()?.writer.submit_events(vec![incoming])?.await?;
    let outcome = outcomes
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("the writer answered no outcome".into()))?;
    state.metrics.event_outcome(kind, &outcome);
    let (status, answer) = EventAnswer::of(&process_id, task_id.as_deref(), outcome)?;
    let mut response = json_response(status, &answer);
    if status == StatusCode::ACCEPTED {
        if let Ok(location) = HeaderValue::from_str(&super::process_link(state, &process_id, "")) {
            response.headers_mut().insert(LOCATION, location);
        }
    }
    Ok(response)
}

/// The answer for one event, alone or as an item of a batch.
#[derive(Serialize)]
struct EventAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Map<String, Value>>,
}

impl<'a> EventAnswer<'a> {
    /// The status and body for a 2xx outcome; the error for the others.
    fn of(
        process_id: &'a str,
        task_id: Option<&str>,
        outcome: EventOutcome,
    ) -> Result<(StatusCode, Self), ApiError> {
        let answer = |result, seq, original_result, process_status, task_status| EventAnswer {
            index: None,
            result,
            seq: Some(seq),
            original_result,
            process_id: Some(process_id),
            process_status: Some(process_status),
            task_status,
            error: None,
        };
        match outcome {
            EventOutcome::Stored {
                result,
                seq,
                process_status,
                task_status,
                ..
            } => {
                let status = match result {
                    StoredResult::Accepted => StatusCode::ACCEPTED,
                    StoredResult::Stale => StatusCode::OK,
                };
                Ok((
                    status,
                    answer(result.as_str(), seq, None, process_status, task_status),
                ))
            }
            EventOutcome::Duplicate {
                original,
                seq,
                process_status,
            } => Ok((
                StatusCode::OK,
                answer(
                    "duplicate",
                    seq,
                    Some(original.as_str()),
                    process_status,
                    None,
                ),
            )),
            EventOutcome::Conflict { current_status } => Err(ApiError::Conflict {
                current_status,
                process_id: process_id.to_owned(),
                task_id: task_id.map(str::to_owned),
            }),
            EventOutcome::KeyReused { seq } => Err(ApiError::IdempotencyKeyReused { seq }),
            EventOutcome::OverLimit(limit) => Err(ApiError::LimitExceeded(limit)),
        }
    }

    fn rejected(index: usize, error: &ApiError) -> Self {
        EventAnswer {
            index: Some(index),
            result: "rejected",
            seq: None,
            original_result: None,
            process_id: None,
            process_status: None,
            task_status: None,
            error: Some(error.to_problem().body),
        }
    }
}

#[derive(Serialize)]
struct BatchAnswer<'a> {
    accepted: usize,
    duplicates: usize,
    stale: usize,
    rejected: usize,
    results: Vec<EventAnswer<'a>>,
}

/// A batch: each item judged alone, in order; the valid ones go to the
/// writer together and are committed before the answer.
/// Stores the valid items of a batch and answers each; with an item
/// refused, the batch is answered `refused_status`.
async fn ingest_batch(
    state: &AppState,
    parsed: Vec<Result<IncomingEvent, ApiError>>,
    refused_status: StatusCode,
) -> Result<Response, ApiError> {
    let valid: Vec<IncomingEvent> = parsed
        .iter()
        .filter_map(|item| item.as_ref().ok().cloned())
        .collect();
    let mut outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        state.core()?.writer.submit_events(valid)?.await?
    }
    .into_iter();

    let mut batch = BatchAnswer {
        accepted: 0,
        duplicates: 0,
        stale: 0,
        rejected: 0,
        results: Vec::with_capacity(parsed.len()),
    };
    for (index, item) in parsed.iter().enumerate() {
        let answer = match item {
            Err(error) => {
                state.metrics.event_invalid(None);
                Err(EventAnswer::rejected(index, error))
            }
            Ok(incoming) => {
                let outcome = outcomes.next().ok_or_else(|| {
                    ApiError::Internal("the writer answered fewer outcomes than events".into())
                })?;
                state.metrics.event_outcome(incoming.event.kind, &outcome);
                EventAnswer::of(
                    &incoming.event.process_id,
                    incoming.event.task_id.as_deref(),
                    outcome,
                )
                .map_err(|error| EventAnswer::rejected(index, &error))
            }
        };
        let entry = match answer {
            Ok((_, mut entry)) => {
                match entry.result {
                    "accepted" => batch.accepted += 1,
                    "stale" => batch.stale += 1,
                    _ => batch.duplicates += 1,
                }
                entry.index = Some(index);
                entry
            }
            Err(rejected) => {
                batch.rejected += 1;
                rejected
            }
        };
        batch.results.push(entry);
    }
    let status = if batch.rejected > 0 {
        refused_status
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &batch))
}

pub async fn delete_process(state: &AppState, process_id: &str) -> Result<Response, ApiError> {
    let found = state
        .core()?
        .writer
        .submit_delete(process_id.to_owned())?
        .await?;
    if !found {
        return Err(ApiError::NotFound(format!(
            "there is no process {process_id}"
        )));
    }
    let mut response = hyper::Response::new(super::full_body(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Processes one step of a bulk purge removes at most: each step is one
/// write group, shared with whatever ingest is queued.
const PURGE_STEP: u32 = 1000;

/// `DELETE /v1/processes?finished_before=…&status=…&process_type=…`:
/// removes the finished processes that match, through the writer, one
/// step at a time (so ingest goes on meanwhile), each with a
/// `process.deleted` item in the change feed. Answers once all are gone.
pub async fn purge(state: &AppState, query: Option<&str>) -> Result<Response, ApiError> {
    use super::query::{invalid, parse_statuses, parse_time};
    let mut finished_before = None;
    let mut statuses = Vec::new();
    let mut process_type = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "finished_before" => finished_before = Some(parse_time(&value, "finished_before")?),
            "status" => {
                statuses = parse_statuses(&value)?;
                if let Some(running) = statuses.iter().find(|status| !status.is_terminal()) {
                    return Err(invalid(
                        "status",
                        format!("`{running}` processes have not finished; only finished processes are removed this way"),
                    ));
                }
            }
            "process_type" => process_type = Some(value.into_owned()),
            other => {
                return Err(invalid(
                    other,
                    format!(
                        "unknown parameter `{other}`; known: finished_before, status, process_type"
                    ),
                ))
            }
        }
    }
    let cut = finished_before.ok_or_else(|| {
        invalid(
            "finished_before",
            "`finished_before` is required: processes that finished before it are removed",
        )
    })?;
    if statuses.is_empty() {
        statuses = Status::PROCESS_ENDS.to_vec();
    }
    let writer = &state.core()?.writer;
    let mut step = crate::domain::PurgeStep {
        cuts: statuses.into_iter().map(|status| (status, cut)).collect(),
        process_type,
        after: None,
        limit: PURGE_STEP,
        trim_feed_before: None,
    };
    let mut deleted = 0;
    loop {
        let purged = writer.submit_purge(step.clone())?.await?;
        deleted += purged.deleted;
        match purged.next {
            Some(next) => step.after = Some(next),
            None => break,
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"deleted": deleted}),
    ))
}
