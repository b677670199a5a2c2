//! What an event costs when its process holds all the caps allow, against
//! one for a fresh process, in one run.
//!
//! `cargo bench --bench process_size`: PM_BENCH_ROUNDS rounds (default 3)
//! of PM_BENCH_SECS-second phases (default 5). Before caps, one process
//! could grow without end (38,000 attributes: 0.2-0.5 s of the writer per
//! event); with them, the cost of an event is bounded by what a process
//! may keep. Each round fills 64 processes to their caps (256 attributes
//! in 64 KiB, 1,000 tasks, one of them with 64 attributes in 16 KiB and
//! 20 attempts), then sends heartbeats at 64 connections, each to its own
//! process: to the full ones, then to 64 fresh ones (the floor).

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use support::*;

const CONNECTIONS: usize = 64;

fn post(addr: std::net::SocketAddr, body: &Value) {
    let reply = ureq::post(format!("http://{addr}/v1/events"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("the daemon answers");
    assert!(reply.status().is_success(), "{}", reply.status());
}

/// Brings process `id` to every cap of the default configuration.
fn fill_to_caps(addr: std::net::SocketAddr, id: &str) {
    let value = "v".repeat(247);
    for chunk in 0..4 {
        let attributes: serde_json::Map<String, Value> = (0..64)
            .map(|i| (format!("k{:03}", chunk * 64 + i), json!(value)))
            .collect();
        post(
            addr,
            &json!({"type": "process.started", "process_id": id, "attributes": attributes}),
        );
    }
    for batch in 0..10 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "task.started", "process_id": id, "task_id": format!("t{}", batch * 100 + i)}))
            .collect();
        post(addr, &Value::Array(events));
    }
    let task_value = "w".repeat(250);
    let attributes: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("a{i:02}"), json!(task_value)))
        .collect();
    post(
        addr,
        &json!({"type": "task.progress", "process_id": id, "task_id": "t0", "attributes": attributes}),
    );
    for attempt in 1..20 {
        let at = |s: u32| format!("2030-01-01T00:{:02}:{:02}Z", s / 60, s % 60);
        post(
            addr,
            &json!({"type": "task.failed", "process_id": id, "task_id": "t0", "occurred_at": at(attempt * 2)}),
        );
        post(
            addr,
            &json!({"type": "task.started", "process_id": id, "task_id": "t0", "occurred_at": at(attempt * 2 + 1)}),
        );
    }
}

/// Heartbeats, each connection to process `prefix-{connection}`.
fn heartbeats(prefix: &'static str) -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    Arc::new(move |conn, _| Planned {
        method: hyper::Method::POST,
        path: "/v1/events".into(),
        body: Bytes::from(
            json!({"type": "process.heartbeat", "process_id": format!("{prefix}-{conn}")})
                .to_string(),
        ),
        events: 1,
    })
}

fn report(name: &str, result: &LoadResult) {
    println!(
        "  {name:<40} {:>10.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        result.events_per_sec(),
        result.percentile_ms(0.50),
        result.percentile_ms(0.99),
    );
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    println!(
        "process-size benchmark on {}; {rounds} rounds, {} s per phase",
        machine(),
        secs.as_secs()
    );
    let mut ratios = Vec::new();
    let mut full_p99 = Vec::new();
    for round in 1..=rounds {
        println!("\nround {round}");
        let dir = tempfile::tempdir().expect("temp dir");
        let daemon = Server::daemon(dir.path());
        for conn in 0..CONNECTIONS {
            fill_to_caps(daemon.addr, &format!("full-{conn}"));
        }
        let process: Value = serde_json::from_str(
            &ureq::get(format!("http://{}/v1/processes/full-0", daemon.addr))
                .call()
                .expect("GET")
                .into_body()
                .read_to_string()
                .expect("body"),
        )
        .expect("JSON");
        assert_eq!(process["attributes"].as_object().unwrap().len(), 256);
        assert_eq!(process["tasks"].as_array().unwrap().len(), 1000);
        assert_eq!(process["tasks"][0]["attempt"], 20);
        let full = run_load(daemon.addr, CONNECTIONS, secs, heartbeats("full"));
        report("heartbeats to processes at their caps", &full);
        let fresh = run_load(daemon.addr, CONNECTIONS, secs, heartbeats("fresh"));
        report("heartbeats to fresh processes (floor)", &fresh);
        let ratio = full.events_per_sec() / fresh.events_per_sec();
        println!("  ratio: {ratio:.2}x");
        ratios.push(ratio);
        full_p99.push(full.percentile_ms(0.99));
        daemon.stop();
    }
    let ratio = Spread::of(ratios);
    let p99 = Spread::of(full_p99);
    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    println!(
        "  events to processes at their caps / to fresh ones   {}x",
        ratio.show(2)
    );
    println!(
        "  p99 of an event to a process at its caps            {} ms",
        p99.show(2)
    );
}
