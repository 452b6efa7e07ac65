//! Protocol presets through the real proxy: a truncated Chat Completions answer, an
//! Anthropic stream that only pings until its idle timeout, an upstream's own error
//! event, and a 502 before the headers in Anthropic's shape.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

fn route(protocol: &str) -> String {
    format!(
        "    stream:\n      protocol: {protocol}\n      idle_timeout: 300ms\n      heartbeat: 0s\n"
    )
}

#[tokio::test]
async fn a_chat_answer_cut_by_a_clean_end_is_an_error_then_done() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route("openai-chat"))).await;
    let half = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(half.as_bytes()).await;
        exchange.end_chunks().await;
    });
    let text = body_text(response).await;
    let events = client_events(&text);
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(
        events[0].data,
        half.trim_end().strip_prefix("data: ").unwrap()
    );
    assert_eq!(events[1].event, "error");
    let error: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(error["error"]["type"], "upstream_incomplete");
    assert_eq!(error["error"]["code"], "upstream_incomplete");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no finish_reason"));
    assert_eq!(events[2].data, "[DONE]");
    gateway
        .metrics_until("a truncated stream", |m| {
            m.outcome_count("chat", "truncated") == 1.0
        })
        .await;
}

#[tokio::test]
async fn anthropic_pings_do_not_keep_a_stalled_answer_alive() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route("anthropic"))).await;
    let started = tokio::time::Instant::now();
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n")
            .await;
        // Pings every 100 ms, well inside the 300 ms idle timeout, for 1.5 s unless the
        // gateway lets the upstream go first.
        for _ in 0..15 {
            if exchange
                .try_send_chunk(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        exchange
    });
    let text = tokio::time::timeout(LIVENESS, body_text(response))
        .await
        .expect("the stream ends at its idle timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "pings kept it alive"
    );
    let events = client_events(&text);
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{text}");
    let error: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "upstream_incomplete");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no data from upstream for 300ms"));
    gateway
        .metrics_until("a truncated stream", |m| {
            m.outcome_count("chat", "truncated") == 1.0
        })
        .await;
}

#[tokio::test]
async fn a_terminal_event_cut_by_the_upstreams_close_is_not_a_completion() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(
        &upstream.url(),
        &route("openai-responses"),
    ))
    .await;
    let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hello\"}\n\n";
    let cut = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"status\":\"compl";
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(delta.as_bytes()).await;
        exchange.send_chunk(cut.as_bytes()).await;
        exchange.end_chunks().await;
    });
    let text = body_text(response).await;
    let events = client_events(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0].event, "response.output_text.delta");
    assert_eq!(events[1].event, "error");
    let error: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "upstream_incomplete");
    assert_eq!(error["sequence_number"], 2);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("in the middle of an event"),
        "{error}"
    );
    gateway
        .metrics_until("a truncated stream", |m| {
            m.outcome_count("chat", "truncated") == 1.0
        })
        .await;
}

#[tokio::test]
async fn an_upstream_error_event_is_passed_through_and_counted() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route("anthropic"))).await;
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(error.as_bytes()).await;
        exchange
    });
    assert_eq!(body_text(response).await, error);
    let metrics = gateway
        .metrics_until("an upstream error event", |m| {
            m.outcome_count("chat", "upstream_error_event") == 1.0
        })
        .await;
    let counted = |error_type| {
        metrics.get(
            "sse_gateway_upstream_error_events_total",
            &[("route", "chat"), ("type", error_type)],
        )
    };
    assert_eq!(counted("overloaded_error"), 1.0);
    assert_eq!(counted("other"), 0.0);
}

#[tokio::test]
async fn a_refused_upstream_is_a_502_in_anthropic_shape() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = one_route_config(&format!("http://127.0.0.1:{port}"), &route("anthropic"));
    let gateway = start_gateway(&config).await;
    let response = get(gateway.addr, "/api/stream").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["x-sse-gateway-error"],
        "upstream_unavailable"
    );
    let json = body_json(response).await;
    assert_eq!(json["type"], "error", "{json}");
    assert_eq!(json["error"]["type"], "upstream_unavailable");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refused"));
    // No route, no protocol: the generic shape.
    let json = body_json(get(gateway.addr, "/elsewhere").await).await;
    assert_eq!(json["error"]["type"], "not_found");
}

#[tokio::test]
async fn a_method_the_route_does_not_take_is_a_405_in_its_protocols_shape() {
    let config = "upstreams:\n  assistant:\n    url: http://127.0.0.1:9\n\
         routes:\n  - name: messages\n    match: { path_prefix: /v1/messages, methods: [POST] }\n    upstream: assistant\n    stream:\n      protocol: anthropic\n";
    let gateway = start_gateway(config).await;
    let response = get(gateway.addr, "/v1/messages").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let json = body_json(response).await;
    assert_eq!(json["type"], "error", "Anthropic's shape: {json}");
    assert_eq!(json["error"]["type"], "method_not_allowed");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allowed: POST"));
}

/// A `HEAD` on a preset route: the upstream's headers, and no stream recorded (none
/// was sent: an empty body is not a truncated answer).
#[tokio::test]
async fn a_head_request_is_not_a_truncated_stream() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route("openai-chat"))).await;
    let (response, _exchange) = head_of_an_event_stream(&gateway, &upstream, "/api/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "");
    // Once the response is done with (its slot under the route's count freed), a
    // supervised stream would have been recorded.
    gateway
        .metrics_until("the request's slot freed", |m| {
            m.route_value("sse_gateway_admission_streams", "chat") == 0.0
        })
        .await;
    let metrics = gateway.metrics().await;
    for outcome in ["truncated", "client_closed", "upstream_eof"] {
        assert_eq!(
            metrics.outcome_count("chat", outcome),
            0.0,
            "a HEAD is no stream: {outcome}\n{}",
            metrics.text
        );
    }
}

/// Streams `answer` whole through a route of `protocol` and returns the metrics once
/// the stream has ended with its terminator; the client gets the answer unchanged.
async fn finished(protocol: &str, answer: &str) -> Metrics {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route(protocol))).await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(answer.as_bytes()).await;
        exchange.end_chunks().await;
    });
    assert_eq!(body_text(response).await, answer);
    gateway
        .metrics_until("a stream ended by its terminator", |m| {
            m.outcome_count("chat", "terminator") == 1.0
        })
        .await
}

/// The route's `finish_reasons_total` for `reason`; `None` when not exported.
fn finish_reason_count(metrics: &Metrics, reason: &str) -> Option<f64> {
    metrics.find(
        "sse_gateway_finish_reasons_total",
        &[("route", "chat"), ("reason", reason)],
    )
}

#[tokio::test]
async fn an_answer_cut_by_its_token_limit_is_complete_and_counted_by_its_finish_reason() {
    let chat = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
                data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                data: [DONE]\n\n";
    let metrics = finished("openai-chat", chat).await;
    assert_eq!(finish_reason_count(&metrics, "length"), Some(1.0));
    assert_eq!(finish_reason_count(&metrics, "stop"), Some(0.0));

    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n\
                     event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
                     event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\n\
                     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let metrics = finished("anthropic", anthropic).await;
    assert_eq!(finish_reason_count(&metrics, "max_tokens"), Some(1.0));
    assert_eq!(finish_reason_count(&metrics, "end_turn"), Some(0.0));

    let responses = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\",\"sequence_number\":1}\n\n\
                     event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"}},\"sequence_number\":2}\n\n";
    let metrics = finished("openai-responses", responses).await;
    assert_eq!(
        finish_reason_count(&metrics, "max_output_tokens"),
        Some(1.0)
    );
    assert_eq!(finish_reason_count(&metrics, "completed"), Some(0.0));
}

#[tokio::test]
async fn a_finish_reason_outside_the_protocols_list_is_counted_as_other() {
    let chat = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":\"eos_token\"}]}\n\n\
                data: [DONE]\n\n";
    let metrics = finished("openai-chat", chat).await;
    assert_eq!(finish_reason_count(&metrics, "other"), Some(1.0));
    assert_eq!(finish_reason_count(&metrics, "eos_token"), None);
}

/// A truncated answer did not end properly, whatever one of its choices said: its
/// finish reasons are not counted, or it would count among the answers that did.
#[tokio::test]
async fn a_truncated_answer_counts_no_finish_reason() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), &route("openai-chat"))).await;
    let chunk = |choice: &str| format!("data: {{\"choices\":[{choice}]}}\n\n");
    let answer = [
        chunk(r#"{"index":0,"delta":{"content":"A"},"finish_reason":null}"#),
        chunk(r#"{"index":1,"delta":{"content":"B"},"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
    ]
    .concat();
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(answer.as_bytes()).await;
        exchange.end_chunks().await;
    });
    assert!(body_text(response).await.contains("upstream_incomplete"));
    let metrics = gateway
        .metrics_until("a truncated stream", |m| {
            m.outcome_count("chat", "truncated") == 1.0
        })
        .await;
    assert_eq!(finish_reason_count(&metrics, "stop"), Some(0.0));
}
