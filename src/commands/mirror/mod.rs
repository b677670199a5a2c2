//! `processmanager mirror`: keeps PostgreSQL tables in step with one
//! daemon's change feed, so that a platform of many sidecars answers its
//! questions with one SQL query.
//!
//! Each round reads this source's offset, takes the page of the feed after
//! it (a long poll once caught up) with the state of every process the
//! page names (`include=processes`, read by the daemon in the same
//! snapshot), and writes the page's events, those processes and their
//! tasks, the removals and the new offset in one PostgreSQL transaction.
//! The offset moves only with what it covers, and the transaction holds
//! its row locked: a mirror killed at any moment, or a second one started
//! by mistake, leaves no event twice and none missing.
//!
//! A process's row is its state when the daemon read the page, which may
//! be a little ahead of the offset; the events that led there come with the
//! next pages, and each page sets the rows again, so the tables settle on
//! exactly what the daemon holds. Nothing of the daemon's rules is written
//! twice here: the daemon folds events into processes, the mirror copies.

mod daemon;
mod database;

use crate::cli::MirrorArgs;
use anyhow::{bail, Context};
use daemon::{Daemon, DaemonError};
use database::{Database, Offset};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a caught-up mirror holds a feed request open for news.
const LONG_POLL: Duration = Duration::from_secs(20);

/// The first wait after a failure, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often the lag is logged.
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);

pub fn run(args: &MirrorArgs, data_dir: &Path) -> anyhow::Result<()> {
    let url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let file = super::daemon_url_file(data_dir);
            let url = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "no daemon address in {} (a running daemon writes it); pass --url",
                    file.display()
                )
            })?;
            url.trim().trim_end_matches('/').to_owned()
        }
    };
    let source = match &args.source {
        Some(source) if source.is_empty() => bail!("--source must not be empty"),
        Some(source) => source.clone(),
        None => default_source(&url),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let daemon = Daemon::new(&url, args.token.as_deref())?;
    runtime.block_on(async {
        if args.status {
            return status(&daemon, &args.to, &source, args.json).await;
        }
        Mirror {
            daemon,
            to: args.to.clone(),
            source,
            batch: args.batch,
            once: args.once,
        }
        .run()
        .await
    })
}

/// The daemon's host name when `--url` names one, else this machine's: a
/// mirror usually runs beside its daemon, in the same pod.
fn default_source(url: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or_default();
    let is_name = !host.is_empty()
        && host != "localhost"
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.starts_with('[');
    if is_name {
        return host.to_owned();
    }
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `mirror --status`: where this source stands.
async fn status(daemon: &Daemon, to: &str, source: &str, json: bool) -> anyhow::Result<()> {
    let database = Database::connect(to).await?;
    let offset = database.offset(source).await?;
    let daemon_seq = daemon.last_seq().await;
    let applied = offset.as_ref().map_or(0, |offset| offset.last_seq);
    let lag = daemon_seq
        .as_ref()
        .ok()
        .map(|seq| seq.saturating_sub(applied));
    if json {
        return super::output::json(&serde_json::json!({
            "source": source,
            "last_seq": applied,
            "daemon_seq": daemon_seq.as_ref().ok(),
            "lag": lag,
            "last_received_at": offset.as_ref().and_then(|o| o.last_received_at.map(rfc3339)),
            "updated_at": offset.as_ref().map(|o| rfc3339(o.updated_at)),
        }));
    }
    let unknown = |error: &DaemonError| format!("unknown ({error})");
    super::output::pairs(&[
        ("source", source.to_owned()),
        ("last seq applied", applied.to_string()),
        (
            "daemon's last seq",
            daemon_seq
                .as_ref()
                .map_or_else(unknown, |seq| seq.to_string()),
        ),
        (
            "lag",
            lag.map_or_else(|| "unknown".into(), |lag| format!("{lag} events")),
        ),
        (
            "last applied",
            offset
                .as_ref()
                .map_or_else(|| "never".into(), |o| rfc3339(o.updated_at)),
        ),
    ])
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

struct Mirror {
    daemon: Daemon,
    to: String,
    source: String,
    batch: u32,
    once: bool,
}

/// Why a round ended without applying anything.
enum Failure {
    /// The daemon or the database is away: wait and try again.
    Retry(anyhow::Error),
    /// Nothing will change by waiting.
    Fatal(anyhow::Error),
}

impl From<DaemonError> for Failure {
    fn from(error: DaemonError) -> Self {
        if error.is_transient() {
            Failure::Retry(error.into())
        } else {
            Failure::Fatal(error.into())
        }
    }
}

impl Mirror {
    async fn run(self) -> anyhow::Result<()> {
        let mut stop = std::pin::pin!(super::shutdown_signal(
            "stopping: the last transaction is committed or rolled back"
        )?);
        let mut database: Option<Database> = None;
        let mut backoff = BACKOFF_FIRST;
        let mut failing_since: Option<Instant> = None;
        let mut last_lag_log = Instant::now();
        tracing::info!(source = %self.source, daemon = %self.daemon.url(), "mirroring the daemon's change feed into PostgreSQL");
        loop {
            let round = tokio::select! {
                round = self.round(&mut database) => round,
                () = &mut stop => return Ok(()),
            };
            match round {
                Ok(progress) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_secs = since.elapsed().as_secs(),
                            "the daemon and the database answer again; mirroring goes on"
                        );
                    }
                    backoff = BACKOFF_FIRST;
                    if progress.applied > 0 && last_lag_log.elapsed() >= LAG_LOG_EVERY {
                        last_lag_log = Instant::now();
                        // The lag is for people: not knowing it stops nothing.
                        let daemon_seq = self.daemon.last_seq().await.ok();
                        tracing::info!(
                            source = %self.source,
                            last_seq = progress.offset,
                            lag = daemon_seq.map(|seq| seq.saturating_sub(progress.offset)),
                            "mirrored"
                        );
                    }
                    if self.once && progress.caught_up {
                        tracing::info!(source = %self.source, last_seq = progress.offset, "caught up");
                        return Ok(());
                    }
                }
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(error)) => {
                    // A connection that failed is dropped and made anew.
                    database = None;
                    failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot mirror now; waiting"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut stop => return Ok(()),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One page of the feed, applied.
    async fn round(&self, database: &mut Option<Database>) -> Result<Progress, Failure> {
        if database.is_none() {
            let mut connected = Database::connect(&self.to).await.map_err(|error| {
                if database::refused_for_good(&error) {
                    Failure::Fatal(error)
                } else {
                    Failure::Retry(error)
                }
            })?;
            connected.create_tables().await.map_err(|error| {
                if error.is::<database::NewerTables>() {
                    // Waiting will not make this build newer.
                    Failure::Fatal(error)
                } else {
                    Failure::Retry(error.context("cannot create the mirror's tables"))
                }
            })?;
            *database = Some(connected);
        }
        let db = database.as_mut().expect("connected above");
        let offset = db.offset(&self.source).await.map_err(Failure::Retry)?;
        let after = offset.as_ref().map_or(0, |offset: &Offset| offset.last_seq);
        let wait = if self.once { Duration::ZERO } else { LONG_POLL };
        let page = self.daemon.changes(after, self.batch, wait).await?;
        let caught_up = page.items.len() < self.batch as usize;
        if page.items.is_empty() {
            return Ok(Progress {
                applied: 0,
                offset: after,
                caught_up,
            });
        }
        let applied = page.items.len();
        let next = page.next_after_seq;
        let written = Instant::now();
        db.apply(&self.source, after, &page)
            .await
            .map_err(Failure::Retry)?;
        tracing::debug!(
            items = applied,
            processes = page.processes.len(),
            write_ms = written.elapsed().as_millis() as u64,
            "page applied"
        );
        Ok(Progress {
            applied,
            offset: next,
            caught_up,
        })
    }
}

struct Progress {
    applied: usize,
    offset: u64,
    caught_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_source_is_the_daemons_host_name_or_this_machines() {
        assert_eq!(default_source("http://billing-7f9c:8080"), "billing-7f9c");
        assert_eq!(default_source("http://orders.internal/"), "orders.internal");
        let machine = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        assert_eq!(default_source("http://127.0.0.1:8080"), machine);
        assert_eq!(default_source("http://localhost:8080"), machine);
        assert_eq!(default_source("http://[::1]:8080"), machine);
    }
}
