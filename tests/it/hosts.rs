//! The `Host` guard against DNS rebinding (api.md 1.2, "Loopback without
//! tokens"): without tokens only loopback names, the public URL's host and
//! `http.allowed_hosts` are served; probes answer any `Host`; no CORS
//! permission is ever granted.

use crate::support::{event, Client, Daemon, DaemonOptions, Reply};

fn with_host(client: &Client, method: &str, path: &str, host: &str) -> Reply {
    client.send(method, path, &[("host".into(), host.into())], b"")
}

/// One request of each route (and a path that is none), each of which a
/// rebinding page could send.
fn every_route() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("POST", "/v1/events"),
        ("OPTIONS", "/v1/events"),
        ("GET", "/v1/processes"),
        (
            "DELETE",
            "/v1/processes?finished_before=2999-01-01T00:00:00Z",
        ),
        ("GET", "/v1/processes/kept"),
        ("HEAD", "/v1/processes/kept"),
        ("DELETE", "/v1/processes/kept"),
        ("GET", "/v1/processes/kept/history"),
        ("GET", "/v1/processes/kept/await"),
        ("GET", "/v1/changes"),
        ("GET", "/v1/admin/backup"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/stats/durations"),
        ("GET", "/nowhere"),
    ]
}

#[test]
fn without_tokens_a_foreign_host_is_refused_on_every_route_and_nothing_is_applied() {
    let daemon = Daemon::start();
    let client = daemon.client();
    assert_eq!(client.post(&event("process.succeeded", "kept")).status, 202);
    let body = event("process.started", "planted").to_string();
    for (method, path) in every_route() {
        for host in ["evil.example", "evil.example:8080", "10.0.0.5"] {
            let reply = client.send(
                method,
                path,
                &[
                    ("host".into(), host.into()),
                    ("content-type".into(), "application/json".into()),
                ],
                body.as_bytes(),
            );
            assert_eq!(reply.status, 403, "{method} {path} with Host {host}");
            if method != "HEAD" {
                assert_eq!(
                    reply.json["code"], "host_not_allowed",
                    "{method} {path}: {}",
                    reply.text
                );
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json")
                );
                let detail = reply.json["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("http.allowed_hosts"), "{detail}");
            }
        }
    }
    // Neither the POSTs nor the DELETEs did anything.
    assert_eq!(client.get("/v1/processes/planted").status, 404);
    assert_eq!(client.get("/v1/processes/kept").status, 200);
    assert_eq!(client.get("/v1/stats").json["events_total"], 1);
}

#[test]
fn loopback_names_and_addresses_are_served_with_any_port() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let port = daemon.addr.port();
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1:1".to_owned(),
        format!("[::1]:{port}"),
        "[::1]".to_owned(),
    ] {
        let reply = with_host(&client, "GET", "/v1/stats", &host);
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.text);
    }
}

#[test]
fn the_public_urls_host_and_listed_names_are_served_and_no_others() {
    let (daemon, _config) = Daemon::with_config(
        "[http]\npublic_url = \"https://pm.example.com:8443\"\nallowed_hosts = [\"dashboard.internal\", \".corp.example\"]\n",
    );
    let client = daemon.client();
    for host in [
        "pm.example.com",
        "pm.example.com:8443",
        "dashboard.internal:8080",
        "DASHBOARD.INTERNAL",
        "ops.corp.example",
    ] {
        let reply = with_host(&client, "GET", "/v1/processes", host);
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.text);
    }
    for host in [
        "example.com",
        "evil.example",
        "dashboard.internal.evil.example",
    ] {
        let reply = with_host(&client, "GET", "/v1/processes", host);
        assert_eq!(reply.status, 403, "Host {host}");
    }
}

#[test]
fn with_tokens_a_foreign_host_with_a_valid_token_is_served_unless_a_list_is_set() {
    let daemon = Daemon::start_with(DaemonOptions::default().env("PM_AUTH_READ_TOKENS", "reader"));
    let reader = daemon.client().with_token("reader");
    let reply = with_host(&reader, "GET", "/v1/processes", "evil.example");
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Without a token it is refused for the token, not for the host.
    let anonymous = with_host(&daemon.client(), "GET", "/v1/processes", "evil.example");
    assert_eq!(anonymous.status, 401);

    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), "[http]\nallowed_hosts = [\"pm.internal\"]\n").unwrap();
    let listed = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_READ_TOKENS", "reader")
            .env("PM_CONFIG", config.path().to_str().expect("UTF-8 path")),
    );
    let reader = listed.client().with_token("reader");
    assert_eq!(
        with_host(&reader, "GET", "/v1/processes", "pm.internal").status,
        200
    );
    let refused = with_host(&reader, "GET", "/v1/processes", "evil.example");
    assert_eq!(
        (refused.status, refused.json["code"].as_str()),
        (403, Some("host_not_allowed"))
    );
}

#[test]
fn the_probe_listener_answers_any_host() {
    let daemon = Daemon::start_with(
        DaemonOptions::default()
            .arg("--probe-listen")
            .arg("127.0.0.1:0"),
    );
    let probes = Client::new(daemon.probe_addr());
    for path in ["/livez", "/readyz", "/healthz", "/metrics"] {
        for host in ["10.1.2.3:8081", "pod.namespace.svc", "evil.example"] {
            let reply = with_host(&probes, "GET", path, host);
            assert_eq!(reply.status, 200, "{path} with Host {host}");
        }
    }
}

#[test]
fn no_cross_origin_permission_is_granted() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let origin = ("origin".to_owned(), "http://evil.example".to_owned());
    for path in [
        "/v1/processes",
        "/v1/events",
        "/v1/processes/p",
        "/v1/stats",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let preflight = client.send(
                "OPTIONS",
                path,
                &[
                    origin.clone(),
                    ("access-control-request-method".into(), method.into()),
                    (
                        "access-control-request-headers".into(),
                        "authorization, content-type".into(),
                    ),
                ],
                b"",
            );
            for (name, _) in &preflight.headers {
                assert!(
                    !name
                        .to_ascii_lowercase()
                        .starts_with("access-control-allow"),
                    "OPTIONS {path} for {method} granted {name}: {:?}",
                    preflight.headers
                );
            }
        }
        let simple = client.send("GET", path, std::slice::from_ref(&origin), b"");
        assert!(
            simple.header("access-control-allow-origin").is_none(),
            "GET {path}: {:?}",
            simple.headers
        );
    }
}
