//! Settings: defaults, then the config file, then environment variables,
//! then flags, merged into one checked `Config`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the config file is looked for when neither `--config` nor
/// `PM_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "config/processmanager.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub ingest: IngestConfig,
    pub writer: WriterConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhookConfig,
    pub metrics: MetricsConfig,
    /// What one process may keep (`[limits]`).
    pub limits: crate::domain::Caps,
    pub feed: FeedConfig,
    #[serde(rename = "await")]
    pub await_: AwaitConfig,
    pub timeouts: TimeoutsConfig,
    pub cloudevents: CloudEventsConfig,
    pub retention: RetentionConfig,
    pub index: IndexConfig,
}

/// What the store indexes beyond its fixed indexes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Attribute keys that `GET /v1/processes?attr.KEY=VALUE` can filter
    /// on. A key added is indexed over the whole store at the next start
    /// (`/readyz` answers 503 until done); a key removed is dropped.
    pub attributes: Vec<String>,
}

/// Attribute keys `index.attributes` may name, at most: each costs an
/// index entry per process that has it.
pub const MAX_INDEXED_ATTRIBUTES: usize = 16;

/// How long finished processes are kept, by terminal status, as durations
/// such as "30d" or "12h"; a status not given is kept forever.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub succeeded: Option<String>,
    pub failed: Option<String>,
    pub cancelled: Option<String>,
    pub timed_out: Option<String>,
}

impl RetentionConfig {
    /// (status, milliseconds kept) for each status given.
    pub fn keep(&self) -> Result<Vec<(crate::domain::Status, crate::domain::Millis)>, ConfigError> {
        use crate::domain::Status;
        let mut keep = Vec::new();
        for (status, text) in [
            (Status::Succeeded, &self.succeeded),
            (Status::Failed, &self.failed),
            (Status::Cancelled, &self.cancelled),
            (Status::TimedOut, &self.timed_out),
        ] {
            let Some(text) = text else { continue };
            keep.push((
                status,
                duration_millis(text, &format!("retention.{status}"))?,
            ));
        }
        Ok(keep)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// Put before this API's event types in a CloudEvent's `type`, for
    /// example `com.example.pm.` for `com.example.pm.task.started`. Types
    /// are accepted with it and without.
    pub type_prefix: String,
    /// Origins (`WebHook-Request-Origin`) the validation handshake allows
    /// to deliver; `*` allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        CloudEventsConfig {
            type_prefix: String::new(),
            allowed_origins: vec!["*".into()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Streams of `/v1/changes` open at once, at most; more are 429.
    pub max_streams: usize,
    /// Seconds between keepalives on a stream with nothing to send.
    pub keepalive_secs: u64,
    /// How long the feed keeps its items, as a duration such as "7d": a
    /// consumer away longer starts over (410 `feed_gone`).
    pub retention: String,
}

impl FeedConfig {
    /// `retention` in milliseconds.
    pub fn keep(&self) -> Result<crate::domain::Millis, ConfigError> {
        duration_millis(&self.retention, "feed.retention")
    }
}

/// A duration such as "30d", "12h" or "200ms", in milliseconds (more than 0).
fn duration_millis(text: &str, setting: &str) -> Result<crate::domain::Millis, ConfigError> {
    humantime::parse_duration(text.trim())
        .ok()
        .and_then(|duration| crate::domain::Millis::try_from(duration.as_millis()).ok())
        .filter(|&millis| millis > 0)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{setting} is `{text}`; give a duration such as \"30d\", \"12h\" or \"90m\""
            ))
        })
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            max_streams: 256,
            keepalive_secs: 15,
            retention: "7d".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwaitConfig {
    /// `Retry-After` of a 202 from `/v1/processes/{id}/await`.
    pub retry_after_secs: u64,
}

impl Default for AwaitConfig {
    fn default() -> Self {
        AwaitConfig {
            retry_after_secs: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// The least time between two looks at stalls and deadlines come due.
    pub check_interval_ms: u64,
    /// Defaults by process type.
    pub process_types: std::collections::BTreeMap<String, TypeTimeoutsConfig>,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            check_interval_ms: 1000,
            process_types: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypeTimeoutsConfig {
    pub heartbeat_timeout_secs: Option<u32>,
    /// From the process's creation.
    pub deadline_secs: Option<u64>,
}

impl TimeoutsConfig {
    /// The defaults as the writer applies (and logs) them.
    pub fn defaults(&self) -> crate::domain::TimeoutDefaults {
        self.process_types
            .iter()
            .map(|(kind, config)| {
                (
                    kind.clone(),
                    crate::domain::TypeTimeouts {
                        heartbeat_timeout: config.heartbeat_timeout_secs,
                        deadline_after_ms: config.deadline_secs.map(|secs| {
                            i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
                        }),
                    },
                )
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Process types that get a label of their own in
    /// `pm_process_duration_seconds`; the rest count as `other`.
    pub max_process_types: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_process_types: 50,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, else pretty.
    Auto,
    Json,
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub queue_capacity: usize,
    /// Bytes of request bodies being read, parsed, queued and applied at
    /// once, each counted at `http::BODY_MEMORY_FACTOR` times its size.
    pub max_inflight_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    pub max_group_events: usize,
    /// Memory for the state acknowledged but not yet applied to the store
    /// file, in MiB. When it is full the writer waits for the apply step
    /// under way before it takes more (back-pressure: 429 once the queue
    /// fills).
    pub pending_mib: usize,
    /// How long acknowledged groups wait, at most, before an apply step
    /// writes them into the store file, in milliseconds.
    pub apply_after_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub cache_mib: usize,
    pub quick_repair: bool,
    /// Below this much free disk space, writes are refused (503) before
    /// redb is asked, so the store never meets a full disk mid-commit.
    /// `None`: a sixteenth of the volume, 1 to 64 MiB (`store::sizing`).
    pub min_free_mib: Option<u64>,
    /// Size of the two write logs together, which make each group durable
    /// until an apply step writes it to the store file
    /// (`store::durability`). `None`: a thirty-second of the volume, 1 to
    /// 32 MiB.
    pub write_log_mib: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Async worker threads; 0 means one per core.
    pub worker_threads: usize,
    /// Threads that run store reads (the blocking pool); 0 means two per
    /// core. Few threads keep the busy ones busy instead of waking idle
    /// ones; more overlap disk reads when the store is not in memory.
    pub read_threads: usize,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub max_connections: usize,
    /// A second listener for the probes and metrics only.
    pub probe_listen: Option<SocketAddr>,
    /// The address clients reach the API by (`https://host:port`), for
    /// absolute `Location` headers; unset: relative ones.
    pub public_url: Option<String>,
    /// `Host` names the API answers to besides loopback ones and the
    /// public URL's host: checked without tokens (a guard against DNS
    /// rebinding), and also with tokens once the list is set. A name that
    /// starts with a dot (`.example.com`) allows the names under it.
    pub allowed_hosts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Standard Webhooks secrets (`whsec_...`); with any, every event post
    /// must be signed.
    pub secrets: Vec<String>,
    /// Secrets for GitHub-style `X-Hub-Signature-256`.
    pub github_secrets: Vec<String>,
    /// How far `webhook-timestamp` may be from the server clock.
    pub tolerance_secs: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secrets: Vec::new(),
            github_secrets: Vec::new(),
            tolerance_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub ingest_tokens: Vec<String>,
    pub read_tokens: Vec<String>,
    pub admin_tokens: Vec<String>,
    pub allow_anonymous: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            ingest: IngestConfig::default(),
            writer: WriterConfig::default(),
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            webhooks: WebhookConfig::default(),
            metrics: MetricsConfig::default(),
            limits: crate::domain::Caps::default(),
            feed: FeedConfig::default(),
            await_: AwaitConfig::default(),
            timeouts: TimeoutsConfig::default(),
            cloudevents: CloudEventsConfig::default(),
            retention: RetentionConfig::default(),
            index: IndexConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 1000,
            max_body_bytes: 4 * 1024 * 1024,
            queue_capacity: 1024,
            max_inflight_bytes: 128 * 1024 * 1024,
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_group_events: 4096,
            pending_mib: 32,
            apply_after_ms: 1000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mib: 64,
            quick_repair: true,
            min_free_mib: None,
            write_log_mib: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            worker_threads: 0,
            read_threads: 0,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections: 1024,
            probe_listen: None,
            public_url: None,
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {} is not valid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Values given on the command line or in the environment (clap reads
/// both); `None` leaves the config file's value or the default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub probe_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_filter: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// A source of environment variables, so that tests need not touch the
/// process environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Merges defaults, the config file, token variables and overrides, and checks the result.
    pub fn load(overrides: &Overrides, env: &dyn Environment) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config_file {
            Some(path) => Config::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        for (variable, tokens) in [
            ("PM_AUTH_INGEST_TOKENS", &mut config.auth.ingest_tokens),
            ("PM_AUTH_READ_TOKENS", &mut config.auth.read_tokens),
            ("PM_AUTH_ADMIN_TOKENS", &mut config.auth.admin_tokens),
            ("PM_WEBHOOK_SECRETS", &mut config.webhooks.secrets),
            (
                "PM_WEBHOOK_GITHUB_SECRETS",
                &mut config.webhooks.github_secrets,
            ),
            ("PM_INDEX_ATTRIBUTES", &mut config.index.attributes),
        ] {
            if let Some(list) = env.var(variable) {
                *tokens = list
                    .split(',')
                    .map(str::trim)
                    .filter(|token| !token.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        if let Some(allow) = env.var("PM_AUTH_ALLOW_ANONYMOUS") {
            config.auth.allow_anonymous = match allow.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "PM_AUTH_ALLOW_ANONYMOUS must be true or false, not `{other}`"
                    )))
                }
            };
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(probe_listen) = overrides.probe_listen {
            config.http.probe_listen = Some(probe_listen);
        }
        if let Some(data_dir) = &overrides.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(filter) = &overrides.log_filter {
            config.log.filter = filter.clone();
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("ingest.max_batch", self.ingest.max_batch),
            ("ingest.max_body_bytes", self.ingest.max_body_bytes),
            ("ingest.queue_capacity", self.ingest.queue_capacity),
            ("ingest.max_inflight_bytes", self.ingest.max_inflight_bytes),
            ("writer.max_group_events", self.writer.max_group_events),
            ("writer.pending_mib", self.writer.pending_mib),
            ("writer.apply_after_ms", self.writer.apply_after_ms as usize),
            ("http.max_connections", self.http.max_connections),
            (
                "store.write_log_mib",
                self.store.write_log_mib.map_or(1, |mib| mib as usize),
            ),
        ];
        let limits = &self.limits;
        let positive = positive.into_iter().chain([
            (
                "limits.attributes_per_process",
                limits.attributes_per_process as usize,
            ),
            (
                "limits.attribute_bytes_per_process",
                limits.attribute_bytes_per_process as usize,
            ),
            (
                "limits.attributes_per_task",
                limits.attributes_per_task as usize,
            ),
            (
                "limits.attribute_bytes_per_task",
                limits.attribute_bytes_per_task as usize,
            ),
            (
                "limits.tasks_per_process",
                limits.tasks_per_process as usize,
            ),
            (
                "limits.attempts_per_task",
                limits.attempts_per_task as usize,
            ),
        ]);
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        for (name, secs) in [
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
            ),
            (
                "http.body_read_timeout_secs",
                self.http.body_read_timeout_secs,
            ),
        ] {
            if secs == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.ingest.max_inflight_bytes
            < self
                .ingest
                .max_body_bytes
                .saturating_mul(crate::http::BODY_MEMORY_FACTOR)
        {
            return Err(ConfigError::Invalid(format!(
                "ingest.max_inflight_bytes ({}) must be at least {} times ingest.max_body_bytes ({}), or a body of the largest size could never be taken",
                self.ingest.max_inflight_bytes,
                crate::http::BODY_MEMORY_FACTOR,
                self.ingest.max_body_bytes
            )));
        }
        if self.store.write_log_mib.is_some_and(|mib| mib > 4096) {
            return Err(ConfigError::Invalid(
                "store.write_log_mib must be at most 4096 (the write log is preallocated)".into(),
            ));
        }
        for (name, value) in [
            ("feed.max_streams", self.feed.max_streams as u64),
            ("feed.keepalive_secs", self.feed.keepalive_secs),
            ("await.retry_after_secs", self.await_.retry_after_secs),
            (
                "timeouts.check_interval_ms",
                self.timeouts.check_interval_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        for (kind, defaults) in &self.timeouts.process_types {
            if defaults.heartbeat_timeout_secs.is_some_and(|secs| {
                !(1..=crate::domain::MAX_HEARTBEAT_TIMEOUT_SECS).contains(&secs)
            }) {
                return Err(ConfigError::Invalid(format!(
                    "timeouts.process_types.{kind}.heartbeat_timeout_secs must be from 1 to {}",
                    crate::domain::MAX_HEARTBEAT_TIMEOUT_SECS
                )));
            }
            if defaults.deadline_secs == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "timeouts.process_types.{kind}.deadline_secs must be at least 1"
                )));
            }
        }
        self.retention.keep()?;
        self.feed.keep()?;
        let keys = &self.index.attributes;
        if keys.len() > MAX_INDEXED_ATTRIBUTES {
            return Err(ConfigError::Invalid(format!(
                "index.attributes names {} keys; at most {MAX_INDEXED_ATTRIBUTES} can be indexed",
                keys.len()
            )));
        }
        for (at, key) in keys.iter().enumerate() {
            if key.is_empty() || key.len() > crate::domain::MAX_ATTRIBUTE_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "index.attributes: `{key}` is not an attribute key (1 to {} bytes)",
                    crate::domain::MAX_ATTRIBUTE_KEY_BYTES
                )));
            }
            if keys[..at].contains(key) {
                return Err(ConfigError::Invalid(format!(
                    "index.attributes names `{key}` twice"
                )));
            }
        }
        if let Some(url) = &self.http.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<hyper::Uri>().is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "http.public_url must be an absolute http:// or https:// URL such as https://pm.example.com, not `{url}`"
                )));
            }
        }
        for secret in &self.webhooks.secrets {
            crate::http::signature::decode_secret(secret).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The daemon without tokens serves anyone who can connect: only on a
    /// loopback address, unless explicitly allowed.
    pub fn check_anonymous_serving(&self) -> Result<(), ConfigError> {
        if !self.auth.has_tokens() && !self.auth.allow_anonymous && !self.listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve anyone who asks on {}, which is not a loopback address: configure tokens (auth.*_tokens or PM_AUTH_*_TOKENS) or set auth.allow_anonymous = true",
                self.listen
            )));
        }
        Ok(())
    }
}

impl HttpConfig {
    /// One per core: the writer thread spends much of its time waiting on
    /// fsync, and reads want both cores (measured on 2 cores: GET 67k req/s
    /// with two workers against 59k with one; single-event ingest the same
    /// within the noise).
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        cores()
    }

    /// Two per core. Measured on 2 cores and the 1M-process store: GET at
    /// 64 connections ran 67k req/s with 4 read threads, 60k with 8, 52k
    /// with 16 and 43k with tokio's default of 512, where every read woke
    /// an idle thread. With the store out of the page cache, 16 threads
    /// overlap more disk reads (39k req/s against 25k with 4).
    pub fn effective_read_threads(&self) -> usize {
        if self.read_threads > 0 {
            return self.read_threads;
        }
        cores() * 2
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl AuthConfig {
    pub fn has_tokens(&self) -> bool {
        !(self.ingest_tokens.is_empty()
            && self.read_tokens.is_empty()
            && self.admin_tokens.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnvironment(HashMap<&'static str, &'static str>);

    impl Environment for FakeEnvironment {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|value| value.to_string())
        }
    }

    fn no_env() -> FakeEnvironment {
        FakeEnvironment(HashMap::new())
    }

    #[test]
    fn retention_durations_are_read_and_bad_ones_are_named() {
        let config: Config = toml::from_str(
            "[retention]\nsucceeded = \"30d\"\nfailed = \"12h\"\n[feed]\nretention = \"200ms\"\n",
        )
        .unwrap();
        assert_eq!(
            config.retention.keep().unwrap(),
            vec![
                (crate::domain::Status::Succeeded, 30 * 86_400_000),
                (crate::domain::Status::Failed, 12 * 3_600_000)
            ]
        );
        assert_eq!(config.feed.keep().unwrap(), 200);
        for (text, setting) in [
            (
                "[retention]\ncancelled = \"a month\"\n",
                "retention.cancelled",
            ),
            ("[retention]\ntimed_out = \"0s\"\n", "retention.timed_out"),
            ("[feed]\nretention = \"\"\n", "feed.retention"),
        ] {
            let config: Config = toml::from_str(text).unwrap();
            let error = config.check().unwrap_err().to_string();
            assert!(error.starts_with(setting), "{error}");
        }
    }

    #[test]
    fn the_shipped_config_file_lists_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn flags_beat_the_file_and_env_tokens_replace_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pm.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\n[auth]\nread_tokens = [\"file\"]\n").unwrap();
        let overrides = Overrides {
            config_file: Some(file),
            data_dir: Some("/from/flag".into()),
            ..Overrides::default()
        };
        let env = FakeEnvironment(HashMap::from([("PM_AUTH_READ_TOKENS", "a, b,")]));
        let config = Config::load(&overrides, &env).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.auth.read_tokens, vec!["a", "b"]);
    }

    #[test]
    fn a_typo_in_the_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pm.toml");
        std::fs::write(&file, "[ingest]\nmax_bacth = 5\n").unwrap();
        let error = Config::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("max_bacth"), "{error}");
    }

    #[test]
    fn a_write_log_size_out_of_range_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pm.toml");
        for (name, value, says) in [
            ("write_log_mib", "0", "at least 1"),
            ("write_log_mib", "5000", "at most 4096"),
        ] {
            std::fs::write(&file, format!("[store]\n{name} = {value}\n")).unwrap();
            let overrides = Overrides {
                config_file: Some(file.clone()),
                ..Overrides::default()
            };
            let error = Config::load(&overrides, &no_env()).unwrap_err().to_string();
            assert!(
                error.contains("store.write_log_mib") && error.contains(says),
                "{error}"
            );
        }
    }

    #[test]
    fn a_budget_too_small_for_the_largest_body_and_a_zero_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pm.toml");
        for (text, names) in [
            (
                "[ingest]\nmax_inflight_bytes = 1048576\n",
                ["ingest.max_inflight_bytes", "ingest.max_body_bytes"],
            ),
            (
                "[limits]\ntasks_per_process = 0\n",
                ["limits.tasks_per_process", "at least 1"],
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let overrides = Overrides {
                config_file: Some(file.clone()),
                ..Overrides::default()
            };
            let error = Config::load(&overrides, &no_env()).unwrap_err().to_string();
            for name in names {
                assert!(error.contains(name), "{error}");
            }
        }
    }

    #[test]
    fn anonymous_service_off_loopback_is_refused_unless_allowed() {
        let overrides = Overrides {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            config_file: Some(PathBuf::from("/dev/null")),
            ..Overrides::default()
        };
        let config = Config::load(&overrides, &no_env()).unwrap();
        let error = config.check_anonymous_serving().unwrap_err().to_string();
        assert!(error.contains("allow_anonymous"), "{error}");
        let allowed = FakeEnvironment(HashMap::from([("PM_AUTH_ALLOW_ANONYMOUS", "true")]));
        let config = Config::load(&overrides, &allowed).unwrap();
        assert!(config.check_anonymous_serving().is_ok());
        let with_tokens = FakeEnvironment(HashMap::from([("PM_AUTH_ADMIN_TOKENS", "secret")]));
        let config = Config::load(&overrides, &with_tokens).unwrap();
        assert!(config.check_anonymous_serving().is_ok());
    }
}
