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
