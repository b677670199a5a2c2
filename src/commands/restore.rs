//! `processmanager restore`: check a backup, then install it as a data
//! directory's store.

use super::output;
use crate::cli::RestoreArgs;
use crate::progress::{Progress, Show, Unit};
use crate::store::{self, backup, maintenance, read::Snapshot, StoreError};
use anyhow::{bail, Context};
use serde_json::json;

pub fn run(args: &RestoreArgs) -> anyhow::Result<()> {
    let show = Show::for_command(args.quiet);
    crate::progress::watch_interrupts();
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let target = store::store_path(dir);

    // Holding the current store open keeps a daemon from starting on it
    // while the new one is moved in, and tells us if one already runs.
    let _current = if target.exists() {
        if !args.force {
            bail!(
                "{} already has a store; pass --force to replace it",
                dir.display()
            );
        }
        // Only held, never read: a store about to be replaced needs no
        // schema upgrade.
        match store::hold(&target) {
            Ok(db) => Some(db),
            Err(StoreError::Locked { .. }) => {
                bail!(
                    "a daemon is running on {}; stop it before restoring",
                    dir.display()
                )
            }
            // A damaged or foreign file is what --force replaces.
            Err(_) => None,
        }
    } else {
        None
    };

    let checked = backup::open_checked_copy(
        &args.from,
        dir,
        (
            &Progress::new("restore: copying the backup", Unit::Bytes, 0, show),
            &Progress::new("restore: checking its pages", Unit::Bytes, 0, show),
        ),
    )
    .map_err(|error| match error {
        StoreError::Interrupted => anyhow::Error::new(crate::progress::Interrupted)
            .context("interrupted: nothing was changed (the partial copy was removed)"),
        StoreError::Damaged { .. }
        | StoreError::NotAStore { .. }
        | StoreError::SchemaMismatch { .. }
        | StoreError::Missing { .. } => {
            anyhow::anyhow!("{error}; nothing was changed")
        }
        other => anyhow::anyhow!(
            "{} cannot be read as a store ({other}); nothing was changed",
            args.from.display()
        ),
    })?;
    let (report, counters) = {
        let snapshot = Snapshot::begin(&checked.db)?;
        let progress = Progress::new("restore: verifying records", Unit::Records, 0, show);
        let report = maintenance::verify(&snapshot, &progress).map_err(|error| match error {
            StoreError::Interrupted => anyhow::Error::new(crate::progress::Interrupted)
                .context("interrupted: nothing was changed"),
            other => other.into(),
        })?;
        progress.finish();
        (report, snapshot.counters()?)
    };
    if !report.is_sound() {
        bail!(
            "{} fails the integrity check ({}); nothing was changed",
            args.from.display(),
            report
                .problems
                .first()
                .map(String::as_str)
                .unwrap_or("unknown problem")
        );
    }
    checked.install(&target)?;

    if args.json {
        return output::json(&json!({
            "data_dir": dir,
            "from": args.from,
            "processes": counters.processes_total(),
            "events": counters.events_total,
            "last_seq": counters.last_seq,
        }));
    }
    output::pairs(&[
        ("restored", args.from.display().to_string()),
        ("into", target.display().to_string()),
        ("processes", counters.processes_total().to_string()),
        ("events", counters.events_total.to_string()),
        ("last seq", counters.last_seq.to_string()),
    ])
}
