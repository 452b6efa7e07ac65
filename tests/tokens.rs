//! Time to first token, inter-token gaps and token counts through the real proxy, on
//! streams captured from each API (`tests/fixtures/usage/`), read back from `/metrics`.
//! The upstream sends one event per read and waits until the client holds it, so each
//! read is one arrival at the gateway whatever the machine's load.

mod support;

use support::*;

fn capture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/usage/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// One route per preset, named after it, on `/NAME`.
fn config(upstream_url: &str) -> String {
    let mut yaml = format!(
        "upstreams:\n  assistant:\n    url: {upstream_url}\n    header_timeout: 2s\nroutes:\n"
    );
    for protocol in ["openai-chat", "openai-responses", "anthropic"] {
        yaml.push_str(&format!(
            "  - name: {protocol}\n    match: {{ path_prefix: /{protocol} }}\n    upstream: assistant\n    stream: {{ protocol: {protocol} }}\n"
        ));
    }
    yaml
}

/// A stream on `path` whose upstream has sent its event-stream head.
async fn open(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    path: &str,
) -> (http::Response<hyper::body::Incoming>, Exchange) {
    tokio::join!(get(gateway.addr, path), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    })
}

/// Streams `reads`, each only after the client received the one before; returns what
/// the client received.
async fn lockstep(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    path: &str,
    reads: &[&str],
) -> String {
    let (response, mut exchange) = open(gateway, upstream, path).await;
    let mut received = String::new();
    let mut body = Events::new(response.into_body());
    for read in reads {
        exchange.send_chunk(read.as_bytes()).await;
        let mut got = Vec::new();
        while got.len() < read.len() {
            got.extend_from_slice(&next_data(&mut body).await.expect("the read arrives"));
        }
        assert_eq!(got, read.as_bytes());
        received.push_str(read);
    }
    exchange.end_chunks().await;
    received + &rest(&mut body).await
}

/// What `body` brings until it ends.
async fn rest(body: &mut Events) -> String {
    let mut received = String::new();
    while let Some(more) = next_data(body).await {
        received.push_str(std::str::from_utf8(&more).unwrap());
    }
    received
}

fn events(stream: &str) -> Vec<&str> {
    stream.split_inclusive("\n\n").collect()
}

/// What the route's metrics say once its `streams`-th stream is recorded: time to first
/// token observations, inter-token observations, input and output tokens.
async fn observed(gateway: &TestGateway, route: &str, streams: f64) -> (f64, f64, f64, f64) {
    let metrics = gateway
        .metrics_until("the stream is recorded", |m| {
            m.outcome_count(route, "terminator") == streams
        })
        .await;
    let value = |name: &str| metrics.route_value(name, route);
    let tokens = |kind| {
        metrics.get(
            "sse_gateway_tokens_total",
            &[("route", route), ("kind", kind)],
        )
    };
    if value("sse_gateway_time_to_first_token_seconds_count") > 0.0 {
        assert!(value("sse_gateway_time_to_first_token_seconds_sum") > 0.0);
    }
    (
        value("sse_gateway_time_to_first_token_seconds_count"),
        value("sse_gateway_inter_token_seconds_count"),
        tokens("input"),
        tokens("output"),
    )
}

#[tokio::test]
async fn each_preset_counts_one_first_token_its_gaps_and_the_upstreams_usage() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url())).await;
    // (route, input tokens, output tokens) as each capture's usage says.
    for (route, input, output) in [
        ("openai-chat", 9.0, 2.0),
        ("openai-responses", 12.0, 3.0),
        ("anthropic", 25.0, 15.0),
    ] {
        let stream = capture(route);
        let received = lockstep(&gateway, &upstream, &format!("/{route}"), &events(&stream)).await;
        assert_eq!(received, stream, "{route}: passed through unchanged");
        // One stream with content: one first token. Two content events in two reads:
        // one gap. The tokens are the capture's usage.
        assert_eq!(
            observed(&gateway, route, 1.0).await,
            (1.0, 1.0, input, output),
            "{route}"
        );
    }
}

#[tokio::test]
async fn a_stream_without_content_observes_no_first_token_and_one_read_is_one_arrival() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url())).await;
    let route = "openai-chat";
    let stream = capture(route);
    let chunks = events(&stream);
    // The role-only chunk, the finish chunk and [DONE]: no content, no usage.
    let no_content = [chunks[0], chunks[3], "data: [DONE]\n\n"];
    lockstep(&gateway, &upstream, "/openai-chat", &no_content).await;
    assert_eq!(observed(&gateway, route, 1.0).await, (0.0, 0.0, 0.0, 0.0));

    // The whole capture in one read: its two content events are one arrival.
    lockstep(&gateway, &upstream, "/openai-chat", &[&stream]).await;
    assert_eq!(observed(&gateway, route, 2.0).await, (1.0, 0.0, 9.0, 2.0));

    // Each event its own chunk, as a token stream sends them, all in one write: still
    // one read, so one arrival.
    let (response, mut exchange) = open(&gateway, &upstream, "/openai-chat").await;
    let mut wire = Vec::new();
    for event in events(&stream) {
        wire.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    }
    exchange.write(&wire).await;
    exchange.end_chunks().await;
    assert_eq!(rest(&mut Events::new(response.into_body())).await, stream);
    assert_eq!(observed(&gateway, route, 3.0).await, (2.0, 0.0, 18.0, 4.0));

    // With CRLF line ends the events are rewritten to LF, so the read leaves in several
    // frames, over several polls: still one arrival.
    let (response, mut exchange) = open(&gateway, &upstream, "/openai-chat").await;
    exchange
        .send_chunk(stream.replace('\n', "\r\n").as_bytes())
        .await;
    exchange.end_chunks().await;
    assert_eq!(rest(&mut Events::new(response.into_body())).await, stream);
    assert_eq!(observed(&gateway, route, 4.0).await, (3.0, 0.0, 27.0, 6.0));
}
