//! The examples in `examples/` (and the README's workflow), read the way
//! their platform reads them: each file's HTTP requests are taken from it
//! (method, path, headers, body), its placeholders filled in, and sent to
//! a live daemon; then the answers and the resulting process are checked.
//! An example that drifts from the API fails here. An expression or
//! construct the readers below do not know fails too, rather than being
//! skipped: teach the reader, or keep the example plain.

use crate::support::{Client, Daemon, DaemonOptions, Reply};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A port nobody listens on now, for a daemon whose own address must be
/// in its settings (`http.public_url`).
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A request as a workflow would send it, to a URL on the daemon.
#[derive(Debug)]
struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// Sends it to the daemon at `base` (the URL must be on it).
    fn send(&self, client: &Client, base: &str) -> Reply {
        let path = self
            .url
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("{} is not on the daemon at {base}", self.url));
        client.send(&self.method, path, &self.headers, &self.body)
    }
}

fn body_bytes(body: &Value) -> Vec<u8> {
    match body {
        Value::Null => Vec::new(),
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

// ---------------------------------------------------------------- Logic Apps

/// The Logic Apps workflow definition language, as far as the examples
/// use it: `@{…}` in strings, with `parameters('…')`,
/// `workflow().run.name`, `utcNow()` and `addHours(utcNow(), n)`.
struct LogicApp {
    parameters: HashMap<String, String>,
    run_name: String,
    now: OffsetDateTime,
}

impl LogicApp {
    /// A run of a workflow whose parameters point at the daemon at `base`.
    fn new(base: &str, token: &str, run_name: &str) -> LogicApp {
        LogicApp {
            parameters: HashMap::from([
                ("processManagerUrl".into(), base.to_owned()),
                ("processManagerToken".into(), token.to_owned()),
            ]),
            run_name: run_name.to_owned(),
            now: OffsetDateTime::now_utc(),
        }
    }

    fn evaluate(&self, expression: &str) -> String {
        let expression = expression.trim();
        let time = |at: OffsetDateTime| at.format(&Rfc3339).unwrap();
        if expression == "workflow().run.name" {
            return self.run_name.clone();
        }
        if expression == "utcNow()" {
            return time(self.now);
        }
        if let Some(name) = expression
            .strip_prefix("parameters('")
            .and_then(|rest| rest.strip_suffix("')"))
        {
            return self
                .parameters
                .get(name)
                .unwrap_or_else(|| panic!("no value for the parameter `{name}`"))
                .clone();
        }
        if let Some(hours) = expression
            .strip_prefix("addHours(utcNow(), ")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let hours: i64 = hours.trim().parse().unwrap();
            return time(self.now + time::Duration::hours(hours));
        }
        panic!("examples.rs cannot read the Logic Apps expression `{expression}`");
    }

    fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("@{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("a closed @{…}") + start;
            out.push_str(&self.evaluate(&rest[start + 2..end]));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        assert!(
            !out.starts_with('@'),
            "a whole-string expression `{text}`: examples.rs reads only @{{…}}"
        );
        out
    }

    fn expand_value(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.expand(text)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.expand_value(v)).collect())
            }
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), self.expand_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The workflow's HTTP actions, in an order `runAfter` allows (the
    /// definition's order among those ready at once), as requests.
    fn requests(&self, definition: &Value) -> Vec<(String, Request)> {
        let actions = definition["actions"].as_object().expect("actions");
        let mut done: Vec<String> = Vec::new();
        let mut requests = Vec::new();
        while done.len() < actions.len() {
            let (name, action) = actions
                .iter()
                .find(|(name, action)| {
                    !done.contains(name)
                        && action["runAfter"]
                            .as_object()
                            .is_none_or(|after| after.keys().all(|before| done.contains(before)))
                })
                .expect("runAfter leaves an action that can run");
            assert_eq!(
                action["type"], "Http",
                "{name}: examples.rs runs Http actions only"
            );
            let inputs = &action["inputs"];
            let mut headers: Vec<(String, String)> = inputs["headers"]
                .as_object()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|(k, v)| (k.clone(), self.expand(v.as_str().unwrap())))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(authentication) = inputs.get("authentication") {
                // Raw: the value is the Authorization header, sent with
                // the request and with every poll of its Location.
                assert_eq!(
                    authentication["type"], "Raw",
                    "{name}: examples.rs knows Raw authentication only"
                );
                headers.push((
                    "Authorization".into(),
                    self.expand(authentication["value"].as_str().unwrap()),
                ));
            }
            requests.push((
                name.clone(),
                Request {
                    method: inputs["method"].as_str().unwrap().to_owned(),
                    url: self.expand(inputs["uri"].as_str().unwrap()),
                    headers,
                    body: body_bytes(&self.expand_value(&inputs["body"])),
                },
            ));
            done.push(name.clone());
        }
        requests
    }
}

/// What a Logic Apps HTTP action makes of an answer: 2xx succeeds, except
/// that a 202 with `Location` is polled (the asynchronous pattern).
fn logic_apps_answer(name: &str, reply: &Reply) -> Option<String> {
    assert!(
        (200..300).contains(&reply.status),
        "the action {name} failed: {} {}",
        reply.status,
        reply.text
    );
    if reply.status == 202 {
        return reply.header("location").map(str::to_owned);
    }
    None
}

/// Polls a `Location` as the HTTP action does (with the action's
/// authentication) until the answer is not 202.
fn follow(client: &Client, base: &str, location: &str, action: &Request) -> Reply {
    let authentication: Vec<(String, String)> = action
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .cloned()
        .collect();
    loop {
        let poll = Request {
            method: "GET".into(),
            url: location.to_owned(),
            headers: authentication.clone(),
            body: Vec::new(),
        };
        let reply = poll.send(client, base);
        if reply.status != 202 {
            return reply;
        }
        let next = reply.header("location").expect("a 202 keeps its Location");
        assert_eq!(next, location);
        assert!(reply.header("retry-after").is_some());
    }
}

#[test]
fn the_logic_apps_example_reports_its_steps_and_waits_for_the_worker() {
    let token = "logic-apps-ingest";
    let (daemon, base, _config) = logic_apps_daemon(token);
    let client = daemon.client();
    let workflow = read_json(&example("logic-apps/workflow.json"));
    let app = LogicApp::new(&base, token, "08584512345678901234567890123CU01");
    let process_id = format!("export-{}", app.run_name);
    let mut pending = None;
    for (name, request) in app.requests(&workflow["definition"]) {
        let reply = request.send(&client, &base);
        // An action retried by Logic Apps is a duplicate, stored once.
        if request.method == "POST" {
            let again = request.send(&client, &base);
            assert_eq!(again.json["result"], "duplicate", "{name}: {}", again.text);
        }
        pending = logic_apps_answer(&name, &reply).map(|location| (name, location, request));
    }
    let (name, location, wait) = pending.expect("the last action waits: 202 with Location");
    assert_eq!(name, "Wait_for_the_run");
    assert!(location.starts_with(&base), "{location}");
    // The upload worker finishes its task and the run.
    let worker = daemon.client().with_token(token);
    for event in [
        json!({"type": "task.succeeded", "process_id": process_id, "task_id": "upload"}),
        json!({"type": "process.succeeded", "process_id": process_id}),
    ] {
        assert_eq!(worker.post(&event).status, 202);
    }
    let done = follow(&client, &base, &location, &wait);
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.json["status"], "succeeded");
    assert_eq!(done.json["process_type"], "nightly-export");
    assert_eq!(done.json["heartbeat_timeout"], 900);
    assert!(done.json["deadline"].is_string());
    let tasks: Vec<(&str, &str)> = done.json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            (
                task["id"].as_str().unwrap(),
                task["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tasks,
        vec![("extract", "succeeded"), ("upload", "succeeded")]
    );
}

#[test]
fn the_readme_logic_apps_workflow_waits_on_the_step_it_started() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```json")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .find(|block| block.contains("workflowdefinition.json"))
        .expect("the README shows a Logic Apps workflow");
    let workflow: Value = serde_json::from_str(block).expect("the README's workflow is JSON");
    let token = "readme-token";
    let (daemon, base, _config) = logic_apps_daemon(token);
    let client = daemon.client();
    let app = LogicApp::new(&base, token, "08584512345678901234567890123CU02");
    let mut pending = None;
    for (name, request) in app.requests(&workflow["definition"]) {
        let reply = request.send(&client, &base);
        pending = logic_apps_answer(&name, &reply).map(|location| (location, request));
    }
    let (location, wait) = pending.expect("the wait is pending until the worker ends the step");
    // The worker fails: with require=succeeded the wait fails at once.
    let worker = daemon.client().with_token(token);
    let process_id = format!("export-{}", app.run_name);
    assert_eq!(
        worker
            .post(&json!({"type": "process.started", "process_id": process_id}))
            .status,
        202
    );
    assert_eq!(
        worker
            .post(&json!({"type": "process.failed", "process_id": process_id, "error": {"code": "disk_full"}}))
            .status,
        202
    );
    let done = follow(&client, &base, &location, &wait);
    assert_eq!(done.status, 409, "{}", done.text);
    assert_eq!(done.json["code"], "process_unsuccessful");
}

/// A daemon that knows its own address (`http.public_url`, so that its
/// `Location` headers are absolute, as a Logic App needs) and takes
/// `token` for ingest; with that address.
fn logic_apps_daemon(token: &str) -> (Daemon, String, tempfile::NamedTempFile) {
    let listen = free_addr();
    let base = format!("http://{listen}");
    let (config, file) = config_file(&format!(
        "[http]\npublic_url = \"{base}\"\n[auth]\ningest_tokens = [\"{token}\"]\n"
    ));
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .listen(&listen)
            .env("PM_CONFIG", &config),
    );
    (daemon, base, file)
}

fn config_file(text: &str) -> (String, tempfile::NamedTempFile) {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    (file.path().to_str().unwrap().to_owned(), file)
}

// ------------------------------------------------------------ GitHub Actions

/// Fills in `${{ … }}` from `values`; an expression not there fails.
fn github_expand(text: &str, values: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closed ${{ … }}") + start;
        let expression = rest[start + 3..end].trim();
        out.push_str(
            values.get(expression).unwrap_or_else(|| {
                panic!("examples.rs has no value for `${{{{ {expression} }}}}`")
            }),
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Runs the workflow's job as a runner would: its `run` steps with bash
/// (`bash --noprofile --norc -eo pipefail`, GitHub's default), in the
/// example's directory (the checkout), with the workflow's `env`.
fn run_github_workflow(values: &HashMap<&str, String>) {
    let dir = example("github-actions");
    let text = std::fs::read_to_string(dir.join(".github/workflows/deploy.yml")).unwrap();
    let workflow: Value = serde_yaml_ng::from_str(&text).unwrap();
    let env: Vec<(String, String)> = workflow["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), github_expand(v.as_str().unwrap(), values)))
        .collect();
    let steps = workflow["jobs"]["deploy"]["steps"].as_array().unwrap();
    for step in steps {
        if let Some(action) = step["uses"].as_str() {
            assert!(
                action.starts_with("actions/checkout@"),
                "a step uses {action}"
            );
            continue;
        }
        let script = github_expand(step["run"].as_str().expect("a run step"), values);
        let output = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "the step `{}` failed:\n{}\n{}",
            step["name"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_github_actions_example_reports_its_run_with_signed_webhooks() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_WEBHOOK_SECRETS", secret));
    let client = daemon.client();
    let values = |run_id: &str, status: &str| -> HashMap<&str, String> {
        HashMap::from([
            ("vars.PROCESSMANAGER_URL", format!("http://{}", daemon.addr)),
            ("secrets.PROCESSMANAGER_WEBHOOK_SECRET", secret.to_owned()),
            ("github.run_id", run_id.to_owned()),
            ("github.run_attempt", "1".to_owned()),
            (
                "github.sha",
                "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_owned(),
            ),
            ("github.server_url", "https://github.com".to_owned()),
            ("github.repository", "contoso/shop".to_owned()),
            ("job.status", status.to_owned()),
        ])
    };
    run_github_workflow(&values("9001", "success"));
    let process = client.get("/v1/processes/gh-9001-1");
    assert_eq!(process.status, 200, "{}", process.text);
    assert_eq!(process.json["status"], "succeeded");
    assert_eq!(process.json["process_type"], "deploy");
    let tasks: Vec<&str> = process.json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["status"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, vec!["succeeded", "succeeded"]);
    let history = client.get("/v1/processes/gh-9001-1/history");
    assert_eq!(history.json["items"].as_array().unwrap().len(), 6);

    // The same run again (a re-run job): every event a duplicate.
    run_github_workflow(&values("9001", "success"));
    let again = client.get("/v1/processes/gh-9001-1/history");
    assert_eq!(again.json["items"], history.json["items"]);

    // A run whose job failed is reported failed, with a link to it.
    run_github_workflow(&values("9002", "failure"));
    let failed = client.get("/v1/processes/gh-9002-1");
    assert_eq!(failed.json["status"], "failed");
    assert_eq!(failed.json["error"]["code"], "failure");
    assert!(failed.json["error"]["message"]
        .as_str()
        .unwrap()
        .ends_with("contoso/shop/actions/runs/9002"));
}

// ------------------------------------------------------------ Argo Workflows

/// The part of an Argo workflow the example uses: `steps` (lists run one
/// after the other, items of a list in parallel), `when` with `==` or
/// `!=`, `http` templates, and `container` templates (the work itself,
/// not run here).
struct ArgoRun<'a> {
    templates: HashMap<String, &'a Value>,
    variables: HashMap<String, String>,
    sent: Vec<(String, Reply)>,
}

impl ArgoRun<'_> {
    fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("a closed {{…}}") + start;
            let name = rest[start + 2..end].trim();
            out.push_str(
                self.variables
                    .get(name)
                    .unwrap_or_else(|| panic!("examples.rs has no value for `{{{{{name}}}}}`")),
            );
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn when(&self, condition: &str) -> bool {
        let condition = self.expand(condition);
        if let Some((left, right)) = condition.split_once("!=") {
            return left.trim() != right.trim();
        }
        if let Some((left, right)) = condition.split_once("==") {
            return left.trim() == right.trim();
        }
        panic!("examples.rs cannot read the condition `{condition}`");
    }

    fn run(&mut self, name: &str, client: &Client, base: &str) {
        let template = self.templates[name];
        if let Some(groups) = template["steps"].as_array() {
            for group in groups {
                for step in group.as_array().unwrap() {
                    if step["when"]
                        .as_str()
                        .is_none_or(|condition| self.when(condition))
                    {
                        self.run(step["template"].as_str().unwrap(), client, base);
                    }
                }
            }
        } else if let Some(http) = template.get("http") {
            let request = Request {
                method: http["method"].as_str().unwrap_or("GET").to_owned(),
                url: self.expand(http["url"].as_str().unwrap()),
                headers: http["headers"]
                    .as_array()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h["name"].as_str().unwrap().to_owned(),
                                    self.expand(h["value"].as_str().unwrap()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body: self
                    .expand(http["body"].as_str().unwrap_or_default())
                    .into_bytes(),
            };
            assert_eq!(
                http["successCondition"],
                "response.statusCode >= 200 && response.statusCode < 300"
            );
            let reply = request.send(client, base);
            assert!(
                (200..300).contains(&reply.status),
                "{name}: {} {}",
                reply.status,
                reply.text
            );
            self.sent.push((name.to_owned(), reply));
        } else {
            assert!(
                template.get("container").is_some(),
                "{name}: what kind of template?"
            );
        }
    }
}

fn run_argo_workflow(client: &Client, base: &str, uid: &str, status: &str) -> Vec<String> {
    let text = std::fs::read_to_string(example("argo/workflow.yaml")).unwrap();
    let workflow: Value = serde_yaml_ng::from_str(&text).unwrap();
    let spec = &workflow["spec"];
    let mut variables = HashMap::from([
        ("workflow.uid".to_owned(), uid.to_owned()),
        (
            "workflow.name".to_owned(),
            format!("nightly-report-{}", &uid[..5]),
        ),
        ("workflow.status".to_owned(), status.to_owned()),
    ]);
    for parameter in spec["arguments"]["parameters"].as_array().unwrap() {
        let name = parameter["name"].as_str().unwrap();
        // `argo submit -p processmanager-url=…`
        let value = match name {
            "processmanager-url" => base.to_owned(),
            _ => parameter["value"].as_str().unwrap().to_owned(),
        };
        variables.insert(format!("workflow.parameters.{name}"), value);
    }
    let mut run = ArgoRun {
        templates: spec["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_owned(), t))
            .collect(),
        variables,
        sent: Vec::new(),
    };
    run.run(spec["entrypoint"].as_str().unwrap(), client, base);
    run.run(spec["onExit"].as_str().unwrap(), client, base);
    run.sent.into_iter().map(|(name, _)| name).collect()
}

#[test]
fn the_argo_exit_handler_reports_how_the_workflow_ended() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let base = format!("http://{}", daemon.addr);
    let uid = "5f1c2d3e-0a9b-4c8d-8e7f-6a5b4c3d2e1f";
    let sent = run_argo_workflow(&client, &base, uid, "Succeeded");
    assert_eq!(sent, vec!["report-started", "report-succeeded"]);
    let process = client.get(&format!("/v1/processes/argo-{uid}"));
    assert_eq!(process.json["status"], "succeeded", "{}", process.text);
    assert_eq!(process.json["process_type"], "nightly-report");
    assert_eq!(process.json["heartbeat_timeout"], 3600);

    let uid = "7a6b5c4d-3e2f-4a1b-9c8d-0e1f2a3b4c5d";
    let sent = run_argo_workflow(&client, &base, uid, "Failed");
    assert_eq!(sent, vec!["report-started", "report-failed"]);
    let process = client.get(&format!("/v1/processes/argo-{uid}"));
    assert_eq!(process.json["status"], "failed");
    assert_eq!(process.json["error"]["code"], "Failed");
    // Argo retries a failed HTTP step: the end again is a duplicate.
    assert_eq!(run_argo_workflow(&client, &base, uid, "Failed").len(), 2);
    let history = client.get(&format!("/v1/processes/argo-{uid}/history"));
    assert_eq!(history.json["items"].as_array().unwrap().len(), 2);
}

// ---------------------------------------------------------------- Event Grid

/// ARM template expressions, as far as the example uses them:
/// `[parameters('…')]` and `[concat(…)]` of those and of '…' literals.
fn arm(expression: &str, parameters: &HashMap<&str, String>) -> String {
    let Some(inner) = expression
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
    else {
        return expression.to_owned();
    };
    let argument = |text: &str| -> String {
        let text = text.trim();
        if let Some(name) = text
            .strip_prefix("parameters('")
            .and_then(|t| t.strip_suffix("')"))
        {
            return parameters
                .get(name)
                .unwrap_or_else(|| panic!("no value for the parameter `{name}`"))
                .clone();
        }
        if let Some(literal) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
            return literal.to_owned();
        }
        panic!("examples.rs cannot read the ARM expression `{text}`");
    };
    match inner
        .strip_prefix("concat(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        Some(arguments) => arguments.split(',').map(argument).collect(),
        None => argument(inner),
    }
}

#[test]
fn the_event_grid_subscription_validates_then_delivers_unordered_and_twice() {
    let token = "event-grid-ingest";
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .env(
                "PM_CONFIG",
                example("event-grid/processmanager.toml").to_str().unwrap(),
            )
            .env("PM_AUTH_INGEST_TOKENS", token),
    );
    let client = daemon.client();
    let base = format!("http://{}", daemon.addr);
    let template = read_json(&example("event-grid/template.json"));
    let subscription = template["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|resource| resource["type"] == "Microsoft.EventGrid/topics/eventSubscriptions")
        .expect("an event subscription");
    let properties = &subscription["properties"];
    assert_eq!(properties["eventDeliverySchema"], "CloudEventSchemaV1_0");
    let destination = &properties["destination"]["properties"];
    let parameters = HashMap::from([
        ("processManagerUrl", base.clone()),
        ("ingestToken", token.to_owned()),
    ]);
    let endpoint = arm(destination["endpointUrl"].as_str().unwrap(), &parameters);
    // What the README asks: batches no larger than the daemon takes.
    let per_batch = destination["maxEventsPerBatch"].as_u64().unwrap() as usize;
    assert!((1..=1000).contains(&per_batch), "ingest.max_batch is 1000");
    assert!(
        destination["preferredBatchSizeInKilobytes"]
            .as_u64()
            .unwrap()
            * 1024
            <= 4 * 1024 * 1024
    );
    let delivery_headers: Vec<(String, String)> = destination["deliveryAttributeMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mapping| {
            assert_eq!(mapping["type"], "Static");
            (
                mapping["name"].as_str().unwrap().to_owned(),
                arm(
                    mapping["properties"]["value"].as_str().unwrap(),
                    &parameters,
                ),
            )
        })
        .collect();

    // The validation handshake, as Event Grid sends it when the
    // subscription is made.
    let handshake = Request {
        method: "OPTIONS".into(),
        url: endpoint.clone(),
        headers: vec![(
            "WebHook-Request-Origin".into(),
            "eventgrid.azure.net".into(),
        )],
        body: Vec::new(),
    }
    .send(&client, &base);
    assert_eq!(handshake.status, 200, "{}", handshake.text);
    assert_eq!(
        handshake.header("webhook-allowed-origin"),
        Some("eventgrid.azure.net")
    );

    // Delivery: unordered (here, backwards) and at least once (here,
    // everything twice), in batches of at most maxEventsPerBatch.
    let events = read_json(&example("event-grid/events.json"));
    let mut events = events.as_array().unwrap().clone();
    events.reverse();
    let deliver = |batch: &[Value]| {
        let mut headers = delivery_headers.clone();
        headers.push((
            "Content-Type".into(),
            "application/cloudevents-batch+json; charset=utf-8".into(),
        ));
        Request {
            method: "POST".into(),
            url: endpoint.clone(),
            headers,
            body: Value::Array(batch.to_vec()).to_string().into_bytes(),
        }
        .send(&client, &base)
    };
    let mut stored = 0;
    for batch in events.chunks(2.min(per_batch)) {
        let reply = deliver(batch);
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json["rejected"], 0, "{}", reply.text);
        stored += reply.json["accepted"].as_u64().unwrap() + reply.json["stale"].as_u64().unwrap();
    }
    assert_eq!(stored, events.len() as u64);
    let again = deliver(&events);
    assert_eq!(again.json["duplicates"], events.len(), "{}", again.text);

    let reader = daemon.client().with_token(token);
    let process = reader.get("/v1/processes/order-sync-20261127-01");
    assert_eq!(process.status, 200, "{}", process.text);
    assert_eq!(process.json["status"], "succeeded", "{}", process.text);
    // The end came first; what only the start said is not lost.
    assert_eq!(process.json["name"], "Order sync");
    assert_eq!(process.json["process_type"], "order-sync");
    assert_eq!(process.json["attributes"]["region"], "westeurope");
    assert_eq!(process.json["started_at"], "2026-11-27T02:00:00.000Z");
    assert_eq!(process.json["finished_at"], "2026-11-27T02:06:01.000Z");
    assert_eq!(process.json["duration_ms"], 361_000);
    let task = &process.json["tasks"][0];
    assert_eq!(task["id"], "fetch-orders");
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["name"], "Fetch orders");
    assert_eq!(task["started_at"], "2026-11-27T02:00:01.000Z");
    let history = reader.get("/v1/processes/order-sync-20261127-01/history");
    assert_eq!(
        history.json["items"].as_array().unwrap().len(),
        events.len()
    );
}
