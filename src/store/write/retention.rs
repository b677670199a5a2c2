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
