//! The indexes a listing walks: creation order, status, type with status,
//! correlation id and its prefixes, indexed attributes, stalled now, and
//! finished (for retention). Each process's entries follow its record,
//! and the store-wide counts of statuses and stalls follow its entries.

use crate::domain::{Millis, Process, Status};
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::{self, Counters};
use crate::store::StoreError;
use std::ops::Bound;

/// A stretch of the finished index: (status code, finished_at, ordinal)
/// bounds.
pub type FinishedRange = (Bound<(u8, Millis, u64)>, Bound<(u8, Millis, u64)>);

/// The fields of a process that its index entries are made of, as the
/// tables hold them: enough to move its entries, without keeping a second
/// copy of the whole record.
pub struct IndexedFields {
    pub status: Status,
    pub process_type: Option<String>,
    pub correlation_id: Option<String>,
    pub stalled: bool,
}

impl IndexedFields {
    pub fn of(process: &Process) -> Self {
        IndexedFields {
            status: process.status,
            process_type: process.process_type.clone(),
            correlation_id: process.correlation_id.clone(),
            stalled: process.stalled_since.is_some(),
        }
    }
}

pub struct Indexes<'a> {
    by_created: WriteTable<'a, (i64, u64), ()>,
    by_status: WriteTable<'a, (u8, u64), ()>,
    by_type: WriteTable<'a, (&'static str, u8, u64), ()>,
    by_correlation: WriteTable<'a, (&'static str, u64), ()>,
    by_correlation_prefix: WriteTable<'a, (&'static str, u64), &'static str>,
    by_attribute: WriteTable<'a, (&'static str, &'static str, u64), ()>,
    by_stalled: WriteTable<'a, u64, ()>,
    by_finished: WriteTable<'a, (u8, i64, u64), ()>,
}

impl<'a> Indexes<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        Indexes {
            by_created: writing.by_created(applied),
            by_status: writing.by_status(applied),
            by_type: writing.by_type(applied),
            by_correlation: writing.by_correlation(applied),
            by_correlation_prefix: writing.by_correlation_prefix(applied),
            by_attribute: writing.by_attribute(applied),
            by_stalled: writing.by_stalled(applied),
            by_finished: writing.by_finished(applied),
        }
    }

    /// The entries of a process new in this group, as it is now. Returns
    /// whether it is terminal already.
    pub fn add(
        &mut self,
        ordinal: u64,
        process: &Process,
        counters: &mut Counters,
    ) -> Result<bool, StoreError> {
        counters.count_status(process.status, 1);
        self.by_created.insert((process.created_at, ordinal), ())?;
        self.by_status
            .insert((process.status.code(), ordinal), ())?;
        if let Some(process_type) = &process.process_type {
            self.by_type
                .insert((process_type.as_str(), process.status.code(), ordinal), ())?;
        }
        if let Some(correlation_id) = &process.correlation_id {
            self.by_correlation
                .insert((correlation_id.as_str(), ordinal), ())?;
            self.add_prefixes(ordinal, correlation_id)?;
        }
        if process.stalled_since.is_some() {
            self.by_stalled.insert(ordinal, ())?;
            counters.stalled += 1;
        }
        self.add_finished(ordinal, process)
    }

    /// Moves a process's entries from what they were made of to what it
    /// is now. Returns whether it has just turned terminal.
    pub fn update(
        &mut self,
        ordinal: u64,
        before: &IndexedFields,
        after: &Process,
        counters: &mut Counters,
    ) -> Result<bool, StoreError> {
        let mut finished = false;
        if before.status != after.status {
            self.by_status.remove((before.status.code(), ordinal))?;
            self.by_status.insert((after.status.code(), ordinal), ())?;
            counters.count_status(before.status, -1);
            counters.count_status(after.status, 1);
            if !before.status.is_terminal() {
                finished = self.add_finished(ordinal, after)?;
            }
        }
        if before.process_type != after.process_type || before.status != after.status {
            if let Some(old) = &before.process_type {
                self.by_type
                    .remove((old.as_str(), before.status.code(), ordinal))?;
            }
            if let Some(new) = &after.process_type {
                self.by_type
                    .insert((new.as_str(), after.status.code(), ordinal), ())?;
            }
        }
        let stalled = after.stalled_since.is_some();
        if before.stalled != stalled {
            if stalled {
                self.by_stalled.insert(ordinal, ())?;
                counters.stalled += 1;
            } else {
                self.by_stalled.remove(ordinal)?;
                counters.stalled = counters.stalled.saturating_sub(1);
            }
        }
        if before.correlation_id != after.correlation_id {
            if let Some(old) = &before.correlation_id {
                self.by_correlation.remove((old.as_str(), ordinal))?;
                self.remove_prefixes(ordinal, old)?;
            }
            if let Some(new) = &after.correlation_id {
                self.by_correlation.insert((new.as_str(), ordinal), ())?;
                self.add_prefixes(ordinal, new)?;
            }
        }
        Ok(finished)
    }

    /// Moves a process's entries in the attribute index from the values
    /// `before` to `after`.
    pub fn update_attributes(
        &mut self,
        ordinal: u64,
        before: &[(String, String)],
        after: &[(String, String)],
    ) -> Result<(), StoreError> {
        for (key, value) in before.iter().filter(|entry| !after.contains(entry)) {
            self.by_attribute
                .remove((key.as_str(), value.as_str(), ordinal))?;
        }
        for (key, value) in after.iter().filter(|entry| !before.contains(entry)) {
            self.by_attribute
                .insert((key.as_str(), value.as_str(), ordinal), ())?;
        }
        Ok(())
    }

    /// Removes every entry of a removed process: those its fields
    /// `indexed` (and `attributes`) made, as the tables hold them.
    pub fn remove(
        &mut self,
        ordinal: u64,
        indexed: &IndexedFields,
        (created_at, finished_at): (Millis, Option<Millis>),
        attributes: &[(String, String)],
        counters: &mut Counters,
    ) -> Result<(), StoreError> {
        self.by_created.remove((created_at, ordinal))?;
        self.by_status.remove((indexed.status.code(), ordinal))?;
        if let Some(process_type) = &indexed.process_type {
            self.by_type
                .remove((process_type.as_str(), indexed.status.code(), ordinal))?;
        }
        if let Some(correlation_id) = &indexed.correlation_id {
            self.by_correlation
                .remove((correlation_id.as_str(), ordinal))?;
            self.remove_prefixes(ordinal, correlation_id)?;
        }
        self.update_attributes(ordinal, attributes, &[])?;
        if indexed.stalled {
            self.by_stalled.remove(ordinal)?;
            counters.stalled = counters.stalled.saturating_sub(1);
        }
        if let (true, Some(finished_at)) = (indexed.status.is_terminal(), finished_at) {
            self.by_finished
                .remove((indexed.status.code(), finished_at, ordinal))?;
        }
        counters.count_status(indexed.status, -1);
        Ok(())
    }

    /// Up to `limit` entries of the finished index within `range`, oldest
    /// end first.
    pub fn finished_walk(
        &self,
        range: FinishedRange,
        limit: usize,
    ) -> Result<Vec<(u8, Millis, u64)>, StoreError> {
        self.by_finished
            .range(range)?
            .take(limit)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect()
    }

    /// When the first finished process of each status in `retention` (how
    /// long each terminal status is kept) comes due for removal.
    pub fn next_expiry(
        &self,
        retention: &[(Status, Millis)],
    ) -> Result<Option<Millis>, StoreError> {
        let mut next: Option<Millis> = None;
        for &(status, keep) in retention {
            let code = status.code();
            if let Some(entry) = self
                .by_finished
                .range((code, i64::MIN, 0)..=(code, i64::MAX, u64::MAX))?
                .next()
            {
                let expires = entry?.0.value().1.saturating_add(keep);
                next = Some(next.map_or(expires, |known| known.min(expires)));
            }
        }
        Ok(next)
    }

    /// A terminal process's entry in the finished index, written once: its
    /// status and `finished_at` never change again. Returns whether it
    /// wrote one.
    fn add_finished(&mut self, ordinal: u64, process: &Process) -> Result<bool, StoreError> {
        if let (true, Some(finished_at)) = (process.status.is_terminal(), process.finished_at) {
            self.by_finished
                .insert((process.status.code(), finished_at, ordinal), ())?;
            return Ok(true);
        }
        Ok(false)
    }

    fn add_prefixes(&mut self, ordinal: u64, correlation_id: &str) -> Result<(), StoreError> {
        for (prefix, rest) in schema::correlation_prefixes(correlation_id) {
            self.by_correlation_prefix.insert((prefix, ordinal), rest)?;
        }
        Ok(())
    }

    fn remove_prefixes(&mut self, ordinal: u64, correlation_id: &str) -> Result<(), StoreError> {
        for (prefix, _) in schema::correlation_prefixes(correlation_id) {
            self.by_correlation_prefix.remove((prefix, ordinal))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::write::scratch::Scratch;

    fn entries(scratch: &Scratch) -> Vec<String> {
        scratch.read(|pending, applied| {
            let mut out = Vec::new();
            for row in pending.by_status(applied).range::<(u8, u64)>(..).unwrap() {
                out.push(format!("status {:?}", row.unwrap().0.value()));
            }
            for row in pending
                .by_type(applied)
                .range::<(&str, u8, u64)>(..)
                .unwrap()
            {
                out.push(format!("type {:?}", row.unwrap().0.value()));
            }
            for row in pending
                .by_correlation_prefix(applied)
                .range::<(&str, u64)>(..)
                .unwrap()
            {
                let (key, rest) = row.unwrap();
                out.push(format!("prefix {:?} {}", key.value(), rest.value()));
            }
            for row in pending.by_stalled(applied).range::<u64>(..).unwrap() {
                out.push(format!("stalled {}", row.unwrap().0.value()));
            }
            for row in pending
                .by_finished(applied)
                .range::<(u8, i64, u64)>(..)
                .unwrap()
            {
                out.push(format!("finished {:?}", row.unwrap().0.value()));
            }
            for row in pending
                .by_attribute(applied)
                .range::<(&str, &str, u64)>(..)
                .unwrap()
            {
                out.push(format!("attribute {:?}", row.unwrap().0.value()));
            }
            out
        })
    }

    #[test]
    fn entries_and_counts_follow_a_process_from_start_to_removal() {
        let mut scratch = Scratch::new();
        let mut counters = Counters::default();
        let mut process = Process::new("p".into(), 10);
        process.status = Status::Running;
        process.process_type = Some("import".into());
        process.correlation_id = Some("ab".into());
        let finished = scratch.group(|writing, applied| {
            Indexes::open(writing, applied)
                .add(7, &process, &mut counters)
                .unwrap()
        });
        assert!(!finished);
        assert_eq!(
            counters.processes_by_status[usize::from(Status::Running.code())],
            1
        );
        let running = Status::Running.code();
        assert_eq!(
            entries(&scratch),
            [
                format!("status ({running}, 7)"),
                format!("type (\"import\", {running}, 7)"),
                "prefix (\"a\", 7) b".to_owned(),
                "prefix (\"ab\", 7) ".to_owned(),
            ]
        );
        // Stalled, then finished with another correlation id.
        let before = IndexedFields::of(&process);
        process.stalled_since = Some(20);
        scratch.group(|writing, applied| {
            Indexes::open(writing, applied)
                .update(7, &before, &process, &mut counters)
                .unwrap()
        });
        assert_eq!(counters.stalled, 1);
        scratch.apply();
        let before = IndexedFields::of(&process);
        process.stalled_since = None;
        process.status = Status::Failed;
        process.finished_at = Some(30);
        process.correlation_id = Some("c".into());
        let finished = scratch.group(|writing, applied| {
            let mut indexes = Indexes::open(writing, applied);
            indexes
                .update_attributes(7, &[], &[("team".into(), "a".into())])
                .unwrap();
            indexes.update(7, &before, &process, &mut counters).unwrap()
        });
        assert!(finished, "it has just ended");
        assert_eq!(counters.stalled, 0);
        assert_eq!(
            counters.processes_by_status[usize::from(Status::Running.code())],
            0
        );
        let failed = Status::Failed.code();
        assert_eq!(
            entries(&scratch),
            [
                format!("status ({failed}, 7)"),
                format!("type (\"import\", {failed}, 7)"),
                "prefix (\"c\", 7) ".to_owned(),
                format!("finished ({failed}, 30, 7)"),
                "attribute (\"team\", \"a\", 7)".to_owned(),
            ]
        );
        let indexed = IndexedFields::of(&process);
        scratch.group(|writing, applied| {
            Indexes::open(writing, applied)
                .remove(
                    7,
                    &indexed,
                    (10, Some(30)),
                    &[("team".into(), "a".into())],
                    &mut counters,
                )
                .unwrap()
        });
        assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
        assert_eq!(counters.processes_total(), 0);
    }
}
