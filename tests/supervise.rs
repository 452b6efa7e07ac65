//! Supervision through the real proxy, read back from `/metrics` over HTTP: every
//! outcome with the bytes the client saw and its histogram count going up by one,
//! stuck streams, heartbeats, and the per-stream counters.

mod support;

use std::time::Duration;

use support::*;

/// A `stream` section with the example route's rules (docs/architecture.md) and the given clocks.
fn route(clocks: &str) -> String {
    format!(
        "    stream:
      rules:
        - repair: orphan_lines
        - drop: {{ pattern: '^:', name: upstream-pings }}
      terminator: {{ data: \"[DONE]\", forward: true, on_upstream_eof: synthesize }}
{clocks}"
    )
}

async fn setup(clocks: &str) -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route(clocks))).await;
    (upstream, gateway)
}

/// A request to the route, answered by the upstream with the event stream's head and
/// nothing more yet.
async fn open_stream(
    upstream: &ScriptedUpstream,
    gateway: &TestGateway,
) -> (http::Response<hyper::body::Incoming>, Exchange) {
    tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    })
}

/// Asserts the outcome's count went from `before` to `before + 1`, and that the stream
/// is no longer active.
async fn assert_one_more(gateway: &TestGateway, outcome: &str, before: f64) -> Metrics {
    let metrics = gateway
        .metrics_until(&format!("outcome {outcome} counted"), |m| {
            m.outcome_count("chat", outcome) > before
        })
        .await;
    assert_eq!(
        metrics.outcome_count("chat", outcome),
        before + 1.0,
        "{}",
        metrics.text
    );
    let metrics = gateway
        .metrics_until("no active stream", |m| {
            m.route_value("sse_gateway_streams_active", "chat") == 0.0
        })
        .await;
    assert_eq!(
        metrics.route_value("sse_gateway_streams_stuck", "chat"),
        0.0
    );
    metrics
}

fn error_event(text: &str) -> serde_json::Value {
    let events = client_events(text);
    let error = events
        .iter()
        .find(|e| e.event == "error")
        .unwrap_or_else(|| panic!("an error event in {text:?}"));
    serde_json::from_str(&error.data).expect("error data is JSON")
}

#[tokio::test]
async fn terminator_outcome_and_the_counters_match_what_was_sent() {
    let (upstream, gateway) = setup("").await;
    let before = gateway.metrics().await.outcome_count("chat", "terminator");
    let upstream_bytes =
        ": ping\n\ndata:\n{\"value\":\"a\"}\n\ndata: {\"value\":\"b\"}\n\ndata:\n[DONE]\n\n";
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(upstream_bytes.as_bytes()).await;
        exchange
    });
    let text = body_text(response).await;
    assert_eq!(
        text,
        "data:{\"value\":\"a\"}\n\ndata: {\"value\":\"b\"}\n\ndata:[DONE]\n\n"
    );

    let metrics = assert_one_more(&gateway, "terminator", before).await;
    let route = |name: &str| metrics.route_value(name, "chat");
    assert_eq!(
        route("sse_gateway_stream_events_total"),
        2.0,
        "the two tokens; the terminator ends it"
    );
    let bytes = |direction| {
        metrics.get(
            "sse_gateway_stream_bytes_total",
            &[("route", "chat"), ("direction", direction)],
        )
    };
    assert_eq!(bytes("upstream"), upstream_bytes.len() as f64);
    assert_eq!(bytes("downstream"), text.len() as f64);
    let hits = |rule| {
        metrics.get(
            "sse_gateway_rule_hits_total",
            &[("route", "chat"), ("rule", rule)],
        )
    };
    assert_eq!(hits("repair#0"), 2.0);
    assert_eq!(hits("upstream-pings"), 1.0);
    assert_eq!(route("sse_gateway_stream_first_event_seconds_count"), 1.0);
    assert!(route("sse_gateway_stream_first_event_seconds_sum") > 0.0);
    assert_eq!(
        metrics.get(
            "sse_gateway_http_requests_total",
            &[("route", "chat"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_eof_outcome_synthesizes_the_terminator() {
    let (upstream, gateway) = setup("").await;
    let before = gateway
        .metrics()
        .await
        .outcome_count("chat", "upstream_eof");
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: {\"value\":\"a\"}\n\n").await;
        exchange.end_chunks().await;
    });
    assert_eq!(
        body_text(response).await,
        "data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n"
    );
    assert_one_more(&gateway, "upstream_eof", before).await;
}

#[tokio::test]
async fn client_closed_outcome_while_the_upstream_is_silent() {
    let (upstream, gateway) = setup("      heartbeat: 0\n").await;
    let before = gateway
        .metrics()
        .await
        .outcome_count("chat", "client_closed");
    let mut client = raw_get(gateway.addr, "/api/stream").await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: {\"value\":\"a\"}\n\n").await;
    read_until(&mut client, b"data: {\"value\":\"a\"}\n\n").await;
    gateway
        .metrics_until("one active stream", |m| {
            m.route_value("sse_gateway_streams_active", "chat") == 1.0
        })
        .await;

    drop(client);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream sees its connection close"
    );
    assert_one_more(&gateway, "client_closed", before).await;
}

#[tokio::test]
async fn idle_timeout_outcome_ends_with_the_error_event_and_terminator() {
    let (upstream, gateway) = setup("      idle_timeout: 500ms\n      heartbeat: 100ms\n").await;
    let before = gateway
        .metrics()
        .await
        .outcome_count("chat", "idle_timeout");
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: {\"value\":\"a\"}\n\n").await;
        // Upstream pings do not count as data: they cannot keep an idle stream alive.
        for _ in 0..20 {
            if exchange.try_send_chunk(b": ping\n\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        exchange
    });
    let text = body_text(response).await;
    let error = error_event(&text);
    assert_eq!(
        error,
        serde_json::json!({"error": {
            "type": "upstream_idle_timeout",
            "message": "no data from upstream for 500ms",
            "route": "chat"
        }})
    );
    assert!(text.starts_with("data: {\"value\":\"a\"}\n\n"), "{text}");
    assert!(text.ends_with("event: error\ndata: {\"error\":{\"type\":\"upstream_idle_timeout\",\"message\":\"no data from upstream for 500ms\",\"route\":\"chat\"}}\n\ndata: [DONE]\n\n"), "{text}");
    assert!(exchange.closed_within(LIVENESS).await);
    assert_one_more(&gateway, "idle_timeout", before).await;
}

#[tokio::test]
async fn max_duration_outcome_ends_a_stream_that_keeps_producing() {
    let (upstream, gateway) = setup("      max_duration: 600ms\n").await;
    let before = gateway
        .metrics()
        .await
        .outcome_count("chat", "max_duration");
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        for i in 0..100 {
            let event = format!("data: {{\"value\":{i}}}\n\n");
            if exchange.try_send_chunk(event.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        exchange
    });
    let text = body_text(response).await;
    let error = error_event(&text);
    assert_eq!(error["error"]["type"], "max_duration");
    assert_eq!(
        error["error"]["message"],
        "stream reached its max_duration of 600ms"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let tokens = client_events(&text)
        .iter()
        .filter(|e| e.data.starts_with("{\"value\""))
        .count();
    assert!(tokens >= 1, "tokens flowed until the deadline: {text}");
    assert_one_more(&gateway, "max_duration", before).await;
}

#[tokio::test]
async fn upstream_error_outcome_on_a_cut_body_and_on_bad_chunking() {
    let (upstream, gateway) = setup("").await;
    let cases: [(&str, &[u8]); 2] = [
        // The connection closes inside a chunk.
        ("cut", b"20\r\ndata: {\"value\":\"half"),
        // A chunk size that is not hex.
        ("bad chunking", b"zz\r\ndata: x\n\n\r\n"),
    ];
    for (case, bytes) in cases {
        let before = gateway
            .metrics()
            .await
            .outcome_count("chat", "upstream_error");
        let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            exchange.send_chunk(b"data: {\"value\":\"a\"}\n\n").await;
            exchange.write(bytes).await;
            drop(exchange);
        });
        let text = body_text(response).await;
        assert!(
            text.starts_with("data: {\"value\":\"a\"}\n\n"),
            "{case}: {text}"
        );
        assert!(
            !text.contains("half"),
            "{case}: the partial event is dropped: {text}"
        );
        let error = error_event(&text);
        assert_eq!(error["error"]["type"], "upstream_error", "{case}");
        assert_eq!(error["error"]["route"], "chat");
        assert!(text.ends_with("data: [DONE]\n\n"), "{case}: {text}");
        let metrics = assert_one_more(&gateway, "upstream_error", before).await;
        let kinds: f64 = ["reset", "body"]
            .iter()
            .map(|kind| {
                metrics.get(
                    "sse_gateway_upstream_errors_total",
                    &[("route", "chat"), ("kind", kind)],
                )
            })
            .sum();
        assert!(
            kinds >= 1.0,
            "{case}: upstream error counted\n{}",
            metrics.text
        );
    }
}

#[tokio::test]
async fn oversize_outcome_is_counted() {
    let (upstream, gateway) = setup("      max_event_size: 1KiB\n").await;
    let before = gateway.metrics().await.outcome_count("chat", "oversize");
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(&[b'x'; 4096]).await;
        exchange
    });
    let text = body_text(response).await;
    assert_eq!(error_event(&text)["error"]["type"], "oversize");
    assert_one_more(&gateway, "oversize", before).await;
}

#[tokio::test]
async fn a_stream_that_only_pings_is_stuck_until_data_resumes() {
    let (upstream, gateway) = setup("      stuck_after: 300ms\n      heartbeat: 0\n").await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"value\":\"a\"}\n\ndata: {\"value\":\"b\"}\n\n")
            .await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    next_data(&mut body).await.unwrap();
    next_data(&mut body).await.unwrap();

    // Only pings from here on: the gauge must show the stream as stuck while they flow.
    let pinger = async {
        let mut stuck_seen = None;
        for _ in 0..100 {
            exchange.send_chunk(b": ping\n\n").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let metrics = gateway.metrics().await;
            if metrics.route_value("sse_gateway_streams_stuck", "chat") == 1.0 {
                stuck_seen = Some(metrics);
                break;
            }
        }
        // Keep pinging while stuck: it stays one stuck period, counted once.
        for _ in 0..8 {
            exchange.send_chunk(b": ping\n\n").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stuck_seen
    };
    let stuck = pinger
        .await
        .expect("the stream was reported stuck while pings flowed");
    assert_eq!(stuck.route_value("sse_gateway_stuck_total", "chat"), 1.0);
    let still = gateway.metrics().await;
    assert_eq!(still.route_value("sse_gateway_streams_stuck", "chat"), 1.0);
    assert_eq!(still.route_value("sse_gateway_stuck_total", "chat"), 1.0);

    exchange.send_chunk(b"data: {\"value\":\"c\"}\n\n").await;
    assert_eq!(
        next_data(&mut body).await.unwrap(),
        "data: {\"value\":\"c\"}\n\n"
    );
    let resumed = gateway.metrics().await;
    assert_eq!(
        resumed.route_value("sse_gateway_streams_stuck", "chat"),
        0.0,
        "data resumed"
    );
    assert_eq!(resumed.route_value("sse_gateway_stuck_total", "chat"), 1.0);

    exchange.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "data: [DONE]\n\n");
    assert_eq!(next_data(&mut body).await, None);
    assert_one_more(&gateway, "terminator", 0.0).await;
}

#[tokio::test]
async fn a_stream_that_ends_while_stuck_leaves_the_gauge_at_zero() {
    let (upstream, gateway) = setup("      stuck_after: 200ms\n      heartbeat: 0\n").await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: {\"value\":\"a\"}\n\n").await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    next_data(&mut body).await.unwrap();
    gateway
        .metrics_until("a stuck stream", |m| {
            m.route_value("sse_gateway_streams_stuck", "chat") == 1.0
        })
        .await;
    exchange.end_chunks().await;
    assert_eq!(next_data(&mut body).await.unwrap(), "data: [DONE]\n\n");
    assert_one_more(&gateway, "upstream_eof", 0.0).await;
}

#[tokio::test]
async fn a_silent_upstream_gets_heartbeats_at_about_the_interval() {
    let (upstream, gateway) = setup("      heartbeat: 200ms\n      stuck_after: 0\n").await;
    let (response, _exchange) = open_stream(&upstream, &gateway).await;
    let mut body = Events::new(response.into_body());
    let window = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut heartbeats = 0;
    while let Ok(frame) = tokio::time::timeout_at(window, next_data(&mut body)).await {
        assert_eq!(frame.unwrap(), ": keep-alive\n\n");
        heartbeats += 1;
    }
    // About 7 in 1.5 s; the bounds only say "periodically, not in a burst".
    assert!(
        (2..=12).contains(&heartbeats),
        "{heartbeats} heartbeats in 1.5 s at 200ms"
    );
    drop(body);
    assert_one_more(&gateway, "client_closed", 0.0).await;
}

#[tokio::test]
async fn the_drain_ends_a_stream_whose_upstream_never_pauses() {
    let (upstream, gateway) = setup("      heartbeat: 0\n").await;
    let (response, exchange) = open_stream(&upstream, &gateway).await;
    let metrics = gateway.gateway().metrics().clone();
    // Whole events in every chunk.
    let events = "data: {\"value\":\"token\"}\n\n".repeat(512);
    let tail = drain_while_the_upstream_never_pauses(gateway, response, exchange, &events).await;
    let error = error_event(&tail[tail.find("event: error").expect("an error event")..]);
    assert_eq!(error["error"]["type"], "shutdown", "{tail}");
    assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
    let parsed = Metrics::parse(&metrics.encode());
    assert_eq!(
        parsed.outcome_count("chat", "shutdown"),
        1.0,
        "{}",
        parsed.text
    );
}
