//! Faults and bad input on real sockets: upstreams that reset, send bytes no parser
//! likes, or answer oddly; clients that read slowly; requests that try to smuggle,
//! overflow, escape their route or inject headers.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAM_ROUTE: &str = "    request:
      max_body_size: 1KiB
    stream:
      rules:
        - repair: orphan_lines
      terminator: { data: \"[DONE]\" }
      heartbeat: 0
";

async fn setup() -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), STREAM_ROUTE)).await;
    (upstream, gateway)
}

/// Sends raw bytes on a new connection and reads the whole reply (the request asks
/// for `connection: close`).
async fn raw_exchange(gateway: &TestGateway, request: &[u8]) -> String {
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(LIVENESS, client.read_to_end(&mut reply))
        .await
        .expect("the gateway answers and closes in time")
        .ok();
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn an_upstream_reset_mid_event_ends_with_an_error_event() {
    let (upstream, gateway) = setup().await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"value\":\"a\"}\n\ndata: {\"val")
            .await;
        exchange.reset();
    });
    let text = body_text(response).await;
    let events = client_events(&text);
    assert_eq!(events[0].data, "{\"value\":\"a\"}");
    assert_eq!(events[1].event, "error", "{text}");
    assert!(
        events[1].data.contains("\"type\":\"upstream_error\""),
        "{text}"
    );
    assert_eq!(events[2].data, "[DONE]");
    assert!(!text.contains("{\"val\n"), "the partial event is dropped");
    let metrics = gateway
        .metrics_until("the reset counted", |m| {
            m.outcome_count("chat", "upstream_error") == 1.0
        })
        .await;
    assert_eq!(
        metrics.get(
            "sse_gateway_upstream_errors_total",
            &[("route", "chat"), ("kind", "reset")]
        ),
        1.0,
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn invalid_utf8_and_nul_bytes_pass_through_untouched() {
    let (upstream, gateway) = setup().await;
    let event: &[u8] = b"data: \xff\xfe\x00 not utf-8 \xc3\n\n";
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(event).await;
        exchange.send_chunk(b"data: [DONE]\n\n").await;
    });
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let mut expected = event.to_vec();
    expected.extend_from_slice(b"data: [DONE]\n\n");
    assert_eq!(body, expected);
}

#[tokio::test]
async fn an_empty_200_event_stream_gets_the_terminator() {
    let (upstream, gateway) = setup().await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
    });
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "data: [DONE]\n\n");
    gateway
        .metrics_until("upstream_eof", |m| {
            m.outcome_count("chat", "upstream_eof") == 1.0
        })
        .await;
}

#[tokio::test]
async fn a_500_event_stream_keeps_its_status_and_is_still_repaired() {
    let (upstream, gateway) = setup().await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        let body = "data:\n{\"error\":\"overloaded\"}\n\n";
        let head = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        exchange.write(head.as_bytes()).await;
        exchange.write(body.as_bytes()).await;
    });
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body_text(response).await,
        "data:{\"error\":\"overloaded\"}\n\ndata: [DONE]\n\n"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_back_pressures_the_upstream() {
    let (upstream, gateway) = setup().await;
    let mut client = raw_get(gateway.addr, "/api/stream").await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    read_until(&mut client, b"\r\n\r\n").await;

    // The upstream tries to send 64 MiB of events to a client that reads nothing.
    let event = format!("data: {}\n\n", "x".repeat(1000));
    let chunk = {
        let events = event.repeat(64);
        format!("{:x}\r\n{events}\r\n", events.len()).into_bytes()
    };
    let mut sent = 0usize;
    while sent < 64 << 20 {
        if !exchange
            .write_within(&chunk, Duration::from_millis(500))
            .await
        {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        sent < 64 << 20,
        "the upstream was stopped, not buffered in full"
    );
    let read = gateway.metrics().await.get(
        "sse_gateway_stream_bytes_total",
        &[("route", "chat"), ("direction", "upstream")],
    );
    assert!(
        read < f64::from(16 << 20),
        "the gateway holds {read} bytes for one stream"
    );

    // A byte at a time, the stream still flows.
    let mut byte = [0u8; 1];
    for _ in 0..5 {
        client.read_exact(&mut byte).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    gateway
        .metrics_until("the stream closed", |m| {
            m.outcome_count("chat", "client_closed") == 1.0
        })
        .await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_smuggle_nothing() {
    let (upstream, gateway) = setup().await;
    // Read by Content-Length, the body would be `0\r\n\r` and the rest a new request;
    // read by Transfer-Encoding (RFC 9112: it wins), the body is empty and the rest is
    // a second request, which must not be served on a connection whose framing was
    // ambiguous (the RFC: close after responding).
    let request = b"POST /api/stream HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n\
transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /api/stream/smuggled HTTP/1.1\r\nhost: gw\r\n\r\n";
    let (reply, (first, smuggled)) = tokio::join!(raw_exchange(&gateway, request), async {
        let mut exchange = upstream.accept().await;
        let first = exchange.request.clone();
        exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let on_same = tokio::time::timeout(Duration::from_millis(500), exchange.read_request());
        let smuggled = matches!(on_same.await, Ok(Ok(_)))
            || upstream.connection_within(Duration::from_millis(300)).await;
        (first, smuggled)
    });
    assert_eq!(first.method, "POST");
    assert!(
        first.body.is_empty(),
        "the body is what Transfer-Encoding framed"
    );
    assert_eq!(
        first.header("content-length"),
        None,
        "one framing reaches the upstream"
    );
    assert_eq!(
        reply.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {reply}"
    );
    assert!(!smuggled, "the trailing request never reached the upstream");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_upstream, gateway) = setup().await;
    let request = format!(
        "GET /api/stream HTTP/1.1\r\nhost: gw\r\nx-huge: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    // The gateway may answer and close before all of it is written.
    let _ = client.write_all(request.as_bytes()).await;
    let mut reply = vec![0u8; 64];
    let n = tokio::time::timeout(LIVENESS, client.read(&mut reply))
        .await
        .unwrap()
        .unwrap_or(0);
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let (upstream, gateway) = setup().await;
    // Declared: refused before the upstream hears of it.
    let declared = format!(
        "POST /api/stream HTTP/1.1\r\nhost: gw\r\ncontent-length: 2048\r\nconnection: close\r\n\r\n{}",
        "x".repeat(2048)
    );
    let reply = raw_exchange(&gateway, declared.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"type\":\"payload_too_large\""), "{reply}");
    assert!(!upstream.connection_within(Duration::from_millis(200)).await);

    // Chunked: cut off as it streams.
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST /api/stream HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (reply, _) = tokio::join!(raw_exchange(&gateway, chunked.as_bytes()), async {
        // The upstream may see the start of the request; it never gets it whole.
        upstream.connection_within(Duration::from_millis(500)).await
    });
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let metrics = gateway.metrics().await;
    let upstream_errors: f64 = ["connect", "connect_timeout", "header_timeout", "failed"]
        .iter()
        .map(|kind| {
            metrics.get(
                "sse_gateway_upstream_errors_total",
                &[("route", "chat"), ("kind", kind)],
            )
        })
        .sum();
    assert_eq!(
        upstream_errors, 0.0,
        "a client's oversize body is not an upstream error"
    );
}

#[tokio::test]
async fn an_absolute_form_uri_never_makes_an_open_proxy() {
    let (upstream, gateway) = setup().await;
    let request = b"GET http://169.254.169.254/api/stream/latest/meta-data HTTP/1.1\r\n\
host: 169.254.169.254\r\nconnection: close\r\n\r\n";
    let (reply, seen) = tokio::join!(raw_exchange(&gateway, request), async {
        let mut exchange = upstream.accept().await;
        exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        exchange.request
    });
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    // The configured upstream got it, by path; the named host was never contacted.
    assert_eq!(seen.target, "/api/stream/latest/meta-data");
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn query_values_with_line_breaks_never_become_headers() {
    let upstream = ScriptedUpstream::bind().await;
    let route = "    request:
      method: POST
      body: query_as_json
";
    let gateway = start_gateway(&one_route_config(&upstream.url(), route)).await;
    let (response, seen) = tokio::join!(
        get(
            gateway.addr,
            "/api/stream?q=hi%0D%0AX-Injected:%201%0D%0A%0D%0AGET%20/x"
        ),
        async {
            let mut exchange = upstream.accept().await;
            exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            exchange.request
        }
    );
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!seen.has_header("x-injected"));
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["q"], "hi\r\nX-Injected: 1\r\n\r\nGET /x");
}

/// One response as raw bytes from the upstream, then its close; what the client got.
async fn through_gateway(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    wire: &[u8],
) -> (StatusCode, String) {
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.write(wire).await;
    });
    let status = response.status();
    (status, body_text(response).await)
}

#[tokio::test]
async fn malformed_upstream_responses_are_a_502_or_an_error_event() {
    let (upstream, gateway) = setup().await;
    for wire in [
        &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\ndata:",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-le",
    ] {
        let (status, body) = through_gateway(&gateway, &upstream, wire).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{}: {body}", String::from_utf8_lossy(wire));
        assert!(body.contains("\"type\":\"upstream_error\""), "{body}");
    }
    // The head was fine, the framing breaks mid-stream: what came before it is kept.
    let bad_chunk =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        f\r\ndata: {\"v\":1}\n\n\r\nZZ\r\ndata: 2\n\n\r\n";
    let (status, body) = through_gateway(&gateway, &upstream, bad_chunk).await;
    assert_eq!(status, StatusCode::OK);
    let events = client_events(&body);
    assert_eq!(events[0].data, "{\"v\":1}", "{body}");
    assert_eq!(events[1].event, "error", "{body}");
    assert!(events[1].data.contains("invalid chunk size line"), "{body}");
    assert_eq!(events[2].data, "[DONE]");
}

#[tokio::test]
async fn event_streams_framed_by_length_or_by_the_close_are_read_whole() {
    let (upstream, gateway) = setup().await;
    let stream = "data: {\"v\":1}\n\ndata: {\"v\":2}\n\n";
    let by_length = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{stream}",
        stream.len()
    );
    let by_close = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{stream}"
    );
    for wire in [by_length, by_close] {
        let (status, body) = through_gateway(&gateway, &upstream, wire.as_bytes()).await;
        assert_eq!(status, StatusCode::OK);
        let data: Vec<String> = client_events(&body).into_iter().map(|e| e.data).collect();
        assert_eq!(data, ["{\"v\":1}", "{\"v\":2}", "[DONE]"], "{wire}: {body}");
    }
    let metrics = gateway
        .metrics_until("both streams ended", |m| {
            m.outcome_count("chat", "upstream_eof") == 2.0
        })
        .await;
    assert_eq!(metrics.outcome_count("chat", "upstream_error"), 0.0);
}

/// A gateway whose one route, with `route`'s keys, goes to an upstream that answers
/// its first request before reading the body ([`answer_before_the_body`]); the
/// upstream's task.
async fn early_answering(route: &str) -> (TestGateway, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let gateway = start_gateway(&one_route_config(&url, route)).await;
    let upstream = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        answer_before_the_body(tcp).await;
    });
    (gateway, upstream)
}

/// An upstream that answers `401` as soon as it has the request head and closes with
/// most of a large body unread (Go's server does so past 256 KiB): the client gets the
/// upstream's answer, not a 502 for the write that failed.
#[tokio::test]
async fn an_answer_before_the_whole_body_was_read_reaches_the_client() {
    let (gateway, upstream) =
        early_answering("    request: { max_body_size: 8MiB }\n    stream: { heartbeat: 0s }\n")
            .await;
    let request = http::Request::post("/api/stream")
        .header("host", "gw")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'a';
            4 * 1024 * 1024
        ])))
        .unwrap();
    let response = tokio::time::timeout(LIVENESS, send(gateway.addr, request))
        .await
        .expect("an answer in time");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    upstream.await.unwrap();
}

/// The same on a route without `stream`, through the pooled client, whose write of the
/// body fails on the reset before it has read the answer already received.
#[tokio::test]
async fn an_answer_before_the_whole_body_was_read_reaches_the_client_through_the_pool() {
    let (gateway, upstream) = early_answering("    request: { max_body_size: 8MiB }\n").await;
    let reply = post_reading_meanwhile(gateway.addr, "/api/stream", 4 * 1024 * 1024).await;
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    assert!(reply.ends_with(EARLY_ANSWER), "{reply}");
    upstream.await.unwrap();
}

/// The same for a client that sends its whole body before it reads (as most HTTP
/// libraries do): the gateway reads on what the upstream left unread, so the client's
/// writes complete and the answer is not lost to a reset.
#[tokio::test]
async fn an_early_answer_through_the_pool_reaches_a_client_that_reads_after_sending() {
    let (gateway, upstream) = early_answering("    request: { max_body_size: 32MiB }\n").await;
    let sent = tokio::time::timeout(
        LIVENESS,
        post_then_read(gateway.addr, "/api/stream", 16 * 1024 * 1024),
    )
    .await
    .expect("the body is read and the reply comes in time");
    let reply = sent.expect("the whole body is taken");
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    assert!(reply.ends_with(EARLY_ANSWER), "{reply}");
    upstream.await.unwrap();
}

/// What is left of the body is read on only while it keeps coming: a client that stops
/// sending midway has its connection closed once the route's `body_timeout` passes
/// without data, after its answer.
#[tokio::test]
async fn a_body_read_on_after_an_early_answer_is_let_go_when_it_stops_coming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gateway, upstream) =
        early_answering("    request: { max_body_size: 32MiB, body_timeout: 1s }\n").await;
    let mut client = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = "POST /api/stream HTTP/1.1\r\nhost: gateway\r\ncontent-length: 16777216\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    client
        .write_all(&vec![b'a'; 2 * 1024 * 1024])
        .await
        .unwrap();
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(LIVENESS, client.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the connection stays open: {closed:?}"
    );
    upstream.await.unwrap();
}

/// Sends `head` (which says `transfer-encoding: chunked`) and then a body without end
/// (a 64 KiB chunk every 10 ms) on a raw connection; true when the gateway ends the
/// connection within [`LIVENESS`] meanwhile, by a close or a reset: it did not read on
/// the body.
async fn ends_while_the_body_still_comes(addr: std::net::SocketAddr, head: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let sending = tokio::spawn(async move {
        let mut chunk = b"10000\r\n".to_vec();
        chunk.resize(chunk.len() + 64 * 1024, b'a');
        chunk.extend_from_slice(b"\r\n");
        while writer.write_all(&chunk).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut reply = Vec::new();
    let ended = tokio::time::timeout(LIVENESS, reader.read_to_end(&mut reply)).await;
    sending.abort();
    ended.is_ok()
}

/// A request the gateway answers itself (here a 400: the query is too long for the
/// upstream's URI) before anything took its body: that body is not read on, and the
/// connection closes after the answer even while the client still sends.
#[tokio::test]
async fn a_body_nothing_took_is_not_read_on_after_the_gateways_own_answer() {
    let (gateway, _upstream) = early_answering("    request: { max_body_size: 1GiB }\n").await;
    let query = "a".repeat(65_500);
    let head = format!(
        "POST /api/stream?q={query} HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert!(ends_while_the_body_still_comes(gateway.addr, &head).await);
    let metrics = gateway.metrics().await;
    let refused = metrics.get(
        "sse_gateway_http_requests_total",
        &[("route", "chat"), ("method", "POST"), ("status", "400")],
    );
    assert_eq!(refused, 1.0, "{}", metrics.text);
}

/// An answer on a connection the client asked to close (`Connection: close`) ends with
/// the connection, so the body is not read on: the client would wait for the end.
#[tokio::test]
async fn an_early_answer_on_a_closing_connection_does_not_read_on_the_body() {
    let (gateway, upstream) = early_answering("    request: { max_body_size: 1GiB }\n").await;
    let head = "POST /api/stream HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
    assert!(ends_while_the_body_still_comes(gateway.addr, head).await);
    upstream.await.unwrap();
    let metrics = gateway.metrics().await;
    let answered = metrics.get(
        "sse_gateway_http_requests_total",
        &[("route", "chat"), ("method", "POST"), ("status", "401")],
    );
    assert_eq!(
        answered, 1.0,
        "the early answer was sent:\n{}",
        metrics.text
    );
}

/// Over HTTP/2 an answered stream's upload ends on its own (`RST_STREAM` with
/// `NO_ERROR`, RFC 9113 section 8.1): the gateway does not read on the body.
#[tokio::test]
async fn an_early_answer_over_h2_ends_the_upload() {
    let (gateway, upstream) = early_answering("    request: { max_body_size: 32MiB }\n").await;
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (chunks, body) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let feeding = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
        while chunks.send(chunk.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let request = http::Request::post(format!("http://{}/api/stream", gateway.addr))
        .body(ChannelBody(body))
        .unwrap();
    let response = tokio::time::timeout(LIVENESS, sender.send_request(request))
        .await
        .expect("the answer in time")
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    tokio::time::timeout(LIVENESS, feeding)
        .await
        .expect("the gateway stops taking the body")
        .unwrap();
    upstream.await.unwrap();
}

/// A request body fed from a channel, for as long as the test feeds it.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(hyper::body::Frame::data(chunk))))
    }
}

/// An upstream that resets the connection without an answer while the body is being
/// written is a 502 at once on either path, with the reset as its cause.
#[tokio::test]
async fn a_reset_without_an_answer_while_the_body_is_written_is_a_502() {
    for route in [
        "    request: { max_body_size: 8MiB }\n",
        "    request: { max_body_size: 8MiB }\n    stream: { heartbeat: 0s }\n",
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gateway = start_gateway(&one_route_config(&url, route)).await;
        let upstream = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_until(&mut tcp, b"\r\n\r\n").await;
        });
        let reply = post_reading_meanwhile(gateway.addr, "/api/stream", 4 * 1024 * 1024).await;
        assert!(reply.starts_with("HTTP/1.1 502 "), "{route}{reply}");
        assert!(reply.contains("reset by peer"), "{route}{reply}");
        upstream.await.unwrap();
    }
}

/// A route without `stream` passes the body through; an upstream that fails in the
/// middle of it counts in `upstream_errors_total` as on a supervised stream: `reset`
/// for a reset connection, `body` for a malformed chunk.
#[tokio::test]
async fn a_passthrough_body_cut_mid_way_counts_as_an_upstream_error() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), "")).await;
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    for (kind, cut) in [("reset", None), ("body", Some(&b"zz\r\n"[..]))] {
        let mut client = raw_get(gateway.addr, "/api/stream").await;
        let mut exchange = upstream.accept().await;
        exchange.write(head.as_bytes()).await;
        exchange.send_chunk(b"{\"partial\":").await;
        match cut {
            None => exchange.reset(),
            Some(bad) => exchange.write(bad).await,
        }
        let mut reply = Vec::new();
        let read = tokio::time::timeout(LIVENESS, client.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "the client's response ends");
        assert!(
            String::from_utf8_lossy(&reply).contains("{\"partial\":"),
            "what came before the cut was passed on"
        );
        gateway
            .metrics_until(&format!("a `{kind}` upstream error"), |m| {
                m.get(
                    "sse_gateway_upstream_errors_total",
                    &[("route", "chat"), ("kind", kind)],
                ) == 1.0
            })
            .await;
    }
}

/// Each hop has its own HTTP version: an HTTP/1.0 upstream (a body read to the close)
/// must not turn the client's HTTP/1.1 answer into an HTTP/1.0 one, which would cost
/// the client its kept-alive connection.
#[tokio::test]
async fn an_http_1_0_upstream_still_answers_the_client_in_http_1_1() {
    for stream in ["", "    stream: { terminator: { data: \"[DONE]\" } }\n"] {
        let upstream = ScriptedUpstream::bind().await;
        let gateway = start_gateway(&one_route_config(&upstream.url(), stream)).await;
        let mut client = raw_get(gateway.addr, "/api/stream").await;
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: a\n\ndata: [DONE]\n\n")
            .await;
        drop(exchange);
        // The whole first answer, its head and its chunked body's end.
        let head = tokio::time::timeout(LIVENESS, read_until(&mut client, b"0\r\n\r\n"))
            .await
            .expect("the first answer arrives whole");
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200"), "{stream:?}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{stream:?}: {head}"
        );
        // The connection is kept: a second request on it is answered.
        client
            .write_all(b"GET /api/stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
            .await
            .unwrap();
        let mut second = upstream.accept().await;
        second.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let head = tokio::time::timeout(LIVENESS, read_until(&mut client, b"\r\n\r\n"))
            .await
            .expect("the second answer's head arrives");
        assert!(head.starts_with(b"HTTP/1.1 204"), "{stream:?}");
    }
}
