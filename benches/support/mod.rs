//! What the benchmarks share: a large store built once and cached, the daemon as a child process, an HTTP
//! floor server (this same benchmark binary, re-run in another role), a
//! load client on hyper, and the measurements.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The daemon's allocator, so that the floors measured in this binary
/// are not slower for want of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const BIN: &str = env!("CARGO_BIN_EXE_processmanager");

/// Seconds each load phase runs: `PM_BENCH_SECS`, or `default`.
pub fn phase_secs_or(default: u64) -> Duration {
    Duration::from_secs(env_number("PM_BENCH_SECS", default))
}

/// The median of a few measurements, with the lowest and the highest.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Spread {
    /// Panics on no values: every benchmark measures at least once.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        };
        Spread {
            median,
            low: values[0],
            high: values[values.len() - 1],
        }
    }

    /// `median [low–high]` with `decimals` decimals.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} [{:.*}–{:.*}]",
            decimals, self.median, decimals, self.low, decimals, self.high
        )
    }
}

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A server process (the daemon or a floor) and the address it listens on.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    fn wait_listening(mut child: Child) -> Server {
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        if let Ok(addr) = addr.parse::<SocketAddr>() {
                            let _ = tx.send(addr);
                            sent = true;
                        }
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server starts listening");
        Server { child, addr }
    }

    /// The real daemon on a free port with `data_dir`: this build's, or
    /// the binary named by PM_BENCH_DAEMON_BIN (another build, to compare
    /// two against the same floors).
    pub fn daemon(data_dir: &Path) -> Server {
        let binary = std::env::var("PM_BENCH_DAEMON_BIN").unwrap_or_else(|_| BIN.into());
        let child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log",
                "warn,processmanager::commands=info",
                "--data-dir",
            ])
            .arg(data_dir)
            // Defaults, unless PM_BENCH_DAEMON_CONFIG names a config file to try.
            .env(
                "PM_CONFIG",
                std::env::var("PM_BENCH_DAEMON_CONFIG").unwrap_or_else(|_| "/dev/null".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the daemon starts");
        let server = Server::wait_listening(child);
        wait_ready(server.addr, Instant::now());
        server
    }

    /// This benchmark binary re-run as the HTTP floor.
    pub fn floor() -> Server {
        let child = Command::new(std::env::current_exe().expect("own path"))
            .env("PM_BENCH_ROLE", "http-floor")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the floor starts");
        Server::wait_listening(child)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, from /proc.
    pub fn peak_rss_bytes(&self) -> u64 {
        peak_rss_of(self.pid())
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time used so far, in seconds: by a whole process (its ended
/// threads included), by its thread named `thread` (the first such), and
/// by this process, the load client.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUsed {
    pub process: f64,
    pub thread: f64,
    pub client: f64,
}

/// The share of one core that was busy over a phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Busy {
    /// The named thread of the measured process.
    pub thread: f64,
    /// The measured process's other threads.
    pub rest: f64,
    /// This process: the load client.
    pub client: f64,
}

impl CpuUsed {
    /// Of process `pid` and its thread `thread`, which must be there: a
    /// table of zeros would say nothing true.
    pub fn of(pid: u32, thread: &str) -> CpuUsed {
        let named = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == thread)
            })
            .unwrap_or_else(|| panic!("process {pid} has no thread named {thread}"));
        CpuUsed {
            process: cpu_seconds(&format!("/proc/{pid}/stat")),
            thread: cpu_seconds(&named.path().join("stat").to_string_lossy()),
            client: cpu_seconds("/proc/self/stat"),
        }
    }

    /// The share of one core each used from `earlier` to now, over `wall`.
    pub fn busy_since(self, earlier: CpuUsed, wall: Duration) -> Busy {
        let wall = wall.as_secs_f64();
        let thread = (self.thread - earlier.thread) / wall;
        let process = (self.process - earlier.process) / wall;
        Busy {
            thread,
            rest: (process - thread).max(0.0),
            client: (self.client - earlier.client) / wall,
        }
    }
}

/// CPU time the calling thread has used, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds("/proc/thread-self/stat")
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn cpu_seconds(stat: &str) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .expect("getconf CLK_TCK")
    });
    let text = std::fs::read_to_string(stat).unwrap_or_else(|error| panic!("{stat}: {error}"));
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15; the name was field 2.
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{stat} has no field {n}: {text}"))
    };
    (field(14) + field(15)) / ticks
}

pub fn peak_rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// If this process was started as the HTTP floor, serve and never return.
pub fn run_role_if_asked() {
    if std::env::var("PM_BENCH_ROLE").as_deref() == Ok("http-floor") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(floor_server());
        std::process::exit(0);
    }
}

/// A hyper server that parses and validates events exactly as the daemon
/// does and answers the same shapes, storing nothing. GETs are answered
/// with a process-sized JSON body.
async fn floor_server() {
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use processmanager::domain::EventInput;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let process_body = Bytes::from(sample_process_json());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let process_body = process_body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let process_body = process_body.clone();
                async move {
                    let is_post = request.method() == hyper::Method::POST;
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let answer = if !is_post {
                        process_body
                    } else if body.first() == Some(&b'[') {
                        let items: Vec<&serde_json::value::RawValue> =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let mut results = Vec::with_capacity(items.len());
                        for (index, item) in items.iter().enumerate() {
                            let ok = serde_json::from_str::<EventInput>(item.get())
                                .ok()
                                .and_then(|e| e.validate(None).ok())
                                .is_some();
                            results.push(serde_json::json!({"index": index, "result": if ok {"accepted"} else {"rejected"}, "seq": index}));
                        }
                        Bytes::from(
                            serde_json::to_vec(
                                &serde_json::json!({"accepted": items.len(), "results": results}),
                            )
                            .unwrap_or_default(),
                        )
                    } else {
                        let event = serde_json::from_slice::<EventInput>(&body)
                            .ok()
                            .and_then(|e| e.validate(None).ok());
                        let id = event.map(|e| e.process_id).unwrap_or_default();
                        Bytes::from(serde_json::to_vec(&serde_json::json!({"result": "accepted", "seq": 1, "process_id": id, "process_status": "running"})).unwrap_or_default())
                    };
                    let mut response = hyper::Response::new(Full::new(answer));
                    response.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A typical GET /v1/processes/{id} answer: a process with three tasks.
pub fn sample_process_json() -> Vec<u8> {
    let task = |id: &str| {
        serde_json::json!({"id": id, "name": "Step", "status": "succeeded", "attempt": 1, "progress": null, "error": null,
        "attributes": {}, "created_at": "2026-11-25T10:00:00.000Z", "started_at": "2026-11-25T10:00:00.000Z",
        "updated_at": "2026-11-25T10:00:01.000Z", "finished_at": "2026-11-25T10:00:01.000Z",
        "attempts": [{"attempt": 1, "status": "succeeded", "started_at": "2026-11-25T10:00:00.000Z", "finished_at": "2026-11-25T10:00:01.000Z", "error": null}]})
    };
    serde_json::to_vec(&serde_json::json!({"id": "bench-1-1", "name": "Nightly import", "process_type": "import", "correlation_id": "tenant-1",
        "status": "running", "progress": {"percent": 40.0}, "error": null, "attributes": {"tenant": "1"},
        "created_at": "2026-11-25T10:00:00.000Z", "started_at": "2026-11-25T10:00:00.000Z", "updated_at": "2026-11-25T10:00:01.000Z",
        "finished_at": null, "duration_ms": null, "event_count": 10, "last_seq": 10, "task_counts": {"succeeded": 3},
        "tasks": [task("a"), task("b"), task("c")]}))
    .unwrap_or_default()
}

/// The n-th event of a stream of events: ten per process, a realistic mix
/// (start, task starts and ends, progress, finish), each with a unique key.
pub fn webhook(stream: u64, n: u64) -> serde_json::Value {
    let process = format!("bench-{stream}-{n}", n = n / 10);
    let key = format!("s{stream}-e{n}");
    match n % 10 {
        0 => {
            serde_json::json!({"event_id": key, "type": "process.started", "process_id": process, "process_type": format!("type-{}", n % 7), "correlation_id": format!("tenant-{}", n % 50)})
        }
        1 | 3 => {
            serde_json::json!({"event_id": key, "type": "task.started", "process_id": process, "task_id": format!("step-{}", n % 10)})
        }
        2 | 4 => {
            serde_json::json!({"event_id": key, "type": "task.succeeded", "process_id": process, "task_id": format!("step-{}", n % 10 - 1)})
        }
        9 => {
            serde_json::json!({"event_id": key, "type": "process.succeeded", "process_id": process})
        }
        _ => {
            serde_json::json!({"event_id": key, "type": "process.progress", "process_id": process, "progress": {"percent": (n % 10) as f64 * 10.0, "message": "working"}})
        }
    }
}

/// What one load phase measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    /// Several phases as one, for latency percentiles over all of them.
    pub fn merged<'a>(results: impl IntoIterator<Item = &'a LoadResult>) -> LoadResult {
        let mut merged = LoadResult {
            requests: 0,
            events: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        };
        for result in results {
            merged.requests += result.requests;
            merged.events += result.events;
            merged.errors += result.errors;
            merged.elapsed += result.elapsed;
            merged.latencies_us.extend_from_slice(&result.latencies_us);
        }
        merged
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        f64::from(sorted[index]) / 1000.0
    }
}

/// One request of a load: method, path, body, and the events it carries.
pub struct Planned {
    pub method: hyper::Method,
    pub path: String,
    pub body: Bytes,
    pub events: u64,
}

/// Keeps `connections` connections busy for `duration`, each sending the
/// requests `plan(connection, n)` makes, one at a time.
pub fn run_load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    plan: Arc<dyn Fn(usize, u64) -> Planned + Send + Sync>,
) -> LoadResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for conn in 0..connections {
            let plan = plan.clone();
            tasks.push(tokio::spawn(async move {
                let mut result = LoadResult {
                    requests: 0,
                    events: 0,
                    errors: 0,
                    elapsed: Duration::ZERO,
                    latencies_us: Vec::new(),
                };
                let Ok(stream) = TcpStream::connect(addr).await else {
                    result.errors += 1;
                    return result;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, connection)) = http1::handshake(TokioIo::new(stream)).await
                else {
                    result.errors += 1;
                    return result;
                };
                tokio::spawn(connection);
                let mut n = 0;
                while Instant::now() < deadline {
                    let planned = plan(conn, n);
                    n += 1;
                    let mut request = Request::builder()
                        .method(planned.method)
                        .uri(planned.path)
                        .header("host", "localhost")
                        .header("content-type", "application/json");
                    if !planned.body.is_empty() {
                        request = request.header("content-length", planned.body.len());
                    }
                    let Ok(request) = request.body(Full::new(planned.body)) else {
                        break;
                    };
                    let sent = Instant::now();
                    match sender.send_request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.into_body().collect().await;
                            result
                                .latencies_us
                                .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            if ok {
                                result.requests += 1;
                                result.events += planned.events;
                            } else {
                                result.errors += 1;
                            }
                        }
                        Err(_) => {
                            result.errors += 1;
                            break;
                        }
                    }
                }
                result
            }));
        }
        let mut total = LoadResult {
            requests: 0,
            events: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        };
        for task in tasks {
            if let Ok(part) = task.await {
                total.requests += part.requests;
                total.events += part.events;
                total.errors += part.errors;
                total.latencies_us.extend(part.latencies_us);
            }
        }
        total.elapsed = started.elapsed();
        total
    })
}

/// The first stream of a new load phase: every phase, in this run or an
/// earlier one against the same store, sends events no phase sent before,
/// so none is answered as an idempotent repeat.
fn fresh_streams() -> u64 {
    static PHASES: AtomicU64 = AtomicU64::new(0);
    // Ten digits at most: the run's second (within eleven days), the phase,
    // then the connection.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() % 1_000_000);
    (run * 100 + PHASES.fetch_add(1, Ordering::Relaxed) % 100) * 100
}

/// Single events, each connection its own stream.
pub fn single_event_plan() -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    let first = fresh_streams();
    Arc::new(move |conn, n| Planned {
        method: hyper::Method::POST,
        path: "/v1/events".into(),
        body: Bytes::from(webhook(first + conn as u64, n).to_string()),
        events: 1,
    })
}

/// Batches of `size` events, each connection its own stream: consecutive
/// events (ten processes with ten events each, for 100), as a run's
/// events travel together; or, with `PM_BENCH_BATCH_SHAPE=spread`, one
/// event each of `size` processes, which then take ten batches to finish.
pub fn batch_plan(size: u64) -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    let first = fresh_streams();
    let spread = std::env::var("PM_BENCH_BATCH_SHAPE").as_deref() == Ok("spread");
    Arc::new(move |conn, n| {
        let event = |i: u64| match spread {
            false => n * size + i,
            true => ((n / 10) * size + i) * 10 + n % 10,
        };
        let events: Vec<serde_json::Value> = (0..size)
            .map(|i| webhook(first + conn as u64, event(i)))
            .collect();
        Planned {
            method: hyper::Method::POST,
            path: "/v1/events".into(),
            body: Bytes::from(serde_json::Value::Array(events).to_string()),
            events: size,
        }
    })
}

/// Waits until `GET /readyz` answers 200; returns how long that took.
pub fn wait_ready(addr: SocketAddr, since: Instant) -> Duration {
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return since.elapsed();
            }
        }
        assert!(since.elapsed() < Duration::from_secs(300), "never ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A store of `processes` processes of `events_per_process` events each
/// (`event_of(process, n)`), built through the writer's own code path in
/// transactions of 5,000 processes; kept under the target directory as
/// `name` and the schema version, and reused while it is there whole.
/// A fresh copy of a built store in a temp dir, synced before it is used:
/// otherwise the kernel writes the copy back while a load runs, and the
/// daemon's syncs queue behind a gigabyte that is not its own.
pub fn copy_store(built: &Path) -> tempfile::TempDir {
    use processmanager::store;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let copy = store::store_path(dir.path());
    std::fs::copy(store::store_path(built), &copy).expect("copy");
    std::fs::File::open(&copy)
        .and_then(|file| file.sync_all())
        .expect("sync the copy");
    dir
}

pub fn build_cached_store(
    name: &str,
    processes: u64,
    events_per_process: u64,
    event_of: impl Fn(u64, u64) -> processmanager::domain::Event,
) -> std::path::PathBuf {
    use processmanager::domain::IncomingEvent;
    use processmanager::store;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bench-{name}-v{}-{processes}",
        store::schema::SCHEMA_VERSION
    ));
    if dir.join("complete").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let started = Instant::now();
    let db = store::open_writable(&store::store_path(&dir), 256 << 20).expect("store");
    let mut p = 0;
    while p < processes {
        let now = processmanager::writer::now_millis();
        store::write::offline(&db, |batch| {
            for _ in 0..5_000 {
                if p == processes {
                    break;
                }
                for n in 0..events_per_process {
                    let incoming = IncomingEvent {
                        event: event_of(p, n),
                        fingerprint: [0; 16],
                        received_at: now,
                    };
                    batch.apply(&incoming, now)?;
                }
                p += 1;
            }
            Ok(())
        })
        .expect("apply");
        if p % 100_000 == 0 {
            eprintln!(
                "  built {p} processes in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    db.begin_write()
        .expect("txn")
        .commit()
        .expect("durable commit");
    drop(db);
    std::fs::write(dir.join("complete"), b"").expect("marker");
    eprintln!("  store built in {:.0} s", started.elapsed().as_secs_f64());
    dir
}
