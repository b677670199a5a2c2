//! The apply step's parts together: a group decided in one batch ends as
//! the same steps decided one batch each would, whether read through the
//! pending layers or from the store file once they are applied.

use super::*;
use crate::domain::model::bare_event;
use crate::domain::{EventType, Status};
use crate::store::layers::{Pending, SharedLayer};
use crate::store::read::{ListQuery, Snapshot};
use crate::store::{maintenance, open_writable, store_path};
use redb::Database;

fn event(process: &str, kind: EventType, task: Option<&str>, id: &str) -> IncomingEvent {
    let mut event = bare_event(kind, task);
    event.process_id = process.into();
    event.event_id = Some(id.into());
    IncomingEvent {
        event,
        fingerprint: [7; 16],
        received_at: 1_795_600_800_000,
    }
}

enum Step {
    Event(Box<IncomingEvent>),
    Delete(&'static str),
}

#[derive(Clone, Copy)]
enum Commits {
    /// One transaction a step.
    Step,
    /// One transaction a group of steps, as one batch request.
    Group,
    /// One transaction a group, as one request a step: the writer
    /// writes back after each request.
    GroupWrittenBackEveryStep,
}

fn apply_steps(groups: &[&[Step]], commits: Commits) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = open_writable(&store_path(dir.path()), 1 << 20).unwrap();
    let transactions: Vec<&[Step]> = match commits {
        Commits::Step => groups.iter().flat_map(|group| group.chunks(1)).collect(),
        _ => groups.to_vec(),
    };
    for chunk in transactions {
        offline(&db, |batch| {
            for step in chunk {
                match step {
                    Step::Event(incoming) => {
                        batch.apply(incoming, 1_795_600_800_000)?;
                    }
                    Step::Delete(id) => {
                        batch.delete_process(id, Some(1_795_600_800_000))?;
                    }
                }
                if let Commits::GroupWrittenBackEveryStep = commits {
                    batch.write_back()?;
                }
            }
            Ok(())
        })
        .unwrap();
    }
    (dir, db)
}

/// Everything a reader can see: counters, each process with its tasks
/// and history, and the list pages that each index answers.
fn visible_state(db: &Database, ids: &[&str]) -> String {
    let snapshot = Snapshot::begin(db).unwrap();
    let report = maintenance::verify(&snapshot, &crate::progress::Progress::hidden()).unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
    state_of(&snapshot, ids)
}

/// Everything a reader of `snapshot` can see of `ids`.
fn state_of(snapshot: &Snapshot, ids: &[&str]) -> String {
    let mut state = format!("{:?}\n", snapshot.counters().unwrap());
    for id in ids {
        let process = snapshot.process_with_tasks(id).unwrap();
        let history = snapshot.full_history(id).unwrap();
        state += &format!("{id}: {process:?} {history:?}\n");
    }
    for status in Status::ALL {
        for process_type in [None, Some("import".to_owned())] {
            let query = ListQuery {
                statuses: vec![status],
                process_type,
                limit: 100,
                ..Default::default()
            };
            let page = snapshot.list(&query).unwrap();
            let ids: Vec<_> = page.items.iter().map(|process| &process.id).collect();
            state += &format!("{query:?}: {ids:?}\n");
        }
    }
    let query = ListQuery {
        correlation_id: Some("tenant".into()),
        limit: 100,
        ..Default::default()
    };
    let ids: Vec<_> = snapshot
        .list(&query)
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    state + &format!("tenant: {ids:?}\n")
}

#[test]
fn a_group_ends_as_one_commit_a_request_would() {
    let typed = |process, id| {
        let mut incoming = event(process, EventType::ProcessStarted, None, id);
        incoming.event.process_type = Some("import".into());
        incoming.event.correlation_id = Some("tenant".into());
        Step::Event(Box::new(incoming))
    };
    let plain = |process, kind, task, id| Step::Event(Box::new(event(process, kind, task, id)));
    let before = [
        typed("e", "e1"),
        plain("e", EventType::TaskStarted, Some("t"), "e2"),
        typed("f", "f1"),
    ];
    let steps = [
        // Changed in the group, status and all, then deleted: its index
        // entries are those of the last commit.
        plain("e", EventType::TaskSucceeded, Some("t"), "e3"),
        plain("e", EventType::ProcessSucceeded, None, "e4"),
        Step::Delete("e"),
        plain("f", EventType::ProcessFailed, None, "f2"),
        typed("a", "a1"),
        plain("a", EventType::TaskStarted, Some("t"), "a2"),
        plain("a", EventType::TaskSucceeded, Some("t"), "a3"),
        plain("a", EventType::TaskStarted, Some("u"), "a4"),
        // A duplicate, a reused key and a conflict, all within the group.
        plain("a", EventType::TaskSucceeded, Some("t"), "a3"),
        plain("a", EventType::TaskFailed, Some("t"), "a3"),
        plain("a", EventType::ProcessSucceeded, None, "a5"),
        plain("a", EventType::ProcessFailed, None, "a6"),
        typed("b", "b1"),
        plain("b", EventType::ProcessFailed, None, "b2"),
        // Deleted after changes the group has not written yet, then
        // created again under a new ordinal.
        Step::Delete("a"),
        plain("a", EventType::TaskStarted, Some("t"), "a1"),
        typed("c", "c1"),
        Step::Delete("c"),
        Step::Delete("missing"),
        plain("b", EventType::ProcessSucceeded, None, "b3"),
        plain("d", EventType::ProcessSucceeded, None, "d1"),
    ];
    let ids = ["a", "b", "c", "d", "e", "f"];
    let (_one, grouped) = apply_steps(&[&before, &steps], Commits::Group);
    let (_each, separate) = apply_steps(&[&before, &steps], Commits::Step);
    let (_written, written_back) =
        apply_steps(&[&before, &steps], Commits::GroupWrittenBackEveryStep);
    let state = visible_state(&grouped, &ids);
    assert_eq!(state, visible_state(&separate, &ids));
    assert_eq!(state, visible_state(&written_back, &ids));
    // And the steps did what they say.
    let snapshot = Snapshot::begin(&grouped).unwrap();
    let (a, tasks) = snapshot.process_with_tasks("a").unwrap().unwrap();
    assert_eq!((a.event_count, tasks.len()), (1, 1));
    assert!(snapshot.process("c").unwrap().is_none());
    assert!(snapshot.process("e").unwrap().is_none());
    assert_eq!(
        snapshot.process("f").unwrap().unwrap().status,
        Status::Failed
    );
    assert_eq!(
        snapshot.process("b").unwrap().unwrap().status,
        Status::Failed
    );
}

/// The steps of `a_group_ends_as_one_commit_a_request_would`, decided into
/// pending layers group by group and read through them at each group,
/// read the same as the store file holding each group once applied.
#[test]
fn reads_through_the_pending_layers_are_reads_of_the_applied_store() {
    let typed = |process, id| {
        let mut incoming = event(process, EventType::ProcessStarted, None, id);
        incoming.event.process_type = Some("import".into());
        incoming.event.correlation_id = Some("tenant".into());
        incoming
    };
    let plain = |process, kind, task, id| event(process, kind, task, id);
    let groups: Vec<Vec<IncomingEvent>> = vec![
        vec![
            typed("e", "e1"),
            plain("e", EventType::TaskStarted, Some("t"), "e2"),
        ],
        vec![
            typed("f", "f1"),
            plain("e", EventType::TaskSucceeded, Some("t"), "e3"),
        ],
        vec![
            plain("e", EventType::ProcessSucceeded, None, "e4"),
            typed("a", "a1"),
        ],
        vec![plain("f", EventType::ProcessFailed, None, "f2")],
        vec![
            plain("a", EventType::TaskStarted, Some("u"), "a2"),
            typed("b", "b1"),
        ],
    ];
    let ids = ["a", "b", "e", "f"];
    let dir = tempfile::tempdir().unwrap();
    let layered = open_writable(&store_path(dir.path()), 1 << 20).unwrap();
    let layer = SharedLayer::default();
    let mut counters = Counters::default();
    for (index, group) in groups.iter().enumerate() {
        let number = index as u64 + 1;
        let applied = Applied::begin(&layered).unwrap();
        let writing = Writing::new(None, layer.clone(), number);
        let mut batch = WriteBatch::open(&writing, &applied, counters).unwrap();
        for incoming in group {
            batch.apply(incoming, 1_795_600_800_000).unwrap();
        }
        counters = batch.finish().unwrap();
        drop(applied);
        // The same groups, applied to a store file one by one.
        let (_dir, file) = apply_steps(
            &[&groups[..=index]
                .iter()
                .flatten()
                .cloned()
                .map(|incoming| Step::Event(Box::new(incoming)))
                .collect::<Vec<_>>()],
            Commits::Step,
        );
        let through_layers =
            Snapshot::with_pending(&layered, Pending::new(None, layer.clone(), number)).unwrap();
        assert_eq!(
            state_of(&through_layers, &ids),
            visible_state(&file, &ids),
            "after group {number}"
        );
        // A reader that sees an earlier group sees the state after it,
        // though the layer holds later ones.
        if number > 1 {
            let earlier =
                Snapshot::with_pending(&layered, Pending::new(None, layer.clone(), number - 1))
                    .unwrap();
            let (_dir, before) = apply_steps(
                &[&groups[..index]
                    .iter()
                    .flatten()
                    .cloned()
                    .map(|incoming| Step::Event(Box::new(incoming)))
                    .collect::<Vec<_>>()],
                Commits::Step,
            );
            assert_eq!(state_of(&earlier, &ids), visible_state(&before, &ids));
        }
    }
    // Applied at last: the file alone reads as the layers did.
    let expected = state_of(
        &Snapshot::with_pending(&layered, Pending::new(None, layer.clone(), 5)).unwrap(),
        &ids,
    );
    crate::store::durability::apply_step(&layered, &[&layer.read().unwrap()], 5, true).unwrap();
    assert_eq!(visible_state(&layered, &ids), expected);
}
