//! Finding and summing: `correlation_id_prefix`, `attr.KEY=VALUE` on the
//! keys of `index.attributes` (indexed at start when added, dropped when
//! removed), and `GET /v1/stats/durations` from the writer's summaries.

use crate::support::{event, with, Client, Daemon, DaemonOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn post_batch(client: &Client, events: &[Value]) {
    for chunk in events.chunks(500) {
        let reply = client.post_raw(&Value::Array(chunk.to_vec()).to_string(), &[]);
        assert!(reply.status == 200 || reply.status == 202, "{}", reply.text);
        for result in reply.json["results"].as_array().unwrap() {
            assert_eq!(result["result"], "accepted", "{result}");
        }
    }
}

/// Every process id a listing returns, following its cursor page by page.
fn list_all(client: &Client, query: &str, page: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/processes?{query}&limit={page}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = client.get(&path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let items = reply.json["items"].as_array().unwrap();
        assert!(items.len() <= page);
        ids.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match reply.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[test]
fn correlation_prefix_finds_exactly_the_ids_that_start_with_it_newest_first() {
    let daemon = Daemon::start();
    let client = daemon.client();
    // Ids of every length around the indexed prefix lengths, a multi-byte
    // character across a cut, and a status to combine with.
    let mut events = Vec::new();
    let mut all = Vec::new();
    for n in 0..300 {
        let correlation = match n % 4 {
            0 => format!("order-{n}"),
            1 => format!("tenant-ü/order-{n}"),
            2 => format!("o{n}"),
            _ => format!("order-{}", n * 1_000_003),
        };
        let id = format!("p{n:03}");
        let kind = if n % 3 == 0 {
            "process.succeeded"
        } else {
            "process.started"
        };
        events.push(with(
            event(kind, &id),
            json!({"correlation_id": correlation}),
        ));
        all.push((id, correlation, kind == "process.succeeded"));
    }
    post_batch(&client, &events);
    // Newest first: the ids in reverse order of creation.
    let expected = |prefix: &str, succeeded_only: bool| -> Vec<String> {
        all.iter()
            .rev()
            .filter(|(_, c, done)| c.starts_with(prefix) && (!succeeded_only || *done))
            .map(|(id, _, _)| id.clone())
            .collect()
    };
    for prefix in [
        "o",
        "or",
        "order-",
        "order-1",
        "order-12",
        "order-120",
        "order-2000006",
        "tenant-ü",
        "tenant-ü/order-1",
        "tenant-",
        "t",
        "ü",
        "nothing",
    ] {
        let query = format!("correlation_id_prefix={}", encode(prefix));
        assert_eq!(
            list_all(&client, &query, 7),
            expected(prefix, false),
            "{prefix}"
        );
        let query = format!("{query}&status=succeeded");
        assert_eq!(
            list_all(&client, &query, 5),
            expected(prefix, true),
            "{prefix}"
        );
    }
    // With the exact id too, and a created window that holds nothing.
    let reply = client.get("/v1/processes?correlation_id_prefix=order-&correlation_id=order-4");
    let ids: Vec<&str> = reply.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p004"]);
    let reply = client
        .get("/v1/processes?correlation_id_prefix=order-&created_before=2000-01-01T00:00:00Z");
    assert_eq!(reply.json["items"], json!([]));
    let reply = client.get("/v1/processes?correlation_id_prefix=");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["code"], "invalid_query");
    assert_eq!(reply.json["field"], "correlation_id_prefix");

    // A process whose correlation id changes is found by the new one only.
    let reply = client.post(&with(
        event("process.progress", "p001"),
        json!({"correlation_id": "moved-1"}),
    ));
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(
        list_all(&client, "correlation_id_prefix=moved", 10),
        ["p001"]
    );
    assert!(!list_all(&client, "correlation_id_prefix=tenant-", 10).contains(&"p001".to_owned()));
}

#[test]
fn attribute_filters_walk_the_index_combine_and_follow_changes() {
    let (daemon, _config) = Daemon::with_config("[index]\nattributes = [\"tenant\", \"region\"]\n");
    let client = daemon.client();
    let mut events = Vec::new();
    for n in 0..120 {
        let attributes = json!({
            "tenant": format!("t{}", n % 3),
            "region": if n % 2 == 0 { "eu" } else { "us" },
            "unindexed": "x",
        });
        let kind = if n % 5 == 0 {
            "process.failed"
        } else {
            "process.started"
        };
        events.push(with(
            event(kind, &format!("p{n:03}")),
            json!({"attributes": attributes, "process_type": if n % 4 == 0 { "etl" } else { "report" }}),
        ));
    }
    post_batch(&client, &events);
    let expect = |keep: &dyn Fn(u32) -> bool| -> Vec<String> {
        (0..120u32)
            .rev()
            .filter(|n| keep(*n))
            .map(|n| format!("p{n:03}"))
            .collect()
    };
    assert_eq!(
        list_all(&client, "attr.tenant=t1", 9),
        expect(&|n| n % 3 == 1)
    );
    assert_eq!(
        list_all(&client, "attr.tenant=t1&attr.region=eu", 4),
        expect(&|n| n % 3 == 1 && n % 2 == 0)
    );
    assert_eq!(
        list_all(&client, "attr.tenant=t2&status=failed&process_type=etl", 2),
        expect(&|n| n % 3 == 2 && n % 5 == 0 && n % 4 == 0)
    );
    assert!(list_all(&client, "attr.tenant=t9", 10).is_empty());

    // A changed value moves the process; a removed process leaves.
    client.post(&with(
        event("process.progress", "p001"),
        json!({"attributes": {"tenant": "t0"}}),
    ));
    let t0 = list_all(&client, "attr.tenant=t0", 50);
    assert_eq!(t0.first().map(String::as_str), Some("p117"));
    assert!(t0.contains(&"p001".to_owned()));
    assert!(!list_all(&client, "attr.tenant=t1", 50).contains(&"p001".to_owned()));
    let admin = daemon.client();
    let removed = admin.delete("/v1/processes/p001");
    assert!(
        removed.status == 200 || removed.status == 204,
        "{}",
        removed.text
    );
    assert!(!list_all(&client, "attr.tenant=t0", 50).contains(&"p001".to_owned()));

    // A key the configuration does not index is refused, by name.
    let reply = client.get("/v1/processes?attr.unindexed=x");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["code"], "attribute_not_indexed");
    assert_eq!(reply.json["field"], "attr.unindexed");
    assert!(reply.json["detail"].as_str().unwrap().contains("tenant"));
    let reply = client.get("/v1/processes?attr.tenant=t0&attr.tenant=t1");
    assert_eq!(reply.status, 400);
}

#[test]
fn while_a_new_key_is_indexed_readyz_and_the_api_answer_503() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_with(DaemonOptions::default().data_dir(&data));
    let client = daemon.client();
    // Enough processes that indexing them takes a good part of a second,
    // against the millisecond a request takes.
    for chunk in 0..60 {
        let events: Vec<Value> = (0..1000)
            .map(|n| {
                with(
                    event("process.started", &format!("p{chunk}-{n}")),
                    json!({"attributes": {"team": format!("team{}", n % 7)}}),
                )
            })
            .collect();
        post_batch(&client, &events);
    }
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(&data)
            .env("PM_INDEX_ATTRIBUTES", "team")
            .env("PM_PROGRESS_EVERY_MS", "1")
            .without_waiting_for_ready(),
    );
    let client = daemon.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !daemon.output().contains("indexing attribute keys") {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.output());
        std::thread::yield_now();
    }
    let readyz = client.get("/readyz");
    let listed = client.get("/v1/processes?attr.team=team1");
    // Asked while the log had not yet said the index was built.
    let still_indexing = !daemon.output().contains("attribute keys indexed");
    assert!(still_indexing, "indexing ended before it could be asked");
    assert_eq!(readyz.status, 503, "{}", readyz.text);
    assert_eq!(listed.status, 503, "{}", listed.text);
    daemon.wait_ready();
    // The log said how far the indexing had got, up to every process.
    let counts = crate::support::progress_counts(&daemon.output(), "indexing attributes");
    assert!(counts.len() >= 2, "{}", daemon.output());
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{counts:?}"
    );
    assert_eq!(counts.last(), Some(&60_000), "{counts:?}");
    let found = list_all(&client, "attr.team=team1", 1000);
    assert_eq!(found.len(), 60 * (0..1000).filter(|n| n % 7 == 1).count());
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
}

#[test]
fn a_key_added_to_the_index_is_indexed_at_start_and_a_key_removed_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |keys: &str| {
        Daemon::start_with(
            DaemonOptions::default()
                .data_dir(&data)
                .env("PM_INDEX_ATTRIBUTES", keys),
        )
    };
    let daemon = start("");
    let client = daemon.client();
    let events: Vec<Value> = (0..50)
        .map(|n| {
            with(
                event("process.started", &format!("p{n:02}")),
                json!({"attributes": {"team": format!("team{}", n % 2)}}),
            )
        })
        .collect();
    post_batch(&client, &events);
    assert_eq!(
        client.get("/v1/processes?attr.team=team1").json["code"],
        "attribute_not_indexed"
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let daemon = start("team");
    let client = daemon.client();
    let expected: Vec<String> = (0..50)
        .rev()
        .filter(|n| n % 2 == 1)
        .map(|n| format!("p{n:02}"))
        .collect();
    assert_eq!(list_all(&client, "attr.team=team1", 10), expected);
    // Indexed before the store was served: progress in the log, then ready.
    let log = daemon.output();
    let indexing = log.find("indexing attribute keys").expect(&log);
    let indexed = log.find("attribute keys indexed").expect(&log);
    let ready = log.find("ready: the store is open").expect(&log);
    assert!(indexing < indexed && indexed < ready, "{log}");
    // New events are indexed as they come.
    client.post(&with(
        event("process.started", "late"),
        json!({"attributes": {"team": "team1"}}),
    ));
    assert_eq!(
        list_all(&client, "attr.team=team1", 10)
            .first()
            .map(String::as_str),
        Some("late")
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let daemon = start("");
    let log = daemon.output();
    assert!(log.contains("dropped from the index"), "{log}");
    assert_eq!(
        daemon.client().get("/v1/processes?attr.team=team1").json["code"],
        "attribute_not_indexed"
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    // Added again: every process found again, none twice.
    let daemon = start("team");
    let found = list_all(&daemon.client(), "attr.team=team1", 100);
    assert_eq!(found.len(), expected.len() + 1);
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    // Every index entry where the records say, and none more.
    crate::support::assert_store_verifies(&data);
    // `inspect list` filters the same way.
    let inspect = |args: &[&str]| {
        crate::support::command()
            .arg("inspect")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let listed = inspect(&["list", "--attr", "team=team1", "--limit", "100", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), found.len());
    let listed = inspect(&["list", "--correlation-prefix", "none-such", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&listed.stdout).unwrap()["items"],
        json!([])
    );
    let refused = inspect(&["list", "--attr", "colour=red"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not index `colour`"));
}

/// The exact quantile as DDSketch ranks it: the value at rank
/// floor(q * (n - 1)) of the sorted values.
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64) as usize]
}

#[test]
fn duration_percentiles_are_within_one_percent_of_the_exact_values() {
    let daemon = Daemon::start();
    let client = daemon.client();
    // Random durations (a fixed seed), from 5 ms to about 3 hours, over two
    // types and every terminal status, ending across two days.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Four days back: ends are kept to the minute for a week, and none of
    // these ends within the last day.
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let base = now - 4 * 86_400_000;
    let statuses = [
        "process.succeeded",
        "process.failed",
        "process.cancelled",
        "process.timed_out",
    ];
    let mut exact_by_type: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut events = Vec::new();
    for n in 0..4_000 {
        let kind = if n % 3 == 0 { "etl" } else { "report" };
        let started = base + (next() % (2 * 86_400_000)) as i64;
        // Log-uniform: every order of magnitude is exercised.
        let exponent = (next() % 10_000) as f64 / 10_000.0 * 6.3;
        let duration = (5.0 * 10f64.powf(exponent)) as i64;
        let end = statuses[(next() % 4) as usize];
        let id = format!("d{n}");
        events.push(with(
            event("process.started", &id),
            json!({"process_type": kind, "occurred_at": millis_text(started)}),
        ));
        events.push(with(
            event(end, &id),
            json!({"occurred_at": millis_text(started + duration)}),
        ));
        exact_by_type.entry(kind).or_default().push(duration as f64);
        *counts.entry((kind, end)).or_default() += 1;
    }
    post_batch(&client, &events);
    let window = format!(
        "finished_after={}&finished_before={}",
        encode(&millis_text(base - 60_000)),
        encode(&millis_text(base + 3 * 86_400_000))
    );
    for (kind, durations) in &mut exact_by_type {
        durations.sort_by(f64::total_cmp);
        let reply = client.get(&format!("/v1/stats/durations?process_type={kind}&{window}"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        let body = &reply.json;
        assert_eq!(body["count"], durations.len() as u64, "{body}");
        for (end, status) in statuses
            .iter()
            .zip(["succeeded", "failed", "cancelled", "timed_out"])
        {
            assert_eq!(
                body["by_status"][status],
                counts.get(&(*kind, *end)).copied().unwrap_or(0),
                "{body}"
            );
        }
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let got = body["duration_ms"][name].as_f64().unwrap();
            let want = exact(durations, q);
            assert!(
                (got - want).abs() <= want * 0.01,
                "{kind} {name}: {got} against exactly {want}"
            );
        }
        assert_eq!(
            body["duration_ms"]["max"].as_f64().unwrap(),
            *durations.last().unwrap()
        );
    }
    // Every type at once, with the same figures.
    let reply = client.get(&format!("/v1/stats/durations?{window}"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let types = reply.json["process_types"].as_object().unwrap();
    assert_eq!(
        types.keys().collect::<Vec<_>>(),
        ["etl", "report"],
        "{}",
        reply.text
    );
    let one = client.get(&format!("/v1/stats/durations?process_type=etl&{window}"));
    assert_eq!(types["etl"]["duration_ms"], one.json["duration_ms"]);
    // `inspect durations` reads the same summaries.
    let inspected = crate::support::command()
        .arg("inspect")
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .args([
            "durations",
            "--since",
            &millis_text(base - 60_000),
            "--until",
            &millis_text(base + 3 * 86_400_000),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["process_types"], reply.json["process_types"]);

    // A window is taken to the minute, and holds only what ended in it.
    let first_hour = format!(
        "finished_after={}&finished_before={}",
        encode(&millis_text(base)),
        encode(&millis_text(base + 3_600_000))
    );
    let reply = client.get(&format!(
        "/v1/stats/durations?process_type=report&{first_hour}"
    ));
    let in_hour = reply.json["count"].as_u64().unwrap();
    assert!(
        in_hour < exact_by_type["report"].len() as u64,
        "{}",
        reply.text
    );
    let minute = 60_000;
    let shown = reply.json["finished_after"].as_str().unwrap();
    let shown =
        time::OffsetDateTime::parse(shown, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(
        shown.unix_timestamp_nanos() / 1_000_000,
        i128::from(base / minute * minute)
    );
    // A start a month back is taken to its hour: minutes are kept a week.
    let reply = client.get(&format!(
        "/v1/stats/durations?process_type=report&finished_after={}",
        encode(&millis_text(now - 30 * 86_400_000 - 7 * minute - 1_000))
    ));
    let shown = reply.json["finished_after"].as_str().unwrap();
    let shown =
        time::OffsetDateTime::parse(shown, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!((shown.minute(), shown.second()), (0, 0), "{}", reply.text);
    assert_eq!(
        reply.json["count"],
        exact_by_type["report"].len(),
        "{}",
        reply.text
    );
    // The default window, the last 24 hours, holds none of these.
    let reply = client.get("/v1/stats/durations?process_type=etl");
    assert_eq!(reply.json["count"], 0, "{}", reply.text);
    assert_eq!(reply.json["duration_ms"], Value::Null);
    // A window that ends before it starts holds nothing.
    let reply = client.get(&format!(
        "/v1/stats/durations?process_type=report&finished_after={}&finished_before={}",
        encode(&millis_text(base + 3 * 86_400_000)),
        encode(&millis_text(base - 60_000))
    ));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["count"], 0, "{}", reply.text);
}

fn millis_text(millis: i64) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap();
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}
