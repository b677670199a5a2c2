//! `processmanager backup`: a consistent snapshot into FILE, from a data
//! directory or over a daemon's admin API.

use super::output;
use crate::cli::BackupArgs;
use crate::progress::{Progress, Show, Unit};
use crate::store::{self, backup, read::Snapshot, StoreError};
use anyhow::{bail, Context};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct Written {
    /// Who took the snapshot: `store file` (this command, with no daemon
    /// holding the store) or `daemon <url>` (a live daemon, over its API).
    source: String,
    path: PathBuf,
    bytes: u64,
    processes: u64,
    events: u64,
    last_seq: u64,
    sha256: String,
}

/// `admin_token` is the configured one, for a daemon reached on the
/// user's behalf; `--token` comes first.
pub fn run(args: &BackupArgs, data_dir: &Path, admin_token: Option<&str>) -> anyhow::Result<()> {
    let show = Show::for_command(args.quiet);
    crate::progress::watch_interrupts();
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let parent = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "the directory {} for --out does not exist",
            parent.display()
        );
    }
    // Same directory as FILE, so the final rename is atomic; removed on any
    // error by its drop.
    let temp = tempfile::Builder::new()
        .prefix(".processmanager-backup-")
        .suffix(".tmp")
        .tempfile_in(&parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?
        .into_temp_path();

    let source = match &args.url {
        Some(url) => {
            download(url, args.token.as_deref(), &temp, show)?;
            format!("daemon {url}")
        }
        None => match store::open_read_only(&store::store_path(data_dir), 16 << 20) {
            Ok(db) => {
                let progress = Progress::new("backup: copying records", Unit::Records, 0, show);
                backup::write_snapshot(&Snapshot::begin(&db)?, &temp, &progress)
                    .map_err(interrupted)?;
                progress.finish();
                "store file".to_owned()
            }
            // A live daemon holds its store alone: it takes the backup.
            Err(StoreError::Locked { .. }) => {
                let url = super::backup_from_daemon(
                    data_dir,
                    args.token.as_deref().or(admin_token),
                    &temp,
                    show,
                )?;
                format!(
                    "daemon {url} (it holds the store in {})",
                    data_dir.display()
                )
            }
            Err(error) => return Err(error.into()),
        },
    };
    backup::sync_file_and_dir(&temp)?;
    let counters = {
        let db = store::open_read_only(&temp, 16 << 20)
            .context("the backup just written cannot be read back")?;
        Snapshot::begin(&db)?.counters()?
    };
    let written = Written {
        source,
        path: args.out.clone(),
        bytes: std::fs::metadata(&temp)?.len(),
        processes: counters.processes_total(),
        events: counters.events_total,
        last_seq: counters.last_seq,
        sha256: backup::sha256_file(&temp)?,
    };
    if args.out.exists() && !args.force {
        bail!(
            "{} appeared while the backup was written; pass --force to replace it",
            args.out.display()
        );
    }
    temp.persist(&args.out).with_context(|| {
        format!(
            "cannot move the backup into place at {}",
            args.out.display()
        )
    })?;
    backup::sync_file_and_dir(&args.out)?;

    if args.json {
        return output::json(&written);
    }
    output::pairs(&[
        ("taken by", written.source),
        ("path", written.path.display().to_string()),
        (
            "bytes",
            format!("{} ({})", written.bytes, output::bytes(written.bytes)),
        ),
        ("processes", written.processes.to_string()),
        ("events", written.events.to_string()),
        ("last seq", written.last_seq.to_string()),
        ("sha256", written.sha256),
        (
            "note",
            "the records as of `last seq`, copied afresh: the size follows what the store holds, not the store file (which keeps the room of removed records); two backups differ when writes came between them, and by a few pages of allocation even when none did".into(),
        ),
    ])
}

/// Why a backup stopped short, said so: nothing was written.
fn interrupted(error: StoreError) -> anyhow::Error {
    match error {
        StoreError::Interrupted => anyhow::Error::new(crate::progress::Interrupted)
            .context("interrupted: no backup was written (the partial copy was removed)"),
        other => other.into(),
    }
}

/// Streams `GET {url}/v1/admin/backup` into `path`, checking the digest the
/// daemon announces; shows how much of the answer's length has come.
pub(super) fn download(
    url: &str,
    token: Option<&str>,
    path: &Path,
    show: Show,
) -> anyhow::Result<()> {
    if !url.starts_with("http://") {
        bail!("--url must start with http:// (the daemon serves plain HTTP, e.g. http://127.0.0.1:8080)");
    }
    let endpoint = format!("{}/v1/admin/backup", url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(&endpoint);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    // The daemon copies its store before the first byte comes.
    let waiting = Progress::new(
        "backup: the daemon takes its snapshot",
        Unit::Bytes,
        0,
        show,
    );
    let mut response = waiting
        .while_waiting(|| request.call())
        .with_context(|| format!("cannot reach the daemon at {url}"))?;
    waiting.finish();
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        let hint = match status {
            401 | 403 => "; pass an admin token with --token or PM_ADMIN_TOKEN",
            _ => "",
        };
        bail!("the daemon refused the backup with {status}: {detail}{hint}");
    }
    let announced = response
        .headers()
        .get("x-backup-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let progress = Progress::new("backup: receiving", Unit::Bytes, length, show);
    let mut body = response.into_body().into_reader();
    let mut file = std::fs::File::create(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        if crate::progress::interrupted() {
            return Err(anyhow::Error::new(crate::progress::Interrupted)
                .context("interrupted: no backup was written (the partial download was removed)"));
        }
        let read = body.read(&mut buffer).context("the download was cut off")?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        file.write_all(&buffer[..read])?;
        progress.add(read as u64);
    }
    file.sync_all()?;
    progress.finish();
    let got = backup::hex(&hasher.finalize());
    if let Some(announced) = announced {
        if announced != got {
            bail!("the download is damaged: its sha256 is {got} but the daemon sent {announced}; try again");
        }
    }
    Ok(())
}
