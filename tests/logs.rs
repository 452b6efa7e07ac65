//! The request log as a log pipeline reads it: the real binary with `log.format: json`,
//! real requests on loopback, and each line parsed as JSON. Numbers are JSON numbers,
//! "no route" is `unmatched` (as in the metric label and the error body), and a 405
//! names the route that owns the path.
//!
//! These drive a child process from plain threads, with no runtime to block, so the
//! std clock and sleep are the right tools here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one raw HTTP/1.1 request with `connection: close`; returns the whole reply.
fn exchange(port: u16, request: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("gateway did not listen: {error}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn json_request_lines_have_numbers_and_one_word_for_no_route() {
    let port = free_port();
    let config = format!(
        "listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:0 }}
log: {{ format: json, level: info }}
upstreams:
  demo: {{ demo: {{ token_interval: 1ms }} }}
routes:
  - name: chat
    match: {{ path_prefix: /api/stream, methods: [GET] }}
    upstream: demo
    request: {{ path_prefix: /v1/assistant/stream, method: POST, body: query_as_json }}
"
    );
    let dir = std::env::temp_dir().join(format!("sse-gateway-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sse-gateway"))
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let not_found = exchange(
        port,
        "GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    let not_allowed = exchange(
        port,
        "DELETE /api/stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    let stream = exchange(
        port,
        "GET /api/stream?q=hi HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut lines: Vec<String> = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        lines.extend(BufReader::new(pipe).lines().map_while(Result::ok));
    }
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();

    assert!(not_found.starts_with("HTTP/1.1 404 "), "{not_found}");
    assert!(not_found.contains(r#""route":"unmatched""#), "{not_found}");
    assert!(not_allowed.starts_with("HTTP/1.1 405 "), "{not_allowed}");
    assert!(not_allowed.contains(r#""route":"chat""#), "{not_allowed}");
    assert!(stream.starts_with("HTTP/1.1 200 "), "{stream}");

    let requests: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line.get("path").is_some())
        .collect();
    let by_path = |path: &str, status: u64| {
        requests
            .iter()
            .find(|line| line["path"] == path && line["status"] == status)
            .unwrap_or_else(|| panic!("no line for {path} {status}:\n{}", lines.join("\n")))
    };
    let missing = by_path("/nope", 404);
    assert_eq!(missing["route"], "unmatched", "{missing}");
    assert!(missing.get("upstream").is_none(), "{missing}");
    let refused = by_path("/api/stream", 405);
    assert_eq!(refused["route"], "chat", "{refused}");
    assert_eq!(refused["upstream"], "demo", "{refused}");
    let streamed = by_path("/api/stream", 200);
    assert_eq!(streamed["route"], "chat", "{streamed}");
    for line in [missing, refused, streamed] {
        assert!(line["duration_ms"].is_u64(), "duration_ms a number: {line}");
        assert!(line["status"].is_u64(), "{line}");
        assert!(line["bytes"].is_u64(), "{line}");
    }
    assert!(streamed["bytes"].as_u64().unwrap() > 0, "{streamed}");
}
