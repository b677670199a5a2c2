//! The change feed (`GET /v1/changes`) and the polling pattern
//! (`GET /v1/processes/{id}/await`), against the real daemon.

use crate::support::{
    event, python, rss_and_threads, task_event, with, Client, Daemon, DaemonOptions, FeedStream,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every item of the feed after `after_seq`, read page by page.
fn whole_feed(client: &Client, after_seq: u64) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = after_seq;
    loop {
        let page = client.get(&format!("/v1/changes?after_seq={after}&limit=1000"));
        assert_eq!(page.status, 200, "{}", page.text);
        let got = page.json["items"].as_array().expect("items").clone();
        let next = page.json["next_after_seq"]
            .as_u64()
            .expect("next_after_seq");
        if got.is_empty() && next == after {
            return items;
        }
        items.extend(got);
        after = next;
    }
}

/// A feed request on a bare connection, whose reader decides when to stop
/// reading (or to drop it mid-item); `headers` end in CRLF each.
fn raw_stream(addr: std::net::SocketAddr, accept: &str, headers: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        socket,
        "GET /v1/changes HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n{headers}\r\n"
    )
    .unwrap();
    socket
}

fn seqs(items: &[Value]) -> Vec<u64> {
    items
        .iter()
        .map(|item| item["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_feed_holds_every_event_in_seq_order_with_the_statuses_it_left_and_filters() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        event("process.started", "a"),
        json!({"process_type": "import"}),
    ));
    client.post(&task_event("task.started", "a", "t1"));
    client.post(&event("process.started", "b"));
    client.post(&task_event("task.failed", "a", "t1"));
    client.post(&event("process.succeeded", "a"));
    // A stale event is in the history, so in the feed too.
    client.post(&with(
        event("process.progress", "b"),
        json!({"occurred_at": "2000-01-01T00:00:00Z"}),
    ));
    assert_eq!(client.delete("/v1/processes/b").status, 204);

    let page = client.get("/v1/changes");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("application/json"));
    let items = page.json["items"].as_array().unwrap().clone();
    // b's events left with it; one process.deleted item took their place.
    let summary: Vec<(u64, &str, &str, Value, Value)> = items
        .iter()
        .map(|item| {
            (
                item["seq"].as_u64().unwrap(),
                item["type"].as_str().unwrap(),
                item["process_id"].as_str().unwrap(),
                item["process_status"].clone(),
                item["task_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "process.started", "a", json!("running"), Value::Null),
            (2, "task.started", "a", json!("running"), json!("running")),
            (4, "task.failed", "a", json!("running"), json!("failed")),
            (5, "process.succeeded", "a", json!("succeeded"), Value::Null),
            (7, "process.deleted", "b", Value::Null, Value::Null),
        ]
    );
    assert_eq!(items[4]["source"], "processmanager");
    assert_eq!(page.json["next_after_seq"], 7);
    // The item is the history item, plus process and statuses.
    let history = client.get("/v1/processes/a/history").json["items"][1].clone();
    for (key, value) in history.as_object().unwrap() {
        assert_eq!(&items[1][key], value, "field {key}");
    }

    let after = client.get("/v1/changes?after_seq=2&limit=2").json;
    assert_eq!(seqs(after["items"].as_array().unwrap()), vec![4, 5]);
    assert_eq!(after["next_after_seq"], 5);
    let typed = client
        .get("/v1/changes?type=task.failed,process.deleted")
        .json;
    assert_eq!(seqs(typed["items"].as_array().unwrap()), vec![4, 7]);
    let by_type = client.get("/v1/changes?process_type=import").json;
    assert_eq!(seqs(by_type["items"].as_array().unwrap()), vec![1, 2, 4, 5]);
    let one = client.get("/v1/changes?process_id=a&after_seq=1").json;
    assert_eq!(seqs(one["items"].as_array().unwrap()), vec![2, 4, 5]);
    // Nothing after the end: empty, and the cursor stays.
    let end = client.get("/v1/changes?after_seq=7").json;
    assert_eq!(end, json!({"items": [], "next_after_seq": 7}));

    for bad in [
        "/v1/changes?type=process.exploded",
        "/v1/changes?after_seq=-1",
        "/v1/changes?wait=61",
        "/v1/changes?limit=0",
        "/v1/changes?since=3",
    ] {
        let answer = client.get(bad);
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text);
        assert_eq!(answer.json["code"], "invalid_query");
    }
}

#[test]
fn a_long_poll_is_answered_by_the_event_that_arrives() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.started", "a"));
    let addr = daemon.addr;
    let waiting =
        std::thread::spawn(move || Client::new(addr).get("/v1/changes?after_seq=1&wait=60"));
    client.post(&event("process.succeeded", "a"));
    let answer = waiting.join().unwrap();
    assert_eq!(answer.status, 200);
    // A long poll that timed out would be empty: this one got the event.
    assert_eq!(seqs(answer.json["items"].as_array().unwrap()), vec![2]);
    assert_eq!(answer.json["items"][0]["process_status"], "succeeded");
}

#[test]
fn a_page_can_carry_the_processes_it_names_read_with_it() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.started", "kept"));
    client.post(&task_event("task.started", "kept", "load"));
    client.post(&event("process.started", "gone"));
    assert_eq!(client.delete("/v1/processes/gone").status, 204);
    let page = client.get("/v1/changes?include=processes");
    assert_eq!(page.status, 200, "{}", page.text);
    let processes = page.json["processes"].as_object().unwrap();
    // Every process the items name, in order of first sight: each as GET
    // shows it, with its tasks, or null once removed.
    assert_eq!(
        processes.keys().collect::<Vec<_>>(),
        ["kept", "gone"],
        "{}",
        page.text
    );
    assert_eq!(processes["kept"], client.get("/v1/processes/kept").json);
    assert_eq!(processes["kept"]["tasks"][0]["id"], "load");
    assert_eq!(processes["gone"], Value::Null);
    // Without it, no `processes`.
    assert!(client.get("/v1/changes").json.get("processes").is_none());
    // Streams do not take it, and it takes nothing else.
    let refused = client.get_with(
        "/v1/changes?include=processes",
        &[("accept", "text/event-stream")],
    );
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.json["field"], "include");
    let refused = client.get("/v1/changes?include=tasks");
    assert_eq!(refused.status, 400, "{}", refused.text);
}

/// Reads the printed events of `follow.py` as they come.
fn follower(url: &str, count: usize) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sse/follow.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(url)
        .arg(count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs; .ci/test installs requests-sse into target/ci-venv");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    (child, receiver)
}

#[test]
fn an_sse_client_library_follows_the_feed_and_resumes_by_last_event_id_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start_in(dir.path());
    let listen = first.addr.to_string();
    let client = first.client();
    for n in 0..30 {
        client.post(&event("process.started", &format!("p{n}")));
    }
    let (mut child, events) = follower(&format!("http://{listen}/v1/changes"), 60);
    let mut got = Vec::new();
    while got.len() < 30 {
        got.push(
            events
                .recv_timeout(Duration::from_secs(60))
                .expect("an event"),
        );
    }
    // The daemon goes away; the stream ends; the library reconnects with
    // Last-Event-ID to the daemon started in its place on the same port.
    let (status, _, _) = first.terminate();
    assert!(status.success());
    let second = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(dir.path())
            .listen(&listen),
    );
    let client = second.client();
    for n in 0..30 {
        client.post(&event("process.succeeded", &format!("p{n}")));
    }
    while got.len() < 60 {
        got.push(
            events
                .recv_timeout(Duration::from_secs(60))
                .expect("an event"),
        );
    }
    assert!(child.wait().unwrap().success());
    let ids: Vec<u64> = got
        .iter()
        .map(|event| event["id"].as_str().unwrap().parse().unwrap())
        .collect();
    // Every event once, in order: the reconnection resumed after the last
    // id, or the first thirty would have come again.
    assert_eq!(ids, (1..=60).collect::<Vec<u64>>());
    for event in &got {
        assert_eq!(event["type"], event["data"]["type"]);
        assert_eq!(
            event["data"]["seq"].to_string(),
            event["id"].as_str().unwrap()
        );
    }
    assert_eq!(got[59]["data"]["process_status"], "succeeded");
}

/// Writers post while a consumer follows the feed, dropping its
/// connection after a random number of items (or mid-line), and resuming
/// from the last seq it handled, by `after_seq`, `Last-Event-ID`, or pages.
fn resume_under_load(plan: &[(u8, usize)]) {
    let daemon = Daemon::start();
    let addr = daemon.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = Client::new(addr);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("w{writer}-{}", n / 3);
                    let kind = ["process.started", "process.progress", "process.succeeded"][n % 3];
                    let batch = json!([event(kind, &id), task_event("task.started", &id, "t")]);
                    client.post_raw(&batch.to_string(), &[]);
                    n += 1;
                }
            })
        })
        .collect();
    let mut handled: Vec<u64> = Vec::new();
    let last = |handled: &Vec<u64>| handled.last().copied().unwrap_or(0);
    // The writers run through the whole plan, so that a stream always has
    // more to give; what is left at the end is read by pages.
    for &(how, take) in plan {
        match how % 3 {
            0 => {
                let path = format!("/v1/changes?after_seq={}", last(&handled));
                let mut stream = FeedStream::open(addr, &path, "application/x-ndjson");
                assert_eq!(stream.status, 200);
                for _ in 0..take {
                    let Some(item) = stream.next_item() else {
                        break;
                    };
                    handled.push(item["seq"].as_u64().unwrap());
                }
            }
            1 => {
                // SSE by Last-Event-ID; the connection is dropped in the
                // middle of an event (after its id line) now and then.
                let socket = raw_stream(
                    addr,
                    "text/event-stream",
                    &format!("Last-Event-ID: {}\r\n", last(&handled)),
                );
                let mut reader = BufReader::new(socket);
                let mut line = String::new();
                let mut taken = 0;
                let mut id = None;
                while taken < take {
                    line.clear();
                    let read = reader.read_line(&mut line).expect("the stream goes on");
                    assert!(read > 0, "the stream ended");
                    if let Some(rest) = line.strip_prefix("id: ") {
                        id = Some(rest.trim().parse::<u64>().unwrap());
                    } else if line.starts_with("data: ") {
                        // An event is handled once its data is read.
                        handled.push(id.take().expect("an id before the data"));
                        taken += 1;
                    }
                }
                drop(reader);
            }
            _ => {
                let page = Client::new(addr).get(&format!(
                    "/v1/changes?after_seq={}&limit={}",
                    last(&handled),
                    take.clamp(1, 1000)
                ));
                for item in page.json["items"].as_array().unwrap() {
                    handled.push(item["seq"].as_u64().unwrap());
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }
    // Read to the end, then compare with the feed as stored.
    let client = Client::new(addr);
    for item in whole_feed(&client, last(&handled)) {
        handled.push(item["seq"].as_u64().unwrap());
    }
    let stored = seqs(&whole_feed(&client, 0));
    assert!(!stored.is_empty());
    assert_eq!(handled, stored, "every event once, in seq order");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn consumers_dropping_at_random_moments_and_resuming_see_every_event_once_in_order(
        plan in proptest::collection::vec((0u8..3, 1usize..400), 6..16)
    ) {
        resume_under_load(&plan);
    }
}

#[test]
fn the_most_streams_allowed_follow_ingest_together_and_one_more_is_429() {
    let (daemon, _config) = Daemon::with_config("[feed]\nmax_streams = 256\n");
    let addr = daemon.addr;
    let mut streams: Vec<FeedStream> = (0..256)
        .map(|_| FeedStream::open(addr, "/v1/changes", "application/x-ndjson"))
        .collect();
    assert!(streams.iter().all(|stream| stream.status == 200));
    let refused = Client::new(addr).get_with("/v1/changes", &[("accept", "text/event-stream")]);
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.json["code"], "too_many_streams");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Pages need no stream slot.
    assert_eq!(Client::new(addr).get("/v1/changes").status, 200);

    let client = daemon.client();
    let batches = 20;
    for batch in 0..batches {
        let events: Vec<Value> = (0..10)
            .map(|n| event("process.started", &format!("p{batch}-{n}")))
            .collect();
        assert_eq!(
            client
                .post_raw(&Value::Array(events).to_string(), &[])
                .status,
            200
        );
    }
    let readers: Vec<_> = streams
        .drain(..)
        .map(|mut stream| {
            std::thread::spawn(move || {
                (0..batches * 10)
                    .map(|_| {
                        stream.next_item().expect("an item")["seq"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), (1..=200).collect::<Vec<u64>>());
    }
    // The streams closed with their readers: a new one may open.
    let metrics = client.get("/metrics").text;
    let open: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pm_feed_streams "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open < 256.0, "pm_feed_streams {open}");
    let mut again = FeedStream::open(addr, "/v1/changes?after_seq=199", "application/x-ndjson");
    assert_eq!(again.status, 200);
    assert_eq!(again.next_item().unwrap()["seq"], 200);
}

#[test]
fn a_consumer_that_stops_reading_costs_bounded_memory() {
    let daemon = Daemon::start();
    let addr = daemon.addr;
    let client = daemon.client();
    let attributes: serde_json::Map<String, Value> = (0..8)
        .map(|n| (format!("k{n}"), json!("v".repeat(200))))
        .collect();
    let post_batches = |from: usize, count: usize| {
        for batch in from..from + count {
            let events: Vec<Value> = (0..500)
                .map(|n| {
                    with(
                        event("process.started", &format!("p{batch}-{n}")),
                        json!({"attributes": attributes}),
                    )
                })
                .collect();
            assert_eq!(
                client
                    .post_raw(&Value::Array(events).to_string(), &[])
                    .status,
                200
            );
        }
    };
    // Warm up: the daemon's memory after the same work without a stalled reader.
    post_batches(0, 40);
    let (before, _) = rss_and_threads(daemon.pid());
    // A stream that reads a few bytes and then nothing more.
    let mut socket = raw_stream(addr, "application/x-ndjson", "");
    let mut first = [0u8; 64];
    socket.read_exact(&mut first).unwrap();
    // 100,000 events (about 250 MB of items as the feed writes them).
    post_batches(40, 200);
    let (after, _) = rss_and_threads(daemon.pid());
    let grown = after.saturating_sub(before);
    eprintln!("RSS {before} -> {after} bytes with a stalled consumer ({grown} more)");
    assert!(
        grown < 48 << 20,
        "a consumer that stops reading grew the daemon by {grown} bytes"
    );
    // Once it reads again, it gets everything, from the start.
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    drop(reader);
    let feed = whole_feed(&client, 0);
    assert_eq!(feed.len(), 120_000);
}

#[test]
fn a_resume_point_older_than_an_offline_purge_is_410_with_the_oldest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    for n in 0..5 {
        client.post(&event("process.succeeded", &format!("done{n}")));
    }
    client.post(&event("process.started", "running"));
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    let purged = crate::support::command()
        .args(["compact", "--data-dir"])
        .arg(dir.path())
        .args(["--purge-finished-before", "2999-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );

    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    let gone = client.get("/v1/changes?after_seq=2");
    assert_eq!(gone.status, 410, "{}", gone.text);
    assert_eq!(gone.json["code"], "feed_gone");
    assert_eq!(gone.json["oldest_seq"], 7);
    // Streams say so before they begin; an SSE client's Last-Event-ID too.
    let stream = FeedStream::open(daemon.addr, "/v1/changes?after_seq=2", "text/event-stream");
    assert_eq!(stream.status, 410);
    let by_id = client.get_with("/v1/changes", &[("last-event-id", "5")]);
    assert_eq!(by_id.status, 410);
    // A sequence number is digits, and nothing else.
    let signed = client.get_with("/v1/changes", &[("last-event-id", "+7")]);
    assert_eq!(signed.status, 400, "{}", signed.text);
    assert_eq!(client.get("/v1/changes?after_seq=%2B7").status, 400);
    // From the start, or from the purge on, the feed is whole.
    let all = whole_feed(&client, 0);
    assert_eq!(seqs(&all), vec![6]);
    assert_eq!(client.get("/v1/changes?after_seq=6").status, 200);
}

#[test]
fn await_follows_the_asynchronous_polling_pattern() {
    let (daemon, _config) = Daemon::with_config(
        "[http]\npublic_url = \"https://pm.example.com/\"\n[await]\nretry_after_secs = 7\n",
    );
    let client = daemon.client();
    client.post(&event("process.started", "run:1"));
    let pending = client.get("/v1/processes/run:1/await?require=succeeded");
    assert_eq!(pending.status, 202);
    assert_eq!(pending.json["status"], "running");
    assert_eq!(
        pending.header("location"),
        Some("https://pm.example.com/v1/processes/run%3A1/await?require=succeeded")
    );
    assert_eq!(pending.header("retry-after"), Some("7"));

    let addr = daemon.addr;
    let waiter = std::thread::spawn(move || {
        Client::new(addr).get("/v1/processes/run:1/await?wait=60&require=succeeded")
    });
    client.post(&event("process.succeeded", "run:1"));
    let done = waiter.join().unwrap();
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.json["status"], "succeeded");
    assert_eq!(done.header("location"), None);

    client.post(&event("process.failed", "run:2"));
    let failed = client.get("/v1/processes/run:2/await?require=succeeded");
    assert_eq!(failed.status, 409);
    assert_eq!(failed.json["code"], "process_unsuccessful");
    assert_eq!(failed.json["current_status"], "failed");
    // Without `require`, any end is the answer.
    assert_eq!(client.get("/v1/processes/run:2/await").status, 200);
    assert_eq!(client.get("/v1/processes/nobody/await").status, 404);
    assert_eq!(
        client
            .get("/v1/processes/run:2/await?require=failed")
            .status,
        400
    );
    assert_eq!(client.get("/v1/processes/run:2/await?wait=61").status, 400);
}

#[test]
fn two_thousand_waiters_hold_no_thread_and_all_wake_at_the_end() {
    let (daemon, _config) = Daemon::with_config("[http]\nmax_connections = 4096\n");
    let client = daemon.client();
    client.post(&event("process.started", "big"));
    let (rss_before, threads_before) = rss_and_threads(daemon.pid());
    let mut sockets: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut socket = TcpStream::connect(daemon.addr).unwrap();
            socket
                .write_all(
                    b"GET /v1/processes/big/await?wait=60 HTTP/1.1\r\nHost: localhost\r\n\r\n",
                )
                .unwrap();
            socket
        })
        .collect();
    // Every waiter is registered once the gauge of waits says so.
    let watched = || {
        client.get("/metrics").text.lines().find_map(|line| {
            line.strip_prefix("pm_await_waiting ")
                .map(|value| value.parse::<f64>().unwrap())
        })
    };
    while watched() != Some(2000.0) {
        std::thread::yield_now();
    }
    let (rss_waiting, threads_waiting) = rss_and_threads(daemon.pid());
    eprintln!(
        "2000 waiters: RSS {rss_before} -> {rss_waiting} bytes, threads {threads_before} -> {threads_waiting}"
    );
    // The async workers, the writer, and the read pool (two per core at
    // most) are all the threads there are, however many wait.
    assert!(
        threads_waiting < 16,
        "waiting took threads: {threads_before} -> {threads_waiting}"
    );
    // Memory only: a connection and a parked future each, under 64 KiB.
    assert!(
        rss_waiting.saturating_sub(rss_before) < 2000 * (64 << 10),
        "2000 waiters cost {} bytes",
        rss_waiting - rss_before
    );
    client.post(&event("process.succeeded", "big"));
    for socket in &mut sockets {
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(&*socket);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
}

#[test]
fn an_idle_stream_sends_keepalives_in_its_format() {
    let (daemon, _config) = Daemon::with_config("[feed]\nkeepalive_secs = 1\n");
    for (accept, keepalive) in [
        ("text/event-stream", ": keepalive"),
        ("application/x-ndjson", ""),
    ] {
        let mut reader = BufReader::new(raw_stream(daemon.addr, accept, ""));
        let mut line = String::new();
        // The head, then the body's chunks: the keepalive comes with no
        // event to send.
        let found = loop {
            line.clear();
            if reader.read_line(&mut line).expect("the stream goes on") == 0 {
                break false;
            }
            if line.trim_end_matches(['\r', '\n']) == keepalive && keepalive.starts_with(':') {
                break true;
            }
            // NDJSON: a chunk holding nothing but the newline.
            if keepalive.is_empty() && line == "1\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
                break line == "\n";
            }
        };
        assert!(found, "no keepalive on an idle {accept} stream");
    }
}
