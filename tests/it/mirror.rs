//! `processmanager mirror` into a real PostgreSQL server of the test's own
//! (`tests/postgres`): several daemons into one database, mirrors killed
//! with kill -9 and started again, the database stopped and started, and
//! removals. Each test ends by comparing every process, task and event in
//! PostgreSQL with what the daemons answer.

use crate::pg_server::Postgres;
use crate::support::{command, event, task_event, wait_exit, with, Client, Daemon, DaemonOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `processmanager mirror` of `daemon` into `pg` under `source`, with
/// `extra` arguments.
fn mirror_command(daemon: &Daemon, pg: &Postgres, source: &str, extra: &[&str]) -> Command {
    let mut command = command();
    command
        .arg("mirror")
        .args(extra)
        .args(["--to", &pg.url(), "--source", source, "--url"])
        .arg(format!("http://{}", daemon.addr));
    command
}

/// Runs `mirror --status --json` as `command` has it; its answer.
fn status_of(mut command: Command) -> Value {
    let out = command.output().expect("mirror runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A mirror process, its log collected.
struct Mirror {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Mirror {
    fn start(daemon: &Daemon, pg: &Postgres, source: &str) -> Mirror {
        let mut child = mirror_command(daemon, pg, source, &["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the mirror starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Mirror { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

/// `mirror --once` for one source: applies what the feed holds, exits 0.
fn mirror_once(daemon: &Daemon, pg: &Postgres, source: &str) {
    let out = command()
        .args([
            "mirror",
            "--once",
            "--to",
            &pg.url(),
            "--source",
            source,
            "--url",
        ])
        .arg(format!("http://{}", daemon.addr))
        .output()
        .expect("mirror runs");
    assert!(
        out.status.success(),
        "mirror --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn post_batch(client: &Client, events: &[Value]) {
    for chunk in events.chunks(200) {
        let reply = client.post_raw(&Value::Array(chunk.to_vec()).to_string(), &[]);
        assert!(reply.status == 200 || reply.status == 202, "{}", reply.text);
        assert_eq!(reply.json["accepted"], chunk.len(), "{}", reply.text);
    }
}

/// The events of one run: it starts, a task fails and is retried, another
/// succeeds, and the run succeeds or fails by `n`.
fn run_events(id: &str, n: usize) -> Vec<Value> {
    let kind = ["etl", "report", "sync"][n % 3];
    let mut events = vec![
        with(
            event("process.started", id),
            json!({"process_type": kind,
                   "correlation_id": format!("order-{}", n % 17),
                   "attributes": {"tenant": format!("t{}", n % 5), "run": n.to_string()}}),
        ),
        task_event("task.started", id, "extract"),
        with(
            task_event("task.failed", id, "extract"),
            json!({"error": {"code": "Timeout", "message": "slow source"}}),
        ),
        task_event("task.started", id, "extract"),
        with(
            task_event("task.progress", id, "extract"),
            json!({"progress": {"current": 5, "total": 10}}),
        ),
        task_event("task.succeeded", id, "extract"),
        task_event("task.started", id, "load"),
        task_event("task.succeeded", id, "load"),
    ];
    events.push(if n % 4 == 3 {
        with(
            event("process.failed", id),
            json!({"error": {"code": "rejected", "message": "bad rows"}}),
        )
    } else {
        event("process.succeeded", id)
    });
    events
}

fn millis(value: &Value) -> Option<i64> {
    let text = value.as_str()?;
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text}: {error}"));
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn pg_millis(at: Option<time::OffsetDateTime>) -> Option<i64> {
    at.map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// What a daemon holds, in the shape compared: each process with its
/// tasks, and every event of every process, by seq.
#[derive(Debug, PartialEq)]
struct Holding {
    processes: BTreeMap<String, Value>,
    tasks: BTreeMap<(String, String), Value>,
    events: BTreeMap<i64, Value>,
}

fn process_view(
    status: &str,
    kind: Option<&str>,
    correlation: Option<&str>,
    attributes: &Value,
    times: [Option<i64>; 4],
    counts: (i64, i64),
    error: &Value,
) -> Value {
    json!({"status": status, "process_type": kind, "correlation_id": correlation,
           "attributes": attributes, "created_at": times[0], "started_at": times[1],
           "updated_at": times[2], "finished_at": times[3], "event_count": counts.0,
           "last_seq": counts.1, "error": error})
}

fn daemon_holding(client: &Client) -> Holding {
    let mut holding = Holding {
        processes: BTreeMap::new(),
        tasks: BTreeMap::new(),
        events: BTreeMap::new(),
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/processes?limit=1000".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = client.get(&path);
        assert_eq!(page.status, 200, "{}", page.text);
        for item in page.json["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap().to_owned();
            let p = client.get(&format!("/v1/processes/{id}")).json;
            holding.processes.insert(
                id.clone(),
                process_view(
                    p["status"].as_str().unwrap(),
                    p["process_type"].as_str(),
                    p["correlation_id"].as_str(),
                    &p["attributes"],
                    [
                        millis(&p["created_at"]),
                        millis(&p["started_at"]),
                        millis(&p["updated_at"]),
                        millis(&p["finished_at"]),
                    ],
                    (
                        p["event_count"].as_i64().unwrap(),
                        p["last_seq"].as_i64().unwrap(),
                    ),
                    &p["error"],
                ),
            );
            for task in p["tasks"].as_array().unwrap() {
                holding.tasks.insert(
                    (id.clone(), task["id"].as_str().unwrap().to_owned()),
                    json!({"status": task["status"], "attempt": task["attempt"],
                           "attempts": task["attempts"].as_array().unwrap().len(),
                           "finished_at": millis(&task["finished_at"])}),
                );
            }
            let mut after = 0;
            loop {
                let history = client
                    .get(&format!(
                        "/v1/processes/{id}/history?after_seq={after}&limit=1000"
                    ))
                    .json;
                let items = history["items"].as_array().unwrap();
                for item in items {
                    let seq = item["seq"].as_i64().unwrap();
                    holding.events.insert(
                        seq,
                        json!({"process_id": id, "type": item["type"],
                               "event_id": item["event_id"], "result": item["result"],
                               "occurred_at": millis(&item["occurred_at"])}),
                    );
                    after = seq;
                }
                if history["next_cursor"].is_null() || items.is_empty() {
                    break;
                }
            }
        }
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    holding
}

fn pg_holding(pg: &mut postgres::Client, source: &str) -> Holding {
    let mut holding = Holding {
        processes: BTreeMap::new(),
        tasks: BTreeMap::new(),
        events: BTreeMap::new(),
    };
    for row in pg
        .query(
            "SELECT id, status, process_type, correlation_id, attributes, created_at, started_at,
                    updated_at, finished_at, event_count, last_seq, error
             FROM pm_processes WHERE source = $1",
            &[&source],
        )
        .unwrap()
    {
        let error: Option<Value> = row.get(11);
        holding.processes.insert(
            row.get(0),
            process_view(
                row.get(1),
                row.get(2),
                row.get(3),
                &row.get::<_, Value>(4),
                [
                    pg_millis(row.get(5)),
                    pg_millis(row.get(6)),
                    pg_millis(row.get(7)),
                    pg_millis(row.get(8)),
                ],
                (row.get(9), row.get(10)),
                &error.unwrap_or(Value::Null),
            ),
        );
    }
    for row in pg
        .query(
            "SELECT process_id, id, status, attempt, attempts, finished_at
             FROM pm_tasks WHERE source = $1",
            &[&source],
        )
        .unwrap()
    {
        let attempts: Value = row.get(4);
        holding.tasks.insert(
            (row.get(0), row.get(1)),
            json!({"status": row.get::<_, &str>(2), "attempt": row.get::<_, i32>(3),
                   "attempts": attempts.as_array().unwrap().len(),
                   "finished_at": pg_millis(row.get(5))}),
        );
    }
    for row in pg
        .query(
            "SELECT seq, process_id, type, event_id, result, occurred_at
             FROM pm_events WHERE source = $1",
            &[&source],
        )
        .unwrap()
    {
        holding.events.insert(
            row.get(0),
            json!({"process_id": row.get::<_, &str>(1), "type": row.get::<_, &str>(2),
                   "event_id": row.get::<_, Option<&str>>(3), "result": row.get::<_, &str>(4),
                   "occurred_at": pg_millis(row.get(5))}),
        );
    }
    holding
}

/// PostgreSQL holds exactly what the daemon (asked through `client`)
/// holds, under `source`.
fn assert_mirrored(client: &Client, pg: &mut postgres::Client, source: &str) {
    let held = daemon_holding(client);
    let mirrored = pg_holding(pg, source);
    assert!(!held.events.is_empty());
    assert_eq!(
        mirrored.processes.len(),
        held.processes.len(),
        "processes of {source}"
    );
    for (id, process) in &held.processes {
        assert_eq!(mirrored.processes.get(id), Some(process), "{source}: {id}");
    }
    assert_eq!(mirrored.tasks, held.tasks, "tasks of {source}");
    assert_eq!(
        mirrored.events.len(),
        held.events.len(),
        "events of {source}"
    );
    assert_eq!(mirrored.events, held.events, "events of {source}");
}

/// The offset PostgreSQL holds for `source`.
fn offset(pg: &mut postgres::Client, source: &str) -> i64 {
    pg.query_opt(
        "SELECT last_seq FROM pm_mirror_offsets WHERE source = $1",
        &[&source],
    )
    .ok()
    .flatten()
    .map_or(0, |row| row.get(0))
}

fn last_seq(daemon: &Daemon) -> i64 {
    daemon.client().get("/v1/stats").json["last_seq"]
        .as_i64()
        .unwrap()
}

/// Waits until the mirror of `source` has applied everything the daemon
/// holds.
fn wait_caught_up(daemon: &Daemon, pg: &mut postgres::Client, source: &str, mirror: &Mirror) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let target = last_seq(daemon);
    while offset(pg, source) < target {
        assert!(
            Instant::now() < deadline,
            "{source} never caught up with seq {target}:\n{}",
            mirror.log()
        );
        std::thread::yield_now();
    }
}

#[test]
fn three_daemons_mirror_into_one_database_through_kill_9() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start()).collect();
    let sources = ["billing", "orders", "search"];
    let mut mirrors: Vec<Option<Mirror>> = daemons
        .iter()
        .zip(sources)
        .map(|(daemon, source)| Some(Mirror::start(daemon, &pg, source)))
        .collect();
    // Events flow into all three while mirrors are killed and restarted.
    let loads: Vec<_> = daemons
        .iter()
        .zip(sources)
        .map(|(daemon, source)| {
            let client = daemon.client();
            std::thread::spawn(move || {
                for n in 0..300 {
                    post_batch(&client, &run_events(&format!("{source}-{n}"), n));
                    if n % 50 == 49 {
                        let gone = client.delete(&format!("/v1/processes/{source}-{}", n - 7));
                        assert_eq!(gone.status, 204, "{}", gone.text);
                    }
                }
            })
        })
        .collect();
    // Kill a mirror once it has applied something more, at a random
    // moment of its work, and start it again: nine times over.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..9 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let which = (state % 3) as usize;
        let source = sources[which];
        let before = offset(&mut sql, source);
        let deadline = Instant::now() + Duration::from_secs(30);
        while offset(&mut sql, source) == before && !loads.iter().all(|load| load.is_finished()) {
            assert!(Instant::now() < deadline, "{source} made no progress");
            std::thread::yield_now();
        }
        mirrors[which].take().unwrap().kill9();
        mirrors[which] = Some(Mirror::start(&daemons[which], &pg, source));
    }
    for load in loads {
        load.join().unwrap();
    }
    for ((daemon, source), mirror) in daemons.iter().zip(sources).zip(&mirrors) {
        wait_caught_up(daemon, &mut sql, source, mirror.as_ref().unwrap());
    }
    for mirror in mirrors.into_iter().flatten() {
        mirror.kill9();
    }
    for (daemon, source) in daemons.iter().zip(sources) {
        assert_mirrored(&daemon.client(), &mut sql, source);
    }
    // One query across all of them.
    let failed: i64 = sql
        .query_one(
            "SELECT count(*) FROM pm_processes WHERE status = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    let expected: usize = daemons
        .iter()
        .map(|daemon| {
            daemon_holding(&daemon.client())
                .processes
                .values()
                .filter(|p| p["status"] == "failed")
                .count()
        })
        .sum();
    assert_eq!(failed, expected as i64);
}

#[test]
fn with_the_database_stopped_the_mirror_waits_then_catches_up() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let daemon = Daemon::start();
    let client = daemon.client();
    let mirror = Mirror::start(&daemon, &pg, "app");
    for n in 0..20 {
        post_batch(&client, &run_events(&format!("before-{n}"), n));
    }
    wait_caught_up(&daemon, &mut sql, "app", &mirror);
    drop(sql);
    pg.stop();
    for n in 0..40 {
        post_batch(&client, &run_events(&format!("during-{n}"), n));
    }
    // It notices, says so, and keeps trying.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mirror.log().contains("cannot mirror now; waiting") {
        assert!(Instant::now() < deadline, "{}", mirror.log());
        std::thread::yield_now();
    }
    pg.start_again();
    let mut sql = pg.client();
    wait_caught_up(&daemon, &mut sql, "app", &mirror);
    assert_mirrored(&daemon.client(), &mut sql, "app");
    assert!(
        mirror.log().contains("mirroring goes on"),
        "{}",
        mirror.log()
    );
    // SIGTERM: it stops cleanly.
    let mut mirror = mirror;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &mirror.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = mirror.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", mirror.log());
}

#[test]
fn removed_and_purged_processes_leave_the_mirror() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_AUTH_ADMIN_TOKENS", "admin"));
    let client = daemon.client().with_token("admin");
    for n in 0..30 {
        post_batch(&client, &run_events(&format!("run-{n}"), n));
    }
    // One still running: a purge of finished ones leaves it.
    client.post(&event("process.started", "still-running"));
    let once = |sql: &mut postgres::Client| {
        let out = mirror_command(&daemon, &pg, "app", &["--once"])
            .env("PM_READ_TOKEN", "admin")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_mirrored(&client, sql, "app");
    };
    once(&mut sql);
    let count = |sql: &mut postgres::Client, table: &str, id: &str| -> i64 {
        let column = if table == "pm_processes" {
            "id"
        } else {
            "process_id"
        };
        sql.query_one(
            &format!("SELECT count(*) FROM {table} WHERE source = 'app' AND {column} = $1"),
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(count(&mut sql, "pm_events", "run-3"), 9);
    assert_eq!(count(&mut sql, "pm_tasks", "run-3"), 2);
    // One removed by id, then every finished one by a purge.
    assert_eq!(client.delete("/v1/processes/run-3").status, 204);
    once(&mut sql);
    for table in ["pm_processes", "pm_tasks", "pm_events"] {
        assert_eq!(count(&mut sql, table, "run-3"), 0, "{table}");
    }
    assert_eq!(count(&mut sql, "pm_processes", "run-4"), 1);
    let purged = client.delete("/v1/processes?finished_before=2999-01-01T00:00:00Z");
    assert_eq!(purged.status, 200, "{}", purged.text);
    assert_eq!(purged.json["deleted"], 29);
    once(&mut sql);
    let left: Vec<String> = sql
        .query("SELECT id FROM pm_processes WHERE source = 'app'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["still-running"]);
    let events: i64 = sql
        .query_one("SELECT count(*) FROM pm_events WHERE source = 'app'", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 1);

    // `--status` says where the source stands; without --url, the daemon
    // is the one whose address its data directory holds.
    let mut command = command();
    command
        .args([
            "mirror",
            "--status",
            "--json",
            "--to",
            &pg.url(),
            "--source",
            "app",
        ])
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .env("PM_READ_TOKEN", "admin");
    let status = status_of(command);
    assert_eq!(status["source"], "app");
    assert_eq!(status["last_seq"], client.get("/v1/stats").json["last_seq"]);
    assert_eq!(status["lag"], 0);
    // A wrong token is a clear error, not a wait.
    let refused = mirror_command(&daemon, &pg, "app", &["--once"])
        .env("PM_READ_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn a_source_mirrored_twice_at_once_gets_no_event_twice() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let daemon = Daemon::start();
    let client = daemon.client();
    for n in 0..100 {
        post_batch(&client, &run_events(&format!("r{n}"), n));
    }
    // Two mirrors of one source, by mistake, with small pages.
    let both: Vec<_> = (0..2)
        .map(|_| {
            mirror_command(&daemon, &pg, "dup", &["--once", "--batch", "7"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in both {
        // Either may give up on a page the other took; neither applies it twice.
        child.wait_with_output().unwrap();
    }
    mirror_once(&daemon, &pg, "dup");
    assert_mirrored(&daemon.client(), &mut sql, "dup");
}

/// The SQL blocks of the README's "Many sidecars in one PostgreSQL".
fn readme_queries() -> Vec<String> {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let section = readme
        .split("## Many sidecars in one PostgreSQL")
        .nth(1)
        .expect("the README has the mirror's section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_readmes_cross_service_queries_answer_on_the_mirror() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start()).collect();
    let sources = ["billing", "orders"];
    for (daemon, source) in daemons.iter().zip(sources) {
        let client = daemon.client();
        for n in 0..40 {
            // Runs of different lengths: started n + 1 minutes ago.
            let mut events = run_events(&format!("{source}-{n}"), n);
            let started =
                time::OffsetDateTime::now_utc() - Duration::from_secs(60 * (n as u64 + 1));
            events[0]["occurred_at"] = json!(started
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap());
            post_batch(&client, &events);
        }
        // One that goes quiet.
        post_batch(
            &client,
            &[with(
                event("process.started", &format!("{source}-quiet")),
                json!({"process_type": "etl", "heartbeat_timeout": 1}),
            )],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(&format!("/v1/processes/{source}-quiet")).json["stalled_since"].is_null() {
            assert!(Instant::now() < deadline, "never stalled");
            std::thread::yield_now();
        }
        mirror_once(daemon, &pg, source);
    }
    let queries = readme_queries();
    assert_eq!(queries.len(), 3, "{queries:?}");

    // Failed in the last hour: every fourth run of each service.
    let failed: Vec<(String, String, Option<String>)> = sql
        .query(&queries[0], &[])
        .unwrap()
        .iter()
        .map(|row| (row.get("source"), row.get("id"), row.get("error_code")))
        .collect();
    let mut expected: Vec<(String, String, Option<String>)> = sources
        .iter()
        .flat_map(|source| {
            (0..40).filter(|n| n % 4 == 3).map(move |n| {
                (
                    source.to_string(),
                    format!("{source}-{n}"),
                    Some("rejected".into()),
                )
            })
        })
        .collect();
    let mut got = failed.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);

    // p95 by type, against the durations the daemons report.
    let mut durations: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (daemon, source) in daemons.iter().zip(sources) {
        let client = daemon.client();
        for n in 0..40 {
            let process = client.get(&format!("/v1/processes/{source}-{n}")).json;
            durations
                .entry(process["process_type"].as_str().unwrap().to_owned())
                .or_default()
                .push(process["duration_ms"].as_f64().unwrap());
        }
    }
    let rows = sql.query(&queries[1], &[]).unwrap();
    assert_eq!(rows.len(), durations.len());
    for row in rows {
        let kind: String = row.get("process_type");
        let runs: i64 = row.get("runs");
        let p95: f64 = row.get("p95_ms");
        let mut values = durations[&kind].clone();
        values.sort_by(f64::total_cmp);
        assert_eq!(runs as usize, values.len(), "{kind}");
        // percentile_cont: linear between the two nearest ranks.
        let rank = 0.95 * (values.len() - 1) as f64;
        let (low, high) = (values[rank.floor() as usize], values[rank.ceil() as usize]);
        let want = low + (high - low) * rank.fract();
        assert!((p95 - want).abs() < 1e-6, "{kind}: {p95} against {want}");
    }

    // Gone quiet: one per service.
    let mut quiet: Vec<(String, String)> = sql
        .query(&queries[2], &[])
        .unwrap()
        .iter()
        .map(|row| (row.get("source"), row.get("id")))
        .collect();
    quiet.sort();
    assert_eq!(
        quiet,
        [
            ("billing".to_owned(), "billing-quiet".to_owned()),
            ("orders".to_owned(), "orders-quiet".to_owned())
        ]
    );
}

#[test]
fn a_database_that_does_not_exist_is_an_error_not_a_wait() {
    let pg = Postgres::start(false);
    let daemon = Daemon::start();
    daemon.client().post(&event("process.started", "a"));
    // Before any mirror made its tables, `--status` says nothing is applied.
    let status = status_of(mirror_command(&daemon, &pg, "app", &["--status", "--json"]));
    assert_eq!(
        (status["last_seq"].as_u64(), status["lag"].as_u64()),
        (Some(0), Some(1))
    );
    let to = pg.url().replace("/postgres?", "/nosuchdb?");
    let out = command()
        .args(["mirror", "--once", "--to", &to, "--source", "app", "--url"])
        .arg(format!("http://{}", daemon.addr))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot connect to PostgreSQL") && said.contains("nosuchdb"),
        "{said}"
    );
}

/// The tables carry their layout: a mirror records it, takes tables an
/// earlier build made (which did not record one) as layout 1, and stops,
/// writing nothing, at tables laid out by a newer build.
#[test]
fn tables_of_a_newer_layout_stop_the_mirror_and_are_left_alone() {
    let pg = Postgres::start(false);
    let daemon = Daemon::start();
    let mut db = pg.client();
    let layouts = |db: &mut postgres::Client| -> Vec<i32> {
        db.query("SELECT version FROM pm_mirror_schema", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let mirrored = |db: &mut postgres::Client, id: &str| -> i64 {
        db.query_one("SELECT count(*) FROM pm_processes WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    daemon.client().post(&event("process.started", "a"));
    mirror_once(&daemon, &pg, "app");
    assert_eq!(layouts(&mut db), [2]);

    // Tables as a build before the layout was recorded left them.
    db.batch_execute("DROP TABLE pm_mirror_schema").unwrap();
    daemon.client().post(&event("process.started", "b"));
    mirror_once(&daemon, &pg, "app");
    assert_eq!(layouts(&mut db), [2]);
    assert_eq!(mirrored(&mut db, "b"), 1);

    // Tables a newer build laid out.
    db.batch_execute("UPDATE pm_mirror_schema SET version = 3")
        .unwrap();
    let before = offset(&mut db, "app");
    daemon.client().post(&event("process.started", "c"));
    let mut mirror = mirror_command(&daemon, &pg, "app", &["--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_exit(&mut mirror, Duration::from_secs(60)) else {
        mirror.kill().unwrap();
        panic!("the mirror waits at tables of a newer layout instead of stopping");
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut mirror.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("layout version 3, newer than this build's 2"),
        "{said}"
    );
    assert_eq!(mirrored(&mut db, "c"), 0);
    assert_eq!(offset(&mut db, "app"), before);
    assert_eq!(layouts(&mut db), [3]);
}

/// `mirror --once` of `daemon` into `pg`, under `source` or (`None`) the
/// default, the daemon's store id; its output, whatever its exit.
fn mirror_output(
    daemon: &Daemon,
    pg: &Postgres,
    source: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let mut command = command();
    command
        .arg("mirror")
        .args(extra)
        .args(["--once", "--log-format", "json", "--to", &pg.url(), "--url"])
        .arg(format!("http://{}", daemon.addr))
        .env("PM_PROGRESS_EVERY_MS", "1");
    if let Some(source) = source {
        command.args(["--source", source]);
    }
    command.output().expect("mirror runs")
}

/// The stderr of a mirror that stopped with exit status 1, after checking
/// that it names `what` happened and the command that mends it.
fn stopped_because(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(what), "{stderr}");
    assert!(stderr.contains("mirror --reseed"), "{stderr}");
    stderr
}

fn succeeded(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn store_id(client: &Client) -> String {
    client.get("/v1/stats").json["store_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A store restored from an older backup under a mirror: the mirror's
/// offset is past the daemon's last seq, and the tables hold events the
/// store no longer has. The mirror stops and says so; `--reseed` brings the
/// tables to the restored store, every event once (the feed is whole), and
/// the mirror follows on. The default `--source` is the store's id, which
/// the restore kept; the reseed's progress shows, page by page.
#[test]
fn a_store_restored_from_an_older_backup_stops_the_mirror_until_a_reseed() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(&dir.path().join("data"));
    let client = daemon.client();
    // More processes than a reseed page holds, most without tasks.
    let many: Vec<Value> = (0..1200)
        .map(|n| event("process.started", &format!("plain-{n}")))
        .collect();
    post_batch(&client, &many);
    for n in 0..20 {
        post_batch(&client, &run_events(&format!("run-{n}"), n));
    }
    let id = store_id(&client);
    let backup = dir.path().join("older.redb");
    let made = command()
        .args([
            "backup",
            "--quiet",
            "--url",
            &format!("http://{}", daemon.addr),
            "--out",
        ])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // After the backup: more events, which the restore takes back.
    for n in 20..40 {
        post_batch(&client, &run_events(&format!("run-{n}"), n));
    }
    succeeded(&mirror_output(&daemon, &pg, None, &[]));
    assert_eq!(
        offset(&mut sql, &id),
        last_seq(&daemon),
        "the default source is the store id"
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let restored_dir = dir.path().join("restored");
    let restore = command()
        .args(["restore", "--quiet", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let restored = Daemon::start_in(&restored_dir);
    let client = restored.client();
    assert_eq!(store_id(&client), id, "a restore keeps the store id");
    let mirrored_to = offset(&mut sql, &id);
    stopped_because(
        &mirror_output(&restored, &pg, None, &[]),
        &format!("past the daemon's last seq {}", last_seq(&restored)),
    );
    assert_eq!(
        offset(&mut sql, &id),
        mirrored_to,
        "a stopped mirror writes nothing"
    );

    // New events reuse the seqs the restore took back: the tables must
    // not keep the old ones under them.
    for n in 40..45 {
        post_batch(&client, &run_events(&format!("run-{n}"), n));
    }
    let stderr = succeeded(&mirror_output(&restored, &pg, None, &["--reseed"]));
    assert_mirrored(&client, &mut sql, &id);
    let counts = crate::support::progress_counts(&stderr, "mirror: reseeding processes");
    assert!(counts.len() >= 2, "progress page by page: {stderr}");
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{counts:?}"
    );
    assert_eq!(*counts.last().unwrap(), 1200 + 25, "{counts:?}");
    // And it follows on.
    post_batch(&client, &run_events("after-reseed", 1));
    succeeded(&mirror_output(&restored, &pg, None, &[]));
    assert_mirrored(&client, &mut sql, &id);
}

/// A source that meets another store under its name (a store replaced)
/// stops; a source whose next items the feed no longer holds (an offline
/// compaction raised its floor) stops. Each says what to run, and
/// `--reseed` brings the tables to the daemon's state.
#[test]
fn another_store_or_a_trimmed_feed_stops_the_mirror_until_a_reseed() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let first = Daemon::start();
    for n in 0..10 {
        post_batch(&first.client(), &run_events(&format!("first-{n}"), n));
    }
    succeeded(&mirror_output(&first, &pg, Some("app"), &[]));
    let (status, _, _) = first.terminate();
    assert!(status.success());

    // Another store under the same source.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let second = Daemon::start_in(&data);
    let client = second.client();
    for n in 0..30 {
        post_batch(&client, &run_events(&format!("second-{n}"), n));
    }
    client.post(&event("process.started", "still-running"));
    stopped_because(
        &mirror_output(&second, &pg, Some("app"), &[]),
        &format!("serves store {}", store_id(&client)),
    );
    succeeded(&mirror_output(&second, &pg, Some("app"), &["--reseed"]));
    assert_mirrored(&client, &mut sql, "app");

    // Events after the mirror's offset, then an offline compaction that
    // purges the finished runs and raises the feed's floor past them.
    for n in 30..35 {
        post_batch(&client, &run_events(&format!("second-{n}"), n));
    }
    let (status, _, _) = second.terminate();
    assert!(status.success());
    let compact = command()
        .args(["compact", "--quiet", "--data-dir"])
        .arg(&data)
        .args(["--purge-finished-before", "2999-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    let compacted = Daemon::start_in(&data);
    let client = compacted.client();
    stopped_because(
        &mirror_output(&compacted, &pg, Some("app"), &[]),
        "no longer keeps the feed",
    );
    succeeded(&mirror_output(&compacted, &pg, Some("app"), &["--reseed"]));
    // The processes and tasks are the daemon's; the events, those the feed
    // still serves (none of the purged runs, and none twice).
    let held = daemon_holding(&client);
    let mirrored = pg_holding(&mut sql, "app");
    assert_eq!(mirrored.processes, held.processes);
    assert_eq!(mirrored.tasks, held.tasks);
    assert_eq!(held.processes.keys().collect::<Vec<_>>(), ["still-running"]);
    for (seq, event) in &mirrored.events {
        assert_eq!(held.events.get(seq), Some(event), "event {seq}");
    }
    // New events follow as ever.
    post_batch(&client, &run_events("after-compaction", 2));
    succeeded(&mirror_output(&compacted, &pg, Some("app"), &[]));
    let mirrored = pg_holding(&mut sql, "app");
    assert_eq!(mirrored.processes, daemon_holding(&client).processes);
}

/// The waits of a mirror's log, in order: `retry_in_ms` of each "cannot
/// mirror now" line.
fn waits(log: &str) -> Vec<u64> {
    crate::support::log_fields(log)
        .filter(|line| line["message"] == "cannot mirror now; waiting")
        .filter_map(|line| line["retry_in_ms"].as_u64())
        .collect()
}

/// With the daemon stopped, the mirror waits longer each time it finds it
/// away (doubling, up to 30 s), says so, and when the daemon is back at its
/// address it catches up: nothing missing, nothing twice.
#[test]
fn with_the_daemon_stopped_the_mirror_backs_off_then_catches_up() {
    let pg = Postgres::start(false);
    let mut sql = pg.client();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_in(&data);
    let addr = daemon.addr;
    let client = daemon.client();
    let mirror = Mirror::start(&daemon, &pg, "app");
    for n in 0..10 {
        post_batch(&client, &run_events(&format!("before-{n}"), n));
    }
    wait_caught_up(&daemon, &mut sql, "app", &mirror);
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    // Three tries that found it away: 250 ms, then 500, then 1 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while waits(&mirror.log()).len() < 3 {
        assert!(Instant::now() < deadline, "{}", mirror.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = waits(&mirror.log());
    assert_eq!(seen[..3], [250, 500, 1000], "{}", mirror.log());
    // Back at the same address, with what came meanwhile in its store.
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(&data)
            .listen(&addr.to_string()),
    );
    let client = daemon.client();
    for n in 0..10 {
        post_batch(&client, &run_events(&format!("after-{n}"), n));
    }
    wait_caught_up(&daemon, &mut sql, "app", &mirror);
    assert_mirrored(&client, &mut sql, "app");
    assert!(
        mirror.log().contains("mirroring goes on"),
        "{}",
        mirror.log()
    );
    mirror.kill9();
}
