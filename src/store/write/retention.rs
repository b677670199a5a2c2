//! Retention and bulk purge: which finished processes go, oldest end
//! first, a bounded step at a time, and when the next one comes due.

use super::WriteBatch;
use crate::domain::{Millis, PurgeStep, Purged, Status};
use crate::store::StoreError;
use std::ops::Bound;

impl WriteBatch<'_> {
    /// Removes finished processes as `step` says, oldest end first, each
    /// with a `process.deleted` item in the feed at `now`: at most
    /// `step.limit` of them, after looking at no more than eight times as
    /// many entries of the finished index. Returns how many it removed and,
    /// when it stopped before the end, where the next step goes on.
    pub fn purge(&mut self, step: &PurgeStep, now: Millis) -> Result<Purged, StoreError> {
        self.write_back()?;
        let limit = step.limit.max(1) as usize;
        let budget = limit.saturating_mul(8);
        let mut cuts = step.cuts.clone();
        cuts.sort_by_key(|(status, _)| status.code());
        let mut doomed = Vec::new();
        let mut looked = 0;
        let mut stopped_at = None;
        'statuses: for (status, cut) in cuts {
            let code = status.code();
            let start = match step.after {
                Some(after) if after.0 > code => continue,
                Some(after) if after.0 == code => Bound::Excluded(after),
                _ => Bound::Included((code, i64::MIN, 0)),
            };
            let end = Bound::Excluded((code, cut, 0));
            let entries = self.indexes.finished_walk((start, end), budget - looked)?;
            for key in entries {
                looked += 1;
                let process = self.records.stored(key.2)?;
                if let Some(process) = process.filter(|process| {
                    step.process_type
                        .as_ref()
                        .is_none_or(|wanted| process.process_type.as_ref() == Some(wanted))
                }) {
                    doomed.push(process.id);
                }
                if doomed.len() == limit || looked == budget {
                    // Perhaps the last; the next step finds out.
                    stopped_at = Some(key);
                    break 'statuses;
                }
            }
        }
        let mut deleted = 0;
        for process_id in doomed {
            if self.delete_process(&process_id, Some(now))? {
                deleted += 1;
            }
        }
        Ok(Purged {
            deleted,
            next: stopped_at,
        })
    }

    /// When the first finished process comes due for removal under
    /// `retention` (how long each terminal status is kept), if any is kept.
    pub fn next_expiry(
        &self,
        retention: &[(Status, Millis)],
    ) -> Result<Option<Millis>, StoreError> {
        self.indexes.next_expiry(retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{model::bare_event, EventType, IncomingEvent};
    use crate::store::schema::Counters;
    use crate::store::write::scratch::Scratch;

    /// Processes `p0`..`p9`, `p{n}` finished (failed) at `n` seconds, the
    /// even ones of type `even`.
    fn finished(scratch: &mut Scratch) -> Counters {
        scratch.group(|writing, applied| {
            let mut batch = WriteBatch::open(writing, applied, Counters::default()).unwrap();
            for n in 0..10i64 {
                let mut event = bare_event(EventType::ProcessFailed, None);
                event.process_id = format!("p{n}");
                event.occurred_at = Some(n * 1000);
                if n % 2 == 0 {
                    event.process_type = Some("even".into());
                }
                batch.apply(&IncomingEvent::new(event, 0), 0).unwrap();
            }
            batch.finish().unwrap()
        })
    }

    fn purge(scratch: &mut Scratch, counters: &mut Counters, step: &PurgeStep) -> Purged {
        scratch.group(|writing, applied| {
            let mut batch = WriteBatch::open(writing, applied, counters.clone()).unwrap();
            let purged = batch.purge(step, 50_000).unwrap();
            *counters = batch.finish().unwrap();
            purged
        })
    }

    fn left(scratch: &Scratch) -> Vec<String> {
        scratch.read(|pending, applied| {
            let mut ids: Vec<String> = pending
                .process_ids(applied)
                .range::<&str>(..)
                .unwrap()
                .map(|row| row.unwrap().0.value().to_owned())
                .collect();
            ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
            ids
        })
    }

    #[test]
    fn a_purge_goes_oldest_end_first_a_step_at_a_time_and_resumes_where_it_stopped() {
        let mut scratch = Scratch::new();
        let mut counters = finished(&mut scratch);
        scratch.apply();
        let mut step = PurgeStep {
            cuts: vec![(Status::Failed, 6_000)],
            process_type: None,
            after: None,
            limit: 4,
            trim_feed_before: None,
        };
        let purged = purge(&mut scratch, &mut counters, &step);
        assert_eq!(purged.deleted, 4);
        assert_eq!(left(&scratch), ["p4", "p5", "p6", "p7", "p8", "p9"]);
        step.after = purged.next;
        let purged = purge(&mut scratch, &mut counters, &step);
        assert_eq!(
            (purged.deleted, purged.next),
            (2, None),
            "p4 and p5: none before 6 s is left"
        );
        assert_eq!(left(&scratch), ["p6", "p7", "p8", "p9"]);
        assert_eq!(counters.processes_total(), 4);
        // Only a type: the odd ones stay, and the index says when the next
        // one comes due.
        let only_even = PurgeStep {
            cuts: vec![(Status::Failed, 60_000)],
            process_type: Some("even".into()),
            after: None,
            limit: 100,
            trim_feed_before: None,
        };
        assert_eq!(purge(&mut scratch, &mut counters, &only_even).deleted, 2);
        assert_eq!(left(&scratch), ["p7", "p9"]);
        let next = scratch.group(|writing, applied| {
            WriteBatch::open(writing, applied, counters.clone())
                .unwrap()
                .next_expiry(&[(Status::Failed, 30_000), (Status::Succeeded, 1)])
                .unwrap()
        });
        assert_eq!(next, Some(37_000), "p7 finished at 7 s, kept 30 s");
    }

    #[test]
    fn a_step_looks_at_no_more_than_eight_times_its_limit() {
        let mut scratch = Scratch::new();
        let mut counters = finished(&mut scratch);
        // None of the ten is of this type: a step of 1 looks at 8.
        let step = PurgeStep {
            cuts: vec![(Status::Failed, 60_000)],
            process_type: Some("none".into()),
            after: None,
            limit: 1,
            trim_feed_before: None,
        };
        let purged = purge(&mut scratch, &mut counters, &step);
        assert_eq!(purged.deleted, 0);
        assert_eq!(purged.next, Some((Status::Failed.code(), 7_000, 7)));
    }
}
