//! Process and task statuses.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The status of a process or a task. `Skipped` is only ever a task's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

impl Status {
    /// Every status, in the order used for counters and listings.
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
        Status::Skipped,
    ];

    /// The statuses a process ends in (`Skipped` is only a task's).
    pub const PROCESS_ENDS: [Status; 4] = [
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
        }
    }

    /// Stable small number for index keys and counters; part of the store format.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status `{s}`; expected one of {}", known.join(", "))
            })
    }
}

/// How many tasks of a process are in each status, indexed by `Status::code`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts(pub [u32; 7]);

impl TaskCounts {
    pub fn add(&mut self, status: Status) {
        self.0[usize::from(status.code())] += 1;
    }

    pub fn remove(&mut self, status: Status) {
        let slot = &mut self.0[usize::from(status.code())];
        *slot = slot.saturating_sub(1);
    }

    /// The statuses with at least one task, with their counts.
    pub fn non_zero(&self) -> impl Iterator<Item = (Status, u32)> + '_ {
        Status::ALL
            .into_iter()
            .zip(self.0)
            .filter(|(_, count)| *count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text_and_codes_are_their_positions() {
        for (position, status) in Status::ALL.into_iter().enumerate() {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(usize::from(status.code()), position);
        }
        assert!("done".parse::<Status>().is_err());
    }
}
