//! See `tests/adversarial.rs`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The routes of these tests: `pooled` (no `stream` section, so the pooled client)
/// and `dedicated` (a `stream` section to a plain-HTTP upstream, so a connection of
/// its own), both on `upstream_url`; `request` is YAML for both routes' `request`.
fn two_routes(upstream_url: &str, header_timeout: &str, request: &str) -> String {
    format!(
        "upstreams:
  assistant:
    url: {upstream_url}
    header_timeout: {header_timeout}
routes:
  - name: pooled
    match: {{ path_prefix: /pooled }}
    upstream: assistant
    request: {{ {request} }}
  - name: dedicated
    match: {{ path_prefix: /dedicated }}
    upstream: assistant
    request: {{ {request} }}
    stream:
      terminator: {{ data: \"[DONE]\" }}
      heartbeat: 0
"
    )
}

const ROUTES: [&str; 2] = ["pooled", "dedicated"];

/// An upstream that takes connections and reads whatever comes, and never answers:
/// whatever fails, it is not this upstream.
async fn silent_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// Sends `head` and `body` on a new connection, closes the sending side when
/// `close_write`, and reads the reply until the gateway closes the connection.
async fn raw_request(gateway: &TestGateway, bytes: &[u8], close_write: bool) -> String {
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client.write_all(bytes).await.unwrap();
    if close_write {
        client.shutdown().await.unwrap();
    }
    let mut reply = Vec::new();
    tokio::time::timeout(LIVENESS, client.read_to_end(&mut reply))
        .await
        .expect("the gateway answers and closes in time")
        .ok();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Every `upstream_errors_total` series of `route`, summed.
fn upstream_errors(metrics: &Metrics, route: &str) -> f64 {
    [
        "connect",
        "connect_timeout",
        "header_timeout",
        "failed",
        "reset",
        "body",
    ]
    .iter()
    .map(|kind| {
        metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", route), ("kind", kind)],
        )
    })
    .sum()
}

fn client_errors(metrics: &Metrics, route: &str, kind: &str) -> f64 {
    metrics.get(
        "sse_gateway_client_errors_total",
        &[("route", route), ("kind", kind)],
    )
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_an_upstream_error() {
    let gateway = start_gateway(&two_routes(&silent_upstream().await, "2s", "")).await;
    for route in ROUTES {
        let request = format!(
            "POST /{route} HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\
connection: close\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n"
        );
        let reply = raw_request(&gateway, request.as_bytes(), false).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{route}: {reply}");
        assert!(
            reply.contains("\"type\":\"bad_request\""),
            "{route}: {reply}"
        );
        assert!(
            reply.contains("request body is malformed"),
            "{route}: {reply}"
        );
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        assert_eq!(client_errors(&metrics, route, "bad_body"), 1.0, "{route}");
        assert_eq!(upstream_errors(&metrics, route), 0.0, "{route}");
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_the_clients_400() {
    let gateway = start_gateway(&two_routes(&silent_upstream().await, "2s", "")).await;
    for route in ROUTES {
        let request = format!(
            "POST /{route} HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\nonly twenty bytes..."
        );
        let reply = raw_request(&gateway, request.as_bytes(), true).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{route}: {reply}");
        assert!(
            reply.contains("\"type\":\"bad_request\""),
            "{route}: {reply}"
        );
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        assert_eq!(client_errors(&metrics, route, "bad_body"), 1.0, "{route}");
        assert_eq!(upstream_errors(&metrics, route), 0.0, "{route}");
    }
}

/// Sends the head and one byte of a 100-byte body, then nothing more until the
/// gateway answers (a drip of one byte every few seconds, cut to its first pause).
async fn stalled_body_reply(gateway: &TestGateway, route: &str) -> String {
    let request = format!(
        "POST /{route} HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\nconnection: close\r\n\r\nx"
    );
    raw_request(gateway, request.as_bytes(), false).await
}

#[tokio::test]
async fn a_body_that_stops_arriving_for_body_timeout_is_the_clients_408() {
    let yaml = two_routes(&silent_upstream().await, "30s", "body_timeout: 300ms");
    let gateway = start_gateway(&yaml).await;
    for route in ROUTES {
        let reply = stalled_body_reply(&gateway, route).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{route}: {reply}");
        assert!(
            reply.contains("\"type\":\"request_timeout\""),
            "{route}: {reply}"
        );
        assert!(reply.contains("300ms"), "{route}: {reply}");
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        assert_eq!(
            client_errors(&metrics, route, "body_timeout"),
            1.0,
            "{route}"
        );
        assert_eq!(upstream_errors(&metrics, route), 0.0, "{route}");
    }
}

#[tokio::test]
async fn a_body_still_arriving_at_header_timeout_is_the_clients_408() {
    // body_timeout off: only the upstream's header_timeout ends the exchange, and the
    // gateway is still waiting for the client's body then.
    let yaml = two_routes(&silent_upstream().await, "300ms", "body_timeout: 0");
    let gateway = start_gateway(&yaml).await;
    for route in ROUTES {
        let reply = stalled_body_reply(&gateway, route).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{route}: {reply}");
        assert!(reply.contains("header_timeout"), "{route}: {reply}");
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        assert_eq!(
            client_errors(&metrics, route, "body_timeout"),
            1.0,
            "{route}"
        );
        assert_eq!(upstream_errors(&metrics, route), 0.0, "{route}");
    }
}

#[tokio::test]
async fn a_silent_upstream_with_the_whole_body_is_still_the_upstreams_504() {
    let gateway = start_gateway(&two_routes(&silent_upstream().await, "300ms", "")).await;
    for route in ROUTES {
        let request = format!(
            "POST /{route} HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        );
        let reply = raw_request(&gateway, request.as_bytes(), false).await;
        assert!(reply.starts_with("HTTP/1.1 504"), "{route}: {reply}");
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        let header_timeouts = metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", route), ("kind", "header_timeout")],
        );
        assert_eq!(header_timeouts, 1.0, "{route}");
        assert_eq!(
            client_errors(&metrics, route, "body_timeout"),
            0.0,
            "{route}"
        );
    }
}

#[tokio::test]
async fn every_client_error_series_exists_from_the_start() {
    let gateway = start_gateway(&two_routes(&silent_upstream().await, "2s", "")).await;
    let metrics = gateway.metrics().await;
    for kind in ["body_too_large", "bad_body", "body_timeout"] {
        let series =
            format!("sse_gateway_client_errors_total{{kind=\"{kind}\",route=\"pooled\"}} 0");
        assert!(metrics.text.contains(&series), "{series}\n{}", metrics.text);
    }
}

#[tokio::test]
async fn a_client_cannot_strip_the_headers_the_gateway_sets() {
    let upstream = ScriptedUpstream::bind().await;
    let route = "    request:
      method: POST
      body: query_as_json
";
    let gateway = start_gateway(&one_route_config(&upstream.url(), route)).await;
    let request = b"GET /api/stream?q=hi HTTP/1.1\r\nhost: gw\r\n\
connection: close, content-type, content-length, accept-encoding, x-forwarded-proto\r\n\r\n";
    let (reply, received) = tokio::join!(raw_request(&gateway, request, false), async {
        let mut exchange = upstream.accept().await;
        let received = exchange.request.clone();
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
        received
    });
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(received.body, br#"{"q":"hi"}"#);
    assert_eq!(
        received.header("content-length"),
        Some(received.body.len().to_string().as_str())
    );
    assert_eq!(received.header("accept-encoding"), Some("identity"));
    assert_eq!(received.header("x-forwarded-proto"), Some("http"));
    assert_eq!(received.header("connection"), None, "{received:?}");
}

#[tokio::test]
async fn a_missing_or_repeated_host_is_400_on_http_1_1() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    for (request, why) in [
        (
            "GET /api/stream HTTP/1.1\r\nconnection: close\r\n\r\n",
            "needs a Host",
        ),
        (
            "GET /api/stream HTTP/1.1\r\nhost: gw\r\nhost: internal.admin\r\nconnection: close\r\n\r\n",
            "more than one Host",
        ),
    ] {
        let reply = raw_request(&gateway, request.as_bytes(), false).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("\"type\":\"bad_request\""), "{reply}");
        assert!(reply.contains(why), "{reply}");
    }
    assert!(
        !upstream
            .connection_within(std::time::Duration::from_millis(200))
            .await,
        "neither request reached the upstream"
    );
    // HTTP/1.0 had no Host: such a request is still served.
    let (reply, ()) = tokio::join!(
        raw_request(&gateway, b"GET /api/stream HTTP/1.0\r\n\r\n", false),
        async {
            let mut exchange = upstream.accept().await;
            exchange
                .write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    );
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
}

#[tokio::test]
async fn path_confusion_encodings_never_reach_the_upstream() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    for path in [
        "/api/stream/..;/admin",
        "/api/stream/..;jsessionid=1/admin",
        "/api/stream/%c0%ae%c0%ae/admin",
        "/api/stream/%C0%AE./admin",
        "/api/stream/%u002e%u002e/admin",
        "/api/stream/%2e%2e%3b/admin",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
        let reply = raw_request(&gateway, request.as_bytes(), false).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{path}: {reply}");
        assert!(
            reply.contains("\"type\":\"bad_request\""),
            "{path}: {reply}"
        );
    }
    assert!(
        !upstream
            .connection_within(std::time::Duration::from_millis(200))
            .await,
        "no such path reached the upstream"
    );
}

#[test]
fn dot_segments_in_an_upstream_base_path_are_a_located_error() {
    let yaml = "upstreams:
  assistant:
    url: http://127.0.0.1:8000/base/../../admin
routes:
  - name: chat
    match: { path_prefix: /api }
    upstream: assistant
";
    let errors = sse_gateway::config::GatewayConfig::parse(yaml, "test.yaml", &|_| None)
        .expect_err("a base path with dot segments is refused");
    let text = errors.to_string();
    assert!(
        text.contains("test.yaml:3:10: upstreams.assistant.url:"),
        "{text}"
    );
    assert!(text.contains("`..` segments"), "{text}");
}

#[tokio::test]
async fn config_shows_no_value_that_came_from_the_environment() {
    let yaml = "upstreams:
  assistant:
    url: http://127.0.0.1:9
routes:
  - name: chat
    match: { path_prefix: /api/stream }
    upstream: assistant
    stream:
      rules:
        - replace: { pattern: '${RULE_PATTERN}', with: 'tenant-${RULE_WITH}' }
        - drop: { pattern: '^:', name: '${RULE_NAME}' }
      terminator: { data: '${TERMINATOR}' }
      stuck_after: ${STUCK_AFTER}
";
    let secrets = [
        ("RULE_PATTERN", "sk-pattern-0451"),
        ("RULE_WITH", "sk-with-0452"),
        ("RULE_NAME", "sk-name-0453"),
        ("TERMINATOR", "sk-terminator-0454"),
        ("STUCK_AFTER", "17s"),
    ];
    let gateway = start_gateway_with_env(yaml, &secrets).await;
    let response = get(gateway.admin_addr, "/config").await;
    assert_eq!(response.status(), http::StatusCode::OK);
    let text = body_text(response).await;
    for (name, value) in secrets {
        assert!(!text.contains(value), "{name}'s value is shown: {text}");
    }
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let stream = &config["routes"][0]["stream"];
    assert_eq!(stream["rules"][0]["replace"]["pattern"], "<redacted>");
    assert_eq!(stream["rules"][0]["replace"]["with"], "<redacted>");
    assert_eq!(stream["rules"][1]["name"], "<redacted>");
    assert_eq!(
        stream["rules"][1]["drop"]["pattern"], "^:",
        "literal values stay"
    );
    assert_eq!(stream["terminator"]["data"], "<redacted>");
    assert_eq!(stream["stuck_after"], "<redacted>");
}

#[tokio::test]
async fn an_upstream_101_is_an_upstream_error_not_a_reply() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&two_routes(&upstream.url(), "2s", "")).await;
    for route in ROUTES {
        let request = format!("GET /{route} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
        let (reply, ()) = tokio::join!(raw_request(&gateway, request.as_bytes(), false), async {
            let mut exchange = upstream.accept().await;
            exchange
                .write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
                .await;
            // The upstream now speaks another protocol, and keeps the connection.
            exchange.write(b"\x81\x05hello").await;
            let _ = exchange.closed_within(LIVENESS).await;
        });
        assert!(reply.starts_with("HTTP/1.1 502"), "{route}: {reply}");
        assert!(
            reply.contains("\"type\":\"upstream_error\""),
            "{route}: {reply}"
        );
        assert!(reply.contains("101"), "{route}: {reply}");
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        let failed = metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", route), ("kind", "failed")],
        );
        assert_eq!(failed, 1.0, "{route}");
    }
}

/// An upstream that answers one request per connection with a `Content-Length` body
/// and then closes the socket, without the `Connection: close` that would tell the
/// gateway not to reuse it. It closes the moment the next request arrives: the race
/// of a real server's keep-alive timeout, lost by the gateway every time.
async fn one_shot_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_until(&mut stream, b"\r\n\r\n").await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let mut next = [0u8; 1];
                let _ = tokio::time::timeout(LIVENESS, stream.read(&mut next)).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn reused_connections_an_upstream_closed_are_retried_for_idempotent_requests() {
    let gateway = start_gateway(&two_routes(&one_shot_upstream().await, "2s", "")).await;
    // Pipelined: the gateway takes the next request the moment the last answer is out,
    // when the upstream's close may not have been seen yet.
    for round in 0..3 {
        let request = "GET /pooled HTTP/1.1\r\nhost: gw\r\n\r\n".repeat(2)
            + "GET /pooled HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
        let reply = raw_request(&gateway, request.as_bytes(), false).await;
        assert_eq!(
            reply.matches("HTTP/1.1 200 OK").count(),
            3,
            "round {round}: {reply}"
        );
    }
    // One after another, each on a new client connection.
    for _ in 0..3 {
        let response = get(gateway.addr, "/pooled").await;
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(body_text(response).await, "ok");
    }
    let metrics = gateway.metrics().await;
    assert_eq!(upstream_errors(&metrics, "pooled"), 0.0);
}

#[tokio::test]
async fn a_request_with_a_body_is_never_sent_twice() {
    let gateway = start_gateway(&two_routes(&one_shot_upstream().await, "2s", "")).await;
    let response = get(gateway.addr, "/pooled").await;
    assert_eq!(response.status(), http::StatusCode::OK);
    body_text(response).await;
    // The pooled connection that answered is closed under this POST: the upstream may
    // have acted on it, so the client hears of the failure instead.
    let request = http::Request::post("/pooled")
        .header("host", "gw")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = send(gateway.addr, request).await;
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    let metrics = gateway.metrics().await;
    let failed = metrics.get(
        "sse_gateway_upstream_errors_total",
        &[("route", "pooled"), ("kind", "failed")],
    );
    assert_eq!(failed, 1.0);
}

#[tokio::test]
async fn a_dripping_body_is_the_clients_408_when_header_timeout_passes() {
    // Each byte comes well within body_timeout, the whole body never: the upstream's
    // header_timeout passes while the gateway still waits for the client.
    let yaml = two_routes(&silent_upstream().await, "500ms", "body_timeout: 10s");
    let gateway = start_gateway(&yaml).await;
    for route in ROUTES {
        let client = TcpStream::connect(gateway.addr).await.unwrap();
        let (mut reader, mut writer) = client.into_split();
        let head = format!(
            "POST /{route} HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await.unwrap();
        let drip = tokio::spawn(async move {
            for _ in 0..1000 {
                if writer.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        let mut reply = Vec::new();
        tokio::time::timeout(LIVENESS, reader.read_to_end(&mut reply))
            .await
            .expect("the gateway answers and closes in time")
            .ok();
        drip.abort();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{route}: {reply}");
    }
    let metrics = gateway.metrics().await;
    for route in ROUTES {
        assert_eq!(
            client_errors(&metrics, route, "body_timeout"),
            1.0,
            "{route}"
        );
        assert_eq!(upstream_errors(&metrics, route), 0.0, "{route}");
    }
}
