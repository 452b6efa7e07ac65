//! A route's browser-facing edge through a real gateway on real sockets: CORS for an
//! `EventSource` on another origin (the exact origin echoed with credentials, `*`
//! without, a refused origin left without the header), preflights answered by the
//! gateway and never forwarded, and `response.headers` set and removed on the
//! upstream's responses and the gateway's own.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use support::*;

const APP: &str = "http://localhost:3000";

const EDGE: &str = "    match: { path_prefix: /api/stream, methods: [GET, POST] }
    cors:
      allow_origins: [\"http://localhost:3000\", \"https://App.Example.com\"]
      allow_credentials: true
      allow_headers: [content-type, x-conversation]
      max_age: 10m
    response:
      headers:
        set:
          x-content-type-options: nosniff
          strict-transport-security: max-age=31536000
        remove: [x-internal-trace, server]
";

/// A config whose one route has `route` (its match and edge sections).
fn config(upstream: &str, route: &str) -> String {
    format!(
        "upstreams:\n  assistant:\n    url: {upstream}\n    header_timeout: 2s\n\
         routes:\n  - name: chat\n    upstream: assistant\n{route}"
    )
}

async fn with_origin(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    origin: &str,
    upstream_headers: &str,
) -> Response {
    let request = Request::get("/api/stream?q=hi")
        .header("host", "gw")
        .header("origin", origin)
        .header("cookie", "session=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, ()) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse(upstream_headers).await;
        exchange.send_chunk(b"data: ok\n\n").await;
        exchange.end_chunks().await;
    });
    response
}

type Response = http::Response<Incoming>;

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn vary(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn an_allowed_origin_with_credentials_gets_itself_echoed_never_a_star() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), EDGE)).await;
    // The upstream's own CORS answer (a `*`) would conflict: the gateway's replaces it.
    let response = with_origin(
        &gateway,
        &upstream,
        APP,
        "access-control-allow-origin: *\r\nx-internal-trace: abc\r\nserver: uvicorn\r\n",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        response
            .headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(vary(&response).contains(&"origin".to_owned()));
    // response.headers: set and removed on the upstream's response.
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&response, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(header(&response, "x-internal-trace"), None);
    assert_eq!(header(&response, "server"), None);
    assert_eq!(body_text(response).await, "data: ok\n\n");

    // Origins compare without regard to case, and the one sent is the one echoed.
    let response = with_origin(&gateway, &upstream, "https://app.example.com", "").await;
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn a_refused_origin_gets_no_allow_origin_and_the_response_still_varies() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), EDGE)).await;
    for origin in ["http://localhost:3001", "https://evil.example", "null"] {
        let response = with_origin(&gateway, &upstream, origin, "").await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        assert_eq!(
            header(&response, "access-control-allow-credentials"),
            None,
            "{origin}"
        );
        assert!(vary(&response).contains(&"origin".to_owned()), "{origin}");
        assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn any_origin_without_credentials_is_a_star() {
    let upstream = ScriptedUpstream::bind().await;
    let route = "    match: { path_prefix: /api/stream }\n    cors: { allow_origins: [\"*\"] }\n";
    let gateway = start_gateway(&config(&upstream.url(), route)).await;
    let response = with_origin(&gateway, &upstream, "https://anyone.example", "").await;
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&response, "access-control-allow-credentials"), None);
}

async fn preflight(gateway: &TestGateway, origin: &str, method: &str, headers: &str) -> Response {
    let mut request = Request::options("/api/stream/chat")
        .header("host", "gw")
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        request = request.header("access-control-request-headers", headers);
    }
    send(gateway.addr, request.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_and_never_forwarded() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), EDGE)).await;

    let allowed = preflight(&gateway, APP, "POST", "content-type,x-conversation").await;
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&allowed, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-methods"),
        Some("POST")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-headers"),
        Some("content-type, x-conversation")
    );
    assert_eq!(header(&allowed, "access-control-max-age"), Some("600"));
    let varies = vary(&allowed);
    for name in [
        "origin",
        "access-control-request-method",
        "access-control-request-headers",
    ] {
        assert!(varies.contains(&name.to_owned()), "{varies:?}");
    }
    assert_eq!(header(&allowed, "x-content-type-options"), Some("nosniff"));

    // A refused origin, a header the route does not allow: 403, no allow-origin.
    for (origin, headers, why) in [
        ("https://evil.example", "", "origin https://evil.example"),
        (APP, "x-secret", "request header x-secret"),
    ] {
        let refused = preflight(&gateway, origin, "GET", headers).await;
        assert_eq!(
            refused.status(),
            StatusCode::FORBIDDEN,
            "{origin} {headers}"
        );
        assert_eq!(header(&refused, "access-control-allow-origin"), None);
        assert_eq!(
            header(&refused, "x-sse-gateway-error"),
            Some("cors_refused")
        );
        let json = body_json(refused).await;
        assert_eq!(json["error"]["route"], "chat");
        assert!(
            json["error"]["message"].as_str().unwrap().contains(why),
            "{json}"
        );
    }

    // A method the route does not take is no preflight the route answers: 405.
    let other = preflight(&gateway, APP, "DELETE", "").await;
    assert_eq!(other.status(), StatusCode::METHOD_NOT_ALLOWED);

    assert!(
        !upstream.connection_within(Duration::from_millis(200)).await,
        "no preflight reached the upstream"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_http_requests_total",
            &[("route", "chat"), ("method", "OPTIONS"), ("status", "204")]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_gateways_own_errors_carry_the_cors_and_response_headers() {
    // Nothing listens on the upstream port: 502, which the page's script must be able
    // to read to show it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gateway = start_gateway(&config(&url, EDGE)).await;
    let request = Request::get("/api/stream?q=hi")
        .header("host", "gw")
        .header("origin", APP)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send(gateway.addr, request).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    // The page may read the error's type and request id (and a 429's Retry-After):
    // none is a CORS-safelisted response header.
    assert_eq!(
        header(&response, "access-control-expose-headers"),
        Some("retry-after, x-request-id, x-sse-gateway-error, x-sse-gateway-stream-id")
    );
}

#[tokio::test]
async fn a_resumable_routes_stop_can_be_preflighted_from_another_origin() {
    let upstream = ScriptedUpstream::bind().await;
    let route = format!("{EDGE}    stream: {{ resume: {{}} }}\n");
    let gateway = start_gateway(&config(&upstream.url(), &route)).await;
    // The route takes GET and POST; a stop is a DELETE with the stream's id, which a
    // page on another origin may send only after its preflight.
    let stop = preflight(&gateway, APP, "DELETE", "content-type").await;
    assert_eq!(stop.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&stop, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&stop, "access-control-allow-methods"),
        Some("DELETE")
    );
    let other = preflight(&gateway, APP, "PUT", "").await;
    assert_eq!(other.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_route_without_cors_adds_nothing_and_forwards_options() {
    let upstream = ScriptedUpstream::bind().await;
    let route = "    match: { path_prefix: /api/stream }\n";
    let gateway = start_gateway(&config(&upstream.url(), route)).await;
    let response = with_origin(&gateway, &upstream, APP, "").await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert!(vary(&response).is_empty());
    // An OPTIONS request is the upstream's to answer there.
    let (response, seen) = tokio::join!(preflight(&gateway, APP, "GET", ""), async {
        let mut exchange = upstream.accept().await;
        exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        exchange.request.method.clone()
    });
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(seen, "OPTIONS");
}

/// `allow_headers: ["*"]`, as many CORS configs write it: any header a preflight asks
/// for is allowed, and the answer names them (a browser ignores a literal `*` on a
/// request with credentials).
#[tokio::test]
async fn a_star_in_allow_headers_allows_any_header_and_names_the_ones_asked_for() {
    let upstream = ScriptedUpstream::bind().await;
    let edge = EDGE.replace("[content-type, x-conversation]", "[\"*\"]");
    let gateway = start_gateway(&config(&upstream.url(), &edge)).await;
    let allowed = preflight(&gateway, APP, "POST", "content-type, x-anything").await;
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&allowed, "access-control-allow-headers"),
        Some("content-type, x-anything")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials"),
        Some("true")
    );
}
