//! The API document proven by a real client: Schemathesis runs every
//! check and every phase (stateful included) against a live daemon, once
//! anonymous and once with tokens, and any failure fails the test.
//!
//! Schemathesis comes from PyPI, in the virtualenv that `.ci/test`
//! makes in `target/ci-venv` (or from PATH). `PM_SCHEMATHESIS_EXAMPLES` raises the cases
//! per operation (100 here); `PM_SCHEMATHESIS_SEED` replays a run.

use crate::support::{Daemon, DaemonOptions};
use std::path::Path;
use std::process::Command;

fn run_schemathesis(daemon: &Daemon, token: Option<&str>) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let examples = std::env::var("PM_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());
    // The virtualenv `.ci/test` makes, else whatever PATH finds.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/schemathesis");
    let mut command = Command::new(if venv.exists() {
        venv.into_os_string()
    } else {
        "schemathesis".into()
    });
    command
        .current_dir(&here)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &here)
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", daemon.addr))
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples])
        // One worker: hypothesis's lambda descriptions parse source with
        // `ast` and, on CPython 3.11, fail now and then across threads.
        .args(["--workers", "1"])
        // Generating cases while the rest of the suite loads both cores
        // can trip Hypothesis's "too slow" health check, which judges the
        // generator, not the API.
        .args(["--suppress-health-check", "too_slow"])
        .arg("--no-color");
    if let Ok(seed) = std::env::var("PM_SCHEMATHESIS_SEED") {
        command.args(["--seed", &seed]);
    }
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().unwrap_or_else(|error| {
        panic!("schemathesis runs ({error}); `.ci/test` installs it into target/ci-venv")
    });
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Schemathesis found failures:\n{said}\n{}\nthe daemon said:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.output()
    );
    // It tested every operation of the document, in every phase.
    let count = |label: &str| -> String {
        said.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no `{label}` line:\n{said}"))
            .trim()
            .to_owned()
    };
    let tested = count("Tested:");
    assert_eq!(count("Selected:"), format!("{tested}/{tested}"), "{said}");
    assert!(tested.parse::<u32>().unwrap() >= 20, "{said}");
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(
            said.contains(&format!("✅ {phase}")),
            "{phase} ran:\n{said}"
        );
    }
}

#[test]
fn schemathesis_finds_nothing_anonymous() {
    // With indexed attributes, so that the `attr.KEY` filters the served
    // document declares are generated too.
    let daemon =
        Daemon::start_with(DaemonOptions::default().env("PM_INDEX_ATTRIBUTES", "tenant,region"));
    run_schemathesis(&daemon, None);
}

#[test]
fn schemathesis_finds_nothing_with_tokens() {
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_ADMIN_TOKENS", "admin-token")
            .env("PM_AUTH_READ_TOKENS", "read-token"),
    );
    run_schemathesis(&daemon, Some("admin-token"));
}

#[test]
fn the_served_document_is_docs_openapi_yaml() {
    let daemon = Daemon::start();
    let served = daemon.client().get("/v1/openapi.json");
    assert_eq!(served.status, 200);
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"))
            .unwrap();
    let source: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(served.json, source);
}

#[test]
fn the_served_document_declares_the_attribute_filters_of_this_daemon() {
    let daemon =
        Daemon::start_with(DaemonOptions::default().env("PM_INDEX_ATTRIBUTES", "tenant,region"));
    let served = daemon.client().get("/v1/openapi.json");
    assert_eq!(served.status, 200);
    let names: Vec<&str> = served.json["paths"]["/v1/processes"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|parameter| parameter["name"].as_str())
        .filter(|name| name.starts_with("attr."))
        .collect();
    assert_eq!(names, ["attr.tenant", "attr.region"]);
    // And what it declares, it answers.
    let listed = daemon
        .client()
        .get("/v1/processes?attr.tenant=acme&attr.region=eu");
    assert_eq!(listed.status, 200, "{}", listed.text);
}
