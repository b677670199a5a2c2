//! `processmanager compact`: purge old finished processes, then shrink the file.

use super::output;
use crate::cli::CompactArgs;
use crate::domain::{parse_timestamp, Millis};
use crate::http::views::format_millis;
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
            maintenance::delete_processes(&db, &ids)?
        }
        None => 0,
    };
    // Each pass moves pages towards the start; stop when nothing moves.
    for _ in 0..16 {
        if !db
            .compact()
            .context("compaction failed; the store is unchanged beyond the purge")?
        {
            break;
        }
    }
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
