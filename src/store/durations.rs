//! Running summaries of how long processes took, for
//! `GET /v1/stats/durations`: answered from a few records, never by
//! reading the processes.
//!
//! When a process ends, the writer adds its duration to three summaries of
//! its type: those of the minute, the hour and the day (UTC) it ended in.
//! Each summary counts the processes by terminal status and keeps a
//! DDSketch of their durations (relative error 1%, so a quantile is within
//! 1% of the exact value). A window is answered by merging the fewest
//! summaries that tile it: whole days in its middle, hours and minutes at
//! its edges, so at most about 170 records however long it is. A window's
//! ends are taken to the minute (the start down, the end up).
//!
//! Minute summaries are kept for `KEEP[0]` (8 days) and hour summaries for
//! `KEEP[1]` (93 days); day summaries stay. When the writer starts a new
//! summary it drops a few of the same type and width that have grown too
//! old, so the table holds at most about 14,000 summaries per type plus
//! one a day. A window's end older than a width is trusted for (`TRUST`:
//! a day less than it is kept, for late reports and clocks ahead) is taken
//! to the next coarser width instead.
//!
//! A summary counts what ended; removing a process later (retention, a
//! purge) leaves the summaries as they were, which is what a record of
//! "what ran in that hour" should say. A stale event that moves the start
//! of an ended process earlier is not counted again.

use super::layers::{Lookup, Merged, WriteTable};
use super::schema::decode_or_corrupt;
use super::StoreError;
use crate::codec;
use crate::domain::{Millis, Status};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};
use std::collections::{BTreeMap, HashMap};

/// A bucket's width, in milliseconds, by its code in the `DURATIONS` key.
const WIDTHS: [Millis; 3] = [60_000, 3_600_000, 86_400_000];

/// How long summaries of each width are kept, measured back from the
/// newest of their type; day summaries (`Millis::MAX`) always.
const KEEP: [Millis; 3] = [8 * 86_400_000, 93 * 86_400_000, Millis::MAX];

/// How far back from now a window's end may use summaries of each width:
/// a day less than they are kept.
const TRUST: [Millis; 3] = [7 * 86_400_000, 92 * 86_400_000, Millis::MAX];

/// Too-old summaries one new summary drops at most: a new one comes at
/// most once a minute per type and width, so a backlog (a store upgraded
/// with years of minutes) clears 64 times faster than it could grow,
/// without one commit taking it all at once.
const TRIM_STEP: usize = 64;

/// The statuses a process ends in, in the order of `Summary::counts`.
pub const TERMINAL: [Status; 4] = Status::PROCESS_ENDS;

/// The processes of one type that ended in one bucket (or a window).
#[derive(Clone)]
pub struct Summary {
    /// By status, in the order of `TERMINAL`.
    pub counts: [u64; 4],
    /// The durations of those that ran (a process cancelled before it
    /// started has none), in milliseconds.
    pub sketch: DDSketch,
}

/// How a summary is stored: the counts, and the sketch in the DDSketch
/// binary format shared by its implementations (`sketches-ddsketch`'s
/// `encoding`), which does not change with the crate's internals.
#[derive(Serialize, Deserialize)]
struct StoredSummary {
    counts: [u64; 4],
    sketch: Vec<u8>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            counts: [0; 4],
            sketch: DDSketch::new(Config::defaults()),
        }
    }
}

impl Summary {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, status: Status, duration_ms: Option<i64>) {
        if let Some(slot) = TERMINAL.iter().position(|terminal| *terminal == status) {
            self.counts[slot] += 1;
        }
        if let Some(duration) = duration_ms {
            self.sketch.add(duration.max(0) as f64);
        }
    }

    pub fn merge(&mut self, other: &Summary) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        // Every sketch has the default configuration, which merging needs.
        if let Err(error) = self.sketch.merge(&other.sketch) {
            unreachable!("duration sketches of one configuration did not merge: {error}");
        }
    }

    /// The duration at quantile `q` (0 to 1), if any process ran.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.quantile(q).ok().flatten()
    }

    fn encode(&self) -> Vec<u8> {
        codec::encode(&StoredSummary {
            counts: self.counts,
            sketch: sketches_ddsketch::encoding::encode_to_java_bytes(&self.sketch),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Summary, StoreError> {
        let stored: StoredSummary = decode_or_corrupt("duration summary", bytes)?;
        let sketch = sketches_ddsketch::encoding::decode_from_java_bytes(&stored.sketch).map_err(
            |error| StoreError::Corrupt {
                what: format!("duration sketch ({error})"),
                source: codec::CodecError::Empty,
            },
        )?;
        Ok(Summary {
            counts: stored.counts,
            sketch,
        })
    }
}

/// The summaries a write transaction changed, written once at its end.
#[derive(Default)]
pub struct Pending {
    /// Each with whether the table had it before.
    changed: HashMap<(String, u8, Millis), (Summary, bool)>,
}

impl Pending {
    /// Counts a process of `process_type` that ended at `finished_at`.
    pub fn add(
        &mut self,
        table: &impl Lookup<(&'static str, u8, i64), &'static [u8]>,
        process_type: Option<&str>,
        (status, finished_at, duration_ms): (Status, Millis, Option<i64>),
    ) -> Result<(), StoreError> {
        let process_type = process_type.unwrap_or_default();
        for (resolution, width) in WIDTHS.iter().enumerate() {
            let key = (
                process_type.to_owned(),
                resolution as u8,
                finished_at.div_euclid(*width) * width,
            );
            let (summary, _) = match self.changed.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let (kind, resolution, start) = entry.key();
                    let stored = table.lookup((kind.as_str(), *resolution, *start))?;
                    let summary = match stored {
                        Some(bytes) => (Summary::decode(&bytes)?, true),
                        None => (Summary::default(), false),
                    };
                    entry.insert(summary)
                }
            };
            summary.add(status, duration_ms);
        }
        Ok(())
    }

    /// Writes the changed summaries; each new one drops a few of its type
    /// and width that are older than they are kept.
    pub fn write(
        &mut self,
        table: &mut WriteTable<'_, (&'static str, u8, i64), &'static [u8]>,
    ) -> Result<(), StoreError> {
        for ((kind, resolution, start), (summary, existed)) in self.changed.drain() {
            table.insert(
                (kind.as_str(), resolution, start),
                summary.encode().as_slice(),
            )?;
            let keep = KEEP[usize::from(resolution)];
            if !existed && keep < Millis::MAX {
                let old = (kind.as_str(), resolution, Millis::MIN)
                    ..(kind.as_str(), resolution, start.saturating_sub(keep));
                let mut starts = Vec::new();
                for entry in table.range(old)?.take(TRIM_STEP) {
                    starts.push(entry?.0.value().2);
                }
                for old_start in starts {
                    table.remove((kind.as_str(), resolution, old_start))?;
                }
            }
        }
        Ok(())
    }
}

/// The runs of whole buckets that tile `[from, to)` (both on a minute),
/// as (resolution, first start, end): minutes up to the first hour, hours
/// up to the first day, days, then hours and minutes to the end.
fn tiles(from: Millis, to: Millis) -> Vec<(u8, Millis, Millis)> {
    let mut runs = Vec::new();
    let mut at = from;
    for resolution in 0..2 {
        let next = round_up(at, WIDTHS[resolution + 1]);
        if next > to {
            break;
        }
        runs.push((resolution as u8, at, next));
        at = next;
    }
    for resolution in (0..3).rev() {
        let end = to.div_euclid(WIDTHS[resolution]) * WIDTHS[resolution];
        if end > at {
            runs.push((resolution as u8, at, end));
            at = end;
        }
    }
    runs.retain(|(_, start, end)| end > start);
    runs
}

fn round_up(at: Millis, width: Millis) -> Millis {
    at.div_euclid(width)
        .saturating_add(i64::from(at.rem_euclid(width) != 0))
        * width
}

/// The window `[from, to)` as the summaries cover it at `now`: each end
/// taken to the finest width kept that far back (`TRUST`), its start down
/// and its end up; a minute within the last week. One that ends before it
/// starts stays as it is, and holds nothing.
pub fn window(from: Millis, to: Millis, now: Millis) -> (Millis, Millis) {
    if from >= to {
        return (from, to);
    }
    let width_at = |at: Millis| {
        let age = now.saturating_sub(at);
        WIDTHS[TRUST.iter().position(|trust| age <= *trust).unwrap_or(2)]
    };
    let from_width = width_at(from);
    (
        from.div_euclid(from_width) * from_width,
        round_up(to, width_at(to)),
    )
}

/// The summary of each process type (only `process_type`, when given)
/// over the processes that ended in `window`, as `window()` took it.
/// An untyped process counts under the empty type. Types with none are
/// left out.
pub fn summarize(
    table: &Merged<'_, (&'static str, u8, i64), &'static [u8]>,
    process_type: Option<&str>,
    (from, to): (Millis, Millis),
) -> Result<BTreeMap<String, Summary>, StoreError> {
    // None when the window ends before it starts.
    let runs = tiles(from, to);
    let mut out = BTreeMap::new();
    let mut summarize_type = |kind: &str| -> Result<(), StoreError> {
        let mut total: Option<Summary> = None;
        for (resolution, start, end) in &runs {
            for entry in table.range((kind, *resolution, *start)..(kind, *resolution, *end))? {
                let summary = Summary::decode(entry?.1.value())?;
                match total.as_mut() {
                    Some(total) => total.merge(&summary),
                    None => total = Some(summary),
                }
            }
        }
        if let Some(total) = total.filter(|total| total.count() > 0) {
            out.insert(kind.to_owned(), total);
        }
        Ok(())
    };
    match process_type {
        Some(kind) => summarize_type(kind)?,
        None => {
            // Hop from one type to the next: one seek per type.
            let mut next = table.range::<(&str, u8, i64)>(..)?.next().transpose()?;
            while let Some((key, _)) = next {
                let kind = key.value().0.to_owned();
                summarize_type(&kind)?;
                next = table
                    .range((kind.as_str(), u8::MAX, i64::MAX)..)?
                    .find(|entry| {
                        entry
                            .as_ref()
                            .map_or(true, |(key, _)| key.value().0 != kind)
                    })
                    .transpose()?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layers::{self, Applied, SharedLayer, Writing};

    #[test]
    fn tiles_cover_the_window_exactly_once() {
        let day = WIDTHS[2];
        let windows = [
            (0, 60_000),
            (60_000 * 7, 60_000 * 59),
            (60_000 * 7, 3_600_000 * 5 + 60_000 * 3),
            (60_000 * 7, day * 3 + 3_600_000 * 5 + 60_000 * 3),
            (day, day * 2),
            (-day - 60_000, day + 3_600_000),
        ];
        for (from, to) in windows {
            let runs = tiles(from, to);
            let mut at = from;
            for (resolution, start, end) in &runs {
                let width = WIDTHS[usize::from(*resolution)];
                assert_eq!(*start, at, "{runs:?}");
                assert_eq!(start.rem_euclid(width), 0, "{runs:?}");
                assert_eq!(end.rem_euclid(width), 0, "{runs:?}");
                at = *end;
            }
            assert_eq!(at, to, "{runs:?}");
            assert!(runs.len() <= 5);
        }
        // A window that ends before it starts is no bucket at all.
        assert!(tiles(3_600_000, 60_000).is_empty());
        assert!(tiles(day, day).is_empty());
    }

    #[test]
    fn a_summary_survives_its_encoding_and_merges_after_it() {
        let mut summary = Summary::default();
        for duration in [5, 50, 500, 5_000] {
            summary.add(Status::Succeeded, Some(duration));
        }
        summary.add(Status::Cancelled, None);
        let mut read = Summary::decode(&summary.encode()).unwrap();
        assert_eq!(read.counts, [4, 0, 1, 0]);
        read.merge(&summary);
        assert_eq!(read.count(), 10);
        assert_eq!(read.sketch.count(), 8);
        let p50 = read.quantile(0.5).unwrap();
        assert!((p50 - 50.0).abs() <= 0.5, "{p50}");
    }

    const MINUTE: Millis = 60_000;
    const DAY: Millis = 86_400_000;

    /// A store of no tables but empty ones, and a layer to write into.
    fn layered() -> redb::Database {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        crate::store::schema::create_tables(&txn).unwrap();
        txn.commit().unwrap();
        db
    }

    /// Adds each of `runs` (finished at, duration) in a group of its own,
    /// as the writer would, with an apply step every thousand groups.
    fn add_each(db: &redb::Database, runs: impl Iterator<Item = (Millis, i64)>, status: Status) {
        let mut layer = SharedLayer::default();
        for (group, (at, duration)) in (1..).zip(runs) {
            {
                let applied = Applied::begin(db).unwrap();
                let writing = Writing::new(None, layer.clone(), group);
                let mut table = writing.durations(&applied);
                let mut pending = Pending::default();
                pending
                    .add(&*table, Some("job"), (status, at, Some(duration)))
                    .unwrap();
                pending.write(&mut table).unwrap();
            }
            if group % 1000 == 0 {
                apply(db, std::mem::take(&mut layer));
            }
        }
        apply(db, layer);
    }

    fn apply(db: &redb::Database, layer: SharedLayer) {
        let set = layer.read().unwrap();
        crate::store::durability::apply_step(db, &[&set], 0, false).unwrap();
    }

    #[test]
    fn old_summaries_go_as_new_ones_come_and_windows_use_what_is_kept() {
        let db = layered();
        // One run a minute for thirty days, each taking its minute's
        // number of milliseconds, written a minute at a time as the writer
        // would.
        let now = 30 * DAY;
        add_each(
            &db,
            (0..30 * 1440).map(|minute| (minute * MINUTE, minute)),
            Status::Succeeded,
        );
        let applied = Applied::begin(&db).unwrap();
        let view = layers::Pending::none();
        let table = view.durations(&applied);
        let count = |resolution: u8| {
            table
                .range(("job", resolution, Millis::MIN)..("job", resolution, Millis::MAX))
                .unwrap()
                .count() as i64
        };
        // Minutes for the eight days kept, every hour (under 93 days), and
        // every day.
        assert_eq!(count(0), 8 * 1440 + 1);
        assert_eq!(count(1), 30 * 24);
        assert_eq!(count(2), 30);

        // The whole month: its start is older than minutes are trusted,
        // so it is taken to the hour (here already on one), and every run
        // is counted once.
        let (from, to) = window(30_000, now, now);
        assert_eq!((from, to), (0, now));
        let month = summarize(&table, Some("job"), (from, to)).unwrap();
        assert_eq!(month["job"].count(), 30 * 1440);

        // Ten days back, a start at 00:07:30 is taken to its hour; within
        // the week, to its minute.
        let ten_days_ago = now - 10 * DAY;
        assert_eq!(
            window(ten_days_ago + 7 * MINUTE + 30_000, now, now).0,
            ten_days_ago
        );
        let two_days_ago = now - 2 * DAY;
        let (from, to) = window(two_days_ago + 7 * MINUTE + 30_000, now - 1, now);
        assert_eq!((from, to), (two_days_ago + 7 * MINUTE, now));
        let recent = summarize(&table, Some("job"), (from, to)).unwrap();
        assert_eq!(recent["job"].count(), 2 * 1440 - 7);
        // A hundred days back only days are kept: a start there is taken
        // to its day.
        let (from, _) = window(now - 100 * DAY + 5 * 3_600_000, now, now);
        assert_eq!(from, now - 100 * DAY);
    }

    #[test]
    fn a_backlog_of_old_summaries_goes_a_few_at_a_time() {
        let db = layered();
        // A year of minute summaries in the store file: a backlog, as a
        // clock set far ahead for a while leaves.
        {
            let txn = db.begin_write().unwrap();
            let mut table = txn.open_table(crate::store::schema::DURATIONS).unwrap();
            let mut summary = Summary::default();
            summary.add(Status::Failed, Some(1));
            for minute in (0..365 * 1440).step_by(7) {
                table
                    .insert(("job", 0, minute * MINUTE), summary.encode().as_slice())
                    .unwrap();
            }
            drop(table);
            txn.commit().unwrap();
        }
        let minutes = || {
            let applied = Applied::begin(&db).unwrap();
            layers::Pending::none()
                .durations(&applied)
                .range(("job", 0, Millis::MIN)..("job", 1, Millis::MIN))
                .unwrap()
                .count()
        };
        let built = minutes();
        // The next new minute drops at most TRIM_STEP of the old ones.
        add_each(&db, std::iter::once((365 * DAY, 1)), Status::Failed);
        assert!(minutes() >= built + 1 - TRIM_STEP, "{built}");
        assert!(minutes() < built + 1, "{built}");
    }
}
