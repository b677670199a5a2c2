//! Start, stop, restart and crash: nothing acknowledged is ever lost.

use crate::support::{
    assert_all_present, event, run_load, serve_refused, wait_for_acks, with, Acknowledged, Client,
    Daemon, DaemonOptions,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A load of 8 threads posting keyed events, stopped on demand.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Acknowledged>>,
}

impl Load {
    /// Starts the load and waits until `at_least` events are committed.
    fn start(daemon: &Daemon, at_least: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = run_load(daemon.addr, "", 8, stop.clone());
        wait_for_acks(started, daemon.addr, at_least);
        Load { stop, threads }
    }

    /// Stops the load; what it got a 2xx for.
    fn acknowledged(self) -> Acknowledged {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    }
}

#[test]
fn sigterm_during_load_loses_no_acknowledged_event_and_exits_zero_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let load = Load::start(&daemon, 300);
    let (status, took, output) = daemon.terminate();
    let exited = time::OffsetDateTime::now_utc();
    let acknowledged = load.acknowledged();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Once it says it stopped, it is gone: a supervisor waiting for the
    // exit (or podman stop) is not kept waiting.
    let stopped_line = output
        .lines()
        .find(|line| line.contains(r#""message":"stopped""#))
        .unwrap_or_else(|| panic!("no stop line:\n{output}"));
    let logged: serde_json::Value = serde_json::from_str(stopped_line).unwrap();
    let stopped_at = time::OffsetDateTime::parse(
        logged["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let gap = exited - stopped_at;
    assert!(
        gap < time::Duration::milliseconds(100),
        "exited {gap} after its stop line"
    );
    let restarted = Daemon::start_in(dir.path());
    assert_all_present(&restarted.client(), &acknowledged);
}

#[test]
fn kill_9_during_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let load = Load::start(&daemon, 500);
    daemon.kill9();
    let acknowledged = load.acknowledged();
    let restarted = Daemon::start_in(dir.path());
    let client = restarted.client();
    assert_all_present(&client, &acknowledged);
    let stats = client.get("/v1/stats").json;
    let max_acked = acknowledged.iter().map(|(_, seq)| *seq).max().unwrap();
    assert!(stats["last_seq"].as_u64().unwrap() >= max_acked);
}

#[test]
fn a_restart_keeps_every_process_identical() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    for i in 0..40 {
        let id = format!("p{i}");
        client.post(&with(
            event("process.started", &id),
            json!({"process_type": "kind", "attributes": {"i": i.to_string()}}),
        ));
        client.post(&json!({"type": "task.started", "process_id": id, "task_id": "a"}));
        if i % 2 == 0 {
            client.post(&json!({"type": "task.failed", "process_id": id, "task_id": "a", "error": {"code": "E", "message": "m"}}));
            client.post(&event("process.failed", &id));
        }
    }
    let snapshot = |client: &Client| -> Vec<Value> {
        let mut all = vec![
            client.get("/v1/stats").json,
            client.get("/v1/processes?limit=1000").json,
        ];
        for i in 0..40 {
            all.push(client.get(&format!("/v1/processes/p{i}")).json);
            all.push(client.get(&format!("/v1/processes/p{i}/history")).json);
        }
        all
    };
    let before = snapshot(&client);
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    let restarted = Daemon::start_in(dir.path());
    assert_eq!(snapshot(&restarted.client()), before);
    // And the counters carry on: the next seq follows the last.
    let next = restarted
        .client()
        .post(&event("process.started", "after-restart"));
    assert_eq!(
        next.json["seq"].as_u64(),
        before[0]["last_seq"].as_u64().map(|s| s + 1)
    );
}

/// Waits for `100 Continue`: hyper sends it when the handler starts to
/// read the body, so the request is then truly in flight.
fn await_handler(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("100 Continue arrives");
        seen.push(byte[0]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn shutdown_refuses_new_connections_and_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let addr = daemon.addr;
    let body = event("process.started", "in-flight").to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(stream, "POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n", body.len()).unwrap();
    await_handler(&mut stream);
    stream.write_all(&body.as_bytes()[..10]).unwrap();
    stream.flush().unwrap();
    // The handler runs and waits for the rest of the body.
    daemon.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted"
        );
        std::thread::yield_now();
    }
    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut daemon = daemon;
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let restarted = Daemon::start_in(dir.path());
    assert_eq!(
        restarted.client().get("/v1/processes/in-flight").status,
        200
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut daemon = Daemon::start();
    // A request that never completes holds the drain open.
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n")
        .unwrap();
    await_handler(&mut stream);
    stream.write_all(b"{").unwrap();
    daemon.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.output().contains("shutting down") {
        assert!(Instant::now() < deadline, "the first signal was not seen");
        std::thread::yield_now();
    }
    let started = Instant::now();
    daemon.signal(libc::SIGINT);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exits at once");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn logs_are_json_lines_and_name_the_listening_address() {
    let daemon = Daemon::start();
    daemon.client().post(&event("process.started", "p"));
    let (_, _, output) = daemon.terminate();
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.len() >= 3);
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(parsed["level"].is_string() && parsed["timestamp"].is_string());
    }
    assert!(lines.iter().any(|l| l.contains("listening on 127.0.0.1:")));
}

#[test]
fn a_store_of_another_schema_version_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let daemon = Daemon::start_in(dir.path());
        daemon.client().post(&event("process.started", "p"));
        daemon.terminate();
    }
    let path = dir.path().join("processmanager.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(processmanager::store::schema::META).unwrap();
            meta.insert(
                "schema_version",
                processmanager::codec::encode(&99u32).as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let stderr = serve_refused("127.0.0.1:0", dir.path());
    assert!(
        stderr.contains("schema version 99") && stderr.contains("restore a backup"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("processmanager.redb"),
        b"definitely not redb",
    )
    .unwrap();
    let stderr = serve_refused("127.0.0.1:0", dir.path());
    assert!(
        stderr.starts_with("error: ") && stderr.contains("is not a ProcessManager store"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["processmanager.redb"], "nothing written beside it");
}

#[test]
fn a_daemon_whose_store_is_held_is_live_but_not_ready_until_it_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start_in(dir.path());
    first
        .client()
        .post(&event("process.started", "from-the-first"));
    // The second daemon, as in a rolling restart, finds the store held.
    let second = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(dir.path())
            .without_waiting_for_ready(),
    );
    let client = second.client();
    assert_eq!(client.get("/livez").status, 200);
    let ready = client.get("/readyz");
    assert_eq!(
        (ready.status, ready.header("retry-after")),
        (503, Some("5"))
    );
    let starting = client.get("/v1/processes/from-the-first");
    assert_eq!(starting.status, 503);
    assert!(
        starting.json["detail"]
            .as_str()
            .unwrap()
            .contains("starting"),
        "{}",
        starting.text
    );
    assert_eq!(
        client.post(&event("process.started", "too-early")).status,
        503
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.output().contains("another process holds the store") {
        assert!(Instant::now() < deadline, "it never said why it waits");
        std::thread::yield_now();
    }
    // The first one stops; the second opens the store and serves it.
    let (status, _, _) = first.terminate();
    assert!(status.success());
    second.wait_ready();
    assert_eq!(client.get("/v1/processes/from-the-first").status, 200);
    assert_eq!(client.post(&event("process.started", "now")).status, 202);
}

#[test]
fn a_signal_while_waiting_for_the_store_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Daemon::start_in(dir.path());
    let second = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(dir.path())
            .without_waiting_for_ready(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.output().contains("another process holds the store") {
        assert!(Instant::now() < deadline, "never waited for the store");
        std::thread::yield_now();
    }
    let (status, took, _) = second.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10));
}
