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
use crate::progress::{Progress, Show, Unit};
use anyhow::{bail, Context};
use daemon::{Daemon, DaemonError, Stats};
use database::{Database, Offset};
use futures_util::StreamExt;
use std::collections::HashMap;
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
    if args.source.as_deref() == Some("") {
        bail!("--source must not be empty");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let daemon = Daemon::new(&url, args.token.as_deref())?;
    runtime.block_on(async {
        if args.status {
            let source = match &args.source {
                Some(source) => source.clone(),
                None => daemon.stats().await?.store_id,
            };
            return status(&daemon, &args.to, &source, args.json).await;
        }
        Mirror {
            daemon,
            to: args.to.clone(),
            source: args.source.clone().unwrap_or_default(),
            batch: args.batch,
            once: args.once,
            reseed: args.reseed,
            show: Show::for_command(args.quiet),
        }
        .run()
        .await
    })
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
    /// Empty until `run` learns the default, the daemon's store id.
    source: String,
    batch: u32,
    once: bool,
    reseed: bool,
    show: Show,
}

/// Processes a `--reseed` page holds, and how many of them it reads at
/// once (those with tasks, one request each).
const RESEED_PAGE: u32 = 500;
const RESEED_READS: usize = 16;

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
    async fn run(mut self) -> anyhow::Result<()> {
        let mut stop = std::pin::pin!(super::shutdown_signal(
            "stopping: the last transaction is committed or rolled back"
        )?);
        let mut database: Option<Database> = None;
        let mut backoff = BACKOFF_FIRST;
        let mut failing_since: Option<Instant> = None;
        let mut last_lag_log = Instant::now();
        if self.source.is_empty() {
            // The store's id: it stays when the pod's host name changes.
            self.source = loop {
                match self.daemon.stats().await {
                    Ok(stats) => break stats.store_id,
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "waiting for the daemon, to learn its store id (the default --source)");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = &mut stop => return Ok(()),
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(error) => return Err(error.into()),
                }
            };
            backoff = BACKOFF_FIRST;
        }
        if self.reseed {
            let reseeded = tokio::select! {
                reseeded = self.reseed(&mut database) => reseeded,
                () = &mut stop => bail!("stopped during the reseed: the tables hold part of the daemon's state, and a mirror of this source refuses to follow until `processmanager mirror --reseed` runs to its end"),
            };
            reseeded.context("the reseed stopped; nothing of the page in hand was applied, and a mirror of this source refuses to follow until `processmanager mirror --reseed` runs to its end")?;
        }
        tracing::info!(source = %self.source, daemon = %self.daemon.url(), "mirroring the daemon's change feed into PostgreSQL");
        loop {
            let round = tokio::select! {
                round = self.round(&mut database) => round,
                () = &mut stop => return Ok(()),
            };
            match round {
                Ok(round) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_secs = since.elapsed().as_secs(),
                            "the daemon and the database answer again; mirroring goes on"
                        );
                    }
                    backoff = BACKOFF_FIRST;
                    if round.applied > 0 && last_lag_log.elapsed() >= LAG_LOG_EVERY {
                        last_lag_log = Instant::now();
                        // The lag is for people: not knowing it stops nothing.
                        let daemon_seq = self.daemon.last_seq().await.ok();
                        tracing::info!(
                            source = %self.source,
                            last_seq = round.offset,
                            lag = daemon_seq.map(|seq| seq.saturating_sub(round.offset)),
                            "mirrored"
                        );
                    }
                    if self.once && round.caught_up {
                        tracing::info!(source = %self.source, last_seq = round.offset, "caught up");
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

    /// Connects to PostgreSQL when not connected, and makes the tables.
    async fn connect<'d>(
        &self,
        database: &'d mut Option<Database>,
    ) -> Result<&'d mut Database, Failure> {
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
        Ok(database.as_mut().expect("connected above"))
    }

    /// `--reseed`: the tables of this source brought to the daemon's
    /// current state, a page of processes a transaction; then the feed,
    /// followed again from its start, brings every event it holds and
    /// what changed meanwhile.
    async fn reseed(&self, database: &mut Option<Database>) -> anyhow::Result<()> {
        let db = self
            .connect(database)
            .await
            .map_err(|failure| match failure {
                Failure::Retry(error) | Failure::Fatal(error) => error,
            })?;
        let stats = self.daemon.stats().await?;
        // The feed from its start brings every event it still holds, and
        // what changed while the processes are read.
        let floor = self.daemon.feed_floor().await?;
        db.begin_reseed(&self.source, &stats.store_id, floor)
            .await?;
        tracing::info!(source = %self.source, processes = stats.processes_total, "reseeding: the tables of this source are brought to the daemon's state");
        let progress = Progress::new(
            "mirror: reseeding processes",
            Unit::Records,
            stats.processes_total,
            self.show,
        );
        let mut shown = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .daemon
                .processes(cursor.as_deref(), RESEED_PAGE)
                .await?;
            // A list leaves tasks out: a process with tasks is read whole.
            let states: Vec<(String, Option<serde_json::Value>)> =
                futures_util::stream::iter(page.items)
                    .map(|item| async move {
                        let id = item["id"].as_str().unwrap_or_default().to_owned();
                        let has_tasks = item["task_counts"]
                            .as_object()
                            .is_some_and(|counts| counts.values().any(|n| n.as_u64() != Some(0)));
                        let state = if has_tasks {
                            self.daemon.process(&id).await?
                        } else {
                            Some(item)
                        };
                        Ok::<_, DaemonError>((id, state))
                    })
                    .buffered(RESEED_READS)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()?;
            let count = states.len() as u64;
            // One gone meanwhile: its removal is in the feed after the seq
            // the reseed began at.
            let states: HashMap<String, Option<serde_json::Value>> = states
                .into_iter()
                .filter(|(_, state)| state.is_some())
                .collect();
            shown.extend(states.keys().cloned());
            db.reseed_page(&self.source, &states).await?;
            progress.add(count);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        db.end_reseed(&self.source, &shown).await?;
        progress.finish();
        tracing::info!(source = %self.source, processes = shown.len(), from_seq = floor, "reseeded; following the feed from its start");
        Ok(())
    }

    /// One page of the feed, applied.
    async fn round(&self, database: &mut Option<Database>) -> Result<Round, Failure> {
        let db = self.connect(database).await?;
        let offset = db.offset(&self.source).await.map_err(Failure::Retry)?;
        let stats = self.daemon.stats().await?;
        if let Some(offset) = &offset {
            self.still_the_same(offset, &stats)
                .map_err(Failure::Fatal)?;
        }
        let after = offset.as_ref().map_or(0, |offset: &Offset| offset.last_seq);
        let wait = if self.once { Duration::ZERO } else { LONG_POLL };
        let page = self.daemon.changes(after, self.batch, wait).await?;
        let caught_up = page.items.len() < self.batch as usize;
        if page.items.is_empty() {
            return Ok(Round {
                applied: 0,
                offset: after,
                caught_up,
            });
        }
        let applied = page.items.len();
        let next = page.next_after_seq;
        let written = Instant::now();
        db.apply(&self.source, &stats.store_id, after, &page)
            .await
            .map_err(Failure::Retry)?;
        tracing::debug!(
            items = applied,
            processes = page.processes.len(),
            write_ms = written.elapsed().as_millis() as u64,
            "page applied"
        );
        Ok(Round {
            applied,
            offset: next,
            caught_up,
        })
    }
}

impl Mirror {
    /// Whether the tables of this source still follow the daemon's store:
    /// not when a reseed is unfinished, when the daemon serves another
    /// store, or when the offset is past the daemon's last seq.
    fn still_the_same(&self, offset: &Offset, stats: &Stats) -> anyhow::Result<()> {
        let source = &self.source;
        let reseed = format!("`processmanager mirror --reseed --source {source}`");
        if offset.reseeding {
            bail!("a reseed of source {source:?} began and did not finish, so its tables hold part of the daemon's state: run {reseed} to its end");
        }
        if let Some(mirrored) = offset.store_id.as_deref() {
            if mirrored != stats.store_id {
                bail!(
                    "source {source:?} was mirrored from store {mirrored}, but the daemon at {} serves store {}: its store was replaced, or restored from a backup of another. Run {reseed} to bring the tables to this store's state, or mirror it under another --source",
                    self.daemon.url(),
                    stats.store_id
                );
            }
        }
        if offset.last_seq > stats.last_seq {
            bail!(
                "source {source:?} has applied the feed up to seq {}, past the daemon's last seq {}: its store was restored from an older backup, and the tables hold events it no longer has. Run {reseed} to bring them to the daemon's state",
                offset.last_seq,
                stats.last_seq
            );
        }
        Ok(())
    }
}

/// What one round of the feed did.
struct Round {
    applied: usize,
    offset: u64,
    caught_up: bool,
}
