//! Test harness: a real gateway on `127.0.0.1:0`, a scripted upstream speaking
//! HTTP/1.1 by hand on a real socket (so a test decides every byte and sees every
//! close), and a streaming client.
#![allow(dead_code)]

mod process;
pub mod raw_client;
pub mod redis_server;
#[allow(unused_imports)]
pub use process::GatewayProcess;

/// A port free on loopback now (a process started later may find it taken: callers
/// that can, check the server that answers is theirs).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sse_gateway::config::GatewayConfig;
use sse_gateway::gateway::{self, Running};
use sse_gateway::listener::ConnectionLimits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything that should happen "at once": liveness, not speed.
pub const LIVENESS: Duration = Duration::from_secs(5);

/// Reads metrics with `read` until `check` holds; fails the test after [`LIVENESS`]
/// naming `what`, with the last read and what `context` adds (a process's log).
pub async fn poll_metrics<F: std::future::Future<Output = Metrics>>(
    mut read: impl FnMut() -> F,
    what: &str,
    check: impl Fn(&Metrics) -> bool,
    context: impl Fn() -> String,
) -> Metrics {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let metrics = read().await;
        if check(&metrics) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed {what}:\n{}\n{}",
            metrics.text,
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway running in this test's runtime.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    running: Running,
}

impl TestGateway {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/metrics` from the admin listener, over HTTP, parsed.
    pub async fn metrics(&self) -> Metrics {
        let response = get(self.admin_addr, "/metrics").await;
        assert_eq!(response.status(), http::StatusCode::OK);
        Metrics::parse(&body_text(response).await)
    }

    /// Polls `/metrics` until `check` holds (within [`LIVENESS`]); returns the last read.
    pub async fn metrics_until(&self, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
        poll_metrics(|| self.metrics(), what, check, String::new).await
    }

    pub async fn shutdown(self) {
        self.running.shutdown(Duration::from_secs(1)).await;
    }

    pub fn gateway(&self) -> &std::sync::Arc<sse_gateway::gateway::Gateway> {
        self.running.gateway()
    }

    /// Applies `yaml` to the running gateway, as a reload does.
    pub async fn reload(&self, yaml: &str) {
        let config = sse_gateway::config::GatewayConfig::parse(yaml, "reload.yaml", &|_| None)
            .unwrap_or_else(|errors| panic!("{errors}\n{yaml}"));
        self.gateway().apply(config).await.unwrap();
    }
}

/// Starts a gateway on `yaml` (its `listen` is replaced by `127.0.0.1:0`), with
/// `${VAR}` answered from `env` only.
pub async fn start_gateway_with_env(yaml: &str, env: &[(&str, &str)]) -> TestGateway {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = GatewayConfig::parse(yaml, "test.yaml", &|name| env.get(name).cloned())
        .unwrap_or_else(|errors| panic!("test config is invalid:\n{errors}"));
    start_config(config).await
}

pub async fn start_gateway(yaml: &str) -> TestGateway {
    start_gateway_with_env(yaml, &[]).await
}

pub async fn start_config(config: GatewayConfig) -> TestGateway {
    start_config_with_limits(config, ConnectionLimits::default()).await
}

/// [`start_config`] under other connection deadlines (shortened, so that a test of a
/// 30 s deadline takes a second).
pub async fn start_config_with_limits(
    mut config: GatewayConfig,
    limits: ConnectionLimits,
) -> TestGateway {
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let running = gateway::start_with(config, limits)
        .await
        .expect("gateway starts");
    TestGateway {
        addr: running.local_addr(),
        admin_addr: running.admin_addr(),
        running,
    }
}

/// The gateway on `yaml` with a client send timeout of one second (60 s in the
/// gateway), for tests of clients that stop reading.
pub async fn start_with_send_timeout_1s(yaml: &str) -> TestGateway {
    let config = GatewayConfig::parse(yaml, "test.yaml", &|_| None).unwrap();
    let limits = ConnectionLimits {
        send_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    start_config_with_limits(config, limits).await
}

/// A raw client that has sent `GET path` and holds its connection: the test reads
/// (or drops it) as it needs.
pub async fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    client
}

/// A client that will stop reading, as one gone without a FIN: a 4 KiB receive
/// buffer, so the bytes it leaves unread soon fill the gateway's socket. `request` is
/// written at once.
pub async fn client_that_will_stop_reading(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client.write_all(request).await.unwrap();
    client
}

/// A config with one route `chat` on `/api/stream` to `upstream_url`, plus `extra`
/// route YAML (indented as a list item) appended.
pub fn one_route_config(upstream_url: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  assistant:\n    url: {upstream_url}\n    header_timeout: 2s\n\
         routes:\n  - name: chat\n    match: {{ path_prefix: /api/stream }}\n    upstream: assistant\n{route_extra}"
    )
}

// === metrics ===

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A parsed Prometheus text exposition.
pub struct Metrics {
    pub text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').expect("label pair");
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the series `name` with exactly `labels` (any order); 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    /// The value of the series `name` with exactly `labels` (any order), if exported.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, value)| *value)
    }

    /// `stream_duration_seconds_count` for a route and outcome.
    pub fn outcome_count(&self, route: &str, outcome: &str) -> f64 {
        self.get(
            "sse_gateway_stream_duration_seconds_count",
            &[("route", route), ("outcome", outcome)],
        )
    }

    pub fn route_value(&self, name: &str, route: &str) -> f64 {
        self.get(name, &[("route", route)])
    }
}

// === the scripted upstream ===

/// An upstream the test scripts byte by byte.
pub struct ScriptedUpstream {
    listener: TcpListener,
    pub addr: SocketAddr,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// One accepted upstream connection and the request read from it.
pub struct Exchange {
    pub request: RecordedRequest,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl ScriptedUpstream {
    pub async fn bind() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        ScriptedUpstream { listener, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts the next connection and reads its first request (within [`LIVENESS`]).
    pub async fn accept(&self) -> Exchange {
        let (stream, _) = tokio::time::timeout(LIVENESS, self.listener.accept())
            .await
            .expect("the gateway connects to the upstream in time")
            .unwrap();
        let mut exchange = Exchange {
            request: RecordedRequest {
                method: String::new(),
                target: String::new(),
                version: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
            },
            stream,
            buffer: Vec::new(),
        };
        exchange.request = exchange.read_request().await.expect("a request arrives");
        exchange
    }

    /// True if a new connection arrives within `wait`.
    pub async fn connection_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_ok()
    }
}

impl Exchange {
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(LIVENESS, self.stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timed out reading"))??;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                self.buffer.drain(..end + 2);
                return Ok(line);
            }
            if !self.fill().await? {
                return Err(std::io::Error::other("eof in a line"));
            }
        }
    }

    async fn read_exact_body(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buffer.len() < n {
            if !self.fill().await? {
                return Err(std::io::Error::other("eof in a body"));
            }
        }
        Ok(self.buffer.drain(..n).collect())
    }

    /// Reads one request (head and body, Content-Length or chunked).
    pub async fn read_request(&mut self) -> std::io::Result<RecordedRequest> {
        let request_line = self.read_line().await?;
        let mut parts = request_line.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let version = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line has a colon");
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut request = RecordedRequest {
            method,
            target,
            version,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = request.header("content-length") {
            let length: usize = length.parse().unwrap();
            request.body = self.read_exact_body(length).await?;
        } else if request
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size = usize::from_str_radix(self.read_line().await?.trim(), 16).unwrap();
                let chunk = self.read_exact_body(size + 2).await?;
                if size == 0 {
                    break;
                }
                request.body.extend_from_slice(&chunk[..size]);
            }
        }
        Ok(request)
    }

    /// Reads the next request on the same (kept-alive) connection.
    pub async fn next_request(&mut self) -> RecordedRequest {
        let request = self
            .read_request()
            .await
            .expect("a second request on this connection");
        self.request = request.clone();
        request
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// A 200 `text/event-stream` head with chunked encoding, plus `extra_headers`
    /// (each `Name: value\r\n`).
    pub async fn start_sse(&mut self, extra_headers: &str) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{extra_headers}\r\n"
        );
        self.write(head.as_bytes()).await;
    }

    /// One chunk of a chunked body.
    pub async fn send_chunk(&mut self, data: &[u8]) {
        let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
        self.write(&frame).await;
    }

    /// One chunk, reporting instead of panicking when the gateway has gone away.
    pub async fn try_send_chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
        self.stream.write_all(&frame).await?;
        self.stream.flush().await
    }

    /// The last chunk of a chunked body.
    pub async fn end_chunks(&mut self) {
        self.write(b"0\r\n\r\n").await;
    }

    /// The connection as a blocking socket, for a writer on a thread of its own that
    /// keeps the gateway's side full whatever the test's runtime is doing.
    pub fn into_blocking(self) -> std::net::TcpStream {
        let stream = self.stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    }

    /// Closes the connection with a TCP reset instead of an orderly close.
    pub fn reset(self) {
        // A zero linger makes close() send RST at once; it cannot block.
        #[allow(deprecated)]
        self.stream.set_linger(Some(Duration::ZERO)).unwrap();
        drop(self.stream);
    }

    /// Writes `bytes`, reporting whether all of them left within `wait`; a gateway
    /// that stops reading makes this time out once the socket buffers are full.
    pub async fn write_within(&mut self, bytes: &[u8], wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// True if the gateway closes this connection within `wait` (reads until EOF).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut sink = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Drains `gateway` (1 s of drain time) while `exchange`'s upstream writes `events`
/// again and again, as one chunk of a chunked body, from a thread of its own, as fast
/// as the gateway takes them; the client takes a frame a millisecond, slower than that,
/// so the gateway's reads of the upstream always find bytes waiting and its body is
/// never quiet. `response` is the client's side, flowing before the drain starts; its
/// body must end cleanly within the drain time and [`LIVENESS`]. Returns the body's
/// last 4 KiB (the stream is far too long to keep).
pub async fn drain_while_the_upstream_never_pauses(
    gateway: TestGateway,
    response: Response<Incoming>,
    mut exchange: Exchange,
    events: &str,
) -> String {
    let chunk = format!("{:x}\r\n{events}\r\n", events.len());
    exchange.write(chunk.as_bytes()).await;
    let mut socket = exchange.into_blocking();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        while socket.write_all(chunk.as_bytes()).is_ok() {}
    });
    let mut body = response.into_body();
    let first = tokio::time::timeout(LIVENESS, body.frame())
        .await
        .expect("the stream flows")
        .unwrap()
        .unwrap();
    assert!(first.is_data());
    let reader = tokio::spawn(async move {
        let mut tail = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("the body ends cleanly").into_data().unwrap();
            tail.extend_from_slice(&data);
            tail.drain(..tail.len().saturating_sub(4096));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        String::from_utf8(tail).unwrap()
    });
    // Nothing scraped /metrics, so the stop waits for no final scrape.
    let stop = tokio::spawn(gateway.shutdown());
    let tail = tokio::time::timeout(Duration::from_secs(1) + LIVENESS, reader)
        .await
        .expect("the drain time (1 s) ends the stream")
        .unwrap();
    stop.await.unwrap();
    writer.join().unwrap();
    tail
}

// === clients ===

/// A `HEAD` on `path` through `gateway`, which `upstream` answers with an event
/// stream's headers and (as after any HEAD) no body: the client's response, and the
/// upstream's exchange.
pub async fn head_of_an_event_stream(
    gateway: &TestGateway,
    upstream: &ScriptedUpstream,
    path: &str,
) -> (Response<Incoming>, Exchange) {
    let head = Request::head(path)
        .header("host", gateway.addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::join!(send(gateway.addr, head), async {
        let mut exchange = upstream.accept().await;
        exchange
            .write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        exchange
    })
}

/// Sends one request over a new HTTP/1.1 connection; the body streams.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    tokio::time::timeout(LIVENESS, sender.send_request(request))
        .await
        .expect("response headers in time")
        .unwrap()
}

pub async fn get(addr: SocketAddr, path_and_query: &str) -> Response<Incoming> {
    let request = Request::get(path_and_query)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, request).await
}

/// A response body read as a client reads it: event by event, whatever frames and
/// reads the bytes arrived in (the gateway sends all events of one upstream read as one
/// frame).
pub struct Events {
    body: Incoming,
    buffered: Vec<u8>,
}

impl Events {
    pub fn new(body: Incoming) -> Events {
        Events {
            body,
            buffered: Vec::new(),
        }
    }

    /// Takes the first complete event (through its blank line) out of the buffer.
    fn take_event(&mut self) -> Option<Bytes> {
        let end = self.buffered.windows(2).position(|w| w == b"\n\n")? + 2;
        Some(Bytes::from(self.buffered.drain(..end).collect::<Vec<u8>>()))
    }
}

/// The next event, blank line included (within [`LIVENESS`]); `None` at the end of the
/// body. Bytes after the last event at the end are a failed test. Cancel-safe.
pub async fn next_data(events: &mut Events) -> Option<Bytes> {
    loop {
        if let Some(event) = events.take_event() {
            return Some(event);
        }
        let frame = tokio::time::timeout(LIVENESS, events.body.frame())
            .await
            .expect("a frame arrives in time");
        let Some(frame) = frame else {
            assert!(
                events.buffered.is_empty(),
                "the body ended inside an event: {:?}",
                String::from_utf8_lossy(&events.buffered)
            );
            return None;
        };
        if let Ok(data) = frame.expect("the body does not fail").into_data() {
            events.buffered.extend_from_slice(&data);
        }
    }
}

/// The whole body as text (within [`LIVENESS`]).
pub async fn body_text(response: Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(LIVENESS, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The body parsed as the gateway's JSON error shape.
pub async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    serde_json::from_str(&body_text(response).await).expect("a JSON body")
}

/// One event as a spec-conformant client (an `EventSource`) dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    pub event: String,
    pub data: String,
}

/// Parses a stream as the WHATWG event-stream interpretation does: fields, one
/// optional space after the colon, data lines joined by LF, events without data not
/// dispatched, and an unterminated final event discarded.
pub fn client_events(stream: &str) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    let (mut event, mut data, mut has_data) = (String::new(), String::new(), false);
    let normalized = stream.replace("\r\n", "\n").replace('\r', "\n");
    let complete = match normalized.rfind("\n\n") {
        Some(end) => &normalized[..end + 2],
        None => "",
    };
    for line in complete.split('\n') {
        if line.is_empty() {
            if has_data {
                events.push(ClientEvent {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: data.clone(),
                });
            }
            event.clear();
            data.clear();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut event),
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    events
}

/// Reads from a raw stream until `needle` has been seen (within [`LIVENESS`]).
pub async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(LIVENESS, stream.read(&mut chunk))
            .await
            .expect("bytes arrive in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before {:?}",
            String::from_utf8_lossy(needle)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

// === an answer before the request body ===

/// What [`answer_before_the_body`] answers.
pub const EARLY_ANSWER: &str = "{\"error\":\"bad api key\"}";

/// An upstream that answers `401` as soon as it has the request head and closes with
/// most of a large body unread, so that its kernel resets the connection.
pub async fn answer_before_the_body<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    read_until(&mut stream, b"\r\n\r\n").await;
    let head = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{EARLY_ANSWER}",
        EARLY_ANSWER.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
}

/// Posts a body of `len` bytes on a raw socket and reads the reply as it writes, as a
/// client that watches for an early answer does (curl): the writes may fail once the
/// gateway has answered and closed. The reply's head and body (by its
/// `Content-Length`), or what came before the connection ended.
pub async fn post_reading_meanwhile(addr: SocketAddr, path: &str, len: usize) -> String {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let path = path.to_owned();
    // The writer is kept, not dropped, when it is done: dropping it would close the
    // sending side, and a gateway that sees its client close may close too.
    let sending = tokio::spawn(async move {
        write_post(&mut writer, &path, len).await?;
        std::io::Result::Ok(writer)
    });
    let reply = read_reply(&mut reader).await;
    sending.abort();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Posts a body of `len` bytes on a raw socket, all of it, and only then reads the
/// reply, as a client that does not watch for an early answer does: the write's
/// error, or the reply (as [`post_reading_meanwhile`] reads it).
pub async fn post_then_read(addr: SocketAddr, path: &str, len: usize) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    write_post(&mut stream, path, len).await?;
    let reply = read_reply(&mut stream).await;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

async fn write_post<W: AsyncWrite + Unpin>(
    writer: &mut W,
    path: &str,
    len: usize,
) -> std::io::Result<()> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await?;
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        writer.write_all(&chunk[..n]).await?;
        sent += n;
    }
    Ok(())
}

/// The reply's head and body (by its `Content-Length`), or what came before the
/// connection ended or failed.
async fn read_reply<R: AsyncRead + Unpin>(reader: &mut R) -> Vec<u8> {
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !whole_reply(&reply) {
        let read = tokio::time::timeout(LIVENESS, reader.read(&mut chunk))
            .await
            .expect("the reply arrives in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    reply
}

/// True once `reply` holds a head and as much body as its `Content-Length` says.
fn whole_reply(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    reply.len() >= end + 4 + length
}
