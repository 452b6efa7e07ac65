//! Socket-free tests of the supervised body with paused time: the clocks fire at
//! exactly their configured instants, over an in-memory upstream body.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{StreamPlan, SupervisedBody};
use crate::access_log::RequestLog;
use crate::config::GatewayConfig;
use crate::engine::Outcome;
use crate::metrics::{Metrics, RouteMetrics};

/// An upstream body fed from a channel; dropping the sender ends it.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|b| Ok(Frame::data(b))))
    }
}

struct Harness {
    body: SupervisedBody<ChannelBody>,
    shutdown: super::Shutdown,
    upstream: mpsc::UnboundedSender<Bytes>,
    metrics: Arc<RouteMetrics>,
    start: Instant,
}

/// The plan of a route whose `stream` section has `clocks` (defaults when empty), the
/// example route's rules (docs/architecture.md), and a synthesizing `[DONE]`
/// terminator; its metrics and shutdown.
fn plan(clocks: &str) -> (Arc<StreamPlan>, Arc<RouteMetrics>, super::Shutdown) {
    let yaml = format!(
        "upstreams: {{ demo: {{ demo: {{}} }} }}
routes:
  - name: chat
    match: {{ path_prefix: /s }}
    upstream: demo
    stream:
      rules:
        - repair: orphan_lines
        - drop: {{ pattern: '^:', name: pings }}
      terminator: {{ data: \"[DONE]\" }}
{clocks}"
    );
    let config = GatewayConfig::parse(&yaml, "test.yaml", &|_| None).unwrap();
    let stream = config.routes[0].stream.clone().unwrap();
    let metrics = Arc::new(Metrics::new().route(
        "chat",
        &["repair#0", "pings"],
        crate::protocol::Protocol::Sse,
    ));
    let shutdown = super::Shutdown::new();
    let plan = Arc::new(StreamPlan::new(
        Arc::from("chat"),
        &stream,
        metrics.clone(),
        shutdown.clone(),
    ));
    (plan, metrics, shutdown)
}

/// A supervised body over a channel, on [`plan`]'s route.
fn harness(clocks: &str) -> Harness {
    let (plan, metrics, shutdown) = plan(clocks);
    let (upstream, rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let log = RequestLog::new(start, http::Method::GET, "/s");
    Harness {
        body: SupervisedBody::new(ChannelBody(rx), plan, start, log, false),
        shutdown,
        upstream,
        metrics,
        start,
    }
}

impl Harness {
    /// The next frame's bytes and when it arrived, relative to the start.
    async fn next(&mut self) -> Option<(Bytes, Duration)> {
        let frame = self.body.frame().await?.unwrap();
        Some((frame.into_data().unwrap(), self.start.elapsed()))
    }

    fn send(&self, bytes: &'static [u8]) {
        self.upstream.send(Bytes::from_static(bytes)).unwrap();
    }
}

fn outcome_count(metrics: &RouteMetrics, outcome: Outcome) -> u64 {
    metrics.stream_duration(outcome).get_sample_count()
}

#[tokio::test(start_paused = true)]
async fn heartbeat_every_interval_while_the_upstream_is_silent() {
    let mut h = harness("");
    for n in 1..=3u64 {
        let (bytes, at) = h.next().await.unwrap();
        assert_eq!(bytes, ": keep-alive\n\n");
        assert_eq!(
            at,
            Duration::from_secs(15 * n),
            "heartbeat {n} at the default 15s interval"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn sent_events_postpone_the_heartbeat() {
    let mut h = harness("      heartbeat: 10s\n      stuck_after: 0\n");
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.send(b"data: 1\n\n");
    assert_eq!(
        h.next().await.unwrap(),
        (Bytes::from_static(b"data: 1\n\n"), Duration::from_secs(6))
    );
    let (bytes, at) = h.next().await.unwrap();
    assert_eq!(bytes, ": keep-alive\n\n");
    assert_eq!(at, Duration::from_secs(16), "10s after the last event sent");
}

#[tokio::test(start_paused = true)]
async fn pings_do_not_restart_the_data_clock_stuck_at_exactly_stuck_after() {
    let mut h = harness("      stuck_after: 30s\n      heartbeat: 0\n");
    h.send(b"data: 1\n\n");
    h.next().await.unwrap();
    let pinger = h.upstream.clone();
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(7)).await;
            if pinger.send(Bytes::from_static(b": ping\n\n")).is_err() {
                return;
            }
        }
    });
    // Poll the body in the background so its clock runs; watch the gauge.
    let mut body = h.body;
    let polling = tokio::spawn(async move {
        while body.frame().await.is_some() {}
        body
    });
    tokio::time::sleep(Duration::from_millis(29_999)).await;
    assert_eq!(h.metrics.streams_stuck.get(), 0, "not before 30s");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        h.metrics.streams_stuck.get(),
        1,
        "stuck at 30s although pings flowed"
    );
    assert_eq!(h.metrics.stuck_total.get(), 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.metrics.stuck_total.get(),
        1,
        "one stuck period, counted once"
    );

    h.upstream.send(Bytes::from_static(b"data: 2\n\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.metrics.streams_stuck.get(), 0, "data resumed");
    polling.abort();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_at_exactly_the_configured_time() {
    let mut h = harness("      idle_timeout: 5m\n      heartbeat: 0\n");
    h.send(b"data:\n{\"v\":1}\n\n");
    assert_eq!(h.next().await.unwrap().0, "data:{\"v\":1}\n\n");
    let (error, at) = h.next().await.unwrap();
    assert_eq!(at, Duration::from_secs(300));
    assert_eq!(
        error,
        "event: error\ndata: {\"error\":{\"type\":\"upstream_idle_timeout\",\"message\":\"no data from upstream for 5m\",\"route\":\"chat\"}}\n\n"
    );
    assert_eq!(h.next().await.unwrap().0, "data: [DONE]\n\n");
    assert_eq!(h.next().await, None);
    assert!(
        h.upstream.is_closed(),
        "the upstream is dropped when the stream ends"
    );
    drop(h.body);
    assert_eq!(
        h.metrics
            .stream_duration(Outcome::IdleTimeout)
            .get_sample_count(),
        1
    );
    assert_eq!(
        h.metrics
            .stream_duration(Outcome::IdleTimeout)
            .get_sample_sum(),
        300.0
    );
}

#[tokio::test(start_paused = true)]
async fn max_duration_counts_from_the_request_start() {
    let mut h = harness("      max_duration: 2m\n      heartbeat: 0\n      idle_timeout: 0\n");
    let feeder = h.upstream.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if feeder.send(Bytes::from_static(b"data: tick\n\n")).is_err() {
                return;
            }
        }
    });
    let mut ticks = 0;
    loop {
        let (bytes, at) = h.next().await.unwrap();
        if bytes.starts_with(b"event: error") {
            assert_eq!(at, Duration::from_secs(120));
            assert!(bytes.ends_with(b"\"type\":\"max_duration\",\"message\":\"stream reached its max_duration of 2m\",\"route\":\"chat\"}}\n\n"));
            break;
        }
        ticks += 1;
    }
    // Ticks at 10s..110s; the one at 120s shares the deadline's instant.
    assert!(
        (11..=12).contains(&ticks),
        "{ticks} ticks before the deadline"
    );
    assert_eq!(h.next().await.unwrap().0, "data: [DONE]\n\n");
    assert_eq!(h.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn terminator_ends_the_body_and_drops_the_upstream() {
    let mut h = harness("");
    h.send(b"data: a\n\ndata:\n[DONE]\n\ndata: after\n\n");
    assert_eq!(h.next().await.unwrap().0, "data: a\n\n");
    assert_eq!(h.next().await.unwrap().0, "data:[DONE]\n\n");
    assert_eq!(h.next().await, None);
    assert!(h.upstream.is_closed());
    drop(h.body);
    assert_eq!(
        h.metrics
            .stream_duration(Outcome::Terminator)
            .get_sample_count(),
        1
    );
    assert_eq!(h.metrics.streams_active.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_half_way_is_client_closed_exactly_once() {
    let mut h = harness("      stuck_after: 1s\n");
    h.send(b"data: a\n\n");
    h.next().await.unwrap();
    assert_eq!(h.metrics.streams_active.get(), 1);
    // Let it become stuck, then the client goes away.
    tokio::time::timeout(Duration::from_secs(2), h.next())
        .await
        .ok();
    assert_eq!(h.metrics.streams_stuck.get(), 1);
    drop(h.body);
    assert_eq!(outcome_count(&h.metrics, Outcome::ClientClosed), 1);
    assert_eq!(h.metrics.streams_active.get(), 0);
    assert_eq!(h.metrics.streams_stuck.get(), 0);
    let total: u64 = Outcome::ALL
        .iter()
        .map(|o| outcome_count(&h.metrics, *o))
        .sum();
    assert_eq!(total, 1, "exactly one outcome");
    assert!(h.upstream.is_closed());
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_stream_between_events() {
    let mut h = harness("      heartbeat: 0\n");
    h.send(b"data: whole\n\ndata: half");
    assert_eq!(h.next().await.unwrap().0, "data: whole\n\n");
    let shutdown = h.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        shutdown.fire();
    });
    let (error, at) = h.next().await.unwrap();
    assert_eq!(at, Duration::from_secs(3));
    assert!(error.starts_with(b"event: error\ndata: {\"error\":{\"type\":\"shutdown\""));
    assert_eq!(h.next().await.unwrap().0, "data: [DONE]\n\n");
    assert_eq!(h.next().await, None, "the half event is never sent");
    drop(h.body);
    assert_eq!(outcome_count(&h.metrics, Outcome::Shutdown), 1);
}

#[tokio::test(start_paused = true)]
async fn the_events_of_one_read_leave_as_one_frame_without_a_copy() {
    let mut h = harness("");
    let read = Bytes::from_static(b"data: 1\n\ndata: 2\n\n: ping\n\ndata: 3\n\ndata:\nx\n\n");
    h.upstream.send(read.clone()).unwrap();
    // 1 and 2 are untouched and adjacent: one frame, the upstream's own bytes.
    let (first, _) = h.next().await.unwrap();
    assert_eq!(first, "data: 1\n\ndata: 2\n\n");
    assert_eq!(first.as_ptr(), read.as_ptr(), "sliced, not copied");
    // The dropped ping leaves a gap: 3 starts a new frame; the repaired event is new
    // bytes and comes on its own.
    let (second, _) = h.next().await.unwrap();
    assert_eq!(second, "data: 3\n\n");
    assert_eq!(second.as_ptr(), read[26..].as_ptr());
    assert_eq!(h.next().await.unwrap().0, "data:x\n\n");
    assert_eq!(h.metrics.events.get(), 4);
    assert_eq!(h.metrics.rule_hits[1].get(), 1, "the ping was dropped");
}

/// An upstream that never sends, and whose first poll from `at` on holds its worker
/// thread for `hold`, as a slow poll on a busy machine does.
struct HoldingBody {
    created: Instant,
    at: Duration,
    hold: Duration,
    held: bool,
}

impl Body for HoldingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.held && self.created.elapsed() >= self.at {
            self.held = true;
            // Blocking on purpose: the poll must not yield while the deadline passes.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(self.hold);
        }
        Poll::Pending
    }
}

/// The poll that marks the stream stuck (50 ms) re-arms the sleep for the heartbeat
/// (80 ms), then its upstream poll holds the thread until after that deadline, while
/// the runtime's worker turns the timer. Judged by the time read at the start of that
/// poll, the heartbeat was not due, and the sleep re-armed at a deadline already past
/// fired at once, for ever: the poll spun and nothing was sent.
#[test]
fn a_deadline_passed_during_a_poll_is_judged_by_a_fresh_reading_of_the_clock() {
    // One worker with nothing to run: it sleeps in the timer, and turns it at each
    // deadline. The body is polled on a thread of its own (`Handle::block_on`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let (sent, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let frame = handle.block_on(async {
            let (plan, _, _) = plan("      stuck_after: 50ms\n      heartbeat: 80ms\n");
            let upstream = HoldingBody {
                created: Instant::now(),
                at: Duration::from_millis(40),
                hold: Duration::from_millis(100),
                held: false,
            };
            let start = Instant::now();
            let log = RequestLog::new(start, http::Method::GET, "/s");
            let mut body = SupervisedBody::new(upstream, plan, start, log, false);
            body.frame().await.unwrap().unwrap()
        });
        let _ = sent.send(frame.into_data().unwrap());
    });
    // Waited for here: a poll that spins never returns.
    let frame = received
        .recv_timeout(Duration::from_secs(5))
        .expect("a heartbeat within 5 s");
    assert_eq!(frame, ": keep-alive\n\n");
    runtime.shutdown_background();
}
