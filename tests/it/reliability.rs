//! Faults and hostile clients: crashes at random moments, signed webhooks,
//! slow clients.

use crate::support::{
    assert_all_present, command, event, now_secs, run_load, serve_refused, sign, wait_for_events,
    Acknowledged, Client, Daemon, DaemonOptions,
};
use hmac::Mac;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small deterministic generator, seeded from the clock and printed, so a
/// failing run can be repeated with PM_CRASH_SEED.
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Cycles of: start, load from 6 threads, SIGKILL after a random number of
/// committed events, restart. `PM_CRASH_CYCLES` sets how many (3 in CI).
#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_event() {
    let cycles: u64 = std::env::var("PM_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("PM_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash loop: {cycles} cycles, seed {seed}");
    let mut random = Random(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Acknowledged = Vec::new();
    for cycle in 0..cycles {
        let daemon = Daemon::start_in(dir.path());
        let client = daemon.client();
        let before = client.get("/v1/stats").json["events_total"]
            .as_u64()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let load = run_load(daemon.addr, &format!("c{cycle}-"), 6, stop.clone());
        // Kill after a random number of commits, between 1 and 3000 events in.
        let target = before + 1 + random.next(3000);
        wait_for_events(&client, target, Duration::from_secs(60));
        daemon.kill9();
        stop.store(true, Ordering::SeqCst);
        for handle in load {
            acknowledged.extend(handle.join().unwrap());
        }
    }
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    assert_all_present(&client, &acknowledged);

    // Per process: every acknowledged event is in its history, in seq
    // order, and the history holds exactly what the process counts.
    let mut by_process: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (body, seq) in &acknowledged {
        by_process
            .entry(body["process_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(*seq);
    }
    for (process_id, seqs) in &by_process {
        let process = client.get(&format!("/v1/processes/{process_id}")).json;
        let history = client
            .get(&format!("/v1/processes/{process_id}/history?limit=1000"))
            .json;
        let stored: Vec<u64> = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["seq"].as_u64().unwrap())
            .collect();
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "{process_id}: history out of order"
        );
        assert_eq!(
            stored.len() as u64,
            process["event_count"].as_u64().unwrap(),
            "{process_id}: a gap in history"
        );
        let stored: BTreeSet<u64> = stored.into_iter().collect();
        assert!(
            seqs.is_subset(&stored),
            "{process_id}: an acknowledged event is missing from history"
        );
    }
    // Every attribute an acknowledged event brought is kept (attributes
    // live in a record of their own, written by the same commits).
    for (body, _) in &acknowledged {
        if let Some(attributes) = body["attributes"].as_object() {
            let process_id = body["process_id"].as_str().unwrap();
            let process = client.get(&format!("/v1/processes/{process_id}")).json;
            for key in attributes.keys() {
                assert_eq!(
                    process["attributes"][key], "seen",
                    "{process_id}: the attribute {key} of an acknowledged event was lost"
                );
            }
        }
    }
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    let verify = command()
        .args(["inspect", "--data-dir"])
        .arg(dir.path())
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["sound"], true, "{report}");
    assert_eq!(report["pages_checked"], true);
    println!(
        "crash loop: {cycles} cycles, {} acknowledged events all present",
        acknowledged.len()
    );
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn with_signing_on_an_unsigned_request_learns_only_401() {
    // The secret as some senders show it, without base64 padding: the
    // daemon starts, and verifies with the same key as the padded form.
    let daemon =
        Daemon::start_with(DaemonOptions::default().env("PM_WEBHOOK_SECRETS", "whsec_YWJjZA"));
    let client = daemon.client();
    let body = event("process.started", "signed").to_string();
    let unsigned_text = client.post_raw_typed("text/plain", &body, &[]);
    assert_eq!(unsigned_text.status, 401, "{}", unsigned_text.text);
    let now = now_secs();
    let signature = sign("whsec_YWJjZA==", "msg_1", now, &body);
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", &now.to_string() as &str),
        ("webhook-signature", &signature),
    ];
    let signed_text = client.post_raw_typed("text/plain", &body, &headers);
    assert_eq!(signed_text.status, 415, "{}", signed_text.text);
    let signed_json = client.post_raw(&body, &headers);
    assert_eq!(signed_json.status, 202, "{}", signed_json.text);
}

#[test]
fn with_a_secret_only_correctly_signed_webhooks_are_accepted() {
    let rotated_out = "whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==";
    let daemon = Daemon::start_with(
        DaemonOptions::default().env("PM_WEBHOOK_SECRETS", &format!("{rotated_out},{SECRET}")),
    );
    let client = daemon.client();
    let body = event("process.started", "signed").to_string();
    let now = now_secs();
    let post = |id: &str, timestamp: i64, signature: &str| {
        client.post_raw(
            &body,
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", signature),
            ],
        )
    };
    let good = post("msg_1", now, &sign(SECRET, "msg_1", now, &body));
    assert_eq!(good.status, 202, "{}", good.text);
    let by_old_secret = post("msg_2", now, &sign(rotated_out, "msg_2", now, &body));
    assert_eq!(
        by_old_secret.status, 202,
        "either configured secret verifies"
    );
    // The webhook-id is the idempotency key: a resend is a duplicate.
    assert_eq!(
        post("msg_1", now, &sign(SECRET, "msg_1", now, &body)).json["result"],
        "duplicate"
    );

    let refused = [
        client.post_raw(&body, &[]),
        post("msg_3", now, "v1,"),
        post("msg_3", now, &sign(SECRET, "msg_3", now, &body)[..20]),
        post("msg_3", now, &sign(SECRET, "another-id", now, &body)),
        post("msg_3", now - 301, &sign(SECRET, "msg_3", now - 301, &body)),
        post("msg_3", now + 301, &sign(SECRET, "msg_3", now + 301, &body)),
        client.post_raw(
            &event("process.started", "tampered").to_string(),
            &[
                ("webhook-id", "msg_4"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &sign(SECRET, "msg_4", now, &body)),
            ],
        ),
    ];
    for (case, reply) in refused.iter().enumerate() {
        assert_eq!(reply.status, 401, "case {case}: {}", reply.text);
        assert_eq!(reply.json["code"], "invalid_signature", "case {case}");
    }
    assert_eq!(client.get("/v1/processes/tampered").status, 404);
    assert_eq!(client.get("/v1/stats").json["events_total"], 2);
}

#[test]
fn github_style_signatures_are_accepted_when_configured() {
    let daemon = Daemon::start_with(
        DaemonOptions::default().env("PM_WEBHOOK_GITHUB_SECRETS", "It's a Secret to Everybody"),
    );
    let client = daemon.client();
    let body = event("process.started", "gh").to_string();
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        client
            .post_raw(&body, &[("X-Hub-Signature-256", &signature)])
            .status,
        202
    );
    assert_eq!(
        client
            .post_raw(&body, &[("X-Hub-Signature-256", "sha256=00")])
            .status,
        401
    );
    assert_eq!(client.post_raw(&body, &[]).status, 401);
}

fn slow_client_daemon(extra: &str) -> (Daemon, tempfile::NamedTempFile) {
    Daemon::with_config(&format!(
        "[http]\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 1\n{extra}"
    ))
}

/// Reads until the server closes the connection; returns what arrived and when.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (daemon, _config) = slow_client_daemon("");
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\n")
        .unwrap();
    let (_, took) = read_until_closed(&mut stream);
    assert!(took < Duration::from_secs(10), "held for {took:?}");
    // An idle connection that never sends a request is closed as well.
    let mut idle = TcpStream::connect(daemon.addr).unwrap();
    let (_, took) = read_until_closed(&mut idle);
    assert!(took < Duration::from_secs(10), "idle held for {took:?}");
}

#[test]
fn a_body_slower_than_the_timeout_is_408() {
    let (daemon, _config) = slow_client_daemon("");
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":")
        .unwrap();
    let (answer, took) = read_until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(10));
    assert_eq!(daemon.client().get("/v1/stats").json["events_total"], 0);
}

#[test]
fn a_full_house_of_idle_connections_gives_way_to_a_new_client() {
    let (daemon, _config) = slow_client_daemon("max_connections = 2\n");
    // Two connections that send half a request, then nothing, fill the
    // limit; the header timeout (1 s) would end them.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(daemon.addr).unwrap();
            stream
                .write_all(b"GET /livez HTTP/1.1\r\nhost: localhost\r\n")
                .unwrap();
            std::thread::spawn(move || read_until_closed(&mut stream))
        })
        .collect();
    // A third client: the daemon accepts in order, so it finds the house
    // full, and the connection idle longest gives way.
    let connected = Instant::now();
    let mut third = TcpStream::connect(daemon.addr).unwrap();
    third
        .write_all(b"GET /livez HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = read_until_closed(&mut third);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let waited = connected.elapsed();
    // Served at once, not after a held one's 1 s timeout.
    assert!(
        waited < Duration::from_millis(900),
        "served after {waited:?}, as if it had waited for a timeout"
    );
    let closed_early = held
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .filter(|(answer, took)| answer.is_empty() && *took < Duration::from_millis(900))
        .count();
    assert!(closed_early >= 1, "an idle connection gave way");
    let metrics = daemon.client().get("/metrics").text;
    let closed: f64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("pm_rejections_total{reason=\"idle_connection_closed\"} ")
        })
        .expect("the counter is exposed")
        .parse()
        .unwrap();
    assert!(closed >= 1.0, "{metrics}");
    assert!(
        daemon
            .output()
            .contains("closed an idle connection to make room"),
        "the log says so"
    );
}

#[test]
fn idle_and_slowloris_clients_holding_every_connection_lock_out_neither_probes_nor_posts() {
    let (daemon, _config) = slow_client_daemon("max_connections = 64\n");
    let addr = daemon.addr;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // 32 connections that send nothing, 32 that dribble a header.
    let idle: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let dribbling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> =
                (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
            for byte in b"GET /livez HTTP/1.1\r\nhost: localhost\r\nx-slow: "
                .iter()
                .cycle()
            {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                held.retain_mut(|stream| stream.write_all(&[*byte]).is_ok());
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Until the daemon has taken all 64, a probe may still find room: wait
    // for the house to be full, which the first eviction shows.
    let client = daemon.client();
    let mut probe_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = client.get("/readyz");
        probe_times.push(started.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let started = Instant::now();
    let posted = client.post(&event("process.started", "through-the-crowd"));
    let post_took = started.elapsed();
    assert_eq!(posted.status, 202, "{}", posted.text);
    stop.store(true, Ordering::Relaxed);
    dribbling.join().unwrap();
    drop(idle);
    probe_times.sort();
    println!("/readyz with a full house: {probe_times:?}; a POST: {post_took:?}");
    // The header timeout here is 1 s: a probe that waited for a held
    // connection to time out would take that long.
    assert!(
        probe_times[2] < Duration::from_millis(100),
        "/readyz took {probe_times:?}"
    );
    assert!(
        post_took < Duration::from_secs(1),
        "the POST took {post_took:?}"
    );
    let metrics = client.get("/metrics").text;
    assert!(
        crate::support::sample(
            &metrics,
            r#"pm_rejections_total{reason="idle_connection_closed"}"#
        ) >= 1.0,
        "the full house made room"
    );
}

#[test]
fn a_full_house_of_requests_in_service_refuses_the_next_connection() {
    let (daemon, _config) = slow_client_daemon("max_connections = 1\n");
    // One request in service: its body arrives slowly (within the 1 s body
    // timeout it is still being read), and the next connection is refused.
    let mut busy = hold_every_place_in_service(daemon.addr, 1)
        .pop()
        .expect("the one place");
    let (answer, _) = read_until_closed(&mut busy);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let metrics = daemon.client().get("/metrics").text;
    for reason in ["connection_limit", "body_timeout"] {
        assert_eq!(
            crate::support::sample(
                &metrics,
                &format!("pm_rejections_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason} counted once"
        );
    }
}

/// Opens `count` POSTs on the main listener whose bodies never arrive in
/// full: requests in service, which no full house may close. Returns them
/// once a further connection is refused, that is, once they hold every
/// place.
fn hold_every_place_in_service(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let open = || {
        let mut busy = TcpStream::connect(addr).unwrap();
        busy.write_all(
            b"POST /v1/events HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .unwrap();
        busy
    };
    let mut held: Vec<TcpStream> = (0..count).map(|_| open()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra = TcpStream::connect(addr).unwrap();
        let _ =
            extra.write_all(b"GET /livez HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        let (answer, _) = read_until_closed(&mut extra);
        if answer.is_empty() {
            return held;
        }
        // Served: one of ours was not in service yet and gave way.
        assert!(Instant::now() < deadline, "never refused: {answer}");
        held.retain_mut(|stream| stream.write_all(b" ").is_ok());
        while held.len() < count {
            held.push(open());
        }
    }
}

#[test]
fn the_probe_listener_and_the_api_each_keep_their_own_connections() {
    // Timeouts long enough that nothing here is served by one running out.
    let (daemon, _config) = Daemon::with_config(
        "[http]\nheader_read_timeout_secs = 10\nbody_read_timeout_secs = 10\nmax_connections = 2\nprobe_listen = \"127.0.0.1:0\"\n",
    );
    let probes = Client::new(daemon.probe_addr());
    let timed_readyz = || {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let reply = probes.get("/readyz");
                assert_eq!(reply.status, 200, "{}", reply.text);
                started.elapsed()
            })
            .collect();
        times.sort();
        times[2]
    };

    // The API's every place serving a request it cannot finish: the
    // kubelet's probe does not notice.
    let in_service = hold_every_place_in_service(daemon.addr, 2);
    let took = timed_readyz();
    assert!(took < Duration::from_millis(100), "/readyz took {took:?}");
    drop(in_service);

    // The probe listener's own 16 places held by a crowd that sends
    // nothing: a probe still answers at once (the crowd gives way), and the
    // API serves as if nothing happened.
    let crowd: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(daemon.probe_addr()).unwrap())
        .collect();
    let took = timed_readyz();
    assert!(took < Duration::from_millis(100), "/readyz took {took:?}");
    let started = Instant::now();
    let posted = daemon
        .client()
        .post(&event("process.started", "beside-the-crowd"));
    assert_eq!(posted.status, 202, "{}", posted.text);
    assert!(started.elapsed() < Duration::from_secs(1));
    let crowd_left = crowd
        .into_iter()
        .filter(|stream| {
            stream.set_nonblocking(true).unwrap();
            // Closed by the daemon: a read returns 0 at once.
            matches!((&*stream).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(
        crowd_left >= 40 - 16,
        "the probe listener held more than its 16: only {crowd_left} of 40 were closed"
    );
}

/// A small tmpfs, unmounted when dropped: a disk that really fills up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            mounted,
            "this test mounts a tmpfs and needs root, as CI has"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk with the daemon's own writes until it refuses one, then
/// checks that it stays up for reads, loses nothing acknowledged, and takes
/// writes again by itself once space is freed.
fn full_disk_round(disk_size: &str, store_settings: &str, floor_bytes: u64) {
    let disk = SmallDisk::mount(disk_size);
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(config, "[store]\n{store_settings}").unwrap();
    let data_dir = disk.path().join("data");
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(&data_dir)
            .env("PM_CONFIG", config.path().to_str().unwrap()),
    );
    let client = daemon.client();
    // Leave about 1.5 MiB above the free-space floor for the store, beside
    // its write log.
    let stats = rustix::fs::statvfs(disk.path()).unwrap();
    let free = stats.f_bavail * stats.f_frsize;
    let filler = usize::try_from(free - floor_bytes - 1_500_000).unwrap();
    std::fs::write(disk.path().join("filler"), vec![0u8; filler]).unwrap();
    let pad = "x".repeat(2000);
    let mut acknowledged: Acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..5000 {
        let body = serde_json::json!({"type": "process.started", "process_id": format!("p{i}"), "event_id": format!("e{i}"), "attributes": {"pad": pad}});
        let reply = client.post(&body);
        match reply.status {
            202 => acknowledged.push((body, reply.json["seq"].as_u64().unwrap())),
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(refused.json["code"], "unavailable");
    assert!(!acknowledged.is_empty());
    // Reads go on while the disk is full, and the daemon stays up: every
    // read for a few seconds, through the writer's tries to apply what is
    // pending (each of which, failing, makes redb's handle reopen).
    let reading_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < reading_until {
        assert_eq!(client.get("/livez").status, 200);
        let stats = client.get("/v1/stats");
        assert_eq!(
            stats.json["processes_total"].as_u64(),
            Some(acknowledged.len() as u64),
            "{}",
            stats.text
        );
        assert_eq!(client.get("/v1/processes?limit=5").status, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Room again: writes resume with no restart.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = client.post(&event("process.started", "after-room"));
        if reply.status == 202 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert!(Instant::now() < deadline, "writes never resumed");
        std::thread::yield_now();
    }
    assert_all_present(&client, &acknowledged);
    let (status, _, _) = daemon.terminate();
    assert!(status.success(), "the daemon ran on and stopped cleanly");
}

#[test]
fn a_full_disk_refuses_writes_with_503_keeps_reads_and_recovers_alone() {
    // The free-space guard refuses writes before redb meets the full disk.
    full_disk_round(
        "8m",
        "min_free_mib = 1\ncache_mib = 4\nwrite_log_mib = 1\n",
        1 << 20,
    );
}

#[test]
fn an_io_error_mid_commit_is_answered_503_and_the_store_reopened() {
    // No guard: redb meets ENOSPC inside a commit, the writer reopens it.
    full_disk_round(
        "8m",
        "min_free_mib = 0\ncache_mib = 4\nwrite_log_mib = 1\n",
        0,
    );
}

#[test]
fn on_a_64_mib_volume_the_defaults_start_work_and_survive_it_filling() {
    // Nothing configured: the write log and the floor follow the volume
    // (2 MiB and 4 MiB here).
    full_disk_round("64m", "", 4 << 20);
}

#[test]
fn a_volume_too_small_for_the_store_is_refused_in_one_sentence() {
    // It would need 1 MiB of write log, a floor of 1 MiB and 1 MiB to start.
    let disk = SmallDisk::mount("2m");
    let stderr = serve_refused("127.0.0.1:0", &disk.path().join("data"));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for says in ["store.write_log_mib", "store.min_free_mib", "larger volume"] {
        assert!(stderr.contains(says), "{stderr}");
    }
}
