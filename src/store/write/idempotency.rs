//! Idempotency keys: under (ordinal, `Kind::Dedup`, event id) in `EVENTS`,
//! what an event id was first answered with and the fingerprint of the
//! event it came with.

use crate::codec;
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::{decode_or_corrupt, record_key, record_kind_end, DedupRecord, Kind};
use crate::store::StoreError;

pub struct Idempotency<'a> {
    events: WriteTable<'a, &'static [u8], &'static [u8]>,
}

impl<'a> Idempotency<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        Idempotency {
            events: writing.events(applied),
        }
    }

    /// What `event_id` of the process at `ordinal` was first answered with.
    pub fn seen(&self, ordinal: u64, event_id: &str) -> Result<Option<DedupRecord>, StoreError> {
        let key = record_key(ordinal, Kind::Dedup, event_id.as_bytes());
        match self.events.get(key.as_slice())? {
            Some(bytes) => decode_or_corrupt("idempotency record", bytes.bytes()).map(Some),
            None => Ok(None),
        }
    }

    pub fn remember(
        &mut self,
        ordinal: u64,
        event_id: &str,
        record: &DedupRecord,
    ) -> Result<(), StoreError> {
        self.events.insert(
            record_key(ordinal, Kind::Dedup, event_id.as_bytes()).as_slice(),
            codec::encode(record).as_slice(),
        )
    }

    /// Forgets every key of the process at `ordinal`.
    pub fn remove(&mut self, ordinal: u64) -> Result<(), StoreError> {
        let start = record_key(ordinal, Kind::Dedup, &[]);
        let end = record_kind_end(ordinal, Kind::Dedup);
        self.events.remove_range(start.as_slice()..end.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StoredResult;
    use crate::store::write::scratch::Scratch;

    #[test]
    fn a_key_is_remembered_for_its_process_only_until_the_process_goes() {
        let mut scratch = Scratch::new();
        let first = DedupRecord {
            seq: 4,
            result: StoredResult::Stale,
            fingerprint: [1; 16],
        };
        scratch.group(|writing, applied| {
            let mut keys = Idempotency::open(writing, applied);
            keys.remember(1, "k", &first).unwrap();
            assert_eq!(keys.seen(1, "k").unwrap(), Some(first.clone()));
            assert_eq!(keys.seen(2, "k").unwrap(), None, "scoped to its process");
        });
        scratch.apply();
        scratch.group(|writing, applied| {
            let mut keys = Idempotency::open(writing, applied);
            assert_eq!(keys.seen(1, "k").unwrap(), Some(first.clone()));
            keys.remove(1).unwrap();
            assert_eq!(keys.seen(1, "k").unwrap(), None);
        });
    }
}
