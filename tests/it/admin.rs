//! The admin command line: backup, restore, compact, inspect.

use crate::support::{command, event, with, Client, Daemon, DaemonOptions};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_of(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", stdout(output)))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Keeps posting events for a small set of processes until stopped.
fn background_load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let client = Client::new(addr);
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = format!("load-{}", n % 40);
            let reply = if n % 7 == 0 {
                client.post(&json!({"type": "task.started", "process_id": id, "task_id": format!("t{}", n % 3)}))
            } else {
                client.post(&with(
                    event("process.progress", &id),
                    json!({"progress": {"current": n}}),
                ))
            };
            assert!(reply.status == 202 || reply.status == 200, "{}", reply.text);
        }
        n
    })
}

fn history(client: &Client, id: &str) -> Vec<Value> {
    client
        .get(&format!("/v1/processes/{id}/history?limit=1000"))
        .json["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Checks that `restored` holds exactly the source as of `last_seq`: the
/// same processes, each history the source's up to that seq, and the same
/// state for every process the source has not touched since.
fn assert_same_as_of(source: &Client, restored: &Client, last_seq: u64) {
    let all = source.get("/v1/processes?limit=1000").json["items"]
        .as_array()
        .unwrap()
        .clone();
    let mut expected_processes = 0;
    for process in all {
        let id = process["id"].as_str().unwrap();
        let full = history(source, id);
        let before: Vec<Value> = full
            .iter()
            .filter(|e| e["seq"].as_u64().unwrap() <= last_seq)
            .cloned()
            .collect();
        let got = restored.get(&format!("/v1/processes/{id}"));
        if before.is_empty() {
            assert_eq!(got.status, 404, "{id} was created after the backup");
            continue;
        }
        expected_processes += 1;
        assert_eq!(got.status, 200, "{id} is missing from the restore");
        assert_eq!(history(restored, id), before, "history of {id}");
        if process["last_seq"].as_u64().unwrap() <= last_seq {
            assert_eq!(
                got.json,
                source.get(&format!("/v1/processes/{id}")).json,
                "state of {id}"
            );
        }
    }
    assert_eq!(
        restored.get("/v1/stats").json["processes_total"],
        expected_processes
    );
    assert_eq!(restored.get("/v1/stats").json["last_seq"], last_seq);
}

#[test]
fn a_backup_taken_under_load_restores_to_the_store_as_of_its_last_seq() {
    let source = Daemon::start();
    let client = source.client();
    for i in 0..20 {
        client.post(&with(
            event("process.started", &format!("early-{i}")),
            json!({"process_type": "batch"}),
        ));
        client.post(&event("process.succeeded", &format!("early-{i}")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(source.addr, stop.clone());
    while client.get("/v1/stats").json["events_total"]
        .as_u64()
        .unwrap()
        < 200
    {
        std::thread::yield_now();
    }
    let work = tempfile::tempdir().unwrap();
    let over_api = work.path().join("api.redb");
    let from_dir = work.path().join("dir.redb");
    let api = json_of(&run(&[
        "backup",
        "--url",
        &format!("http://{}", source.addr),
        "--out",
        path(&over_api),
        "--json",
    ]));
    let dir = json_of(&run(&[
        "backup",
        "--data-dir",
        path(&source.data_dir),
        "--out",
        path(&from_dir),
        "--json",
    ]));
    stop.store(true, Ordering::SeqCst);
    assert!(load.join().unwrap() > 0);
    // Both were taken by the live daemon, and say so.
    let daemon_url = format!("daemon http://{}", source.addr);
    assert_eq!(api["source"], daemon_url.as_str());
    assert!(
        dir["source"].as_str().unwrap().starts_with(&daemon_url),
        "{dir}"
    );

    for (backup, summary) in [(&over_api, &api), (&from_dir, &dir)] {
        assert_eq!(
            summary["bytes"].as_u64(),
            Some(std::fs::metadata(backup).unwrap().len())
        );
        assert_eq!(summary["sha256"].as_str().unwrap().len(), 64);
        let last_seq = summary["last_seq"].as_u64().unwrap();
        assert!(last_seq >= 200);
        let target = tempfile::tempdir().unwrap();
        let restored = json_of(&run(&[
            "restore",
            "--from",
            path(backup),
            "--data-dir",
            path(target.path()),
            "--json",
        ]));
        assert_eq!(restored["last_seq"].as_u64(), Some(last_seq));
        let daemon = Daemon::start_in(target.path());
        assert_same_as_of(&client, &daemon.client(), last_seq);
        assert_eq!(
            summary["processes"],
            daemon.client().get("/v1/stats").json["processes_total"]
        );
    }
}

#[test]
fn backup_refuses_to_overwrite_without_force() {
    let daemon = Daemon::start();
    daemon.client().post(&event("process.started", "p"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.redb");
    std::fs::write(&out, b"precious").unwrap();
    let refused = run(&[
        "backup",
        "--data-dir",
        path(&daemon.data_dir),
        "--out",
        path(&out),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let forced = run(&[
        "backup",
        "--data-dir",
        path(&daemon.data_dir),
        "--out",
        path(&out),
        "--force",
    ]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    let text = stdout(&forced);
    for label in [
        "taken by",
        "path",
        "bytes",
        "processes",
        "events",
        "last seq",
        "sha256",
        "note",
    ] {
        assert!(text.contains(label), "{label} missing from:\n{text}");
    }
    // A live daemon held the store, so it took the backup; the note says
    // why two backups of one store can differ in size.
    assert!(text.contains("daemon http://"), "{text}");
    assert!(text.contains("two backups differ"), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left behind: {leftovers:?}"
    );
}

#[test]
fn backup_over_the_api_needs_an_admin_token() {
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_ADMIN_TOKENS", "admin-t")
            .env("PM_AUTH_READ_TOKENS", "read-t"),
    );
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.redb");
    let url = format!("http://{}", daemon.addr);
    let without = run(&["backup", "--url", &url, "--out", path(&out)]);
    assert_eq!(without.status.code(), Some(1));
    assert!(
        stderr(&without).contains("401") && stderr(&without).contains("--token"),
        "{}",
        stderr(&without)
    );
    let reader = run(&[
        "backup",
        "--url",
        &url,
        "--token",
        "read-t",
        "--out",
        path(&out),
    ]);
    assert!(stderr(&reader).contains("403"));
    assert!(!out.exists());
    let admin = command()
        .args(["backup", "--url", &url, "--out", path(&out)])
        .env("PM_ADMIN_TOKEN", "admin-t")
        .output()
        .unwrap();
    assert_eq!(admin.status.code(), Some(0), "{}", stderr(&admin));
    let raw = Client::new(daemon.addr)
        .with_token("admin-t")
        .get("/v1/admin/backup");
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(raw.header("x-backup-last-seq"), Some("0"));
    assert_eq!(raw.header("x-backup-processes"), Some("0"));
}

fn damaged_copy(of: &Path, into: &Path) {
    let mut bytes = std::fs::read(of).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xff);
    std::fs::write(into, bytes).unwrap();
}

#[test]
fn a_damaged_or_truncated_backup_is_refused_and_fails_verify() {
    let daemon = Daemon::start();
    for i in 0..50 {
        daemon
            .client()
            .post(&event("process.started", &format!("p{i}")));
    }
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.redb");
    assert!(run(&[
        "backup",
        "--data-dir",
        path(&daemon.data_dir),
        "--out",
        path(&good)
    ])
    .status
    .success());
    let verified = json_of(&run(&[
        "inspect",
        "--file",
        path(&good),
        "verify",
        "--json",
    ]));
    assert_eq!(
        (verified["sound"].as_bool(), verified["processes"].as_u64()),
        (Some(true), Some(50))
    );

    let damaged = work.path().join("damaged.redb");
    damaged_copy(&good, &damaged);
    let truncated = work.path().join("truncated.redb");
    std::fs::write(&truncated, &std::fs::read(&good).unwrap()[..5000]).unwrap();
    let not_a_store = work.path().join("notes.redb");
    std::fs::write(&not_a_store, b"just text").unwrap();
    for bad in [&damaged, &truncated, &not_a_store] {
        let target = tempfile::tempdir().unwrap();
        let restore = run(&[
            "restore",
            "--from",
            path(bad),
            "--data-dir",
            path(target.path()),
        ]);
        assert_eq!(restore.status.code(), Some(1), "{}", stderr(&restore));
        let message = stderr(&restore);
        assert_eq!(message.trim().lines().count(), 1, "one sentence: {message}");
        assert!(
            message.contains("nothing was changed") && !message.contains("panicked"),
            "{message}"
        );
        assert_eq!(
            std::fs::read_dir(target.path()).unwrap().count(),
            0,
            "the target is untouched"
        );
        let verify = run(&["inspect", "--file", path(bad), "verify"]);
        assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
        assert!(!stderr(&verify).contains("panicked"));
    }
    assert_eq!(
        std::fs::read(&damaged).unwrap().len(),
        std::fs::read(&good).unwrap().len(),
        "inspect left the file alone"
    );
}

#[test]
fn restore_refuses_a_live_directory_and_an_existing_store_without_force() {
    let daemon = Daemon::start();
    daemon.client().post(&event("process.started", "p"));
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("b.redb");
    assert!(run(&[
        "backup",
        "--data-dir",
        path(&daemon.data_dir),
        "--out",
        path(&backup)
    ])
    .status
    .success());
    let live = run(&[
        "restore",
        "--from",
        path(&backup),
        "--data-dir",
        path(&daemon.data_dir),
        "--force",
    ]);
    assert_eq!(live.status.code(), Some(1));
    assert!(
        stderr(&live).contains("daemon is running"),
        "{}",
        stderr(&live)
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    let existing = run(&[
        "restore",
        "--from",
        path(&backup),
        "--data-dir",
        path(&work.path().join("fresh")),
    ]);
    assert!(existing.status.success(), "{}", stderr(&existing));
    let again = run(&[
        "restore",
        "--from",
        path(&backup),
        "--data-dir",
        path(&work.path().join("fresh")),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"));
    let forced = run(&[
        "restore",
        "--from",
        path(&backup),
        "--data-dir",
        path(&work.path().join("fresh")),
        "--force",
    ]);
    assert!(forced.status.success(), "{}", stderr(&forced));
}

#[test]
fn compact_purges_exactly_the_finished_processes_older_than_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    let finish = |id: &str, kind: &str, at: &str| {
        client.post(&with(
            event("process.started", id),
            json!({"occurred_at": "2019-12-31T00:00:00Z", "event_id": format!("{id}-s")}),
        ));
        client.post(&json!({"type": "task.started", "process_id": id, "task_id": "t"}));
        client.post(&with(event(kind, id), json!({"occurred_at": at})));
    };
    finish("old-ok", "process.succeeded", "2020-01-01T00:00:00Z");
    finish("old-failed", "process.failed", "2020-06-01T00:00:00Z");
    finish("old-cancelled", "process.cancelled", "2020-12-31T23:59:59Z");
    finish("recent-ok", "process.succeeded", "2021-01-01T00:00:01Z");
    client.post(&with(
        event("process.started", "old-but-running"),
        json!({"occurred_at": "2019-01-01T00:00:00Z"}),
    ));
    client.post(&event("process.queued", "pending"));
    let refused = run(&[
        "compact",
        "--data-dir",
        path(dir.path()),
        "--purge-finished-before",
        "2021-01-01T00:00:00Z",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("stop the daemon"),
        "{}",
        stderr(&refused)
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let compacted = json_of(&run(&[
        "compact",
        "--data-dir",
        path(dir.path()),
        "--purge-finished-before",
        "2021-01-01T00:00:00Z",
        "--json",
    ]));
    assert_eq!(compacted["purged_processes"], 3);
    assert!(compacted["bytes_after"].as_u64() <= compacted["bytes_before"].as_u64());
    let verify = json_of(&run(&[
        "inspect",
        "--data-dir",
        path(dir.path()),
        "verify",
        "--json",
    ]));
    assert_eq!(verify["sound"], true, "{verify}");

    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    for gone in ["old-ok", "old-failed", "old-cancelled"] {
        assert_eq!(
            client.get(&format!("/v1/processes/{gone}")).status,
            404,
            "{gone}"
        );
    }
    for kept in ["recent-ok", "old-but-running", "pending"] {
        assert_eq!(
            client.get(&format!("/v1/processes/{kept}")).status,
            200,
            "{kept}"
        );
    }
    let stats = client.get("/v1/stats").json;
    assert_eq!(stats["processes_total"], 3);
    assert_eq!(stats["events_total"], 3 + 1 + 1);
    assert_eq!(
        client.get("/v1/processes?status=succeeded").json["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Their idempotency keys went with them.
    let resent = client.post(&with(
        event("process.started", "old-ok"),
        json!({"occurred_at": "2019-12-31T00:00:00Z", "event_id": "old-ok-s"}),
    ));
    assert_eq!(resent.status, 202);
}

#[test]
fn inspect_prints_tables_for_people_and_json_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    client.post(&with(
        event("process.started", "run-1"),
        json!({"process_type": "import", "event_id": "e1"}),
    ));
    client.post(&json!({"type": "task.started", "process_id": "run-1", "task_id": "copy"}));
    client.post(&json!({"type": "task.failed", "process_id": "run-1", "task_id": "copy", "error": {"code": "Timeout", "message": "slow"}}));
    client.post(&json!({"type": "task.started", "process_id": "run-1", "task_id": "copy"}));
    client.post(&event("process.queued", "run-2"));
    let data_dir = path(dir.path());

    // On the live daemon's directory, which it must leave as it is.
    let before = std::fs::read(dir.path().join("processmanager.redb")).unwrap();
    let summary = run(&["inspect", "--data-dir", data_dir]);
    let text = stdout(&summary);
    assert!(
        text.contains("schema version")
            && text.contains("last seq")
            && text.contains("oldest process  run-1"),
        "{text}"
    );
    let summary_json = json_of(&run(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(summary_json["processes_total"], 2);
    assert_eq!(summary_json["processes"]["running"], 1);
    assert_eq!(summary_json["newest"]["id"], "run-2");
    assert_eq!(summary_json["schema_version"], 6);

    let process_json = json_of(&run(&[
        "inspect",
        "--data-dir",
        data_dir,
        "--json",
        "process",
        "run-1",
    ]));
    let api = client.get("/v1/processes/run-1").json;
    let mut without_history = process_json.clone();
    without_history.as_object_mut().unwrap().remove("history");
    assert_eq!(without_history, api, "the same fields as the API");
    assert_eq!(process_json["history"].as_array().unwrap().len(), 4);
    assert_eq!(process_json["history"][0]["event_id"], "e1");
    let process_text = stdout(&run(&[
        "inspect",
        "--data-dir",
        data_dir,
        "process",
        "run-1",
    ]));
    assert!(
        process_text.contains("TASK")
            && process_text.contains("Timeout: slow")
            && process_text.contains("task.failed"),
        "{process_text}"
    );

    let list = stdout(&run(&[
        "inspect",
        "--data-dir",
        data_dir,
        "list",
        "--status",
        "pending",
    ]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("ID") && lines[1].starts_with("run-2"));
    let header_status = lines[0].find("STATUS").unwrap();
    assert_eq!(
        lines[1].find("pending"),
        Some(header_status),
        "columns are aligned"
    );
    let list_json = json_of(&run(&[
        "inspect",
        "--data-dir",
        data_dir,
        "list",
        "--type",
        "import",
        "--json",
    ]));
    assert_eq!(list_json["items"][0]["id"], "run-1");

    let verify = run(&["inspect", "--data-dir", data_dir, "verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("sound"));
    assert_eq!(
        std::fs::read(dir.path().join("processmanager.redb")).unwrap(),
        before,
        "inspect changed nothing"
    );

    let missing = run(&["inspect", "--data-dir", data_dir, "process", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no process nope"));
}

#[test]
fn every_subcommand_explains_itself_and_misuse_is_exit_2() {
    for (subcommand, expected) in [
        ("serve", "--listen"),
        ("backup", "--out"),
        ("restore", "--from"),
        ("compact", "--purge-finished-before"),
        ("inspect", "verify"),
    ] {
        let help = run(&[subcommand, "--help"]);
        assert_eq!(help.status.code(), Some(0));
        assert!(
            stdout(&help).contains(expected),
            "{subcommand} --help lacks {expected}"
        );
    }
    let usage = run(&["backup"]);
    assert_eq!(usage.status.code(), Some(2));
    let conflicting = run(&[
        "backup",
        "--out",
        "x",
        "--url",
        "http://a",
        "--data-dir",
        "d",
    ]);
    assert_eq!(conflicting.status.code(), Some(2));
    let missing_store = run(&["compact", "--data-dir", "/nonexistent/dir"]);
    assert_eq!(missing_store.status.code(), Some(1));
    assert!(
        stderr(&missing_store).starts_with("error: there is no store"),
        "{}",
        stderr(&missing_store)
    );
}

#[test]
fn after_kill_9_inspect_and_backup_ask_for_recovery_and_a_restart_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = path(dir.path());
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    for i in 0..20 {
        assert_eq!(
            client
                .post(&event("process.started", &format!("p{i}")))
                .status,
            202
        );
    }
    // Live, the daemon answers for its store.
    let live = json_of(&run(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(live["processes_total"], 20);

    daemon.kill9();
    // Down after a crash, the groups acknowledged since the last durable
    // commit are in the write log, not yet in the store file: the tools
    // say what to do instead of reading (or compacting) part of it.
    let out = dir.path().join("after-crash.redb");
    for args in [
        vec!["inspect", "--data-dir", data_dir],
        vec!["backup", "--data-dir", data_dir, "--out", path(&out)],
        vec!["compact", "--data-dir", data_dir],
    ] {
        let refused = run(&args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&refused).contains("was not stopped cleanly")
                && stderr(&refused).contains("start `processmanager serve` on it once"),
            "{}",
            stderr(&refused)
        );
    }
    assert!(!out.exists());

    let restarted = Daemon::start_in(dir.path());
    let (status, _, _) = restarted.terminate();
    assert!(status.success());
    let recovered = json_of(&run(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(recovered["processes_total"], 20);
    let verify = run(&["inspect", "--data-dir", data_dir, "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
}

#[test]
fn inspect_and_backup_read_a_live_store_through_its_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = path(dir.path());
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(dir.path())
            .env("PM_AUTH_ADMIN_TOKENS", "admin-t")
            .env("PM_AUTH_INGEST_TOKENS", "ingest-t"),
    );
    let client = daemon.client().with_token("ingest-t");
    assert_eq!(
        client.post(&event("process.started", "visible")).status,
        202
    );
    // The daemon holds its store alone; reading it goes through the daemon,
    // with the admin token the tools find in the configuration.
    let store = dir.path().join("processmanager.redb");
    assert!(matches!(
        processmanager::store::open_read_only(&store, 1 << 20),
        Err(processmanager::store::StoreError::Locked { .. })
    ));
    let as_admin = |args: &[&str]| {
        command()
            .args(args)
            .env("PM_AUTH_ADMIN_TOKENS", "admin-t")
            .output()
            .unwrap()
    };
    let live = json_of(&as_admin(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(live["processes_total"], 1);
    let out = dir.path().join("live.redb");
    let backup = as_admin(&["backup", "--data-dir", data_dir, "--out", path(&out)]);
    assert_eq!(backup.status.code(), Some(0), "{}", stderr(&backup));
    // Without the token the daemon refuses, and the tools say so.
    let refused = run(&["inspect", "--data-dir", data_dir]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    let with_variable = command()
        .args(["inspect", "--data-dir", data_dir, "--json"])
        .env("PM_ADMIN_TOKEN", "admin-t")
        .output()
        .unwrap();
    assert_eq!(json_of(&with_variable)["processes_total"], 1);
    // The daemon kept writing meanwhile.
    assert_eq!(client.post(&event("process.started", "more")).status, 202);
    let copy = json_of(&run(&["inspect", "--file", path(&out), "--json"]));
    assert_eq!(copy["processes_total"], 1);
    // Stopped, it leaves the store to the tools again, and no address.
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    assert!(!dir.path().join("processmanager.url").exists());
    let stopped = json_of(&run(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(stopped["processes_total"], 2);
}

#[test]
fn a_backup_of_a_stopped_daemons_store_says_it_read_the_store_file() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let daemon = Daemon::start_in(&data_dir);
    assert_eq!(
        daemon.client().post(&event("process.started", "p")).status,
        202
    );
    let (status, _, _) = daemon.terminate();
    assert!(status.success());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.redb");
    let written = json_of(&run(&[
        "backup",
        "--data-dir",
        path(&data_dir),
        "--out",
        path(&out),
        "--json",
    ]));
    assert_eq!(written["source"], "store file");
    assert_eq!(written["processes"], 1);
}

/// A store's id is made with it: the same after a restart, a backup
/// restored elsewhere and a compaction; a new store gets another.
#[test]
fn a_store_keeps_its_id_through_backup_restore_and_compact_and_a_new_one_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path());
    let client = daemon.client();
    assert_eq!(client.post(&event("process.started", "p")).status, 202);
    let id = client.get("/v1/stats").json["store_id"]
        .as_str()
        .expect("a store id")
        .to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok_and(|uuid| uuid.get_version_num() == 4),
        "{id}"
    );
    let backup = dir.path().join("backup.redb");
    let backed_up = run(&[
        "backup",
        "--url",
        &format!("http://{}", daemon.addr),
        "--out",
        path(&backup),
    ]);
    assert_eq!(backed_up.status.code(), Some(0), "{}", stderr(&backed_up));
    let (status, _, _) = daemon.terminate();
    assert!(status.success());

    let data_dir = path(dir.path());
    let shown = json_of(&run(&["inspect", "--data-dir", data_dir, "--json"]));
    assert_eq!(shown["store_id"], id.as_str());
    assert!(stdout(&run(&["inspect", "--data-dir", data_dir])).contains(&id));
    let compacted = run(&["compact", "--data-dir", data_dir]);
    assert_eq!(compacted.status.code(), Some(0), "{}", stderr(&compacted));
    let restarted = Daemon::start_in(dir.path());
    assert_eq!(
        restarted.client().get("/v1/stats").json["store_id"],
        id.as_str()
    );
    drop(restarted);

    let elsewhere = tempfile::tempdir().unwrap();
    let restored = run(&[
        "restore",
        "--from",
        path(&backup),
        "--data-dir",
        path(elsewhere.path()),
    ]);
    assert_eq!(restored.status.code(), Some(0), "{}", stderr(&restored));
    let from_backup = Daemon::start_in(elsewhere.path());
    assert_eq!(
        from_backup.client().get("/v1/stats").json["store_id"],
        id.as_str()
    );

    let fresh = Daemon::start();
    let other = fresh.client().get("/v1/stats").json["store_id"].clone();
    assert!(other.is_string() && other != id.as_str(), "{other}");
}
