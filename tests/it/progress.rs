//! Long admin work shows how far it has got: a bar on a terminal, log
//! lines with growing counts when piped (no control characters), nothing
//! with `--quiet`; Ctrl-C leaves nothing half-written and says so.

use crate::support::{command, BIN};
use processmanager::domain::{EventInput, IncomingEvent};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

/// A store of `processes` finished processes of three events each, in a
/// data directory of its own (made through the library, as a daemon
/// would have).
fn store_of(processes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = processmanager::store::open_writable(
        &processmanager::store::store_path(dir.path()),
        64 << 20,
    )
    .unwrap();
    let mut p = 0;
    while p < processes {
        processmanager::store::write::offline(&db, |batch| {
            for _ in 0..10_000 {
                if p == processes {
                    break;
                }
                for kind in ["process.started", "task.succeeded", "process.succeeded"] {
                    let event: EventInput = serde_json::from_value(serde_json::json!({
                        "type": kind, "process_id": format!("done-{p}"),
                        "task_id": (kind == "task.succeeded").then_some("t"),
                        "event_id": format!("done-{p}-{kind}"),
                        "occurred_at": "2026-01-01T00:00:00Z",
                        "attributes": {"padding": "x".repeat(200)},
                    }))
                    .unwrap();
                    let event = event.validate(None).unwrap();
                    batch.apply(
                        &IncomingEvent::new(event, 1_767_225_600_000),
                        1_767_225_600_000,
                    )?;
                }
                p += 1;
            }
            Ok(())
        })
        .unwrap();
    }
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The JSON log lines of `stderr` that report progress, as (timestamp,
/// work, message, done).
fn progress_lines(stderr: &str) -> Vec<(String, String, String, u64)> {
    let stamps = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| line["timestamp"].as_str().unwrap_or_default().to_owned());
    stamps
        .zip(crate::support::log_fields(stderr))
        .filter(|(_, fields)| fields["work"].is_string())
        .map(|(stamp, fields)| {
            (
                stamp,
                fields["work"].as_str().unwrap_or_default().to_owned(),
                fields["message"].as_str().unwrap_or_default().to_owned(),
                fields["done"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn run_piped(args: &[&str], every_ms: &str) -> Output {
    command()
        .args(args)
        .env("PM_PROGRESS_EVERY_MS", every_ms)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

#[test]
fn piped_every_long_command_logs_growing_counts_without_control_characters() {
    let dir = store_of(30_000);
    let data_dir = path(dir.path());
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b.redb");
    let restored = tempfile::tempdir().unwrap();
    let commands: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backup", "--data-dir", data_dir, "--out", path(&backup)],
            "backup: copying records",
        ),
        (
            vec![
                "restore",
                "--from",
                path(&backup),
                "--data-dir",
                path(restored.path()),
            ],
            "restore: verifying records",
        ),
        (
            vec!["inspect", "--data-dir", data_dir, "verify"],
            "verifying records",
        ),
        (
            vec![
                "compact",
                "--data-dir",
                data_dir,
                "--purge-finished-before",
                "2026-06-01T00:00:00Z",
            ],
            "compact: purging processes",
        ),
    ];
    for (args, work) in commands {
        let output = run_piped(&args, "20");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "{args:?}: control characters in {stderr}"
        );
        let lines: Vec<_> = progress_lines(&stderr)
            .into_iter()
            .filter(|(_, what, _, _)| what == work)
            .collect();
        let progress: Vec<u64> = lines
            .iter()
            .filter(|(_, _, message, _)| message == "progress")
            .map(|(_, _, _, done)| *done)
            .collect();
        assert!(
            progress.len() >= 2,
            "{args:?}: no running count of `{work}` in {stderr}"
        );
        assert!(
            progress.windows(2).all(|pair| pair[0] <= pair[1])
                && progress[0] < *progress.last().unwrap(),
            "{args:?}: counts do not grow: {progress:?}"
        );
        let last = lines.last().unwrap();
        assert_eq!(last.2, "done", "{args:?}: {stderr}");
        // The result is on stdout as it was.
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
}

/// With the default pace, the log never goes quiet for more than 5 s while
/// the work runs: from the start to the first line, between lines, and from
/// the last line to the end. `inspect verify`, the slowest of the commands
/// per process, on a store that takes it several seconds on this machine.
#[test]
fn with_the_default_pace_a_progress_line_comes_at_least_every_five_seconds() {
    let dir = store_of(250_000);
    let started = time::OffsetDateTime::now_utc();
    let output = command()
        .args(["inspect", "--data-dir", path(dir.path()), "verify"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let ended = time::OffsetDateTime::now_utc();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let lines = progress_lines(&stderr);
    let mut stamps = vec![started];
    stamps.extend(lines.iter().map(|(stamp, _, _, _)| {
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).unwrap()
    }));
    stamps.push(ended);
    // The default pace is a line every 2 s: work that took longer said so.
    assert!(
        ended - started < time::Duration::milliseconds(2_500) || !lines.is_empty(),
        "{} without a progress line: {stderr}",
        ended - started
    );
    for pair in stamps.windows(2) {
        assert!(
            pair[1] - pair[0] <= time::Duration::seconds(5),
            "{} without a line: {stderr}",
            pair[1] - pair[0]
        );
    }
    println!(
        "inspect verify of 250,000 processes took {}, {} progress lines",
        ended - started,
        lines.len()
    );
}

#[test]
fn on_a_terminal_the_bar_shows_and_ends_at_100_percent() {
    let dir = store_of(5_000);
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b.redb");
    // `script` gives the command a pseudo-terminal, as a person's shell does.
    let line = format!(
        "{BIN} backup --data-dir {} --out {}",
        path(dir.path()),
        path(&backup)
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    let screen = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{screen}");
    assert!(screen.contains("backup: copying records"), "{screen}");
    assert!(screen.contains("100%"), "{screen}");
    assert!(backup.exists());
}

#[test]
fn quiet_prints_only_the_result() {
    let dir = store_of(2_000);
    let out = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "backup".to_owned(),
            "--quiet".into(),
            "--data-dir".into(),
            path(dir.path()).into(),
            "--out".into(),
            path(&out.path().join("b.redb")).into(),
            "--json".into(),
        ],
        vec![
            "inspect".into(),
            "--data-dir".into(),
            path(dir.path()).into(),
            "--quiet".into(),
            "--json".into(),
            "verify".into(),
        ],
    ] {
        let output = run_piped(&args.iter().map(String::as_str).collect::<Vec<_>>(), "1");
        assert_eq!(output.status.code(), Some(0));
        assert!(
            output.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Value = serde_json::from_slice(&output.stdout).expect("the result as JSON");
        assert!(result.is_object());
    }
}

/// Ctrl-C in the middle of a backup: exit 130, a sentence that says so,
/// and no backup and no temporary file left.
#[test]
fn ctrl_c_during_a_backup_leaves_nothing_and_says_so() {
    let dir = store_of(60_000);
    let out = tempfile::tempdir().unwrap();
    let backup: PathBuf = out.path().join("b.redb");
    // Once it reports progress, it is copying.
    let (status, said) = interrupted_once_progressing(
        &[
            "backup",
            "--data-dir",
            path(dir.path()),
            "--out",
            path(&backup),
        ],
        "\"progress\"",
    );
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("interrupted: no backup was written"),
        "{said}"
    );
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Runs the binary with `args`, sends it SIGINT (as Ctrl-C does) once a
/// progress line holding `marker` shows it is at the work, and returns how
/// it exited and all it wrote to stderr.
fn interrupted_once_progressing(args: &[&str], marker: &str) -> (ExitStatus, String) {
    let mut child = command()
        .args(args)
        .env("PM_PROGRESS_EVERY_MS", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "{args:?} ended before reporting progress: {seen}");
        seen += &line;
        if line.contains("\"progress\"") && line.contains(marker) {
            break;
        }
    }
    unsafe_free_interrupt(child.id());
    let status = crate::support::wait_exit(&mut child, Duration::from_secs(30)).expect("it stops");
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    (status, seen)
}

/// SIGINT to a child, as Ctrl-C sends it.
fn unsafe_free_interrupt(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An online backup counts the bytes the daemon sends against the
/// answer's length: growing counts, the last one the whole file.
#[test]
fn an_online_backup_reports_the_bytes_the_daemon_sends() {
    let dir = store_of(30_000);
    let daemon = crate::support::Daemon::start_in(dir.path());
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b.redb");
    let output = run_piped(
        &[
            "backup",
            "--url",
            &format!("http://{}", daemon.addr),
            "--out",
            path(&backup),
        ],
        "1",
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let received: Vec<(u64, Option<u64>)> = crate::support::log_fields(&stderr)
        .filter(|line| line["work"] == "backup: receiving")
        .map(|line| (line["done"].as_u64().unwrap(), line["total"].as_u64()))
        .collect();
    let size = std::fs::metadata(&backup).unwrap().len();
    assert!(received.len() >= 2, "{stderr}");
    assert!(
        received.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "{received:?}"
    );
    assert!(
        received.iter().all(|(_, total)| *total == Some(size)),
        "{received:?}"
    );
    assert_eq!(received.last().unwrap().0, size, "{received:?}");
}

/// Ctrl-C during a restore's check or a compaction's purge: exit 130, a
/// sentence that says so, and the data directory as it was (a restore
/// leaves no store; a purge stops between whole steps, and the store
/// verifies).
#[test]
fn ctrl_c_during_a_restore_or_a_compaction_leaves_nothing_half_written() {
    let dir = store_of(60_000);
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b.redb");
    let made = run_piped(
        &[
            "backup",
            "--quiet",
            "--data-dir",
            path(dir.path()),
            "--out",
            path(&backup),
        ],
        "1000",
    );
    assert_eq!(made.status.code(), Some(0));
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    for (args, says) in [
        (
            vec![
                "restore",
                "--from",
                path(&backup),
                "--data-dir",
                path(&target),
            ],
            "interrupted",
        ),
        (
            vec![
                "compact",
                "--data-dir",
                path(dir.path()),
                "--purge-finished-before",
                "2026-06-01T00:00:00Z",
            ],
            // While purging, or between compaction passes if the purge
            // was done: either way, whole.
            "interrupted",
        ),
    ] {
        // Once it reports progress on the records, it is at them.
        let (status, said) = interrupted_once_progressing(&args, "records");
        assert_eq!(status.code(), Some(130), "{args:?}: {said}");
        assert!(said.contains(says), "{args:?}: {said}");
    }
    assert!(
        !processmanager::store::store_path(&target).exists(),
        "an interrupted restore installed a store"
    );
    crate::support::assert_store_verifies(dir.path());
}
