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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{model::bare_event, EventType, Source, StoredResult};
    use crate::store::schema::HistoryRecord;
    use crate::store::write::scratch::Scratch;

    #[test]
    fn a_process_history_is_kept_in_seq_order_and_removed_whole() {
        let mut scratch = Scratch::new();
        let event = bare_event(EventType::ProcessStarted, None);
        for seqs in [[3u64, 1], [7, 5]] {
            scratch.group(|writing, applied| {
                let mut history = History::open(writing, applied);
                for seq in seqs {
                    let record = HistoryRecordRef {
                        seq,
                        result: StoredResult::Accepted,
                        received_at: 0,
                        event: &event,
                        source: Source::Sender,
                    };
                    history.append(1, &record).unwrap();
                    history.append(2, &record).unwrap();
                }
            });
            scratch.apply();
        }
        let seqs_of = |scratch: &Scratch, ordinal: u64| {
            scratch.read(|pending, applied| {
                let start = record_key(ordinal, Kind::History, &[]);
                let end = record_kind_end(ordinal, Kind::History);
                pending
                    .events(applied)
                    .range(start.as_slice()..end.as_slice())
                    .unwrap()
                    .map(|row| {
                        let (_, value) = row.unwrap();
                        crate::codec::decode::<HistoryRecord>(value.bytes())
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(seqs_of(&scratch, 1), [1, 3, 5, 7]);
        let removed =
            scratch.group(|writing, applied| History::open(writing, applied).remove(1).unwrap());
        assert_eq!(removed, [1, 3, 5, 7]);
        assert!(seqs_of(&scratch, 1).is_empty());
        assert_eq!(seqs_of(&scratch, 2), [1, 3, 5, 7], "its neighbour's stays");
    }
}
