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
    /// ADDR` once it accepts connections. SIGTERM or SIGINT: /readyz turns
    /// 503, new connections are refused, requests in flight finish, every
    /// queued event is committed, and it exits 0 within 10 seconds. A second
    /// signal exits at once.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "PM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory of the store file processmanager.redb [default: ./data]
    #[arg(long, env = "PM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
                overrides.data_dir = args.data_dir.clone();
            }
        }
        overrides
    }
}
