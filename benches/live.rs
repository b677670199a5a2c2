//! The change feed and heartbeat timeouts, measured against ingest without
//! them, in one run.
//!
//! `cargo bench --bench live`: PM_BENCH_ROUNDS rounds (default 3) of
//! PM_BENCH_SECS-second phases (default 5). Every ratio compares phases of
//! the same round on the same machine minutes apart at most.
//!
//! - Streams: ingest (single events at 64 connections; batches of 100 at
//!   16) with 0, 1 and 64 NDJSON streams following the feed live, read by
//!   threads of this process; and with one stream that stops reading.
//! - Latency: from the 202 of a single event to its item on an SSE stream,
//!   while batches load the writer, p50 and p99.
//! - Heartbeats: 100,000 running processes, with and without a heartbeat
//!   timeout each, then progress events spread across all of them.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const SINGLE_CONNECTIONS: usize = 64;
const BATCH_CONNECTIONS: usize = 16;
const BATCH: u64 = 100;
const HEARTBEAT_PROCESSES: u64 = 100_000;

/// The seq of a feed item line, found without parsing the whole item.
fn seq_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"seq\":")? + 6..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

/// Streams that follow the feed from `after_seq`, each read by a thread
/// that counts the items; they end when dropped.
struct Followers {
    stop: Arc<AtomicBool>,
    items: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Followers {
    fn start(addr: SocketAddr, count: usize, after_seq: u64) -> Followers {
        let stop = Arc::new(AtomicBool::new(false));
        let items = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let threads = (0..count)
            .map(|_| {
                let (stop, items, opened) = (stop.clone(), items.clone(), opened.clone());
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(None)
                        .build()
                        .into();
                    let response = agent
                        .get(format!("http://{addr}/v1/changes?after_seq={after_seq}"))
                        .header("accept", "application/x-ndjson")
                        .call()
                        .expect("a stream opens");
                    opened.fetch_add(1, Ordering::SeqCst);
                    let mut reader = BufReader::new(response.into_body().into_reader());
                    let mut line = String::new();
                    while !stop.load(Ordering::Relaxed) {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line.len() > 1 => {
                                items.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                        }
                    }
                })
            })
            .collect();
        while opened.load(Ordering::SeqCst) < count as u64 {
            std::thread::yield_now();
        }
        Followers {
            stop,
            items,
            threads,
        }
    }

    /// Stops reading and closes the streams (each thread ends at its next
    /// item or keepalive; the daemon ends streams at its stop).
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let items = self.items.load(Ordering::SeqCst);
        drop(self.threads);
        items
    }
}

/// CPU time a process has used, user and system, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time the daemon's writer thread has used, in seconds.
fn writer_cpu_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "pm-writer" {
            return stat_cpu_seconds(&task.path().join("stat").to_string_lossy());
        }
    }
    panic!("the daemon has no pm-writer thread")
}

fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|index| fields.get(*index)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn last_seq(addr: SocketAddr) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let mut response = agent
        .get(format!("http://{addr}/v1/stats"))
        .call()
        .expect("stats");
    let stats: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    stats["last_seq"].as_u64().expect("last_seq")
}

struct StreamRound {
    /// (single events/s, batched events/s) by streams attached.
    by_streams: Vec<(&'static str, f64, f64)>,
    items_read_64: u64,
}

fn stream_round(secs: Duration) -> StreamRound {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Server::daemon(dir.path());
    let mut by_streams = Vec::new();
    let mut items_read_64 = 0;
    for (label, streams, stalled) in [
        ("0 streams", 0, false),
        ("1 stream", 1, false),
        ("64 streams", 64, false),
        ("1 stream not reading", 0, true),
    ] {
        let from = last_seq(daemon.addr);
        let followers = Followers::start(daemon.addr, streams, from);
        let cpu_before = (cpu_seconds(daemon.pid()), cpu_seconds(std::process::id()));
        // A consumer that sends its request, reads the head, and stops.
        let stalled = stalled.then(|| {
            let mut socket = TcpStream::connect(daemon.addr).expect("connect");
            write!(
                socket,
                "GET /v1/changes?after_seq={from} HTTP/1.1\r\nHost: localhost\r\nAccept: application/x-ndjson\r\n\r\n"
            )
            .expect("request");
            socket
        });
        let single = run_load(daemon.addr, SINGLE_CONNECTIONS, secs, single_event_plan());
        let batch = run_load(daemon.addr, BATCH_CONNECTIONS, secs, batch_plan(BATCH));
        let read = followers.finish();
        let cpu = (
            cpu_seconds(daemon.pid()) - cpu_before.0,
            cpu_seconds(std::process::id()) - cpu_before.1,
        );
        if streams == 64 {
            items_read_64 = read;
        }
        drop(stalled);
        println!(
            "  {label:<22} single {:>8.0} events/s (p99 {:>5.2} ms)   batches {:>8.0} events/s (p99 {:>6.2} ms)   items read {read}   CPU s: daemon {:.1}, load and readers {:.1}",
            single.events_per_sec(),
            single.percentile_ms(0.99),
            batch.events_per_sec(),
            batch.percentile_ms(0.99),
            cpu.0,
            cpu.1,
        );
        by_streams.push((label, single.events_per_sec(), batch.events_per_sec()));
    }
    daemon.stop();
    StreamRound {
        by_streams,
        items_read_64,
    }
}

/// Milliseconds from each single event's 202 to its item on an SSE
/// stream (0 when the item came first), while batches load the writer.
fn latency_round(secs: Duration) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Server::daemon(dir.path());
    let addr = daemon.addr;
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let mut socket = TcpStream::connect(addr).expect("connect");
        write!(
            socket,
            "GET /v1/changes?after_seq={} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
            last_seq(addr)
        )
        .expect("request");
        std::thread::spawn(move || {
            let mut reader = BufReader::new(socket);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(id) = line.strip_prefix("id: ") {
                    if let Ok(seq) = id.trim().parse::<u64>() {
                        seen.lock().unwrap().insert(seq, Instant::now());
                    }
                }
            }
        })
    };
    let background = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                run_load(addr, 8, Duration::from_secs(1), batch_plan(BATCH));
            }
        })
    };
    // One connection posting single events one after another.
    let acks: Vec<(u64, Instant)> = {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let started = Instant::now();
        let mut acks = Vec::new();
        let mut n = 0u64;
        while started.elapsed() < secs {
            let body = serde_json::json!({"type": "process.started", "process_id": format!("latency-{n}")});
            n += 1;
            let mut response = agent
                .post(format!("http://{addr}/v1/events"))
                .header("content-type", "application/json")
                .send(body.to_string())
                .expect("posted");
            let acked = Instant::now();
            let text = response.body_mut().read_to_string().expect("body");
            if let Some(seq) = seq_of(&text) {
                acks.push((seq, acked));
            }
        }
        acks
    };
    // Every acknowledged item reaches the stream.
    let waited = Instant::now();
    while acks
        .iter()
        .any(|(seq, _)| !seen.lock().unwrap().contains_key(seq))
    {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "items never reached the stream"
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    background.join().expect("background load");
    daemon.stop();
    let _ = reader.join();
    let seen = seen.lock().unwrap();
    acks.iter()
        .map(|(seq, acked)| seen[seq].saturating_duration_since(*acked).as_secs_f64() * 1000.0)
        .collect()
}

/// What a heartbeat round measured: events/s, and the writer's CPU time
/// per event in microseconds, for single events and for batches.
#[derive(Clone, Copy)]
struct HeartbeatRound {
    single: f64,
    batch: f64,
    single_writer_us: f64,
    batch_writer_us: f64,
}

/// Progress events spread over `HEARTBEAT_PROCESSES` running processes,
/// which carry a heartbeat timeout (long enough never to pass) or not.
fn heartbeat_round(secs: Duration, with_timeouts: bool) -> HeartbeatRound {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Server::daemon(dir.path());
    let addr = daemon.addr;
    // Create them, 1,000 a batch.
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    for batch in 0..HEARTBEAT_PROCESSES / 1000 {
        let events: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                let mut event = serde_json::json!({"type": "process.started", "process_id": format!("hb-{}", batch * 1000 + i)});
                if with_timeouts {
                    event["heartbeat_timeout"] = serde_json::json!(86_400);
                }
                event
            })
            .collect();
        agent
            .post(format!("http://{addr}/v1/events"))
            .header("content-type", "application/json")
            .send(serde_json::Value::Array(events).to_string())
            .expect("created");
    }
    // Progress, spread at random across all of them.
    let spread = |size: u64| -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
        Arc::new(move |conn, n| {
            let events: Vec<serde_json::Value> = (0..size)
                .map(|i| {
                    let pick = (conn as u64 * 7_919 + n * 104_729 + i * 1_299_709) % HEARTBEAT_PROCESSES;
                    serde_json::json!({"type": "process.heartbeat", "process_id": format!("hb-{pick}")})
                })
                .collect();
            let body = if size == 1 {
                events[0].to_string()
            } else {
                serde_json::Value::Array(events).to_string()
            };
            Planned {
                method: hyper::Method::POST,
                path: "/v1/events".into(),
                body: bytes::Bytes::from(body),
                events: size,
            }
        })
    };
    let writer_before = writer_cpu_seconds(daemon.pid());
    let single = run_load(addr, SINGLE_CONNECTIONS, secs, spread(1));
    let writer_single = writer_cpu_seconds(daemon.pid());
    let batch = run_load(addr, BATCH_CONNECTIONS, secs, spread(BATCH));
    let writer_batch = writer_cpu_seconds(daemon.pid());
    daemon.stop();
    HeartbeatRound {
        single: single.events_per_sec(),
        batch: batch.events_per_sec(),
        single_writer_us: (writer_single - writer_before) * 1e6 / single.events.max(1) as f64,
        batch_writer_us: (writer_batch - writer_single) * 1e6 / batch.events.max(1) as f64,
    }
}

/// The writer's own work, without HTTP or syncs: 100,000 processes in a
/// store of their own, with or without a heartbeat timeout each; then
/// groups of 100 `process.heartbeat` events spread over them are applied
/// and committed (without durability) as the writer does.
struct WriterStore {
    _dir: tempfile::TempDir,
    db: redb::Database,
    now: i64,
    pick: u64,
    shape: Shape,
}

/// What the processes hold besides the timeout.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// An id `hb-N` and nothing else: the smallest record there is, where
    /// a few bytes more change how many fit in a page of the store.
    Bare,
    /// What an orchestrator sends: a UUID id, a type, a name, a
    /// correlation id and four attributes of 10 to 60 bytes.
    Realistic,
}

/// A number that looks random, the same for the same `n`.
fn scramble(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl WriterStore {
    fn new(shape: Shape, with_timeouts: bool) -> WriterStore {
        use processmanager::domain::EventType;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = processmanager::store::open_writable(
            &processmanager::store::store_path(dir.path()),
            // The daemon's default page cache, unless PM_BENCH_WRITER_CACHE_MIB.
            env_number("PM_BENCH_WRITER_CACHE_MIB", 64) as usize * 1024 * 1024,
        )
        .expect("store");
        let store = WriterStore {
            _dir: dir,
            db,
            now: processmanager::writer::now_millis(),
            pick: 0x9E37_79B9_7F4A_7C15,
            shape,
        };
        for chunk in 0..HEARTBEAT_PROCESSES / 1000 {
            let events: Vec<_> = (chunk * 1000..(chunk + 1) * 1000)
                .map(|process| store.event(EventType::ProcessStarted, process, with_timeouts))
                .collect();
            store.commit(&events, true);
        }
        store
    }

    fn event(
        &self,
        kind: processmanager::domain::EventType,
        process: u64,
        timeout: bool,
    ) -> processmanager::domain::IncomingEvent {
        let mut event = processmanager::domain::model::bare_event(kind, None);
        event.process_id = match self.shape {
            Shape::Bare => format!("hb-{process}"),
            Shape::Realistic => {
                let (high, low) = (scramble(process), scramble(process + (1 << 40)));
                format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    high >> 32,
                    (high >> 16) & 0xffff,
                    high & 0xfff,
                    low >> 48,
                    low & 0xffff_ffff_ffff
                )
            }
        };
        if matches!(self.shape, Shape::Realistic)
            && kind == processmanager::domain::EventType::ProcessStarted
        {
            let x = scramble(process);
            let kinds = [
                "invoice-sync",
                "nightly-export",
                "tenant-onboarding",
                "report",
                "reindex",
            ];
            event.process_type = Some(kinds[(x % 5) as usize].to_owned());
            event.name = Some(format!(
                "{} for tenant {}",
                kinds[(x % 5) as usize],
                x % 977
            ));
            event.correlation_id = Some(format!("req-{:016x}", scramble(x)));
            for (index, key) in ["tenant", "region", "trigger", "requested_by"]
                .iter()
                .enumerate()
            {
                let length = 10 + (scramble(x + index as u64) % 51) as usize;
                event
                    .attributes
                    .insert((*key).to_owned(), "v".repeat(length));
            }
        }
        if timeout {
            event.heartbeat_timeout = Some(env_number("PM_BENCH_HEARTBEAT_TIMEOUT", 86_400) as u32);
        }
        processmanager::domain::IncomingEvent::new(event, self.now)
    }

    /// Applies `events` in one step, as the daemon's apply step writes a
    /// group: every apply step is durable (`_durable` is kept for the
    /// callers' sake, from when commits could be otherwise).
    fn commit(&self, events: &[processmanager::domain::IncomingEvent], _durable: bool) {
        processmanager::store::write::offline(&self.db, |batch| {
            for incoming in events {
                batch.apply(incoming, self.now)?;
            }
            Ok(())
        })
        .expect("applied");
    }

    /// One group of heartbeats spread at random; the seconds it took.
    fn group(&mut self) -> f64 {
        let events: Vec<_> = (0..BATCH)
            .map(|_| {
                self.pick ^= self.pick << 13;
                self.pick ^= self.pick >> 7;
                self.pick ^= self.pick << 17;
                self.event(
                    processmanager::domain::EventType::ProcessHeartbeat,
                    self.pick % HEARTBEAT_PROCESSES,
                    false,
                )
            })
            .collect();
        let started = Instant::now();
        self.commit(&events, false);
        started.elapsed().as_secs_f64()
    }
}

/// Two stores, one with timeouts and one without, given the same groups
/// in turn (which goes first alternates), so that both see the same
/// moments of a noisy machine. Returns the median of with / without over
/// each pair of groups.
fn writer_pair(shape: Shape, groups: usize) -> f64 {
    let mut without = WriterStore::new(shape, false);
    let mut with = WriterStore::new(shape, true);
    let mut ratios: Vec<f64> = (0..groups)
        .map(|group| {
            if group % 2 == 0 {
                let base = without.group();
                with.group() / base
            } else {
                let timed = with.group();
                timed / without.group()
            }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    println!(
        "live benchmark on {}; {rounds} rounds, {} s per phase",
        machine(),
        secs.as_secs()
    );
    let mut stream_rounds = Vec::new();
    let mut latencies = Vec::new();
    let mut heartbeats = Vec::new();
    // PM_BENCH_ONLY=heartbeats skips the stream and latency phases;
    // PM_BENCH_ONLY=writer runs the in-process writer pairs alone.
    let only = std::env::var("PM_BENCH_ONLY").unwrap_or_default();
    let only_heartbeats = only == "heartbeats";
    let rounds = if only == "writer" { 0 } else { rounds };
    for round in 1..=rounds {
        if !only_heartbeats {
            println!("\nround {round}: ingest with streams attached");
            stream_rounds.push(stream_round(secs));
            println!("round {round}: 202 to stream latency, under batch load");
            let round_latencies = latency_round(secs);
            println!("  {} single events followed", round_latencies.len());
            latencies.extend(round_latencies);
        }
        println!(
            "round {round}: {HEARTBEAT_PROCESSES} processes, without and with heartbeat timeouts"
        );
        // Which goes first alternates, so that neither always runs on a
        // machine warmed (or tired) by the other.
        let (without, with) = if round % 2 == 1 {
            let without = heartbeat_round(secs, false);
            (without, heartbeat_round(secs, true))
        } else {
            let with = heartbeat_round(secs, true);
            (heartbeat_round(secs, false), with)
        };
        println!(
            "  without: single {:>8.0}, batches {:>8.0} events/s, writer {:.2} / {:.2} us an event;  with: single {:>8.0}, batches {:>8.0} events/s, writer {:.2} / {:.2} us an event",
            without.single, without.batch, without.single_writer_us, without.batch_writer_us,
            with.single, with.batch, with.single_writer_us, with.batch_writer_us
        );
        heartbeats.push((without, with));
    }

    // The same cost, in-process: the writer's work alone, alternating.
    let pairs = env_number("PM_BENCH_WRITER_PAIRS", 10) as usize;
    println!("\n{pairs} pairs: the writer's work alone, 2,000 groups of 100 heartbeats over {HEARTBEAT_PROCESSES} processes each");
    let mut writer_ratios = Vec::new();
    for shape in [Shape::Realistic, Shape::Bare] {
        let mut ratios = Vec::new();
        for _ in 0..pairs {
            let ratio = writer_pair(shape, 2000);
            println!("  {shape:?} processes: median group, with / without: {ratio:.3}x");
            ratios.push(ratio);
        }
        writer_ratios.push((shape, ratios));
    }

    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    let labels = if stream_rounds.is_empty() {
        &[][..]
    } else {
        &["1 stream", "64 streams", "1 stream not reading"][..]
    };
    for (index, label) in labels.iter().enumerate() {
        let single = Spread::of(
            stream_rounds
                .iter()
                .map(|r| r.by_streams[index + 1].1 / r.by_streams[0].1),
        );
        let batch = Spread::of(
            stream_rounds
                .iter()
                .map(|r| r.by_streams[index + 1].2 / r.by_streams[0].2),
        );
        println!(
            "  ingest with {label:<22} / with none: single {}x, batches {}x",
            single.show(2),
            batch.show(2)
        );
    }
    if let Some(last) = stream_rounds.last() {
        println!(
            "  items read by 64 streams (last round): {}",
            last.items_read_64
        );
    }
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "  202 to item on a stream: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            at(0.50),
            at(0.99),
            at(1.0),
            latencies.len()
        );
    }
    if !heartbeats.is_empty() {
        print_heartbeat_rounds(&heartbeats);
    }
    for (shape, ratios) in writer_ratios {
        println!(
            "  {HEARTBEAT_PROCESSES} heartbeat timeouts / none, {shape:?} processes, the writer's work alone, median of group pairs: {}x  (target <= 1.01x)",
            Spread::of(ratios).show(3)
        );
    }
}

/// The heartbeat rounds over HTTP: events/s and the writer's CPU time an
/// event, with timeouts against without.
fn print_heartbeat_rounds(heartbeats: &[(HeartbeatRound, HeartbeatRound)]) {
    let single = Spread::of(
        heartbeats
            .iter()
            .map(|(without, with)| with.single / without.single),
    );
    let batch = Spread::of(
        heartbeats
            .iter()
            .map(|(without, with)| with.batch / without.batch),
    );
    println!(
        "  {HEARTBEAT_PROCESSES} heartbeat timeouts / none, events/s: single {}x, batches {}x  (target >= 0.99x)",
        single.show(3),
        batch.show(3)
    );
    let single = Spread::of(
        heartbeats
            .iter()
            .map(|(without, with)| with.single_writer_us / without.single_writer_us),
    );
    let batch = Spread::of(
        heartbeats
            .iter()
            .map(|(without, with)| with.batch_writer_us / without.batch_writer_us),
    );
    println!(
        "  {HEARTBEAT_PROCESSES} heartbeat timeouts / none, writer CPU an event: single {}x, batches {}x  (target <= 1.01x)",
        single.show(3),
        batch.show(3)
    );
}
