//! The mirror's side of PostgreSQL: the tables (`schema.sql`), the offset
//! of each source, and one transaction per page of the feed.

use super::daemon::Page;
use anyhow::Context;
use serde_json::Value;
use std::collections::HashMap;
use time::OffsetDateTime;
use tokio_postgres::Client;

/// The tables and indexes, created when missing.
const SCHEMA: &str = include_str!("schema.sql");

/// The layout of the tables this build makes and writes, as
/// `pm_mirror_schema` records it. A later layout raises it and brings
/// older tables up to it in `create_tables`.
pub const MIRROR_SCHEMA_VERSION: i32 = 2;

/// The tables were made by a later build, whose rows this one would get
/// wrong: nothing is written.
#[derive(Debug, thiserror::Error)]
#[error(
    "the mirror's tables in this database have layout version {found}, newer than this build's \
     {MIRROR_SCHEMA_VERSION}: mirror with the newer processmanager, or into another database"
)]
pub struct NewerTables {
    pub found: i32,
}

/// Taken while the tables are created, so that mirrors starting together
/// do not race in PostgreSQL's catalog ("mirror" in ASCII).
const SCHEMA_LOCK: i64 = 0x6d69_7272_6f72;

pub struct Database {
    client: Client,
    /// Ends when the connection does; dropped with it.
    _connection: tokio::task::JoinHandle<()>,
}

/// Where a source stands.
pub struct Offset {
    pub last_seq: u64,
    pub last_received_at: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
    /// The id of the daemon's store the rows came from (`None` when
    /// written by a mirror before layout 2).
    pub store_id: Option<String>,
    /// A `--reseed` began and has not finished: the tables hold part of
    /// the daemon's state.
    pub reseeding: bool,
}

impl Database {
    /// Connects to `url` (a libpq-style `postgres://` URL or key=value
    /// string). TLS as `sslmode` says: `prefer` (the default) uses it when
    /// the server offers it, `require` insists; certificates are checked
    /// against the Mozilla roots (`webpki-roots`).
    pub async fn connect(url: &str) -> anyhow::Result<Database> {
        let config: tokio_postgres::Config = url
            .parse()
            .context("--to is not a PostgreSQL connection URL (postgres://USER@HOST:PORT/DB)")?;
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let (client, connection) = config
            .connect(tls)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", describe(&config)))?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "the PostgreSQL connection ended");
            }
        });
        Ok(Database {
            client,
            _connection: connection,
        })
    }

    /// Creates the tables and indexes that are missing and records their
    /// layout; tables of a later layout are an error (`NewerTables`), and
    /// nothing is changed.
    pub async fn create_tables(&mut self) -> anyhow::Result<()> {
        let txn = self.client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        txn.batch_execute(SCHEMA).await?;
        // Tables made before the layout was recorded are layout 1.
        let found: Option<i32> = txn
            .query_one("SELECT max(version) FROM pm_mirror_schema", &[])
            .await?
            .get(0);
        match found {
            // Dropping the transaction takes back whatever SCHEMA made.
            Some(found) if found > MIRROR_SCHEMA_VERSION => {
                return Err(NewerTables { found }.into())
            }
            // Layout 2 added the offsets' store_id and reseeding, which
            // SCHEMA adds to older tables.
            Some(found) if found < MIRROR_SCHEMA_VERSION => {
                txn.execute(
                    "UPDATE pm_mirror_schema SET version = $1",
                    &[&MIRROR_SCHEMA_VERSION],
                )
                .await?;
            }
            Some(_) => {}
            None => {
                txn.execute(
                    "INSERT INTO pm_mirror_schema (version) VALUES ($1)",
                    &[&MIRROR_SCHEMA_VERSION],
                )
                .await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Where `source` stands; `None` before its first page, or before the
    /// tables exist.
    pub async fn offset(&self, source: &str) -> anyhow::Result<Option<Offset>> {
        let row = match self
            .client
            .query_opt(
                "SELECT last_seq, last_received_at, updated_at, store_id, reseeding
                 FROM pm_mirror_offsets WHERE source = $1",
                &[&source],
            )
            .await
        {
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                return Ok(None)
            }
            row => row.context("cannot read the mirror's offset")?,
        };
        Ok(row.map(|row| Offset {
            last_seq: row.get::<_, i64>(0) as u64,
            last_received_at: row.get(1),
            updated_at: row.get(2),
            store_id: row.get(3),
            reseeding: row.get(4),
        }))
    }

    /// Writes one page in one transaction: its events, its removals, the
    /// processes it names as the daemon showed them, and the offset after
    /// it.
    /// Refuses, changing nothing, when the offset is no longer `after`
    /// (another mirror of this source moved it). `store_id` is the
    /// daemon's store the page came from.
    pub async fn apply(
        &mut self,
        source: &str,
        store_id: &str,
        after: u64,
        page: &Page,
    ) -> anyhow::Result<()> {
        let txn = self.client.transaction().await?;
        // Locks this source's offset until the commit.
        let current: Option<i64> = txn
            .query_opt(
                "SELECT last_seq FROM pm_mirror_offsets WHERE source = $1 FOR UPDATE",
                &[&source],
            )
            .await?
            .map(|row| row.get(0));
        if current.unwrap_or(0) as u64 != after {
            anyhow::bail!(
                "the offset of source {source:?} moved from {after} to {} meanwhile: is another mirror writing it? (nothing of this page was applied)",
                current.unwrap_or(0)
            );
        }
        let events = Events::of(page)?;
        txn.execute(
            "INSERT INTO pm_events (source, seq, process_id, task_id, type, event_id, result,
                 occurred_at, received_at, process_status, task_status, item)
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[],
                 $11::text[], $12::jsonb[])",
            &[
                &source,
                &events.seq,
                &events.process_id,
                &events.task_id,
                &events.kind,
                &events.event_id,
                &events.result,
                &events.occurred_at,
                &events.received_at,
                &events.process_status,
                &events.task_status,
                &events.item,
            ],
        )
        .await
        .context("cannot insert the page's events")?;
        // Removals, in feed order: what came before each goes with it.
        for item in &page.items {
            if item["type"] != "process.deleted" {
                continue;
            }
            let process_id = item["process_id"].as_str().unwrap_or_default();
            let seq = item["seq"].as_i64().unwrap_or(i64::MAX);
            txn.execute(
                "DELETE FROM pm_events WHERE source = $1 AND process_id = $2 AND seq < $3",
                &[&source, &process_id, &seq],
            )
            .await?;
            txn.execute(
                "DELETE FROM pm_processes WHERE source = $1 AND id = $2",
                &[&source, &process_id],
            )
            .await?;
        }
        write_states(&txn, source, &Rows::of(&page.processes)?).await?;
        let last_received_at = page
            .items
            .last()
            .and_then(|item| timestamp(&item["received_at"]).ok().flatten());
        txn.execute(
            "INSERT INTO pm_mirror_offsets (source, last_seq, last_received_at, updated_at, store_id)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (source) DO UPDATE SET last_seq = EXCLUDED.last_seq,
                 last_received_at = COALESCE(EXCLUDED.last_received_at, pm_mirror_offsets.last_received_at),
                 updated_at = EXCLUDED.updated_at, store_id = EXCLUDED.store_id",
            &[&source, &(page.next_after_seq as i64), &last_received_at, &store_id],
        )
        .await?;
        txn.commit().await.context("cannot commit the page")?;
        Ok(())
    }
}

impl Database {
    /// The first step of `--reseed`: marks `source` as being reseeded
    /// from the daemon's store `store_id`, to follow its feed after
    /// `from_seq` once done, and drops every event of the source: the feed
    /// from there brings each event the daemon still serves, once (events
    /// kept from before might be of another store, or of a history a
    /// restore took back, under the same seqs).
    pub async fn begin_reseed(
        &mut self,
        source: &str,
        store_id: &str,
        from_seq: u64,
    ) -> anyhow::Result<()> {
        let txn = self.client.transaction().await?;
        txn.execute(
            "SELECT 1 FROM pm_mirror_offsets WHERE source = $1 FOR UPDATE",
            &[&source],
        )
        .await?;
        txn.execute("DELETE FROM pm_events WHERE source = $1", &[&source])
            .await
            .context("cannot drop the source's events")?;
        txn.execute(
            "INSERT INTO pm_mirror_offsets (source, last_seq, updated_at, store_id, reseeding)
             VALUES ($1, $2, now(), $3, true)
             ON CONFLICT (source) DO UPDATE SET last_seq = EXCLUDED.last_seq,
                 updated_at = EXCLUDED.updated_at, store_id = EXCLUDED.store_id,
                 reseeding = true",
            &[&source, &(from_seq as i64), &store_id],
        )
        .await?;
        txn.commit().await.context("cannot begin the reseed")?;
        Ok(())
    }

    /// One page of `--reseed`: the processes in `states` (id to the state
    /// the daemon showed, tasks included) as they are, their tasks
    /// replaced, in one transaction.
    pub async fn reseed_page(
        &mut self,
        source: &str,
        states: &HashMap<String, Option<Value>>,
    ) -> anyhow::Result<()> {
        let txn = self.client.transaction().await?;
        let reseeding: Option<bool> = txn
            .query_opt(
                "SELECT reseeding FROM pm_mirror_offsets WHERE source = $1 FOR UPDATE",
                &[&source],
            )
            .await?
            .map(|row| row.get(0));
        if reseeding != Some(true) {
            anyhow::bail!(
                "source {source:?} is no longer being reseeded: did another mirror of it finish or start one? (nothing of this page was applied)"
            );
        }
        let ids: Vec<&str> = states.keys().map(String::as_str).collect();
        txn.execute(
            "DELETE FROM pm_tasks WHERE source = $1 AND process_id = ANY($2)",
            &[&source, &ids],
        )
        .await?;
        write_states(&txn, source, &Rows::of(states)?).await?;
        txn.commit().await.context("cannot commit the page")?;
        Ok(())
    }

    /// The last step of `--reseed`: every process of `source` the daemon
    /// did not show (`shown`) goes, with its tasks, and the source follows
    /// the feed again.
    pub async fn end_reseed(&mut self, source: &str, shown: &[String]) -> anyhow::Result<()> {
        let txn = self.client.transaction().await?;
        txn.execute(
            "SELECT 1 FROM pm_mirror_offsets WHERE source = $1 FOR UPDATE",
            &[&source],
        )
        .await?;
        txn.execute(
            "DELETE FROM pm_processes WHERE source = $1 AND NOT (id = ANY($2))",
            &[&source, &shown],
        )
        .await?;
        txn.execute(
            "UPDATE pm_mirror_offsets SET reseeding = false, updated_at = now() WHERE source = $1",
            &[&source],
        )
        .await?;
        txn.commit().await.context("cannot end the reseed")?;
        Ok(())
    }
}

/// Sets the rows of the processes in `rows`, and of their tasks, to the
/// states they hold.
async fn write_states(
    txn: &tokio_postgres::Transaction<'_>,
    source: &str,
    rows: &Rows,
) -> anyhow::Result<()> {
    txn.execute(
        "INSERT INTO pm_processes (source, id, name, process_type, correlation_id, status,
                 progress, error, attributes, created_at, started_at, updated_at, finished_at,
                 duration_ms, stalled_since, deadline, event_count, last_seq)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::timestamptz[], $11::timestamptz[],
                 $12::timestamptz[], $13::timestamptz[], $14::bigint[], $15::timestamptz[],
                 $16::timestamptz[], $17::bigint[], $18::bigint[])
             ON CONFLICT (source, id) DO UPDATE SET
                 name = EXCLUDED.name, process_type = EXCLUDED.process_type,
                 correlation_id = EXCLUDED.correlation_id, status = EXCLUDED.status,
                 progress = EXCLUDED.progress, error = EXCLUDED.error,
                 attributes = EXCLUDED.attributes, created_at = EXCLUDED.created_at,
                 started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at,
                 finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms,
                 stalled_since = EXCLUDED.stalled_since, deadline = EXCLUDED.deadline,
                 event_count = EXCLUDED.event_count, last_seq = EXCLUDED.last_seq",
        &[
            &source,
            &rows.processes.id,
            &rows.processes.name,
            &rows.processes.process_type,
            &rows.processes.correlation_id,
            &rows.processes.status,
            &rows.processes.progress,
            &rows.processes.error,
            &rows.processes.attributes,
            &rows.processes.created_at,
            &rows.processes.started_at,
            &rows.processes.updated_at,
            &rows.processes.finished_at,
            &rows.processes.duration_ms,
            &rows.processes.stalled_since,
            &rows.processes.deadline,
            &rows.processes.event_count,
            &rows.processes.last_seq,
        ],
    )
    .await
    .context("cannot write the page's processes")?;
    txn.execute(
        "INSERT INTO pm_tasks (source, process_id, id, position, name, status, attempt,
                 progress, error, attributes, created_at, started_at, updated_at, finished_at,
                 stalled_since, attempts)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                 $7::int[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::timestamptz[],
                 $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
                 $16::jsonb[])
             ON CONFLICT (source, process_id, id) DO UPDATE SET
                 position = EXCLUDED.position, name = EXCLUDED.name, status = EXCLUDED.status,
                 attempt = EXCLUDED.attempt, progress = EXCLUDED.progress,
                 error = EXCLUDED.error, attributes = EXCLUDED.attributes,
                 created_at = EXCLUDED.created_at, started_at = EXCLUDED.started_at,
                 updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at,
                 stalled_since = EXCLUDED.stalled_since, attempts = EXCLUDED.attempts",
        &[
            &source,
            &rows.tasks.process_id,
            &rows.tasks.id,
            &rows.tasks.position,
            &rows.tasks.name,
            &rows.tasks.status,
            &rows.tasks.attempt,
            &rows.tasks.progress,
            &rows.tasks.error,
            &rows.tasks.attributes,
            &rows.tasks.created_at,
            &rows.tasks.started_at,
            &rows.tasks.updated_at,
            &rows.tasks.finished_at,
            &rows.tasks.stalled_since,
            &rows.tasks.attempts,
        ],
    )
    .await
    .context("cannot write the page's tasks")?;
    Ok(())
}

/// Whether PostgreSQL refused the connection for a reason that waiting
/// will not change: a wrong password or user, a database that does not
/// exist.
pub fn refused_for_good(error: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
        .filter_map(tokio_postgres::Error::code)
        .any(|code| {
            [
                SqlState::INVALID_PASSWORD,
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                SqlState::INVALID_CATALOG_NAME,
            ]
            .contains(code)
        })
}

/// Host, port and database of a connection, never its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// An RFC 3339 text as a timestamp; `null` or missing as `None`.
fn timestamp(value: &Value) -> anyhow::Result<Option<OffsetDateTime>> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map(Some)
                .with_context(|| format!("{text:?} is not an RFC 3339 time"))
        }
        other => anyhow::bail!("{other} is not a time"),
    }
}

fn required_timestamp(value: &Value, what: &str) -> anyhow::Result<OffsetDateTime> {
    timestamp(value)?.with_context(|| format!("{what} has no time"))
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// A JSON value that is always there; missing is `empty`.
fn json_or(value: &Value, empty: Value) -> Value {
    if value.is_null() {
        empty
    } else {
        value.clone()
    }
}

/// A JSON value that may be absent: `null` and missing are SQL NULL.
fn json(value: &Value) -> Option<Value> {
    (!value.is_null()).then(|| value.clone())
}

/// The page's events (everything but removals), column by column.
#[derive(Default)]
struct Events {
    seq: Vec<i64>,
    process_id: Vec<String>,
    task_id: Vec<Option<String>>,
    kind: Vec<String>,
    event_id: Vec<Option<String>>,
    result: Vec<String>,
    occurred_at: Vec<OffsetDateTime>,
    received_at: Vec<OffsetDateTime>,
    process_status: Vec<String>,
    task_status: Vec<Option<String>>,
    item: Vec<Value>,
}

impl Events {
    fn of(page: &Page) -> anyhow::Result<Events> {
        let mut events = Events::default();
        for item in &page.items {
            if item["type"] == "process.deleted" {
                continue;
            }
            let seq = item["seq"].as_i64().context("a feed item without seq")?;
            let what = format!("feed item {seq}");
            events.seq.push(seq);
            events
                .process_id
                .push(text(&item["process_id"]).with_context(|| format!("{what}: process_id"))?);
            events.task_id.push(text(&item["task_id"]));
            events
                .kind
                .push(text(&item["type"]).with_context(|| format!("{what}: type"))?);
            events.event_id.push(text(&item["event_id"]));
            events
                .result
                .push(text(&item["result"]).with_context(|| format!("{what}: result"))?);
            events
                .occurred_at
                .push(required_timestamp(&item["occurred_at"], &what)?);
            events
                .received_at
                .push(required_timestamp(&item["received_at"], &what)?);
            events.process_status.push(
                text(&item["process_status"]).with_context(|| format!("{what}: process_status"))?,
            );
            events.task_status.push(text(&item["task_status"]));
            events.item.push(item.clone());
        }
        Ok(events)
    }
}

#[derive(Default)]
struct ProcessRows {
    id: Vec<String>,
    name: Vec<Option<String>>,
    process_type: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    status: Vec<String>,
    progress: Vec<Option<Value>>,
    error: Vec<Option<Value>>,
    attributes: Vec<Value>,
    created_at: Vec<OffsetDateTime>,
    started_at: Vec<Option<OffsetDateTime>>,
    updated_at: Vec<OffsetDateTime>,
    finished_at: Vec<Option<OffsetDateTime>>,
    duration_ms: Vec<Option<i64>>,
    stalled_since: Vec<Option<OffsetDateTime>>,
    deadline: Vec<Option<OffsetDateTime>>,
    event_count: Vec<i64>,
    last_seq: Vec<i64>,
}

#[derive(Default)]
struct TaskRows {
    process_id: Vec<String>,
    id: Vec<String>,
    position: Vec<i32>,
    name: Vec<Option<String>>,
    status: Vec<String>,
    attempt: Vec<i32>,
    progress: Vec<Option<Value>>,
    error: Vec<Option<Value>>,
    attributes: Vec<Value>,
    created_at: Vec<OffsetDateTime>,
    started_at: Vec<Option<OffsetDateTime>>,
    updated_at: Vec<OffsetDateTime>,
    finished_at: Vec<Option<OffsetDateTime>>,
    stalled_since: Vec<Option<OffsetDateTime>>,
    attempts: Vec<Value>,
}

/// The processes (and their tasks) as the daemon showed them, column by
/// column.
#[derive(Default)]
struct Rows {
    processes: ProcessRows,
    tasks: TaskRows,
}

impl Rows {
    fn of(states: &HashMap<String, Option<Value>>) -> anyhow::Result<Rows> {
        let mut rows = Rows::default();
        for (id, process) in states {
            let Some(process) = process else {
                continue;
            };
            let what = format!("process {id:?}");
            let p = &mut rows.processes;
            p.id.push(id.clone());
            p.name.push(text(&process["name"]));
            p.process_type.push(text(&process["process_type"]));
            p.correlation_id.push(text(&process["correlation_id"]));
            p.status
                .push(text(&process["status"]).with_context(|| format!("{what}: status"))?);
            p.progress.push(json(&process["progress"]));
            p.error.push(json(&process["error"]));
            p.attributes
                .push(json_or(&process["attributes"], serde_json::json!({})));
            p.created_at
                .push(required_timestamp(&process["created_at"], &what)?);
            p.started_at.push(timestamp(&process["started_at"])?);
            p.updated_at
                .push(required_timestamp(&process["updated_at"], &what)?);
            p.finished_at.push(timestamp(&process["finished_at"])?);
            p.duration_ms.push(process["duration_ms"].as_i64());
            p.stalled_since.push(timestamp(&process["stalled_since"])?);
            p.deadline.push(timestamp(&process["deadline"])?);
            p.event_count
                .push(process["event_count"].as_i64().unwrap_or_default());
            p.last_seq
                .push(process["last_seq"].as_i64().unwrap_or_default());
            let tasks = process["tasks"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (position, task) in tasks.iter().enumerate() {
                let task_id = text(&task["id"]).with_context(|| format!("{what}: a task id"))?;
                let what = format!("{what}, task {task_id:?}");
                let t = &mut rows.tasks;
                t.process_id.push(id.clone());
                t.id.push(task_id);
                t.position.push(i32::try_from(position).unwrap_or(i32::MAX));
                t.name.push(text(&task["name"]));
                t.status
                    .push(text(&task["status"]).with_context(|| format!("{what}: status"))?);
                t.attempt.push(
                    task["attempt"]
                        .as_i64()
                        .unwrap_or(1)
                        .clamp(0, i32::MAX as i64) as i32,
                );
                t.progress.push(json(&task["progress"]));
                t.error.push(json(&task["error"]));
                t.attributes
                    .push(json_or(&task["attributes"], serde_json::json!({})));
                t.created_at
                    .push(required_timestamp(&task["created_at"], &what)?);
                t.started_at.push(timestamp(&task["started_at"])?);
                t.updated_at
                    .push(required_timestamp(&task["updated_at"], &what)?);
                t.finished_at.push(timestamp(&task["finished_at"])?);
                t.stalled_since.push(timestamp(&task["stalled_since"])?);
                t.attempts
                    .push(json_or(&task["attempts"], serde_json::json!([])));
            }
        }
        Ok(rows)
    }
}
