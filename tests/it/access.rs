//! Tokens and roles; refusing to start anonymous off loopback.

use crate::support::{event, serve_refused, Client, Daemon, DaemonOptions};

fn daemon_with_tokens() -> Daemon {
    Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_READ_TOKENS", "reader-secret")
            .env("PM_AUTH_INGEST_TOKENS", "ingest-secret")
            .env("PM_AUTH_ADMIN_TOKENS", "admin-secret")
            .env("PM_LOG", "debug"),
    )
}

#[test]
fn each_role_may_do_what_the_contract_says_and_no_more() {
    let daemon = daemon_with_tokens();
    let anonymous = daemon.client();
    let reader = daemon.client().with_token("reader-secret");
    let ingester = daemon.client().with_token("ingest-secret");
    let admin = daemon.client().with_token("admin-secret");
    let stranger = daemon.client().with_token("guess");

    let no_token = anonymous.post(&event("process.started", "p"));
    assert_eq!(
        (no_token.status, no_token.json["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    assert_eq!(stranger.post(&event("process.started", "p")).status, 401);
    assert_eq!(stranger.get("/v1/stats").status, 401);
    let forbidden = reader.post(&event("process.started", "p"));
    assert_eq!(
        (forbidden.status, forbidden.json["code"].as_str()),
        (403, Some("forbidden"))
    );

    assert_eq!(ingester.post(&event("process.started", "p")).status, 202);
    assert_eq!(admin.post(&event("process.started", "q")).status, 202);
    for client in [&reader, &ingester, &admin] {
        assert_eq!(client.get("/v1/processes/p").status, 200);
        assert_eq!(client.get("/v1/processes").status, 200);
        assert_eq!(client.get("/v1/processes/p/history").status, 200);
        assert_eq!(client.get("/v1/stats").status, 200);
    }
    assert_eq!(anonymous.get("/v1/processes/p").status, 401);
    // Probes stay open for the orchestrator of the container.
    assert_eq!(anonymous.get("/readyz").status, 200);

    assert_eq!(reader.delete("/v1/processes/p").status, 403);
    assert_eq!(ingester.delete("/v1/processes/p").status, 403);
    assert_eq!(admin.delete("/v1/processes/p").status, 204);
    assert_eq!(admin.get("/v1/processes/p").status, 404);
    assert_eq!(admin.delete("/v1/processes/p").status, 404);

    let output = daemon.output();
    for secret in ["reader-secret", "ingest-secret", "admin-secret", "guess"] {
        assert!(!output.contains(secret), "a token reached the log");
    }
}

#[test]
fn delete_removes_the_process_its_history_and_its_counts() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client.post(&serde_json::json!({"type": "task.started", "process_id": "gone", "task_id": "t", "event_id": "k"}));
    client.post(&event("process.started", "stays"));
    assert_eq!(client.delete("/v1/processes/gone").status, 204);
    assert_eq!(client.get("/v1/processes/gone/history").status, 404);
    let stats = client.get("/v1/stats").json;
    assert_eq!(
        (
            stats["processes_total"].as_u64(),
            stats["events_total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let ids: Vec<String> = client.get("/v1/processes").json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["stays"]);
    // The idempotency key went with it: the same event is new again.
    let again = client.post(&serde_json::json!({"type": "task.started", "process_id": "gone", "task_id": "t", "event_id": "k"}));
    assert_eq!(again.status, 202);
}

#[test]
fn without_tokens_it_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = serve_refused("0.0.0.0:0", dir.path());
    assert!(stderr.contains("allow_anonymous"), "{stderr}");

    let allowed = Daemon::start_with(
        DaemonOptions::default()
            .env("PM_AUTH_ALLOW_ANONYMOUS", "true")
            .listen("0.0.0.0:0"),
    );
    let port = allowed.addr.port();
    let local = Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(local.get("/livez").status, 200);
}

/// Reads one answer off a kept-alive connection: its head, and its body
/// by `content-length` or in chunks.
fn read_answer(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let line = |stream: &mut std::net::TcpStream| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            let read = stream.read(&mut byte).expect("the answer arrives");
            assert_eq!(read, 1, "the connection closed after {line:?}");
            line.push(byte[0]);
        }
        String::from_utf8(line).expect("an HTTP line")
    };
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head += &line(stream);
    }
    let header = |wanted: &str| {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let size = usize::from_str_radix(line(stream).trim_end(), 16).expect("a chunk size");
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).expect("a chunk");
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                break;
            }
        }
    } else {
        let length = header("content-length").map_or(0, |length| length.parse().unwrap());
        body.resize(length, 0);
        stream.read_exact(&mut body).expect("the answer's body");
    }
    head + &String::from_utf8_lossy(&body)
}

/// A request refused before its body is read (no token, no such route,
/// a method the route does not take) must leave the connection usable:
/// a client that sends its body after the answer came, then its next
/// request on the same connection, as keep-alive allows, gets an answer
/// to that one too, not a closed socket.
#[test]
fn a_request_refused_before_its_body_is_read_leaves_the_connection_usable() {
    use std::io::Write;
    let daemon = daemon_with_tokens();
    let body = event("process.started", "p").to_string();
    for (request, refused) in [
        ("POST /v1/events", "HTTP/1.1 401"),
        ("POST /nowhere", "HTTP/1.1 404"),
        ("PUT /v1/events", "HTTP/1.1 405"),
    ] {
        let mut stream = std::net::TcpStream::connect(daemon.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{request} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nauthorization: Bearer guess\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        // The refusal comes before the body is sent: it is judged on the head.
        let answer = read_answer(&mut stream);
        assert!(answer.starts_with(refused), "{request}: {answer}");
        stream
            .write_all(body.as_bytes())
            .expect("the connection is open after the refusal");
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .expect("the connection is open after the refusal");
        let next = read_answer(&mut stream);
        assert!(next.starts_with("HTTP/1.1 200"), "{request}, then: {next}");
    }
}
