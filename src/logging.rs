//! Structured logs with tracing: JSON for machines unless the log goes to
//! a terminal. The daemon logs to standard output; admin commands log to
//! standard error, keeping standard output for what they print.

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Where the log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
}

pub fn init(config: &LogConfig, destination: Destination) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|error| {
        anyhow::anyhow!("the log filter `{}` is not valid: {error}", config.filter)
    })?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => match destination {
            Destination::Stdout => !std::io::stdout().is_terminal(),
            Destination::Stderr => !std::io::stderr().is_terminal(),
        },
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (json, destination) {
        (true, Destination::Stdout) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .try_init(),
        (true, Destination::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (false, Destination::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (false, Destination::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|error| anyhow::anyhow!("cannot start logging: {error}"))
}
