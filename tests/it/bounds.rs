//! Bounds that no client, hostile or buggy, can break: what one process
//! keeps, and the memory of request bodies in flight.

use crate::support::{event, peak_rss_bytes, task_event, with, Daemon};
use serde_json::{json, Value};
use std::io::Write;

fn attributes(prefix: &str, count: usize, value: &str) -> Value {
    (0..count)
        .map(|i| (format!("{prefix}{i}"), json!(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn an_event_that_would_pass_a_cap_is_422_naming_it_and_nothing_is_applied() {
    let (daemon, _config) = Daemon::with_config(
        "[limits]\nattributes_per_process = 4\nattribute_bytes_per_process = 100\nattributes_per_task = 2\ntasks_per_process = 2\nattempts_per_task = 2\n",
    );
    let client = daemon.client();
    let refused_for = |body: &Value, setting: &str| {
        let reply = client.post(body);
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.json["code"], "limit_exceeded");
        assert_eq!(reply.json["setting"], setting);
        assert!(
            reply.json["detail"].as_str().unwrap().contains(setting),
            "{}",
            reply.text
        );
        reply
    };
    let started = with(
        event("process.started", "p"),
        json!({"attributes": attributes("a", 3, "x")}),
    );
    assert_eq!(client.post(&started).status, 202);
    let before = client.get("/v1/processes/p").json;

    // Two more keys would make five: refused whole, with its name change.
    let too_many = with(
        event("process.progress", "p"),
        json!({"name": "renamed", "attributes": attributes("b", 2, "y")}),
    );
    let reply = refused_for(&too_many, "limits.attributes_per_process");
    assert_eq!(reply.json["field"], "attributes");
    // Replacing values adds no key, but may pass the byte cap.
    let too_big = with(
        event("process.progress", "p"),
        json!({"attributes": {"a0": "x".repeat(100)}}),
    );
    refused_for(&too_big, "limits.attribute_bytes_per_process");
    let after = client.get("/v1/processes/p").json;
    assert_eq!(after, before, "nothing of a refused event was applied");
    let history = client.get("/v1/processes/p/history").json;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);

    // Tasks of a process, attempts of a task, attributes of a task.
    for task in ["t1", "t2"] {
        assert_eq!(
            client.post(&task_event("task.started", "p", task)).status,
            202
        );
    }
    let reply = refused_for(
        &task_event("task.started", "p", "t3"),
        "limits.tasks_per_process",
    );
    assert_eq!(reply.json["field"], "task_id");
    refused_for(
        &with(
            task_event("task.progress", "p", "t1"),
            json!({"attributes": attributes("k", 3, "v")}),
        ),
        "limits.attributes_per_task",
    );
    let fail = |n: u32| {
        with(
            task_event("task.failed", "p", "t1"),
            json!({"occurred_at": format!("2030-01-01T00:00:0{n}Z")}),
        )
    };
    let retry = |n: u32| {
        with(
            task_event("task.started", "p", "t1"),
            json!({"occurred_at": format!("2030-01-01T00:00:0{n}Z")}),
        )
    };
    assert_eq!(client.post(&fail(1)).status, 202);
    assert_eq!(client.post(&retry(2)).json["task_status"], "running");
    assert_eq!(client.post(&fail(3)).status, 202);
    refused_for(&retry(4), "limits.attempts_per_task");
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(process["tasks"][0]["attempt"], 2);
    assert_eq!(process["tasks"][0]["status"], "failed");
    // The refusals were counted.
    let metrics = client.get("/metrics").text;
    assert!(
        metrics.contains(r#"pm_events_total{type="task.started",result="over_limit"} 2"#),
        "{metrics}"
    );
}

#[test]
fn four_hundred_concurrent_4_mb_batches_stay_within_the_memory_budget_and_lose_nothing() {
    const BUDGET: u64 = 64 << 20;
    const CLIENTS: usize = 400;
    const BODIES: usize = 8;
    let (daemon, _config) = Daemon::with_config(&format!(
        "[ingest]\nmax_inflight_bytes = {BUDGET}\n[store]\ncache_mib = 16\n"
    ));
    let base = peak_rss_bytes(daemon.pid());
    // Eight different batches of 1000 events, about 4 MB each; every
    // client posts one of them, so each is accepted once and then found a
    // duplicate, and every body is read and parsed all the same.
    let pad = "p".repeat(3900);
    let bodies: Vec<std::sync::Arc<String>> = (0..BODIES)
        .map(|b| {
            let events: Vec<Value> = (0..1000)
                .map(|i| {
                    json!({"event_id": format!("e{b}-{i}"), "type": "process.started",
                           "process_id": format!("p{b}-{i}"), "attributes": {"pad": pad}})
                })
                .collect();
            std::sync::Arc::new(Value::Array(events).to_string())
        })
        .collect();
    assert!(bodies[0].len() > 3_900_000 && bodies[0].len() <= 4 << 20);
    let addr = daemon.addr;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let body = bodies[client % BODIES].clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(std::time::Duration::from_secs(120)))
                    .build()
                    .into();
                let mut response = agent
                    .post(format!("http://{addr}/v1/events"))
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .expect("an answer");
                let status = response.status().as_u16();
                let text = response.body_mut().read_to_string().unwrap_or_default();
                (client % BODIES, status, text)
            })
        })
        .collect();
    let mut accepted_bodies = std::collections::BTreeSet::new();
    let mut over_budget = 0;
    for thread in threads {
        let (body, status, text) = thread.join().unwrap();
        match status {
            200 => {
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(answer["rejected"], 0, "{text:.300}");
                accepted_bodies.insert(body);
            }
            429 => {
                assert!(text.contains("max_inflight_bytes"), "{text}");
                over_budget += 1;
            }
            other => panic!("unexpected {other}: {text:.300}"),
        }
    }
    let peak = peak_rss_bytes(daemon.pid());
    println!(
        "400 concurrent 4 MB batches: {} taken, {over_budget} answered 429; peak RSS {} MiB (at start {} MiB, budget {} MiB)",
        CLIENTS - over_budget,
        peak >> 20,
        base >> 20,
        BUDGET >> 20
    );
    assert!(over_budget > 0, "the budget was never spent");
    // What a 4 MB batch took in flight before the budget: about 15 MB,
    // so 400 of them 5.9 GB.
    assert!(
        peak < base + BUDGET + (160 << 20),
        "peak RSS {} MiB, over the budget plus a fixed base",
        peak >> 20
    );
    // Nothing lost: every event of every batch that was answered 200 is
    // stored.
    let client = daemon.client();
    let stats = client.get("/v1/stats").json;
    assert_eq!(
        stats["processes_total"].as_u64().unwrap(),
        1000 * accepted_bodies.len() as u64,
        "{stats}"
    );
    for body in &accepted_bodies {
        let process = client.get(&format!("/v1/processes/p{body}-999"));
        assert_eq!(process.status, 200, "{}", process.text);
    }
}

#[test]
fn a_chunked_body_is_refused_429_as_soon_as_it_passes_the_budget_and_the_client_hears_it() {
    // Room for one largest body (4 MiB, counted four times), no more.
    let (daemon, _config) = Daemon::with_config("[ingest]\nmax_inflight_bytes = 16777216\n");
    let client = daemon.client();
    // A 4 MiB body declared and sent slowly holds all of it meanwhile.
    let mut holder = std::net::TcpStream::connect(daemon.addr).unwrap();
    holder
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 4194304\r\n\r\n[")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client
        .get("/metrics")
        .text
        .contains("\npm_ingest_inflight_bytes 16777216\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the body never held the budget"
        );
        std::thread::yield_now();
    }
    // A chunked batch is refused at its first chunk, and hears why.
    let mut chunked = std::net::TcpStream::connect(daemon.addr).unwrap();
    chunked
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut chunked, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("max_inflight_bytes"), "{answer}");
    drop(holder);
    let metrics = daemon.client().get("/metrics").text;
    assert_eq!(
        crate::support::sample(&metrics, r#"pm_rejections_total{reason="over_budget"}"#),
        1.0,
        "the one body refused"
    );
}
