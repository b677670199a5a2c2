//! Stores and write logs written by a released build open with this one,
//! as redb's `tests/backward_compatibility.rs` does for its file format.
//! Each release adds a directory under `tests/fixtures/`, made by its own
//! `generate.py`: the files a daemon of that release left when it was
//! killed with groups still pending in its logs, and what it answered
//! just before.

use crate::support::{assert_store_verifies, Daemon, DaemonOptions};
use serde_json::Value;
use std::path::Path;

/// A write log's records (each a 32-byte header: magic "PMG1", CRC-32 of
/// the rest, group number, the store file's inode, payload length; then
/// the payload) name the store file they belong to by its inode. A copy of
/// the fixture has another inode: write it into each record of the
/// fixture's store, with the checksum that goes with it. Returns how many
/// records it found.
fn move_log_to(log: &Path, from_inode: u64, to_inode: u64) -> usize {
    let mut bytes = std::fs::read(log).unwrap();
    let mut pos = 0;
    let mut records = 0;
    while pos + 32 <= bytes.len() && bytes[pos..pos + 4] == 0x504d_4731u32.to_le_bytes() {
        let len = u32::from_le_bytes(bytes[pos + 24..pos + 28].try_into().unwrap()) as usize;
        let end = pos + 32 + len;
        assert_eq!(
            u64::from_le_bytes(bytes[pos + 16..pos + 24].try_into().unwrap()),
            from_inode,
            "a record of another store file in {}",
            log.display()
        );
        bytes[pos + 16..pos + 24].copy_from_slice(&to_inode.to_le_bytes());
        let checksum = crc32fast::hash(&bytes[pos + 8..end]);
        bytes[pos + 4..pos + 8].copy_from_slice(&checksum.to_le_bytes());
        pos = end;
        records += 1;
    }
    std::fs::write(log, &bytes).unwrap();
    records
}

/// The store of `release` as its daemon left it, in a data directory of
/// `dir`; returns that directory and how many groups its logs hold.
fn copy_fixture(release: &str, dir: &Path) -> (std::path::PathBuf, usize) {
    use std::os::unix::fs::MetadataExt;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(release);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = data.join("processmanager.redb");
    std::fs::copy(fixture.join("processmanager.redb"), &store).unwrap();
    let recorded: u64 = std::fs::read_to_string(fixture.join("inode"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let inode = std::fs::metadata(&store).unwrap().ino();
    let mut pending = 0;
    for log in ["processmanager.redb.groups", "processmanager.redb.groups.2"] {
        std::fs::copy(fixture.join(log), data.join(log)).unwrap();
        pending += move_log_to(&data.join(log), recorded, inode);
    }
    assert!(
        pending > 0,
        "the fixture of {release} holds no logged groups: it tests only the store file"
    );
    (data, pending)
}

/// Release 0.2.0's store and write logs, killed with groups pending: the
/// daemon replays them and answers every query as 0.2.0 did before the
/// kill, byte for byte in JSON, and the store verifies afterwards.
#[test]
fn a_store_and_write_logs_of_release_0_2_0_open_and_answer_as_they_did() {
    let release = "0.2.0";
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(release);
    let dir = tempfile::tempdir().unwrap();
    let (data, pending) = copy_fixture(release, dir.path());
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .data_dir(&data)
            .env("PM_CONFIG", fixture.join("config.toml").to_str().unwrap())
            .env("PM_PROGRESS_EVERY_MS", "0"),
    );
    // The start said how far the replay had got, ending with every group
    // after the last apply step (some of the logs' records are before it).
    let counts = crate::support::progress_counts(&daemon.output(), "replaying the write logs");
    let total = daemon
        .output()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["work"] == "replaying the write logs" && line["message"] == "done")
        .and_then(|line| line["total"].as_u64())
        .unwrap_or_else(|| panic!("no end of the replay in the log: {}", daemon.output()));
    assert!(total > 0 && total <= pending as u64, "{total} of {pending}");
    assert_eq!(counts.last(), Some(&total), "{counts:?}");
    let client = daemon.client();
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    assert!(expected.len() > 50, "{} queries", expected.len());
    for case in &expected {
        let query = case["query"].as_str().unwrap();
        let reply = client.get(query);
        assert_eq!(
            reply.status,
            case["status"].as_u64().unwrap() as u16,
            "{query}: {}",
            reply.text
        );
        assert_eq!(reply.json, case["body"], "{query}");
    }
    let (status, _, output) = daemon.terminate();
    assert!(status.success(), "{output}");
    assert_store_verifies(&data);
}
