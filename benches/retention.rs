//! Ingest while retention removes a million processes, against the same
//! run without retention.
//!
//! `cargo bench --bench retention` builds (once, cached under the target
//! directory) a store of PM_BENCH_PROCESSES finished processes (default
//! 1,000,000; three events each, cancelled on 2026-01-01). Each round runs
//! the daemon twice on fresh copies of it, once with
//! `[retention] cancelled = "1d"` (so every process is due for removal
//! from the start) and once without, which first alternating by round;
//! each run measures single events at 64 connections and batches of 100 at
//! 16, PM_BENCH_SECS seconds each (default 5), and how many processes
//! retention removed meanwhile. Reported: events/s and p99 with retention
//! as ratios to without (target: within 10%), and the removal rate.

mod support;

use std::path::Path;
use std::time::Instant;
use support::*;

const SINGLE_CONNECTIONS: usize = 64;
const BATCH_CONNECTIONS: usize = 16;
const FINISHED_AT: &str = "2026-01-01T00:00:00Z";

/// The n-th event of finished process `p`: it starts, a task succeeds,
/// and it is cancelled, all on 2026-01-01.
fn event_of(p: u64, n: u64) -> processmanager::domain::Event {
    let (kind, task) = match n {
        0 => ("process.started", None),
        1 => ("task.succeeded", Some("step")),
        // Cancelled: the load never cancels, so the count of cancelled
        // processes is what retention has left of these.
        _ => ("process.cancelled", None),
    };
    let process_type = ["import", "export", "report"][(p % 3) as usize];
    let value = serde_json::json!({
        "type": kind,
        "process_id": format!("done-{p}"),
        "task_id": task,
        "event_id": format!("done-{p}-{n}"),
        "process_type": process_type,
        "occurred_at": FINISHED_AT,
    });
    let input: processmanager::domain::EventInput =
        serde_json::from_value(value).expect("valid event");
    input.validate(None).expect("valid event")
}

struct Run {
    single: LoadResult,
    batch: LoadResult,
    removed: u64,
    removal_secs: f64,
    /// Removed per second with no load at all (with retention only).
    idle_rate: f64,
}

/// How long the idle phase after the load lasts.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3);

/// How many processes are cancelled: the built ones retention has left.
fn cancelled(addr: std::net::SocketAddr) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let stats: serde_json::Value = agent
        .get(format!("http://{addr}/v1/stats"))
        .call()
        .expect("stats")
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .expect("stats JSON");
    stats["processes"]["cancelled"].as_u64().expect("a count")
}

/// The daemon on a fresh copy of the built store, with or without
/// retention, under single events and then batches.
fn run(built: &Path, with_retention: bool, secs: std::time::Duration) -> Run {
    let dir = copy_store(built);
    let config = dir.path().join("pm.toml");
    std::fs::write(
        &config,
        if with_retention {
            "[retention]\ncancelled = \"1d\"\n"
        } else {
            ""
        },
    )
    .expect("config");
    // Read by Server::daemon; no other thread runs while it is set.
    std::env::set_var("PM_BENCH_DAEMON_CONFIG", &config);
    let daemon = Server::daemon(dir.path());
    let before = cancelled(daemon.addr);
    let started = Instant::now();
    let single = run_load(daemon.addr, SINGLE_CONNECTIONS, secs, single_event_plan());
    let batch = run_load(daemon.addr, BATCH_CONNECTIONS, secs, batch_plan(100));
    let after_load = cancelled(daemon.addr);
    let removed = before - after_load;
    let removal_secs = started.elapsed().as_secs_f64();
    // The idle phase is the measurement: what retention removes when no
    // request comes at all.
    let idle_rate = if with_retention {
        let idle_started = Instant::now();
        std::thread::sleep(IDLE);
        (after_load - cancelled(daemon.addr)) as f64 / idle_started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    daemon.stop();
    Run {
        single,
        batch,
        removed,
        removal_secs,
        idle_rate,
    }
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    let processes = env_number("PM_BENCH_PROCESSES", 1_000_000);
    println!(
        "retention benchmark on {}; {rounds} rounds, {} s per phase; {processes} finished processes due for removal",
        machine(),
        secs.as_secs()
    );
    let built = build_cached_store("retention", processes, 3, event_of);
    // The first daemon of a run measured slower whatever it was (its
    // binary and the store's pages cold): a short run to warm up, not
    // counted, so that neither side of round 1 pays for it.
    run(&built, false, std::time::Duration::from_secs(1));
    let mut pairs = Vec::new();
    for round in 1..=rounds {
        let (with, without) = if round % 2 == 1 {
            let with = run(&built, true, secs);
            (with, run(&built, false, secs))
        } else {
            let without = run(&built, false, secs);
            (run(&built, true, secs), without)
        };
        println!(
            "round {round}: with retention single {:>7.0} ev/s p99 {:>6.2} ms, batches {:>7.0} ev/s p99 {:>6.2} ms, {} removed ({:.0}/s); without: single {:>7.0} ev/s p99 {:>6.2} ms, batches {:>7.0} ev/s p99 {:>6.2} ms",
            with.single.events_per_sec(),
            with.single.percentile_ms(0.99),
            with.batch.events_per_sec(),
            with.batch.percentile_ms(0.99),
            with.removed,
            with.removed as f64 / with.removal_secs,
            without.single.events_per_sec(),
            without.single.percentile_ms(0.99),
            without.batch.events_per_sec(),
            without.batch.percentile_ms(0.99),
        );
        pairs.push((with, without));
    }
    let ratio = |f: &dyn Fn(&Run) -> f64| Spread::of(pairs.iter().map(|(w, wo)| f(w) / f(wo)));
    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    println!(
        "  with retention / without, events/s: single {}x, batches {}x  (target >= 0.90x)",
        ratio(&|r| r.single.events_per_sec()).show(3),
        ratio(&|r| r.batch.events_per_sec()).show(3)
    );
    println!(
        "  with retention / without, p99: single {}x, batches {}x  (target <= 1.10x)",
        ratio(&|r| r.single.percentile_ms(0.99)).show(3),
        ratio(&|r| r.batch.percentile_ms(0.99)).show(3)
    );
    println!(
        "  removal rate under that load: {} processes/s; idle: {} processes/s",
        Spread::of(pairs.iter().map(|(w, _)| w.removed as f64 / w.removal_secs)).show(0),
        Spread::of(pairs.iter().map(|(w, _)| w.idle_rate)).show(0)
    );
}
