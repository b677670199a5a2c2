//! Where the daemon once strayed from its contract (found by Schemathesis
//! and by hand): each test pins the behaviour the contract asks for.

use crate::support::{event, raw_exchange, with, Daemon};
use serde_json::json;

#[test]
fn head_is_answered_wherever_get_is_without_a_body() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(client.post(&event("process.started", "p")).status, 202);
    for path in [
        "/livez",
        "/readyz",
        "/v1/processes",
        "/v1/processes/p",
        "/v1/processes/p/history",
        "/v1/stats",
    ] {
        let answer = raw_exchange(
            daemon.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{path}: {head}"
        );
        assert_eq!(body, "", "{path}: a HEAD answer has no body");
    }
    let refused = client.delete("/v1/stats");
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
}

#[test]
fn json_answers_end_with_a_newline() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let accepted = client.post(&event("process.started", "p"));
    assert!(accepted.text.ends_with("}\n"), "{:?}", accepted.text);
    let problem = client.get("/v1/processes/missing");
    assert_eq!(problem.status, 404);
    assert!(problem.text.ends_with("}\n"), "{:?}", problem.text);
}

#[test]
fn an_empty_status_filter_is_400_not_everything() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(client.post(&event("process.started", "p")).status, 202);
    for query in ["status=", "status=running,", "status=,failed"] {
        let reply = client.get(&format!("/v1/processes?{query}"));
        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.json["field"], "status", "{query}");
    }
}

#[test]
fn whole_numbers_written_as_floats_are_whole_numbers() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let reply = client.post(&with(
        event("process.progress", "p"),
        json!({"progress": {"current": 4.0, "total": 10.0}}),
    ));
    assert_eq!(reply.status, 202, "{}", reply.text);
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["progress"]["current"], 4);
    assert_eq!(process["progress"]["total"], 10);
    let fractional = client.post(&with(
        event("process.progress", "q"),
        json!({"progress": {"current": 4.5}}),
    ));
    assert_eq!(fractional.status, 422, "{}", fractional.text);
    assert_eq!(fractional.json["field"], "progress.current");
}

#[test]
fn times_outside_years_0000_to_9999_in_utc_are_422() {
    let daemon = Daemon::start();
    let client = daemon.client();
    // Valid RFC 3339, but in UTC one falls in year -1 and one in 10000.
    for at in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
        let reply = client.post(&with(
            event("process.started", "p"),
            json!({"occurred_at": at}),
        ));
        assert_eq!(reply.status, 422, "{at}: {}", reply.text);
        assert_eq!(reply.json["field"], "occurred_at");
        let listed = client.get(&format!(
            "/v1/processes?created_after={}",
            at.replace('+', "%2B")
        ));
        assert_eq!(listed.status, 400, "{at}: {}", listed.text);
    }
    // The edges themselves are fine, and shown as written.
    let edge = client.post(&with(
        event("process.started", "p"),
        json!({"occurred_at": "9999-12-31T23:59:59.999Z"}),
    ));
    assert_eq!(edge.status, 202, "{}", edge.text);
    assert_eq!(
        client.get("/v1/processes/p").json["updated_at"],
        "9999-12-31T23:59:59.999Z"
    );
}

#[test]
fn a_bad_idempotency_header_never_outranks_malformed_json_and_never_touches_a_batch() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let bad_key = [("idempotency-key", "caf\u{e9}")];
    let malformed = client.post_raw("{\"type\":", &bad_key);
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert_eq!(malformed.json["code"], "malformed_json");
    // A single event without event_id: the header is its key, and judged.
    let single = client.post_raw(&event("process.started", "p").to_string(), &bad_key);
    assert_eq!(single.status, 422, "{}", single.text);
    assert_eq!(single.json["field"], "event_id");
    assert!(
        single.json["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{}",
        single.text
    );
    // With its own event_id, the header is not used, so not judged.
    let keyed = client.post_raw(
        &with(event("process.started", "p"), json!({"event_id": "e1"})).to_string(),
        &bad_key,
    );
    assert_eq!(keyed.status, 202, "{}", keyed.text);
    // A batch's items take no key from the header.
    let batch = client.post_raw(
        &json!([
            event("process.progress", "p"),
            event("process.progress", "p")
        ])
        .to_string(),
        &bad_key,
    );
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(batch.json["accepted"], 2, "{}", batch.text);
}

#[test]
fn ids_in_paths_follow_the_rule_for_ids_with_a_400() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let long = "x".repeat(10_000);
    for path in [
        format!("/v1/processes/{long}"),
        format!("/v1/processes/{long}/history"),
        "/v1/processes/a%20b".to_owned(),
    ] {
        let reply = client.get(&path);
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.json["field"], "process_id");
        assert!(reply.text.len() < 1000, "the answer does not echo the id");
    }
    let deleted = client.delete(&format!("/v1/processes/{long}"));
    assert_eq!(deleted.status, 400, "{}", deleted.text);
}

#[test]
fn ids_in_paths_are_percent_decoded_and_a_path_that_is_not_utf8_is_a_problem() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(client.post(&event("process.started", "run:1")).status, 202);
    let encoded = client.get("/v1/processes/run%3A1");
    assert_eq!(encoded.status, 200, "{}", encoded.text);
    assert_eq!(encoded.json["id"], "run:1");
    let history = client.get("/v1/processes/run%3a1/history");
    assert_eq!(history.status, 200, "{}", history.text);
    let not_utf8 = client.get("/v1/processes/%FF%FE");
    assert_eq!(not_utf8.status, 400, "{}", not_utf8.text);
    assert_eq!(
        not_utf8.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(not_utf8.json["field"], "path");
}
