//! Starts the real daemon on a free port with a temp data dir and talks
//! HTTP to it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_processmanager");

/// An answer, with its body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            agent,
            base: format!("http://{addr}"),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = result.expect("the daemon answers");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::finish(request.call())
    }

    pub fn delete(&self, path: &str) -> Reply {
        let mut request = self.agent.delete(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::finish(request.call())
    }

    /// POSTs a raw JSON body to /v1/events with the given extra headers.
    pub fn post_raw(&self, body: &str, headers: &[(&str, &str)]) -> Reply {
        self.post_raw_typed("application/json", body, headers)
    }

    /// POSTs a raw body of the given content type to /v1/events.
    pub fn post_raw_typed(
        &self,
        content_type: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .agent
            .post(format!("{}/v1/events", self.base))
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::finish(request.send(body))
    }

    /// Any request: method, path (with its query), headers and body as
    /// given, with the client's token when it has one and the request
    /// none of its own.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        let has_auth = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        if let (Some(token), false) = (&self.token, has_auth) {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body.to_vec()).expect("a well-formed request");
        Self::finish(self.agent.run(request))
    }

    pub fn post(&self, event: &Value) -> Reply {
        self.post_raw(&event.to_string(), &[])
    }

    /// A GET with extra headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::finish(request.call())
    }
}

/// A streamed answer of the change feed (`Accept` as given), read line by
/// line as it arrives; dropping it closes the connection.
pub struct FeedStream {
    pub status: u16,
    pub lines: Box<dyn BufRead + Send>,
}

impl FeedStream {
    pub fn open(addr: SocketAddr, path: &str, accept: &str) -> FeedStream {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let response = agent
            .get(format!("http://{addr}{path}"))
            .header("accept", accept)
            .call()
            .expect("the daemon answers");
        let status = response.status().as_u16();
        FeedStream {
            status,
            lines: Box::new(BufReader::new(response.into_body().into_reader())),
        }
    }

    /// The next NDJSON item, skipping keepalives; `None` at the end.
    pub fn next_item(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if !line.trim().is_empty() {
                return Some(serde_json::from_str(&line).expect("an NDJSON item"));
            }
        }
    }
}

/// The Python of the virtualenv `.ci/test` makes, else python3 on PATH.
pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A process's resident memory now (`VmRSS`) and its thread count.
pub fn rss_and_threads(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc status"))
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    output: Arc<Mutex<String>>,
    _temp: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub struct DaemonOptions {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// Return as soon as it listens, before /readyz says it is ready.
    pub not_waiting_for_ready: bool,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl DaemonOptions {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn without_waiting_for_ready(mut self) -> Self {
        self.not_waiting_for_ready = true;
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }
}

/// A command for the binary that ignores any config file or PM_ variable of
/// the machine running the tests.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("PM_") {
            command.env_remove(name);
        }
    }
    command.env("PM_CONFIG", "/dev/null");
    command
}

/// Runs `serve` where it must refuse to start; returns its stderr after
/// checking that it exited 1 without a panic.
pub fn serve_refused(listen: &str, data_dir: &Path) -> String {
    let output = command()
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(DaemonOptions::default())
    }

    /// Starts the daemon with `config` as its config file; the file lives
    /// as long as the second value.
    pub fn with_config(config: &str) -> (Daemon, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(config.as_bytes()).expect("config written");
        let daemon = Daemon::start_with(
            DaemonOptions::default().env("PM_CONFIG", file.path().to_str().expect("UTF-8 path")),
        );
        (daemon, file)
    }

    pub fn start_in(dir: &Path) -> Daemon {
        Daemon::start_with(DaemonOptions::default().data_dir(dir))
    }

    pub fn start_with(options: DaemonOptions) -> Daemon {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("temp dir");
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let mut command = command();
        command
            .arg("serve")
            .arg("--listen")
            .arg(options.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-format")
            .arg("json")
            .args(&options.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the daemon starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (found, listening) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        collect(stdout, output.clone(), Some(found));
        collect(stderr, output.clone(), None);
        let addr = match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the daemon did not start listening:\n{}",
                    output.lock().unwrap()
                );
            }
        };
        let daemon = Daemon {
            child,
            addr,
            data_dir,
            output,
            _temp: temp,
        };
        if !options.not_waiting_for_ready {
            daemon.wait_ready();
        }
        daemon
    }

    /// Waits until /readyz answers 200: the store is open.
    pub fn wait_ready(&self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get("/readyz").status != 200 {
            assert!(
                Instant::now() < deadline,
                "the daemon never became ready:\n{}",
                self.output()
            );
            std::thread::yield_now();
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The probe listener's address, from its log line (logged before the
    /// daemon turns ready, so there once `start` returns).
    pub fn probe_addr(&self) -> SocketAddr {
        let output = self.output();
        let rest = output
            .split("serving probes and metrics on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no probe listener was logged:\n{output}"));
        let addr: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        addr.parse().expect("a socket address")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        assert!(
            send_signal(self.pid(), signal),
            "could not signal the daemon"
        );
    }

    /// Waits for the daemon to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    /// SIGTERM, then the exit status (the contract gives it 10 seconds).
    pub fn terminate(mut self) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(Duration::from_secs(15))
            .expect("the daemon exits after SIGTERM");
        let elapsed = started.elapsed();
        (status, elapsed, self.output())
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill(1) rather than libc::kill keeps the tests free of unsafe code.
fn send_signal(pid: i32, signal: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn collect(
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    listening: Option<std::sync::mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = &listening {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    if let Ok(addr) = addr.parse() {
                        let _ = sender.send(addr);
                    }
                }
            }
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// Sends raw bytes on a fresh connection and reads the whole answer.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A small event builder: `event("process.started", "p1")`.
pub fn event(kind: &str, process_id: &str) -> Value {
    serde_json::json!({"type": kind, "process_id": process_id})
}

pub fn task_event(kind: &str, process_id: &str, task_id: &str) -> Value {
    serde_json::json!({"type": kind, "process_id": process_id, "task_id": task_id})
}

/// Adds fields to an event object.
pub fn with(mut event: Value, fields: Value) -> Value {
    if let (Some(target), Some(extra)) = (event.as_object_mut(), fields.as_object()) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
    event
}

/// Every event a load acknowledged, with the seq it was given.
pub type Acknowledged = Vec<(Value, u64)>;

/// Posts unique keyed events, alone and in small batches, from `threads`
/// threads until `stop` is set or the daemon stops answering; returns
/// what was acknowledged with 2xx.
pub fn run_load(
    addr: SocketAddr,
    tag: &str,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Acknowledged>> {
    (0..threads)
        .map(|worker| {
            let stop = stop.clone();
            let worker = format!("{tag}{worker}");
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut acknowledged = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    n += 1;
                    let event = |n: u64| {
                        if n.is_multiple_of(3) {
                            json!({"type": "task.progress", "process_id": format!("load-{worker}-{}", n / 10),
                                   "task_id": format!("t{}", n % 4), "event_id": format!("w{worker}-e{n}")})
                        } else {
                            json!({"type": "process.progress", "process_id": format!("load-{worker}-{}", n / 10),
                                   "event_id": format!("w{worker}-e{n}"), "progress": {"current": n},
                                   "attributes": {format!("e{n}"): "seen"}})
                        }
                    };
                    // Every fifth request a batch of the next events, most of
                    // them of one process: they meet in one write group.
                    let events: Vec<Value> = if n.is_multiple_of(5) {
                        let batch = (n..n + 4).map(event).collect();
                        n += 3;
                        batch
                    } else {
                        vec![event(n)]
                    };
                    let body = match events.as_slice() {
                        [single] => single.clone(),
                        _ => Value::Array(events.clone()),
                    };
                    let result = agent
                        .post(format!("http://{addr}/v1/events"))
                        .header("content-type", "application/json")
                        .send(body.to_string());
                    let Ok(mut response) = result else { break };
                    let status = response.status().as_u16();
                    if status == 202 || status == 200 {
                        let text = response.body_mut().read_to_string().unwrap_or_default();
                        let answer: Value = serde_json::from_str(&text).expect("a 2xx body is JSON");
                        match answer["results"].as_array() {
                            Some(items) => {
                                for (event, item) in events.into_iter().zip(items) {
                                    assert_eq!(item["result"], "accepted", "{text}");
                                    acknowledged.push((event, item["seq"].as_u64().expect("seq")));
                                }
                            }
                            None => acknowledged.push((body, answer["seq"].as_u64().expect("seq"))),
                        }
                    }
                }
                acknowledged
            })
        })
        .collect()
}

/// Resends every acknowledged event; each must come back `duplicate` with its seq.
pub fn assert_all_present(client: &Client, acknowledged: &Acknowledged) {
    assert!(!acknowledged.is_empty(), "the load acknowledged nothing");
    for (body, seq) in acknowledged {
        let again = client.post(body);
        assert_eq!(again.status, 200, "{body}: {}", again.text);
        assert_eq!(again.json["result"], "duplicate", "{body} was lost");
        assert_eq!(
            again.json["seq"].as_u64(),
            Some(*seq),
            "{body} came back with another seq"
        );
    }
}

pub fn wait_for_acks(handles_started: Instant, addr: SocketAddr, at_least: u64) {
    let client = Client::new(addr);
    while client.get("/v1/stats").json["events_total"]
        .as_u64()
        .unwrap_or(0)
        < at_least
    {
        assert!(
            handles_started.elapsed() < Duration::from_secs(60),
            "the load made no progress"
        );
        std::thread::yield_now();
    }
}

/// A process's peak resident memory (`VmHWM`), from the kernel.
pub fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// A Standard Webhooks signature (`v1,<base64 HMAC-SHA256>`) of `body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `inspect verify` on a data directory no daemon holds: asserts the
/// store is sound, showing the report if not.
pub fn assert_store_verifies(data_dir: &Path) {
    let verify = command()
        .arg("inspect")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("verify")
        .output()
        .expect("inspect runs");
    assert!(
        verify.status.success(),
        "the store does not verify:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Waits until the daemon has stored at least `target` events, as a load
/// runs beside; fails if it stops moving for `limit`.
pub fn wait_for_events(client: &Client, target: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while client.get("/v1/stats").json["events_total"]
        .as_u64()
        .expect("events_total")
        < target
    {
        assert!(Instant::now() < deadline, "the load stalled");
        std::thread::yield_now();
    }
}

/// Waits for `child` to exit, at most `limit`; `None` if it is still
/// running then.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of one sample of a `/metrics` exposition, by its name and
/// labels exactly as exposed; fails when the series is not there.
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{exposition}"))
        .parse()
        .expect("a number")
}

/// The JSON lines of a log, each as its fields: the daemon's format puts
/// them at the top level, tracing's default JSON under `fields`.
pub fn log_fields(log: &str) -> impl Iterator<Item = Value> + '_ {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| match line.get("fields") {
            Some(fields) => fields.clone(),
            None => line,
        })
}

/// The counts (`done`) of the progress lines of the work called `work` in
/// a JSON log, in order.
pub fn progress_counts(log: &str, work: &str) -> Vec<u64> {
    log_fields(log)
        .filter(|line| line["work"] == work)
        .filter_map(|line| line["done"].as_u64())
        .collect()
}
