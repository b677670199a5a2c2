//! Operating the daemon: `/metrics` as Prometheus reads it, and the probe
//! listener a pod exposes to its kubelet.

use crate::support::{event, sample, with, Client, Daemon, DaemonOptions};
use serde_json::json;
use std::process::{Command, Stdio};

/// Prometheus's own linter on a live scrape: no error and no warning.
fn promtool_accepts(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; .ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool refused it: {said}");
    assert_eq!(said.trim(), "", "promtool warned");
}

#[test]
fn a_live_scrape_passes_promtool_and_counts_what_became_of_each_event() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let keyed = |kind: &str, id: &str| with(event(kind, "run-1"), json!({"event_id": id}));
    let started = with(
        keyed("process.started", "s"),
        json!({"process_type": "import", "occurred_at": "2026-11-27T10:00:00Z"}),
    );
    assert_eq!(client.post(&started).status, 202);
    assert_eq!(client.post(&started).json["result"], "duplicate");
    let succeeded = with(
        keyed("process.succeeded", "ok"),
        json!({"occurred_at": "2026-11-27T10:01:30Z"}),
    );
    assert_eq!(client.post(&succeeded).status, 202);
    assert_eq!(
        client.post(&keyed("process.progress", "late")).json["result"],
        "stale"
    );
    assert_eq!(client.post(&keyed("process.failed", "no")).status, 409);
    assert_eq!(client.post(&event("process.bogus", "run-1")).status, 422);
    let batch = client.post_raw(
        &json!([event("process.started", "run-2"), {"type": "process.started"}]).to_string(),
        &[],
    );
    assert_eq!(batch.json["rejected"], 1, "{}", batch.text);

    let scrape = client.get("/metrics");
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        scrape.headers
    );
    promtool_accepts(&scrape.text);
    let text = &scrape.text;
    for (labels, count) in [
        (r#"type="process.started",result="accepted""#, 2.0),
        (r#"type="process.started",result="duplicate""#, 1.0),
        (r#"type="process.succeeded",result="accepted""#, 1.0),
        (r#"type="process.progress",result="stale""#, 1.0),
        (r#"type="process.failed",result="conflict""#, 1.0),
        (r#"type="unknown",result="invalid""#, 2.0),
    ] {
        assert_eq!(
            sample(text, &format!("pm_events_total{{{labels}}}")),
            count,
            "{labels}"
        );
    }
    assert_eq!(
        sample(
            text,
            r#"pm_http_requests_total{route="/v1/events",code="202"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            text,
            r#"pm_http_requests_total{route="/v1/events",code="409"}"#
        ),
        1.0
    );
    // One run of 90 s finished: in the 64 s < d <= 256 s bucket.
    let finished = r#"process_type="import",status="succeeded""#;
    assert_eq!(
        sample(
            text,
            &format!("pm_process_duration_seconds_count{{{finished}}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            text,
            &format!("pm_process_duration_seconds_sum{{{finished}}}")
        ),
        90.0
    );
    assert_eq!(
        sample(
            text,
            &format!("pm_process_duration_seconds_bucket{{{finished},le=\"64\"}}")
        ),
        0.0
    );
    assert_eq!(
        sample(
            text,
            &format!("pm_process_duration_seconds_bucket{{{finished},le=\"256\"}}")
        ),
        1.0
    );
    // Every event applied went through a commit; duplicates, conflicts
    // and stale events are decided by the writer too.
    assert!(sample(text, "pm_commit_events_sum") >= 6.0, "{text}");
    assert!(sample(text, "pm_commit_duration_seconds_count") >= 5.0);
    assert_eq!(sample(text, r#"pm_processes{status="succeeded"}"#), 1.0);
    assert_eq!(sample(text, r#"pm_processes{status="running"}"#), 1.0);
    assert_eq!(sample(text, r#"pm_processes{status="failed"}"#), 0.0);
    assert!(sample(text, "pm_store_bytes") > 0.0);
    assert!(sample(text, "pm_disk_free_bytes") > 0.0);
    assert_eq!(sample(text, "pm_writer_queue_depth"), 0.0);
    assert_eq!(
        sample(
            text,
            &format!("pm_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    // No id ever becomes a label.
    assert!(!text.contains("run-1") && !text.contains("run-2"), "{text}");
}

#[test]
fn openmetrics_is_served_when_the_scraper_asks_for_it() {
    let daemon = Daemon::start();
    let reply = ureq::get(format!("http://{}/metrics", daemon.addr))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .call()
        .expect("an answer")
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(reply.ends_with("# EOF\n"), "{reply}");
    // OpenMetrics names a counter's family without its `_total`.
    assert!(
        reply.contains("# TYPE pm_http_requests counter\n"),
        "{reply}"
    );
    assert!(reply.contains("# UNIT pm_store_bytes bytes\n"), "{reply}");
}

#[test]
fn the_probe_listener_serves_probes_and_metrics_without_tokens_and_nothing_else() {
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_ADMIN_TOKENS", "admin-secret")
            .arg("--probe-listen")
            .arg("127.0.0.1:0"),
    );
    let probes = Client::new(daemon.probe_addr());
    assert_eq!(probes.get("/livez").status, 200);
    assert_eq!(probes.get("/readyz").status, 200);
    let scrape = probes.get("/metrics");
    assert_eq!(scrape.status, 200);
    promtool_accepts(&scrape.text);
    for path in ["/v1/stats", "/v1/processes", "/v1/admin/backup"] {
        let refused = probes.get(path);
        assert_eq!(refused.status, 404, "{path}: {}", refused.text);
    }
    // The main listener still asks for a token, for /metrics too.
    let api = daemon.client();
    assert_eq!(api.get("/metrics").status, 401);
    assert_eq!(api.with_token("admin-secret").get("/metrics").status, 200);
}

/// The backticked words of `text` from just after `anchor` to the first
/// `;` or `(` (or the end of the paragraph): a list the docs give of a
/// label's values, before any aside.
fn listed_after(text: &str, anchor: &str) -> Vec<String> {
    let at = text
        .find(anchor)
        .unwrap_or_else(|| panic!("the docs no longer say {anchor:?}"));
    let rest = &text[at + anchor.len()..];
    let clause = rest.split([';', '(']).next().unwrap();
    let clause = clause.split("\n\n").next().unwrap();
    clause
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every metric `docs/api.md` and the README's Metrics section name, and
/// every label value they list for an operator to alert on, exists in a
/// live `/metrics` after traffic that moves it: the docs cannot name a
/// series the daemon does not serve (as they once named
/// `pm_events_total{result="rejected"}`).
#[test]
fn every_metric_and_label_value_the_docs_name_is_served() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let api = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let metrics_section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Metrics section");
    let mut names = std::collections::BTreeSet::new();
    for text in [api.as_str(), metrics_section] {
        for word in text.split('`').skip(1).step_by(2) {
            if let Some(name) = word.strip_prefix("pm_") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                names.insert(format!("pm_{name}"));
            }
        }
    }
    let results = listed_after(&api, "`pm_events_total` results are");
    let alerted: Vec<String> = api
        .split("pm_events_total{result=~\"")
        .skip(1)
        .flat_map(|rest| rest.split('"').next().unwrap().split('|'))
        .map(str::to_owned)
        .collect();
    let reasons = listed_after(&api, "`pm_rejections_total{reason}` counts");
    assert!(names.len() >= 6, "{names:?}");
    assert!(results.len() >= 7, "{results:?}");
    assert!(!alerted.is_empty());
    assert!(reasons.len() >= 8, "{reasons:?}");

    // Traffic that moves each: every result an event can have, a run that
    // finishes, a wait and a stream.
    let (daemon, _config) = Daemon::with_config("[limits]\ntasks_per_process = 1\n");
    let client = daemon.client();
    let keyed = |kind: &str, id: &str| with(event(kind, "run-1"), json!({"event_id": id}));
    assert_eq!(client.post(&keyed("process.started", "s")).status, 202);
    assert_eq!(
        client.post(&keyed("process.started", "s")).json["result"],
        "duplicate"
    );
    let reused = with(
        keyed("process.progress", "s"),
        json!({"progress": {"percent": 5}}),
    );
    assert_eq!(client.post(&reused).json["code"], "idempotency_key_reused");
    let task = |id: &str| with(keyed("task.started", id), json!({"task_id": id}));
    assert_eq!(client.post(&task("t1")).status, 202);
    assert_eq!(client.post(&task("t2")).json["code"], "limit_exceeded");
    assert_eq!(client.post(&keyed("process.succeeded", "ok")).status, 202);
    assert_eq!(
        client.post(&keyed("process.progress", "late")).json["result"],
        "stale"
    );
    assert_eq!(client.post(&keyed("process.failed", "no")).status, 409);
    assert_eq!(client.post(&event("process.bogus", "run-1")).status, 422);
    let text = client.get("/metrics").text;

    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    for name in &names {
        assert!(
            families.contains(name.as_str()),
            "the docs name {name}, which /metrics does not serve:\n{text}"
        );
    }
    let series_with = |name: &str, label: &str, value: &str| {
        let wanted = format!("{label}=\"{value}\"");
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .any(|line| line.contains(&wanted))
    };
    for result in results.iter().chain(&alerted) {
        assert!(
            series_with("pm_events_total", "result", result),
            "the docs name pm_events_total{{result=\"{result}\"}}, which /metrics does not serve:\n{text}"
        );
    }
    for reason in &reasons {
        assert!(
            series_with("pm_rejections_total", "reason", reason),
            "the docs name pm_rejections_total{{reason=\"{reason}\"}}, which /metrics does not serve:\n{text}"
        );
    }
}
