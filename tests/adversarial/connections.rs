//! Connection-level abuse: connections that never complete a request (HTTP/1 and
//! h2c), a flood of idle admin connections, descriptor exhaustion, a reload of a huge
//! or deeply nested config, and a drain with streams open. See `tests/adversarial.rs`.
//!
//! The deadlines are shortened (the gateway runs with 30 s and 60 s) so each test
//! takes seconds; the behaviour does not depend on their length.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sse_gateway::config::GatewayConfig;
use sse_gateway::listener::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    }
}

async fn gateway_with(limits: ConnectionLimits, upstream: &str) -> TestGateway {
    let yaml = one_route_config(upstream, "");
    let config = GatewayConfig::parse(&yaml, "test.yaml", &|_| None).unwrap();
    start_config_with_limits(config, limits).await
}

/// Opens a connection and writes `bytes`, then keeps it (reading nothing).
async fn open_with(addr: SocketAddr, bytes: Vec<u8>) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if !bytes.is_empty() {
        stream.write_all(&bytes).await.unwrap();
    }
    stream
}

/// Reads (and discards) until the gateway closes the connection; false if it is still
/// open after `within`.
async fn closed_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens `n` connections sending `bytes` each, and counts how many the gateway has
/// closed within `within`.
async fn flood_closed(addr: SocketAddr, n: usize, bytes: &[u8], within: Duration) -> usize {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(open_with(addr, bytes.to_vec()).await);
    }
    let mut waits = JoinSet::new();
    for stream in streams {
        waits.spawn(closed_within(stream, within));
    }
    let mut closed = 0;
    while let Some(result) = waits.join_next().await {
        closed += usize::from(result.unwrap());
    }
    closed
}

#[tokio::test]
async fn h2c_connections_that_never_complete_a_request_are_closed_at_the_header_deadline() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = gateway_with(short_limits(), &upstream.url()).await;
    let mut half_headers = [PREFACE, SETTINGS].concat();
    // A HEADERS frame that announces 100 bytes and brings 10.
    half_headers.extend_from_slice(&[0, 0, 100, 1, 4, 0, 0, 0, 1]);
    half_headers.extend_from_slice(&[0x82; 10]);
    let (preface_only, half, slowloris) = tokio::join!(
        flood_closed(gateway.addr, 100, PREFACE, LIVENESS),
        flood_closed(gateway.addr, 100, &half_headers, LIVENESS),
        flood_closed(gateway.addr, 50, b"GET / HTTP/1.1\r\nhost: x\r\n", LIVENESS),
    );
    assert_eq!(preface_only, 100, "h2c connections with the preface only");
    assert_eq!(half, 100, "h2c connections with half a HEADERS frame");
    assert_eq!(slowloris, 50, "HTTP/1 connections with half a head");
    // And the port still answers.
    assert_eq!(get(gateway.addr, "/nowhere").await.status(), 404);
}

/// An h2c client over a new connection; the connection task's handle says when the
/// gateway closed it.
async fn h2c_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, connection)
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_but_one_with_an_open_stream_is_not() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = gateway_with(short_limits(), &upstream.url()).await;

    // After its one response, an idle connection closes (GOAWAY, then the socket).
    let (mut idle, idle_connection) = h2c_client(gateway.addr).await;
    let request = http::Request::get(gateway.url("/nowhere"))
        .body(Empty::new())
        .unwrap();
    let response = idle.send_request(request).await.unwrap();
    assert_eq!(response.status(), 404);
    tokio::time::timeout(LIVENESS, idle_connection)
        .await
        .expect("the idle h2c connection is closed")
        .unwrap();

    // A stream open longer than both deadlines keeps its connection.
    let (mut busy, busy_connection) = h2c_client(gateway.addr).await;
    let request = http::Request::get(gateway.url("/api/stream"))
        .body(Empty::new())
        .unwrap();
    let (response, mut exchange) = tokio::join!(busy.send_request(request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut body = response.unwrap().into_body();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        exchange
            .send_chunk(format!("data: {i}\n\n").as_bytes())
            .await;
        let frame = tokio::time::timeout(LIVENESS, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .unwrap();
        let data = frame.into_data().unwrap();
        assert_eq!(data, format!("data: {i}\n\n"));
    }
    assert!(!busy_connection.is_finished());
    exchange.end_chunks().await;
}

#[tokio::test]
async fn admin_healthz_answers_while_hundreds_of_idle_admin_connections_are_open() {
    let upstream = ScriptedUpstream::bind().await;
    // The real deadlines: the idle connections stay until the cap makes room.
    let gateway = gateway_with(ConnectionLimits::default(), &upstream.url()).await;
    let mut idle = Vec::new();
    for i in 0..300 {
        let bytes: &[u8] = if i % 3 == 0 {
            b"GET /healthz HTTP/1.1\r\n"
        } else {
            b""
        };
        idle.push(open_with(gateway.admin_addr, bytes.to_vec()).await);
    }
    // A prober that sends its request at once, again and again.
    for _ in 0..20 {
        let started = tokio::time::Instant::now();
        let response = get(gateway.admin_addr, "/healthz").await;
        assert_eq!(response.status(), 200);
        assert_eq!(body_text(response).await, "ok\n");
        assert!(started.elapsed() < LIVENESS);
    }
    drop(idle);
}

#[tokio::test]
async fn idle_admin_connections_are_closed_at_the_deadlines() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = gateway_with(short_limits(), &upstream.url()).await;
    let (silent, slowloris) = tokio::join!(
        flood_closed(gateway.admin_addr, 30, b"", LIVENESS),
        flood_closed(
            gateway.admin_addr,
            20,
            b"GET /metrics HTTP/1.1\r\n",
            LIVENESS
        ),
    );
    assert_eq!((silent, slowloris), (30, 20));

    // A kept-alive connection closes once idle after its response.
    let mut stream = TcpStream::connect(gateway.admin_addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stream, b"ok\n").await;
    assert!(closed_within(stream, LIVENESS).await);
}

/// A supervised route `chat` and a passed-through route `raw`, both to `upstream`.
fn two_routes(upstream: &str, drain: &str) -> String {
    format!(
        "listen: LISTEN
admin: {{ listen: ADMIN }}
drain_timeout: {drain}
upstreams:
  assistant: {{ url: {upstream} }}
routes:
  - name: chat
    match: {{ path_prefix: /api/stream }}
    upstream: assistant
    stream:
      terminator: {{ data: \"[DONE]\" }}
      heartbeat: 0
  - name: raw
    match: {{ path_prefix: /raw }}
    upstream: assistant
"
    )
}

/// Opens a stream on `path`, has the upstream send one event, and returns the body
/// with the upstream exchange still open.
async fn open_stream(
    gateway: SocketAddr,
    upstream: &ScriptedUpstream,
    path: &str,
) -> (Events, Exchange) {
    let (response, mut exchange) = tokio::join!(get(gateway, path), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    exchange.send_chunk(b"data: hello\n\n").await;
    assert_eq!(next_data(&mut body).await.unwrap(), "data: hello\n\n");
    (body, exchange)
}

#[tokio::test]
async fn sigterm_ends_passthrough_streams_cleanly_and_exits_soon_after_the_drain_time() {
    let upstream = ScriptedUpstream::bind().await;
    let mut gateway = GatewayProcess::start("drain-raw", &two_routes(&upstream.url(), "1s")).await;
    let (mut raw, _raw_exchange) = open_stream(gateway.addr, &upstream, "/raw").await;
    let (mut chat, _chat_exchange) = open_stream(gateway.addr, &upstream, "/api/stream").await;

    let signalled = tokio::time::Instant::now();
    gateway.signal("TERM");
    // The passed-through stream ends with its final chunk: a clean end of body.
    assert_eq!(next_data(&mut raw).await, None);
    let error = next_data(&mut chat).await.unwrap();
    assert!(
        String::from_utf8_lossy(&error).contains("\"shutdown\""),
        "{error:?}"
    );
    assert_eq!(next_data(&mut chat).await.unwrap(), "data: [DONE]\n\n");
    assert_eq!(next_data(&mut chat).await, None);
    // Nothing scraped this gateway, so there is no final-scrape wait: drain (1 s),
    // then at most the 2 s flush, plus a margin for a busy machine.
    assert_eq!(gateway.exit_code(Duration::from_secs(10)).await, Some(0));
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    let log = gateway.log_text();
    assert!(
        log.lines().any(|l| l.contains("request finished")
            && l.contains("route=\"raw\"")
            && l.contains("end=\"shutdown\"")),
        "{log}"
    );
    assert!(!log.contains("client_gone"), "{log}");
}
