//! `processmanager inspect`: read a store or a backup without changing it.

use super::output;
use crate::cli::{InspectArgs, InspectWhat};
use crate::domain::{Millis, Status};
use crate::http::views::{format_millis, HistoryView, ProcessView, StatsView};
use crate::progress::{Progress, Show, Unit};
use crate::store::backup::{self, CheckedCopy};
use crate::store::read::{ListQuery, Snapshot};
use crate::store::schema::SCHEMA_VERSION;
use crate::store::{self, maintenance, StoreError};
use anyhow::{bail, Context};
use redb::ReadOnlyDatabase;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What is being read: a data directory's store (perhaps a live daemon's),
/// or a private, checked copy of a file.
enum Source {
    Store { db: ReadOnlyDatabase, path: PathBuf },
    File { copy: CheckedCopy, path: PathBuf },
}

impl Source {
    fn open(
        args: &InspectArgs,
        data_dir: &Path,
        admin_token: Option<&str>,
        show: Show,
    ) -> anyhow::Result<Source> {
        Ok(match &args.file {
            Some(file) => Source::File {
                copy: checked_copy(file, &std::env::temp_dir(), show)?,
                path: file.clone(),
            },
            None => {
                let path = store::store_path(data_dir);
                match store::open_read_only(&path, 64 << 20) {
                    Ok(db) => Source::Store { db, path },
                    // A live daemon holds its store alone: read a backup
                    // it takes.
                    Err(StoreError::Locked { .. }) => {
                        let taken = tempfile::Builder::new()
                            .prefix(".processmanager-inspect-")
                            .tempfile()?
                            .into_temp_path();
                        super::backup_from_daemon(data_dir, admin_token, &taken, show)?;
                        Source::File {
                            copy: checked_copy(&taken, &std::env::temp_dir(), show)?,
                            path,
                        }
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        })
    }

    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(match self {
            Source::Store { db, .. } => Snapshot::begin(db)?,
            Source::File { copy, .. } => Snapshot::begin(&copy.db)?,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Source::Store { path, .. } | Source::File { path, .. } => path,
        }
    }
}

/// `file` copied beside `near` and checked, showing how far.
fn checked_copy(file: &Path, near: &Path, show: Show) -> Result<CheckedCopy, StoreError> {
    backup::open_checked_copy(
        file,
        near,
        (
            &Progress::new("copying the store", Unit::Bytes, 0, show),
            &Progress::new("checking its pages", Unit::Bytes, 0, show),
        ),
    )
}

fn time(millis: Option<Millis>) -> String {
    millis.map(format_millis).unwrap_or_else(|| "-".into())
}

/// `admin_token` reaches a live daemon, which alone reads its store.
pub fn run(args: &InspectArgs, data_dir: &Path, admin_token: Option<&str>) -> anyhow::Result<()> {
    // Only `verify` shows how far it has got: the rest are quick reads.
    let show = match args.what {
        Some(InspectWhat::Verify) => Show::for_command(args.quiet),
        _ => Show::Quiet,
    };
    crate::progress::watch_interrupts();
    let source = Source::open(args, data_dir, admin_token, show)?;
    match &args.what {
        None => summary(&source, args.json),
        Some(InspectWhat::Process { id }) => process(&source, id, args.json),
        Some(InspectWhat::List {
            status,
            process_type,
            correlation_prefix,
            attributes,
            stalled,
            limit,
        }) => {
            let query = ListQuery {
                process_type: process_type.clone(),
                correlation_id_prefix: correlation_prefix.clone().filter(|p| !p.is_empty()),
                attributes: attributes.clone(),
                stalled: *stalled,
                limit: *limit,
                ..ListQuery::default()
            };
            list(&source, status, query, args.json)
        }
        Some(InspectWhat::Durations {
            process_type,
            since,
            until,
        }) => durations(
            &source,
            process_type.as_deref(),
            (since, until.as_deref()),
            args.json,
        ),
        Some(InspectWhat::Verify) => verify(&source, args.json, show),
    }
}

fn summary(source: &Source, as_json: bool) -> anyhow::Result<()> {
    let snapshot = source.snapshot()?;
    let counters = snapshot.counters()?;
    let store_id = snapshot.store_id()?;
    let (oldest, newest) = snapshot.oldest_and_newest()?;
    let file_bytes = std::fs::metadata(source.path())?.len();
    if as_json {
        let end = |p: &Option<crate::domain::Process>| {
            p.as_ref()
                .map(|p| json!({"id": p.id, "created_at": format_millis(p.created_at)}))
        };
        let mut body = serde_json::to_value(StatsView(&counters, &store_id))?;
        if let Value::Object(map) = &mut body {
            map.insert("path".into(), json!(source.path()));
            map.insert("schema_version".into(), json!(SCHEMA_VERSION));
            map.insert("file_bytes".into(), json!(file_bytes));
            map.insert("oldest".into(), json!(end(&oldest)));
            map.insert("newest".into(), json!(end(&newest)));
        }
        return output::json(&body);
    }
    let mut lines = vec![
        ("store", source.path().display().to_string()),
        ("store id", store_id),
        ("schema version", SCHEMA_VERSION.to_string()),
        ("file size", output::bytes(file_bytes)),
        ("processes", counters.processes_total().to_string()),
    ];
    for status in Status::ALL.into_iter().filter(|s| *s != Status::Skipped) {
        lines.push((
            status.as_str(),
            format!(
                "  {}",
                counters.processes_by_status[usize::from(status.code())]
            ),
        ));
    }
    lines.push(("events", counters.events_total.to_string()));
    lines.push(("last seq", counters.last_seq.to_string()));
    let end = |p: Option<crate::domain::Process>| match p {
        Some(p) => format!("{} (created {})", p.id, format_millis(p.created_at)),
        None => "-".into(),
    };
    lines.push(("oldest process", end(oldest)));
    lines.push(("newest process", end(newest)));
    output::pairs(&lines)
}

fn process(source: &Source, id: &str, as_json: bool) -> anyhow::Result<()> {
    let snapshot = source.snapshot()?;
    let Some((process, tasks)) = snapshot.process_with_tasks(id)? else {
        bail!("there is no process {id} in {}", source.path().display());
    };
    let history = snapshot.full_history(id)?;
    if as_json {
        let mut body = serde_json::to_value(ProcessView::with_tasks(&process, &tasks))?;
        let items: Vec<HistoryView<'_>> = history.iter().map(HistoryView::from).collect();
        if let Value::Object(map) = &mut body {
            map.insert("history".into(), serde_json::to_value(items)?);
        }
        return output::json(&body);
    }
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    output::pairs(&[
        ("process", process.id.clone()),
        ("name", optional(&process.name)),
        ("type", optional(&process.process_type)),
        ("correlation id", optional(&process.correlation_id)),
        ("status", process.status.to_string()),
        ("created", format_millis(process.created_at)),
        ("started", time(process.started_at)),
        (
            "updated",
            format_millis(process.updated_at.max(process.created_at)),
        ),
        ("finished", time(process.finished_at)),
        (
            "duration",
            process
                .duration_ms()
                .map_or("-".into(), |ms| format!("{ms} ms")),
        ),
        ("events", process.event_count.to_string()),
    ])?;
    println!();
    let attempts: Vec<Vec<String>> = tasks
        .iter()
        .flat_map(|task| {
            task.attempts.iter().map(move |attempt| {
                vec![
                    task.id.clone(),
                    attempt.attempt.to_string(),
                    attempt.status.to_string(),
                    time(attempt.started_at),
                    time(attempt.finished_at),
                    attempt
                        .error
                        .as_ref()
                        .map_or("-".into(), |e| format!("{}: {}", e.code, e.message)),
                ]
            })
        })
        .collect();
    output::table(
        &["TASK", "ATTEMPT", "STATUS", "STARTED", "FINISHED", "ERROR"],
        &attempts,
    )?;
    println!();
    let events: Vec<Vec<String>> = history
        .iter()
        .map(|record| {
            vec![
                record.seq.to_string(),
                record.event.kind.as_str().to_owned(),
                record.event.task_id.clone().unwrap_or_else(|| "-".into()),
                record.result.as_str().to_owned(),
                format_millis(record.occurred_at()),
                format_millis(record.received_at),
                record.event.event_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ", "TYPE", "TASK", "RESULT", "OCCURRED", "RECEIVED", "EVENT ID",
        ],
        &events,
    )
}

fn list(
    source: &Source,
    statuses: &[String],
    mut query: ListQuery,
    as_json: bool,
) -> anyhow::Result<()> {
    query.statuses = statuses
        .iter()
        .map(|s| {
            s.parse::<Status>()
                .map_err(|detail| anyhow::anyhow!("--status: {detail}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if query.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let snapshot = source.snapshot()?;
    let indexed = snapshot.indexed_attributes()?;
    if let Some((key, _)) = query
        .attributes
        .iter()
        .find(|(key, _)| !indexed.contains(key))
    {
        bail!(
            "--attr {key}: the store does not index `{key}` (it indexes: {}); name it in index.attributes and restart the daemon",
            if indexed.is_empty() { "none".to_owned() } else { indexed.join(", ") }
        );
    }
    let page = snapshot.list(&query)?;
    if as_json {
        let items: Vec<ProcessView<'_>> = page.items.iter().map(ProcessView::summary).collect();
        return output::json(&json!({"items": items}));
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.status.to_string(),
                p.process_type.clone().unwrap_or_else(|| "-".into()),
                format_millis(p.created_at),
                format_millis(p.updated_at.max(p.created_at)),
                p.event_count.to_string(),
                p.task_total.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "STATUS", "TYPE", "CREATED", "UPDATED", "EVENTS", "TASKS",
        ],
        &rows,
    )
}

fn durations(
    source: &Source,
    process_type: Option<&str>,
    (since, until): (&str, Option<&str>),
    as_json: bool,
) -> anyhow::Result<()> {
    let now = crate::writer::now_millis();
    let from = super::compact::parse_cut(since, now).context("--since")?;
    let to = match until {
        Some(until) => super::compact::parse_cut(until, now).context("--until")?,
        None => now,
    };
    if from >= to {
        bail!("--since must be before --until");
    }
    let (from, to) = crate::store::durations::window(from, to, now);
    let summaries = source.snapshot()?.durations(process_type, (from, to))?;
    if as_json {
        return output::json(&crate::http::views::durations_json(
            &summaries,
            process_type,
            (from, to),
        ));
    }
    println!(
        "ended from {} to {}",
        format_millis(from),
        format_millis(to)
    );
    let shown = |value: Option<f64>| match value {
        Some(ms) => output::duration_ms(ms),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(kind, summary)| {
            let mut row = vec![
                if kind.is_empty() {
                    "(untyped)".into()
                } else {
                    kind.clone()
                },
                summary.count().to_string(),
            ];
            row.extend(summary.counts.iter().map(u64::to_string));
            for q in [0.5, 0.9, 0.99, 1.0] {
                row.push(shown(summary.quantile(q)));
            }
            row
        })
        .collect();
    output::table(
        &[
            "TYPE",
            "ENDED",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "TIMED OUT",
            "P50",
            "P90",
            "P99",
            "MAX",
        ],
        &rows,
    )
}

fn verify(source: &Source, as_json: bool, show: Show) -> anyhow::Result<()> {
    // Page checksums: a checked copy of a file was verified when opened; a
    // store no daemon holds is copied and checked now; a live store can only
    // be checked record by record.
    let pages = match source {
        Source::File { .. } => Some(true),
        Source::Store { path, .. } if !store::held_by_writer(path) => {
            let near = path.parent().unwrap_or(Path::new("."));
            match checked_copy(path, near, show) {
                Ok(_) => Some(true),
                Err(error) => {
                    let report = json!({"sound": false, "pages_checked": true, "problems": [error.to_string()]});
                    if as_json {
                        output::json(&report)?;
                    }
                    bail!("the store is not sound: {error}");
                }
            }
        }
        Source::Store { .. } => None,
    };
    let progress = Progress::new("verifying records", Unit::Records, 0, show);
    let report = maintenance::verify(&source.snapshot()?, &progress)?;
    progress.finish();
    if as_json {
        output::json(&json!({
            "sound": report.is_sound(),
            "pages_checked": pages.is_some(),
            "processes": report.processes,
            "events": report.events,
            "records": report.records,
            "problem_count": report.problem_count,
            "problems": report.problems,
        }))?;
    } else {
        output::pairs(&[
            ("store", source.path().display().to_string()),
            ("records", report.records.to_string()),
            ("processes", report.processes.to_string()),
            ("events", report.events.to_string()),
            (
                "page checksums",
                match pages {
                    Some(_) => "verified".into(),
                    None => "not checked: a daemon holds the store (verify a backup of it to check them)".into(),
                },
            ),
            ("problems", report.problem_count.to_string()),
        ])?;
        for problem in &report.problems {
            println!("  - {problem}");
        }
    }
    if !report.is_sound() {
        bail!("the store is not sound: {} problems", report.problem_count);
    }
    if !as_json {
        println!("sound");
    }
    Ok(())
}
