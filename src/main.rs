use clap::Parser;
use processmanager::cli::{Cli, Command};
use processmanager::commands;
use processmanager::config::{Config, ProcessEnvironment};
use processmanager::logging::{self, Destination};
use std::process::ExitCode;

/// Store reads and list pages allocate a buffer per page and per record;
/// mimalloc serves them faster than the system allocator (lists of 50 on the
/// 1M-process store: about 12.9k req/s against 8.6k, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A bug must still end in one sentence, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(%info, "panic");
        eprintln!("error: internal error ({info}); please report it");
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // Stopped by Ctrl-C (or SIGTERM): the status a shell gives a
            // command killed by SIGINT.
            let interrupted = error.chain().any(|cause| {
                cause.is::<processmanager::progress::Interrupted>()
                    || matches!(
                        cause.downcast_ref::<processmanager::store::StoreError>(),
                        Some(processmanager::store::StoreError::Interrupted)
                    )
            });
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.overrides(), &ProcessEnvironment)?;
    let destination = match cli.command {
        Command::Serve(_) => Destination::Stdout,
        _ => Destination::Stderr,
    };
    logging::init(&config.log, destination)?;
    let data_dir = config.data_dir.clone();
    // For `inspect` and `backup --data-dir` on a live daemon's store, which
    // they read through the daemon: PM_ADMIN_TOKEN (as `backup --url`
    // takes), else the configuration's first admin token.
    let admin_token = std::env::var("PM_ADMIN_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
        .or_else(|| config.auth.admin_tokens.first().cloned());
    let admin_token = admin_token.as_deref();
    match &cli.command {
        Command::Serve(_) => commands::serve::run(config),
        Command::Backup(args) => commands::backup::run(args, &data_dir, admin_token),
        Command::Restore(args) => commands::restore::run(args),
        Command::Compact(args) => commands::compact::run(args, &data_dir),
        Command::Inspect(args) => commands::inspect::run(args, &data_dir, admin_token),
        Command::Mirror(args) => commands::mirror::run(args, &data_dir),
    }
}
