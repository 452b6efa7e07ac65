//! The admin listener: health, readiness, metrics and the redacted config, and none of
//! it on the public listener.

mod support;

use http::StatusCode;
use support::*;

const SECRET: &str = "sk-live-very-secret";

fn config() -> String {
    String::from(
        "upstreams:
  assistant:
    url: \"${UPSTREAM_URL}\"
routes:
  - name: chat
    match: { path_prefix: /api/stream }
    upstream: assistant
    request:
      headers:
        set:
          x-api-key: \"${API_KEY}\"
          x-static: literal-but-still-a-header-value
    stream:
      terminator: { data: \"[DONE]\" }
  - name: everything-else
    match: { path_prefix: / }
    upstream: assistant
",
    )
}

async fn setup() -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let url = upstream.url();
    let gateway = start_gateway_with_env(
        &config(),
        &[("UPSTREAM_URL", url.as_str()), ("API_KEY", SECRET)],
    )
    .await;
    (upstream, gateway)
}

#[tokio::test]
async fn health_and_readiness() {
    let (_upstream, gateway) = setup().await;
    let healthz = get(gateway.admin_addr, "/healthz").await;
    assert_eq!(healthz.status(), StatusCode::OK);
    assert_eq!(body_text(healthz).await, "ok\n");
    let readyz = get(gateway.admin_addr, "/readyz").await;
    assert_eq!(readyz.status(), StatusCode::OK);
    let unknown = get(gateway.admin_addr, "/nope").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(unknown).await["error"]["type"], "not_found");
}

#[tokio::test]
async fn metrics_include_build_info_process_metrics_and_every_family() {
    let (_upstream, gateway) = setup().await;
    let response = get(gateway.admin_addr, "/metrics").await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let metrics = Metrics::parse(&body_text(response).await);
    assert_eq!(
        metrics.get(
            "sse_gateway_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("SSE_GATEWAY_COMMIT"))
            ]
        ),
        1.0
    );
    assert!(metrics.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(metrics.get("process_open_fds", &[]) > 0.0);
    for family in [
        "sse_gateway_streams_active",
        "sse_gateway_streams_stuck",
        "sse_gateway_stuck_total",
        "sse_gateway_stream_duration_seconds",
        "sse_gateway_stream_first_event_seconds",
        "sse_gateway_time_to_first_token_seconds",
        "sse_gateway_inter_token_seconds",
        "sse_gateway_tokens_total",
        "sse_gateway_stream_events_total",
        "sse_gateway_stream_bytes_total",
        "sse_gateway_upstream_errors_total",
        "sse_gateway_config_reloads_total",
    ] {
        assert!(
            metrics.text.contains(&format!("# TYPE {family} ")),
            "{family} is exported before any traffic"
        );
    }
    // Buckets made for streams: 50 ms to an hour, and 5 ms to a minute.
    assert!(metrics.text.contains(
        "sse_gateway_stream_duration_seconds_bucket{outcome=\"terminator\",route=\"chat\",le=\"0.05\"}"
    ));
    assert!(metrics.text.contains(
        "sse_gateway_stream_duration_seconds_bucket{outcome=\"terminator\",route=\"chat\",le=\"3600\"}"
    ));
    assert!(metrics
        .text
        .contains("sse_gateway_stream_first_event_seconds_bucket{route=\"chat\",le=\"0.005\"}"));
    assert!(metrics
        .text
        .contains("sse_gateway_stream_first_event_seconds_bucket{route=\"chat\",le=\"60\"}"));
}

#[tokio::test]
async fn config_is_shown_with_secrets_redacted() {
    let (upstream, gateway) = setup().await;
    let response = get(gateway.admin_addr, "/config").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        !text.contains(&upstream.url()),
        "a url from ${{VAR}} is redacted: {text}"
    );
    assert!(!text.contains("literal-but-still-a-header-value"), "{text}");
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["upstreams"]["assistant"]["url"], "<redacted>");
    let chat = &config["routes"][0];
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["request"]["headers"]["set"]["x-api-key"], "<redacted>");
    assert_eq!(chat["request"]["headers"]["set"]["x-static"], "<redacted>");
    // Defaults are filled in, in the file's own notation.
    assert_eq!(chat["stream"]["idle_timeout"], "5m");
    assert_eq!(chat["stream"]["stuck_after"], "30s");
    assert_eq!(chat["stream"]["heartbeat"], "15s");
    assert_eq!(chat["stream"]["max_duration"], "30m");
    assert_eq!(
        chat["stream"]["terminator"]["on_upstream_eof"],
        "synthesize"
    );
    assert_eq!(config["upstreams"]["assistant"]["header_timeout"], "30s");
}

#[tokio::test]
async fn admin_endpoints_are_not_on_the_public_listener() {
    let (upstream, gateway) = setup().await;
    for path in ["/metrics", "/healthz", "/readyz", "/config"] {
        // The catch-all route owns these paths on the public port: they go to the
        // upstream like any other path, and the gateway's own answers never appear.
        let (response, seen) = tokio::join!(get(gateway.addr, path), async {
            let mut exchange = upstream.accept().await;
            exchange
                .write(b"HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n")
                .await;
            exchange.request.target
        });
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT, "{path}");
        assert_eq!(seen, path);
    }
}

/// The admin port speaks HTTP/1 only: an h2c client (which could hold its streams open
/// by granting no flow-control window, out of reach of the connection cap's eviction)
/// is closed, and probes go on being answered.
#[tokio::test]
async fn the_admin_port_does_not_serve_h2c() {
    let (_upstream, gateway) = setup().await;
    let stream = tokio::net::TcpStream::connect(gateway.admin_addr)
        .await
        .unwrap();
    let request = http::Request::get(format!("http://{}/healthz", gateway.admin_addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let h2 = async {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    };
    let answered = tokio::time::timeout(LIVENESS, h2)
        .await
        .expect("an end in time");
    assert!(answered.is_err(), "no h2 answer: {answered:?}");
    let response = get(gateway.admin_addr, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
}
