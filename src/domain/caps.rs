//! How much one process may keep. Each event is bounded on its own (64
//! attributes, 4 KiB a value), but attributes merge into the process and
//! its tasks, and tasks and attempts accumulate: without caps, one process
//! (and every GET of it, and every later event's rewrite of it) grows
//! without end. An event that would take a process or task past a cap is
//! refused whole, whatever else it would do.

use super::rules::is_retry;
use super::{Event, Millis, Process, Scope, Task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The caps in force. Part of every logged write group, so that replaying
/// a group after a crash decides exactly as the first time, whatever the
/// configuration says by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    pub attributes_per_process: u32,
    /// Keys and values together, in bytes.
    pub attribute_bytes_per_process: u32,
    pub attributes_per_task: u32,
    pub attribute_bytes_per_task: u32,
    pub tasks_per_process: u32,
    pub attempts_per_task: u32,
}

impl Caps {
    /// No cap at all: what builds before caps applied, for their logs.
    pub const UNLIMITED: Caps = Caps {
        attributes_per_process: u32::MAX,
        attribute_bytes_per_process: u32::MAX,
        attributes_per_task: u32::MAX,
        attribute_bytes_per_task: u32::MAX,
        tasks_per_process: u32::MAX,
        attempts_per_task: u32::MAX,
    };
}

impl Default for Caps {
    /// A process of 256 attributes in 64 KiB, with up to 1,000 tasks of 64
    /// attributes in 16 KiB and 20 attempts each: room for any real run,
    /// and a GET that stays in the megabytes.
    fn default() -> Self {
        Caps {
            attributes_per_process: 256,
            attribute_bytes_per_process: 64 * 1024,
            attributes_per_task: 64,
            attribute_bytes_per_task: 16 * 1024,
            tasks_per_process: 1000,
            attempts_per_task: 20,
        }
    }
}

/// Which cap an event would pass: the setting that sets it, its value,
/// and the event field to blame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    pub setting: &'static str,
    pub limit: u32,
    pub field: &'static str,
}

impl LimitExceeded {
    pub fn detail(&self) -> String {
        format!(
            "this event would take its {} past {} ({} = {}); nothing of it was applied",
            match self.setting {
                "limits.attributes_per_process" => "process's attributes",
                "limits.attribute_bytes_per_process" => "process's attribute bytes",
                "limits.attributes_per_task" => "task's attributes",
                "limits.attribute_bytes_per_task" => "task's attribute bytes",
                "limits.tasks_per_process" => "process's tasks",
                _ => "task's attempts",
            },
            self.limit,
            self.setting,
            self.limit
        )
    }
}

/// Refuses an event that would take `process` (or, for a task event,
/// `task`, made for this event when `task_is_new`) past a cap. Costs
/// nothing for an event without attributes; otherwise in proportion to
/// what the capped record holds, which the caps bound.
pub fn check(
    process: &Process,
    task: Option<&Task>,
    task_is_new: bool,
    event: &Event,
    at: Millis,
    caps: &Caps,
) -> Result<(), LimitExceeded> {
    match (event.kind.scope(), task) {
        (Scope::Process, _) => check_attributes(
            &process.attributes,
            &event.attributes,
            (caps.attributes_per_process, "limits.attributes_per_process"),
            (
                caps.attribute_bytes_per_process,
                "limits.attribute_bytes_per_process",
            ),
        ),
        (Scope::Task, Some(task)) => {
            if task_is_new && process.task_total >= caps.tasks_per_process {
                return Err(LimitExceeded {
                    setting: "limits.tasks_per_process",
                    limit: caps.tasks_per_process,
                    field: "task_id",
                });
            }
            if is_retry(task, event, at) && task.attempt >= caps.attempts_per_task {
                return Err(LimitExceeded {
                    setting: "limits.attempts_per_task",
                    limit: caps.attempts_per_task,
                    field: "type",
                });
            }
            check_attributes(
                &task.attributes,
                &event.attributes,
                (caps.attributes_per_task, "limits.attributes_per_task"),
                (
                    caps.attribute_bytes_per_task,
                    "limits.attribute_bytes_per_task",
                ),
            )
        }
        (Scope::Task, None) => Ok(()),
    }
}

/// The attributes `kept` would hold with `incoming` merged in, by count and
/// by bytes of keys and values, against their caps.
fn check_attributes(
    kept: &BTreeMap<String, String>,
    incoming: &BTreeMap<String, String>,
    (max_count, count_setting): (u32, &'static str),
    (max_bytes, bytes_setting): (u32, &'static str),
) -> Result<(), LimitExceeded> {
    if incoming.is_empty() {
        return Ok(());
    }
    let mut count = kept.len();
    let mut bytes: usize = kept.iter().map(|(k, v)| k.len() + v.len()).sum();
    for (key, value) in incoming {
        match kept.get(key) {
            Some(old) => bytes = bytes - old.len() + value.len(),
            None => {
                count += 1;
                bytes += key.len() + value.len();
            }
        }
    }
    if count > max_count as usize {
        return Err(LimitExceeded {
            setting: count_setting,
            limit: max_count,
            field: "attributes",
        });
    }
    if bytes > max_bytes as usize {
        return Err(LimitExceeded {
            setting: bytes_setting,
            limit: max_bytes,
            field: "attributes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::bare_event;
    use crate::domain::{EventType, Status};

    fn event(kind: EventType, attributes: &[(&str, &str)]) -> Event {
        let task = (kind.scope() == Scope::Task).then_some("t");
        Event {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..bare_event(kind, task)
        }
    }

    const SMALL: Caps = Caps {
        attributes_per_process: 2,
        attribute_bytes_per_process: 10,
        attributes_per_task: 1,
        attribute_bytes_per_task: 4,
        tasks_per_process: 1,
        attempts_per_task: 2,
    };

    #[test]
    fn attributes_are_capped_as_merged_by_count_and_bytes() {
        let mut process = Process::new("p".into(), 0);
        process.attributes.insert("a".into(), "1".into());
        let check_with = |attributes: &[(&str, &str)]| {
            check(
                &process,
                None,
                false,
                &event(EventType::ProcessProgress, attributes),
                0,
                &SMALL,
            )
        };
        assert_eq!(check_with(&[("b", "2")]), Ok(()));
        // Replacing a value adds no attribute.
        assert_eq!(check_with(&[("a", "12345"), ("b", "2")]), Ok(()));
        assert_eq!(
            check_with(&[("b", "2"), ("c", "3")]).unwrap_err().setting,
            "limits.attributes_per_process"
        );
        assert_eq!(
            check_with(&[("a", "1234567890")]).unwrap_err().setting,
            "limits.attribute_bytes_per_process"
        );
    }

    #[test]
    fn tasks_and_attempts_are_capped() {
        let mut process = Process::new("p".into(), 0);
        let task = Task::new("t".into(), 0);
        let started = event(EventType::TaskStarted, &[]);
        assert_eq!(
            check(&process, Some(&task), true, &started, 0, &SMALL),
            Ok(())
        );
        process.task_total = 1;
        let refused = check(&process, Some(&task), true, &started, 0, &SMALL).unwrap_err();
        assert_eq!(
            (refused.setting, refused.field),
            ("limits.tasks_per_process", "task_id")
        );
        // An existing task is not a new one.
        assert_eq!(
            check(&process, Some(&task), false, &started, 0, &SMALL),
            Ok(())
        );
        // A retry of a failed task at its last attempt is refused.
        let mut failed = Task::new("t".into(), 0);
        failed.status = Status::Failed;
        failed.finished_at = Some(5);
        failed.attempt = 2;
        let refused = check(&process, Some(&failed), false, &started, 10, &SMALL).unwrap_err();
        assert_eq!(refused.setting, "limits.attempts_per_task");
        failed.attempt = 1;
        assert_eq!(
            check(&process, Some(&failed), false, &started, 10, &SMALL),
            Ok(())
        );
    }

    #[test]
    fn the_detail_names_the_setting_and_its_value() {
        let detail = LimitExceeded {
            setting: "limits.tasks_per_process",
            limit: 1000,
            field: "task_id",
        }
        .detail();
        assert!(
            detail.contains("limits.tasks_per_process = 1000"),
            "{detail}"
        );
        assert!(detail.contains("process's tasks"), "{detail}");
    }
}
