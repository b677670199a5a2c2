//! The transition rules of "How an event is applied" in the API contract.
//!
//! `apply` is a pure function of (process, task, event) to an outcome, and
//! mutates the records only when the outcome is `Accepted`. It never looks
//! at idempotency keys: deduplication happens before it, in the writer.

use super::{ErrorInfo, Event, EventType, Millis, Progress, Scope, Status, TaskCounts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The current state of a process, as stored (without its tasks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub id: String,
    pub name: Option<String>,
    pub process_type: Option<String>,
    pub correlation_id: Option<String>,
    pub status: Status,
    pub progress: Option<Progress>,
    pub error: Option<ErrorInfo>,
    pub attributes: BTreeMap<String, String>,
    /// Server clock when first seen.
    pub created_at: Millis,
    /// `occurred_at` of the event that first made it `running`.
    pub started_at: Option<Millis>,
    /// Latest `occurred_at` among the events applied to it or its tasks.
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    /// `occurred_at` of the last applied process-level update: the mark that
    /// an older non-terminal process event is measured against (rule 6).
    pub last_update_at: Option<Millis>,
    /// Events kept in its history (accepted and stale).
    pub event_count: u64,
    pub last_seq: u64,
    pub task_counts: TaskCounts,
    /// Tasks ever created; the next task's ordinal.
    pub task_total: u32,
    /// Seconds without an event after which it is stalled.
    pub heartbeat_timeout: Option<u32>,
    /// When the daemon times it out, unless it finishes first.
    pub deadline: Option<Millis>,
    /// Set by the daemon when its heartbeat timeout passed without an
    /// event (the moment it did); cleared by the next event.
    pub stalled_since: Option<Millis>,
    /// Server clock of the last event stored for it or its tasks: what
    /// the heartbeat timeout is measured from.
    pub heard_at: Millis,
    /// The due time of its heartbeat check in the store's due table, when
    /// one is waiting there.
    pub heartbeat_check: Option<Millis>,
}

impl Process {
    pub fn new(id: String, created_at: Millis) -> Self {
        Process {
            id,
            name: None,
            process_type: None,
            correlation_id: None,
            status: Status::Pending,
            progress: None,
            error: None,
            attributes: BTreeMap::new(),
            created_at,
            started_at: None,
            updated_at: Millis::MIN,
            finished_at: None,
            last_update_at: None,
            event_count: 0,
            last_seq: 0,
            task_counts: TaskCounts::default(),
            task_total: 0,
            heartbeat_timeout: None,
            deadline: None,
            stalled_since: None,
            heard_at: created_at,
            heartbeat_check: None,
        }
    }

    /// Milliseconds from first `running` to finish, once both are known;
    /// never negative, even when the source's clocks disagree.
    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.finished_at? - self.started_at?).max(0))
    }
}

/// One try at running a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub status: Status,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub error: Option<ErrorInfo>,
}

/// The current state of a task, with every attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub name: Option<String>,
    pub status: Status,
    /// The current attempt, from 1; 0 only before the first event is applied.
    pub attempt: u32,
    pub progress: Option<Progress>,
    pub error: Option<ErrorInfo>,
    pub attributes: BTreeMap<String, String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    /// `occurred_at` of the last applied event; `None` before the first.
    pub updated_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub attempts: Vec<Attempt>,
    /// As the process's, for this task alone.
    pub heartbeat_timeout: Option<u32>,
    pub stalled_since: Option<Millis>,
    pub heard_at: Millis,
    pub heartbeat_check: Option<Millis>,
}

impl Task {
    pub fn new(id: String, created_at: Millis) -> Self {
        Task {
            id,
            name: None,
            status: Status::Pending,
            attempt: 0,
            progress: None,
            error: None,
            attributes: BTreeMap::new(),
            created_at,
            started_at: None,
            updated_at: None,
            finished_at: None,
            attempts: Vec::new(),
            heartbeat_timeout: None,
            stalled_since: None,
            heard_at: created_at,
            heartbeat_check: None,
        }
    }

    fn current_attempt(&mut self) -> &mut Attempt {
        if self.attempts.is_empty() {
            self.attempt = 1;
            self.attempts.push(Attempt {
                attempt: 1,
                status: Status::Pending,
                started_at: None,
                finished_at: None,
                error: None,
            });
        }
        let last = self.attempts.len() - 1;
        &mut self.attempts[last]
    }
}

/// What applying one event decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The state changed; the event goes into history.
    Accepted,
    /// Nothing changed (an old or repeated update); the event goes into history.
    Stale,
    /// A different terminal status than the one already reached; nothing is stored.
    Conflict { current_status: Status },
}

/// Applies `event` (happened at `at`) to `process` and, for a task event, to
/// `task`. `task_is_new` says the task record was made for this event and is
/// not counted in the process's task counts yet. Records change when the
/// outcome is `Accepted`; a `Stale` event only fills in what they lack
/// (see `fill_in_process`); a `Conflict` changes nothing.
pub fn apply(
    process: &mut Process,
    task: Option<&mut Task>,
    task_is_new: bool,
    event: &Event,
    at: Millis,
) -> Outcome {
    if event.kind.is_daemon_only() {
        // A stall is recorded by the writer, not decided by these rules.
        return Outcome::Stale;
    }
    let outcome = match (event.kind.scope(), task) {
        (Scope::Process, _) => {
            let outcome = apply_to_process(process, event, at);
            if outcome == Outcome::Stale {
                fill_in_process(process, event, at);
            }
            outcome
        }
        (Scope::Task, Some(task)) => {
            let outcome = apply_to_task(process, task, task_is_new, event, at);
            // A stale event for a task never seen creates nothing.
            if outcome == Outcome::Stale && !task_is_new {
                fill_in_task(task, event, at);
            }
            outcome
        }
        // Validation guarantees a task id on every task event, and the
        // writer always supplies the task: refusing is the safe answer.
        (Scope::Task, None) => Outcome::Conflict {
            current_status: process.status,
        },
    };
    if outcome == Outcome::Stale {
        // Given to the process by any event, as when accepted; here only
        // when it has none yet.
        fill(&mut process.process_type, &event.process_type);
        fill(&mut process.correlation_id, &event.correlation_id);
    }
    if outcome == Outcome::Accepted {
        process.updated_at = process.updated_at.max(at);
        if let Some(process_type) = &event.process_type {
            process.process_type = Some(process_type.clone());
        }
        if let Some(correlation_id) = &event.correlation_id {
            process.correlation_id = Some(correlation_id.clone());
        }
    }
    outcome
}

fn apply_to_process(process: &mut Process, event: &Event, at: Millis) -> Outcome {
    match event.kind.terminal_status() {
        Some(terminal) => {
            if process.status.is_terminal() {
                return terminal_again(process.status, terminal);
            }
            process.status = terminal;
            process.finished_at = Some(at);
            if event.error.is_some() {
                process.error = event.error.clone();
            }
        }
        None => {
            if process.status.is_terminal()
                || process.last_update_at.is_some_and(|last| at < last)
                || (event.kind == EventType::ProcessQueued && process.status == Status::Running)
            {
                return Outcome::Stale;
            }
            if event.kind != EventType::ProcessQueued {
                mark_process_running(process, at);
            }
            process.last_update_at = Some(at);
        }
    }
    if let Some(name) = &event.name {
        process.name = Some(name.clone());
    }
    if event.progress.is_some() {
        process.progress = event.progress.clone();
    }
    merge(&mut process.attributes, &event.attributes);
    if let Some(timeout) = event.heartbeat_timeout {
        process.heartbeat_timeout = Some(timeout);
    }
    if let Some(deadline) = event.deadline {
        process.deadline = deadline;
    }
    Outcome::Accepted
}

fn apply_to_task(
    process: &mut Process,
    task: &mut Task,
    task_is_new: bool,
    event: &Event,
    at: Millis,
) -> Outcome {
    let before = task.status;
    match event.kind.terminal_status() {
        Some(terminal) => {
            if task.status.is_terminal() {
                return terminal_again(task.status, terminal);
            }
            task.status = terminal;
            task.finished_at = Some(at);
            if event.error.is_some() {
                task.error = event.error.clone();
            }
            let attempt = task.current_attempt();
            attempt.status = terminal;
            attempt.finished_at = Some(at);
            attempt.error = event.error.clone();
        }
        None => {
            // A finished process takes no more non-terminal news (rule 4);
            // only late completions of its running tasks (rule 5).
            if process.status.is_terminal() {
                return Outcome::Stale;
            }
            if is_retry(task, event, at) {
                task.attempt += 1;
                task.attempts.push(Attempt {
                    attempt: task.attempt,
                    status: Status::Running,
                    started_at: Some(at),
                    finished_at: None,
                    error: None,
                });
                task.status = Status::Running;
                task.finished_at = None;
                task.error = None;
                task.progress = None;
            } else {
                if task.status.is_terminal() || task.updated_at.is_some_and(|last| at < last) {
                    return Outcome::Stale;
                }
                task.status = Status::Running;
                task.started_at.get_or_insert(at);
                let attempt = task.current_attempt();
                attempt.status = Status::Running;
                attempt.started_at.get_or_insert(at);
            }
        }
    }
    task.updated_at = Some(task.updated_at.map_or(at, |last| last.max(at)));
    if let Some(name) = &event.name {
        task.name = Some(name.clone());
    }
    if event.progress.is_some() {
        task.progress = event.progress.clone();
    }
    merge(&mut task.attributes, &event.attributes);
    if let Some(timeout) = event.heartbeat_timeout {
        task.heartbeat_timeout = Some(timeout);
    }
    if !task_is_new {
        process.task_counts.remove(before);
    }
    process.task_counts.add(task.status);
    if !process.status.is_terminal() {
        mark_process_running(process, at);
    }
    Outcome::Accepted
}

/// A stale event (late, or news for something already ended) changes no
/// status, progress or time the process has. What it alone carried is not
/// lost, though (webhooks arrive out of order, and Event Grid delivers
/// without any order): a name and attributes the process does not have
/// yet are taken from it, and a start earlier than any known moves
/// `started_at` back to it. So a run whose
/// end arrived before its start still shows its name and its duration.
fn fill_in_process(process: &mut Process, event: &Event, at: Millis) {
    fill(&mut process.name, &event.name);
    fill_attributes(&mut process.attributes, &event.attributes);
    let starts = matches!(
        event.kind,
        EventType::ProcessStarted | EventType::ProcessProgress | EventType::ProcessHeartbeat
    );
    if starts && process.finished_at.is_none_or(|finished| at <= finished) {
        earliest(&mut process.started_at, at);
    }
}

/// `started_at` is the first moment known running: a late event may only
/// move it earlier.
fn earliest(field: &mut Option<Millis>, at: Millis) {
    *field = Some(field.map_or(at, |known| known.min(at)));
}

/// As `fill_in_process`, for a task: its name, attributes, and its start
/// (and its only attempt's, when it has had one).
fn fill_in_task(task: &mut Task, event: &Event, at: Millis) {
    fill(&mut task.name, &event.name);
    fill_attributes(&mut task.attributes, &event.attributes);
    let starts = matches!(event.kind, EventType::TaskStarted | EventType::TaskProgress);
    if starts && task.finished_at.is_none_or(|finished| at <= finished) {
        earliest(&mut task.started_at, at);
        if let [only] = task.attempts.as_mut_slice() {
            earliest(&mut only.started_at, at);
        }
    }
}

fn fill(field: &mut Option<String>, from: &Option<String>) {
    if field.is_none() {
        field.clone_from(from);
    }
}

fn fill_attributes(into: &mut BTreeMap<String, String>, from: &BTreeMap<String, String>) {
    for (key, value) in from {
        into.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// Rule 3: `task.started` on a failed task, no older than its failure, is
/// a retry (a new attempt).
pub(super) fn is_retry(task: &Task, event: &Event, at: Millis) -> bool {
    event.kind == EventType::TaskStarted
        && task.status == Status::Failed
        && task.finished_at.is_some_and(|finished| at >= finished)
}

/// Rule 4: on something terminal, the same terminal news is stale and a
/// different one is a conflict.
fn terminal_again(current: Status, incoming: Status) -> Outcome {
    if current == incoming {
        Outcome::Stale
    } else {
        Outcome::Conflict {
            current_status: current,
        }
    }
}

fn mark_process_running(process: &mut Process, at: Millis) {
    if process.status == Status::Pending {
        process.status = Status::Running;
        process.started_at.get_or_insert(at);
    }
}

fn merge(into: &mut BTreeMap<String, String>, from: &BTreeMap<String, String>) {
    for (key, value) in from {
        into.insert(key.clone(), value.clone());
    }
}
