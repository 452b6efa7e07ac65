//! Soak: 2,000 concurrent streams whose clients leave at random moments, for 60 s.
//! Afterwards no stream counts as active or stuck, no admission slot is held (the route
//! has `limits`), and no task or socket is left behind beyond the upstream pool's
//! bounded idle connections.
//!
//! A minute of load: `.ci/run` runs it in release mode with
//! `cargo test --release --test soak -- --ignored`.

mod support;

use std::time::Duration;

use sse_gateway::upstream::POOL_MAX_IDLE;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS: usize = 2_000;
const SOAK: Duration = Duration::from_secs(60);

// Every gap between tokens (150 ms) outlasts `stuck_after` (100 ms): every stream is
// stuck for a third of its life, and many clients leave while it is. That the stuck
// gauge ends at 0 must not depend on the machine being slow enough to stall a stream.
const CONFIG: &str = "
upstreams:
  demo:
    demo: { token_interval: 150ms }
routes:
  - name: chat
    match: { path_prefix: /api/stream }
    upstream: demo
    stream:
      rules:
        - repair: orphan_lines
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: \"[DONE]\" }
      stuck_after: 100ms
      heartbeat: 50ms
    limits: { max_streams: 100000, per_client: { header: authorization, max_streams: 100000 } }
";

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, std::iter::Iterator::count)
}

/// A small deterministic generator: each client leaves at its own random moments.
struct XorShift(u64);

impl XorShift {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Opens streams one after another until `until`, each abandoned after a random time
/// (or read to its end); returns how many it opened.
async fn client(gateway: std::net::SocketAddr, seed: u64, until: tokio::time::Instant) -> u64 {
    let mut random = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut opened = 0;
    let mut buffer = vec![0u8; 4096];
    while tokio::time::Instant::now() < until {
        let Ok(mut stream) = TcpStream::connect(gateway).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let request = format!("GET /api/stream?q=soak{seed} HTTP/1.1\r\nhost: gw\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        opened += 1;
        let leave_after = Duration::from_millis(random.next_ms(1_500));
        let _ = tokio::time::timeout(leave_after, async {
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
        })
        .await;
        // Dropping the socket is the client leaving, at whatever moment it was.
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 60 s soak; .ci/run runs it in release mode"]
async fn random_disconnects_across_2000_streams_leave_nothing_behind() {
    let gateway = start_gateway(CONFIG).await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let fds_before = open_fds();
    let tasks_before = runtime.num_alive_tasks();

    let until = tokio::time::Instant::now() + SOAK;
    let clients: Vec<_> = (0..STREAMS as u64)
        .map(|seed| tokio::spawn(client(gateway.addr, seed, until)))
        .collect();
    gateway
        .metrics_until("streams hold admission slots", |m| {
            m.route_value("sse_gateway_admission_streams", "chat") > 100.0
        })
        .await;
    let mut opened = 0;
    for client in clients {
        opened += client.await.unwrap();
    }
    assert!(opened >= STREAMS as u64, "{opened} streams opened");

    let metrics = gateway
        .metrics_until("every stream ended and gave back its slot", |m| {
            m.route_value("sse_gateway_streams_active", "chat") == 0.0
                && m.route_value("sse_gateway_streams_stuck", "chat") == 0.0
                && m.route_value("sse_gateway_admission_streams", "chat") == 0.0
        })
        .await;
    let ended: f64 = ["terminator", "client_closed", "upstream_eof"]
        .iter()
        .map(|outcome| metrics.outcome_count("chat", outcome))
        .sum();
    let streams = metrics.get(
        "sse_gateway_http_requests_total",
        &[("route", "chat"), ("method", "GET"), ("status", "200")],
    );
    // A client that leaves before its response exists never becomes a stream.
    assert!(
        streams > 0.5 * opened as f64,
        "{streams} streams of {opened} requests"
    );
    assert_eq!(ended, streams, "one outcome per stream:\n{}", metrics.text);
    assert!(metrics.outcome_count("chat", "client_closed") > 0.0);
    assert!(
        metrics.route_value("sse_gateway_stuck_total", "chat") > 0.0,
        "streams got stuck on the way"
    );

    // Idle pooled upstream connections may stay (two sockets and a task or two each);
    // anything per stream would be thousands.
    let allowance = 2 * POOL_MAX_IDLE + 16;
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let (fds, tasks) = (open_fds(), runtime.num_alive_tasks());
        if fds <= fds_before + allowance && tasks <= tasks_before + allowance {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {fds} fds (before {fds_before}), {tasks} tasks (before {tasks_before}) after {opened} streams"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
