//! Keeping and removing, online: `[retention]` applied by the running
//! daemon through its writer, and `DELETE /v1/processes?finished_before=…`.

use crate::support::{event, with, Client, Daemon, DaemonOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits (polling, up to 60 s) until `done` holds of the stats.
fn until_stats(client: &Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let stats = client.get("/v1/stats").json;
        if done(&stats) {
            return stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} did not happen: {stats}"
        );
        std::thread::yield_now();
    }
}

fn ended(kind: &str, id: &str, at: &str) -> Value {
    with(event(kind, id), json!({"occurred_at": at}))
}

/// The whole change feed, page after page.
fn feed_items(client: &Client) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let page = client.get(&format!("/v1/changes?after_seq={after}&limit=1000"));
        assert_eq!(page.status, 200, "{}", page.text);
        let got = page.json["items"].as_array().unwrap();
        if got.is_empty() {
            return items;
        }
        items.extend(got.iter().cloned());
        after = page.json["next_after_seq"].as_u64().unwrap();
    }
}

#[test]
fn retention_removes_finished_processes_by_status_with_a_feed_item_each() {
    let (daemon, _config) =
        Daemon::with_config("[retention]\nsucceeded = \"1h\"\ncancelled = \"2d\"\n");
    let client = daemon.client();
    let long_ago = "2026-01-01T00:00:00Z";
    let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let yesterday = yesterday
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // Past its retention: removed.
    client.post(&event("process.started", "old-success"));
    client.post(&ended("process.succeeded", "old-success", long_ago));
    // Within theirs, or kept forever (failed has none), or running: kept.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    client.post(&ended("process.succeeded", "recent-success", &now));
    client.post(&ended(
        "process.cancelled",
        "cancelled-yesterday",
        &yesterday,
    ));
    client.post(&ended("process.failed", "old-failure", long_ago));
    client.post(&event("process.started", "running"));

    until_stats(&client, "the expired process's removal", |stats| {
        stats["processes"]["succeeded"] == 1
    });
    assert_eq!(client.get("/v1/processes/old-success").status, 404);
    for kept in [
        "recent-success",
        "cancelled-yesterday",
        "old-failure",
        "running",
    ] {
        assert_eq!(
            client.get(&format!("/v1/processes/{kept}")).status,
            200,
            "{kept}"
        );
    }
    // The feed says so, in place of the removed process's events.
    let items = feed_items(&client);
    let removals: Vec<&Value> = items
        .iter()
        .filter(|item| item["type"] == "process.deleted")
        .collect();
    assert_eq!(removals.len(), 1, "{items:?}");
    assert_eq!(removals[0]["process_id"], "old-success");
    assert!(!items
        .iter()
        .any(|item| item["process_id"] == "old-success" && item["type"] != "process.deleted"));

    // A process that ends now, already past its retention (its end is
    // reported late), is removed without waiting for anything else.
    client.post(&ended("process.succeeded", "late-report", long_ago));
    until_stats(&client, "the late report's removal", |stats| {
        stats["processes"]["succeeded"] == 1
    });
    assert_eq!(client.get("/v1/processes/late-report").status, 404);
}

#[test]
fn a_bulk_delete_removes_the_matching_finished_processes_only() {
    let admin = "admin-token";
    let reader = "read-token";
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_ADMIN_TOKENS", admin)
            .env("PM_AUTH_READ_TOKENS", reader),
    );
    let client = daemon.client().with_token(admin);
    let batch: Vec<Value> = (0..2500)
        .map(|n| {
            let kind = ["process.succeeded", "process.failed", "process.cancelled"][n % 3];
            let day = if n % 2 == 0 {
                "2026-01-01"
            } else {
                "2026-06-01"
            };
            with(
                ended(kind, &format!("p{n}"), &format!("{day}T00:00:00Z")),
                json!({"process_type": if n % 5 == 0 { "export" } else { "import" }}),
            )
        })
        .collect();
    for chunk in batch.chunks(1000) {
        assert_eq!(client.post(&Value::Array(chunk.to_vec())).status, 200);
    }
    client.post(&with(
        event("process.started", "running"),
        json!({"process_type": "export"}),
    ));
    let expected = |keep: &dyn Fn(usize) -> bool| (0..2500).filter(|&n| keep(n)).count();

    // Reading may not delete; the parameters are checked.
    let read_only = daemon.client().with_token(reader);
    assert_eq!(
        read_only
            .delete("/v1/processes?finished_before=2030-01-01T00:00:00Z")
            .status,
        403
    );
    let missing = client.delete("/v1/processes?status=failed");
    assert_eq!(
        (missing.status, &missing.json["field"]),
        (400, &json!("finished_before"))
    );
    let running =
        client.delete("/v1/processes?finished_before=2030-01-01T00:00:00Z&status=running");
    assert_eq!(
        (running.status, &running.json["field"]),
        (400, &json!("status"))
    );

    // Failed exports finished before March.
    let reply = client.delete(
        "/v1/processes?finished_before=2026-03-01T00:00:00Z&status=failed&process_type=export",
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let gone = |n: usize| n % 3 == 1 && n.is_multiple_of(2) && n.is_multiple_of(5);
    assert_eq!(reply.json["deleted"], expected(&gone));
    assert_eq!(reply.json.as_object().unwrap().len(), 1);
    for n in [0, 10, 40, 70, 100] {
        let status = client.get(&format!("/v1/processes/p{n}")).status;
        assert_eq!(status, if gone(n) { 404 } else { 200 }, "p{n}");
    }
    // Everything finished before March, in steps of the writer's size.
    let reply = client.delete("/v1/processes?finished_before=2026-03-01T00:00:00Z");
    let january = |n: usize| n.is_multiple_of(2);
    assert_eq!(reply.json["deleted"], expected(&january) - expected(&gone));
    // Again: nothing left to remove; the running process never is.
    let reply = client.delete("/v1/processes?finished_before=2030-01-01T00:00:00Z");
    assert_eq!(reply.json["deleted"], 2500 - expected(&january));
    let stats = client.get("/v1/stats").json;
    assert_eq!(stats["processes_total"], 1, "{stats}");
    assert_eq!(client.get("/v1/processes/running").status, 200);
    // The feed holds one removal for each, and nothing else of them: only
    // the running process's start besides.
    let items = feed_items(&client);
    let removals = items
        .iter()
        .filter(|item| item["type"] == "process.deleted")
        .count();
    assert_eq!(removals, 2500);
    assert_eq!(items.len(), 2501);
}

/// The store file's size, in bytes.
fn store_bytes(daemon: &Daemon) -> u64 {
    std::fs::metadata(daemon.data_dir.join("processmanager.redb"))
        .unwrap()
        .len()
}

#[test]
fn with_ingest_and_retention_running_together_the_store_stops_growing() {
    let (daemon, _config) = Daemon::with_config(
        "[feed]\nretention = \"200ms\"\n[retention]\nsucceeded = \"200ms\"\n[timeouts]\ncheck_interval_ms = 50\n",
    );
    let client = daemon.client();
    let cycles: usize = std::env::var("PM_RETENTION_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    let mut sizes = Vec::new();
    for cycle in 0..cycles {
        // A wave of runs, each with a task and its history, that all end.
        for chunk in 0..4 {
            let events: Vec<Value> = (0..100)
                .flat_map(|n| {
                    let id = format!("c{cycle}-{chunk}-{n}");
                    [
                        with(event("process.started", &id), json!({"name": "a run", "attributes": {"tenant": "t"}})),
                        json!({"type": "task.started", "process_id": id, "task_id": "t1"}),
                        json!({"type": "task.progress", "process_id": id, "task_id": "t1", "progress": {"percent": 50}}),
                        json!({"type": "task.succeeded", "process_id": id, "task_id": "t1"}),
                        event("process.succeeded", &id),
                    ]
                })
                .collect();
            let reply = client.post(&Value::Array(events));
            assert_eq!(reply.json["accepted"], 500, "{}", reply.text);
        }
        until_stats(&client, "the wave's removal", |stats| {
            stats["processes_total"] == 0
        });
        sizes.push(store_bytes(&daemon));
    }
    // Space freed by one wave holds the next. redb grows its file a
    // region at a time (and gives the last one back when it empties), so
    // the size moves in steps, not smoothly: bounded, after the first
    // third, by twice the size then, while the cycles put through it many
    // times that (90 cycles: 36,000 processes, 180,000 events).
    let settled = sizes[cycles / 3];
    let largest = sizes[cycles / 3..].iter().copied().max().unwrap();
    println!("store file by cycle: {sizes:?}");
    // The feed kept 200 ms: a consumer resuming from long ago is told to
    // start over (after_seq=0, "from the oldest kept", never is).
    let gone = client.get("/v1/changes?after_seq=1");
    assert_eq!(gone.status, 410, "{}", gone.text);
    assert!(gone.json["oldest_seq"].as_u64().unwrap() > 1);
    assert!(
        largest <= 2 * settled,
        "the store grew from {settled} to {largest} bytes: {sizes:?}"
    );
}

/// Under a steady load of short runs, each finishing a moment after it
/// starts, retention of one second removes them about as fast as they
/// finish: while the load runs most of what finished is gone already, and
/// the store holds about a second's worth, not everything since the start.
#[test]
fn retention_keeps_pace_with_runs_that_finish_under_load() {
    let (daemon, _config) = Daemon::with_config("[retention]\nsucceeded = \"1s\"\n");
    let addr = daemon.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = Duration::from_secs(8);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = Client::new(addr);
                let mut finished = 0u64;
                let mut run = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Twenty runs a request, each started and succeeded.
                    let batch: Vec<Value> = (0..20)
                        .flat_map(|_| {
                            run += 1;
                            let id = format!("short-{worker}-{run}");
                            [
                                event("process.started", &id),
                                event("process.succeeded", &id),
                            ]
                        })
                        .collect();
                    let reply = client.post(&Value::Array(batch));
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    finished += reply.json["accepted"].as_u64().unwrap() / 2;
                }
                finished
            })
        })
        .collect();
    std::thread::sleep(load);
    let client = daemon.client();
    let stats = client.get("/v1/stats").json;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let finished: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let left = stats["processes"]["succeeded"].as_u64().unwrap();
    println!(
        "{finished} runs finished in {} s, {left} still in the store as the load stopped",
        load.as_secs()
    );
    assert!(finished > 1000, "the load ran: {finished} runs");
    // Were retention paced as when it was a sixtieth of the writer's time,
    // at a few hundred removals a second, most would still be there.
    assert!(
        left * 3 < finished,
        "retention fell behind: {left} of {finished} finished runs left after {} s",
        load.as_secs()
    );
    // And once the load stops, the rest go too.
    until_stats(&client, "the last runs' removal", |stats| {
        stats["processes"]["succeeded"] == 0
    });
}
