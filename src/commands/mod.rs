//! One module per subcommand, and how they print.

pub mod backup;
pub mod compact;
pub mod inspect;
pub mod mirror;
mod output;
pub mod restore;
pub mod serve;

use anyhow::Context;
use std::path::{Path, PathBuf};

/// Resolves on the first SIGTERM or SIGINT, logging `stopping`; a second
/// one exits at once (status 130).
pub(crate) fn shutdown_signal(
    stopping: &'static str,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("{stopping}");
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130);
        });
    })
}

/// Where the daemon that holds a data directory's store can be reached:
/// written by `serve` once it holds the store, removed when it stops.
pub fn daemon_url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("processmanager.url")
}

/// The store is held by a live daemon, which alone may read it: a backup
/// of it, taken through the daemon's admin API, into `path`.
/// Returns the daemon's address.
fn backup_from_daemon(
    data_dir: &Path,
    token: Option<&str>,
    path: &Path,
    show: crate::progress::Show,
) -> anyhow::Result<String> {
    let file = daemon_url_file(data_dir);
    let url = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "a daemon holds the store in {} but left no address in {}; use `backup --url` with its address",
            data_dir.display(),
            file.display()
        )
    })?;
    backup::download(url.trim(), token, path, show)?;
    Ok(url.trim().to_owned())
}
