//! Ingest throughput and ack latency against their floors, in one run.
//!
//! `cargo bench --bench ingest`: PM_BENCH_ROUNDS rounds (default 3) of
//! PM_BENCH_SECS-second phases (default 5). Each round measures a floor and
//! then the daemon against it; the verdicts take the median round.
//!
//! - HTTP floor: a hyper server that parses and validates the same events
//!   and answers without storing anything (this binary, re-run).
//! - Storage floor: the same events appended to one redb table, one durable
//!   commit per batch of the same size.
//! - The daemon: durable ingest, single events at 64 connections, and
//!   batches of 100 (ten processes with ten events each; one event each of
//!   100 processes with PM_BENCH_BATCH_SHAPE=spread).
//!
//! PM_BENCH_DAEMON_BIN names another build of the daemon to measure instead
//! (against the same floors), e.g. the build before a change.

mod support;

use std::time::{Duration, Instant};
use support::*;

const SINGLE_CONNECTIONS: usize = 64;
const BATCH_CONNECTIONS: usize = 16;
const BATCH: u64 = 100;

/// Appends pre-encoded events to one redb table, `batch` per durable commit.
fn storage_floor(batch: u64, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = redb::Database::create(dir.path().join("floor.redb")).expect("db");
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let pool: Vec<Vec<u8>> = (0..10_000)
        .map(|n| webhook(0, n).to_string().into_bytes())
        .collect();
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < duration {
        let txn = db.begin_write().expect("txn");
        {
            let mut events = txn.open_table(table).expect("table");
            for _ in 0..batch {
                seq += 1;
                events
                    .insert(seq, pool[(seq % 10_000) as usize].as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    seq as f64 / started.elapsed().as_secs_f64()
}

fn report(name: &str, result: &LoadResult) {
    println!(
        "  {name:<34} {:>10.0} req/s {:>10.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}",
        result.requests_per_sec(),
        result.events_per_sec(),
        result.percentile_ms(0.50),
        result.percentile_ms(0.99),
        result.percentile_ms(1.0),
        result.errors
    );
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    // For profiling: only load a daemon started by hand, e.g.
    // PM_BENCH_TARGET=127.0.0.1:8080 cargo bench --bench ingest
    if let Ok(target) = std::env::var("PM_BENCH_TARGET") {
        let addr = target.parse().expect("PM_BENCH_TARGET is HOST:PORT");
        report(
            "single events, 64 conns",
            &run_load(addr, SINGLE_CONNECTIONS, secs, single_event_plan()),
        );
        report(
            "batches of 100, 16 conns",
            &run_load(addr, BATCH_CONNECTIONS, secs, batch_plan(BATCH)),
        );
        return;
    }
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    println!(
        "ingest benchmark on {}; {} rounds, {} s per phase",
        machine(),
        rounds,
        secs.as_secs()
    );

    let floor = Server::floor();
    // Each daemon phase runs right after its floor, round after round: on
    // a shared machine whose speed drifts, a ratio is only fair between
    // neighbours in time. Every round starts a daemon on a new store, so
    // rounds repeat one another.
    let mut singles = Vec::new();
    let mut batches = Vec::new();
    let (mut rss, mut rss_single) = (0, 0);
    let (mut stored_events, mut store_bytes) = (0, 0);
    for round in 1..=rounds {
        println!("\nround {round}");
        let dir = tempfile::tempdir().expect("temp dir");
        let daemon = Server::daemon(dir.path());
        let floor_single = run_load(floor.addr, SINGLE_CONNECTIONS, secs, single_event_plan());
        report("HTTP floor, single, 64 conns", &floor_single);
        let single = run_load(daemon.addr, SINGLE_CONNECTIONS, secs, single_event_plan());
        report("daemon, single events, 64 conns", &single);
        rss_single = rss_single.max(daemon.peak_rss_bytes());
        let storage = storage_floor(BATCH, secs);
        println!(
            "  {:<34} {:>27.0} events/s",
            "storage floor, batch 100", storage
        );
        let batch = run_load(daemon.addr, BATCH_CONNECTIONS, secs, batch_plan(BATCH));
        report("daemon, batches of 100, 16 conns", &batch);
        rss = rss.max(daemon.peak_rss_bytes());
        daemon.stop();
        stored_events += single.events + batch.events;
        store_bytes += std::fs::metadata(dir.path().join("processmanager.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "  ratios: single {:.2}x, batched {:.2}x",
            single.requests_per_sec() / floor_single.requests_per_sec(),
            batch.events_per_sec() / storage
        );
        singles.push((single, floor_single.requests_per_sec()));
        batches.push((batch, storage));
    }
    // The floor for batches over HTTP, for reference: no target uses it.
    println!();
    report(
        "HTTP floor, batch 100, 16 conns",
        &run_load(floor.addr, BATCH_CONNECTIONS, secs, batch_plan(BATCH)),
    );
    floor.stop();

    let single_ratio = Spread::of(
        singles
            .iter()
            .map(|(s, floor)| s.requests_per_sec() / floor),
    );
    let batch_ratio = Spread::of(batches.iter().map(|(b, floor)| b.events_per_sec() / floor));
    let batch_rate = Spread::of(batches.iter().map(|(b, _)| b.events_per_sec()));
    let single_p99 = LoadResult::merged(singles.iter().map(|(s, _)| s)).percentile_ms(0.99);
    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    println!(
        "  single-event ingest / HTTP floor   {}x  (target >= 0.33x)  {}",
        single_ratio.show(2),
        verdict(single_ratio.median >= 0.33)
    );
    println!(
        "  single-event p99 ack latency       {single_p99:.2} ms, all rounds  (target < 20 ms)  {}",
        verdict(single_p99 < 20.0)
    );
    println!(
        "  batched ingest                     {} events/s  (target >= 150000)  {}",
        batch_rate.show(0),
        verdict(batch_rate.median >= 150_000.0)
    );
    println!(
        "  batched ingest / storage floor     {}x  (target >= 0.5x)  {}",
        batch_ratio.show(2),
        verdict(batch_ratio.median >= 0.5)
    );
    println!("  peak RSS                           {:.1} MiB (single phases {:.1} MiB)  (target < 256 MiB)  {}", mib(rss), mib(rss_single), verdict(rss < 256 << 20));
    println!(
        "  store bytes per event              {:.0} B ({} events, {:.1} MiB)",
        store_bytes as f64 / stored_events.max(1) as f64,
        stored_events,
        mib(store_bytes)
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
