//! The HTTP API on hyper: the accept loop, routing, and the pieces every
//! handler shares. Handlers parse and validate without touching the store;
//! writes go to the writer thread, reads to a redb snapshot.

mod admin;
mod auth;
pub mod ingest;
pub mod problem;
mod query;
pub mod signature;
pub mod views;

use crate::config::Config;
use crate::store::read::SharedSnapshots;
use crate::writer::WriterHandle;
use auth::{Auth, Role};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use problem::ApiError;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
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
}

/// What every handler shares.
pub struct AppState {
    /// Set once the store is open. Until then the probes answer (livez
    /// 200, readyz 503) and everything else is 503 "starting".
    core: OnceLock<Core>,
    auth: Auth,
    /// Set when webhooks must be signed.
    webhooks: Option<signature::WebhookVerifier>,
    pub limits: Limits,
    /// Where backups are staged before they are streamed.
    pub data_dir: std::path::PathBuf,
    /// True once the store is open and until shutdown begins.
    ready: AtomicBool,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl AppState {
    pub fn new(config: &Config) -> Result<AppState, String> {
        Ok(AppState {
            core: OnceLock::new(),
            webhooks: signature::WebhookVerifier::new(&config.webhooks)?,
            auth: Auth::new(&config.auth),
            limits: Limits {
                max_batch: config.ingest.max_batch,
                max_body_bytes: config.ingest.max_body_bytes,
                body_read_timeout: Duration::from_secs(config.http.body_read_timeout_secs),
                header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
                max_connections: config.http.max_connections,
            },
            data_dir: config.data_dir.clone(),
            ready: AtomicBool::new(false),
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

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish (8 s at most) and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    state.set_ready(false);
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}

async fn handle(state: &AppState, request: Request<Incoming>) -> Response {
    // Only pay for the request line when it will be logged.
    let described = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| format!("{} {}", request.method(), request.uri().path()));
    let response = route(state, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    if let Some(request) = described {
        tracing::debug!(%request, status = response.status().as_u16(), "request");
    }
    response
}

async fn route(state: &AppState, request: Request<Incoming>) -> Result<Response, ApiError> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // HEAD is GET without the body (RFC 9110 9.3.2); hyper leaves the body
    // out of the answer to a HEAD request by itself.
    let method = match request.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    match segments.as_slice() {
        ["livez"] => only(method, &Method::GET, "GET, HEAD")
            .map(|()| json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ["readyz"] | ["healthz"] => {
            only(method, &Method::GET, "GET, HEAD")?;
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
        ["v1", "events"] => {
            only(method, &Method::POST, "POST")?;
            state.auth.require(request.headers(), Role::Ingest)?;
            ingest::post_events(state, request).await
        }
        ["v1", "processes"] => {
            only(method, &Method::GET, "GET, HEAD")?;
            state.auth.require(request.headers(), Role::Read)?;
            query::list_processes(state, request.uri().query()).await
        }
        ["v1", "processes", id] => match *method {
            Method::GET => {
                state.auth.require(request.headers(), Role::Read)?;
                query::get_process(state, path_process_id(id)?).await
            }
            Method::DELETE => {
                state.auth.require(request.headers(), Role::Admin)?;
                ingest::delete_process(state, path_process_id(id)?).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, HEAD, DELETE")),
        },
        ["v1", "processes", id, "history"] => {
            only(method, &Method::GET, "GET, HEAD")?;
            state.auth.require(request.headers(), Role::Read)?;
            query::history(state, path_process_id(id)?, request.uri().query()).await
        }
        ["v1", "admin", "backup"] => {
            only(method, &Method::GET, "GET, HEAD")?;
            state.auth.require(request.headers(), Role::Admin)?;
            admin::backup(state).await
        }
        ["v1", "stats"] => {
            only(method, &Method::GET, "GET, HEAD")?;
            state.auth.require(request.headers(), Role::Read)?;
            query::stats(state).await
        }
        _ => Err(ApiError::NotFound(format!(
            "there is no resource at {path}"
        ))),
    }
}

/// A process id from the path, checked by the rule that writes follow, so
/// that a read of an id no write could have made is a 400 naming the rule,
/// not a 404 that echoes whatever was sent.
fn path_process_id(id: &str) -> Result<&str, ApiError> {
    if crate::domain::is_valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::InvalidQuery {
            parameter: "process_id".into(),
            detail: "a process id is 1 to 200 bytes of letters, digits and . _ : ~ -".into(),
        })
    }
}

fn only(method: &Method, allowed: &Method, allow_header: &'static str) -> Result<(), ApiError> {
    if method == allowed {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(allow_header))
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
