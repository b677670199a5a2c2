//! The mirror into PostgreSQL: how fast it applies a daemon's feed, as a
//! ratio to how fast the daemon ingests in the same run, and how far
//! behind it stays under a sustained 10,000 events/s.
//!
//! `cargo bench --bench mirror` starts a PostgreSQL server of its own
//! (`tests/postgres`, durable: fsync on, as production runs it) and, each
//! round, a daemon on a fresh store:
//!
//! - **Throughput.** Batches of 100 at 16 connections for PM_BENCH_SECS
//!   seconds (default 3): the ingest rate, the floor. Then
//!   `mirror --once` applies all of it into the database, timed: events/s
//!   applied, and the ratio to ingest.
//! - **Lag.** A mirror runs while one client posts a batch of 100 every
//!   10 ms (10,000 events/s) for PM_BENCH_LAG_SECS (default 20), each
//!   event of one of 1,000 runs in flight at once (a run is ten events,
//!   and a new one starts as one ends). For each batch, the time from its
//!   answer to the moment the database's offset covers it; and, every
//!   50 ms, the lag in events (the daemon's last seq minus the offset).
//!
//! PM_BENCH_ROUNDS rounds (default 3); medians with ranges.

#[path = "../tests/postgres/mod.rs"]
mod pg_server;
mod support;

use pg_server::Postgres;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const BATCH_CONNECTIONS: usize = 16;
/// Runs in flight at once under the lag load.
const ACTIVE_RUNS: u64 = 1_000;
/// A batch of 100 every 10 ms: 10,000 events/s.
const TICK: Duration = Duration::from_millis(10);
const BATCH: u64 = 100;

fn mirror_command(pg: &Postgres, daemon: &Server, source: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["mirror", "--to", &pg.url(), "--source", source, "--url"])
        .arg(format!("http://{}", daemon.addr))
        .args(["--log", "warn"]);
    command
}

fn offset(sql: &mut postgres::Client, source: &str) -> u64 {
    sql.query_opt(
        "SELECT last_seq FROM pm_mirror_offsets WHERE source = $1",
        &[&source],
    )
    .expect("offset")
    .map_or(0, |row| row.get::<_, i64>(0) as u64)
}

fn json_of(mut response: ureq::http::Response<ureq::Body>) -> serde_json::Value {
    let text = response.body_mut().read_to_string().expect("a body");
    serde_json::from_str(&text).expect("JSON")
}

/// The daemon's last seq.
fn daemon_last_seq(agent: &ureq::Agent, addr: std::net::SocketAddr) -> u64 {
    let stats = json_of(
        agent
            .get(format!("http://{addr}/v1/stats"))
            .call()
            .expect("stats"),
    );
    stats["last_seq"].as_u64().expect("last_seq")
}

struct Throughput {
    ingest: f64,
    mirror: f64,
}

fn throughput(pg: &Postgres, round: usize, secs: Duration) -> Throughput {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let daemon = Server::daemon(dir.path());
    let load = run_load(daemon.addr, BATCH_CONNECTIONS, secs, batch_plan(BATCH));
    let source = format!("throughput-{round}");
    let started = Instant::now();
    let status = mirror_command(pg, &daemon, &source)
        .arg("--once")
        .status()
        .expect("the mirror runs");
    assert!(status.success());
    let took = started.elapsed().as_secs_f64();
    let mut sql = pg.client();
    let applied = offset(&mut sql, &source);
    assert!(applied >= load.events, "{applied} of {}", load.events);
    daemon.stop();
    Throughput {
        ingest: load.events_per_sec(),
        mirror: applied as f64 / took,
    }
}

struct Lag {
    sent_per_sec: f64,
    seconds: Vec<f64>,
    events: Vec<f64>,
}

/// The lag load: batches of 100 events of 1,000 interleaved runs, one
/// every `TICK`, each event the next of a run picked at random.
fn lag(pg: &Postgres, round: usize, secs: Duration) -> Lag {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let daemon = Server::daemon(dir.path());
    let source = format!("lag-{round}");
    let mut mirror = mirror_command(pg, &daemon, &source)
        .spawn()
        .expect("the mirror starts");
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    // (last seq of a batch, when its answer came), oldest first.
    let answered: Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let answered = answered.clone();
        let done = done.clone();
        let mut sql = pg.client();
        let source = source.clone();
        let agent = agent.clone();
        let daemon_addr = daemon.addr;
        std::thread::spawn(move || {
            let mut seconds = Vec::new();
            let mut events = Vec::new();
            let mut last_sample = Instant::now();
            loop {
                let covered = offset(&mut sql, &source);
                let now = Instant::now();
                let mut answered = answered.lock().unwrap();
                while answered.front().is_some_and(|(seq, _)| *seq <= covered) {
                    let (_, at) = answered.pop_front().unwrap();
                    seconds.push(now.duration_since(at).as_secs_f64());
                }
                let empty = answered.is_empty();
                drop(answered);
                if now.duration_since(last_sample) >= Duration::from_millis(50) {
                    last_sample = now;
                    let last = daemon_last_seq(&agent, daemon_addr);
                    events.push(last.saturating_sub(covered) as f64);
                }
                if done.load(Ordering::SeqCst) && empty {
                    return (seconds, events);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut next_event = vec![0u64; ACTIVE_RUNS as usize];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d ^ round as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = started;
    while started.elapsed() < secs {
        let events: Vec<serde_json::Value> = (0..BATCH)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let run = (state % ACTIVE_RUNS) as usize;
                let n = next_event[run];
                next_event[run] += 1;
                webhook(round as u64 * ACTIVE_RUNS + run as u64, n)
            })
            .collect();
        let answer = json_of(
            agent
                .post(format!("http://{}/v1/events", daemon.addr))
                .header("content-type", "application/json")
                .send(serde_json::to_vec(&events).expect("JSON"))
                .expect("posted"),
        );
        let last = answer["results"]
            .as_array()
            .and_then(|results| results.iter().filter_map(|r| r["seq"].as_u64()).max())
            .expect("seqs");
        answered.lock().unwrap().push_back((last, Instant::now()));
        sent += BATCH;
        tick += TICK;
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let sent_per_sec = sent as f64 / started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let (seconds, events) = watcher.join().expect("watcher");
    let _ = mirror.kill();
    let _ = mirror.wait();
    daemon.stop();
    Lag {
        sent_per_sec,
        seconds,
        events,
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(3);
    let lag_secs = Duration::from_secs(env_number("PM_BENCH_LAG_SECS", 20));
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    println!(
        "mirror benchmark on {}; {rounds} rounds; ingest {} s, lag load {} s",
        machine(),
        secs.as_secs(),
        lag_secs.as_secs()
    );
    let pg = Postgres::start(true);
    let mut throughputs = Vec::new();
    let mut lags = Vec::new();
    for round in 1..=rounds {
        let t = throughput(&pg, round, secs);
        let l = lag(&pg, round, lag_secs);
        println!(
            "round {round}: ingest {:>7.0} ev/s, mirror {:>7.0} ev/s ({:.3}x); under {:.0} ev/s: lag p50 {:.3} s, p99 {:.3} s, max {:.3} s; {:.0} events p99, {:.0} max",
            t.ingest,
            t.mirror,
            t.mirror / t.ingest,
            l.sent_per_sec,
            percentile(&l.seconds, 0.5),
            percentile(&l.seconds, 0.99),
            percentile(&l.seconds, 1.0),
            percentile(&l.events, 0.99),
            percentile(&l.events, 1.0),
        );
        throughputs.push(t);
        lags.push(l);
    }
    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    println!(
        "  mirror applied {} events/s; daemon ingested {} events/s; mirror / ingest {}x",
        Spread::of(throughputs.iter().map(|t| t.mirror)).show(0),
        Spread::of(throughputs.iter().map(|t| t.ingest)).show(0),
        Spread::of(throughputs.iter().map(|t| t.mirror / t.ingest)).show(3),
    );
    println!(
        "  under {} events/s: lag p50 {} s, p99 {} s, max {} s; in events p99 {}, max {}",
        Spread::of(lags.iter().map(|l| l.sent_per_sec)).show(0),
        Spread::of(lags.iter().map(|l| percentile(&l.seconds, 0.5))).show(3),
        Spread::of(lags.iter().map(|l| percentile(&l.seconds, 0.99))).show(3),
        Spread::of(lags.iter().map(|l| percentile(&l.seconds, 1.0))).show(3),
        Spread::of(lags.iter().map(|l| percentile(&l.events, 0.99))).show(0),
        Spread::of(lags.iter().map(|l| percentile(&l.events, 1.0))).show(0),
    );
}
