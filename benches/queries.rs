//! Queries, memory and restart on a large store, against the HTTP floor.
//!
//! `cargo bench --bench queries` builds (once, cached under the target
//! directory) a store of PM_BENCH_PROCESSES processes (default 1,000,000)
//! with 10 events each (10,000,000 events), then measures, in phases of
//! PM_BENCH_SECS seconds (default 5):
//! - `GET /v1/processes/{id}` for random ids at 64 connections, against the
//!   HTTP floor answering a process-sized body, in PM_BENCH_ROUNDS rounds
//!   (default 3) of floor then daemon, each on other ids; the verdict takes
//!   the median round. A first phase on other ids again, reported but not
//!   compared, reads the store into the page cache, as a daemon that has
//!   been serving finds it;
//! - a filtered list page of 50 (status and type), p99 latency;
//! - peak RSS of the daemon during each; store bytes per event;
//! - time to ready after a clean stop, and after kill -9 under write load.

mod support;

use bytes::Bytes;
use processmanager::store;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const CONNECTIONS: usize = 64;
const LIST_CONNECTIONS: usize = 8;
const EVENTS_PER_PROCESS: u64 = 10;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The n-th event of process `p`: ten per process; one in four processes
/// is left running, the rest succeed or fail.
fn event_of(p: u64, n: u64) -> processmanager::domain::Event {
    let mut value = webhook(0, p * EVENTS_PER_PROCESS + n);
    let id = format!("proc-{p}");
    value["process_id"] = serde_json::json!(id);
    value["event_id"] = serde_json::json!(format!("{id}-{n}"));
    if n == 9 {
        value["type"] = serde_json::json!(match p % 4 {
            0 => "process.progress",
            1 => "process.failed",
            _ => "process.succeeded",
        });
    }
    let input: processmanager::domain::EventInput =
        serde_json::from_value(value).expect("valid event");
    input.validate(None).expect("valid event")
}

/// Builds the store through the writer's own code path (cached).
fn build_store(processes: u64) -> PathBuf {
    build_cached_store("store", processes, EVENTS_PER_PROCESS, event_of)
}

/// Random process ids; another `round` draws other ids.
fn get_plan(processes: u64, round: u64) -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    Arc::new(move |conn, n| {
        let mut state = ((conn as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ (n + 1)
            ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let p = xorshift(&mut state) % processes;
        Planned {
            method: hyper::Method::GET,
            path: format!("/v1/processes/proc-{p}"),
            body: Bytes::new(),
            events: 0,
        }
    })
}

fn list_plan() -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    Arc::new(|conn, n| {
        let mut state = ((conn as u64 + 7).wrapping_mul(0x2545_F491_4F6C_DD1D)) ^ (n + 3);
        let r = xorshift(&mut state);
        let status = ["running", "succeeded", "failed", "running,failed"][(r % 4) as usize];
        let path = format!(
            "/v1/processes?status={status}&process_type=type-{}&limit=50",
            (r >> 8) % 7
        );
        Planned {
            method: hyper::Method::GET,
            path,
            body: Bytes::new(),
            events: 0,
        }
    })
}

fn report(name: &str, result: &LoadResult) {
    println!(
        "  {name:<36} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}",
        result.requests_per_sec(),
        result.percentile_ms(0.50),
        result.percentile_ms(0.99),
        result.percentile_ms(1.0),
        result.errors
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    let processes = env_number("PM_BENCH_PROCESSES", 1_000_000);
    println!(
        "queries benchmark on {}; {rounds} rounds, {} s per phase; {processes} processes, {} events",
        machine(),
        secs.as_secs(),
        processes * EVENTS_PER_PROCESS
    );
    // For profiling: only load a daemon started by hand on a built store.
    if let Ok(target) = std::env::var("PM_BENCH_TARGET") {
        let addr = target.parse().expect("PM_BENCH_TARGET is HOST:PORT");
        report(
            "GET /v1/processes/{id}, 64 conns",
            &run_load(addr, CONNECTIONS, secs, get_plan(processes, 0)),
        );
        report(
            "filtered list page of 50, 8 conns",
            &run_load(addr, LIST_CONNECTIONS, secs, list_plan()),
        );
        return;
    }
    let dir = build_store(processes);
    let store_bytes = std::fs::metadata(store::store_path(&dir))
        .map(|m| m.len())
        .unwrap_or(0);

    let floor = Server::floor();
    let spawned = Instant::now();
    let daemon = Server::daemon(&dir);
    let first_ready = wait_ready(daemon.addr, spawned);
    let first_get = run_load(daemon.addr, CONNECTIONS, secs, get_plan(processes, 1));
    println!("\nfirst phase after start (other ids; reported, not compared)");
    report("daemon, GET process, 64 conns", &first_get);
    // Each daemon phase runs right after its floor, round after round: on
    // a shared machine whose speed drifts, a ratio is only fair between
    // neighbours in time. Each round asks for other ids.
    let mut gets = Vec::new();
    for round in 1..=rounds {
        println!("\nround {round}");
        let seed = 1 + round as u64;
        let floor_get = run_load(floor.addr, CONNECTIONS, secs, get_plan(processes, seed));
        report("HTTP floor, GET process, 64 conns", &floor_get);
        let get = run_load(daemon.addr, CONNECTIONS, secs, get_plan(processes, seed));
        report("daemon, GET process, 64 conns", &get);
        println!(
            "  ratio {:.2}x",
            get.requests_per_sec() / floor_get.requests_per_sec()
        );
        gets.push((get, floor_get.requests_per_sec()));
    }
    floor.stop();
    let rss_get = daemon.peak_rss_bytes();
    let list = run_load(daemon.addr, LIST_CONNECTIONS, secs, list_plan());
    let rss_list = daemon.peak_rss_bytes();
    daemon.stop();

    let spawned = Instant::now();
    let daemon = Server::daemon(&dir);
    let clean_ready = wait_ready(daemon.addr, spawned);
    // Crash it in the middle of durable writes, then time the recovery.
    let writes = std::thread::spawn({
        let addr = daemon.addr;
        move || run_load(addr, 16, Duration::from_secs(3), single_event_plan())
    });
    std::thread::sleep(Duration::from_secs(2));
    let rss_writes = daemon.peak_rss_bytes();
    daemon.kill9();
    let _ = writes.join();
    let spawned = Instant::now();
    let daemon = Server::daemon(&dir);
    let crash_ready = wait_ready(daemon.addr, spawned);
    let rss_recovery = daemon.peak_rss_bytes();
    daemon.stop();

    println!();
    report("filtered list page of 50, 8 conns", &list);

    let ratio = Spread::of(
        gets.iter()
            .map(|(get, floor)| get.requests_per_sec() / floor),
    );
    let get_p99 = LoadResult::merged(gets.iter().map(|(get, _)| get)).percentile_ms(0.99);
    let peak = rss_get.max(rss_list).max(rss_writes).max(rss_recovery);
    println!("\nresults (GET: median of {rounds} rounds, lowest and highest in brackets)");
    println!(
        "  GET process / HTTP floor           {}x, p99 {get_p99:.2} ms  (target >= 0.5x)  {}",
        ratio.show(2),
        verdict(ratio.median >= 0.5)
    );
    println!(
        "  filtered list page of 50, p99      {:.2} ms  (target < 5 ms)  {}",
        list.percentile_ms(0.99),
        verdict(list.percentile_ms(0.99) < 5.0)
    );
    println!(
        "  peak RSS                           {:.1} MiB (get {:.1}, list {:.1}, writes {:.1}, recovery {:.1})  (target < 256 MiB)  {}",
        mib(peak), mib(rss_get), mib(rss_list), mib(rss_writes), mib(rss_recovery), verdict(peak < 256 << 20)
    );
    println!(
        "  ready after start on the store     {:.2} s",
        first_ready.as_secs_f64()
    );
    println!(
        "  ready after a clean stop           {:.2} s",
        clean_ready.as_secs_f64()
    );
    println!(
        "  ready after kill -9 during writes  {:.2} s  (target < 2 s)  {}",
        crash_ready.as_secs_f64(),
        verdict(crash_ready < Duration::from_secs(2))
    );
    println!(
        "  store bytes per event              {:.0} B ({:.0} MiB)",
        store_bytes as f64 / (processes * EVENTS_PER_PROCESS) as f64,
        mib(store_bytes)
    );
}
