//! A soak: normal ingest and queries beside a rotating mix of hostile
//! clients (slowloris, oversized and endless bodies, attribute floods,
//! 4 MB batch storms). Bounded memory, a bounded p99 for the normal client,
//! and nothing acknowledged lost. `PM_SOAK_SECS` sets its length (20 s
//! here; `PM_SOAK_SECS=1800 cargo test --release --test it soak` for the
//! long run).

use crate::support::{peak_rss_bytes, Client, Daemon};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUDGET: u64 = 64 << 20;

/// Holds `count` connections that send a header a byte at a time.
fn slowloris(addr: SocketAddr, count: usize, stop: &AtomicBool) {
    let mut held: Vec<TcpStream> = (0..count)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let header = b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
    for byte in header.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        held.retain_mut(|stream| stream.write_all(&[*byte]).is_ok());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Declares 10 MB (413 before it is read), then sends a chunked body that
/// never ends (cut off by the body limit or timeout).
fn oversized_and_endless(addr: SocketAddr, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(
                b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n[",
            );
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut answer = [0u8; 64];
            let _ = stream.read(&mut answer);
        }
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(
                b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let chunk = format!("{:x}\r\n{}\r\n", 65536, "[".repeat(65536));
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(5) {
                if stream.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        }
    }
}

/// Events that each bring 64 new attributes to one process: refused once
/// the process holds what its caps allow.
fn attribute_flood(client: &Client, round: usize, stop: &AtomicBool) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let attributes: serde_json::Map<String, Value> = (0..64)
            .map(|i| (format!("k{n}-{i}"), json!("v".repeat(500))))
            .collect();
        let reply = client.post(&json!({"type": "process.progress",
            "process_id": format!("flood-{round}"), "attributes": attributes}));
        assert!(
            matches!(reply.status, 202 | 422 | 429),
            "flood: {} {}",
            reply.status,
            reply.text
        );
        n += 1;
    }
}

/// Eight clients posting 4 MB batches as fast as they are answered.
fn batch_storm(addr: SocketAddr, round: usize, stop: &Arc<AtomicBool>) {
    let pad = "s".repeat(3900);
    let body: Arc<String> = Arc::new(
        Value::Array(
            (0..1000)
                .map(|i| {
                    json!({"event_id": format!("storm-{round}-{i}"), "type": "process.started",
                    "process_id": format!("storm-{round}-{i}"), "attributes": {"pad": pad}})
                })
                .collect(),
        )
        .to_string(),
    );
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (body, stop) = (body.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = Client::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.post_raw(&body, &[]);
                    assert!(matches!(reply.status, 200 | 429), "storm: {}", reply.status);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn soak_normal_clients_keep_their_p99_and_every_event_beside_hostile_ones() {
    let secs: u64 = std::env::var("PM_SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(20);
    let (daemon, _config) = Daemon::with_config(&format!(
        "[ingest]\nmax_inflight_bytes = {BUDGET}\n[store]\ncache_mib = 16\n[http]\nmax_connections = 128\nheader_read_timeout_secs = 2\nbody_read_timeout_secs = 2\n"
    ));
    let addr = daemon.addr;
    let base = peak_rss_bytes(daemon.pid());
    let done = Arc::new(AtomicBool::new(false));

    // The normal client: one keyed event at a time, retried on 429/503 as
    // the contract asks, and a read of what it wrote.
    let normal = {
        let done = done.clone();
        std::thread::spawn(move || {
            let client = Client::new(addr);
            let mut latencies = Vec::new();
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let body = json!({"event_id": format!("n{n}"), "type": "process.started",
                                  "process_id": format!("normal-{n}")});
                let started = Instant::now();
                let seq = loop {
                    let reply = client.post(&body);
                    match reply.status {
                        202 => break reply.json["seq"].as_u64().unwrap(),
                        429 | 503 => std::thread::sleep(Duration::from_millis(50)),
                        other => panic!("normal client: {other} {}", reply.text),
                    }
                };
                let read = client.get(&format!("/v1/processes/normal-{n}"));
                assert_eq!(read.status, 200, "{}", read.text);
                latencies.push(started.elapsed());
                acknowledged.push((body, seq));
                n += 1;
            }
            (latencies, acknowledged)
        })
    };

    // The hostile mix, a new kind every few seconds.
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = {
            let stop = stop.clone();
            std::thread::spawn(move || match round % 4 {
                0 => slowloris(addr, 200, &stop),
                1 => oversized_and_endless(addr, &stop),
                2 => attribute_flood(&Client::new(addr), round, &stop),
                _ => batch_storm(addr, round, &stop),
            })
        };
        std::thread::sleep(Duration::from_secs(4).min(Duration::from_secs(secs)));
        stop.store(true, Ordering::Relaxed);
        hostile.join().unwrap();
        round += 1;
    }
    done.store(true, Ordering::Relaxed);
    let (mut latencies, acknowledged) = normal.join().unwrap();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let peak = peak_rss_bytes(daemon.pid());
    println!(
        "soak {secs} s, {round} hostile rounds: normal client {} events, p99 {p99:?} (write and read back); peak RSS {} MiB (at start {} MiB, budget {} MiB)",
        latencies.len(),
        peak >> 20,
        base >> 20,
        BUDGET >> 20
    );
    assert!(round >= 4, "every hostile kind ran");
    assert!(latencies.len() > 10, "the normal client got through");
    assert!(p99 < Duration::from_secs(2), "normal p99 {p99:?}");
    assert!(
        peak < base + BUDGET + (160 << 20),
        "peak RSS {} MiB",
        peak >> 20
    );
    let client = daemon.client();
    crate::support::assert_all_present(&client, &acknowledged);
    // Each kind of hostility was seen, counted by its reason.
    let metrics = client.get("/metrics").text;
    for reason in ["header_timeout", "payload_too_large", "over_budget"] {
        let series = format!("pm_rejections_total{{reason=\"{reason}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series}"))
            .parse()
            .unwrap();
        assert!(count > 0.0, "{reason} was never counted:\n{metrics}");
    }
    assert!(
        daemon.output().contains("more_since_last_warning"),
        "rejections were logged"
    );
}
