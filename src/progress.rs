//! How far long admin work has got: a bar on a terminal (indicatif), a
//! log line every few seconds otherwise (in the log format in force, no
//! control characters), nothing with `--quiet`. The work counts what it
//! counts (bytes, records, groups); the result line and the exit status
//! are the command's own, untouched by this.
//!
//! Also the one place that hears Ctrl-C (SIGINT) and SIGTERM during such
//! work: `interrupted` tells a long loop to stop, so that it leaves
//! nothing half-written and says so.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How often a log line says how far the work has got, when stderr is
/// not a terminal: every 2 s, or as `PM_PROGRESS_EVERY_MS` says (a job
/// log that wants fewer lines, or a test that wants more).
fn log_every() -> Duration {
    static EVERY: OnceLock<Duration> = OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("PM_PROGRESS_EVERY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(2), Duration::from_millis)
    })
}

/// What the work counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Records,
    Groups,
    Passes,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Records => "records",
            Unit::Groups => "groups",
            Unit::Passes => "passes",
        }
    }
}

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// A bar on stderr, a terminal.
    Bar,
    /// Log lines every few seconds (`log_every`).
    Log,
    /// Nothing (`--quiet`, or work nobody watches).
    Quiet,
}

impl Show {
    /// A bar when stderr is a terminal, log lines when not, nothing when
    /// `quiet`.
    pub fn for_command(quiet: bool) -> Show {
        if quiet {
            Show::Quiet
        } else if std::io::stderr().is_terminal() {
            Show::Bar
        } else {
            Show::Log
        }
    }
}

/// One stretch of work and how far it has got. Cheap to share between
/// threads; `finish` (or dropping it) ends its bar.
pub struct Progress {
    what: &'static str,
    unit: Unit,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    show: Show,
    bar: Option<ProgressBar>,
    last_log: Mutex<Instant>,
    /// Whether a progress line went out: work that ends before the first
    /// says nothing at all, so a quick command's stderr stays its result
    /// or its one-sentence error.
    logged: AtomicBool,
}

impl Progress {
    /// Work called `what`, of `total` units (0 when unknown), shown as
    /// `show` says.
    pub fn new(what: &'static str, unit: Unit, total: u64, show: Show) -> Progress {
        let bar = (show == Show::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(
                (total > 0).then_some(total),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(style(unit, total > 0));
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            unit,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            show,
            bar,
            last_log: Mutex::new(Instant::now()),
            logged: AtomicBool::new(false),
        }
    }

    /// Work nobody watches.
    pub fn hidden() -> Progress {
        Progress::new("", Unit::Records, 0, Show::Quiet)
    }

    /// The total, once known.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_style(style(self.unit, total > 0));
        }
    }

    /// `n` more units done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
        if self.show == Show::Log {
            let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() >= log_every() {
                *last = Instant::now();
                drop(last);
                self.logged.store(true, Ordering::Relaxed);
                self.log(done, "progress");
            }
        }
    }

    fn log(&self, done: u64, message: &'static str) {
        let total = self.total.load(Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        };
        let left_seconds = (total > done && rate > 0.0).then(|| (total - done) as f64 / rate);
        tracing::info!(
            work = self.what,
            unit = self.unit.name(),
            done,
            total = (total > 0).then_some(total),
            per_second = rate.round(),
            seconds = (seconds * 10.0).round() / 10.0,
            seconds_left = left_seconds.map(|left| left.round()),
            "{message}"
        );
    }

    /// Runs `wait`, work that counts nothing as it goes (a check redb makes
    /// on open, a compaction pass, a daemon taking its snapshot), still
    /// showing that it goes on: the bar's spinner turns, and a log line
    /// comes every few seconds (`log_every`).
    pub fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        if self.show != Show::Log {
            return wait();
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    self.add(0);
                }
            });
            let out = wait();
            done.store(true, Ordering::Relaxed);
            out
        })
    }

    /// The work is done: the bar ends full, and a log line says so when
    /// one said how far it had got.
    pub fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            if self.total.load(Ordering::Relaxed) > 0 {
                bar.set_position(self.total.load(Ordering::Relaxed).max(done));
            }
            bar.finish();
            // indicatif leaves the cursor at the end of the finished bar:
            // the command's result starts on a line of its own.
            eprintln!();
        }
        if self.show == Show::Log && self.logged.load(Ordering::Relaxed) {
            self.log(done, "done");
        }
    }

    /// The work stopped short (an error, or Ctrl-C): the bar goes.
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// A bar with what is done of what there is, the rate and the time left;
/// a spinner with what is done and the rate while the total is unknown.
fn style(unit: Unit, known_total: bool) -> ProgressStyle {
    let template = match (unit, known_total) {
        (Unit::Bytes, true) => {
            "{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left"
        }
        (Unit::Bytes, false) => "{msg} {spinner} {bytes} {binary_bytes_per_sec}",
        (_, true) => "{msg} [{bar:30}] {percent:>3}% {human_pos}/{human_len} {unit} {rate}, {eta} left",
        (_, false) => "{msg} {spinner} {human_pos} {unit} {rate}",
    }
    .replace("{unit}", unit.name());
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Set by the first SIGINT or SIGTERM once `watch_interrupts` ran.
fn interrupt_flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// From now on, Ctrl-C (and SIGTERM) ask the work in hand to stop
/// (`interrupted`) instead of killing the process: a second one kills it.
pub fn watch_interrupts() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        // The second of a signal ends the process at once, as without this.
        let _ =
            signal_hook::flag::register_conditional_shutdown(signal, 130, interrupt_flag().clone());
        let _ = signal_hook::flag::register(signal, interrupt_flag().clone());
    }
}

/// Whether the work in hand was asked to stop.
pub fn interrupted() -> bool {
    interrupt_flag().load(Ordering::Relaxed)
}

/// The error a long loop returns when asked to stop.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `Err(Interrupted)` once the work was asked to stop.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
