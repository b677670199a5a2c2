//! The HTTP API on hyper: the accept loop, routing, and the pieces every
//! handler shares. Handlers parse and validate without touching the store;
//! writes go to the writer thread, reads to a redb snapshot.

mod admin;
mod auth;
pub mod cloudevents;
mod connections;
mod feed;
mod hosts;
pub mod ingest;
pub mod problem;
mod query;
mod routes;
pub mod signature;
pub mod views;

use crate::config::Config;
use crate::domain::Status;
use crate::metrics::{Metrics, Rejection, StoreReading};
use crate::store::read::SharedSnapshots;
use crate::writer::WriterHandle;
use auth::Auth;
use bytes::Bytes;
use connections::{Admission, Connections};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use problem::ApiError;
use serde::Serialize;
use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub type ResponseBody = BoxBody<Bytes, std::io::Error>;
pub type Response = hyper::Response<ResponseBody>;

/// How long requests in flight may take to finish once shutdown begins;
/// the rest of the contract's 10 seconds is for the final commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// The store and its writer, once they are open.
pub struct Core {
    /// Reads go through the shared snapshot; backups read the database.
    pub snapshots: Arc<SharedSnapshots>,
    pub writer: WriterHandle,
    /// The writer's announcements: the last durable seq, and ends.
    pub live: Arc<crate::live::Live>,
}

/// The API document (`docs/openapi.yaml`, turned into JSON by `build.rs`),
/// served without auth.
const OPENAPI_JSON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// The whole API, behind the configured tokens.
    Api,
    /// `/livez`, `/readyz`, `/healthz` and `/metrics` only, without tokens:
    /// the listener the kubelet and Prometheus reach in a pod.
    Probes,
}

/// A request body costs the in-flight budget (`ingest.max_inflight_bytes`)
/// this many times its size: the bytes read, and the events parsed from
/// them (a 4 MB batch took about 15 MB of RSS in flight, measured).
pub const BODY_MEMORY_FACTOR: usize = 4;

/// The largest read buffer of one connection.
const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// Connections the probe listener holds at most: a kubelet and a scraper
/// or two, with room to spare; never the API's budget.
const PROBE_MAX_CONNECTIONS: usize = 16;

/// What every handler shares.
pub struct AppState {
    /// Set once the store is open. Until then the probes answer (livez
    /// 200, readyz 503) and everything else is 503 "starting".
    core: OnceLock<Core>,
    auth: Auth,
    /// The `Host` names the API answers to (`hosts`).
    allowed_hosts: hosts::AllowedHosts,
    /// Set when webhooks must be signed.
    webhooks: Option<signature::WebhookVerifier>,
    pub limits: Limits,
    /// Where backups are staged before they are streamed.
    pub data_dir: std::path::PathBuf,
    /// True once the store is open and until shutdown begins.
    ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Bytes of request bodies in flight, at `BODY_MEMORY_FACTOR` times
    /// their size: what is left of `ingest.max_inflight_bytes`.
    body_budget: Arc<Semaphore>,
    /// Change-feed streams that may still open (`feed.max_streams`).
    pub feed_streams: Arc<Semaphore>,
    pub feed: crate::config::FeedConfig,
    pub await_retry_after: Duration,
    /// `http.public_url` without a trailing slash.
    pub public_url: Option<String>,
    /// Cancelled when shutdown begins: streams and waits end on it.
    pub stopping: tokio_util::sync::CancellationToken,
    pub cloudevents: crate::config::CloudEventsConfig,
    /// `index.attributes`: the keys `attr.KEY` may filter on.
    pub indexed_attributes: Vec<String>,
    /// `GET /v1/openapi.json`: the document, with an `attr.KEY` parameter
    /// of `listProcesses` for each key this daemon indexes.
    openapi: Bytes,
}

/// The API document as this daemon serves it: `docs/openapi.yaml`, plus
/// the `attr.KEY` filters of `listProcesses` that `index.attributes`
/// allows here, declared one by one (OpenAPI has no way to name a family
/// of parameters), so that clients and API testers see them.
fn served_openapi(indexed_attributes: &[String]) -> Bytes {
    if indexed_attributes.is_empty() {
        return Bytes::from_static(OPENAPI_JSON);
    }
    let mut document: serde_json::Value =
        serde_json::from_slice(OPENAPI_JSON).expect("build.rs wrote the document as JSON");
    let parameters = document
        .pointer_mut("/paths/~1v1~1processes/get/parameters")
        .and_then(serde_json::Value::as_array_mut)
        .expect("docs/openapi.yaml lists the parameters of listProcesses");
    for key in indexed_attributes {
        parameters.push(serde_json::json!({
            "in": "query",
            "name": format!("attr.{key}"),
            "description": format!("Processes whose attribute `{key}` has this value"),
            "schema": { "type": "string" },
        }));
    }
    Bytes::from(serde_json::to_vec(&document).expect("JSON serializes"))
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_inflight_bytes: usize,
}

impl AppState {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<AppState, String> {
        Ok(AppState {
            core: OnceLock::new(),
            webhooks: signature::WebhookVerifier::new(&config.webhooks)?,
            auth: Auth::new(&config.auth),
            allowed_hosts: hosts::AllowedHosts::new(
                config.auth.has_tokens(),
                &config.http.allowed_hosts,
                config.http.public_url.as_deref(),
            ),
            limits: Limits {
                max_batch: config.ingest.max_batch,
                max_body_bytes: config.ingest.max_body_bytes,
                body_read_timeout: Duration::from_secs(config.http.body_read_timeout_secs),
                header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
                max_connections: config.http.max_connections,
                max_inflight_bytes: config.ingest.max_inflight_bytes.min(Semaphore::MAX_PERMITS),
            },
            data_dir: config.data_dir.clone(),
            ready: AtomicBool::new(false),
            metrics,
            body_budget: Arc::new(Semaphore::new(
                config.ingest.max_inflight_bytes.min(Semaphore::MAX_PERMITS),
            )),
            feed_streams: Arc::new(Semaphore::new(config.feed.max_streams)),
            feed: config.feed.clone(),
            await_retry_after: Duration::from_secs(config.await_.retry_after_secs),
            public_url: config
                .http
                .public_url
                .as_ref()
                .map(|url| url.trim_end_matches('/').to_owned()),
            stopping: tokio_util::sync::CancellationToken::new(),
            cloudevents: config.cloudevents.clone(),
            indexed_attributes: config.index.attributes.clone(),
            openapi: served_openapi(&config.index.attributes),
        })
    }

    /// The store is open and the writer runs: serve everything.
    pub fn open(&self, core: Core) {
        if self.core.set(core).is_ok() {
            self.set_ready(true);
        }
    }

    pub fn core(&self) -> Result<&Core, ApiError> {
        self.core
            .get()
            .ok_or(ApiError::Unavailable("starting: the store is not open yet"))
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An answer without a body.
fn empty_response(status: StatusCode) -> Response {
    let mut response = hyper::Response::new(full_body(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A JSON answer, ending in a newline as text on a terminal should.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = hyper::Response::new(full_body(body));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            tracing::error!(%error, "a response could not be encoded");
            let mut response = hyper::Response::new(full_body(Bytes::new()));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// Serves the routes of `surface` to connections from `listener` until
/// `shutdown` resolves, then stops accepting, lets requests in flight
/// finish (8 s at most) and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    surface: Surface,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Connections::new(match surface {
        Surface::Api => state.limits.max_connections,
        Surface::Probes => PROBE_MAX_CONNECTIONS,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        // Each connection's read buffer grows to this at most (hyper's
        // default is about 400 KiB): 1,024 connections streaming bodies
        // would otherwise hold 400 MiB in buffers alone.
        .max_buf_size(CONNECTION_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment
                    // rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let registration = match connections.admit() {
            Admission::Admitted {
                registration,
                closed_idle,
            } => {
                if closed_idle {
                    state.metrics.rejected(Rejection::IdleConnectionClosed);
                }
                registration
            }
            Admission::Refused => {
                state.metrics.rejected(Rejection::ConnectionLimit);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().map(|addr| addr.ip());
        let close = registration.connection.close.clone();
        let registration = Arc::new(registration);
        let service = service_fn({
            let (state, registration) = (state.clone(), registration.clone());
            move |request| {
                let in_service = registration.request_started();
                let state = state.clone();
                async move {
                    let response = handle(&state, surface, request, local).await;
                    // In service until the answer's body is sent or dropped.
                    let (parts, body) = response.into_parts();
                    let body = body
                        .map_frame(move |frame| {
                            let _ = &in_service;
                            frame
                        })
                        .boxed();
                    Ok::<_, std::convert::Infallible>(hyper::Response::from_parts(parts, body))
                }
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(error) = ended {
                    if error.is_timeout() {
                        metrics.rejected(Rejection::HeaderTimeout);
                    } else if error.is_parse_too_large() {
                        metrics.rejected(Rejection::HeaderTooLarge);
                    }
                    tracing::debug!(%error, %peer, "connection ended with an error");
                },
                // Closed to make room: dropping it closes the socket.
                () = close.cancelled() => {}
            }
            drop(registration);
        });
    }
    if surface == Surface::Api {
        state.set_ready(false);
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Answers one request; `local` is the address the connection came in on.
async fn handle(
    state: &AppState,
    surface: Surface,
    request: Request<Incoming>,
    local: Option<std::net::IpAddr>,
) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    // Segments percent-decoded (`run%3A1` is `run:1`), as RFC 3986 has
    // clients send any character they like to.
    let segments: Result<Vec<Cow<'_, str>>, _> = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| percent_decode_str(segment).decode_utf8())
        .collect();
    let segments = segments.unwrap_or_default();
    let segments: Vec<&str> = segments.iter().map(|segment| segment.as_ref()).collect();
    let route_label = routes::label(&segments);
    // Only pay for the request line when it will be logged.
    let described = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| format!("{} {}", request.method(), request.uri().path()));
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    // Taken by the one route that reads a body; otherwise left here.
    let mut body = Some(body);
    let response = if segments.is_empty() {
        Err(ApiError::InvalidQuery {
            parameter: "path".into(),
            detail: "the path is not UTF-8 once percent-decoded".into(),
        })
    } else {
        routes::dispatch(state, surface, &segments, &request, local, &mut body).await
    }
    .unwrap_or_else(|error| {
        if let Some(reason) = error.rejection() {
            state.metrics.rejected(reason);
        }
        error.into_response()
    });
    // A body nobody read whole (the request was refused before it or
    // partway through it, or its route takes none) is read and dropped:
    // left unread, it would make hyper close the connection after the
    // answer, and a client that sends its next request on it, as
    // keep-alive allows, would meet a closed socket instead of an answer.
    if let Some(body) = body.filter(|body| !hyper::body::Body::is_end_stream(body)) {
        drain_in_background(body);
    }
    state
        .metrics
        .request(route_label, response.status().as_u16(), started.elapsed());
    if let Some(request) = described {
        tracing::debug!(%request, status = response.status().as_u16(), "request");
    }
    response
}

/// How much of an unread body is read and dropped, and for how long, so
/// that a client still sending receives the answer instead of a reset.
const DRAIN_AT_MOST_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_AT_MOST: Duration = Duration::from_secs(10);

/// Reads a body and drops it as it comes, in the background, up to
/// `DRAIN_AT_MOST_BYTES` and for `DRAIN_AT_MOST`: a client still sending
/// receives the answer, and the connection stays usable afterwards.
fn drain_in_background(mut body: Incoming) {
    tokio::spawn(async move {
        let drain = async {
            let mut drained = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    drained += data.len() as u64;
                    if drained > DRAIN_AT_MOST_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_AT_MOST, drain).await;
    });
}

/// The answer to `OPTIONS /v1/events`: the CloudEvents webhook
/// validation handshake, or a plain `OPTIONS` when it is not one.
async fn handshake(state: &AppState, request: &Request<()>) -> Result<Response, ApiError> {
    let judged = cloudevents::Handshake::judge(request.headers(), &state.cloudevents);
    let allow = |mut response: Response| {
        response.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        response
    };
    match judged {
        cloudevents::Handshake::Plain => Ok(allow(empty_response(StatusCode::NO_CONTENT))),
        cloudevents::Handshake::Allowed { origin } => {
            let mut response = allow(empty_response(StatusCode::OK));
            let headers = response.headers_mut();
            if let Ok(origin) = HeaderValue::from_str(&origin) {
                headers.insert("webhook-allowed-origin", origin);
            }
            // No rate is promised beyond what the daemon's own bounds
            // answer with 429.
            headers.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
            Ok(response)
        }
        cloudevents::Handshake::Refused { origin } => Err(ApiError::OriginNotAllowed(origin)),
        cloudevents::Handshake::Malformed => Err(ApiError::InvalidHeader {
            header: "WebHook-Request-Origin",
            detail: "`WebHook-Request-Origin` must be the DNS name of the sending system, such as eventgrid.azure.net",
        }),
    }
}

/// `GET /livez`: 200 while the process runs.
async fn livez() -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok"}),
    ))
}

/// `GET /readyz` (and `/healthz`): 200 once the store is open and until
/// shutdown begins.
async fn readyz(state: &AppState) -> Result<Response, ApiError> {
    if state.ready.load(Ordering::SeqCst) {
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        ))
    } else {
        Err(ApiError::Unavailable(
            "not ready: starting or shutting down",
        ))
    }
}

/// `GET /v1/openapi.json`.
async fn openapi(state: &AppState) -> Result<Response, ApiError> {
    let mut response = hyper::Response::new(full_body(state.openapi.clone()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `GET /metrics`: the counters as they stand, and the store as its latest
/// commit has it (nothing of the store before it is open).
async fn metrics(state: &AppState, request: &Request<()>) -> Result<Response, ApiError> {
    let accept = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let openmetrics = crate::metrics::wants_openmetrics(accept);
    let inflight_body_bytes = state
        .limits
        .max_inflight_bytes
        .saturating_sub(state.body_budget.available_permits()) as u64;
    let reading = match state.core.get() {
        None => StoreReading {
            processes_by_status: Vec::new(),
            store_bytes: 0,
            disk_free_bytes: None,
            queue_depth: 0,
            inflight_body_bytes,
            processes_stalled: 0,
        },
        Some(core) => {
            let queue_depth = core.writer.queue_depth();
            blocking(state, move |snapshots| {
                let snapshot = snapshots.get()?;
                let counters = snapshot.counters()?;
                let processes_stalled = counters.stalled;
                let path = snapshots.path();
                Ok(StoreReading {
                    // Every process status, zeros included; `skipped` is a task's only.
                    processes_by_status: Status::ALL
                        .into_iter()
                        .filter(|status| *status != Status::Skipped)
                        .map(|status| {
                            (
                                status,
                                counters.processes_by_status[usize::from(status.code())],
                            )
                        })
                        .collect(),
                    store_bytes: std::fs::metadata(path).map_or(0, |meta| meta.len()),
                    disk_free_bytes: crate::store::free_bytes(path),
                    queue_depth,
                    inflight_body_bytes,
                    processes_stalled,
                })
            })
            .await?
        }
    };
    let text = state.metrics.render(&reading, openmetrics);
    let mut response = hyper::Response::new(full_body(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if openmetrics {
            crate::metrics::OPENMETRICS_TEXT
        } else {
            crate::metrics::PROMETHEUS_TEXT
        }),
    );
    Ok(response)
}

/// What an id keeps of itself in a link's path segment: the unreserved
/// characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) as they are, every
/// other byte percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The link to `/v1/processes/{id}` followed by `rest` (`/await?wait=5`,
/// or nothing), absolute when `http.public_url` is set: every `Location`
/// the API sends is made here.
pub fn process_link(state: &AppState, process_id: &str, rest: &str) -> String {
    link_under(state.public_url.as_deref(), process_id, rest)
}

/// The same link under `public_url` (or as a path): also how clients in
/// this crate (the mirror) name a process in a URL.
pub fn link_under(public_url: Option<&str>, process_id: &str, rest: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(process_id, PATH_SEGMENT);
    let path = format!("/v1/processes/{id}{rest}");
    match public_url {
        Some(base) => format!("{base}{path}"),
        None => path,
    }
}

/// Runs a store read that may wait (on the disk, or for a long scan) off
/// the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&SharedSnapshots) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let snapshots = state.core()?.snapshots.clone();
    tokio::task::spawn_blocking(move || work(&snapshots))
        .await
        .map_err(|error| ApiError::Internal(format!("a read task failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_unreserved_characters_and_encode_every_other() {
        // Every class of character a process id may hold.
        assert_eq!(
            link_under(None, "AZaz09-._~:", "/await?wait=5"),
            "/v1/processes/AZaz09-._~%3A/await?wait=5"
        );
        assert_eq!(link_under(None, "aw-1", ""), "/v1/processes/aw-1");
        assert_eq!(
            link_under(None, "run_a.b~c-1", ""),
            "/v1/processes/run_a.b~c-1"
        );
        assert_eq!(
            link_under(Some("https://pm.example.com"), "tenant:42", ""),
            "https://pm.example.com/v1/processes/tenant%3A42"
        );
        // What the router decodes is the id again.
        let link = link_under(None, "a:b~c", "");
        let segment = link.rsplit('/').next().unwrap();
        assert_eq!(percent_decode_str(segment).decode_utf8().unwrap(), "a:b~c");
    }
}
