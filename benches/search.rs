//! Finding and summing on a big store: a filtered page of 50 for each
//! filter of version 1.1, and `GET /v1/stats/durations`, p99 latency.
//!
//! `cargo bench --bench search` builds (once, cached under the target
//! directory) a store of PM_BENCH_PROCESSES processes (default 1,000,000),
//! four events each, through the writer's own code: 100 tenants, seven
//! types, a correlation id `tenant-T/order-N` and the attributes `tenant`
//! and `region` on each, runs that ended over the last 30 days (a tenth
//! failed, a twentieth still running). The daemon starts on it with
//! `index.attributes = tenant, region`, which it indexes at that first
//! start (the time is reported). Then each query shape runs for
//! PM_BENCH_SECS seconds (default 5) at 8 connections, after the HTTP floor
//! answering a body of the same size, in the same run.

mod support;

use bytes::Bytes;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const CONNECTIONS: usize = 8;
const EVENTS_PER_PROCESS: u64 = 4;
const TENANTS: u64 = 100;
const DAY_MS: i64 = 86_400_000;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// When the store was built, to the hour: its runs end over the 30 days
/// before, so that the default window (the last 24 hours) holds a thirtieth.
fn base_millis(processes: u64) -> i64 {
    let marker = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-search-base-{processes}"));
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if let Ok(base) = text.trim().parse() {
            return base;
        }
    }
    let now = processmanager::writer::now_millis();
    let base = now / 3_600_000 * 3_600_000;
    std::fs::write(&marker, base.to_string()).expect("marker");
    base
}

fn event_of(processes: u64, base: i64, p: u64, n: u64) -> processmanager::domain::Event {
    let mut state = (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Tenant, region, type and outcome drawn independently, as in life.
    let tenant = xorshift(&mut state) % TENANTS;
    let region = ["eu", "us", "ap", "sa"][(xorshift(&mut state) % 4) as usize];
    let process_type = format!("type-{}", xorshift(&mut state) % 7);
    let outcome = xorshift(&mut state) % 20;
    let started = base - 30 * DAY_MS + (p as i64 * 30 * DAY_MS / processes as i64);
    // From a second to about three hours, log-uniform.
    let duration =
        (1_000.0 * 10f64.powf((xorshift(&mut state) % 1_000) as f64 / 1_000.0 * 4.0)) as i64;
    let id = format!("run-{p}");
    let value = match n {
        0 => serde_json::json!({
            "type": "process.started", "process_id": id, "event_id": format!("{id}-0"),
            "process_type": process_type,
            "correlation_id": format!("tenant-{tenant}/order-{p}"),
            "attributes": {"tenant": format!("t{tenant}"), "region": region},
            "occurred_at": millis_text(started),
        }),
        1 | 2 => serde_json::json!({
            "type": "process.progress", "process_id": id, "event_id": format!("{id}-{n}"),
            "progress": {"percent": 40 * n}, "occurred_at": millis_text(started + duration * n as i64 / 3),
        }),
        _ => {
            let kind = match outcome {
                0 => "process.progress",
                1 | 2 => "process.failed",
                _ => "process.succeeded",
            };
            serde_json::json!({"type": kind, "process_id": id, "event_id": format!("{id}-3"),
                "occurred_at": millis_text(started + duration)})
        }
    };
    let input: processmanager::domain::EventInput =
        serde_json::from_value(value).expect("valid event");
    input.validate(None).expect("valid event")
}

fn millis_text(millis: i64) -> String {
    processmanager::http::views::format_millis(millis)
}

fn encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Random tenants, statuses and types for one filter shape.
fn plan(shape: &'static str, base: i64) -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    Arc::new(move |conn, n| {
        let mut state = ((conn as u64 + 11).wrapping_mul(0x2545_F491_4F6C_DD1D)) ^ (n + 5);
        let r = xorshift(&mut state);
        let tenant = r % TENANTS;
        let path = match shape {
            "correlation_id_prefix" => format!(
                "/v1/processes?correlation_id_prefix={}&limit=50",
                encoded(&format!("tenant-{tenant}/"))
            ),
            "attr" => format!("/v1/processes?attr.tenant=t{tenant}&limit=50"),
            "attr+status" => format!("/v1/processes?attr.tenant=t{tenant}&status=failed&limit=50"),
            "attr+attr" => format!(
                "/v1/processes?attr.tenant=t{tenant}&attr.region={}&limit=50",
                ["eu", "us", "ap", "sa"][((r >> 8) % 4) as usize]
            ),
            "stalled" => "/v1/processes?stalled=true&limit=50".to_owned(),
            "durations, 24 h, every type" => "/v1/stats/durations".to_owned(),
            "durations, 30 d, one type" => format!(
                "/v1/stats/durations?process_type=type-{}&finished_after={}&finished_before={}",
                (r >> 8) % 7,
                encoded(&millis_text(base - 30 * DAY_MS - 37 * 60_000)),
                encoded(&millis_text(base + 13 * 60_000)),
            ),
            other => unreachable!("no shape {other}"),
        };
        Planned {
            method: hyper::Method::GET,
            path,
            body: Bytes::new(),
            events: 0,
        }
    })
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let processes = env_number("PM_BENCH_PROCESSES", 1_000_000);
    println!(
        "search benchmark on {}; {} s per phase, {CONNECTIONS} connections; {processes} processes, {} events",
        machine(),
        secs.as_secs(),
        processes * EVENTS_PER_PROCESS
    );
    let base = base_millis(processes);
    let dir = build_cached_store("search", processes, EVENTS_PER_PROCESS, |p, n| {
        event_of(processes, base, p, n)
    });
    // A copy, so that every run indexes the attributes at its first start.
    let work = tempfile::Builder::new()
        .prefix("pm-search-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(dir.as_os_str())
        .arg(work.path().join("data"))
        .status()
        .expect("cp");
    assert!(copied.success());
    let data = work.path().join("data");

    let config = work.path().join("config.toml");
    std::fs::write(&config, "[index]\nattributes = [\"tenant\", \"region\"]\n").expect("config");
    std::env::set_var("PM_BENCH_DAEMON_CONFIG", &config);
    let spawned = Instant::now();
    let daemon = Server::daemon(&data);
    let indexed_in = spawned.elapsed();
    println!(
        "first start, indexing tenant and region over {processes} processes: ready in {:.1} s",
        indexed_in.as_secs_f64()
    );
    let floor = Server::floor();

    let shapes = [
        "correlation_id_prefix",
        "attr",
        "attr+status",
        "attr+attr",
        "stalled",
        "durations, 24 h, every type",
        "durations, 30 d, one type",
    ];
    let mut rows = Vec::new();
    for shape in shapes {
        // Warm: the pages a shape reads come into the page cache, as on a
        // daemon that has been serving.
        let _ = run_load(
            daemon.addr,
            CONNECTIONS,
            Duration::from_secs(1),
            plan(shape, base),
        );
        let floor_run = run_load(floor.addr, CONNECTIONS, secs, plan(shape, base));
        let run = run_load(daemon.addr, CONNECTIONS, secs, plan(shape, base));
        // One at a time: what the query itself costs, without the queue
        // that eight connections on two cores (the load client's among
        // them) make.
        let alone = run_load(daemon.addr, 1, secs, plan(shape, base));
        println!(
            "  {shape:<30} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  (floor p99 {:.2} ms); alone p50 {:.2} ms  p99 {:.2} ms  errors {}",
            run.requests_per_sec(),
            run.percentile_ms(0.5),
            run.percentile_ms(0.99),
            floor_run.percentile_ms(0.99),
            alone.percentile_ms(0.5),
            alone.percentile_ms(0.99),
            run.errors + alone.errors
        );
        assert_eq!(run.errors + alone.errors, 0, "{shape}: errors");
        rows.push((shape, run, floor_run, alone));
    }
    floor.stop();
    let rss = daemon.peak_rss_bytes();
    daemon.stop();
    println!("\nresults (target: p99 under 5 ms for each, judged one request at a time)");
    println!("| query | alone p50 ms | alone p99 ms | 8 conns req/s | 8 conns p99 ms | floor p99 ms, 8 conns | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (shape, run, floor_run, alone) in &rows {
        let p99 = alone.percentile_ms(0.99);
        println!(
            "| {shape} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
            alone.percentile_ms(0.5),
            p99,
            run.requests_per_sec(),
            run.percentile_ms(0.99),
            floor_run.percentile_ms(0.99),
            if p99 < 5.0 { "met" } else { "MISSED" }
        );
    }
    println!(
        "first start with two new indexed keys: {:.1} s; peak RSS {:.0} MiB; store {:.0} MiB",
        indexed_in.as_secs_f64(),
        mib(rss),
        mib(std::fs::metadata(processmanager::store::store_path(&data))
            .map(|m| m.len())
            .unwrap_or(0))
    );
}
