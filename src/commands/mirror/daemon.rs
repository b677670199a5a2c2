//! The mirror's side of the daemon: pages of the change feed
//! (`GET /v1/changes`, JSON pages with a long poll, and the processes they
//! name), and the daemon's last seq.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// How long an answer may take beyond the long poll it asked for.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Daemon {
    url: String,
    authorization: Option<String>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot reach the daemon at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the daemon answered {status} to {path}: {detail}{hint}")]
    Refused {
        status: u16,
        path: String,
        detail: String,
        hint: &'static str,
    },
    #[error("the daemon no longer keeps the feed after seq {after} (its oldest item is seq {oldest}): the items this source needs next outlived feed.retention, or an offline compaction removed them. Run `processmanager mirror --reseed` with the same --source: it brings the tables to the daemon's current state and follows the feed from there")]
    Gone { after: u64, oldest: u64 },
    #[error("the daemon's answer to {path} is not what the API says: {reason}")]
    Malformed { path: String, reason: String },
}

impl DaemonError {
    /// Worth waiting for: the daemon is away, starting, or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            DaemonError::Unreachable { .. } => true,
            DaemonError::Refused { status, .. } => *status >= 500 || *status == 429,
            DaemonError::Gone { .. } | DaemonError::Malformed { .. } => false,
        }
    }
}

/// One page of the feed, with the state of every process it names as
/// the daemon read it with the items (`include=processes`): `None` for one
/// it no longer has.
pub struct Page {
    pub items: Vec<serde_json::Value>,
    pub processes: HashMap<String, Option<serde_json::Value>>,
    pub next_after_seq: u64,
}

/// The store as `GET /v1/stats` shows it.
#[derive(Deserialize)]
pub struct Stats {
    pub last_seq: u64,
    pub store_id: String,
    pub processes_total: u64,
}

/// A page of `GET /v1/processes`: each process without its tasks, but
/// with `task_counts`.
#[derive(Deserialize)]
pub struct ProcessPage {
    pub items: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct PageBody {
    items: Vec<serde_json::Value>,
    processes: HashMap<String, Option<serde_json::Value>>,
    next_after_seq: u64,
}

impl Daemon {
    pub fn new(url: &str, token: Option<&str>) -> anyhow::Result<Daemon> {
        if !url.starts_with("http://") {
            anyhow::bail!(
                "--url must start with http:// (the daemon serves plain HTTP, e.g. http://127.0.0.1:8080)"
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Ok(Daemon {
            url: url.to_owned(),
            authorization: token
                .filter(|token| !token.is_empty())
                .map(|token| format!("Bearer {token}")),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// GETs `path`; the status and body.
    async fn get(&self, path: &str, wait: Duration) -> Result<(StatusCode, Bytes), DaemonError> {
        let unreachable = |reason: String| DaemonError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let mut request = Request::get(format!("{}{path}", self.url))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::new())
            .map_err(|error| unreachable(error.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| {
                // The chain says why (refused, reset, ...).
                let mut reason = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                unreachable(reason)
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| unreachable(error.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(wait + ANSWER_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(unreachable("no answer in time".into())))
    }

    fn refused(path: &str, status: StatusCode, body: &[u8]) -> DaemonError {
        let problem: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let detail = problem["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        DaemonError::Refused {
            status: status.as_u16(),
            path: path.to_owned(),
            detail,
            hint: match status.as_u16() {
                401 | 403 => "; give a read token in PM_READ_TOKEN (or --token)",
                _ => "",
            },
        }
    }

    /// The feed after `after`, at most `limit` items; waits up to `wait`
    /// for the first when there is none yet.
    pub async fn changes(
        &self,
        after: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<Page, DaemonError> {
        let path = format!(
            "/v1/changes?after_seq={after}&limit={limit}&wait={}&include=processes",
            wait.as_secs()
        );
        let (status, body) = self.get(&path, wait).await?;
        if status == StatusCode::GONE {
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(DaemonError::Gone {
                after,
                oldest: problem["oldest_seq"].as_u64().unwrap_or_default(),
            });
        }
        if status != StatusCode::OK {
            return Err(Self::refused(&path, status, &body));
        }
        let page: PageBody =
            serde_json::from_slice(&body).map_err(|error| DaemonError::Malformed {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        Ok(Page {
            items: page.items,
            processes: page.processes,
            next_after_seq: page.next_after_seq,
        })
    }

    /// The daemon's last seq (`GET /v1/stats`).
    pub async fn last_seq(&self) -> Result<u64, DaemonError> {
        Ok(self.stats().await?.last_seq)
    }

    /// The seq the feed's first item follows: 0 while it holds every
    /// item since the store began, higher once retention or compaction
    /// trimmed it.
    pub async fn feed_floor(&self) -> Result<u64, DaemonError> {
        // From the start (never 410), the first item it serves; items of
        // processes a compaction kept may lie below a floor it raised,
        // which a resume point there meets as a 410 naming the oldest.
        let page = self.changes(0, 1, Duration::ZERO).await?;
        let first = match page.items.first().and_then(|item| item["seq"].as_u64()) {
            Some(first) => first - 1,
            None => page.next_after_seq,
        };
        match self.changes(first, 1, Duration::ZERO).await {
            Ok(_) => Ok(first),
            Err(DaemonError::Gone { oldest, .. }) => Ok(oldest.saturating_sub(1)),
            Err(error) => Err(error),
        }
    }

    /// What `GET /v1/stats` says of the store as a whole.
    pub async fn stats(&self) -> Result<Stats, DaemonError> {
        self.get_json("/v1/stats").await
    }

    /// A page of `GET /v1/processes`, newest first, after `cursor`.
    pub async fn processes(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<ProcessPage, DaemonError> {
        let path = match cursor {
            Some(cursor) => format!("/v1/processes?limit={limit}&cursor={cursor}"),
            None => format!("/v1/processes?limit={limit}"),
        };
        self.get_json(&path).await
    }

    /// One process with its tasks (`GET /v1/processes/{id}`); `None` when
    /// it is gone.
    pub async fn process(&self, id: &str) -> Result<Option<serde_json::Value>, DaemonError> {
        let path = crate::http::link_under(None, id, "");
        let (status, body) = self.get(&path, Duration::ZERO).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|error| DaemonError::Malformed {
                        path,
                        reason: error.to_string(),
                    })
            }
            _ => Err(Self::refused(&path, status, &body)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, DaemonError> {
        let (status, body) = self.get(path, Duration::ZERO).await?;
        if status != StatusCode::OK {
            return Err(Self::refused(path, status, &body));
        }
        serde_json::from_slice(&body).map_err(|error| DaemonError::Malformed {
            path: path.into(),
            reason: error.to_string(),
        })
    }
}
