//! `processmanager serve`: open the store, start the writer, serve HTTP
//! until a signal, then drain, commit and close.

use crate::config::Config;
use crate::http::{self, AppState};
use crate::store::{self, read::SharedSnapshots};
use crate::writer::{self, WriterSettings};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

pub fn run(config: Config) -> anyhow::Result<()> {
    config.check_anonymous_serving()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let path = store::store_path(&config.data_dir);
    let snapshots = Arc::new(SharedSnapshots::open(
        &path,
        config.store.cache_mib * 1024 * 1024,
    )?);
    let (writer, writer_thread) = writer::spawn(
        snapshots.clone(),
        WriterSettings {
            queue_capacity: config.ingest.queue_capacity,
            max_group_events: config.writer.max_group_events,
            quick_repair: config.store.quick_repair,
            min_free_bytes: config.store.min_free_mib * 1024 * 1024,
        },
    )?;
    let state =
        Arc::new(AppState::new(snapshots.clone(), writer, &config).map_err(anyhow::Error::msg)?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http.effective_worker_threads())
        .enable_all()
        .thread_name("pm-http")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let shutdown = shutdown_signal()?;
        state.set_ready(true);
        tracing::info!(%address, store = %path.display(), "listening on {address}");
        http::serve(listener, state.clone(), shutdown).await;
        anyhow::Ok(())
    });
    // Tasks still holding the state (and so the writer's sender) end here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(state);
    writer_thread.join();
    // The last snapshot holds the database too.
    served?;
    match Arc::try_unwrap(snapshots) {
        Ok(snapshots) => snapshots
            .close()
            .context("the store did not close cleanly")?,
        Err(_) => tracing::warn!("the store is still referenced at exit; the exit closes it"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down: draining requests and committing queued events");
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
