//! POST /v1/events: every rule of "How an event is applied" and every row
//! of the answers table.

use crate::support::{event, raw_exchange, task_event, with, Client, Daemon, DaemonOptions};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn history_len(client: &Client, process_id: &str) -> usize {
    let reply = client.get(&format!("/v1/processes/{process_id}/history?limit=1000"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json["items"].as_array().expect("items").len()
}

#[test]
fn an_applied_event_is_202_with_location_and_seq() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let reply = client.post(&event("process.started", "run-1"));
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.header("location"), Some("/v1/processes/run-1"));
    assert_eq!(reply.json["result"], "accepted");
    assert_eq!(reply.json["process_id"], "run-1");
    assert_eq!(reply.json["process_status"], "running");
    let first_seq = reply.json["seq"].as_u64().expect("seq");
    let second = client.post(&event("process.progress", "run-1"));
    assert!(
        second.json["seq"].as_u64().unwrap() > first_seq,
        "seq strictly increases"
    );
}

#[test]
fn unknown_processes_and_tasks_are_created_by_any_event() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let reply = client.post(&task_event("task.progress", "never-seen", "step-1"));
    assert_eq!(reply.status, 202, "{}", reply.text);
    let process = client.get("/v1/processes/never-seen").json;
    assert_eq!(process["status"], "running");
    assert_eq!(process["tasks"][0]["id"], "step-1");
    assert_eq!(process["tasks"][0]["status"], "running");
    assert_eq!(process["task_counts"], json!({"running": 1}));
}

#[test]
fn a_process_moves_pending_to_running_to_terminal() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(
        client.post(&event("process.queued", "p")).json["process_status"],
        "pending"
    );
    assert_eq!(
        client.post(&event("process.heartbeat", "p")).json["process_status"],
        "running"
    );
    let queued_again = client.post(&event("process.queued", "p"));
    assert_eq!(
        (queued_again.status, queued_again.json["result"].as_str()),
        (200, Some("stale"))
    );
    let done = client.post(&event("process.timed_out", "p"));
    assert_eq!(
        (done.status, done.json["process_status"].as_str()),
        (202, Some("timed_out"))
    );
    let task_events_move_pending = client.post(&task_event("task.started", "q", "t"));
    assert_eq!(task_events_move_pending.json["process_status"], "running");
}

#[test]
fn a_failed_task_started_again_is_a_retry_with_its_own_attempt() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let at = |t: &str| json!({"occurred_at": format!("2026-11-25T10:00:{t}Z")});
    client.post(&with(task_event("task.started", "p", "copy"), at("01")));
    client.post(&with(
        task_event("task.failed", "p", "copy"),
        json!({"occurred_at": "2026-11-25T10:00:02Z", "error": {"code": "Timeout", "message": "SFTP did not answer"}}),
    ));
    let retry = client.post(&with(task_event("task.started", "p", "copy"), at("03")));
    assert_eq!(
        (retry.status, retry.json["task_status"].as_str()),
        (202, Some("running"))
    );
    client.post(&with(task_event("task.succeeded", "p", "copy"), at("04")));
    let task = client.get("/v1/processes/p").json["tasks"][0].clone();
    assert_eq!(task["attempt"], 2);
    assert_eq!(task["status"], "succeeded");
    assert_eq!(
        task["attempts"],
        json!([
            {"attempt": 1, "status": "failed", "started_at": "2026-11-25T10:00:01.000Z",
             "finished_at": "2026-11-25T10:00:02.000Z", "error": {"code": "Timeout", "message": "SFTP did not answer"}},
            {"attempt": 2, "status": "succeeded", "started_at": "2026-11-25T10:00:03.000Z",
             "finished_at": "2026-11-25T10:00:04.000Z", "error": null},
        ])
    );
}

#[test]
fn the_same_terminal_event_again_is_stale_and_kept_in_history() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.succeeded", "p"));
    let again = client.post(&event("process.succeeded", "p"));
    assert_eq!(
        (again.status, again.json["result"].as_str()),
        (200, Some("stale"))
    );
    let late_progress = client.post(&event("process.progress", "p"));
    assert_eq!(late_progress.json["result"], "stale");
    assert_eq!(history_len(&client, "p"), 3);
    let history = client.get("/v1/processes/p/history").json;
    assert_eq!(history["items"][1]["result"], "stale");
    assert_eq!(client.get("/v1/processes/p").json["status"], "succeeded");
}

#[test]
fn a_different_terminal_event_is_a_409_conflict_and_not_stored() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.failed", "p"));
    let conflict = client.post(&event("process.succeeded", "p"));
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(conflict.json["code"], "conflict");
    assert_eq!(conflict.json["status"], 409);
    assert_eq!(conflict.json["current_status"], "failed");
    assert_eq!(history_len(&client, "p"), 1, "a conflict is not stored");
    let task_conflict = {
        client.post(&task_event("task.skipped", "q", "t"));
        client.post(&task_event("task.succeeded", "q", "t"))
    };
    assert_eq!(
        (
            task_conflict.status,
            task_conflict.json["current_status"].as_str()
        ),
        (409, Some("skipped"))
    );
}

#[test]
fn a_late_task_completion_on_a_finished_process_is_applied() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&task_event("task.started", "p", "slow"));
    client.post(&event("process.cancelled", "p"));
    let late = client.post(&task_event("task.succeeded", "p", "slow"));
    assert_eq!(late.status, 202, "{}", late.text);
    assert_eq!(late.json["process_status"], "cancelled");
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["status"], "cancelled");
    assert_eq!(process["tasks"][0]["status"], "succeeded");
}

#[test]
fn an_update_older_than_the_last_applied_one_is_stale() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let progress = |percent: f64, at: &str| {
        with(
            event("process.progress", "p"),
            json!({"occurred_at": at, "progress": {"percent": percent}}),
        )
    };
    assert_eq!(
        client.post(&progress(60.0, "2026-11-25T10:00:10Z")).status,
        202
    );
    let older = client.post(&progress(40.0, "2026-11-25T11:00:05+02:00"));
    assert_eq!(
        (older.status, older.json["result"].as_str()),
        (200, Some("stale"))
    );
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["progress"]["percent"], 60.0);
    assert_eq!(process["updated_at"], "2026-11-25T10:00:10.000Z");
    assert_eq!(
        history_len(&client, "p"),
        2,
        "the stale update is kept in history"
    );
}

#[test]
fn a_duplicate_answers_the_original_seq_and_is_not_stored_again() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let original = with(
        event("process.started", "p"),
        json!({"event_id": "run-p-started"}),
    );
    let first = client.post(&original);
    let again = client.post(&original);
    assert_eq!(again.status, 200);
    assert_eq!(again.json["result"], "duplicate");
    assert_eq!(again.json["seq"], first.json["seq"]);
    assert_eq!(again.json["original_result"], "accepted");
    assert_eq!(history_len(&client, "p"), 1);
    // Keys are scoped to their process.
    let other = client.post(&with(
        event("process.started", "other"),
        json!({"event_id": "run-p-started"}),
    ));
    assert_eq!(other.status, 202);
}

#[test]
fn a_reused_key_with_a_different_body_is_422() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        event("process.started", "p"),
        json!({"event_id": "k1"}),
    ));
    let reused = client.post(&with(
        event("process.progress", "p"),
        json!({"event_id": "k1"}),
    ));
    assert_eq!(reused.status, 422);
    assert_eq!(reused.json["code"], "idempotency_key_reused");
    assert_eq!(history_len(&client, "p"), 1);
}

#[test]
fn the_key_comes_from_the_body_then_idempotency_key_then_webhook_id() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let body = event("process.progress", "p").to_string();
    let by_header = client.post_raw(&body, &[("Idempotency-Key", "h-1")]);
    assert_eq!(by_header.status, 202);
    let resent = client.post_raw(&body, &[("Idempotency-Key", "h-1"), ("webhook-id", "w-9")]);
    assert_eq!(
        (resent.json["result"].as_str(), &resent.json["seq"]),
        (Some("duplicate"), &by_header.json["seq"])
    );
    let by_webhook_id = client.post_raw(&body, &[("webhook-id", "w-1")]);
    assert_eq!(by_webhook_id.status, 202);
    assert_eq!(
        client.post_raw(&body, &[("webhook-id", "w-1")]).json["result"],
        "duplicate"
    );
    let body_wins = with(event("process.progress", "p"), json!({"event_id": "b-1"})).to_string();
    assert_eq!(
        client
            .post_raw(&body_wins, &[("Idempotency-Key", "h-1")])
            .status,
        202
    );
    let history = client.get("/v1/processes/p/history").json;
    let keys: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["h-1", "w-1", "b-1"]);
    // Without any key, the same body is stored again.
    assert_eq!(client.post_raw(&body, &[]).status, 202);
    assert_eq!(client.post_raw(&body, &[]).status, 202);
    assert_eq!(history_len(&client, "p"), 5);
}

#[test]
fn timestamps_follow_the_contract() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        event("process.queued", "p"),
        json!({"occurred_at": "2026-11-25T09:00:00Z"}),
    ));
    client.post(&with(
        event("process.started", "p"),
        json!({"occurred_at": "2026-11-25T10:00:00.5Z"}),
    ));
    client.post(&with(
        event("process.succeeded", "p"),
        json!({"occurred_at": "2026-11-25T10:00:02Z"}),
    ));
    let p = client.get("/v1/processes/p").json;
    assert_eq!(p["started_at"], "2026-11-25T10:00:00.500Z");
    assert_eq!(p["finished_at"], "2026-11-25T10:00:02.000Z");
    assert_eq!(p["updated_at"], "2026-11-25T10:00:02.000Z");
    assert_eq!(p["duration_ms"], 1500);
    let created = p["created_at"].as_str().unwrap();
    assert!(
        created.starts_with("20") && created.ends_with('Z') && created.len() == 24,
        "{created}"
    );
    let history = client.get("/v1/processes/p/history").json;
    let first = &history["items"][0];
    assert_eq!(first["occurred_at"], "2026-11-25T09:00:00.000Z");
    assert!(first["received_at"].as_str().unwrap().len() == 24);
}

#[test]
fn malformed_json_is_400_with_line_and_column() {
    let daemon = Daemon::start();
    let reply = daemon.client().post_raw(
        "{\"type\": \"process.started\",\n  \"process_id\": oops}",
        &[],
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["code"], "malformed_json");
    assert_eq!(
        (reply.json["line"].as_u64(), reply.json["column"].as_u64()),
        (Some(2), Some(17))
    );
    for body in ["", "42", "\"text\"", "{\"type\":", "[{}", "{} trailing"] {
        let reply = daemon.client().post_raw(body, &[]);
        assert_eq!(reply.status, 400, "for {body:?}: {}", reply.text);
    }
}

#[test]
fn an_invalid_field_is_422_naming_it_and_nothing_is_stored() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let cases = [
        (json!({"process_id": "p"}), "type"),
        (
            json!({"type": "process.exploded", "process_id": "p"}),
            "type",
        ),
        (json!({"type": "process.started"}), "process_id"),
        (event("process.started", "has spaces"), "process_id"),
        (event("process.started", &"x".repeat(201)), "process_id"),
        (event("task.started", "p"), "task_id"),
        (
            with(event("process.started", "p"), json!({"task_id": "t"})),
            "task_id",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"occurred_at": "tuesday"}),
            ),
            "occurred_at",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"name": "n".repeat(201)}),
            ),
            "name",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"progress": {"percent": 140}}),
            ),
            "progress.percent",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"progress": {"current": 5, "total": 2}}),
            ),
            "progress.current",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"progress": {"message": "m".repeat(1025)}}),
            ),
            "progress.message",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"progress": {"percent": 5, "eta": 3}}),
            ),
            "progress.eta",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"error": {"code": "x", "message": "y"}}),
            ),
            "error",
        ),
        (
            with(
                event("process.failed", "p"),
                json!({"error": {"code": "x", "message": "y".repeat(4096)}}),
            ),
            "error",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"attributes": {"k": 1}}),
            ),
            "attributes.k",
        ),
        (
            with(event("process.started", "p"), json!({"statuz": "typo"})),
            "statuz",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"event_id": "tab\tinside"}),
            ),
            "event_id",
        ),
    ];
    for (body, field) in cases {
        let reply = client.post(&body);
        assert_eq!(reply.status, 422, "for {body}: {}", reply.text);
        assert_eq!(reply.json["code"], "invalid_event");
        assert_eq!(reply.json["field"], field, "for {body}");
    }
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let reply = client.post(&with(
        event("process.started", "p"),
        json!({"attributes": many}),
    ));
    assert_eq!(
        (reply.status, reply.json["field"].as_str()),
        (422, Some("attributes"))
    );
    assert_eq!(
        client.get("/v1/processes/p").status,
        404,
        "nothing invalid was stored"
    );
    assert_eq!(client.get("/v1/stats").json["events_total"], 0);
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let daemon = Daemon::start();
    let answer = raw_exchange(
        daemon.addr,
        b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("unsupported_media_type"));
    let body = event("process.started", "abc").to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let with_charset = raw_exchange(daemon.addr, request.as_bytes());
    assert!(with_charset.starts_with("HTTP/1.1 202"), "{with_charset}");
}

#[test]
fn a_body_declared_too_large_is_413_before_it_is_read() {
    let daemon = Daemon::start();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        5 * 1024 * 1024
    );
    // Nothing of the body is sent: the answer must come from the header alone.
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
}

#[test]
fn a_client_still_sending_a_too_large_chunked_body_receives_the_413() {
    let daemon = Daemon::start();
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    // 6 MiB in 64 KiB chunks, past the 4 MiB limit, sent in full.
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..96 {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        stream.write_all(&chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the answer arrives, not a reset");
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("payload_too_large"));
}

#[test]
fn a_batch_longer_than_max_batch_is_413() {
    let config = write_config("[ingest]\nmax_batch = 3\n");
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_CONFIG", path_of(&config)));
    let batch: Vec<Value> = (0..4)
        .map(|i| event("process.started", &format!("p{i}")))
        .collect();
    let reply = daemon.client().post(&Value::Array(batch));
    assert_eq!(
        (reply.status, reply.json["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(daemon.client().get("/v1/stats").json["processes_total"], 0);
}

/// A config file that lives as long as the returned handle.
fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().unwrap()
}

#[test]
fn a_batch_judges_each_item_alone_in_order() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        event("process.failed", "done"),
        json!({"event_id": "d-1"}),
    ));
    let batch = json!([
        with(event("process.started", "b"), json!({"event_id": "b-1"})),
        {"type": "process.started", "process_id": "b", "bogus": 1},
        with(event("process.failed", "done"), json!({"event_id": "d-1"})),
        event("process.succeeded", "done"),
        with(event("process.progress", "b"), json!({"occurred_at": "2000-01-01T00:00:00Z"})),
        7,
        task_event("task.started", "b", "t1"),
    ]);
    let reply = client.post(&batch);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = &reply.json;
    assert_eq!(
        (
            &body["accepted"],
            &body["duplicates"],
            &body["stale"],
            &body["rejected"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(3))
    );
    let results: Vec<(u64, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        vec![
            (0, "accepted"),
            (1, "rejected"),
            (2, "duplicate"),
            (3, "rejected"),
            (4, "stale"),
            (5, "rejected"),
            (6, "accepted")
        ]
    );
    assert_eq!(body["results"][1]["error"]["field"], "bogus");
    assert_eq!(body["results"][3]["error"]["code"], "conflict");
    assert_eq!(body["results"][3]["error"]["current_status"], "failed");
    // Every item not rejected is durable and readable now.
    assert_eq!(history_len(&client, "b"), 3);
    let seq_of_0 = body["results"][0]["seq"].as_u64().unwrap();
    let seq_of_6 = body["results"][6]["seq"].as_u64().unwrap();
    assert!(seq_of_6 > seq_of_0, "items are applied in array order");
}

#[test]
fn a_full_writer_queue_is_answered_429_with_retry_after_at_once() {
    // One queued request at most: concurrent writers overflow it quickly.
    let config = write_config("[ingest]\nqueue_capacity = 1\n");
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_CONFIG", path_of(&config)));
    let addr = daemon.addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    let overloaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..32)
        .map(|worker| {
            let overloaded = overloaded.clone();
            std::thread::spawn(move || {
                let client = Client::new(addr);
                let mut accepted = Vec::new();
                let mut n = 0;
                while !overloaded.load(std::sync::atomic::Ordering::SeqCst)
                    && Instant::now() < deadline
                {
                    n += 1;
                    let id = format!("w{worker}-{n}");
                    let batch: Vec<Value> = (0..50)
                        .map(|i| event("process.started", &format!("{id}-{i}")))
                        .collect();
                    let reply = client.post(&Value::Array(batch));
                    match reply.status {
                        200 => accepted.push(id),
                        429 => {
                            assert_eq!(reply.json["code"], "overloaded");
                            assert_eq!(reply.header("retry-after"), Some("1"));
                            overloaded.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        other => panic!("unexpected {other}: {}", reply.text),
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        overloaded.load(std::sync::atomic::Ordering::SeqCst),
        "no request was ever answered 429"
    );
    let client = daemon.client();
    for id in accepted.iter().take(50) {
        assert_eq!(
            client.get(&format!("/v1/processes/{id}-0")).status,
            200,
            "accepted batch {id} is stored"
        );
    }
}

/// Every `Location` names the process the same way, as RFC 3986 asks:
/// unreserved characters as they are, `:` (the one other character an id
/// may hold) percent-encoded; and each leads back to the process.
#[test]
fn every_location_encodes_the_id_one_way_and_leads_back_to_it() {
    let daemon = Daemon::start();
    let client = daemon.client();
    for (id, encoded) in [
        ("aw-1", "aw-1"),
        ("run_a.b~c-1", "run_a.b~c-1"),
        ("tenant:42", "tenant%3A42"),
        ("AZaz09-._~:", "AZaz09-._~%3A"),
    ] {
        let posted = client.post(&event("process.started", id));
        assert_eq!(posted.status, 202, "{}", posted.text);
        let location = posted.header("location").unwrap().to_owned();
        assert_eq!(location, format!("/v1/processes/{encoded}"));
        let waiting = client.get(&format!("/v1/processes/{encoded}/await"));
        assert_eq!(waiting.status, 202, "{}", waiting.text);
        assert_eq!(
            waiting.header("location"),
            Some(format!("/v1/processes/{encoded}/await").as_str())
        );
        let found = client.get(&location);
        assert_eq!((found.status, found.json["id"].as_str()), (200, Some(id)));
    }
}
