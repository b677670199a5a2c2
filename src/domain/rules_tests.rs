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
