//! Duration summaries: how long the processes of each type that ended in
//! each minute, hour and day took (`store::durations`), added to as they
//! end and written once a group.

use crate::domain::{Millis, Process};
use crate::store::durations;
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::StoreError;

pub struct Summaries<'a> {
    durations: WriteTable<'a, (&'static str, u8, i64), &'static [u8]>,
    /// The summaries changed in this group.
    changed: durations::Pending,
}

impl<'a> Summaries<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        Summaries {
            durations: writing.durations(applied),
            changed: durations::Pending::default(),
        }
    }

    /// Counts a process that has just ended.
    pub fn ended(&mut self, process: &Process, finished_at: Millis) -> Result<(), StoreError> {
        self.changed.add(
            &*self.durations,
            process.process_type.as_deref(),
            (process.status, finished_at, process.duration_ms()),
        )
    }

    pub fn write(&mut self) -> Result<(), StoreError> {
        self.changed.write(&mut self.durations)
    }
}
