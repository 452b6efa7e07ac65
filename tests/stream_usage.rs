//! `stream.usage: request` through the real proxy: the upstream is asked for usage the
//! client did not ask for, the client never sees the usage chunk, the tokens are
//! counted, and a client that asked itself gets its body and its chunk untouched.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn capture() -> String {
    let path = format!(
        "{}/tests/fixtures/usage/openai-chat.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn post(gateway: &TestGateway, body: &str) -> Request<Full<Bytes>> {
    Request::post("/api/stream/v1/chat/completions")
        .header("host", gateway.addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// An upstream, and a gateway whose one route has `usage: request`.
async fn asking_for_usage() -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(
        &upstream.url(),
        "    stream: { protocol: openai-chat, usage: request }\n",
    ))
    .await;
    (upstream, gateway)
}

/// Sends `body`, answers with the captured stream; returns what the upstream received
/// and what the client read.
async fn exchange(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    body: &str,
) -> (serde_json::Value, RecordedRequest, String) {
    let stream = capture();
    let (response, request) = tokio::join!(send(gateway.addr, post(gateway, body)), async {
        let mut exchange = upstream.accept().await;
        let request = exchange.request.clone();
        exchange.start_sse("").await;
        exchange.send_chunk(stream.as_bytes()).await;
        exchange.end_chunks().await;
        request
    });
    assert_eq!(response.status(), 200);
    let json = serde_json::from_slice(&request.body).expect("the upstream gets JSON");
    (json, request, body_text(response).await)
}

fn usage_chunk(stream: &str) -> &str {
    stream
        .split_inclusive("\n\n")
        .find(|event| event.contains("\"choices\":[]"))
        .expect("the capture has a usage chunk")
}

#[tokio::test]
async fn the_gateway_asks_for_usage_counts_it_and_keeps_the_chunk_from_the_client() {
    let (upstream, gateway) = asking_for_usage().await;
    let stream = capture();

    // A client that did not ask: the upstream is asked, the client does not see it.
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.5}"#;
    let (json, request, text) = exchange(&gateway, &upstream, body).await;
    assert_eq!(
        json["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    assert_eq!(json["temperature"], 0.5, "the rest of the body is kept");
    assert_eq!(json["messages"][0]["content"], "hi");
    let sent_length: usize = request.header("content-length").unwrap().parse().unwrap();
    assert_eq!(sent_length, request.body.len());
    assert_eq!(text, stream.replace(usage_chunk(&stream), ""));
    assert!(!text.contains("\"usage\":{"), "{text}");
    let metrics = gateway
        .metrics_until("the first stream's tokens", |m| {
            m.outcome_count("chat", "terminator") == 1.0
        })
        .await;
    let tokens = |m: &Metrics, kind| {
        m.get(
            "sse_gateway_tokens_total",
            &[("route", "chat"), ("kind", kind)],
        )
    };
    assert_eq!(
        (tokens(&metrics, "input"), tokens(&metrics, "output")),
        (9.0, 2.0)
    );

    // A client that asked itself: its body goes up byte for byte, its chunk comes back.
    let asked = r#"{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
    let (_, request, text) = exchange(&gateway, &upstream, asked).await;
    assert_eq!(request.body, asked.as_bytes());
    assert_eq!(text, stream);
    let metrics = gateway
        .metrics_until("the second stream's tokens", |m| {
            m.outcome_count("chat", "terminator") == 2.0
        })
        .await;
    assert_eq!(
        (tokens(&metrics, "input"), tokens(&metrics, "output")),
        (18.0, 4.0)
    );

    // Not a streaming request: nothing is added.
    let plain = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let (_, request, _) = exchange(&gateway, &upstream, plain).await;
    assert_eq!(request.body, plain.as_bytes());
}

#[tokio::test]
async fn the_body_goes_up_byte_for_byte_but_for_the_added_field() {
    let (upstream, gateway) = asking_for_usage().await;
    // Spacing, member order and number spellings a re-serialised body would change
    // (an integer beyond 64 bits would become a float).
    let body =
        r#"{"model":"gpt-4o-mini", "seed": 18446744073709551616, "top_p": 1.0, "stream":true}"#;
    let (_, request, _) = exchange(&gateway, &upstream, body).await;
    assert_eq!(
        String::from_utf8(request.body).unwrap(),
        r#"{"model":"gpt-4o-mini", "seed": 18446744073709551616, "top_p": 1.0, "stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[tokio::test]
async fn passthrough_leaves_the_body_alone() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(
        &upstream.url(),
        "    stream: { protocol: openai-chat }\n",
    ))
    .await;
    let body = r#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#;
    let (_, request, text) = exchange(&gateway, &upstream, body).await;
    assert_eq!(request.body, body.as_bytes());
    assert_eq!(
        text,
        capture(),
        "the upstream's usage chunk is the client's here"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_still_refused_with_413() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(
        &upstream.url(),
        "    request: { max_body_size: 64B }\n    stream: { protocol: openai-chat, usage: request }\n",
    ))
    .await;
    // Chunked, so the limit is met while the body is read, not from its length.
    let big = format!(r#"{{"stream":true,"pad":"{}"}}"#, "x".repeat(200));
    let request = Request::post("/api/stream")
        .header("host", gateway.addr.to_string())
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let response = send(gateway.addr, request).await;
    assert_eq!(response.status(), 413);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_client_errors_total",
            &[("route", "chat"), ("kind", "body_too_large")]
        ),
        1.0
    );
}
