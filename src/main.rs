use clap::Parser;
use processmanager::cli::{Cli, Command};
use processmanager::config::{Config, ProcessEnvironment};
use processmanager::{commands, logging};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.overrides(), &ProcessEnvironment)?;
    logging::init(&config.log)?;
    match cli.command {
        Command::Serve(_) => commands::serve::run(config),
    }
}
