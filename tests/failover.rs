//! Endpoints, retries before the first content event, `Retry-After`, the retry budget
//! and passive health, through the real proxy with two or three scripted upstreams on
//! real sockets: what the client sees (bytes, events), what each upstream saw, and
//! the counts in `/metrics`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

const ROLE: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const CONTENT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n";
const FINISH: &[u8] =
    b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

/// A port nothing listens on.
async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// One upstream `assistant` with `endpoints` (name, url), and the route `chat` with
/// the openai-chat preset and `retry`.
fn config(endpoints: &[(&str, &str)], upstream_extra: &str, retry: &str) -> String {
    let mut list = String::new();
    for (name, url) in endpoints {
        list.push_str(&format!("      - {{ name: {name}, url: \"{url}\" }}\n"));
    }
    format!(
        "upstreams:\n  assistant:\n    header_timeout: 1s\n    endpoints:\n{list}{upstream_extra}\
         routes:\n  - name: chat\n    match: {{ path_prefix: /api/stream }}\n    upstream: assistant\n\
         \x20   stream: {{ protocol: openai-chat }}\n    retry: {retry}\n"
    )
}

/// Endpoints `a` and `b`, and a gateway whose route retries with `clocks` (flow-style
/// keys of its `stream` section) beside the preset.
async fn two_endpoints(clocks: &str) -> (ScriptedUpstream, ScriptedUpstream, TestGateway) {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let yaml = config(&[("a", &a.url()), ("b", &b.url())], "", "{}").replace(
        "stream: { protocol: openai-chat }",
        &format!("stream: {{ protocol: openai-chat, {clocks} }}"),
    );
    let gateway = start_gateway(&yaml).await;
    (a, b, gateway)
}

/// Endpoints `a` and `b`, and a gateway whose route retries by default.
async fn a_and_b() -> (ScriptedUpstream, ScriptedUpstream, TestGateway) {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let gateway = start_gateway(&config(&[("a", &a.url()), ("b", &b.url())], "", "{}")).await;
    (a, b, gateway)
}

/// Answers `exchange` with a whole, clean stream.
async fn answer(exchange: &mut Exchange) {
    exchange.start_sse("").await;
    exchange.send_chunk(ROLE).await;
    exchange.send_chunk(CONTENT).await;
    exchange.send_chunk(FINISH).await;
    exchange.end_chunks().await;
}

fn whole_answer() -> String {
    [ROLE, CONTENT, FINISH]
        .iter()
        .map(|b| String::from_utf8_lossy(b))
        .collect()
}

/// A request that `upstream` answers whole; what the client read.
async fn answered_by(gateway: &TestGateway, upstream: &ScriptedUpstream) -> String {
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        answer(&mut exchange).await;
        exchange
    });
    body_text(response).await
}

/// A request that `failing` answers `503` and `answering` then answers whole; what the
/// client read.
async fn failed_over(
    gateway: &TestGateway,
    failing: &ScriptedUpstream,
    answering: &ScriptedUpstream,
) -> String {
    let (response, _, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        async {
            let mut exchange = failing.accept().await;
            exchange
                .write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
            exchange
        },
        async {
            let mut exchange = answering.accept().await;
            answer(&mut exchange).await;
            exchange
        }
    );
    body_text(response).await
}

fn attempts(metrics: &Metrics, endpoint: &str, result: &str) -> f64 {
    metrics.get(
        "sse_gateway_upstream_attempts_total",
        &[
            ("route", "chat"),
            ("endpoint", endpoint),
            ("result", result),
        ],
    )
}

fn retries(metrics: &Metrics, reason: &str) -> f64 {
    metrics.get(
        "sse_gateway_upstream_retries_total",
        &[("route", "chat"), ("reason", reason)],
    )
}

/// The endpoint's health gauge; the series must be exported.
fn healthy(metrics: &Metrics, endpoint: &str) -> f64 {
    metrics
        .find(
            "sse_gateway_upstream_endpoint_healthy",
            &[("upstream", "assistant"), ("endpoint", endpoint)],
        )
        .unwrap_or_else(|| panic!("no health series for {endpoint}:\n{}", metrics.text))
}

fn upstream_errors(metrics: &Metrics, kind: &str) -> f64 {
    metrics.get(
        "sse_gateway_upstream_errors_total",
        &[("route", "chat"), ("kind", kind)],
    )
}

/// The client never sees the refused endpoint, but the operator must: a failover hides
/// the failure from the request, not from the upstream errors an alert watches.
#[tokio::test]
async fn a_refused_first_endpoint_is_skipped_for_the_next() {
    let b = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(
        &[("a", &refused_url().await), ("b", &b.url())],
        "",
        "{}",
    ))
    .await;
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = b.accept().await;
        answer(&mut exchange).await;
        exchange
    });
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "connect"), 1.0, "{}", metrics.text);
    assert_eq!(attempts(&metrics, "b", "success"), 1.0);
    assert_eq!(retries(&metrics, "connect"), 1.0);
    assert_eq!(
        upstream_errors(&metrics, "connect"),
        1.0,
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn slow_headers_are_a_timeout_and_retried() {
    let (a, b, gateway) = a_and_b().await;
    let (response, _silent, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        // Takes the request and never answers.
        a.accept(),
        async {
            let mut exchange = b.accept().await;
            answer(&mut exchange).await;
            exchange
        }
    );
    assert_eq!(body_text(response).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "timeout"), 1.0, "{}", metrics.text);
    assert_eq!(retries(&metrics, "timeout"), 1.0);
    assert_eq!(upstream_errors(&metrics, "header_timeout"), 1.0);
}

#[tokio::test]
async fn a_503_is_retried_and_the_client_sees_only_the_answer() {
    let (a, b, gateway) = a_and_b().await;
    let (response, _, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        async {
            let mut exchange = a.accept().await;
            exchange
                .write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                .await;
            exchange
        },
        async {
            let mut exchange = b.accept().await;
            answer(&mut exchange).await;
            exchange
        }
    );
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "status_503"), 1.0);
    assert_eq!(retries(&metrics, "status_503"), 1.0);
    assert_eq!(upstream_errors(&metrics, "status"), 1.0);
}

/// A `500` is not tried again (it may be this request's alone) and leaves the
/// endpoint's health as it was, but it is no success: an assistant that answers
/// everything with `500` shows in the attempts and in the upstream errors an alert
/// watches.
#[tokio::test]
async fn a_500_reaches_the_client_and_counts_as_an_upstream_error_not_a_success() {
    let (a, _b, gateway) = a_and_b().await;
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = a.accept().await;
        exchange
            .write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!")
            .await;
        exchange
    });
    assert_eq!(response.status(), 500);
    assert_eq!(body_text(response).await, "oops!");
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "status_5xx"), 1.0);
    assert_eq!(attempts(&metrics, "a", "success"), 0.0);
    assert_eq!(retries(&metrics, "status_5xx"), 0.0);
    assert_eq!(upstream_errors(&metrics, "status"), 1.0);
    assert_eq!(healthy(&metrics, "a"), 1.0);
    assert_eq!(attempts(&metrics, "b", "success"), 0.0);
}

#[tokio::test]
async fn a_429_retry_after_skips_that_endpoint_for_that_long() {
    a_429_with_retry_after_skips_a("120").await;
}

#[tokio::test]
async fn a_429_retry_after_as_an_http_date_skips_that_endpoint_until_then() {
    let in_two_minutes = std::time::SystemTime::now() + Duration::from_secs(120);
    a_429_with_retry_after_skips_a(&httpdate::fmt_http_date(in_two_minutes)).await;
}

/// Endpoint `a` answers `429` with `Retry-After: retry_after` (two minutes away): the
/// request is retried on `b`, and the next one goes straight to `b`.
async fn a_429_with_retry_after_skips_a(retry_after: &str) {
    let (a, b, gateway) = a_and_b().await;
    let (response, _, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        async {
            let mut exchange = a.accept().await;
            let head = format!("HTTP/1.1 429 Too Many Requests\r\nretry-after: {retry_after}\r\ncontent-length: 0\r\n\r\n");
            exchange.write(head.as_bytes()).await;
            exchange
        },
        async {
            let mut exchange = b.accept().await;
            answer(&mut exchange).await;
            exchange
        }
    );
    assert_eq!(body_text(response).await, whole_answer());
    // The next request goes straight to b: a asked for two minutes.
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = b.accept().await;
        answer(&mut exchange).await;
        exchange
    });
    assert_eq!(body_text(response).await, whole_answer());
    assert!(!a.connection_within(Duration::from_millis(200)).await);
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "status_429"), 1.0);
    assert_eq!(attempts(&metrics, "b", "success"), 2.0);
    assert_eq!(retries(&metrics, "status_429"), 1.0);
    assert_eq!(healthy(&metrics, "a"), 1.0, "busy is not broken");
}

#[tokio::test]
async fn a_reset_after_a_role_only_delta_is_retried_and_the_client_sees_one_clean_stream() {
    let (a, b, gateway) = a_and_b().await;
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut first = a.accept().await;
        first.start_sse("").await;
        first.send_chunk(b": warming up\n\n").await;
        first.send_chunk(ROLE).await;
        first.reset();
        let mut second = b.accept().await;
        answer(&mut second).await;
        second
    });
    assert_eq!(response.status(), 200);
    let text = body_text(response).await;
    assert_eq!(text, whole_answer(), "only the second attempt's stream");
    assert_eq!(text.matches("\"role\"").count(), 1);
    let metrics = gateway.metrics().await;
    assert_eq!(
        attempts(&metrics, "a", "before_content"),
        1.0,
        "{}",
        metrics.text
    );
    assert_eq!(retries(&metrics, "before_content"), 1.0);
    assert_eq!(metrics.outcome_count("chat", "terminator"), 1.0);
}

#[tokio::test]
async fn a_reset_after_content_is_not_retried_and_the_answer_is_truncated() {
    let (a, b, gateway) = a_and_b().await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut first = a.accept().await;
        first.start_sse("").await;
        first.send_chunk(ROLE).await;
        first.send_chunk(CONTENT).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.reset();
    });
    let text = body_text(response).await;
    assert!(text.starts_with(&format!(
        "{}{}",
        String::from_utf8_lossy(ROLE),
        String::from_utf8_lossy(CONTENT)
    )));
    assert!(text.contains("upstream_incomplete"), "{text}");
    assert!(!b.connection_within(Duration::from_millis(200)).await);
    let metrics = gateway.metrics().await;
    assert_eq!(metrics.outcome_count("chat", "truncated"), 1.0);
    assert_eq!(retries(&metrics, "before_content"), 0.0);
}

#[tokio::test]
async fn a_post_body_is_replayed_byte_identical() {
    let (a, b, gateway) = a_and_b().await;
    let body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"héllo\"}],\"stream\":true}";
    let request = Request::post("/api/stream/v1/chat")
        .header("host", gateway.addr.to_string())
        .header("content-type", "application/json")
        .header("authorization", "Bearer k")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (response, first, second) = tokio::join!(
        send(gateway.addr, request),
        async {
            let mut exchange = a.accept().await;
            exchange
                .write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
            exchange.request.clone()
        },
        async {
            let mut exchange = b.accept().await;
            answer(&mut exchange).await;
            exchange.request.clone()
        }
    );
    assert_eq!(body_text(response).await, whole_answer());
    assert_eq!(first.body, body.as_bytes());
    assert_eq!(second.body, first.body);
    assert_eq!(second.method, "POST");
    assert_eq!(second.target, first.target);
    assert_eq!(second.header("authorization"), Some("Bearer k"));
    assert_eq!(second.header("content-type"), Some("application/json"));
}

/// Answers every connection with a 503; counts them.
fn always_503(upstream: ScriptedUpstream, seen: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        loop {
            let mut exchange = upstream.accept().await;
            seen.fetch_add(1, Ordering::SeqCst);
            exchange
                .write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
}

#[tokio::test]
async fn the_budget_stops_retries_when_every_endpoint_fails() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstreams = [
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    ];
    let urls: Vec<String> = upstreams.iter().map(ScriptedUpstream::url).collect();
    let gateway = start_gateway(&config(
        &[("a", &urls[0]), ("b", &urls[1]), ("c", &urls[2])],
        "",
        "{ attempts: 3 }",
    ))
    .await;
    for upstream in upstreams {
        always_503(upstream, seen.clone());
    }
    let requests = 20;
    for _ in 0..requests {
        let response = get(gateway.addr, "/api/stream").await;
        assert_eq!(response.status(), 503);
        body_text(response).await;
    }
    let metrics = gateway.metrics().await;
    let retried: f64 = ["status_503"].iter().map(|r| retries(&metrics, r)).sum();
    // A fifth of the 20 requests (the floor of 3 is lower); without the budget, 40.
    assert_eq!(retried, 4.0, "{}", metrics.text);
    assert_eq!(seen.load(Ordering::SeqCst), requests + 4);
    assert!(
        metrics.get(
            "sse_gateway_upstream_retries_skipped_total",
            &[("route", "chat"), ("reason", "budget")]
        ) >= 1.0
    );
}

/// A reload that leaves a route's upstream and `retry` as they were keeps what its
/// retry budget has spent: an operator's SIGHUP, or a sync that changes another route,
/// in the middle of an outage does not hand out another round of retries. A reload
/// that changes the route's `retry` starts its budget afresh.
#[tokio::test]
async fn a_reload_keeps_the_retry_budget_of_a_route_it_leaves_as_it_was() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstreams = [
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    ];
    let urls: Vec<String> = upstreams.iter().map(ScriptedUpstream::url).collect();
    let endpoints = [("a", &*urls[0]), ("b", &*urls[1]), ("c", &*urls[2])];
    let yaml = config(&endpoints, "", "{ attempts: 3 }");
    let gateway = start_gateway(&yaml).await;
    for upstream in upstreams {
        always_503(upstream, seen.clone());
    }
    let failed = || async {
        let response = get(gateway.addr, "/api/stream").await;
        assert_eq!(response.status(), 503);
        body_text(response).await;
    };
    // Five requests: the budget's floor of 3 retries (a fifth of 5 is 1) is spent.
    for _ in 0..5 {
        failed().await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 5 + 3);

    let another_route = format!(
        "{yaml}  - name: other\n    match: {{ path_prefix: /api/other }}\n    upstream: assistant\n"
    );
    gateway.reload(&another_route).await;
    for _ in 0..5 {
        failed().await;
    }
    // Ten requests in the window: still the floor of 3, spent before the reload.
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10 + 3,
        "the reload handed out more retries"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(retries(&metrics, "status_503"), 3.0, "{}", metrics.text);

    gateway
        .reload(&another_route.replace("{ attempts: 3 }", "{ attempts: 2 }"))
        .await;
    failed().await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        13 + 2,
        "a changed retry starts with a fresh budget"
    );
}

#[tokio::test]
async fn an_endpoint_that_fails_in_a_row_cools_down_then_returns_after_one_trial() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let health = "    health: { failures: 2, cooldown: 3s }\n";
    let gateway = start_gateway(&config(&[("a", &a.url()), ("b", &b.url())], health, "{}")).await;
    // Two requests: a fails each (503), b answers each.
    for _ in 0..2 {
        assert_eq!(failed_over(&gateway, &a, &b).await, whole_answer());
    }
    assert_eq!(healthy(&gateway.metrics().await, "a"), 0.0);
    // During the cooldown a is skipped.
    assert_eq!(answered_by(&gateway, &b).await, whole_answer());
    assert!(!a.connection_within(Duration::from_millis(100)).await);
    // After it, one trial request goes to a; it answers, and a is back.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(answered_by(&gateway, &a).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(healthy(&metrics, "a"), 1.0, "{}", metrics.text);
    assert_eq!(attempts(&metrics, "a", "success"), 1.0);
}

#[tokio::test]
async fn a_reload_keeps_an_endpoint_out_and_a_moved_one_starts_afresh() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let health = "    health: { failures: 1, cooldown: 60s }\n";
    let gateway = start_gateway(&config(&[("a", &a.url()), ("b", &b.url())], health, "{}")).await;
    // a fails once (503) and is out; b answers.
    assert_eq!(failed_over(&gateway, &a, &b).await, whole_answer());
    assert_eq!(healthy(&gateway.metrics().await, "a"), 0.0);

    // A reload that changes the route's retry but not the endpoints: a stays out.
    let same = config(
        &[("a", &a.url()), ("b", &b.url())],
        health,
        "{ attempts: 3 }",
    );
    gateway.reload(&same).await;
    let metrics = gateway.metrics().await;
    assert_eq!(healthy(&metrics, "a"), 0.0, "{}", metrics.text);
    assert_eq!(answered_by(&gateway, &b).await, whole_answer());
    assert!(
        !a.connection_within(Duration::from_millis(200)).await,
        "the reload sent a request back to an endpoint it had taken out"
    );

    // a moved to another address: a new endpoint as far as health goes, so in.
    let moved = ScriptedUpstream::bind().await;
    gateway
        .reload(&config(
            &[("a", &moved.url()), ("b", &b.url())],
            health,
            "{}",
        ))
        .await;
    assert_eq!(healthy(&gateway.metrics().await, "a"), 1.0);
    assert_eq!(answered_by(&gateway, &moved).await, whole_answer());

    // Without b, its health gauge leaves /metrics.
    gateway
        .reload(&config(&[("a", &moved.url())], health, "{}"))
        .await;
    let metrics = gateway.metrics().await;
    assert_eq!(healthy(&metrics, "a"), 1.0);
    let b_series = metrics.find(
        "sse_gateway_upstream_endpoint_healthy",
        &[("upstream", "assistant"), ("endpoint", "b")],
    );
    assert_eq!(b_series, None, "{}", metrics.text);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_the_endpoints() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let gateway = start_gateway(&config(
        &[("a", &a.url()), ("b", &b.url())],
        "    balance: round_robin\n",
        "{}",
    ))
    .await;
    for upstream in [&a, &b, &a, &b] {
        let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
            let mut exchange = upstream.accept().await;
            answer(&mut exchange).await;
            exchange
        });
        assert_eq!(body_text(response).await, whole_answer());
    }
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "success"), 2.0);
    assert_eq!(attempts(&metrics, "b", "success"), 2.0);
}

#[tokio::test]
async fn a_start_that_goes_silent_before_content_is_a_timeout_and_retried() {
    let (a, b, gateway) = two_endpoints("stuck_after: 100ms, idle_timeout: 300ms").await;
    let (response, _silent, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        async {
            let mut exchange = a.accept().await;
            exchange.start_sse("").await;
            exchange.send_chunk(ROLE).await;
            exchange
        },
        async {
            let mut exchange = b.accept().await;
            answer(&mut exchange).await;
            exchange
        }
    );
    assert_eq!(body_text(response).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "timeout"), 1.0, "{}", metrics.text);
    assert_eq!(retries(&metrics, "timeout"), 1.0);
    // Stuck before it timed out: the attempt thrown away ends its stuck period.
    assert_eq!(metrics.route_value("sse_gateway_stuck_total", "chat"), 1.0);
    assert_eq!(
        metrics.route_value("sse_gateway_streams_stuck", "chat"),
        0.0
    );
}

#[tokio::test]
async fn a_start_that_only_keeps_alive_before_content_is_a_timeout_and_retried() {
    let (a, b, gateway) = two_endpoints("idle_timeout: 300ms, heartbeat: 0s").await;
    let exchange = async {
        let (response, (), ()) = tokio::join!(
            get(gateway.addr, "/api/stream"),
            async {
                // Comments three times per idle timeout: none is data.
                let mut exchange = a.accept().await;
                exchange.start_sse("").await;
                exchange.send_chunk(ROLE).await;
                while exchange.try_send_chunk(b": keep-alive\n\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            async {
                let mut exchange = b.accept().await;
                answer(&mut exchange).await;
            }
        );
        body_text(response).await
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("keep-alives do not hold the start past the idle timeout");
    assert_eq!(text, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "timeout"), 1.0, "{}", metrics.text);
}

#[tokio::test]
async fn a_body_over_max_body_is_sent_once_and_its_failure_not_retried() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let gateway = start_gateway(&config(
        &[("a", &a.url()), ("b", &b.url())],
        "",
        "{ max_body: 16B }",
    ))
    .await;
    let body = "{\"messages\":\"longer than sixteen bytes\"}";
    let request = Request::post("/api/stream")
        .header("host", gateway.addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (response, seen) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = a.accept().await;
        exchange
            .write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .await;
        exchange.request.clone()
    });
    assert_eq!(response.status(), 503);
    assert_eq!(seen.body, body.as_bytes(), "streamed through whole");
    assert!(!b.connection_within(Duration::from_millis(200)).await);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_upstream_retries_skipped_total",
            &[("route", "chat"), ("reason", "body_not_replayable")]
        ),
        1.0,
        "{}",
        metrics.text
    );
}

/// A start that holds the whole answer (a short or cached one: it all came before the
/// gateway could commit) is the stream's: its outcome, events, first token and usage
/// are recorded as on a route without retry.
#[tokio::test]
async fn an_answer_complete_while_held_back_is_recorded_as_complete() {
    let usage: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n";
    let whole = [ROLE, CONTENT, FINISH].concat();
    let whole = [
        &whole[..whole.len() - b"data: [DONE]\n\n".len()],
        usage,
        b"data: [DONE]\n\n",
    ]
    .concat();
    let (a, _b, gateway) = a_and_b().await;
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = a.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(&whole).await;
        exchange.end_chunks().await;
        exchange
    });
    assert_eq!(body_text(response).await.as_bytes(), &whole[..]);
    let metrics = gateway
        .metrics_until("the stream's outcome", |m| {
            m.outcome_count("chat", "terminator") == 1.0
        })
        .await;
    assert_eq!(metrics.outcome_count("chat", "client_closed"), 0.0);
    let value = |name: &str| metrics.route_value(name, "chat");
    assert_eq!(
        value("sse_gateway_stream_events_total"),
        4.0,
        "{}",
        metrics.text
    );
    assert_eq!(value("sse_gateway_stream_first_event_seconds_count"), 1.0);
    assert_eq!(value("sse_gateway_time_to_first_token_seconds_count"), 1.0);
    let tokens = |kind| {
        metrics.get(
            "sse_gateway_tokens_total",
            &[("route", "chat"), ("kind", kind)],
        )
    };
    assert_eq!((tokens("input"), tokens("output")), (7.0, 2.0));
    assert_eq!(value("sse_gateway_streams_active"), 0.0);
}

/// `max_duration` counts from the request: reached while the start is held back, no
/// other attempt could do better, and the endpoint did nothing wrong.
#[tokio::test]
async fn max_duration_reached_while_held_back_ends_the_stream_without_a_retry() {
    let (a, b, gateway) = two_endpoints("max_duration: 400ms, heartbeat: 0s").await;
    let (response, _silent) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = a.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(ROLE).await;
        exchange
    });
    assert_eq!(response.status(), 200);
    let text = body_text(response).await;
    assert!(
        text.starts_with(std::str::from_utf8(ROLE).unwrap()),
        "{text}"
    );
    assert!(text.contains("max_duration"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !b.connection_within(Duration::from_millis(300)).await,
        "not retried"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        attempts(&metrics, "a", "before_content"),
        0.0,
        "{}",
        metrics.text
    );
    assert_eq!(healthy(&metrics, "a"), 1.0);
}

/// A client's stream whose start `a` answers with the role chunk alone: no content,
/// so a retrying route holds it back. The client and `a`'s exchange, both open.
async fn a_start_without_content(
    gateway: std::net::SocketAddr,
    a: &ScriptedUpstream,
) -> (tokio::net::TcpStream, Exchange) {
    let client = raw_get(gateway, "/api/stream").await;
    let mut exchange = a.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(ROLE).await;
    (client, exchange)
}

/// The route's stream has ended as `client_closed`.
fn client_closed(metrics: &Metrics) -> bool {
    metrics.outcome_count("chat", "client_closed") == 1.0
}

/// The route's one stream is over, with its one stuck period counted and ended.
fn ended_in_its_one_stuck_period(metrics: &Metrics) {
    let route = |name: &str| metrics.route_value(name, "chat");
    assert_eq!(route("sse_gateway_streams_active"), 0.0);
    assert_eq!(route("sse_gateway_streams_stuck"), 0.0);
    assert_eq!(route("sse_gateway_stuck_total"), 1.0);
}

/// While its start is held back the stream is active, and stuck once no data came for
/// `stuck_after`; a client that leaves then ends it as `client_closed`, as it would
/// after the commit, and its stuck period with it.
#[tokio::test]
async fn a_client_that_leaves_while_the_start_is_held_back_is_a_client_closed_stream() {
    let (a, b, gateway) = two_endpoints("stuck_after: 200ms, heartbeat: 0s").await;
    let (client, mut exchange) = a_start_without_content(gateway.addr, &a).await;
    let route = |m: &Metrics, name: &str| m.route_value(name, "chat");
    gateway
        .metrics_until("the held stream is active and stuck", |m| {
            route(m, "sse_gateway_streams_active") == 1.0
                && route(m, "sse_gateway_streams_stuck") == 1.0
        })
        .await;
    drop(client);
    let metrics = gateway
        .metrics_until("the stream's outcome", client_closed)
        .await;
    ended_in_its_one_stuck_period(&metrics);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream let go"
    );
    assert!(!b.connection_within(Duration::from_millis(200)).await);
}

/// A start thrown away is tried again on the next endpoint, and the client waits on
/// for that endpoint's answer: its request is the same stream, active (and stuck, the
/// period going on) through the wait. A client that leaves then ends it as
/// `client_closed`, in the duration histogram and in one log line with its stuck time,
/// as it would while the start was held.
#[tokio::test]
async fn a_client_that_leaves_while_a_start_is_tried_again_is_a_client_closed_stream() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    // b's answer is waited for as long as the test needs.
    let yaml = config(&[("a", &a.url()), ("b", &b.url())], "", "{}")
        .replace("header_timeout: 1s", "header_timeout: 60s")
        .replace(
            "stream: { protocol: openai-chat }",
            "stream: { protocol: openai-chat, stuck_after: 200ms, heartbeat: 0s }",
        );
    let yaml = format!("listen: LISTEN\nadmin: {{ listen: ADMIN }}\n{yaml}");
    let gateway = GatewayProcess::start("retry-wait", &yaml).await;
    let (client, broken) = a_start_without_content(gateway.addr, &a).await;
    let route = |m: &Metrics, name: &str| m.route_value(name, "chat");
    gateway
        .metrics_until("the held start stuck", |m| {
            route(m, "sse_gateway_streams_stuck") == 1.0
        })
        .await;
    // a breaks off before any content: the request goes to b, which does not answer.
    drop(broken);
    let mut waiting = b.accept().await;
    gateway
        .metrics_until("the stream active and stuck while b is waited for", |m| {
            route(m, "sse_gateway_streams_active") == 1.0
                && route(m, "sse_gateway_streams_stuck") == 1.0
        })
        .await;
    drop(client);
    let metrics = gateway
        .metrics_until("the stream's outcome", client_closed)
        .await;
    ended_in_its_one_stuck_period(&metrics);
    assert!(waiting.closed_within(LIVENESS).await, "b let go");
    // The line is written as the request's state goes, a moment after the metrics.
    let finished = |line: &&str| line.contains("finished") && line.contains("route=\"chat\"");
    let log = gateway
        .log_until("no line for the request", |log| {
            log.lines().any(|line| finished(&line))
        })
        .await;
    let lines: Vec<&str> = log.lines().filter(finished).collect();
    assert_eq!(lines.len(), 1, "one line for the request:\n{log}");
    // The retry's line says which endpoint failed and how long the client waited on
    // it: past the stuck time the test waited for before a broke off.
    let retry = log
        .lines()
        .find(|line| line.contains("trying the request again"))
        .unwrap_or_else(|| panic!("no retry line:\n{log}"));
    let attempt_ms: u64 = retry
        .split("attempt_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no attempt_ms in {retry}"));
    assert!(retry.contains("endpoint=a") && attempt_ms >= 200, "{retry}");
    assert!(
        lines[0].contains("stream finished")
            && lines[0].contains("status=499")
            && lines[0].contains("outcome=\"client_closed\"")
            && !lines[0].contains("stuck_ms=0"),
        "{}",
        lines[0]
    );
}

/// A held-back start with no data for `stuck_after` is stuck, as a live stream is,
/// until data comes.
#[tokio::test]
async fn a_held_start_is_stuck_until_data_comes() {
    let (a, _b, gateway) = two_endpoints("stuck_after: 200ms, heartbeat: 0s").await;
    let stuck = |m: &Metrics| m.route_value("sse_gateway_streams_stuck", "chat");
    let request = tokio::spawn(get(gateway.addr, "/api/stream"));
    let mut exchange = a.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(ROLE).await;
    let metrics = gateway
        .metrics_until("the held start stuck", |m| stuck(m) == 1.0)
        .await;
    assert_eq!(metrics.route_value("sse_gateway_stuck_total", "chat"), 1.0);
    exchange.send_chunk(CONTENT).await;
    gateway
        .metrics_until("data ends the stuck period", |m| stuck(m) == 0.0)
        .await;
    exchange.send_chunk(FINISH).await;
    exchange.end_chunks().await;
    let response = request.await.unwrap();
    assert_eq!(body_text(response).await, whole_answer());
}

/// The client waits through every attempt: a start stuck and then thrown away for a
/// retry keeps its stuck period open in the attempt that goes on. One wait is one
/// stuck period (`stuck_total` 1, not one per attempt), and `streams_stuck` stays up
/// until data comes.
#[tokio::test]
async fn a_stuck_period_goes_on_through_a_retry_until_data_comes() {
    let (a, b, gateway) = two_endpoints("stuck_after: 100ms").await;
    let stuck = |m: &Metrics| m.route_value("sse_gateway_streams_stuck", "chat");
    let stuck_total = |m: &Metrics| m.route_value("sse_gateway_stuck_total", "chat");
    let request = tokio::spawn(get(gateway.addr, "/api/stream"));
    // a sends its role chunk and nothing more until the start is stuck, then breaks
    // off before any content: retried.
    let mut broken = a.accept().await;
    broken.start_sse("").await;
    broken.send_chunk(ROLE).await;
    gateway
        .metrics_until("a's start stuck", |m| stuck(m) == 1.0)
        .await;
    drop(broken);
    // b, the retry, sends its head and then nothing for longer than stuck_after.
    let mut exchange = b.accept().await;
    exchange.start_sse("").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(retries(&metrics, "before_content"), 1.0, "{}", metrics.text);
    assert_eq!(stuck(&metrics), 1.0);
    assert_eq!(stuck_total(&metrics), 1.0, "a second period opened on b");

    exchange.send_chunk(ROLE).await;
    exchange.send_chunk(CONTENT).await;
    let metrics = gateway
        .metrics_until("data ends the stuck period", |m| stuck(m) == 0.0)
        .await;
    assert_eq!(stuck_total(&metrics), 1.0);
    exchange.send_chunk(FINISH).await;
    exchange.end_chunks().await;
    let response = request.await.unwrap();
    assert_eq!(body_text(response).await, whole_answer());
}

/// A load balancer's or link checker's `HEAD`: the upstream's event-stream headers and
/// no body (none may follow a HEAD) are the whole answer, not a start that stopped
/// before its content. It is answered at once, not sent again, and counts against no
/// endpoint's health.
#[tokio::test]
async fn a_head_request_is_answered_by_its_headers_not_retried_as_a_failed_start() {
    let (a, b, gateway) = two_endpoints("idle_timeout: 5s").await;
    let (response, _exchange) = head_of_an_event_stream(&gateway, &a, "/api/stream").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(
        !b.connection_within(Duration::from_millis(500)).await,
        "not sent again to b"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(attempts(&metrics, "a", "success"), 1.0, "{}", metrics.text);
    assert_eq!(attempts(&metrics, "a", "before_content"), 0.0);
    assert_eq!(retries(&metrics, "before_content"), 0.0);
    for outcome in ["truncated", "client_closed", "upstream_eof"] {
        assert_eq!(
            metrics.outcome_count("chat", outcome),
            0.0,
            "a HEAD is no stream: {outcome}"
        );
    }
}

/// A reasoning model thinks aloud before it answers: its streamed thinking is output
/// the client sees, so the start is committed at the first thinking delta (headers and
/// events flow), not held back until the answer's first text.
#[tokio::test]
async fn streamed_thinking_commits_the_start_and_reaches_the_client_before_the_answer() {
    let (a, b) = (
        ScriptedUpstream::bind().await,
        ScriptedUpstream::bind().await,
    );
    let yaml = config(&[("a", &a.url()), ("b", &b.url())], "", "{}")
        .replace("protocol: openai-chat", "protocol: anthropic");
    let gateway = start_gateway(&yaml).await;
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n\
                 event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n";
    let thinking = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think.\"}}\n\n";
    let answer = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                  event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n\
                  event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (saw_thinking, thinking_seen) = tokio::sync::oneshot::channel();
    let client = tokio::spawn({
        let addr = gateway.addr;
        async move {
            let response = get(addr, "/api/stream").await;
            let mut body = response.into_body();
            let mut received = String::new();
            let mut saw_thinking = Some(saw_thinking);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received.push_str(&String::from_utf8_lossy(&data));
                }
                if received.contains("thinking_delta") {
                    if let Some(saw) = saw_thinking.take() {
                        let _ = saw.send(());
                    }
                }
            }
            received
        }
    });
    let mut exchange = a.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(start.as_bytes()).await;
    exchange.send_chunk(thinking.as_bytes()).await;
    // The model goes on thinking until the client has seen its thinking so far.
    tokio::time::timeout(LIVENESS, thinking_seen)
        .await
        .expect("the thinking reaches the client while the model has not answered yet")
        .unwrap();
    exchange.send_chunk(answer.as_bytes()).await;
    exchange.end_chunks().await;
    let received = tokio::time::timeout(LIVENESS, client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, format!("{start}{thinking}{answer}"));
    assert!(!b.connection_within(Duration::from_millis(100)).await);
}

/// The upstream's own error event before any content (an overload) sends the request
/// to the other endpoint, and still counts under `upstream_error_events_total`: an
/// overload alert must not go quiet because retries hide the overloads from clients.
#[tokio::test]
async fn an_error_event_of_a_start_tried_again_elsewhere_is_still_counted() {
    let (a, b, gateway) = two_endpoints("idle_timeout: 5s").await;
    let error = b"data: {\"error\":{\"type\":\"server_error\",\"message\":\"overloaded\"}}\n\n";
    let (response, _, _) = tokio::join!(
        get(gateway.addr, "/api/stream"),
        async {
            let mut first = a.accept().await;
            first.start_sse("").await;
            first.send_chunk(ROLE).await;
            first.send_chunk(error).await;
            first.end_chunks().await;
            first
        },
        async {
            let mut second = b.accept().await;
            answer(&mut second).await;
            second
        }
    );
    assert_eq!(body_text(response).await, whole_answer());
    let metrics = gateway.metrics().await;
    assert_eq!(retries(&metrics, "before_content"), 1.0);
    assert_eq!(
        metrics.get(
            "sse_gateway_upstream_error_events_total",
            &[("route", "chat"), ("type", "server_error")]
        ),
        1.0
    );
}
