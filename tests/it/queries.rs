//! The read endpoints: one process, lists with filters and cursors,
//! history, stats and the probes.

use crate::support::{event, task_event, with, Client, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

#[test]
fn a_process_shows_its_tasks_in_order_of_first_sight_with_counts() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        event("process.started", "p"),
        json!({"name": "Nightly import", "process_type": "invoice-import", "correlation_id": "tenant-42/order-9",
               "attributes": {"tenant": "42"}, "occurred_at": "2026-11-25T10:00:00Z"}),
    ));
    for task in ["zeta", "alpha", "mid"] {
        client.post(&with(
            task_event("task.started", "p", task),
            json!({"name": format!("Step {task}")}),
        ));
    }
    client.post(&task_event("task.succeeded", "p", "alpha"));
    client.post(&with(
        task_event("task.progress", "p", "mid"),
        json!({"progress": {"percent": 40.0, "current": 4, "total": 10, "message": "4 of 10 files"}}),
    ));
    client.post(&with(
        event("process.progress", "p"),
        json!({"attributes": {"stage": "copy"}}),
    ));
    let reply = client.get("/v1/processes/p");
    assert_eq!(reply.status, 200);
    let p = &reply.json;
    assert_eq!(p["id"], "p");
    assert_eq!(p["name"], "Nightly import");
    assert_eq!(p["process_type"], "invoice-import");
    assert_eq!(p["correlation_id"], "tenant-42/order-9");
    assert_eq!(p["attributes"], json!({"stage": "copy", "tenant": "42"}));
    assert_eq!(p["event_count"], 7);
    assert_eq!(p["duration_ms"], Value::Null);
    assert_eq!(p["task_counts"], json!({"running": 2, "succeeded": 1}));
    let ids: Vec<&str> = p["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["zeta", "alpha", "mid"]);
    assert_eq!(
        p["tasks"][2]["progress"],
        json!({"percent": 40.0, "current": 4, "total": 10, "message": "4 of 10 files"})
    );
    assert_eq!(p["tasks"][0]["name"], "Step zeta");
    let missing = client.get("/v1/processes/nope");
    assert_eq!(
        (missing.status, missing.json["code"].as_str()),
        (404, Some("not_found"))
    );
}

/// Makes `count` processes with types, correlations and statuses that vary
/// by index; returns the expected status of each.
fn populate(client: &Client, count: usize) -> HashMap<String, (String, &'static str, String)> {
    let mut expected = HashMap::new();
    let chunk: Vec<Value> = (0..count)
        .flat_map(|i| {
            let id = format!("proc-{i:04}");
            let kind = if i % 3 == 0 { "import" } else { "export" };
            let correlation = format!("tenant-{}", i % 5);
            let mut events = vec![with(
                event("process.queued", &id),
                json!({"process_type": kind, "correlation_id": correlation}),
            )];
            let status = match i % 4 {
                0 => "pending",
                1 => {
                    events.push(event("process.started", &id));
                    "running"
                }
                2 => {
                    events.push(event("process.succeeded", &id));
                    "succeeded"
                }
                _ => {
                    events.push(event("process.failed", &id));
                    "failed"
                }
            };
            expected.insert(id, (kind.to_owned(), status, correlation));
            events
        })
        .collect();
    // One process per request would be slow to set up; batches keep it quick
    // and creation order is array order.
    for batch in chunk.chunks(500) {
        let reply = client.post(&Value::Array(batch.to_vec()));
        assert_eq!(reply.json["rejected"], 0, "{}", reply.text);
    }
    expected
}

fn walk(client: &Client, query: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/processes?{query}&cursor={c}"),
            None => format!("/v1/processes?{query}"),
        };
        let reply = client.get(&path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        for item in reply.json["items"].as_array().unwrap() {
            assert!(item.get("tasks").is_none(), "lists leave tasks out");
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match reply.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
}

#[test]
fn a_cursor_walk_sees_every_matching_process_once_newest_first() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let expected = populate(&client, 300);
    let all = walk(&client, "limit=7");
    assert_eq!(all.len(), 300);
    let mut newest_first: Vec<String> = expected.keys().cloned().collect();
    newest_first.sort();
    newest_first.reverse();
    assert_eq!(all, newest_first, "newest created first, each once");

    let check = |query: &str, keep: &dyn Fn(&(String, &str, String)) -> bool| {
        let got = walk(&client, query);
        let unique: BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{query}: a process shown twice");
        let mut want: Vec<String> = expected
            .iter()
            .filter(|(_, v)| keep(v))
            .map(|(k, _)| k.clone())
            .collect();
        want.sort();
        want.reverse();
        assert_eq!(got, want, "{query}");
    };
    check("status=running,failed&limit=11", &|(_, s, _)| {
        *s == "running" || *s == "failed"
    });
    check("status=pending", &|(_, s, _)| *s == "pending");
    check("process_type=import&limit=13", &|(k, _, _)| k == "import");
    check("correlation_id=tenant-3&limit=4", &|(_, _, c)| {
        c == "tenant-3"
    });
    check("process_type=export&status=succeeded&limit=9", &|(
        k,
        s,
        _,
    )| {
        k == "export" && *s == "succeeded"
    });
    check(
        "correlation_id=tenant-1&status=pending,running&process_type=import&limit=2",
        &|(k, s, c)| c == "tenant-1" && k == "import" && (*s == "pending" || *s == "running"),
    );
}

#[test]
fn a_walk_that_began_does_not_show_processes_created_after_it() {
    let daemon = Daemon::start();
    let client = daemon.client();
    populate(&client, 30);
    let first = client.get("/v1/processes?limit=10").json;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    client.post(&event("process.started", "newcomer"));
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let page = client
            .get(&format!("/v1/processes?limit=10&cursor={c}"))
            .json;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned()),
        );
        next = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 30);
    assert!(!seen.contains(&"newcomer".to_owned()));
}

#[test]
fn created_after_and_before_bound_the_list() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.started", "early"));
    let early_created = client.get("/v1/processes/early").json["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    // Wait until the server clock has moved past the first creation.
    let mut later_created = early_created.clone();
    let mut n = 0;
    while later_created == early_created {
        n += 1;
        let id = format!("late-{n}");
        client.post(&event("process.started", &id));
        later_created = client.get(&format!("/v1/processes/{id}")).json["created_at"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let after = walk(&client, &format!("created_after={early_created}"));
    assert!(!after.contains(&"early".to_owned()));
    assert!(after.contains(&format!("late-{n}")));
    let before = walk(&client, &format!("created_before={later_created}"));
    assert!(before.contains(&"early".to_owned()));
    assert!(!before.contains(&format!("late-{n}")));
    let status_and_before = walk(
        &client,
        &format!("status=running&created_before={later_created}"),
    );
    assert_eq!(status_and_before, before);
}

#[test]
fn bad_list_parameters_are_400_naming_the_parameter() {
    let daemon = Daemon::start();
    let client = daemon.client();
    for (query, field) in [
        ("status=done", "status"),
        ("status=skipped", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("created_after=yesterday", "created_after"),
        ("cursor=garbage", "cursor"),
        ("sort=name", "sort"),
    ] {
        let reply = client.get(&format!("/v1/processes?{query}"));
        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.json["field"], field, "{query}");
    }
    assert_eq!(client.get("/v1/processes?limit=1000").status, 200);
}

#[test]
fn history_is_in_seq_order_with_paging() {
    let daemon = Daemon::start();
    let client = daemon.client();
    for i in 0..25 {
        client.post(&with(
            event("process.progress", "p"),
            json!({"event_id": format!("e{i}"), "progress": {"current": i, "total": 25}}),
        ));
        client.post(&event("process.heartbeat", "noise"));
    }
    let mut seqs = Vec::new();
    let mut cursor = String::new();
    loop {
        let reply = client.get(&format!("/v1/processes/p/history?limit=10{cursor}"));
        assert_eq!(reply.status, 200);
        for item in reply.json["items"].as_array().unwrap() {
            assert_eq!(item["type"], "process.progress");
            assert_eq!(item["event_id"], format!("e{}", seqs.len()));
            assert_eq!(item["progress"]["current"], seqs.len());
            seqs.push(item["seq"].as_u64().unwrap());
        }
        match reply.json["next_cursor"].as_str() {
            Some(next) => cursor = format!("&after_seq={next}"),
            None => break,
        }
    }
    assert_eq!(seqs.len(), 25);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let after = client
        .get(&format!("/v1/processes/p/history?after_seq={}", seqs[20]))
        .json;
    assert_eq!(after["items"].as_array().unwrap().len(), 4);
    assert_eq!(client.get("/v1/processes/none/history").status, 404);
    assert_eq!(
        client.get("/v1/processes/p/history?after_seq=x").status,
        400
    );
}

#[test]
fn stats_count_processes_by_status_and_events() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&event("process.queued", "a"));
    client.post(&event("process.started", "b"));
    client.post(&event("process.succeeded", "b"));
    client.post(&event("process.succeeded", "b"));
    client.post(&event("process.failed", "b"));
    let mut stats = client.get("/v1/stats").json;
    // The store's id is its own (tests/it/admin.rs follows it); the rest is
    // what the events made.
    let store_id = stats.as_object_mut().unwrap().remove("store_id").unwrap();
    assert!(
        uuid::Uuid::parse_str(store_id.as_str().unwrap()).is_ok(),
        "{store_id}"
    );
    assert_eq!(
        stats,
        json!({"processes": {"pending": 1, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0, "timed_out": 0},
               "stalled": 0, "processes_total": 2, "events_total": 4, "last_seq": 4})
    );
}

#[test]
fn probes_answer_and_unknown_routes_are_problems() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(client.get("/livez").status, 200);
    assert_eq!(client.get("/readyz").status, 200);
    assert_eq!(client.get("/healthz").status, 200);
    let unknown = client.get("/v2/whatever");
    assert_eq!(
        (unknown.status, unknown.json["code"].as_str()),
        (404, Some("not_found"))
    );
    let wrong_method = client.get("/v1/events");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST, OPTIONS"));
}
