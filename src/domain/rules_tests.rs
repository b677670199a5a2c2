//! The transition rules, checked rule by rule and against a plain reference
//! model over generated event sequences.

use super::*;
use proptest::prelude::*;

use EventType::*;

#[test]
fn an_unknown_process_and_task_are_created_by_any_event() {
    let mut h = Replay::default();
    assert_eq!(h.send(TaskProgress, Some("t"), 10), Outcome::Accepted);
    assert_eq!(h.process_status(), Status::Running);
    assert_eq!(h.task("t").unwrap().status, Status::Running);
    assert_eq!(h.task("t").unwrap().attempt, 1);
}

#[test]
fn a_process_moves_pending_running_terminal() {
    let mut h = Replay::default();
    assert_eq!(h.send(ProcessQueued, None, 10), Outcome::Accepted);
    assert_eq!(h.process_status(), Status::Pending);
    assert_eq!(h.send(ProcessHeartbeat, None, 20), Outcome::Accepted);
    assert_eq!(h.process_status(), Status::Running);
    assert_eq!(h.process.as_ref().unwrap().started_at, Some(20));
    assert_eq!(
        h.send(ProcessQueued, None, 30),
        Outcome::Stale,
        "never back to pending"
    );
    assert_eq!(h.send(ProcessSucceeded, None, 40), Outcome::Accepted);
    let p = h.process.as_ref().unwrap();
    assert_eq!(
        (p.status, p.finished_at, p.duration_ms()),
        (Status::Succeeded, Some(40), Some(20))
    );
}

#[test]
fn a_terminal_event_ends_a_pending_process_directly() {
    let mut h = Replay::default();
    assert_eq!(h.send(ProcessQueued, None, 10), Outcome::Accepted);
    assert_eq!(h.send(ProcessCancelled, None, 20), Outcome::Accepted);
    assert_eq!(h.process_status(), Status::Cancelled);
}

#[test]
fn terminal_is_sticky_same_is_stale_different_is_conflict() {
    let mut h = Replay::default();
    h.send(ProcessStarted, None, 10);
    h.send(ProcessFailed, None, 20);
    assert_eq!(h.send(ProcessFailed, None, 30), Outcome::Stale);
    assert_eq!(h.send(ProcessProgress, None, 30), Outcome::Stale);
    assert_eq!(
        h.send(ProcessSucceeded, None, 30),
        Outcome::Conflict {
            current_status: Status::Failed
        }
    );
    assert_eq!(h.process_status(), Status::Failed);
}

#[test]
fn a_failed_task_is_retried_with_a_record_per_attempt() {
    let mut h = Replay::default();
    h.send(TaskStarted, Some("t"), 10);
    h.send(TaskFailed, Some("t"), 20);
    assert_eq!(h.send(TaskStarted, Some("t"), 30), Outcome::Accepted);
    assert_eq!(h.send(TaskSucceeded, Some("t"), 40), Outcome::Accepted);
    let task = h.task("t").unwrap();
    assert_eq!(task.attempt, 2);
    let summary: Vec<_> = task
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.started_at, a.finished_at))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Status::Failed, Some(10), Some(20)),
            (2, Status::Succeeded, Some(30), Some(40)),
        ]
    );
    let counts: Vec<_> = h.process.as_ref().unwrap().task_counts.non_zero().collect();
    assert_eq!(counts, vec![(Status::Succeeded, 1)]);
}

#[test]
fn a_start_older_than_the_failure_is_not_a_retry() {
    let mut h = Replay::default();
    h.send(TaskFailed, Some("t"), 20);
    assert_eq!(h.send(TaskStarted, Some("t"), 10), Outcome::Stale);
    assert_eq!(h.task("t").unwrap().attempt, 1);
}

#[test]
fn a_late_task_completion_on_a_finished_process_is_applied() {
    let mut h = Replay::default();
    h.send(TaskStarted, Some("t"), 10);
    h.send(ProcessSucceeded, None, 20);
    assert_eq!(h.send(TaskProgress, Some("t"), 25), Outcome::Stale);
    assert_eq!(h.send(TaskSucceeded, Some("t"), 30), Outcome::Accepted);
    assert_eq!(h.task("t").unwrap().status, Status::Succeeded);
    assert_eq!(h.process_status(), Status::Succeeded);
    assert_eq!(h.send(TaskStarted, Some("new"), 40), Outcome::Stale);
    assert!(
        h.tasks.iter().all(|t| t.id != "new"),
        "a stale event creates nothing"
    );
}

#[test]
fn an_older_non_terminal_update_does_not_turn_back_time() {
    let mut h = Replay::default();
    let mut progress = event(ProcessProgress, None);
    progress.progress = Some(Progress {
        percent: Some(60.0),
        ..Progress::default()
    });
    let p = h.process.get_or_insert_with(|| Process::new("p".into(), 0));
    assert_eq!(apply(p, None, false, &progress, 20), Outcome::Accepted);
    progress.progress = Some(Progress {
        percent: Some(40.0),
        ..Progress::default()
    });
    assert_eq!(apply(p, None, false, &progress, 10), Outcome::Stale);
    assert_eq!(p.progress.as_ref().and_then(|p| p.percent), Some(60.0));
    assert_eq!(p.updated_at, 20);
    // A terminal event is applied whatever its time; updated_at never goes back.
    assert_eq!(
        apply(p, None, false, &event(ProcessSucceeded, None), 15),
        Outcome::Accepted
    );
    assert_eq!((p.finished_at, p.updated_at), (Some(15), 20));
}

use super::model::{bare_event as event, Model, Replay};

fn arbitrary_step() -> impl Strategy<Value = (EventType, Option<&'static str>, Millis)> {
    let kind = prop::sample::select(EventType::ALL.to_vec());
    let task = prop::sample::select(vec!["a", "b", "c"]);
    (kind, task, 0..8i64).prop_map(|(kind, task, at)| {
        let task = (kind.scope() == Scope::Task).then_some(task);
        (kind, task, at)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_rules_agree_with_the_reference_model(steps in prop::collection::vec(arbitrary_step(), 1..40)) {
        let mut real = Replay::default();
        let mut model = Model::default();
        for (kind, task, at) in steps {
            let got = real.send(kind, task, at);
            let want = model.send(kind, task, at);
            prop_assert_eq!(got, want, "{:?} on {:?} at {}", kind, task, at);
            prop_assert_eq!(real.process_status(), model.process.as_ref().unwrap().status);
            for (id, t) in &model.tasks {
                let actual = real.task(id).unwrap();
                prop_assert_eq!((actual.status, actual.attempt), (t.status, t.attempt), "task {}", id);
                prop_assert_eq!(actual.attempts.len() as u32, actual.attempt);
            }
            prop_assert_eq!(real.tasks.len(), model.tasks.len());
            let counted: u32 = real.process.as_ref().unwrap().task_counts.0.iter().sum();
            prop_assert_eq!(counted as usize, real.tasks.len());
        }
    }
}

fn event_with(kind: EventType, task: Option<&str>, fill: impl FnOnce(&mut Event)) -> Event {
    let mut event = crate::domain::model::bare_event(kind, task);
    fill(&mut event);
    event
}

#[test]
fn a_late_start_fills_in_what_the_end_did_not_say_and_changes_nothing_else() {
    let mut h = Replay::default();
    let end = event_with(ProcessSucceeded, None, |e| {
        e.attributes.insert("region".into(), "west".into());
    });
    assert_eq!(h.send_event(&end, 100), Outcome::Accepted);
    let start = event_with(ProcessStarted, None, |e| {
        e.name = Some("Order sync".into());
        e.process_type = Some("order-sync".into());
        e.correlation_id = Some("c-1".into());
        e.progress = Some(Progress {
            percent: Some(1.0),
            ..Progress::default()
        });
        e.attributes.insert("region".into(), "east".into());
        e.attributes.insert("tenant".into(), "t1".into());
    });
    assert_eq!(h.send_event(&start, 10), Outcome::Stale);
    let p = h.process.as_ref().unwrap();
    assert_eq!(p.status, Status::Succeeded);
    assert_eq!(
        (p.started_at, p.finished_at, p.duration_ms()),
        (Some(10), Some(100), Some(90))
    );
    assert_eq!(p.name.as_deref(), Some("Order sync"));
    assert_eq!(p.process_type.as_deref(), Some("order-sync"));
    assert_eq!(p.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(p.progress, None, "state the end left stays");
    assert_eq!(p.last_update_at, None);
    // What the process had wins over what came late.
    assert_eq!(p.attributes["region"], "west");
    assert_eq!(p.attributes["tenant"], "t1");
    let renamed = event_with(ProcessProgress, None, |e| e.name = Some("Other".into()));
    assert_eq!(h.send_event(&renamed, 5), Outcome::Stale);
    let p = h.process.as_ref().unwrap();
    // An earlier sign of running moves the start back; the name stays.
    assert_eq!(
        (p.name.as_deref(), p.started_at),
        (Some("Order sync"), Some(5))
    );
    // A "start" after the end is no start.
    let mut h = Replay::default();
    h.send(ProcessFailed, None, 100);
    h.send(ProcessStarted, None, 200);
    assert_eq!(h.process.as_ref().unwrap().started_at, None);
}

#[test]
fn a_late_task_start_fills_in_its_start_and_name() {
    let mut h = Replay::default();
    h.send(ProcessStarted, None, 1);
    assert_eq!(h.send(TaskSucceeded, Some("t"), 50), Outcome::Accepted);
    let start = event_with(TaskStarted, Some("t"), |e| e.name = Some("Fetch".into()));
    assert_eq!(h.send_event(&start, 20), Outcome::Stale);
    let t = h.task("t").unwrap();
    assert_eq!(
        (t.status, t.started_at, t.finished_at),
        (Status::Succeeded, Some(20), Some(50))
    );
    assert_eq!(t.name.as_deref(), Some("Fetch"));
    assert_eq!(t.attempts[0].started_at, Some(20));
    // Out of order: progress (30) before the start (20) it followed.
    let mut h = Replay::default();
    h.send(ProcessStarted, None, 1);
    h.send(TaskSucceeded, Some("u"), 50);
    assert_eq!(h.send(TaskProgress, Some("u"), 30), Outcome::Stale);
    assert_eq!(h.send(TaskStarted, Some("u"), 20), Outcome::Stale);
    let u = h.task("u").unwrap();
    assert_eq!(
        (u.started_at, u.attempts[0].started_at),
        (Some(20), Some(20))
    );
    // Conflicts change nothing, not even what is missing.
    let mut h = Replay::default();
    h.send(ProcessFailed, None, 100);
    let other_end = event_with(ProcessSucceeded, None, |e| e.name = Some("n".into()));
    assert!(matches!(
        h.send_event(&other_end, 10),
        Outcome::Conflict { .. }
    ));
    assert_eq!(h.process.as_ref().unwrap().name, None);
}
