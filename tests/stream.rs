//! Event streams through the real proxy on a route with a `stream` section: repairs in
//! arbitrary chunks, the terminator ending the response and the upstream connection,
//! a synthesized terminator, oversize events, and what must pass through untouched.

mod support;

use http::StatusCode;
use support::*;

const STREAM_ROUTE: &str = "    stream:
      rules:
        - repair: orphan_lines
        - replace: { scope: data, pattern: '\"text\":', with: '\"value\":' }
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: \"[DONE]\", forward: true, on_upstream_eof: synthesize }
      max_event_size: 64KiB
";

async fn setup() -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), STREAM_ROUTE)).await;
    (upstream, gateway)
}

/// The blog's stream: stray newlines after `data:`, a ping, `text` instead of `value`,
/// multi-byte UTF-8, and the terminator hidden behind the same flaw.
const BLOG_STREAM: &str = ": ping\n\ndata:\n{\"value\":\"Hel\"}\n\ndata: {\"value\":\"lo \"}\n\ndata:\n{\"text\":\"wörld 🌍\"}\n\ndata:\n[DONE]\n\n";

const BLOG_REPAIRED: &str = "data:{\"value\":\"Hel\"}\n\ndata: {\"value\":\"lo \"}\n\ndata: {\"value\":\"wörld 🌍\"}\n\ndata:[DONE]\n\n";

#[tokio::test]
async fn the_blog_stream_is_repaired_whatever_the_chunking() {
    let (upstream, gateway) = setup().await;
    let bytes = BLOG_STREAM.as_bytes();
    let mut lingering = Vec::new();
    for size in [1, 2, 3, 5, 7, 13, 64, bytes.len()] {
        let (response, exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            for piece in bytes.chunks(size) {
                exchange.send_chunk(piece).await;
            }
            // The upstream keeps the connection open: only [DONE] can end it.
            exchange
        });
        lingering.push(exchange);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("content-length"));
        let text = body_text(response).await;
        assert_eq!(text, BLOG_REPAIRED, "chunks of {size} bytes");
        let values: Vec<String> = client_events(&text).into_iter().map(|e| e.data).collect();
        assert_eq!(
            values,
            [
                r#"{"value":"Hel"}"#,
                r#"{"value":"lo "}"#,
                r#"{"value":"wörld 🌍"}"#,
                "[DONE]"
            ],
            "what an EventSource dispatches, chunks of {size} bytes"
        );
    }
}

#[tokio::test]
async fn terminator_ends_the_response_and_closes_a_lingering_upstream() {
    let (upstream, gateway) = setup().await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n")
            .await;
        exchange
    });
    assert_eq!(
        body_text(response).await,
        "data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n"
    );
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream connection is dropped after the terminator"
    );
}

#[tokio::test]
async fn upstream_ending_without_the_terminator_gets_one_synthesized() {
    let (upstream, gateway) = setup().await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"value\":\"partial\"}\n\n")
            .await;
        // A final event without its blank line is completed, not lost.
        exchange.send_chunk(b"data: {\"value\":\"tail\"}").await;
        exchange.end_chunks().await;
    });
    assert_eq!(
        body_text(response).await,
        "data: {\"value\":\"partial\"}\n\ndata: {\"value\":\"tail\"}\n\ndata: [DONE]\n\n"
    );
}

/// What `EventSource` dispatches is what `stream_events_total` counts: a block of
/// comments (an upstream's keep-alive) or of an `id` alone reaches the client but is
/// no event, or a quiet upstream's pings would pass for tokens on the dashboard.
#[tokio::test]
async fn forwarded_comments_are_not_counted_as_events() {
    let upstream = ScriptedUpstream::bind().await;
    let route = "    stream: { terminator: { data: \"[DONE]\", forward: true } }\n";
    let gateway = start_gateway(&one_route_config(&upstream.url(), route)).await;
    let sent = ": keep-alive\n\ndata: a\n\n: keep-alive\n\nid: 7\n\n: keep-alive\n\ndata: b\n\ndata: [DONE]\n\n";
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(sent.as_bytes()).await;
        exchange
    });
    assert_eq!(body_text(response).await, sent);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.route_value("sse_gateway_stream_events_total", "chat"),
        2.0
    );
}

#[tokio::test]
async fn cr_and_crlf_streams_leave_with_lf_line_ends() {
    let (upstream, gateway) = setup().await;
    for stream in [
        "data: {\"value\":\"a\"}\r\rdata: [DONE]\r\r",
        "data: {\"value\":\"a\"}\r\n\r\ndata: [DONE]\r\n\r\n",
    ] {
        let (response, _lingering) = tokio::join!(get(gateway.addr, "/api/stream"), async {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            // Split inside the line ends, where naive parsers go wrong.
            let bytes = stream.as_bytes();
            exchange.send_chunk(&bytes[..17]).await;
            exchange.send_chunk(&bytes[17..]).await;
            exchange
        });
        assert_eq!(
            body_text(response).await,
            "data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n",
            "{stream:?}"
        );
    }
}

#[tokio::test]
async fn events_are_forwarded_as_soon_as_they_are_complete() {
    let (upstream, gateway) = setup().await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    for i in 0..5 {
        // Each event in two pieces, the second completing it; the next event is only
        // sent once this one has arrived through the pipeline.
        let event = format!("data:\n{{\"value\":{i}}}\n\n");
        let (head, tail) = event.as_bytes().split_at(4);
        exchange.send_chunk(head).await;
        exchange.send_chunk(tail).await;
        let received = next_data(&mut body).await.expect("the event arrives");
        assert_eq!(received, format!("data:{{\"value\":{i}}}\n\n").as_bytes());
    }
}

#[tokio::test]
async fn an_oversize_event_ends_the_stream_with_an_error_event_and_bounded_reads() {
    let (upstream, gateway) = setup().await;
    let (response, (sent, mut exchange)) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: {\"value\":\"ok\"}\n\n").await;
        exchange.send_chunk(b"data: ").await;
        // 100 MiB without a blank line, against a 64 KiB limit.
        let block = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        for _ in 0..1600 {
            if exchange.try_send_chunk(&block).await.is_err() {
                break;
            }
            sent += block.len();
        }
        (sent, exchange)
    });
    let text = body_text(response).await;
    let events = client_events(&text);
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[0].data, r#"{"value":"ok"}"#);
    assert_eq!(events[1].event, "error");
    let error: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(error["error"]["type"], "oversize");
    assert_eq!(error["error"]["route"], "chat");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("65536 bytes"));
    assert_eq!(events[2].data, "[DONE]");

    assert!(
        sent < 64 * 1024 * 1024,
        "the gateway stopped reading the upstream"
    );
    assert!(exchange.closed_within(LIVENESS).await);
    let metrics = gateway.metrics().await;
    let read = metrics.get(
        "sse_gateway_stream_bytes_total",
        &[("route", "chat"), ("direction", "upstream")],
    );
    assert!(
        read < f64::from(64 + 1024) * 1024.0,
        "read {read} bytes: memory stays bounded"
    );
    assert_eq!(metrics.outcome_count("chat", "oversize"), 1.0);
}

#[tokio::test]
async fn other_responses_on_a_stream_route_pass_through_byte_identical() {
    let (upstream, gateway) = setup().await;
    // JSON that looks like a flawed stream must not be touched.
    let payload = "data:\n{\"value\":\"not an event stream\"}\n\n: ping\n\n";
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        exchange.write(head.as_bytes()).await;
        exchange.write(payload.as_bytes()).await;
    });
    assert_eq!(
        response.headers()["content-length"],
        payload.len().to_string()
    );
    assert_eq!(body_text(response).await, payload);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.route_value("sse_gateway_stream_events_total", "chat"),
        0.0
    );
}

#[tokio::test]
async fn the_drain_ends_a_passed_through_body_whose_upstream_never_pauses() {
    let (upstream, gateway) = setup().await;
    // Not an event stream: passed through untouched, though read as a stream route's
    // upstream is, from a connection of its own.
    let (response, exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        exchange
    });
    let line = "{\"value\":\"token\"}\n";
    let tail =
        drain_while_the_upstream_never_pauses(gateway, response, exchange, &line.repeat(512)).await;
    // The body ends where it is, with the final chunk: nothing is added, and the end
    // may fall inside a line.
    assert!(!tail.is_empty());
    assert!(
        line.repeat(tail.len() / line.len() + 2).contains(&tail),
        "{tail}"
    );
}

#[tokio::test]
async fn a_stream_request_reaches_the_upstream_in_origin_form_with_its_body() {
    let (upstream, gateway) = setup().await;
    let request = http::Request::post("/api/stream?model=m1")
        .header("host", "chat.example")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"prompt\":\"hi\"}",
        )))
        .unwrap();
    let (response, seen) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: ok\n\ndata: [DONE]\n\n").await;
        exchange.request
    });
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/stream?model=m1");
    assert_eq!(seen.body, b"{\"prompt\":\"hi\"}");
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("chat.example"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "data: ok\n\ndata: [DONE]\n\n");
}

/// Reads that start a burst share one buffer per worker thread, and a read that cut a
/// chunk leaves its rest there only until the stream waits. Several streams at once,
/// their upstreams' chunked bytes written in pieces cut inside a chunk-size line,
/// between CR and LF, and inside data, each piece its own read: every client gets its
/// own events, byte for byte.
#[tokio::test]
async fn streams_read_at_once_with_chunks_cut_anywhere_keep_their_own_bytes() {
    const STREAMS: usize = 6;
    const EVENTS: usize = 12;
    let (upstream, gateway) = setup().await;
    let event = |stream: usize, n: usize| {
        format!(
            "data: {{\"s\":{stream},\"n\":{n},\"pad\":\"{}\"}}\n\n",
            "x".repeat(n * 3)
        )
    };
    let addr = gateway.addr;
    let clients: Vec<_> = (0..STREAMS)
        .map(|_| {
            tokio::spawn(async move {
                let response = get(addr, "/api/stream").await;
                assert_eq!(response.status(), StatusCode::OK);
                body_text(response).await
            })
        })
        .collect();
    let upstreams = async {
        let mut exchanges = Vec::new();
        for _ in 0..STREAMS {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            exchanges.push(exchange);
        }
        for n in 0..EVENTS {
            for (stream, exchange) in exchanges.iter_mut().enumerate() {
                let data = event(stream, n);
                let mut raw = format!("{:x}\r\n", data.len()).into_bytes();
                raw.extend_from_slice(data.as_bytes());
                raw.extend_from_slice(b"\r\n");
                // Cut after the size's first digit, between its CR and LF, in the
                // data, and between the data's CR and LF; a different cut per event.
                let size_end = raw.iter().position(|&b| b == b'\r').unwrap();
                let cuts = match n % 4 {
                    0 => vec![1, size_end + 1],
                    1 => vec![size_end + 1, size_end + 9],
                    2 => vec![raw.len() - 1],
                    _ => vec![size_end + 2 + data.len() / 2],
                };
                let mut at = 0;
                for cut in cuts.into_iter().chain([raw.len()]) {
                    exchange.write(&raw[at..cut]).await;
                    at = cut;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        }
        for exchange in &mut exchanges {
            exchange.send_chunk(b"data: [DONE]\n\n").await;
        }
        exchanges
    };
    let _exchanges = upstreams.await;
    let mut seen: Vec<usize> = Vec::new();
    for client in clients {
        let text = client.await.expect("the client finishes");
        let first = client_events(&text)[0].data.clone();
        let stream: usize = first["{\"s\":".len()..first.find(',').unwrap()]
            .parse()
            .unwrap();
        let expected: String =
            (0..EVENTS).map(|n| event(stream, n)).collect::<String>() + "data: [DONE]\n\n";
        assert_eq!(text, expected, "stream {stream}");
        seen.push(stream);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..STREAMS).collect::<Vec<_>>());
}
