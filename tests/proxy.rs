//! Proxying through a real gateway to a scripted upstream on real sockets: request
//! translation, header handling, streaming without buffering, disconnects, upstream
//! failures, keep-alive reuse and h2c.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const TRANSLATING_ROUTE: &str = "    request:
      path_prefix: /v1/assistant/stream
      method: POST
      body: query_as_json
      headers:
        set:
          accept: text/event-stream
          x-api-key: \"${ASSISTANT_API_KEY}\"
          x-tenant: \"${TENANT:-public}\"
        remove: [cookie]
";

/// An upstream and a gateway whose one route is [`TRANSLATING_ROUTE`], its API key
/// `api_key`.
async fn translating_gateway(api_key: &str) -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(&upstream.url(), TRANSLATING_ROUTE);
    let gateway = start_gateway_with_env(&yaml, &[("ASSISTANT_API_KEY", api_key)]).await;
    (upstream, gateway)
}

/// Sends `request` through `gateway` while `upstream` answers it with `answer`; the
/// response and the request as the upstream received it.
async fn answered(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    request: Request<Full<Bytes>>,
    answer: &[u8],
) -> (http::Response<hyper::body::Incoming>, RecordedRequest) {
    tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange.write(answer).await;
        exchange.request
    })
}

/// A `method` request to `uri` on host `gw`, without a body.
fn bodiless(method: &str, uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn eventsource_get_becomes_the_upstream_post() {
    let (upstream, gateway) = translating_gateway("sk-test-123").await;

    let request = Request::get("/api/stream/sub?q=hi&conversation=7")
        .header("host", "chat.example")
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer user-token")
        .header("cookie", "session=secret")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, seen) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: ok\n\n").await;
        exchange.end_chunks().await;
        exchange.request
    });

    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/assistant/stream/sub");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body, serde_json::json!({"q": "hi", "conversation": "7"}));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    assert_eq!(seen.header("accept"), Some("text/event-stream"));
    assert_eq!(seen.header("authorization"), Some("Bearer user-token"));
    assert_eq!(seen.header("x-api-key"), Some("sk-test-123"));
    assert_eq!(seen.header("x-tenant"), Some("public"));
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("chat.example"));
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "data: ok\n\n");
}

#[tokio::test]
async fn request_body_streams_through_untranslated() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let payload = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let request = Request::post("/api/stream?keep=1")
        .header("host", "gw")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .unwrap();
    let (response, seen) = answered(
        &gateway,
        &upstream,
        request,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/stream?keep=1");
    assert_eq!(seen.body, payload.as_bytes());
    assert_eq!(body_text(response).await, "ok");
}

/// `query_as_json` makes a body only for requests that bring none: a client that
/// POSTs its own body keeps it (and its query), never replaced by the query's `{}`.
#[tokio::test]
async fn query_as_json_keeps_a_posted_body() {
    let (upstream, gateway) = translating_gateway("k").await;
    let payload = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let request = Request::post("/api/stream?trace=1")
        .header("host", "gw")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .unwrap();
    let (response, seen) = answered(
        &gateway,
        &upstream,
        request,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/assistant/stream?trace=1");
    assert_eq!(seen.body, payload.as_bytes());
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(body_text(response).await, "ok");

    // The same route, a POST without a body: the query becomes the body.
    let request = bodiless("POST", "/api/stream?q=hi");
    let (response, seen) = answered(
        &gateway,
        &upstream,
        request,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(seen.target, "/v1/assistant/stream");
    assert_eq!(seen.body, br#"{"q":"hi"}"#);
    assert_eq!(body_text(response).await, "ok");
}

/// A `HEAD` (a load balancer's probe, a link checker) asks only for the headers a
/// `GET` would get: turned into the route's `POST`, it would start a generation, and
/// its billing, for an answer that is thrown away.
#[tokio::test]
async fn head_is_not_turned_into_the_upstream_post() {
    let (upstream, gateway) = translating_gateway("k").await;
    let request = bodiless("HEAD", "/api/stream?q=hi");
    // The head a GET would get: the answer to a HEAD has no body, whatever it says.
    let (response, seen) = answered(
        &gateway,
        &upstream,
        request,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.target, "/v1/assistant/stream?q=hi");
    assert!(
        seen.body.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&seen.body)
    );
    assert_eq!(seen.header("content-type"), None);
    assert_eq!(seen.header("x-api-key"), Some("k"));

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(body_text(response).await, "");
}

/// On a route without `match.methods`, only a `GET` (`EventSource`) and a `POST` (an
/// SDK) become the route's method: a `DELETE`, `PUT`, `PATCH` or `OPTIONS` means
/// something of its own, and turned into the `POST` it would start a generation.
#[tokio::test]
async fn other_methods_are_not_turned_into_the_upstream_post() {
    let (upstream, gateway) = translating_gateway("k").await;
    for method in ["DELETE", "PUT", "PATCH", "OPTIONS"] {
        let request = bodiless(method, "/api/stream?q=hi");
        let (response, seen) = answered(
            &gateway,
            &upstream,
            request,
            b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 4\r\n\r\nnope",
        )
        .await;
        assert_eq!(seen.method, method);
        // No `query_as_json` body either: the query stays on the URL.
        assert_eq!(seen.target, "/v1/assistant/stream?q=hi", "{method}");
        assert!(seen.body.is_empty(), "{method}: {:?}", seen.body);
        assert_eq!(seen.header("x-api-key"), Some("k"));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body_text(response).await, "nope");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let request = Request::get("/api/stream")
        .header("host", "gw")
        // Naming the gateway's own request id: it still goes upstream.
        .header("connection", "keep-alive, x-client-hop, x-request-id")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, seen) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange
            .start_sse("connection: x-upstream-hop\r\nx-upstream-hop: 1\r\nkeep-alive: timeout=9\r\nproxy-authenticate: Basic\r\nx-upstream-id: abc\r\nx-request-id: upstream-own\r\n")
            .await;
        exchange.end_chunks().await;
        exchange.request
    });
    for name in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(!seen.has_header(name), "upstream saw {name}");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));

    let headers = response.headers();
    for name in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(name), "client saw {name}");
    }
    assert_eq!(headers["x-upstream-id"], "abc");
    // The request's id is the gateway's (the one in its logs and sent upstream), not
    // one the upstream made up.
    assert_eq!(
        Some(headers["x-request-id"].to_str().unwrap()),
        seen.header("x-request-id")
    );
    assert_eq!(headers["cache-control"], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
}

#[tokio::test]
async fn each_event_is_forwarded_before_the_next_is_sent() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    // The upstream sends event N+1 only after the client has received event N through
    // the gateway: any buffering would stall this loop.
    for i in 0..5 {
        let event = format!("data: {{\"token\":{i}}}\n\n");
        exchange.send_chunk(event.as_bytes()).await;
        let received = next_data(&mut body).await.expect("the event arrives");
        assert_eq!(received, event.as_bytes());
    }
    exchange.end_chunks().await;
    assert_eq!(next_data(&mut body).await, None);
}

#[tokio::test]
async fn client_leaving_a_silent_stream_closes_the_upstream_connection() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let mut client = raw_get(gateway.addr, "/api/stream").await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: first\n\n").await;
    read_until(&mut client, b"data: first\n\n").await;

    // The upstream now says nothing; the client goes away.
    drop(client);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream connection is closed once the client has gone"
    );
}

#[tokio::test]
async fn refused_upstream_is_502_json() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = start_gateway(&one_route_config(&format!("http://127.0.0.1:{port}"), "")).await;
    let response = get(gateway.addr, "/api/stream").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["x-sse-gateway-error"],
        "upstream_unavailable"
    );
    let json = body_json(response).await;
    assert_eq!(json["error"]["type"], "upstream_unavailable");
    assert_eq!(json["error"]["route"], "chat");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{json}"
    );
    let metrics = gateway.metrics().await;
    let errors = |kind| {
        metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", "chat"), ("kind", kind)],
        )
    };
    assert_eq!(errors("connect"), 1.0);
    assert_eq!(errors("header_timeout"), 0.0);
    assert_eq!(
        metrics.get(
            "sse_gateway_http_requests_total",
            &[("route", "chat"), ("method", "GET"), ("status", "502")]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_without_headers_in_time_is_504_json() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(&upstream.url(), "")
        .replace("header_timeout: 2s", "header_timeout: 300ms");
    let gateway = start_gateway(&yaml).await;
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), upstream.accept());
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let json = body_json(response).await;
    assert_eq!(json["error"]["type"], "upstream_timeout");
    assert_eq!(json["error"]["route"], "chat");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("300ms"),
        "{json}"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", "chat"), ("kind", "header_timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_reset_before_headers_is_502_json() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.write(b"HTTP/1.1 2").await;
        drop(exchange);
    });
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_json(response).await["error"]["type"], "upstream_error");
}

#[tokio::test]
async fn non_event_stream_responses_pass_through_byte_identical() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream/file"), async {
        let mut exchange = upstream.accept().await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        exchange.write(head.as_bytes()).await;
        exchange.write(&payload).await;
    });
    assert_eq!(
        response.headers()["content-length"],
        payload.len().to_string()
    );
    assert!(!response.headers().contains_key("x-accel-buffering"));
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, payload);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let (first, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream/1"), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none")
            .await;
        exchange
    });
    assert_eq!(body_text(first).await, "one");
    let (second, seen) = tokio::join!(get(gateway.addr, "/api/stream/2"), async {
        let seen = exchange.next_request().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo")
            .await;
        seen
    });
    assert_eq!(seen.target, "/api/stream/2");
    assert_eq!(body_text(second).await, "two");
    assert!(!upstream.connection_within(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn h2c_prior_knowledge_requests_are_proxied() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let mut sender = h2c_client(&gateway).await;
    let request = Request::get(gateway.url("/api/stream?h2=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, seen) = tokio::join!(sender.send_request(request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: over h2\n\n").await;
        exchange.end_chunks().await;
        exchange.request
    });
    let response = response.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.target, "/api/stream?h2=1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "data: over h2\n\n");
}

/// A gateway whose one route matches `/` and sends its requests under `/v1`.
#[tokio::test]
async fn a_catch_all_route_keeps_the_separator_before_the_rest_of_the_path() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = format!(
        "listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  assistant: {{ url: \"{}\" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: assistant
    request: {{ path_prefix: /v1 }}
",
        upstream.url()
    );
    let gateway = start_gateway(&yaml).await;
    for (path, expected) in [
        ("/chat/completions?x=1", "/v1/chat/completions?x=1"),
        ("/", "/v1"),
    ] {
        let (response, seen) = answered(
            &gateway,
            &upstream,
            bodiless("GET", path),
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(seen.target, expected, "{path}");
    }
}

#[tokio::test]
async fn every_x_forwarded_for_line_reaches_the_upstream_in_one_list() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    // The client's own line, then the one a front proxy added.
    let request = Request::get("/api/stream")
        .header("host", "gw")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "203.0.113.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, seen) = answered(
        &gateway,
        &upstream,
        request,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let lines = header_lines(&seen, "x-forwarded-for");
    assert_eq!(lines, ["198.51.100.1, 203.0.113.7, 127.0.0.1"]);
}

/// What the upstream is told of the client's scheme and host when a client at
/// 127.0.0.1, listed in `trusted_proxies` or not, sends `forwarded` beside `Host: gw`.
async fn forwarded_upstream_sees(
    trusted_proxies: &str,
    forwarded: &[(&str, &str)],
) -> (Vec<String>, Vec<String>) {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = format!(
        "trusted_proxies: {trusted_proxies}\n{}",
        one_route_config(&upstream.url(), "")
    );
    let gateway = start_gateway(&yaml).await;
    let mut request = Request::get("/api/stream").header("host", "gw");
    for (name, value) in forwarded {
        request = request.header(*name, *value);
    }
    let (response, seen) = answered(
        &gateway,
        &upstream,
        request.body(Full::new(Bytes::new())).unwrap(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let lines = |name| -> Vec<String> {
        header_lines(&seen, name)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    (lines("x-forwarded-proto"), lines("x-forwarded-host"))
}

#[tokio::test]
async fn a_trusted_proxys_scheme_and_host_reach_the_upstream() {
    // An ingress that ended TLS for https://chat.example.com.
    let ingress = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "chat.example.com"),
    ];
    let (proto, host) = forwarded_upstream_sees("[127.0.0.0/8]", &ingress).await;
    assert_eq!(proto, ["https"]);
    assert_eq!(host, ["chat.example.com"]);

    // A chain of proxies lists the client's scheme first; both lines go up as one.
    let chain = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-proto", "http"),
    ];
    let (proto, host) = forwarded_upstream_sees("[127.0.0.1]", &chain).await;
    assert_eq!(proto, ["https, http"]);
    assert_eq!(host, ["gw"], "no X-Forwarded-Host sent: the client's Host");

    // Schemes go up in lower case, whatever case the proxy wrote them in.
    let shouting = [("x-forwarded-proto", "HTTPS")];
    let (proto, _) = forwarded_upstream_sees("[127.0.0.1]", &shouting).await;
    assert_eq!(proto, ["https"]);
    let mixed = [("x-forwarded-proto", "Https, HTTP")];
    let (proto, _) = forwarded_upstream_sees("[127.0.0.1]", &mixed).await;
    assert_eq!(proto, ["https, http"]);
}

#[tokio::test]
async fn forwarding_headers_from_anyone_else_are_replaced_by_the_connections() {
    let spoofed = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
    ];
    // Trusted ranges that do not hold the client, and no trusted ranges at all.
    for trusted in ["[10.0.0.0/8, \"::1\"]", "[]"] {
        let (proto, host) = forwarded_upstream_sees(trusted, &spoofed).await;
        assert_eq!(proto, ["http"], "trusted_proxies: {trusted}");
        assert_eq!(host, ["gw"], "trusted_proxies: {trusted}");
    }
    // A trusted proxy's scheme that is no scheme is not passed on either.
    let odd = [("x-forwarded-proto", "https, javascript")];
    let (proto, _) = forwarded_upstream_sees("[127.0.0.1]", &odd).await;
    assert_eq!(proto, ["http"]);
}

#[tokio::test]
async fn an_h2_clients_cookie_fields_reach_an_http1_upstream_as_one_line() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let mut sender = h2c_client(&gateway).await;
    let request = Request::get(gateway.url("/api/stream"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (response, seen) = tokio::join!(sender.send_request(request), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        exchange.request
    });
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    let lines = header_lines(&seen, "cookie");
    assert_eq!(lines, ["a=1; b=2"]);
}

/// An upstream answer with both `Transfer-Encoding: chunked` and `Content-Length`, on
/// a route read by the lean reader (`stream`) and on one through the pooled client.
#[tokio::test]
async fn a_chunked_answer_that_also_names_a_length_reaches_the_client_whole() {
    let body = r#"{"error":{"message":"context length exceeded by a lot"}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    for route in ["    stream: {}\n", ""] {
        let upstream = ScriptedUpstream::bind().await;
        let gateway = start_gateway(&one_route_config(&upstream.url(), route)).await;
        let (response, _) = answered(
            &gateway,
            &upstream,
            bodiless("GET", "/api/stream"),
            answer.as_bytes(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_ne!(
            response
                .headers()
                .get("content-length")
                .map(http::HeaderValue::as_bytes),
            Some(&b"5"[..]),
            "{route:?}"
        );
        let received = tokio::time::timeout(LIVENESS, response.into_body().collect())
            .await
            .expect("the body ends")
            .expect("the body is whole");
        assert_eq!(received.to_bytes(), body.as_bytes(), "{route:?}");
    }
}

/// `102 Processing` before the answer: an interim answer to skip, on the lean reader
/// and on the pooled client alike.
#[tokio::test]
async fn an_interim_102_before_the_answer_is_skipped() {
    let answer = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 9\r\n\r\ndata: x\n\n";
    for route in ["    stream: {}\n", ""] {
        let upstream = ScriptedUpstream::bind().await;
        let gateway = start_gateway(&one_route_config(&upstream.url(), route)).await;
        let (response, _) =
            answered(&gateway, &upstream, bodiless("GET", "/api/stream"), answer).await;
        assert_eq!(response.status(), StatusCode::OK, "{route:?}");
        assert!(
            body_text(response).await.starts_with("data: x\n\n"),
            "{route:?}"
        );
    }
}

/// Every line of header `name` the upstream received, in order.
fn header_lines<'a>(seen: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    seen.headers
        .iter()
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
        .collect()
}

/// An h2 connection with prior knowledge (h2c) to the gateway.
async fn h2c_client(gateway: &TestGateway) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// An HTTP/1.0 request may come without `Host`: a client that is not a trusted proxy
/// must not get its own `X-Forwarded-Host` through then either.
#[tokio::test]
async fn an_untrusted_clients_forwarded_host_is_dropped_when_it_sends_no_host() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET /api/stream HTTP/1.0\r\nx-forwarded-host: bank.example\r\n\r\n")
        .await
        .unwrap();
    let mut exchange = upstream.accept().await;
    exchange
        .write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(
        header_lines(&exchange.request, "x-forwarded-host"),
        Vec::<&str>::new()
    );
}

/// On a dual-stack `[::]` listener an IPv4 peer is `::ffff:a.b.c.d`, as
/// `X-Forwarded-For` shows it: that address, listed as such, is trusted.
#[tokio::test]
async fn an_ipv4_mapped_entry_trusts_the_ipv4_peer_of_a_dual_stack_listener() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = format!(
        "trusted_proxies: [\"::ffff:127.0.0.1\"]\n{}",
        one_route_config(&upstream.url(), "")
    );
    let mut config =
        sse_gateway::config::GatewayConfig::parse(&yaml, "test.yaml", &|_| None).unwrap();
    config.listen = "[::]:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let running = sse_gateway::gateway::start_with(
        config,
        sse_gateway::listener::ConnectionLimits::default(),
    )
    .await
    .expect("gateway starts");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], running.local_addr().port()));
    let request = Request::get("/api/stream")
        .header("host", "gw")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, seen) = tokio::join!(send(addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        exchange.request
    });
    assert_eq!(header_lines(&seen, "x-forwarded-for"), ["::ffff:127.0.0.1"]);
    assert_eq!(header_lines(&seen, "x-forwarded-proto"), ["https"]);
    drop(running);
}
