//! The change feed: every stored event (and every removal) in seq order,
//! written with the event; its time marks, by which it is trimmed to what
//! `feed.retention` keeps; and its floor, below which a consumer is told
//! (410) to start over.

use crate::codec;
use crate::domain::Millis;
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::{self, FeedEntry, META_FEED_FLOOR};
use crate::store::StoreError;

pub struct Feed<'a> {
    feed: WriteTable<'a, u64, &'static [u8]>,
    marks: WriteTable<'a, u64, i64>,
    meta: WriteTable<'a, &'static str, &'static [u8]>,
}

impl<'a> Feed<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied) -> Self {
        Feed {
            feed: writing.feed(applied),
            marks: writing.feed_marks(applied),
            meta: writing.meta(applied),
        }
    }

    pub fn append(&mut self, seq: u64, entry: &FeedEntry) -> Result<(), StoreError> {
        self.feed.insert(seq, codec::encode(entry).as_slice())
    }

    /// Takes the entries of removed events out.
    pub fn remove(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        for &seq in seqs {
            self.feed.remove(seq)?;
        }
        Ok(())
    }

    /// Marks the feed with the time: entries from `seq` on are no older
    /// than `now`. What `trim` goes by.
    pub fn mark(&mut self, seq: u64, now: Millis) -> Result<(), StoreError> {
        self.marks.insert(seq, now)
    }

    /// Raises the floor to `seq` (never lowers it): a consumer resuming
    /// from before it may have missed something.
    pub fn raise_floor(&mut self, seq: u64) -> Result<(), StoreError> {
        if seq > schema::feed_floor(&*self.meta)? {
            self.meta
                .insert(META_FEED_FLOOR, codec::encode(&seq).as_slice())?;
        }
        Ok(())
    }

    /// Drops entries written before `before` (as far as the marks tell),
    /// at most `limit` of them, and raises the floor past them. Returns
    /// whether some are left to drop.
    pub fn trim(&mut self, before: Millis, limit: usize) -> Result<bool, StoreError> {
        let mut cut = None;
        for mark in self.marks.range::<u64>(..)? {
            let (seq, at) = mark?;
            if at.value() > before {
                break;
            }
            cut = Some(seq.value());
        }
        let Some(cut) = cut else {
            return Ok(false);
        };
        let dropped = self
            .feed
            .range(..cut)?
            .take(limit)
            .map(|entry| entry.map(|(seq, _)| seq.value()))
            .collect::<Result<Vec<_>, _>>()?;
        self.remove(&dropped)?;
        let more = dropped.len() == limit;
        let floor = if more {
            dropped.last().copied().unwrap_or(0)
        } else {
            // Everything before the mark is gone; the marks before it too.
            self.marks.remove_range(..cut)?;
            cut - 1
        };
        self.raise_floor(floor)?;
        Ok(more)
    }

    /// When trimming to `keep` milliseconds would next drop something: the
    /// second mark's time, plus `keep`.
    pub fn next_trim(&self, keep: Millis) -> Result<Option<Millis>, StoreError> {
        Ok(match self.marks.range::<u64>(..)?.nth(1) {
            Some(mark) => Some(mark?.1.value().saturating_add(keep)),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, Status};
    use crate::store::write::scratch::Scratch;

    fn entry() -> FeedEntry {
        FeedEntry::Event {
            ordinal: 0,
            kind: EventType::ProcessStarted,
            process_status: Status::Running,
            task_status: None,
        }
    }

    fn seqs(scratch: &Scratch) -> Vec<u64> {
        scratch.read(|pending, applied| {
            pending
                .feed(applied)
                .range::<u64>(..)
                .unwrap()
                .map(|row| row.unwrap().0.value())
                .collect()
        })
    }

    #[test]
    fn the_feed_is_trimmed_by_its_marks_a_bounded_step_at_a_time_and_its_floor_rises() {
        let mut scratch = Scratch::new();
        // Seqs 1-10 written at 1 s, 11-20 at 2 s, 21-30 at 3 s.
        for (first, at) in [(1u64, 1_000), (11, 2_000), (21, 3_000)] {
            scratch.group(|writing, applied| {
                let mut feed = Feed::open(writing, applied);
                feed.mark(first, at).unwrap();
                for seq in first..first + 10 {
                    feed.append(seq, &entry()).unwrap();
                }
            });
        }
        scratch.apply();
        let floor = |scratch: &Scratch| {
            scratch.read(|pending, applied| schema::feed_floor(&pending.meta(applied)).unwrap())
        };
        assert_eq!(
            scratch.group(|writing, applied| Feed::open(writing, applied).next_trim(500).unwrap()),
            Some(2_500),
            "the second mark, plus what is kept"
        );
        // Before 2.5 s: the entries up to the mark at 2 s go, 6 at a time.
        let more =
            scratch.group(|writing, applied| Feed::open(writing, applied).trim(2_500, 6).unwrap());
        assert!(more);
        assert_eq!(seqs(&scratch)[0], 7);
        assert_eq!(floor(&scratch), 6);
        let more =
            scratch.group(|writing, applied| Feed::open(writing, applied).trim(2_500, 6).unwrap());
        assert!(!more, "the last four went");
        assert_eq!(seqs(&scratch)[0], 11);
        assert_eq!(seqs(&scratch).len(), 20);
        assert_eq!(floor(&scratch), 10);
        assert_eq!(
            scratch.group(|writing, applied| Feed::open(writing, applied).next_trim(500).unwrap()),
            Some(3_500)
        );
        // The floor never goes down.
        scratch.group(|writing, applied| Feed::open(writing, applied).raise_floor(3).unwrap());
        assert_eq!(floor(&scratch), 10);
    }
}
