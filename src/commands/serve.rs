//! `processmanager serve`: listen, open the store (waiting while another
//! process holds it), start the writer, serve until a signal, then drain,
//! commit and close.

use super::daemon_url_file;
use crate::config::Config;
use crate::http::{self, AppState, Core, Surface};
use crate::metrics::Metrics;
use crate::store::sizing::{Sizes, Volume};
use crate::store::{self, read::SharedSnapshots, StoreError};
use crate::writer::{self, WriterHandle, WriterSettings, WriterThread};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn run(config: Config) -> anyhow::Result<()> {
    config.check_anonymous_serving()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let path = store::store_path(&config.data_dir);
    let volume = Volume::of(&config.data_dir)
        .with_context(|| {
            format!(
                "cannot read the size of the volume holding {}",
                config.data_dir.display()
            )
        })?
        .unwrap_or_else(|| {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                "the file system does not report its size: the write log takes its large-disk default, and a full disk shows only as write errors (503)"
            );
            Volume::UNREPORTED
        });
    let sizes = Sizes::for_volume(
        volume,
        config.store.write_log_mib,
        config.store.min_free_mib,
    );
    sizes
        .check_room(&path, volume)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        log_bytes = sizes.log_bytes,
        min_free_bytes = sizes.min_free_bytes,
        volume_bytes = volume.total_bytes,
        "sized the write log and the free-space floor"
    );
    let metrics = Arc::new(Metrics::new(config.metrics.max_process_types));
    let state = Arc::new(AppState::new(&config, metrics.clone()).map_err(anyhow::Error::msg)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http.effective_worker_threads())
        .enable_all()
        .max_blocking_threads(config.http.effective_read_threads())
        .thread_name("pm-http")
        .build()
        .context("cannot start the async runtime")?;
    // Cancelled when shutdown begins; long-lived answers (change-feed
    // streams, waits) end on it.
    let stopping = state.stopping.clone();
    // Probes answer from the start: livez 200, readyz 503 until the store
    // is open, which may wait for another process (the daemon being
    // replaced) to let go of it.
    let opened = runtime.block_on(async {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let signals = super::shutdown_signal(
            "shutting down: draining requests and committing queued events",
        )?;
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                signals.await;
                stopping.cancel();
            }
        });
        let server = tokio::spawn(http::serve(
            listener,
            state.clone(),
            Surface::Api,
            stopping.clone().cancelled_owned(),
        ));
        tracing::info!(%address, store = %path.display(), "listening on {address}");
        let probes = match config.http.probe_listen {
            Some(probe_address) => {
                let probe_listener = TcpListener::bind(probe_address)
                    .await
                    .with_context(|| format!("cannot listen for probes on {probe_address}"))?;
                let probe_address = probe_listener
                    .local_addr()
                    .context("cannot read the probe listener's address")?;
                tracing::info!(%probe_address, "serving probes and metrics on {probe_address}");
                Some(tokio::spawn(http::serve(
                    probe_listener,
                    state.clone(),
                    Surface::Probes,
                    stopping.clone().cancelled_owned(),
                )))
            }
            None => None,
        };
        let opening = tokio::task::spawn_blocking({
            let (path, stopping) = (path.clone(), stopping.clone());
            let settings = WriterSettings::from_config(&config, &sizes)?;
            let indexed_attributes = config.index.attributes.clone();
            move || {
                open_store(
                    &path,
                    config.store.cache_mib * 1024 * 1024,
                    &indexed_attributes,
                    settings,
                    metrics,
                    &stopping,
                )
            }
        });
        let opened = match opening.await {
            Ok(opened) => opened,
            Err(error) => Err(anyhow::anyhow!("opening the store failed: {error}")),
        };
        match &opened {
            Ok(Some((snapshots, writer, _, live))) => {
                state.open(Core {
                    snapshots: snapshots.clone(),
                    writer: writer.clone(),
                    live: live.clone(),
                });
                // The store is this daemon's alone now: tools that read it
                // ask the daemon, here.
                if let Err(error) = write_url_file(&config.data_dir, address) {
                    tracing::warn!(%error, "cannot leave the daemon's address in the data directory; inspect and backup --data-dir will not reach it");
                }
                tracing::info!("ready: the store is open");
            }
            // Stopped before the store opened, or it cannot be opened.
            Ok(None) | Err(_) => stopping.cancel(),
        }
        let _ = server.await;
        if let Some(probes) = probes {
            let _ = probes.await;
        }
        opened.map(|opened| opened.map(|(snapshots, _, thread, _)| (snapshots, thread)))
    });
    // Tasks still holding the state (and so the writer's sender) end here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(state);
    if let Some((snapshots, writer_thread)) = opened? {
        let _ = std::fs::remove_file(daemon_url_file(&config.data_dir));
        writer_thread.join();
        match Arc::try_unwrap(snapshots) {
            Ok(snapshots) => snapshots
                .close()
                .context("the store did not close cleanly")?,
            Err(_) => tracing::warn!("the store is still referenced at exit; the exit closes it"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

type Opened = (
    Arc<SharedSnapshots>,
    WriterHandle,
    WriterThread,
    Arc<crate::live::Live>,
);

/// Leaves `http://ADDRESS` in the data directory, the unspecified address
/// (listening on every interface) as the loopback one, written whole.
fn write_url_file(data_dir: &Path, address: std::net::SocketAddr) -> std::io::Result<()> {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let file = daemon_url_file(data_dir);
    let temp = file.with_extension("url.tmp");
    std::fs::write(&temp, format!("http://{address}\n"))?;
    std::fs::rename(&temp, &file)
}

/// Opens the store and starts the writer. While another process holds the
/// store, waits for it (until `stopping`); other errors end the start.
fn open_store(
    path: &Path,
    cache_bytes: usize,
    indexed_attributes: &[String],
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    stopping: &CancellationToken,
) -> anyhow::Result<Option<Opened>> {
    let mut waiting = false;
    let snapshots = loop {
        match SharedSnapshots::open(path, cache_bytes) {
            Ok(snapshots) => break Arc::new(snapshots),
            Err(StoreError::Locked { .. }) if !stopping.is_cancelled() => {
                if !waiting {
                    tracing::warn!(store = %path.display(), "another process holds the store; waiting for it (readyz answers 503 meanwhile)");
                    waiting = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(StoreError::Locked { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
    };
    // Before the writer, which indexes as the store lists, and before
    // anyone is served: readyz answers 503 until it is done.
    crate::store::search::sync_attribute_index(snapshots.database()?.as_ref(), indexed_attributes)?;
    let (writer, thread, live) = writer::spawn(snapshots.clone(), settings, metrics)?;
    Ok(Some((snapshots, writer, thread, live)))
}
