//! The command line. The `///` comments here are the `--help` text.

use crate::config::{LogFormat, Overrides};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// ProcessManager: the durable source of truth for the state of long-running
/// processes and their tasks, fed by orchestrator webhooks.
///
/// Settings come from flags, then environment variables, then the config
/// file, then built-in defaults.
#[derive(Debug, Parser)]
#[command(name = "processmanager", version, propagate_version = true)]
pub struct Cli {
    /// Config file [default: config/processmanager.toml when present]
    #[arg(long, global = true, env = "PM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `processmanager=debug` [default: info]
    #[arg(long, global = true, env = "PM_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format [default: auto: JSON unless standard output is a terminal]
    #[arg(long, global = true, env = "PM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: accept webhooks on POST /v1/events and answer queries.
    ///
    /// Creates the data directory and store when missing. Logs `listening on
    /// ADDR` once it accepts connections; /livez answers from then on, and
    /// /readyz once the store is open. If another process holds the store
    /// (the daemon this one replaces), it waits for it, ready when it is
    /// free. SIGTERM or SIGINT: /readyz turns
    /// 503, new connections are refused, requests in flight finish, every
    /// queued event is committed, and it exits 0 within 10 seconds. A second
    /// signal exits at once.
    Serve(ServeArgs),
    /// Write a consistent snapshot of the store to FILE.
    ///
    /// From a running daemon over its admin API (--url), or straight from a
    /// data directory, also while a daemon runs on it. The snapshot is the
    /// store as of one commit. It is written to a temporary file, synced,
    /// then renamed, so FILE is never half-written. The backup is itself a
    /// store: `restore` installs it, `inspect --file` reads it.
    Backup(BackupArgs),
    /// Install a backup FILE as the store of a data directory.
    ///
    /// Checks FILE first (page checksums, schema version, every record and
    /// index), and refuses a damaged file without touching anything. Refuses
    /// while a daemon holds DIR, and refuses to replace an existing store
    /// unless --force.
    Restore(RestoreArgs),
    /// Shrink the store file, optionally purging old finished processes first.
    ///
    /// Offline: refuses while a daemon holds DIR. With
    /// --purge-finished-before, first deletes finished processes (with their
    /// tasks, history, indexes and idempotency keys) that finished before
    /// then. Prints the file size before and after.
    Compact(CompactArgs),
    /// Read a store, a live daemon's included, or a backup file, without changing it.
    ///
    /// Without WHAT: a summary. `process ID`: one process with tasks,
    /// attempts and full history. `list`: processes, newest first. `verify`:
    /// a full integrity check, exit status 1 when the store is not sound.
    Inspect(InspectArgs),
    /// Keep PostgreSQL tables in step with a daemon, by its change feed.
    ///
    /// Follows the daemon's /v1/changes and writes its processes, tasks and
    /// events into pm_processes, pm_tasks and pm_events (created when
    /// missing), under --source, so that many daemons share one database.
    /// Each page of the feed and the new offset (pm_mirror_offsets) go in one
    /// transaction: a mirror killed at any moment and started again ends as
    /// one that never stopped. Removed processes are removed. While the
    /// daemon or the database is away it waits and retries with backoff.
    /// SIGTERM or SIGINT: exits 0.
    Mirror(MirrorArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "PM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// A second address serving only /livez, /readyz and /metrics, without
    /// tokens: for the kubelet's probes and Prometheus in a pod, while the
    /// API stays on loopback, e.g. 0.0.0.0:8081 [default: none]
    #[arg(long, env = "PM_PROBE_LISTEN", value_name = "ADDR")]
    pub probe_listen: Option<SocketAddr>,

    /// Directory of the store file processmanager.redb [default: ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Base URL of a running daemon, e.g. http://127.0.0.1:8080
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    pub url: Option<String>,

    /// Admin token for --url when the daemon has tokens configured
    #[arg(
        long,
        env = "PM_ADMIN_TOKEN",
        value_name = "T",
        requires = "url",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Data directory to back up [default: the configured one, ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Replace FILE if it exists
    #[arg(long)]
    pub force: bool,

    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Print no progress, only the result (progress goes to stderr: a bar
    /// on a terminal, a log line every few seconds otherwise)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to install
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,

    /// Data directory to install it in (created when missing)
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Replace the store already in DIR
    #[arg(long)]
    pub force: bool,

    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Print no progress, only the result (progress goes to stderr: a bar
    /// on a terminal, a log line every few seconds otherwise)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The PostgreSQL database, e.g. postgres://pm@db:5432/platform?sslmode=require
    #[arg(long, env = "PM_MIRROR_TO", value_name = "URL", hide_env_values = true)]
    pub to: String,

    /// Base URL of the daemon [default: the address in DIR/processmanager.url]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Read token for the daemon when it has tokens configured
    #[arg(long, env = "PM_READ_TOKEN", value_name = "T", hide_env_values = true)]
    pub token: Option<String>,

    /// Data directory of the daemon to follow when --url is not given [default: the configured one, ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The name of this daemon's rows [default: the id of the daemon's store, as /v1/stats shows it]
    #[arg(long, env = "PM_MIRROR_SOURCE", value_name = "NAME")]
    pub source: Option<String>,

    /// First bring the tables of this source to the daemon's current state
    /// (a page of processes per transaction), then follow the feed from
    /// there: after a store was replaced or restored, or the feed no longer
    /// holds the next items (410)
    #[arg(long, conflicts_with = "status")]
    pub reseed: bool,

    /// No progress on stderr during --reseed
    #[arg(long, short)]
    pub quiet: bool,

    /// Apply what the feed holds now, then exit 0
    #[arg(long, conflicts_with = "status")]
    pub once: bool,

    /// Print the source, the last seq applied and the lag, then exit
    #[arg(long)]
    pub status: bool,

    /// With --status: one JSON object
    #[arg(long, requires = "status")]
    pub json: bool,

    /// Feed items per PostgreSQL transaction
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Data directory whose store to compact [default: the configured one, ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// First delete processes that finished before this: an age such as
    /// `30d`, `12h` or `1w 2d`, or an RFC 3339 time
    #[arg(long, value_name = "AGE|TIME")]
    pub purge_finished_before: Option<String>,

    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Print no progress, only the result (progress goes to stderr: a bar
    /// on a terminal, a log line every few seconds otherwise)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Data directory to read, also a live daemon's [default: the configured one, ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR", conflicts_with = "file")]
    pub data_dir: Option<PathBuf>,

    /// A backup file to read instead of a data directory
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Print JSON with the API's field names instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    /// Print no progress of `verify`, only the result
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub what: Option<InspectWhat>,
}

#[derive(Debug, Subcommand)]
pub enum InspectWhat {
    /// One process with its tasks, attempts and full history
    Process {
        /// The process id
        id: String,
    },
    /// Processes, newest created first
    List {
        /// Only these statuses (comma separated, or repeat the flag)
        #[arg(long, value_delimiter = ',', value_name = "S")]
        status: Vec<String>,

        /// Only this process type
        #[arg(long = "type", value_name = "T")]
        process_type: Option<String>,

        /// Only correlation ids starting with this
        #[arg(long, value_name = "PREFIX")]
        correlation_prefix: Option<String>,

        /// Only processes with this attribute (repeat for several); the key
        /// must be one the store indexes (index.attributes)
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,

        /// Only processes stalled now
        #[arg(long)]
        stalled: bool,

        /// How many at most
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
    },
    /// How long processes took: counts by status and duration percentiles
    /// per process type, for those that ended in a window
    Durations {
        /// Only this process type
        #[arg(long = "type", value_name = "T")]
        process_type: Option<String>,

        /// Window start: an age such as 24h or 7d, or an RFC 3339 time
        #[arg(long, default_value = "24h", value_name = "AGE|TIME")]
        since: String,

        /// Window end: an age or a time [default: now]
        #[arg(long, value_name = "AGE|TIME")]
        until: Option<String>,
    },
    /// Full integrity check; exit status 0 when sound, 1 when not
    Verify,
}

/// `KEY=VALUE`, for `inspect list --attr`.
fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

impl Cli {
    /// The settings given on the command line or in the environment.
    pub fn overrides(&self) -> Overrides {
        let mut overrides = Overrides {
            config_file: self.config.clone(),
            log_filter: self.log.clone(),
            log_format: self.log_format,
            ..Overrides::default()
        };
        match &self.command {
            Command::Serve(args) => {
                overrides.listen = args.listen;
                overrides.probe_listen = args.probe_listen;
                overrides.data_dir = args.data_dir.clone();
            }
            Command::Backup(args) => overrides.data_dir = args.data_dir.clone(),
            Command::Restore(args) => overrides.data_dir = Some(args.data_dir.clone()),
            Command::Compact(args) => overrides.data_dir = args.data_dir.clone(),
            Command::Inspect(args) => overrides.data_dir = args.data_dir.clone(),
            Command::Mirror(args) => overrides.data_dir = args.data_dir.clone(),
        }
        overrides
    }
}
