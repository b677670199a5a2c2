//! Each process's history: every stored event under (ordinal,
//! `Kind::History`, seq) in `EVENTS`.

use crate::codec;
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::{history_seq, record_key, record_kind_end, HistoryRecordRef, Kind};
use crate::store::StoreError;

pub struct History<'a> {
    events: WriteTable<'a, &'static [u8], &'static [u8]>,
}

impl<'a> History<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        History {
            events: writing.events(applied),
        }
    }

    /// Stores one event in the history of the process at `ordinal`.
    pub fn append(
        &mut self,
        ordinal: u64,
        record: &HistoryRecordRef<'_>,
    ) -> Result<(), StoreError> {
        self.events.insert(
            record_key(ordinal, Kind::History, &record.seq.to_be_bytes()).as_slice(),
            codec::encode(record).as_slice(),
        )
    }

    /// Removes the history of the process at `ordinal`; returns the seqs
    /// it held.
    pub fn remove(&mut self, ordinal: u64) -> Result<Vec<u64>, StoreError> {
        let start = record_key(ordinal, Kind::History, &[]);
        let end = record_kind_end(ordinal, Kind::History);
        let mut seqs = Vec::new();
        for entry in self.events.range(start.as_slice()..end.as_slice())? {
            if let Some(seq) = history_seq(entry?.0.bytes()) {
                seqs.push(seq);
            }
        }
        self.events.remove_range(start.as_slice()..end.as_slice())?;
        Ok(seqs)
    }
}
