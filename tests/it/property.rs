//! Random interleavings of events (duplicates, reused keys, reorderings,
//! retries, conflicts) sent through the HTTP API end in the state the
//! reference model predicts, and every answer is the one it predicts.
//! The daemon applies its pending groups to the store file every few
//! milliseconds, so apply steps fall at random points among the writes,
//! and every read after an answer (the process, its history, the lists)
//! sees the state the model has after that event.
//! Events carry heartbeat timeouts and deadlines too: a deadline already
//! past times the process out (the daemon's own `process.timed_out`)
//! before anything later is weighed. `PM_PROPTEST_CASES` sets the number
//! of cases (256 in CI).

use crate::support::{Client, Daemon};
use processmanager::domain::model::Model;
use processmanager::domain::{EventType, Outcome, Scope, Status};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// One step: an event for process `process` (0..2) and task `task` (0..3)
/// that happened `at` seconds in, and what to do with its key.
#[derive(Clone, Debug)]
struct Step {
    process: u8,
    kind: EventType,
    task: u8,
    at: u8,
    action: Action,
    timing: Timing,
}

/// The version 1.1 fields an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    Nothing,
    /// `heartbeat_timeout`, long enough never to pass during a case.
    Heartbeat(u32),
    /// A deadline far ahead (process events only; on a task event, nothing).
    DeadlineAhead,
    /// A deadline already past.
    DeadlinePast,
    /// `deadline: null`.
    DeadlineCleared,
}

const DEADLINE_AHEAD: &str = "2999-01-01T00:00:00.000Z";
const DEADLINE_PAST: &str = "2001-01-01T00:00:00.000Z";

#[derive(Clone, Debug)]
enum Action {
    /// A new event with a new key.
    Fresh,
    /// A new event with no key at all.
    Unkeyed,
    /// The n-th earlier event sent again, exactly.
    Resend(usize),
    /// This event, under the key of the n-th earlier one.
    ReuseKey(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        5 => Just(Action::Fresh),
        1 => Just(Action::Unkeyed),
        2 => any::<usize>().prop_map(Action::Resend),
        1 => any::<usize>().prop_map(Action::ReuseKey),
    ];
    let timing = prop_oneof![
        6 => Just(Timing::Nothing),
        1 => (3600u32..3700).prop_map(Timing::Heartbeat),
        1 => Just(Timing::DeadlineAhead),
        1 => Just(Timing::DeadlinePast),
        1 => Just(Timing::DeadlineCleared),
    ];
    (
        0u8..2,
        prop::sample::select(EventType::ALL.to_vec()),
        0u8..3,
        0u8..4,
        action,
        timing,
    )
        .prop_map(|(process, kind, task, at, action, timing)| {
            let deadline = matches!(
                timing,
                Timing::DeadlineAhead | Timing::DeadlinePast | Timing::DeadlineCleared
            );
            Step {
                process,
                kind,
                task,
                at,
                action,
                // Only process events carry a deadline.
                timing: if deadline && kind.scope() == Scope::Task {
                    Timing::Nothing
                } else {
                    timing
                },
            }
        })
}

fn body_of(case: u64, step: &Step, key: Option<String>) -> Value {
    let mut body = json!({
        "type": step.kind.as_str(),
        "process_id": format!("prop{case}-{}", step.process),
        "occurred_at": format!("2026-11-25T10:00:{:02}Z", step.at),
    });
    if step.kind.scope() == Scope::Task {
        body["task_id"] = json!(format!("t{}", step.task));
    }
    if let Some(key) = key {
        body["event_id"] = json!(key);
    }
    match step.timing {
        Timing::Nothing => {}
        Timing::Heartbeat(secs) => body["heartbeat_timeout"] = json!(secs),
        Timing::DeadlineAhead => body["deadline"] = json!(DEADLINE_AHEAD),
        Timing::DeadlinePast => body["deadline"] = json!(DEADLINE_PAST),
        Timing::DeadlineCleared => body["deadline"] = Value::Null,
    }
    body
}

/// What a key was first answered with.
struct Stored {
    body: Value,
    seq: u64,
    result: &'static str,
}

/// How a case's events reach the daemon.
#[derive(Clone, Copy, Debug)]
enum Sending {
    /// One request an event: every event is a write group of its own.
    OneByOne,
    /// All of them in one batch: one write group, in which later events
    /// build on what earlier ones changed but has not been written yet.
    OneBatch,
}

/// What one event was answered, alone or as an item of a batch.
struct Answered {
    /// `accepted`, `stale` or `duplicate`; else the problem's `code`.
    result: String,
    json: Value,
    text: String,
}

/// The answer to a single event, checked against the status code its
/// result calls for.
fn answered_alone(reply: crate::support::Reply) -> Answered {
    let result = match reply.status {
        200..=299 => reply.json["result"].as_str(),
        _ => reply.json["code"].as_str(),
    }
    .unwrap_or_default()
    .to_owned();
    let status = match result.as_str() {
        "accepted" => 202,
        "stale" | "duplicate" => 200,
        "conflict" => 409,
        _ => 422,
    };
    assert_eq!(reply.status, status, "{}", reply.text);
    Answered {
        result,
        json: reply.json,
        text: reply.text,
    }
}

/// The items of a batch answer, in order: a rejected item's answer is its
/// problem.
fn answered_in_batch(reply: crate::support::Reply, count: usize) -> Vec<Answered> {
    assert_eq!(reply.status, 200, "{}", reply.text);
    let items = reply.json["results"].as_array().expect("results").clone();
    assert_eq!(items.len(), count, "{}", reply.text);
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            assert_eq!(item["index"].as_u64(), Some(index as u64), "{item}");
            let json = if item["result"] == "rejected" {
                item["error"].clone()
            } else {
                item
            };
            let result = json["result"]
                .as_str()
                .or(json["code"].as_str())
                .unwrap_or_default()
                .to_owned();
            Answered {
                result,
                text: json.to_string(),
                json,
            }
        })
        .collect()
}

/// The events of a case, each with the body it is sent as.
fn bodies(case: u64, steps: &[Step]) -> Vec<(Step, Value)> {
    let mut sent: Vec<(Step, Value)> = Vec::new();
    for (index, original) in steps.iter().enumerate() {
        let next = match &original.action {
            Action::Fresh => (
                original.clone(),
                body_of(case, original, Some(format!("k{index}"))),
            ),
            Action::Unkeyed => (original.clone(), body_of(case, original, None)),
            Action::Resend(n) if !sent.is_empty() => sent[n % sent.len()].clone(),
            Action::ReuseKey(n) if !sent.is_empty() => {
                let key = sent[n % sent.len()].1["event_id"]
                    .as_str()
                    .map(str::to_owned);
                (original.clone(), body_of(case, original, key))
            }
            _ => (
                original.clone(),
                body_of(case, original, Some(format!("k{index}"))),
            ),
        };
        sent.push(next);
    }
    sent
}

/// What a reader sees of a process right after an answer: its status,
/// and how many events its history holds (`None`: no such process).
fn seen(client: &Client, process_id: &str) -> Option<(String, usize)> {
    loop {
        let got = client.get(&format!("/v1/processes/{process_id}"));
        if got.status == 404 {
            return None;
        }
        let status = got.json["status"].as_str().unwrap_or_default().to_owned();
        let history = client.get(&format!("/v1/processes/{process_id}/history?limit=1000"));
        let listed = client.get(&format!("/v1/processes?status={status}&limit=1000"));
        let again = client.get(&format!("/v1/processes/{process_id}"));
        if again.json != got.json {
            // The daemon acted on a deadline between the reads (its own
            // process.timed_out): read it again, as it is now.
            continue;
        }
        let in_list = listed.json["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["id"] == process_id));
        assert!(
            in_list,
            "{process_id} is not listed under its own status: {}",
            listed.text
        );
        return Some((status, history.json["items"].as_array().map_or(0, Vec::len)));
    }
}

fn run_case(client: &Client, case: u64, steps: &[Step], sending: Sending) {
    let events = bodies(case, steps);
    // One by one, each answer is followed by a read of its process, which
    // must see the event (checked against the model below).
    let mut reads: Vec<Option<(String, usize)>> = Vec::new();
    let answers: Vec<Answered> = match sending {
        Sending::OneByOne => events
            .iter()
            .map(|(_, body)| {
                let answer = answered_alone(client.post(body));
                reads.push(seen(
                    client,
                    body["process_id"].as_str().unwrap_or_default(),
                ));
                answer
            })
            .collect(),
        Sending::OneBatch => {
            let batch = Value::Array(events.iter().map(|(_, body)| body.clone()).collect());
            answered_in_batch(client.post(&batch), events.len())
        }
    };
    let mut models: HashMap<u8, Model> = HashMap::new();
    // Events kept in each process's history: accepted and stale.
    let mut kept: HashMap<u8, u64> = HashMap::new();
    // Keys are scoped to their process.
    let mut keys: HashMap<(String, String), Stored> = HashMap::new();
    // What accepted events set: heartbeat timeouts by process and task,
    // deadlines by process.
    let mut heartbeats: HashMap<(u8, Option<String>), u32> = HashMap::new();
    let mut deadlines: HashMap<u8, Value> = HashMap::new();
    // Processes whose past deadline the daemon may not have acted on yet.
    let mut undetermined: std::collections::HashSet<u8> = Default::default();
    for (index, ((step, body), reply)) in events.iter().zip(&answers).enumerate() {
        let key = body["event_id"].as_str().map(|k| {
            (
                body["process_id"].as_str().unwrap_or_default().to_owned(),
                k.to_owned(),
            )
        });
        if let Some(stored) = key.as_ref().and_then(|k| keys.get(k)) {
            if !undetermined.contains(&step.process) {
                check_read(&reads, index, step, &models, &kept);
            }
            if stored.body == *body {
                assert_eq!(
                    reply.result, "duplicate",
                    "step {index} {body}: {}",
                    reply.text
                );
                assert_eq!(reply.json["seq"].as_u64(), Some(stored.seq), "step {index}");
                assert_eq!(reply.json["original_result"], stored.result, "step {index}");
            } else {
                assert_eq!(
                    reply.result, "idempotency_key_reused",
                    "step {index} {body}: {}",
                    reply.text
                );
                assert_eq!(reply.json["seq"].as_u64(), Some(stored.seq), "step {index}");
            }
            continue;
        }
        let task = (step.kind.scope() == Scope::Task).then(|| format!("t{}", step.task));
        let expected = models.entry(step.process).or_default().send(
            step.kind,
            task.as_deref(),
            i64::from(step.at) * 1000,
        );
        match expected {
            Outcome::Accepted => {
                assert_eq!(
                    reply.result, "accepted",
                    "step {index} {body}: {}",
                    reply.text
                )
            }
            Outcome::Stale => {
                assert_eq!(reply.result, "stale", "step {index} {body}: {}", reply.text)
            }
            Outcome::Conflict { current_status } => {
                assert_eq!(
                    reply.result, "conflict",
                    "step {index} {body}: {}",
                    reply.text
                );
                assert_eq!(
                    reply.json["current_status"],
                    current_status.as_str(),
                    "step {index}"
                );
            }
        }
        if matches!(expected, Outcome::Accepted | Outcome::Stale) {
            *kept.entry(step.process).or_default() += 1;
        }
        if expected == Outcome::Accepted {
            match step.timing {
                Timing::Heartbeat(secs) => {
                    heartbeats.insert((step.process, task.clone()), secs);
                }
                Timing::DeadlineAhead => {
                    deadlines.insert(step.process, json!(DEADLINE_AHEAD));
                }
                Timing::DeadlineCleared => {
                    deadlines.insert(step.process, Value::Null);
                }
                Timing::DeadlinePast => {
                    deadlines.insert(step.process, json!(DEADLINE_PAST));
                    let model = models.get_mut(&step.process).unwrap();
                    let process = model.process.as_mut().unwrap();
                    if !process.status.is_terminal() {
                        // The daemon's process.timed_out, kept in history.
                        process.status = Status::TimedOut;
                        *kept.entry(step.process).or_default() += 1;
                    }
                }
                Timing::Nothing => {}
            }
        }
        if let (Some(key), Outcome::Accepted | Outcome::Stale) = (key, expected) {
            let result = if expected == Outcome::Accepted {
                "accepted"
            } else {
                "stale"
            };
            keys.insert(
                key,
                Stored {
                    body: body.clone(),
                    seq: reply.json["seq"].as_u64().unwrap(),
                    result,
                },
            );
        }
        // After an event that sets a deadline already past, the daemon may
        // or may not have acted on it when the process is read: the next
        // look at what is due does, or the next event weighed for it.
        if expected == Outcome::Accepted && step.timing == Timing::DeadlinePast {
            undetermined.insert(step.process);
        } else {
            undetermined.remove(&step.process);
            check_read(&reads, index, step, &models, &kept);
        }
    }
    for (process, model) in &models {
        let want = model.process.as_ref().expect("a sent process exists");
        // A deadline the last event set in the past is acted on just after
        // its commit: wait for the end the model expects, if any.
        let path = if want.status.is_terminal() {
            format!("/v1/processes/prop{case}-{process}/await?wait=30")
        } else {
            format!("/v1/processes/prop{case}-{process}")
        };
        let got = client.get(&path).json;
        assert_eq!(
            got["heartbeat_timeout"],
            json!(heartbeats.get(&(*process, None))),
            "process {process}: {got}"
        );
        assert_eq!(
            got["deadline"],
            deadlines.get(process).cloned().unwrap_or(Value::Null),
            "process {process}: {got}"
        );
        assert_eq!(
            got["status"],
            want.status.as_str(),
            "process {process}: {got}"
        );
        assert_eq!(
            got["event_count"].as_u64(),
            Some(kept.get(process).copied().unwrap_or(0)),
            "process {process}: {got}"
        );
        let tasks = got["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), model.tasks.len(), "process {process}");
        for task in tasks {
            let id = task["id"].as_str().unwrap();
            let want = &model.tasks[id];
            assert_eq!(task["status"], want.status.as_str(), "task {id}");
            assert_eq!(
                task["heartbeat_timeout"],
                json!(heartbeats.get(&(*process, Some(id.to_owned())))),
                "task {id}"
            );
            assert_eq!(
                task["attempt"].as_u64(),
                Some(u64::from(want.attempt)),
                "task {id}"
            );
            assert_eq!(
                task["attempts"].as_array().unwrap().len() as u32,
                want.attempt,
                "task {id}"
            );
        }
    }
}

/// The read that followed answer `index` (one by one) saw the process as
/// the model has it after that event. A deadline set in the past may have
/// timed the process out by then, as the model expects.
fn check_read(
    reads: &[Option<(String, usize)>],
    index: usize,
    step: &Step,
    models: &HashMap<u8, Model>,
    kept: &HashMap<u8, u64>,
) {
    let Some(read) = reads.get(index) else {
        return;
    };
    let want = models
        .get(&step.process)
        .and_then(|model| model.process.as_ref())
        .map(|process| {
            (
                process.status.as_str().to_owned(),
                kept.get(&step.process).copied().unwrap_or(0) as usize,
            )
        });
    assert_eq!(read, &want, "the read after step {index} ({step:?})");
}

fn run_cases(sending: Sending) {
    let cases = std::env::var("PM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    // Pending groups go to the store file every few milliseconds: apply
    // steps fall among the requests of every case.
    let (daemon, _config) = Daemon::with_config("[writer]\napply_after_ms = 3\n");
    let client = daemon.client();
    let case = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..40), |steps| {
        run_case(
            &client,
            case.fetch_add(1, Ordering::SeqCst),
            &steps,
            sending,
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    println!(
        "property test: {} cases through HTTP, {sending:?}",
        case.load(Ordering::SeqCst)
    );
}

#[test]
fn random_interleavings_through_http_end_in_the_models_state() {
    run_cases(Sending::OneByOne);
}

#[test]
fn random_interleavings_in_one_batch_end_in_the_models_state() {
    run_cases(Sending::OneBatch);
}
