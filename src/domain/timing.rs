//! The timing rules of stalls and deadlines (api.md 1.1, "Stalls and
//! deadlines"): when a heartbeat check comes due, what a process type's
//! defaults give a process, when a deadline has passed, and whether a
//! silent process or task is stalled. Pure functions; the writer keeps
//! the due times in the store and acts on what these decide.

use super::{ErrorInfo, Event, EventType, Millis, Process, Task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A process type's defaults (`[timeouts]` in the config), given to a
/// process when it first gets that type, for what its events did not set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeTimeouts {
    pub heartbeat_timeout: Option<u32>,
    /// From the process's creation, in milliseconds.
    pub deadline_after_ms: Option<i64>,
}

/// Defaults by process type. Part of every logged write group, as caps are.
pub type TimeoutDefaults = BTreeMap<String, TypeTimeouts>;

/// When silence of `timeout` seconds since `heard_at` is up.
pub fn silence_ends(heard_at: Millis, timeout: u32) -> Millis {
    heard_at.saturating_add(i64::from(timeout) * 1000)
}

/// Gives `process`, which has just got its first type, that type's
/// defaults for what it does not have: a heartbeat timeout, and a deadline
/// unless `event` set or cleared one.
pub fn take_type_defaults(process: &mut Process, defaults: &TimeoutDefaults, event: &Event) {
    let Some(defaults) = process
        .process_type
        .as_ref()
        .and_then(|kind| defaults.get(kind))
    else {
        return;
    };
    if process.heartbeat_timeout.is_none() {
        process.heartbeat_timeout = defaults.heartbeat_timeout;
    }
    if process.deadline.is_none() && event.deadline.is_none() {
        process.deadline = defaults
            .deadline_after_ms
            .map(|after| process.created_at.saturating_add(after));
    }
}

/// The deadline of a process that has passed at `now` without it ending:
/// the daemon times it out before anything else happens to it.
pub fn passed_deadline(process: &Process, now: Millis) -> Option<Millis> {
    process
        .deadline
        .filter(|deadline| *deadline <= now && !process.status.is_terminal())
}

/// Whether a heartbeat check due at `due` is the one `check` waits for:
/// a check moved to an earlier time since is spent.
pub fn is_current_check(check: Option<Millis>, due: Millis) -> bool {
    check == Some(due)
}

/// When a process went silent, if its heartbeat timeout says it can:
/// running (not terminal), not already stalled.
pub fn process_silent_since(process: &Process) -> Option<Millis> {
    match process.heartbeat_timeout {
        Some(timeout) if !process.status.is_terminal() && process.stalled_since.is_none() => {
            Some(silence_ends(process.heard_at, timeout))
        }
        _ => None,
    }
}

/// When a task went silent, if it can: it and its process running, the
/// task not already stalled.
pub fn task_silent_since(process: &Process, task: &Task) -> Option<Millis> {
    match task.heartbeat_timeout {
        Some(timeout)
            if !task.status.is_terminal()
                && !process.status.is_terminal()
                && task.stalled_since.is_none() =>
        {
            Some(silence_ends(task.heard_at, timeout))
        }
        _ => None,
    }
}

/// The daemon's `process.timed_out` for a process whose deadline passed,
/// at the deadline.
pub fn deadline_event(process_id: &str, deadline: Millis) -> Event {
    let mut event = daemon_event(EventType::ProcessTimedOut, process_id, None, deadline);
    event.error = Some(ErrorInfo {
        code: "deadline_exceeded".into(),
        message: "the process did not finish by its deadline (the event's occurred_at)".into(),
    });
    event
}

/// The daemon's `process.stalled` (or `task.stalled` for `task_id`), at
/// the moment the silence began.
pub fn stall_event(process_id: &str, task_id: Option<&str>, since: Millis) -> Event {
    let kind = if task_id.is_some() {
        EventType::TaskStalled
    } else {
        EventType::ProcessStalled
    };
    daemon_event(kind, process_id, task_id, since)
}

fn daemon_event(kind: EventType, process_id: &str, task_id: Option<&str>, at: Millis) -> Event {
    Event {
        event_id: None,
        kind,
        process_id: process_id.to_owned(),
        task_id: task_id.map(str::to_owned),
        occurred_at: Some(at),
        name: None,
        process_type: None,
        correlation_id: None,
        progress: None,
        error: None,
        attributes: BTreeMap::new(),
        heartbeat_timeout: None,
        deadline: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn typed(kind: &str) -> Process {
        let mut process = Process::new("p".into(), 1_000);
        process.process_type = Some(kind.into());
        process
    }

    fn defaults() -> TimeoutDefaults {
        TimeoutDefaults::from([(
            "import".to_owned(),
            TypeTimeouts {
                heartbeat_timeout: Some(30),
                deadline_after_ms: Some(60_000),
            },
        )])
    }

    #[test]
    fn a_type_gives_what_the_process_and_its_event_did_not_set() {
        let plain = deadline_event("p", 0);
        let mut process = typed("import");
        take_type_defaults(&mut process, &defaults(), &plain);
        assert_eq!(process.heartbeat_timeout, Some(30));
        assert_eq!(process.deadline, Some(61_000));

        let mut set = typed("import");
        set.heartbeat_timeout = Some(5);
        set.deadline = Some(7);
        take_type_defaults(&mut set, &defaults(), &plain);
        assert_eq!((set.heartbeat_timeout, set.deadline), (Some(5), Some(7)));

        // An event that cleared the deadline keeps it cleared.
        let mut cleared_by_event = plain.clone();
        cleared_by_event.deadline = Some(None);
        let mut cleared = typed("import");
        take_type_defaults(&mut cleared, &defaults(), &cleared_by_event);
        assert_eq!(cleared.deadline, None);

        let mut other = typed("export");
        take_type_defaults(&mut other, &defaults(), &plain);
        assert_eq!((other.heartbeat_timeout, other.deadline), (None, None));
    }

    #[test]
    fn a_deadline_passes_at_its_moment_and_never_for_an_ended_process() {
        let mut process = typed("import");
        process.deadline = Some(5_000);
        assert_eq!(passed_deadline(&process, 4_999), None);
        assert_eq!(passed_deadline(&process, 5_000), Some(5_000));
        process.status = Status::Succeeded;
        assert_eq!(passed_deadline(&process, 9_000), None);
    }

    #[test]
    fn only_a_running_unstalled_process_or_task_with_a_timeout_goes_silent() {
        let mut process = typed("import");
        process.status = Status::Running;
        process.heard_at = 10_000;
        assert_eq!(process_silent_since(&process), None);
        process.heartbeat_timeout = Some(3);
        assert_eq!(process_silent_since(&process), Some(13_000));
        process.stalled_since = Some(13_000);
        assert_eq!(process_silent_since(&process), None);

        let mut task = Task::new("t".into(), 0);
        task.status = Status::Running;
        task.heard_at = 2_000;
        task.heartbeat_timeout = Some(1);
        assert_eq!(task_silent_since(&process, &task), Some(3_000));
        process.status = Status::Failed;
        assert_eq!(task_silent_since(&process, &task), None);
    }

    #[test]
    fn the_daemons_events_say_what_they_are() {
        let timed_out = deadline_event("run-1", 42);
        assert_eq!(timed_out.kind, EventType::ProcessTimedOut);
        assert_eq!(timed_out.occurred_at, Some(42));
        assert_eq!(timed_out.error.unwrap().code, "deadline_exceeded");
        let stalled = stall_event("run-1", Some("t"), 7);
        assert_eq!(
            (stalled.kind, stalled.task_id.as_deref()),
            (EventType::TaskStalled, Some("t"))
        );
        assert_eq!(
            stall_event("run-1", None, 7).kind,
            EventType::ProcessStalled
        );
    }
}
