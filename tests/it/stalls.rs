//! Heartbeat timeouts, stalls and deadlines: what the daemon does by
//! itself when a process goes quiet or runs out of time.

use crate::support::{event, task_event, with, Client, Daemon};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn at(text: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(text.as_str().expect("a timestamp"), &Rfc3339).expect("RFC 3339")
}

/// A moment as the daemon writes it: UTC, exactly three digits of
/// milliseconds.
fn rfc3339(moment: OffsetDateTime) -> String {
    moment
        .to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap()
}

/// Waits (by long poll, never by sleeping) for the first feed item of
/// `kind` after `after_seq`.
fn next_of(client: &Client, kind: &str, after_seq: u64) -> Value {
    let mut after = after_seq;
    loop {
        let page = client.get(&format!(
            "/v1/changes?type={kind}&after_seq={after}&wait=30"
        ));
        assert_eq!(page.status, 200, "{}", page.text);
        if let Some(item) = page.json["items"]
            .as_array()
            .and_then(|items| items.first())
        {
            return item.clone();
        }
        after = page.json["next_after_seq"].as_u64().unwrap();
    }
}

/// Starts a process with a deadline and one with a heartbeat timeout of a
/// second; returns the deadline as the daemon writes it.
fn start_two(client: &Client, (with_deadline, at): (&str, OffsetDateTime), silent: &str) -> String {
    let deadline = rfc3339(at);
    client.post(&with(
        event("process.started", with_deadline),
        json!({"deadline": deadline}),
    ));
    client.post(&with(
        event("process.started", silent),
        json!({"heartbeat_timeout": 1}),
    ));
    deadline
}

#[test]
fn a_deadline_fires_within_the_check_interval_and_never_early() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let deadline = rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(2));
    let started = client.post(&with(
        event("process.started", "d"),
        json!({"deadline": deadline}),
    ));
    assert_eq!(started.status, 202, "{}", started.text);
    assert_eq!(
        client.get("/v1/processes/d").json["deadline"],
        json!(deadline)
    );

    let item = next_of(&client, "process.timed_out", 0);
    assert_eq!(item["process_id"], "d");
    assert_eq!(item["source"], "processmanager");
    assert_eq!(item["process_status"], "timed_out");
    assert_eq!(item["error"]["code"], "deadline_exceeded");
    assert_eq!(item["occurred_at"], json!(deadline));
    let lateness = at(&item["received_at"]) - at(&json!(deadline));
    // Never before it is due; within the check interval (1 s by default,
    // `timeouts.check_interval_ms`), the contract's bound, plus a stated
    // margin of 750 ms for a loaded 2-core machine (CI runs the suite's
    // loads beside this) to schedule the writer and commit its group.
    let check_interval = time::Duration::seconds(1);
    let margin = time::Duration::milliseconds(750);
    assert!(lateness >= time::Duration::ZERO, "fired {lateness} early");
    assert!(lateness <= check_interval + margin, "fired {lateness} late");

    let process = client.get("/v1/processes/d").json;
    assert_eq!(process["status"], "timed_out");
    let late = client.post(&event("process.succeeded", "d"));
    assert_eq!(late.status, 409);
    assert_eq!(late.json["current_status"], "timed_out");
    // Committed once: one daemon-made item in the history.
    let history = client.get("/v1/processes/d/history").json;
    let made: Vec<&Value> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["source"] == "processmanager")
        .collect();
    assert_eq!(made.len(), 1);
}

#[test]
fn an_event_after_a_passed_deadline_meets_the_time_out_first() {
    let daemon = Daemon::start();
    let client = daemon.client();
    // In one batch, so in one group: the writer has had no chance to look
    // at the due table between the two.
    let batch = json!([
        with(
            event("process.started", "late"),
            json!({"deadline": "2001-01-01T00:00:00Z"})
        ),
        event("process.succeeded", "late"),
    ]);
    let answer = client.post_raw(&batch.to_string(), &[]);
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["results"][0]["result"], "accepted");
    assert_eq!(answer.json["results"][1]["result"], "rejected");
    assert_eq!(answer.json["results"][1]["error"]["status"], 409);
    assert_eq!(
        answer.json["results"][1]["error"]["current_status"],
        "timed_out"
    );
    let history = client.get("/v1/processes/late/history").json;
    let kinds: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["process.started", "process.timed_out"]);
    assert_eq!(
        history["items"][1]["occurred_at"],
        "2001-01-01T00:00:00.000Z"
    );
}

#[test]
fn a_stall_shows_until_the_next_event_clears_it() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let started = client.post(&with(
        event("process.started", "quiet"),
        json!({"heartbeat_timeout": 1}),
    ));
    assert_eq!(started.status, 202);
    client.post(&event("process.started", "busy"));
    let stall = next_of(&client, "process.stalled", 0);
    assert_eq!(stall["process_id"], "quiet");
    assert_eq!(stall["source"], "processmanager");
    assert_eq!(stall["process_status"], "running");
    let received = at(&client.get("/v1/processes/quiet/history").json["items"][0]["received_at"]);
    assert!(at(&stall["occurred_at"]) - received >= time::Duration::seconds(1));

    let process = client.get("/v1/processes/quiet").json;
    assert_eq!(process["stalled_since"], stall["occurred_at"]);
    assert_eq!(process["status"], "running", "a stall is not a status");
    let listed = client.get("/v1/processes?stalled=true").json;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], "quiet");
    assert_eq!(client.get("/v1/stats").json["stalled"], 1);
    assert!(client
        .get("/metrics")
        .text
        .lines()
        .any(|line| line == "pm_processes_stalled 1"));

    client.post(&event("process.heartbeat", "quiet"));
    assert_eq!(
        client.get("/v1/processes/quiet").json["stalled_since"],
        Value::Null
    );
    assert_eq!(
        client.get("/v1/processes?stalled=true").json["items"],
        json!([])
    );
    assert_eq!(client.get("/v1/stats").json["stalled"], 0);
    // Quiet again, stalled again.
    let again = next_of(&client, "process.stalled", stall["seq"].as_u64().unwrap());
    assert_eq!(again["process_id"], "quiet");
}

#[test]
fn a_stalled_process_that_reaches_its_deadline_is_stalled_no_more() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let deadline = rfc3339(OffsetDateTime::now_utc() + time::Duration::milliseconds(2500));
    client.post(&with(
        event("process.started", "lost"),
        json!({"heartbeat_timeout": 1, "deadline": deadline}),
    ));
    // Nothing more from the sender: first a stall, then the deadline.
    let stall = next_of(&client, "process.stalled", 0);
    assert_eq!(client.get("/v1/stats").json["stalled"], 1);
    let ended = next_of(&client, "process.timed_out", stall["seq"].as_u64().unwrap());
    assert_eq!(ended["process_id"], "lost");
    let process = client.get("/v1/processes/lost").json;
    assert_eq!(process["status"], "timed_out");
    assert_eq!(process["stalled_since"], Value::Null);
    assert_eq!(client.get("/v1/stats").json["stalled"], 0);
    assert_eq!(
        client.get("/v1/processes?stalled=true").json["items"],
        json!([])
    );
}

#[test]
fn a_task_stalls_on_its_own_timeout() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&with(
        task_event("task.started", "p", "slow"),
        json!({"heartbeat_timeout": 1}),
    ));
    let stall = next_of(&client, "task.stalled", 0);
    assert_eq!(
        (stall["process_id"].as_str(), stall["task_id"].as_str()),
        (Some("p"), Some("slow"))
    );
    assert_eq!(stall["task_status"], "running");
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["tasks"][0]["stalled_since"], stall["occurred_at"]);
    assert_eq!(process["tasks"][0]["heartbeat_timeout"], 1);
    // The process itself has no timeout: it is not stalled.
    assert_eq!(process["stalled_since"], Value::Null);
    client.post(&task_event("task.progress", "p", "slow"));
    let process = client.get("/v1/processes/p").json;
    assert_eq!(process["tasks"][0]["stalled_since"], Value::Null);
}

#[test]
fn what_came_due_while_the_daemon_was_stopped_is_applied_at_start_as_of_its_moment() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    let deadline_at = OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let deadline = start_two(&client, ("overdue", deadline_at), "silent");
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    // The condition is the clock itself: wait until both came due.
    while OffsetDateTime::now_utc() <= deadline_at + time::Duration::milliseconds(100) {
        std::thread::yield_now();
    }
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    let timed_out = next_of(&client, "process.timed_out", 0);
    assert_eq!(timed_out["process_id"], "overdue");
    assert_eq!(timed_out["occurred_at"], json!(deadline));
    let stall = next_of(&client, "process.stalled", 0);
    assert_eq!(stall["process_id"], "silent");
    let heard = at(&client.get("/v1/processes/silent/history").json["items"][0]["received_at"]);
    let stalled_since = at(&stall["occurred_at"]);
    assert!(stalled_since - heard >= time::Duration::seconds(1));
    // As of the moment it came due, not of the restart.
    assert!(stalled_since < at(&stall["received_at"]));
}

#[test]
fn type_defaults_apply_and_a_cleared_deadline_never_fires() {
    let (daemon, _config) = Daemon::with_config(
        "[timeouts]\ncheck_interval_ms = 200\n[timeouts.process_types.nightly]\nheartbeat_timeout_secs = 600\ndeadline_secs = 1\n",
    );
    let client = daemon.client();
    client.post(&with(
        event("process.started", "n1"),
        json!({"process_type": "nightly"}),
    ));
    let process = client.get("/v1/processes/n1").json;
    assert_eq!(process["heartbeat_timeout"], 600);
    let created = at(&process["created_at"]);
    assert_eq!(
        at(&process["deadline"]) - created,
        time::Duration::seconds(1)
    );
    // What an event sets wins over the default.
    client.post(&with(
        event("process.started", "n2"),
        json!({"process_type": "nightly", "heartbeat_timeout": 5, "deadline": null}),
    ));
    let process = client.get("/v1/processes/n2").json;
    assert_eq!(
        (
            process["heartbeat_timeout"].clone(),
            process["deadline"].clone()
        ),
        (json!(5), Value::Null)
    );
    // n3's deadline is cleared before it comes; n1's, a moment later, is
    // looked at after it (due entries are taken in time order).
    let soon = rfc3339(OffsetDateTime::now_utc() + time::Duration::milliseconds(300));
    client.post(&with(
        event("process.started", "n3"),
        json!({"deadline": soon}),
    ));
    client.post(&with(
        event("process.progress", "n3"),
        json!({"deadline": null}),
    ));
    let fired = next_of(&client, "process.timed_out", 0);
    assert_eq!(fired["process_id"], "n1");
    assert_eq!(client.get("/v1/processes/n3").json["status"], "running");
    assert_eq!(client.get("/v1/processes/n2").json["status"], "running");
}

#[test]
fn bad_timing_fields_and_daemon_only_types_are_refused() {
    let daemon = Daemon::start();
    let client = daemon.client();
    for (body, field) in [
        (
            with(
                event("process.started", "p"),
                json!({"heartbeat_timeout": 0}),
            ),
            "heartbeat_timeout",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"heartbeat_timeout": 2_592_001}),
            ),
            "heartbeat_timeout",
        ),
        (
            with(
                event("process.started", "p"),
                json!({"deadline": "tomorrow"}),
            ),
            "deadline",
        ),
        (
            with(
                task_event("task.started", "p", "t"),
                json!({"deadline": "2030-01-01T00:00:00Z"}),
            ),
            "deadline",
        ),
        (event("process.stalled", "p"), "type"),
        (task_event("task.stalled", "p", "t"), "type"),
    ] {
        let answer = client.post(&body);
        assert_eq!(answer.status, 422, "{body}: {}", answer.text);
        assert_eq!(answer.json["field"], field, "{body}");
    }
    assert_eq!(
        client.get("/v1/processes/p").status,
        404,
        "nothing was applied"
    );
}

#[test]
fn what_the_daemon_made_before_a_kill_9_is_there_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    let deadline_at = OffsetDateTime::now_utc() + time::Duration::milliseconds(500);
    start_two(&client, ("due", deadline_at), "mute");
    let timed_out = next_of(&client, "process.timed_out", 0);
    let stalled = next_of(&client, "process.stalled", 0);
    // Acknowledged to nobody, logged like any group: a crash must neither
    // lose nor repeat them.
    daemon.kill9();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    for (id, item) in [("due", &timed_out), ("mute", &stalled)] {
        let history = client.get(&format!("/v1/processes/{id}/history")).json;
        let made: Vec<&Value> = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["source"] == "processmanager")
            .collect();
        assert_eq!(made.len(), 1, "{id}: {history}");
        assert_eq!(
            (&made[0]["seq"], &made[0]["type"]),
            (&item["seq"], &item["type"]),
            "{id}"
        );
    }
    assert_eq!(client.get("/v1/processes/due").json["status"], "timed_out");
    assert_eq!(client.get("/v1/stats").json["stalled"], 1);
    assert_eq!(
        client.get("/v1/processes?stalled=true").json["items"][0]["id"],
        "mute"
    );
}
