//! Routing through a real gateway: longest prefix, method filter, 404/405/400 in the one
//! JSON error shape, and paths that try to escape their route.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ROUTES: &str = "\
upstreams:
  assistant: { url: UPSTREAM }
routes:
  - name: stream
    match: { path_prefix: /api/stream, methods: [GET, POST] }
    upstream: assistant
  - name: api
    match: { path_prefix: /api }
    upstream: assistant
  - name: health
    match: { path: /healthz, methods: [GET] }
    upstream: assistant
";

async fn setup() -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&ROUTES.replace("UPSTREAM", &upstream.url())).await;
    (upstream, gateway)
}

/// Sends `method path`, answers at the upstream with 204, returns the path the
/// upstream saw.
async fn routed_path(
    upstream: &ScriptedUpstream,
    gateway: &TestGateway,
    method: Method,
    path: &str,
) -> String {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, seen) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        exchange.request.target.clone()
    });
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    seen
}

#[tokio::test]
async fn longest_segment_aware_prefix_owns_the_request() {
    let (upstream, gateway) = setup().await;
    for (method, path) in [
        (Method::GET, "/api/stream"),
        (Method::POST, "/api/stream/sub?x=1"),
        (Method::GET, "/api/streaming"),
        (Method::GET, "/api"),
        (Method::GET, "/healthz"),
    ] {
        assert_eq!(routed_path(&upstream, &gateway, method, path).await, path);
    }
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let (_upstream, gateway) = setup().await;
    for path in ["/nope", "/apix", "/healthz/more", "//api/stream"] {
        let response = get(gateway.addr, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-sse-gateway-error"], "not_found");
        let json = body_json(response).await;
        assert_eq!(json["error"]["type"], "not_found");
        assert!(json["error"]["message"].as_str().unwrap().contains(path));
        // The one word for "no route", as in the metric label and the log line.
        assert_eq!(json["error"]["route"], "unmatched");
    }
    // Unmatched requests share one route label: paths never become label values.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        4.0
    );
    assert!(!metrics.text.contains("/nope"));
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let (_upstream, gateway) = setup().await;
    let request = Request::delete("/api/stream/x")
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send(gateway.addr, request).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let json = body_json(response).await;
    assert_eq!(json["error"]["type"], "method_not_allowed");
    // The path is the route's: the 405 names it and is counted under it.
    assert_eq!(json["error"]["route"], "stream");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_http_requests_total",
            &[("route", "stream"), ("method", "DELETE"), ("status", "405")]
        ),
        1.0
    );
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes_never_reach_a_route() {
    let (upstream, gateway) = setup().await;
    for path in [
        "/api/stream/../../healthz",
        "/api/stream/%2e%2e/%2E%2E/healthz",
        "/api/stream%2f..%2fhealthz",
        "/api/./stream",
        // `%` and a sign and one digit: no percent-encoding (two hex digits follow).
        "/api/stream/%+f",
        // For upstreams that decode twice, stop at a NUL, or normalise Unicode.
        "/api/stream/%252e%252e/healthz",
        "/api/stream/..%00/healthz",
        "/api/stream/\u{ff0e}\u{ff0e}\u{ff0f}healthz",
    ] {
        // A raw request line: no client library gets to normalise the path.
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_until(&mut stream, b"}}").await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400 "), "{path}: {reply}");
        assert!(reply.contains(r#""type":"bad_request""#), "{path}: {reply}");
    }
    assert!(
        !upstream
            .connection_within(std::time::Duration::from_millis(200))
            .await,
        "no tricky path reached the upstream"
    );
}
