//! Arbitrary event sequences through the real transition rules and through
//! the plain reference model: every outcome and every status must agree.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use processmanager::domain::model::{Model, Replay};
use processmanager::domain::{EventType, Scope};

#[derive(Arbitrary, Debug)]
struct Step {
    kind: u8,
    task: u8,
    at: u8,
}

fuzz_target!(|steps: Vec<Step>| {
    let mut real = Replay::default();
    let mut model = Model::default();
    for step in steps.iter().take(200) {
        let kind = EventType::ALL[usize::from(step.kind) % EventType::ALL.len()];
        let task_id = format!("t{}", step.task % 4);
        let task = (kind.scope() == Scope::Task).then_some(task_id.as_str());
        let at = i64::from(step.at % 16) * 1000;
        let got = real.send(kind, task, at);
        let want = model.send(kind, task, at);
        assert_eq!(got, want, "{kind:?} on {task:?} at {at}");
        assert_eq!(real.process_status(), model.process.as_ref().map(|p| p.status).unwrap_or(real.process_status()));
        for (id, expected) in &model.tasks {
            let actual = real.task(id).expect("the model's task exists");
            assert_eq!((actual.status, actual.attempt), (expected.status, expected.attempt), "task {id}");
            assert_eq!(actual.attempts.len() as u32, actual.attempt);
        }
        assert_eq!(real.tasks.len(), model.tasks.len());
    }
});
