//! Every error the API answers, mapped to RFC 9457 problem+json in exactly
//! this one place. Internal causes are logged, never sent.

use super::{json_response, Response};
use crate::domain::{InvalidField, Status};
use crate::store::StoreError;
use crate::writer::{SubmitError, WriteFailure};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::StatusCode;
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub enum ApiError {
    MalformedJson {
        detail: String,
        line: usize,
        column: usize,
    },
    NotJson,
    InvalidEvent(InvalidField),
    IdempotencyKeyReused {
        seq: u64,
    },
    LimitExceeded(crate::domain::LimitExceeded),
    Conflict {
        current_status: Status,
        process_id: String,
        task_id: Option<String>,
    },
    UnsupportedMediaType,
    PayloadTooLarge(String),
    BodyTimeout,
    InvalidQuery {
        parameter: String,
        detail: String,
    },
    /// `attr.KEY=…` for a key `index.attributes` does not name.
    AttributeNotIndexed {
        key: String,
        indexed: Vec<String>,
    },
    NotFound(String),
    /// The methods the resource allows, for `Allow`.
    MethodNotAllowed(String),
    /// Without tokens, a `Host` that is not a loopback name or address, the
    /// public URL's host, or in `http.allowed_hosts` (`http::hosts`).
    HostNotAllowed(String),
    Unauthorized,
    BadSignature(crate::http::signature::SignatureError),
    Forbidden,
    Overloaded,
    /// The bodies in flight hold `ingest.max_inflight_bytes`.
    OverBudget,
    Unavailable(&'static str),
    Internal(String),
    /// The change feed no longer holds what was asked for.
    FeedGone {
        oldest_seq: u64,
    },
    /// `feed.max_streams` streams are open.
    TooManyStreams,
    /// The CloudEvents validation handshake from an origin that
    /// `cloudevents.allowed_origins` does not name.
    OriginNotAllowed(String),
    /// A request header that is not what it must be.
    InvalidHeader {
        header: &'static str,
        detail: &'static str,
    },
    /// `/await?require=succeeded` on a process that ended otherwise.
    ProcessUnsuccessful {
        process_id: String,
        current_status: Status,
    },
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Reopening => {
                ApiError::Unavailable("the store is being reopened after an I/O error")
            }
            error if error.poisons_handle() => {
                tracing::error!(%error, "a read failed on a storage error");
                ApiError::Unavailable("the store had an I/O error; it is being reopened")
            }
            error => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full => ApiError::Overloaded,
            SubmitError::Closed => ApiError::Unavailable("the daemon is shutting down"),
        }
    }
}

impl From<WriteFailure> for ApiError {
    fn from(failure: WriteFailure) -> Self {
        match failure {
            WriteFailure::StorageFull => {
                ApiError::Unavailable("the disk holding the store is full; nothing was applied")
            }
            WriteFailure::Storage => {
                ApiError::Unavailable("the store could not commit; nothing was applied")
            }
            WriteFailure::Stopped => ApiError::Unavailable("the daemon is shutting down"),
        }
    }
}

/// A problem document, ready to be sent or embedded in a batch answer.
pub struct Problem {
    pub status: StatusCode,
    pub body: Map<String, Value>,
}

fn problem(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Problem {
    let mut body = Map::new();
    body.insert("type".into(), json!(format!("/problems/{code}")));
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status.as_u16()));
    body.insert("detail".into(), json!(detail.into()));
    body.insert("code".into(), json!(code));
    Problem { status, body }
}

impl ApiError {
    pub fn to_problem(&self) -> Problem {
        match self {
            ApiError::MalformedJson {
                detail,
                line,
                column,
            } => {
                let mut p = problem(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    "Malformed JSON",
                    detail.clone(),
                );
                p.body.insert("line".into(), json!(line));
                p.body.insert("column".into(), json!(column));
                p
            }
            ApiError::NotJson => problem(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "Malformed JSON",
                "the body must be one event object or a JSON array of events",
            ),
            ApiError::InvalidEvent(invalid) => {
                let mut p = problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_event",
                    "Invalid event",
                    invalid.detail.clone(),
                );
                p.body.insert("field".into(), json!(invalid.field));
                p
            }
            ApiError::IdempotencyKeyReused { seq } => {
                let mut p = problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "Idempotency key reused",
                    format!("this event id was first used for a different event (seq {seq}); send a new event id for a new event"),
                );
                p.body.insert("field".into(), json!("event_id"));
                p.body.insert("seq".into(), json!(seq));
                p
            }
            ApiError::LimitExceeded(limit) => {
                let mut p = problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "limit_exceeded",
                    "Limit exceeded",
                    limit.detail(),
                );
                p.body.insert("field".into(), json!(limit.field));
                p.body.insert("setting".into(), json!(limit.setting));
                p.body.insert("limit".into(), json!(limit.limit));
                p
            }
            ApiError::Conflict {
                current_status,
                process_id,
                task_id,
            } => {
                let what = match task_id {
                    Some(task_id) => format!("task {task_id} of process {process_id}"),
                    None => format!("process {process_id}"),
                };
                let mut p = problem(
                    StatusCode::CONFLICT,
                    "conflict",
                    "Conflicting terminal status",
                    format!("{what} is already {current_status}; a finished status never changes"),
                );
                p.body
                    .insert("current_status".into(), json!(current_status.as_str()));
                p
            }
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "send the body as application/json, or as a CloudEvent (application/cloudevents+json, application/cloudevents-batch+json, or binary mode with ce-* headers and a JSON body)",
            ),
            ApiError::InvalidHeader { header, detail } => {
                let mut p = problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    "Invalid header",
                    *detail,
                );
                p.body.insert("header".into(), json!(header));
                p
            }
            ApiError::OriginNotAllowed(origin) => problem(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Origin not allowed",
                format!("delivery from `{origin}` is not allowed; add it to cloudevents.allowed_origins"),
            ),
            ApiError::PayloadTooLarge(detail) => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                detail.clone(),
            ),
            ApiError::BodyTimeout => problem(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
                "the request body did not arrive in time",
            ),
            ApiError::InvalidQuery { parameter, detail } => {
                let mut p = problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "Invalid query parameter",
                    detail.clone(),
                );
                p.body.insert("field".into(), json!(parameter));
                p
            }
            ApiError::AttributeNotIndexed { key, indexed } => {
                let known = if indexed.is_empty() {
                    "none is (index.attributes is empty)".to_owned()
                } else {
                    format!("indexed: {}", indexed.join(", "))
                };
                let mut p = problem(
                    StatusCode::BAD_REQUEST,
                    "attribute_not_indexed",
                    "Attribute not indexed",
                    format!("attribute `{key}` is not indexed, so it cannot be filtered on; name it in index.attributes ({known})"),
                );
                p.body.insert("field".into(), json!(format!("attr.{key}")));
                p
            }
            ApiError::NotFound(detail) => problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                detail.clone(),
            ),
            ApiError::MethodNotAllowed(allowed) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                format!("this resource allows {allowed}"),
            ),
            ApiError::HostNotAllowed(host) => problem(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "Host not allowed",
                format!("this daemon answers requests for `{host}` only with tokens, as a guard against DNS rebinding: reach it as localhost, 127.0.0.1 or [::1], or add the name to http.allowed_hosts (or set http.public_url)"),
            ),
            ApiError::Unauthorized => problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "send a known token as `Authorization: Bearer <token>`",
            ),
            ApiError::BadSignature(error) => problem(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "Invalid webhook signature",
                error.detail(),
            ),
            ApiError::Forbidden => problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "this token may not do that",
            ),
            ApiError::OverBudget => problem(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "Overloaded",
                "the request bodies in flight hold all the memory ingest.max_inflight_bytes allows; retry after the given seconds",
            ),
            ApiError::Overloaded => problem(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "Overloaded",
                "the write queue is full; retry after the given seconds",
            ),
            ApiError::Unavailable(detail) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable",
                *detail,
            ),
            ApiError::Internal(_) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the server failed to answer; the cause is in its log",
            ),
            ApiError::FeedGone { oldest_seq } => {
                let mut p = problem(
                    StatusCode::GONE,
                    "feed_gone",
                    "Feed gone",
                    format!("events after the asked-for seq were removed (an offline purge); read the current state again, then follow the feed from after_seq={}", oldest_seq - 1),
                );
                p.body.insert("oldest_seq".into(), json!(oldest_seq));
                p
            }
            ApiError::TooManyStreams => problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                "Too many streams",
                "feed.max_streams change-feed streams are open; retry after the given seconds, or read pages with long poll",
            ),
            ApiError::ProcessUnsuccessful {
                process_id,
                current_status,
            } => {
                let mut p = problem(
                    StatusCode::CONFLICT,
                    "process_unsuccessful",
                    "Process unsuccessful",
                    format!("process {process_id} ended {current_status}, not succeeded"),
                );
                p.body
                    .insert("current_status".into(), json!(current_status.as_str()));
                p
            }
        }
    }

    /// The kind of rejection this answer is, for the metrics and the log.
    pub fn rejection(&self) -> Option<crate::metrics::Rejection> {
        use crate::metrics::Rejection;
        match self {
            ApiError::BodyTimeout => Some(Rejection::BodyTimeout),
            ApiError::PayloadTooLarge(_) => Some(Rejection::PayloadTooLarge),
            ApiError::OverBudget => Some(Rejection::OverBudget),
            ApiError::Overloaded => Some(Rejection::QueueFull),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let Problem { status, body } = self.to_problem();
        let mut response = json_response(status, &Value::Object(body));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let headers = response.headers_mut();
        match self {
            ApiError::Overloaded | ApiError::TooManyStreams => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The body was not read (or not all of it): this connection
            // cannot carry another request.
            ApiError::OverBudget => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allowed) => {
                if let Ok(allowed) = HeaderValue::from_str(&allowed) {
                    headers.insert(ALLOW, allowed);
                }
            }
            // The rest of a refused body is not worth reading on this connection.
            ApiError::PayloadTooLarge(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
