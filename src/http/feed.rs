//! `GET /v1/changes` (the change feed: SSE, NDJSON, or pages with long
//! poll) and `GET /v1/processes/{id}/await` (the asynchronous polling
//! pattern).
//!
//! Neither holds a thread while it waits: both sleep on the writer's
//! announcements (`live::Live`), and a stream reads the store a page at a
//! time, only when hyper asks for more body, so a consumer that stops
//! reading holds one page, never a backlog.

use super::problem::ApiError;
use super::query::{invalid, not_found, parse_limit};
use super::views::{write_feed_item, ProcessView};
use super::{full_body, json_response, AppState, Response};
use crate::domain::{EventType, Status};
use crate::store::read::{FeedItem, FeedQuery, FeedRead, SharedSnapshots};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::{Request, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

const DEFAULT_PAGE_LIMIT: usize = 100;
/// Items a stream reads from the store at once.
const STREAM_PAGE: usize = 200;
/// The longest `wait`, in seconds.
const MAX_WAIT_SECS: u64 = 60;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Sse,
    Ndjson,
    Page,
}

fn format_of(request: &Request<()>) -> Format {
    let accept = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let wants = |media: &str| {
        accept
            .split(',')
            .any(|part| part.split(';').next().unwrap_or("").trim() == media)
    };
    if wants("text/event-stream") {
        Format::Sse
    } else if wants("application/x-ndjson") {
        Format::Ndjson
    } else {
        Format::Page
    }
}

fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|secs| *secs <= MAX_WAIT_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            invalid(
                "wait",
                format!("`wait` must be whole seconds from 0 to {MAX_WAIT_SECS}"),
            )
        })
}

fn parse_seq(value: &str, parameter: &str) -> Result<u64, ApiError> {
    // Digits only: `u64::from_str` would take a leading `+` too.
    let digits = value.trim_matches(' ');
    let parsed = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        invalid(
            parameter,
            format!("`{parameter}` must be a sequence number (a whole number from 0)"),
        )
    })
}

struct ChangesRequest {
    query: FeedQuery,
    wait: Duration,
    format: Format,
    /// `include=processes`: a JSON page also carries the state of every
    /// process its items name, read with the items.
    include_processes: bool,
}

fn parse_changes(request: &Request<()>) -> Result<ChangesRequest, ApiError> {
    let mut query = FeedQuery {
        limit: DEFAULT_PAGE_LIMIT,
        ..FeedQuery::default()
    };
    let mut wait = Duration::ZERO;
    let mut include_processes = false;
    let raw = request.uri().query().unwrap_or_default();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        match name.as_ref() {
            "after_seq" => query.after_seq = parse_seq(&value, "after_seq")?,
            "process_id" => {
                if !crate::domain::is_valid_id(&value) {
                    return Err(invalid(
                        "process_id",
                        "a process id is 1 to 200 bytes of letters, digits and . _ : ~ -",
                    ));
                }
                query.process_id = Some(value.into_owned());
            }
            "process_type" => query.process_type = Some(value.into_owned()),
            "type" => {
                for part in value.split(',').map(str::trim) {
                    let kind = if part == "process.deleted" {
                        None
                    } else {
                        Some(EventType::parse(part).ok_or_else(|| {
                            invalid(
                                "type",
                                format!("`{part}` is not an event type; `type` is a comma-separated list such as process.failed,task.failed"),
                            )
                        })?)
                    };
                    match kind {
                        Some(kind) => query.types.push(kind),
                        None => query.wants_deleted = true,
                    }
                }
            }
            "limit" => query.limit = parse_limit(&value, "limit")?,
            "wait" => wait = parse_wait(&value)?,
            "include" if value == "processes" => include_processes = true,
            "include" => {
                return Err(invalid(
                    "include",
                    format!("`include` takes `processes`, not `{value}`"),
                ))
            }
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter `{other}`; known: after_seq, process_id, process_type, type, limit, wait, include"),
                ))
            }
        }
    }
    // An SSE client that reconnects says where it stopped; that wins.
    if let Some(last) = request.headers().get("last-event-id") {
        let text = last
            .to_str()
            .map_err(|_| invalid("Last-Event-ID", "`Last-Event-ID` must be a sequence number"))?;
        query.after_seq = parse_seq(text, "Last-Event-ID")?;
    }
    let format = format_of(request);
    if include_processes && format != Format::Page {
        return Err(invalid(
            "include",
            "`include=processes` is for JSON pages (`Accept: application/json`), not streams",
        ));
    }
    Ok(ChangesRequest {
        query,
        wait,
        format,
        include_processes,
    })
}

/// The JSON of each process the items name, in order of first sight,
/// from one snapshot; `None` for one the store no longer has.
type ProcessStates = Vec<(String, Option<Vec<u8>>)>;

/// One read of the feed, off the async workers.
async fn read(snapshots: Arc<SharedSnapshots>, query: FeedQuery) -> Result<FeedRead, ApiError> {
    Ok(read_with(snapshots, query, false).await?.0)
}

/// One read of the feed and, with `include_processes`, from the same
/// snapshot, the processes its items name.
async fn read_with(
    snapshots: Arc<SharedSnapshots>,
    query: FeedQuery,
    include_processes: bool,
) -> Result<(FeedRead, Option<ProcessStates>), ApiError> {
    tokio::task::spawn_blocking(move || {
        let snapshot = snapshots.get()?;
        let read = snapshot.feed(&query)?;
        let states = match &read {
            FeedRead::Page { items, .. } if include_processes => {
                let mut seen = std::collections::HashSet::new();
                let mut states = ProcessStates::new();
                for id in items.iter().map(FeedItem::process_id) {
                    if !seen.insert(id) {
                        continue;
                    }
                    let state = match snapshot.process_with_tasks(id)? {
                        Some((process, tasks)) => Some(
                            serde_json::to_vec(&ProcessView::with_tasks(&process, &tasks))
                                .map_err(|error| ApiError::Internal(error.to_string()))?,
                        ),
                        None => None,
                    };
                    states.push((id.to_owned(), state));
                }
                Some(states)
            }
            _ => None,
        };
        Ok((read, states))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("a read task failed: {error}")))?
}

pub async fn changes(state: &AppState, request: &Request<()>) -> Result<Response, ApiError> {
    let ChangesRequest {
        mut query,
        wait,
        format,
        include_processes,
    } = parse_changes(request)?;
    let core = state.core()?;
    let snapshots = core.snapshots.clone();
    let mut announced = core.live.subscribe();
    if format == Format::Page {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            announced.borrow_and_update();
            let (read, states) =
                read_with(snapshots.clone(), query.clone(), include_processes).await?;
            let (items, next_after_seq) = match read {
                FeedRead::Gone { oldest_seq } => return Err(ApiError::FeedGone { oldest_seq }),
                FeedRead::Page {
                    items,
                    next_after_seq,
                } => (items, next_after_seq),
            };
            let passed_over = next_after_seq > query.after_seq;
            query.after_seq = next_after_seq;
            let page = || page_response(&items, states.as_ref(), next_after_seq);
            if !items.is_empty() || tokio::time::Instant::now() >= deadline {
                return page();
            }
            if passed_over {
                continue;
            }
            tokio::select! {
                changed = announced.changed() => if changed.is_err() {
                    return page();
                },
                () = tokio::time::sleep_until(deadline) => {}
                () = state.stopping.cancelled() => return page(),
            }
        }
    }
    let permit = state
        .feed_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams)?;
    // What was asked for may be gone: say so before the stream begins.
    let first = match read(snapshots.clone(), query.clone()).await? {
        FeedRead::Gone { oldest_seq } => return Err(ApiError::FeedGone { oldest_seq }),
        FeedRead::Page {
            items,
            next_after_seq,
        } => (items, next_after_seq),
    };
    query.limit = STREAM_PAGE;
    let stream = Stream {
        snapshots,
        announced,
        query,
        format,
        keepalive: Duration::from_secs(state.feed.keepalive_secs),
        stopping: state.stopping.clone(),
        first: Some(first),
        _permit: permit,
        metrics: state.metrics.clone(),
    };
    state.metrics.feed_stream_opened();
    let body = StreamBody::new(futures_util::stream::unfold(stream, Stream::next_chunk));
    let mut response = hyper::Response::new(body.boxed());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Sse => "text/event-stream",
            _ => "application/x-ndjson",
        }),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx would otherwise hold the items back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn page_response(
    items: &[FeedItem],
    processes: Option<&ProcessStates>,
    next_after_seq: u64,
) -> Result<Response, ApiError> {
    let mut out = Vec::with_capacity(64 + items.len() * 256);
    out.extend_from_slice(b"{\"items\":[");
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_feed_item(item, &mut out).map_err(|error| ApiError::Internal(error.to_string()))?;
    }
    out.push(b']');
    if let Some(processes) = processes {
        out.extend_from_slice(b",\"processes\":{");
        for (index, (id, state)) in processes.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, id)
                .map_err(|error| ApiError::Internal(error.to_string()))?;
            out.push(b':');
            out.extend_from_slice(state.as_deref().unwrap_or(b"null"));
        }
        out.push(b'}');
    }
    out.extend_from_slice(format!(",\"next_after_seq\":{next_after_seq}}}").as_bytes());
    let mut response = hyper::Response::new(full_body(out));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A live stream of the feed. Each chunk is one page read from the store
/// once hyper has sent the one before.
struct Stream {
    snapshots: Arc<SharedSnapshots>,
    announced: watch::Receiver<u64>,
    query: FeedQuery,
    format: Format,
    keepalive: Duration,
    stopping: CancellationToken,
    /// The read made before the answer began.
    first: Option<(Vec<FeedItem>, u64)>,
    /// Counts against `feed.max_streams` until the stream ends.
    _permit: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.metrics.feed_stream_closed();
    }
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

impl Stream {
    async fn next_chunk(mut self) -> Option<(Chunk, Stream)> {
        loop {
            let (items, next_after_seq) = match self.first.take() {
                Some(first) => first,
                None => {
                    self.announced.borrow_and_update();
                    match read(self.snapshots.clone(), self.query.clone()).await {
                        Ok(FeedRead::Page {
                            items,
                            next_after_seq,
                        }) => (items, next_after_seq),
                        // Gone mid-stream (an offline purge cannot run
                        // beside the daemon), or the store failed: end the
                        // stream; the client resumes from its last id.
                        Ok(FeedRead::Gone { .. }) => return None,
                        Err(error) => {
                            tracing::warn!(
                                ?error,
                                "a change-feed stream ends: the store could not be read"
                            );
                            return None;
                        }
                    }
                }
            };
            let passed_over = next_after_seq > self.query.after_seq;
            self.query.after_seq = next_after_seq;
            if !items.is_empty() {
                let chunk = self.encode(&items);
                return Some((Ok(Frame::data(chunk)), self));
            }
            if passed_over {
                continue;
            }
            tokio::select! {
                changed = self.announced.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(self.keepalive) => {
                    let keepalive = match self.format {
                        Format::Sse => Bytes::from_static(b": keepalive\n\n"),
                        _ => Bytes::from_static(b"\n"),
                    };
                    return Some((Ok(Frame::data(keepalive)), self));
                }
                () = self.stopping.cancelled() => return None,
            }
        }
    }

    fn encode(&self, items: &[FeedItem]) -> Bytes {
        let mut out = Vec::with_capacity(items.len() * 320);
        for item in items {
            if self.format == Format::Sse {
                out.extend_from_slice(
                    format!("id: {}\nevent: {}\ndata: ", item.seq(), item.type_name()).as_bytes(),
                );
            }
            // Items are plain data: serializing them cannot fail.
            if let Err(error) = write_feed_item(item, &mut out) {
                tracing::error!(%error, "a change-feed item could not be written");
            }
            out.extend_from_slice(if self.format == Format::Sse {
                b"\n\n"
            } else {
                b"\n"
            });
        }
        Bytes::from(out)
    }
}

/// `GET /v1/processes/{id}/await`.
pub async fn await_process(
    state: &AppState,
    process_id: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut wait = Duration::ZERO;
    let mut require_success = false;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "wait" => wait = parse_wait(&value)?,
            "require" => {
                require_success = match value.as_ref() {
                    "succeeded" => true,
                    _ => return Err(invalid(
                        "require",
                        "`require` may only be `succeeded`: a process that ends otherwise is a 409",
                    )),
                }
            }
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter `{other}`; known: wait, require"),
                ))
            }
        }
    }
    let core = state.core()?;
    let watch = core.live.watch_end(process_id);
    let _waiting = state.metrics.await_waiting();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ended = watch.notify().notified();
        tokio::pin!(ended);
        // Enabled before the read: an end committed meanwhile still wakes it.
        ended.as_mut().enable();
        let snapshots = core.snapshots.clone();
        let id = process_id.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            Ok::<_, ApiError>(snapshots.get()?.process_with_tasks(&id)?)
        })
        .await
        .map_err(|error| ApiError::Internal(format!("a read task failed: {error}")))??;
        let Some((process, tasks)) = found else {
            return Err(not_found(process_id));
        };
        if process.status.is_terminal() {
            if require_success && process.status != Status::Succeeded {
                return Err(ApiError::ProcessUnsuccessful {
                    process_id: process_id.to_owned(),
                    current_status: process.status,
                });
            }
            return Ok(json_response(
                StatusCode::OK,
                &ProcessView::with_tasks(&process, &tasks),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            let mut response = json_response(
                StatusCode::ACCEPTED,
                &ProcessView::with_tasks(&process, &tasks),
            );
            let location = await_location(state, process_id, query);
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&location) {
                headers.insert(LOCATION, location);
            }
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(state.await_retry_after.as_secs()),
            );
            return Ok(response);
        }
        tokio::select! {
            () = &mut ended => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.stopping.cancelled() => return Err(ApiError::Unavailable("the daemon is shutting down")),
        }
    }
}

/// This same URL, absolute when `http.public_url` is set.
fn await_location(state: &AppState, process_id: &str, query: Option<&str>) -> String {
    match query.filter(|query| !query.is_empty()) {
        Some(query) => super::process_link(state, process_id, &format!("/await?{query}")),
        None => super::process_link(state, process_id, "/await"),
    }
}
