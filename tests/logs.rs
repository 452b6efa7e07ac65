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

/// Runs the binary with JSON logs on `upstreams_and_routes` (YAML), sends each raw
/// request in turn, stops it with SIGTERM; returns the replies and every line it wrote.
fn run_gateway(
    name: &str,
    upstreams_and_routes: &str,
    requests: &[&str],
) -> (Vec<String>, Vec<String>) {
    // Port 0, and the port read from the gateway's own "listening" line: a port picked
    // free beforehand could be taken by a parallel test before the child binds it.
    let config = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nlog: {{ format: json, level: info }}\n{upstreams_and_routes}"
    );
    let dir = std::env::temp_dir().join(format!("sse-gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, &config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sse-gateway"))
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines: Vec<String> = Vec::new();
    let port = loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(
            read > 0,
            "the gateway exited before listening:\n{}",
            lines.join("")
        );
        let listening = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .filter(|json| json["message"] == "gateway listening")
            .and_then(|json| {
                json["listen"]
                    .as_str()?
                    .parse::<std::net::SocketAddr>()
                    .ok()
            });
        lines.push(line.trim_end().to_string());
        if let Some(addr) = listening {
            break addr.port();
        }
    };
    let replies = requests
        .iter()
        .map(|request| exchange(port, request))
        .collect();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    lines.extend(stderr.lines().map_while(Result::ok));
    lines.extend(
        BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok),
    );
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (replies, lines)
}

#[test]
fn json_request_lines_have_numbers_and_one_word_for_no_route() {
    let config = "upstreams:
  demo: { demo: { token_interval: 1ms } }
routes:
  - name: chat
    match: { path_prefix: /api/stream, methods: [GET] }
    upstream: demo
    request: { path_prefix: /v1/assistant/stream, method: POST, body: query_as_json }
";
    let (replies, lines) = run_gateway(
        "logs",
        config,
        &[
            "GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "DELETE /api/stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "GET /api/stream?q=hi HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ],
    );
    let [not_found, not_allowed, stream] = &replies[..] else {
        panic!("three replies");
    };

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

/// Serves one canned event-stream response per connection, in order, from a thread;
/// returns the port and a handle yielding each request's head.
fn canned_upstream(bodies: Vec<String>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for body in bodies {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            heads.push(String::from_utf8_lossy(&head).into_owned());
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
        heads
    });
    (port, handle)
}

#[test]
fn every_line_of_a_request_names_its_request_id_and_the_stream_line_its_tokens() {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/usage/anthropic.sse"
    ))
    .unwrap();
    let error_event = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
    let (upstream_port, upstream) = canned_upstream(vec![capture, error_event.to_owned()]);
    let config = format!(
        "upstreams:
  claude: {{ url: \"http://127.0.0.1:{upstream_port}\" }}
routes:
  - name: messages
    match: {{ path_prefix: /v1/messages }}
    upstream: claude
    stream: {{ protocol: anthropic }}
"
    );
    let (replies, lines) = run_gateway(
        "ids",
        &config,
        &[
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-request-id: edge-42\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-request-id: not sane!\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        ],
    );
    let [with_id, with_bad_id] = &replies[..] else {
        panic!("two replies");
    };
    let heads = upstream.join().unwrap();

    let response_id = |reply: &str| {
        reply
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("an x-request-id in {reply}"))
            .to_owned()
    };
    assert_eq!(response_id(with_id), "edge-42");
    assert!(
        heads[0].contains("x-request-id: edge-42\r\n"),
        "{}",
        heads[0]
    );
    let generated = response_id(with_bad_id);
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(
        heads[1].contains(&format!("x-request-id: {generated}\r\n")),
        "the upstream gets the id the client gets: {}",
        heads[1]
    );

    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let of_request = |id: &str| -> Vec<&serde_json::Value> {
        json.iter()
            .filter(|line| line["span"]["request_id"] == id)
            .collect()
    };
    let first = of_request("edge-42");
    let finished = first
        .iter()
        .find(|line| line["message"] == "stream finished")
        .unwrap_or_else(|| panic!("a stream line for edge-42:\n{}", lines.join("\n")));
    assert_eq!(finished["input_tokens"], 25, "{finished}");
    assert_eq!(finished["output_tokens"], 15, "{finished}");
    assert_eq!(finished["finish_reasons"], "end_turn", "{finished}");
    assert!(finished["ttft_ms"].is_u64(), "{finished}");
    let second = of_request(&generated);
    let messages: Vec<&str> = second
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("error event")),
        "the warning is the request's: {messages:?}\n{}",
        lines.join("\n")
    );
    assert!(messages.contains(&"stream finished"), "{messages:?}");
    let finished = second
        .iter()
        .find(|line| line["message"] == "stream finished")
        .unwrap();
    assert!(
        finished.get("ttft_ms").is_none(),
        "no content, no ttft: {finished}"
    );
    assert!(
        finished.get("finish_reasons").is_none(),
        "an upstream error gives no finish reason: {finished}"
    );
}
