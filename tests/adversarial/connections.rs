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
async fn a_client_that_takes_no_bytes_is_closed_at_the_send_timeout_and_its_stream_ends() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(&upstream.url(), "    stream: { heartbeat: 0s }\n");
    let gateway = start_with_send_timeout_1s(&yaml).await;
    // A client gone without a word: it never reads past the first event, and sends no
    // FIN.
    let request = b"GET /api/stream HTTP/1.1\r\nhost: gateway\r\n\r\n";
    let mut client = client_that_will_stop_reading(gateway.addr, request).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: first\n\n").await;
    read_until(&mut client, b"data: first\n\n").await;
    // The upstream goes on writing; the gateway must let go of it, not hold it for
    // the kernel's quarter of an hour.
    let event = format!("data: {}\n\n", "x".repeat(1000)).into_bytes();
    let upstream_released = async {
        while exchange.try_send_chunk(&event).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), upstream_released)
        .await
        .expect("the upstream connection is closed soon after the send timeout");
    gateway
        .metrics_until("the stream ended as the client's", |m| {
            m.outcome_count("chat", "client_closed") == 1.0
        })
        .await;
    drop(client);
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

/// A scraper's kept-alive admin connection, idle between scrapes, is the one that makes
/// room when a new connection comes at the cap. A scrape it had already sent when the
/// gateway took the new connection is answered before it closes: the connection was
/// idle only because its request was not read yet.
#[tokio::test]
async fn a_scrape_already_sent_when_its_connection_is_chosen_to_make_room_is_answered() {
    let upstream = ScriptedUpstream::bind().await;
    let limits = ConnectionLimits {
        admin_max_connections: 1,
        ..ConnectionLimits::default()
    };
    let gateway = gateway_with(limits, &upstream.url()).await;
    for round in 0..6 {
        let mut scraper = TcpStream::connect(gateway.admin_addr).await.unwrap();
        scraper
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut scraper, b"ok\n").await;
        // The new connection, then at once the next scrape, in two orders. Made by the
        // kernel while this runtime (the gateway's) is held, the gateway sees both in
        // one turn: it reads the scrape as it acts on the eviction. Made by a connect
        // that lets the runtime turn, the scrape lands after the runtime looked: the
        // gateway takes the new connection before it has seen the scrape.
        let newcomer = if round % 2 == 0 {
            std::net::TcpStream::connect(gateway.admin_addr).unwrap()
        } else {
            let newcomer = TcpStream::connect(gateway.admin_addr).await.unwrap();
            newcomer.into_std().unwrap()
        };
        let scrape = b"GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\n";
        assert_eq!(scraper.try_write(scrape).unwrap(), scrape.len());

        let mut answer = Vec::new();
        tokio::time::timeout(LIVENESS, scraper.read_to_end(&mut answer))
            .await
            .expect("the scraper's connection ends")
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("sse_gateway_"),
            "round {round}: the scrape is answered before its connection closes: {answer:?}"
        );
        // The new connection took the scraper's place: it is served.
        newcomer.set_nonblocking(true).unwrap();
        let mut newcomer = TcpStream::from_std(newcomer).unwrap();
        newcomer
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut newcomer, b"ok\n").await;
    }
}

/// A scrape's answer counts as finished once hyper has taken its body, not once its
/// bytes are out: a large one to a slow reader is still being written when its
/// connection, idle by that count, is chosen to make room. It is written whole before
/// the connection closes.
#[tokio::test]
async fn a_scrape_still_being_written_when_its_connection_is_chosen_to_make_room_is_written_whole()
{
    let upstream = ScriptedUpstream::bind().await;
    let limits = ConnectionLimits {
        admin_max_connections: 1,
        ..ConnectionLimits::default()
    };
    // Series for every route: a /metrics of 7 MB, more than the kernel's buffers on
    // both ends hold (a send buffer grows to 4 MiB, tcp_wmem's default), so that
    // hyper still has part of it when the new connection comes.
    let yaml = many_routes(&upstream.url(), 300);
    let config = GatewayConfig::parse(&yaml, "test.yaml", &|_| None).unwrap();
    let gateway = start_config_with_limits(config, limits).await;
    let mut scraper = client_that_will_stop_reading(
        gateway.admin_addr,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\n",
    )
    .await;
    let head = read_until(&mut scraper, b"\r\n\r\n").await;
    let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head_text = String::from_utf8_lossy(&head[..head_end]).to_ascii_lowercase();
    let length: usize = head_text
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();

    let mut newcomer = TcpStream::connect(gateway.admin_addr).await.unwrap();
    newcomer
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut newcomer, b"ok\n").await;

    let mut rest = Vec::new();
    tokio::time::timeout(LIVENESS, scraper.read_to_end(&mut rest))
        .await
        .expect("the scraper's connection ends")
        .unwrap();
    assert_eq!(
        head.len() - head_end + rest.len(),
        length,
        "the whole answer, then the close"
    );
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

/// One supervised route `chat` to `upstream`, then `extra` routes named `r0`, `r1`...
/// (each with a rule and its own path): a big, valid file.
fn many_routes(upstream: &str, extra: usize) -> String {
    let mut yaml = format!(
        "upstreams:\n  assistant: {{ url: {upstream} }}\nroutes:\n  - name: chat\n    match: {{ path_prefix: /api/stream }}\n    upstream: assistant\n    stream: {{ heartbeat: 0 }}\n"
    );
    for i in 0..extra {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /generated/{i}, methods: [GET, POST] }}\n    upstream: assistant\n    request: {{ method: POST, body: query_as_json }}\n    stream:\n      rules: [ {{ repair: orphan_lines }}, {{ replace: {{ pattern: 'x{i}', with: y }} }} ]\n"
        ));
    }
    yaml
}

/// Replaces the file at `path` the way Kubernetes does: write aside, rename over.
fn replace_file(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[tokio::test]
async fn reloading_a_huge_or_deeply_nested_config_never_stalls_streams_or_health() {
    // The test's runtime has one thread: a reload that parsed on it would stop the
    // stream and /healthz below for as long as the parse takes.
    let upstream = ScriptedUpstream::bind().await;
    let dir = std::env::temp_dir().join(format!("sse-gateway-deep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    let small = many_routes(&upstream.url(), 0);
    std::fs::write(&path, &small).unwrap();
    let gateway = start_gateway(&small).await;
    let watcher = tokio::spawn(sse_gateway::reload::watch(
        path.clone(),
        gateway.gateway().clone(),
        None,
        small.into_bytes(),
    ));
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut events = Events::new(response.into_body());

    // Pumps an event every 50 ms and reads it back, with /healthz asked each time,
    // until `until` holds; the longest round trip.
    async fn pump_until(
        exchange: &mut Exchange,
        events: &mut Events,
        admin: SocketAddr,
        until: impl AsyncFn() -> bool,
    ) -> Duration {
        let mut slowest = Duration::ZERO;
        let started = tokio::time::Instant::now();
        for i in 0.. {
            let sent = tokio::time::Instant::now();
            exchange
                .send_chunk(format!("data: {i}\n\n").as_bytes())
                .await;
            assert_eq!(next_data(events).await.unwrap(), format!("data: {i}\n\n"));
            assert_eq!(get(admin, "/healthz").await.status(), 200);
            slowest = slowest.max(sent.elapsed());
            if until().await {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the reload never ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest
    }
    let reloads = |result: &'static str, count: f64| {
        let admin = gateway.admin_addr;
        async move || {
            let metrics = Metrics::parse(&body_text(get(admin, "/metrics").await).await);
            metrics.get("sse_gateway_config_reloads_total", &[("result", result)]) >= count
        }
    };

    // 60,000 levels deep: refused from its first 64 levels, with the place.
    let deep = format!("routes: {}{}\n", "[".repeat(60_000), "]".repeat(60_000));
    let started = tokio::time::Instant::now();
    replace_file(&path, &deep);
    let slowest = pump_until(
        &mut exchange,
        &mut events,
        gateway.admin_addr,
        reloads("failure", 1.0),
    )
    .await;
    assert!(
        started.elapsed() < LIVENESS,
        "the deep file took {:?}",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(2),
        "an event took {slowest:?}"
    );
    let error = sse_gateway::config::GatewayConfig::load(&path)
        .unwrap_err()
        .to_string();
    let prefix = format!("{}:1:", path.display());
    assert!(
        error.starts_with(&prefix) && error.contains("nest deeper than 64 levels"),
        "{error}"
    );

    // Thousands of valid routes: applied while the stream flows.
    replace_file(&path, &many_routes(&upstream.url(), 1_000));
    let slowest = pump_until(
        &mut exchange,
        &mut events,
        gateway.admin_addr,
        reloads("success", 1.0),
    )
    .await;
    assert!(
        slowest < Duration::from_secs(2),
        "an event took {slowest:?}"
    );
    // The new routes are in force: this one takes GET and POST only.
    let delete = http::Request::delete("/generated/999")
        .header("host", "gateway")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(gateway.addr, delete).await.status(), 405);

    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config for the real binary: one passed-through route.
fn process_config(upstream: &str) -> String {
    format!(
        "listen: LISTEN\nadmin: {{ listen: ADMIN }}\nupstreams:\n  assistant: {{ url: {upstream} }}\nroutes:\n  - name: raw\n    match: {{ path_prefix: /raw }}\n    upstream: assistant\n"
    )
}

fn reload_counts(metrics: &Metrics) -> (f64, f64, f64) {
    (
        metrics.get("sse_gateway_config_reloads_total", &[("result", "success")]),
        metrics.get("sse_gateway_config_reloads_total", &[("result", "failure")]),
        metrics.get("sse_gateway_config_read_errors_total", &[]),
    )
}

#[tokio::test]
async fn an_unreadable_config_file_is_a_read_error_not_a_reload() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = GatewayProcess::start("unreadable", &process_config(&upstream.url())).await;
    let metrics = gateway.metrics().await;
    assert_eq!(reload_counts(&metrics), (0.0, 0.0, 0.0));
    assert!(
        metrics
            .text
            .contains("\nsse_gateway_config_read_errors_total 0\n"),
        "exported from the start, so increase() sees the first one"
    );
    let content = std::fs::read(&gateway.config).unwrap();

    // The path becomes a dangling symlink, as a half-done ConfigMap swap can leave it.
    let aside = gateway.dir.join("dangling");
    std::os::unix::fs::symlink(gateway.dir.join("nowhere.yaml"), &aside).unwrap();
    std::fs::rename(&aside, &gateway.config).unwrap();
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while reload_counts(&gateway.metrics().await).2 < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same content back: readable again, and no reload.
    std::fs::write(&aside, &content).unwrap();
    std::fs::rename(&aside, &gateway.config).unwrap();
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while !gateway.log_text().contains("readable again") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (success, failure, read_errors) = reload_counts(&gateway.metrics().await);
    assert_eq!((success, failure), (0.0, 0.0), "{}", gateway.log_text());
    assert!(read_errors >= 2.0);
    let log = gateway.log_text();
    assert_eq!(
        log.matches("config file unreadable").count(),
        1,
        "logged once:\n{log}"
    );
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_descriptors_the_listeners_back_off_and_the_watcher_counts_read_errors() {
    let upstream = ScriptedUpstream::bind().await;
    let config = process_config(&upstream.url());
    let gateway = GatewayProcess::start_limited("emfile", &config, Some(64)).await;
    // Idle connections to both ports until the gateway has no descriptor left.
    let mut held = Vec::new();
    for i in 0..120 {
        let addr = if i % 2 == 0 {
            gateway.addr
        } else {
            gateway.admin
        };
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let pid = gateway.child.id();
    // The accept queues stay full: a loop without a backoff spins a core here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // Clock ticks are 1/100 s: 2 s of spinning would be 200.
    assert!(
        used < 50,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    drop(held);

    // Descriptors back: health answers, and the watcher's failed reads were read
    // errors, not reloads.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let metrics = loop {
        let metrics = gateway.metrics().await;
        if reload_counts(&metrics).2 >= 1.0 || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (success, failure, read_errors) = reload_counts(&metrics);
    let log = gateway.log_text();
    assert!(read_errors >= 1.0, "{log}");
    assert_eq!((success, failure), (0.0, 0.0), "{log}");
    assert_eq!(get(gateway.admin, "/healthz").await.status(), 200);
    // Once per run of failures (about 25 each here), not once per attempt.
    assert!(log.matches("accept failed").count() <= 4, "{log}");
}

/// An h2 client that grants its stream no flow-control window: hyper never polls the
/// response body, so none of the stream's clocks run. Its connection is closed at the
/// send timeout, the upstream let go and the stream recorded.
#[tokio::test]
async fn an_h2_client_that_opens_no_window_is_closed_at_the_send_timeout() {
    let (upstream, gateway, stream) = stream_route_with_send_timeout_1s().await;
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let (_response, mut exchange) = first_event_over_h2(&mut sender, &gateway, &upstream).await;
    // The head came; the body, never read, holds the stream's window at 0.
    assert!(
        exchange.closed_within(Duration::from_secs(20)).await,
        "the upstream is let go soon after the send timeout"
    );
    let ended = tokio::time::timeout(LIVENESS, connection).await;
    assert!(ended.is_ok(), "the client's connection is closed");
    gateway
        .metrics_until("the stream ended as the client's", |m| {
            m.outcome_count("chat", "client_closed") == 1.0
        })
        .await;
}

/// The same send timeout leaves an h2 stream alone that is quiet because its upstream
/// is (a model thinking), with a client that reads.
#[tokio::test]
async fn a_quiet_h2_stream_outlives_the_send_timeout() {
    let (upstream, gateway, stream) = stream_route_with_send_timeout_1s().await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (response, mut exchange) = first_event_over_h2(&mut sender, &gateway, &upstream).await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: first\n\n");
    // Quiet for more than twice the send timeout, then the answer goes on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    exchange.send_chunk(b"data: second\n\n").await;
    exchange.end_chunks().await;
    let rest = tokio::time::timeout(LIVENESS, body.collect())
        .await
        .expect("the rest in time")
        .expect("the stream was not cut");
    assert_eq!(rest.to_bytes(), "data: second\n\n");
}

/// Asks for the stream over `sender` while the upstream starts it and sends one event:
/// the response (its head) and the upstream's side of the exchange.
async fn first_event_over_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
) -> (http::Response<hyper::body::Incoming>, Exchange) {
    let request = http::Request::get(gateway.url("/api/stream"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (response, exchange) = tokio::join!(sender.send_request(request), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: first\n\n").await;
        exchange
    });
    (response.unwrap(), exchange)
}

/// An upstream, a gateway with one stream route (no heartbeats) and a send timeout of
/// one second, and a connection to it.
async fn stream_route_with_send_timeout_1s() -> (ScriptedUpstream, TestGateway, TcpStream) {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(&upstream.url(), "    stream: { heartbeat: 0s }\n");
    let gateway = start_with_send_timeout_1s(&yaml).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    (upstream, gateway, stream)
}
