//! A plain reference model of the transition rules, written status by
//! status from the API contract's text, independently of `rules`. Unit
//! tests, the HTTP property test and the fuzz target check the real thing
//! against it. It tracks statuses, attempts and times only: what the rules
//! decide, not the fields they carry along.

use super::{apply, Event, EventType, Millis, Outcome, Process, Status, Task};
use std::collections::HashMap;
use EventType::*;

/// The contract's rules written as plainly as possible, status by status.
#[derive(Default, Debug)]
pub struct Model {
    pub process: Option<ModelEntity>,
    pub tasks: HashMap<String, ModelEntity>,
}

#[derive(Clone, Debug)]
pub struct ModelEntity {
    pub status: Status,
    pub last: Option<Millis>,
    pub finished: Option<Millis>,
    pub attempt: u32,
}

impl ModelEntity {
    fn new() -> Self {
        ModelEntity {
            status: Status::Pending,
            last: None,
            finished: None,
            attempt: 0,
        }
    }
}

/// What a rule of the model decided.
enum Decision {
    Accept(ModelEntity),
    Stale,
    Conflict,
}

impl Model {
    /// Applies one event to this process (and its task), as the contract says.
    pub fn send(&mut self, kind: EventType, task: Option<&str>, at: Millis) -> Outcome {
        let process = self.process.get_or_insert_with(ModelEntity::new).clone();
        let (decision, current_status) = match task {
            None => (
                Self::process_rule(process.clone(), kind, at),
                process.status,
            ),
            Some(id) => {
                let current = self.tasks.get(id).cloned().unwrap_or_else(ModelEntity::new);
                let status = current.status;
                (Self::task_rule(process.status, current, kind, at), status)
            }
        };
        match (decision, task) {
            (Decision::Accept(entity), None) => self.process = Some(entity),
            (Decision::Accept(entity), Some(id)) => {
                self.tasks.insert(id.to_owned(), entity);
                let p = self.process.as_mut().expect("process was just made");
                if p.status == Status::Pending {
                    p.status = Status::Running;
                }
            }
            (Decision::Stale, _) => return Outcome::Stale,
            (Decision::Conflict, _) => return Outcome::Conflict { current_status },
        }
        Outcome::Accepted
    }

    fn process_rule(mut p: ModelEntity, kind: EventType, at: Millis) -> Decision {
        match (p.status.is_terminal(), kind.terminal_status()) {
            (true, Some(t)) if t == p.status => Decision::Stale,
            (true, Some(_)) => Decision::Conflict,
            (true, None) => Decision::Stale,
            (false, Some(t)) => {
                p.status = t;
                Decision::Accept(p)
            }
            (false, None) => {
                if p.last.is_some_and(|l| at < l) {
                    return Decision::Stale;
                }
                match (kind, p.status) {
                    (ProcessQueued, Status::Running) => return Decision::Stale,
                    (ProcessQueued, _) => {}
                    _ => p.status = Status::Running,
                }
                p.last = Some(at);
                Decision::Accept(p)
            }
        }
    }

    fn task_rule(process: Status, mut t: ModelEntity, kind: EventType, at: Millis) -> Decision {
        if t.attempt == 0 {
            t.attempt = 1;
        }
        match (t.status.is_terminal(), kind.terminal_status()) {
            (true, Some(s)) if s == t.status => Decision::Stale,
            (true, Some(_)) => Decision::Conflict,
            (false, Some(s)) => {
                t.status = s;
                t.finished = Some(at);
                t.last = Some(t.last.map_or(at, |l| l.max(at)));
                Decision::Accept(t)
            }
            (_, None) if process.is_terminal() => Decision::Stale,
            (true, None) => {
                let retry = kind == TaskStarted
                    && t.status == Status::Failed
                    && t.finished.is_some_and(|f| at >= f);
                if !retry {
                    return Decision::Stale;
                }
                t.attempt += 1;
                t.status = Status::Running;
                t.finished = None;
                t.last = Some(t.last.map_or(at, |l| l.max(at)));
                Decision::Accept(t)
            }
            (false, None) => {
                if t.last.is_some_and(|l| at < l) {
                    return Decision::Stale;
                }
                t.status = Status::Running;
                t.last = Some(at);
                Decision::Accept(t)
            }
        }
    }
}

/// An event with nothing but its type and task, as the rules see it.
pub fn bare_event(kind: EventType, task: Option<&str>) -> Event {
    Event {
        event_id: None,
        kind,
        process_id: "p".into(),
        task_id: task.map(str::to_owned),
        occurred_at: None,
        name: None,
        process_type: None,
        correlation_id: None,
        progress: None,
        error: None,
        attributes: Default::default(),
        heartbeat_timeout: None,
        deadline: None,
    }
}

/// One process with its tasks, in memory, driven through the real rules
/// the way the writer drives them: the other side of every comparison
/// with `Model`.
#[derive(Default)]
pub struct Replay {
    pub process: Option<Process>,
    pub tasks: Vec<Task>,
}

impl Replay {
    pub fn send(&mut self, kind: EventType, task_id: Option<&str>, at: Millis) -> Outcome {
        self.send_event(&bare_event(kind, task_id), at)
    }

    /// Applies an event with whatever fields it carries.
    pub fn send_event(&mut self, event: &Event, at: Millis) -> Outcome {
        let task_id = event.task_id.as_deref();
        let process = self
            .process
            .get_or_insert_with(|| Process::new("p".into(), 0));
        let Some(task_id) = task_id else {
            return apply(process, None, false, event, at);
        };
        match self.tasks.iter().position(|t| t.id == task_id) {
            Some(index) => apply(process, Some(&mut self.tasks[index]), false, event, at),
            None => {
                let mut task = Task::new(task_id.into(), 0);
                let outcome = apply(process, Some(&mut task), true, event, at);
                if outcome == Outcome::Accepted {
                    self.tasks.push(task);
                }
                outcome
            }
        }
    }

    pub fn process_status(&self) -> Status {
        self.process.as_ref().map_or(Status::Pending, |p| p.status)
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }
}
