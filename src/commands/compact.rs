//! `processmanager compact`: purge old finished processes, then shrink the file.

use super::output;
use crate::cli::CompactArgs;
use crate::domain::{parse_timestamp, Millis};
use crate::http::views::format_millis;
use crate::progress::{Progress, Show, Unit};
use crate::store::{self, maintenance, read::Snapshot, StoreError};
use crate::writer::now_millis;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::Path;

/// `30d`, `12h`, `1w 2d` before now, or an RFC 3339 time.
pub fn parse_cut(text: &str, now: Millis) -> anyhow::Result<Millis> {
    if let Some(at) = parse_timestamp(text) {
        return Ok(at);
    }
    let age = humantime::parse_duration(text).map_err(|_| {
        anyhow::anyhow!("--purge-finished-before takes an age such as 30d or 12h, or an RFC 3339 time, not `{text}`")
    })?;
    let age = Millis::try_from(age.as_millis()).unwrap_or(Millis::MAX);
    Ok(now.saturating_sub(age))
}

pub fn run(args: &CompactArgs, data_dir: &Path) -> anyhow::Result<()> {
    let show = Show::for_command(args.quiet);
    crate::progress::watch_interrupts();
    let path = store::store_path(data_dir);
    if !path.is_file() {
        bail!(
            "there is no store in {} (no {})",
            data_dir.display(),
            store::STORE_FILE
        );
    }
    let cut = args
        .purge_finished_before
        .as_deref()
        .map(|text| parse_cut(text, now_millis()))
        .transpose()?;
    let size_before = std::fs::metadata(&path)?.len();
    let mut db = store::open_writable(&path, 64 << 20).map_err(|error| match error {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "a daemon is running on {}; compact needs the store to itself, so stop the daemon first",
            data_dir.display()
        ),
        other => other.into(),
    })?;
    let purged = match cut {
        Some(cut) => {
            let ids = maintenance::finished_before(&Snapshot::begin(&db)?, cut)?;
            let progress = Progress::new("compact: purging processes", Unit::Records, 0, show);
            let purged = maintenance::delete_processes(&db, &ids, &progress).map_err(|error| {
                match error {
                    // Each thousand went whole, in a durable step of its own.
                    StoreError::Interrupted => anyhow::Error::new(crate::progress::Interrupted)
                        .context("interrupted while purging: what was removed is removed in whole steps, the rest is as it was; the file was not compacted"),
                    other => other.into(),
                }
            })?;
            progress.finish();
            purged
        }
        None => 0,
    };
    // Each pass moves pages towards the start; stop when nothing moves.
    let passes = Progress::new("compact: compacting the file", Unit::Passes, 0, show);
    for _ in 0..16 {
        if crate::progress::interrupted() {
            return Err(anyhow::Error::new(crate::progress::Interrupted).context(
                "interrupted between compaction passes: the store is whole, and as compact as the passes done made it",
            ));
        }
        let moved = passes
            .while_waiting(|| db.compact())
            .context("compaction failed; the store is unchanged beyond the purge")?;
        passes.add(1);
        if !moved {
            break;
        }
    }
    passes.finish();
    db.close()?;
    let size_after = std::fs::metadata(&path)?.len();

    if args.json {
        return output::json(&json!({
            "path": path,
            "bytes_before": size_before,
            "bytes_after": size_after,
            "purged_processes": purged,
            "purged_finished_before": cut.map(format_millis),
        }));
    }
    let mut lines = vec![
        ("store", path.display().to_string()),
        ("size before", output::bytes(size_before)),
        ("size after", output::bytes(size_after)),
    ];
    if let Some(cut) = cut {
        lines.push((
            "purged",
            format!("{purged} processes finished before {}", format_millis(cut)),
        ));
    }
    output::pairs(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_are_ages_or_times() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_cut("1d", now).unwrap(), 9 * 86_400_000);
        assert_eq!(
            parse_cut("1w 2d", now).unwrap(),
            10 * 86_400_000 - 9 * 86_400_000
        );
        assert_eq!(parse_cut("1970-01-02T00:00:00Z", now).unwrap(), 86_400_000);
        assert!(parse_cut("soon", now).is_err());
    }
}
