//! Due times: what the writer must look at when (deadlines, heartbeat
//! checks of processes and tasks), oldest first. An entry may be out of
//! date (the process heard from since, or finished); the writer checks the
//! record when it fires.

use crate::domain::{timing, Millis};
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::Due;
use crate::store::StoreError;

pub struct DueTimes<'a> {
    due: WriteTable<'a, (i64, u64, u8, u32), ()>,
}

impl<'a> DueTimes<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        DueTimes {
            due: writing.due(applied),
        }
    }

    /// Looks at the deadline of the process at `ordinal` at `at`.
    pub fn deadline(&mut self, ordinal: u64, at: Millis) -> Result<(), StoreError> {
        self.due.insert((at, ordinal, Due::Deadline as u8, 0), ())
    }

    /// Makes sure a heartbeat check of the process at `ordinal` (or its
    /// task `task_ordinal`, with `Due::TaskHeartbeat`) waits no later than
    /// the moment `timeout` passes from `heard_at`. An earlier check
    /// already there (`check`) is enough: when it fires it moves itself to
    /// the moment then due, so that a process heard from often costs no
    /// writes here.
    pub fn heartbeat(
        &mut self,
        (ordinal, what, task_ordinal): (u64, Due, u32),
        timeout: Option<u32>,
        heard_at: Millis,
        check: &mut Option<Millis>,
    ) -> Result<(), StoreError> {
        let Some(timeout) = timeout else {
            return Ok(());
        };
        let at = timing::silence_ends(heard_at, timeout);
        if check.is_none_or(|scheduled| at < scheduled) {
            self.check_at((ordinal, what, task_ordinal), at)?;
            *check = Some(at);
        }
        Ok(())
    }

    /// A heartbeat check at `at`, whatever waits already.
    pub fn check_at(
        &mut self,
        (ordinal, what, task_ordinal): (u64, Due, u32),
        at: Millis,
    ) -> Result<(), StoreError> {
        self.due.insert((at, ordinal, what as u8, task_ordinal), ())
    }

    /// Takes the entries due by `now`, oldest first, at most `limit`.
    pub fn take(
        &mut self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(i64, u64, u8, u32)>, StoreError> {
        let taken = self
            .due
            .range(..=(now, u64::MAX, u8::MAX, u32::MAX))?
            .take(limit)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<Vec<_>, _>>()?;
        for &key in &taken {
            self.due.remove(key)?;
        }
        Ok(taken)
    }

    /// The earliest due time, if any.
    pub fn next(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self.due.first()?.map(|(key, _)| key.value().0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::write::scratch::Scratch;

    #[test]
    fn a_check_already_due_earlier_is_enough_and_due_entries_are_taken_in_order() {
        let mut scratch = Scratch::new();
        scratch.group(|writing, applied| {
            let mut due = DueTimes::open(writing, applied);
            let mut check = None;
            due.heartbeat((1, Due::Heartbeat, 0), Some(10), 1_000, &mut check)
                .unwrap();
            assert_eq!(check, Some(11_000));
            // Heard from later: the check waiting at 11 s is enough.
            due.heartbeat((1, Due::Heartbeat, 0), Some(10), 5_000, &mut check)
                .unwrap();
            assert_eq!(check, Some(11_000));
            // A shorter timeout needs an earlier check.
            due.heartbeat((1, Due::Heartbeat, 0), Some(2), 5_000, &mut check)
                .unwrap();
            assert_eq!(check, Some(7_000));
            due.heartbeat((1, Due::Heartbeat, 0), None, 0, &mut check)
                .unwrap();
            due.deadline(2, 3_000).unwrap();
            due.check_at((3, Due::TaskHeartbeat, 4), 9_000).unwrap();
        });
        scratch.apply();
        let taken = scratch.group(|writing, applied| {
            let mut due = DueTimes::open(writing, applied);
            assert_eq!(due.next().unwrap(), Some(3_000));
            let taken = due.take(9_000, 2).unwrap();
            assert_eq!(due.next().unwrap(), Some(9_000), "what was left");
            taken
        });
        assert_eq!(
            taken,
            [
                (3_000, 2, Due::Deadline as u8, 0),
                (7_000, 1, Due::Heartbeat as u8, 0)
            ]
        );
        let rest = scratch
            .group(|writing, applied| DueTimes::open(writing, applied).take(20_000, 10).unwrap());
        assert_eq!(
            rest,
            [
                (9_000, 3, Due::TaskHeartbeat as u8, 4),
                (11_000, 1, Due::Heartbeat as u8, 0)
            ]
        );
    }
}
