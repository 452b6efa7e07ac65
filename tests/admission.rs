//! Route limits through the real proxy on real sockets: the request over a limit gets
//! one 429 in the route's error shape before anything reaches the upstream, and a
//! slot comes back on every ending (the upstream's end, the client leaving, a timeout,
//! the drain), read back from `/metrics`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

const CHAT: &str = "    stream:\n      protocol: openai-chat\n      idle_timeout: IDLE\n";

fn config(upstream: &ScriptedUpstream, limits: &str, idle: &str) -> String {
    one_route_config(
        &upstream.url(),
        &format!("{}    limits: {limits}\n", CHAT.replace("IDLE", idle)),
    )
}

fn as_client(gateway: &TestGateway, who: &str) -> Request<Full<Bytes>> {
    Request::get("/api/stream")
        .header("host", gateway.addr.to_string())
        .header("authorization", format!("Bearer {who}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn in_flight(metrics: &Metrics) -> f64 {
    metrics.route_value("sse_gateway_admission_streams", "chat")
}

fn rejected(metrics: &Metrics, limit: &str) -> f64 {
    metrics.get(
        "sse_gateway_admission_rejected_total",
        &[("route", "chat"), ("limit", limit)],
    )
}

/// Opens a stream: the request, and the upstream exchange that answers it with a
/// role-only chunk (the stream stays open).
async fn open(gateway: &TestGateway, upstream: &ScriptedUpstream, who: &str) -> (Events, Exchange) {
    let (response, exchange) = tokio::join!(send(gateway.addr, as_client(gateway, who)), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n")
            .await;
        exchange
    });
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response.into_body());
    assert!(next_data(&mut events).await.is_some());
    (events, exchange)
}

/// Asserts a request is refused with the 429 of the openai-chat shape and that the
/// upstream saw no connection for it.
async fn assert_refused(gateway: &TestGateway, upstream: &ScriptedUpstream, who: &str) {
    let response = send(gateway.addr, as_client(gateway, who)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["x-sse-gateway-error"],
        "too_many_requests"
    );
    let body = body_json(response).await;
    assert_eq!(body["error"]["type"], "too_many_requests", "{body}");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("retry"));
    assert!(
        !upstream.connection_within(Duration::from_millis(100)).await,
        "a refused request must not reach the upstream"
    );
}

#[tokio::test]
async fn one_stream_over_the_limit_gets_one_429_and_an_ended_stream_frees_its_slot() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream, "{ max_streams: 2 }", "5m")).await;
    let (_first, mut first_upstream) = open(&gateway, &upstream, "a").await;
    let (_second, _second_upstream) = open(&gateway, &upstream, "b").await;
    assert_refused(&gateway, &upstream, "c").await;
    let metrics = gateway.metrics().await;
    assert_eq!(in_flight(&metrics), 2.0);
    assert_eq!(
        metrics.route_value("sse_gateway_admission_max_streams", "chat"),
        2.0
    );
    assert_eq!(rejected(&metrics, "route"), 1.0);
    assert_eq!(rejected(&metrics, "per_client"), 0.0);

    // The first stream ends normally: its slot is free for the next request.
    first_upstream
        .send_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
        .await;
    first_upstream.end_chunks().await;
    gateway
        .metrics_until("the ended stream's slot freed", |m| in_flight(m) == 1.0)
        .await;
    let (_third, _third_upstream) = open(&gateway, &upstream, "c").await;
    assert_eq!(rejected(&gateway.metrics().await, "route"), 1.0);
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_slot() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream, "{ max_streams: 1 }", "5m")).await;
    let (events, mut exchange) = open(&gateway, &upstream, "a").await;
    assert_refused(&gateway, &upstream, "b").await;
    drop(events);
    assert!(exchange.closed_within(LIVENESS).await);
    gateway
        .metrics_until("the left stream's slot freed", |m| in_flight(m) == 0.0)
        .await;
    let _again = open(&gateway, &upstream, "b").await;
}

#[tokio::test]
async fn a_stream_ended_by_its_idle_timeout_frees_its_slot() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream, "{ max_streams: 1 }", "300ms")).await;
    let (mut events, _exchange) = open(&gateway, &upstream, "a").await;
    // The timeout's error event, then the end.
    let error = next_data(&mut events).await.expect("an error event");
    assert!(String::from_utf8_lossy(&error).contains("upstream_incomplete"));
    while next_data(&mut events).await.is_some() {}
    gateway
        .metrics_until("the timed-out stream's slot freed", |m| in_flight(m) == 0.0)
        .await;
    let _again = open(&gateway, &upstream, "b").await;
}

#[tokio::test]
async fn the_per_client_limit_counts_each_authorization_apart() {
    let upstream = ScriptedUpstream::bind().await;
    let limits = "{ max_streams: 10, per_client: { header: authorization, max_streams: 1 } }";
    let gateway = start_gateway(&config(&upstream, limits, "5m")).await;
    let (alice, _alice_upstream) = open(&gateway, &upstream, "alice").await;
    assert_refused(&gateway, &upstream, "alice").await;
    let (_bob, _bob_upstream) = open(&gateway, &upstream, "bob").await;
    let metrics = gateway.metrics().await;
    assert_eq!(rejected(&metrics, "per_client"), 1.0);
    assert_eq!(rejected(&metrics, "route"), 0.0);
    assert_eq!(in_flight(&metrics), 2.0);
    // The key is a hash: the header's value appears nowhere the operator looks.
    assert!(!metrics.text.contains("alice"));
    drop(alice);
    gateway
        .metrics_until("alice's slot freed", |m| in_flight(m) == 1.0)
        .await;
    let _alice_again = open(&gateway, &upstream, "alice").await;
}

#[tokio::test]
async fn the_drain_frees_every_slot() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream, "{ max_streams: 3 }", "5m")).await;
    let metrics = gateway.gateway().metrics().clone();
    let (mut events, _exchange) = open(&gateway, &upstream, "a").await;
    let reader = tokio::spawn(async move { while next_data(&mut events).await.is_some() {} });
    gateway.shutdown().await;
    tokio::time::timeout(LIVENESS, reader)
        .await
        .expect("the drain ends the stream")
        .unwrap();
    let text = metrics.encode();
    let parsed = Metrics::parse(&text);
    assert_eq!(in_flight(&parsed), 0.0, "{text}");
}

#[tokio::test]
async fn no_slot_leaks_after_many_streams_that_end_every_way() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream, "{ max_streams: 4 }", "5m")).await;
    for round in 0..10 {
        let mut open_streams = Vec::new();
        for i in 0..4 {
            open_streams.push(open(&gateway, &upstream, &format!("c{i}")).await);
        }
        assert_refused(&gateway, &upstream, "extra").await;
        for (i, (events, mut exchange)) in open_streams.into_iter().enumerate() {
            match (round + i) % 3 {
                // The upstream ends the answer.
                0 => {
                    exchange
                        .send_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
                        .await;
                    exchange.end_chunks().await;
                    let mut events = events;
                    while next_data(&mut events).await.is_some() {}
                }
                // The upstream resets.
                1 => {
                    exchange.reset();
                    let mut events = events;
                    while next_data(&mut events).await.is_some() {}
                }
                // The client leaves.
                _ => drop(events),
            }
        }
        gateway
            .metrics_until("every slot freed", |m| in_flight(m) == 0.0)
            .await;
    }
    assert_eq!(rejected(&gateway.metrics().await, "route"), 10.0);
}

/// A reload that takes `limits` off a route takes its limit off the dashboard too,
/// and so does one that renames the route.
#[tokio::test]
async fn a_reload_that_removes_the_limits_or_the_route_removes_the_limit_gauge() {
    let upstream = ScriptedUpstream::bind().await;
    let limited = config(&upstream, "{ max_streams: 2 }", "5m");
    let unlimited = one_route_config(&upstream.url(), &CHAT.replace("IDLE", "5m"));
    let renamed = limited.replace("name: chat", "name: chat-v2");
    for (reload, what) in [
        (&unlimited, "the route has no limits any more"),
        (&renamed, "the route is gone"),
    ] {
        let gateway = start_gateway(&limited).await;
        let metrics = gateway.metrics().await;
        assert_eq!(
            metrics.route_value("sse_gateway_admission_max_streams", "chat"),
            2.0
        );
        gateway.reload(reload).await;
        let metrics = gateway.metrics().await;
        assert_eq!(
            metrics.find("sse_gateway_admission_max_streams", &[("route", "chat")]),
            None,
            "{what}"
        );
    }
}

/// An operator adds `max_streams` to shed load: the streams already open count
/// against it (they were admitted without a limit, and counted all the same).
#[tokio::test]
async fn limits_a_reload_adds_count_the_streams_already_open() {
    let upstream = ScriptedUpstream::bind().await;
    let unlimited = one_route_config(&upstream.url(), &CHAT.replace("IDLE", "5m"));
    let gateway = start_gateway(&unlimited).await;
    let (_first, _first_upstream) = open(&gateway, &upstream, "a").await;
    assert_eq!(in_flight(&gateway.metrics().await), 1.0);
    gateway
        .reload(&config(&upstream, "{ max_streams: 1 }", "5m"))
        .await;
    assert_refused(&gateway, &upstream, "b").await;
}
