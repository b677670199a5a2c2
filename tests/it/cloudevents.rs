//! CloudEvents 1.0 over HTTP, built by the official Python SDK
//! (`tests/cloudevents/build.py`): structured, batch and binary modes, a
//! redelivery, malformed ones, and the validation handshake as Azure Event
//! Grid sends it.

use crate::support::{now_secs, python, sign, Client, Daemon, DaemonOptions, Reply};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// One HTTP message as the SDK made it.
#[derive(Clone, Debug)]
struct Message {
    headers: Vec<(String, String)>,
    body: String,
}

impl Message {
    fn post(&self, client: &Client) -> Reply {
        client.send("POST", "/v1/events", &self.headers, self.body.as_bytes())
    }

    fn without_header(mut self, name: &str) -> Message {
        self.headers
            .retain(|(known, _)| !known.eq_ignore_ascii_case(name));
        self
    }

    fn with_header(mut self, name: &str, value: &str) -> Message {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Has the SDK build each request of `requests` (see build.py).
fn build(requests: Value) -> Vec<Message> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloudevents/build.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs; .ci/test installs cloudevents into target/ci-venv");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "build.py failed");
    let messages: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    messages
        .into_iter()
        .map(|message| Message {
            headers: message["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
                .collect(),
            body: message["body"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn one(mode: &str, attributes: Value, data: Value) -> Message {
    build(json!([{"mode": mode, "events": [{"attributes": attributes, "data": data}]}])).remove(0)
}

fn history(client: &Client, process_id: &str) -> Vec<Value> {
    let reply = client.get(&format!("/v1/processes/{process_id}/history?limit=1000"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json["items"].as_array().unwrap().clone()
}

#[test]
fn cloudevents_from_the_sdk_become_events_in_all_three_modes() {
    let (daemon, _config) =
        Daemon::with_config("[cloudevents]\ntype_prefix = \"com.example.pm.\"\n");
    let client = daemon.client();
    let source = "/orchestrators/nightly";

    let started = one(
        "structured",
        json!({"type": "com.example.pm.process.started", "source": source, "subject": "run-1"}),
        json!({"name": "Nightly import", "process_type": "import", "attributes": {"tenant": "t1"}}),
    );
    let reply = started.post(&client);
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json["result"], "accepted");

    // Binary mode, and a type without the prefix: both are accepted.
    let task = one(
        "binary",
        json!({"type": "task.started", "source": source, "subject": "run-1", "datacontenttype": "application/json"}),
        json!({"task_id": "extract", "name": "Extract"}),
    );
    assert!(task.headers.iter().any(|(name, _)| name == "ce-type"));
    let reply = task.post(&client);
    assert_eq!(reply.status, 202, "{}", reply.text);

    let batch = build(json!([{"mode": "batch", "events": [
        {"attributes": {"type": "com.example.pm.task.progress", "source": source, "subject": "run-1"},
         "data": {"task_id": "extract", "progress": {"percent": 50, "message": "half"}}},
        {"attributes": {"type": "com.example.pm.task.succeeded", "source": source, "subject": "run-1"},
         "data": {"task_id": "extract"}},
        {"attributes": {"type": "com.example.pm.process.succeeded", "source": source, "subject": "run-1"}, "data": null},
    ]}]))
    .remove(0);
    let reply = batch.post(&client);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 3, "{}", reply.text);
    assert_eq!(reply.json["rejected"], 0);

    let process = client.get("/v1/processes/run-1");
    assert_eq!(process.status, 200);
    assert_eq!(process.json["status"], "succeeded");
    assert_eq!(process.json["name"], "Nightly import");
    assert_eq!(process.json["process_type"], "import");
    assert_eq!(process.json["attributes"]["tenant"], "t1");
    let task = &process.json["tasks"][0];
    assert_eq!(task["id"], "extract", "{}", process.text);
    assert_eq!(task["name"], "Extract");
    assert_eq!(task["status"], "succeeded");
    // `id` is the event id; `time` is when it occurred.
    let history = history(&client, "run-1");
    assert_eq!(history.len(), 5);
    let first: Value = serde_json::from_str(&started.body).unwrap();
    assert_eq!(history[0]["event_id"], first["id"]);
    let sent_at = first["time"].as_str().unwrap();
    assert_eq!(
        history[0]["occurred_at"].as_str().unwrap()[..19],
        sent_at[..19]
    );
}

#[test]
fn a_cloudevent_redelivered_is_a_duplicate_in_every_mode() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let source = "/grid";
    let messages = [
        one(
            "structured",
            json!({"type": "process.started", "source": source, "subject": "again"}),
            json!({"name": "n"}),
        ),
        one(
            "binary",
            json!({"type": "task.started", "source": source, "subject": "again"}),
            json!({"task_id": "t"}),
        ),
    ];
    for message in &messages {
        let first = message.post(&client);
        assert_eq!(first.status, 202, "{}", first.text);
        let again = message.post(&client);
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.json["result"], "duplicate");
        assert_eq!(again.json["seq"], first.json["seq"]);
    }
    let batch = build(json!([{"mode": "batch", "events": [
        {"attributes": {"type": "task.succeeded", "source": source, "subject": "again"}, "data": {"task_id": "t"}},
        {"attributes": {"type": "process.succeeded", "source": source, "subject": "again"}},
    ]}]))
    .remove(0);
    assert_eq!(batch.post(&client).json["accepted"], 2);
    let again = batch.post(&client);
    assert_eq!(again.json["duplicates"], 2, "{}", again.text);
    assert_eq!(history(&client, "again").len(), 4);
}

/// A CloudEvents batch with a refused item: its valid items are stored and
/// the batch is a 400 listing each item's result, so that a sender which
/// sees only the status (Event Grid) keeps it (dead-letters it) instead of
/// counting it as delivered; sent again, it stores nothing twice. A plain
/// batch with the same items is still a 200.
#[test]
fn a_cloudevents_batch_with_a_refused_item_is_a_400_that_stores_the_rest_once() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let source = "/grid";
    let batch = build(json!([{"mode": "batch", "events": [
        {"attributes": {"type": "process.started", "source": source, "subject": "mixed"}},
        // Refused: a task event without its task.
        {"attributes": {"type": "task.started", "source": source, "subject": "mixed"}},
        {"attributes": {"type": "process.succeeded", "source": source, "subject": "mixed"}},
    ]}]))
    .remove(0);
    let reply = batch.post(&client);
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        (
            reply.json["accepted"].as_u64(),
            reply.json["rejected"].as_u64()
        ),
        (Some(2), Some(1)),
        "{}",
        reply.text
    );
    let results = reply.json["results"].as_array().unwrap();
    assert_eq!(results[1]["result"], "rejected");
    assert_eq!(results[1]["error"]["status"], 422, "{}", reply.text);
    assert_eq!(
        client.get("/v1/processes/mixed").json["status"],
        "succeeded"
    );
    // A redelivery of the same batch stores nothing twice.
    let again = batch.post(&client);
    assert_eq!(again.status, 400, "{}", again.text);
    assert_eq!(again.json["duplicates"], 2, "{}", again.text);
    assert_eq!(history(&client, "mixed").len(), 2);
    // A conflict is refused as well.
    let conflict = build(json!([{"mode": "batch", "events": [
        {"attributes": {"type": "process.failed", "source": source, "subject": "mixed"}},
    ]}]))
    .remove(0);
    assert_eq!(conflict.post(&client).status, 400);
    // All of them good: 200.
    let good = build(json!([{"mode": "batch", "events": [
        {"attributes": {"type": "process.started", "source": source, "subject": "fine"}},
    ]}]))
    .remove(0);
    assert_eq!(good.post(&client).status, 200);
    // A plain JSON batch with a refused item keeps its 200.
    let plain = client.post(&json!([
        {"type": "process.started", "process_id": "plain"},
        {"type": "task.started", "process_id": "plain"},
    ]));
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(plain.json["rejected"], 1);
}

#[test]
fn a_malformed_cloudevent_is_refused_by_name_and_nothing_is_stored() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let attributes = json!({"type": "process.started", "source": "/s", "subject": "never"});
    let refused = |reply: Reply, status: u16, field: Option<&str>| {
        assert_eq!(reply.status, status, "{}", reply.text);
        if let Some(field) = field {
            assert_eq!(reply.json["field"], field, "{}", reply.text);
        }
    };

    // Without specversion.
    let mut structured = one("structured", attributes.clone(), json!({}));
    let mut body: Value = serde_json::from_str(&structured.body).unwrap();
    body.as_object_mut().unwrap().remove("specversion");
    structured.body = body.to_string();
    refused(structured.post(&client), 422, Some("specversion"));
    let binary = one("binary", attributes.clone(), json!({})).without_header("ce-specversion");
    refused(binary.post(&client), 422, Some("ce-specversion"));

    // A type this API does not know.
    let unknown = json!({"type": "com.example.order.created", "source": "/s", "subject": "never"});
    let reply = one("structured", unknown.clone(), json!({})).post(&client);
    refused(reply.clone(), 422, Some("type"));
    assert!(reply.json["detail"]
        .as_str()
        .unwrap()
        .contains("process.started"));
    refused(
        one("binary", unknown, json!({})).post(&client),
        422,
        Some("ce-type"),
    );

    // Data that is not JSON.
    let text = json!({"type": "process.started", "source": "/s", "subject": "never", "datacontenttype": "text/plain"});
    refused(
        one("structured", text.clone(), json!("hello")).post(&client),
        422,
        Some("datacontenttype"),
    );
    let reply = one("binary", text, json!("hello")).post(&client);
    refused(reply.clone(), 415, None);
    assert_eq!(reply.json["code"], "unsupported_media_type");

    // The process id is the subject; data cannot give it again.
    let reply = one(
        "structured",
        json!({"type": "process.started", "source": "/s"}),
        json!({"process_id": "never"}),
    )
    .post(&client);
    refused(reply, 422, Some("subject"));

    // A structured event sent as a batch, and the other way round.
    let single = one("structured", attributes.clone(), json!({}));
    let as_batch = single
        .clone()
        .without_header("content-type")
        .with_header("content-type", "application/cloudevents-batch+json");
    refused(as_batch.post(&client), 422, Some("body"));

    assert_eq!(client.get("/v1/processes/never").status, 404);
    let feed = client.get("/v1/changes?after_seq=0");
    assert_eq!(feed.json["items"], json!([]), "{}", feed.text);
}

#[test]
fn the_validation_handshake_is_answered_as_event_grid_expects() {
    // Tokens on: the handshake needs none (Event Grid sends none with it).
    let (daemon, _config) = Daemon::with_config(
        "[auth]\ningest_tokens = [\"ingest-secret\"]\n[cloudevents]\nallowed_origins = [\"eventgrid.azure.net\"]\n",
    );
    let client = daemon.client();
    let header = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    };
    // What Event Grid sends when a CloudEvents 1.0 subscription is made.
    let reply = client.send(
        "OPTIONS",
        "/v1/events",
        &header(&[("WebHook-Request-Origin", "eventgrid.azure.net")]),
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.header("webhook-allowed-origin"),
        Some("eventgrid.azure.net")
    );
    assert_eq!(reply.header("webhook-allowed-rate"), Some("*"));
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
    // A sender that asks for a rate and offers a callback.
    let reply = client.send(
        "OPTIONS",
        "/v1/events",
        &header(&[
            ("WebHook-Request-Origin", "eventgrid.azure.net"),
            ("WebHook-Request-Rate", "120"),
            (
                "WebHook-Request-Callback",
                "https://example.invalid/validate?code=1",
            ),
        ]),
        b"",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("webhook-allowed-rate"), Some("*"));
    // An origin not in cloudevents.allowed_origins.
    let reply = client.send(
        "OPTIONS",
        "/v1/events",
        &header(&[("WebHook-Request-Origin", "events.example.org")]),
        b"",
    );
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json["code"], "origin_not_allowed");
    assert_eq!(reply.header("webhook-allowed-origin"), None);
    // A plain OPTIONS says what the resource allows.
    let reply = client.send("OPTIONS", "/v1/events", &[], b"");
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
    // Delivery itself still needs the token.
    let message = one(
        "structured",
        json!({"type": "process.started", "source": "/s", "subject": "p"}),
        json!({}),
    );
    assert_eq!(message.post(&client).status, 401);
    let with_token = client_with_token(&daemon, "ingest-secret");
    assert_eq!(message.post(&with_token).status, 202);
}

fn client_with_token(daemon: &Daemon, token: &str) -> Client {
    daemon.client().with_token(token)
}

#[test]
fn with_signing_on_a_cloudevent_must_be_signed_like_any_event() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_WEBHOOK_SECRETS", SECRET));
    let client = daemon.client();
    let message = one(
        "binary",
        json!({"type": "process.started", "source": "/s", "subject": "signed"}),
        json!({"name": "n"}),
    );
    let reply = message.post(&client);
    assert_eq!(reply.status, 401, "{}", reply.text);
    let now = now_secs();
    let signed = message
        .clone()
        .with_header("webhook-id", "msg_ce_1")
        .with_header("webhook-timestamp", &now.to_string())
        .with_header(
            "webhook-signature",
            &sign(SECRET, "msg_ce_1", now, &message.body),
        );
    let reply = signed.post(&client);
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(client.get("/v1/processes/signed").json["name"], "n");
}
