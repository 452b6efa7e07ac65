//! Stream supervision: the response body of every event stream on a route with a
//! `stream` section. It feeds the upstream's reads to the [`Engine`], sends the frames
//! the engine hands back, watches the clocks, and turns the engine's progress into
//! metrics and the stream's log line. What happens to the bytes, and how a stream
//! ends, is the engine's: this file only polls, keeps time and counts.
//!
//! A body wrapper, not a task per stream: all work happens in `poll_frame`, when hyper
//! asks for the next frame, so a stream costs no task, no channel and no lock.
//!
//! **What the clocks measure.** The *data clock* restarts whenever an upstream event
//! that carries data arrives (dropped by a rule or not); upstream comments such as
//! `: ping` do not restart it, so a keep-alive cannot hide a stream that stopped
//! producing content. A stream is *stuck* while the data clock reads at least
//! `stuck_after`, and is ended when it reads `idle_timeout`. The *send clock* restarts
//! whenever anything is sent downstream; at `heartbeat` a `: keep-alive` comment is sent
//! (load balancers cut connections silent for 60 s). `max_duration` counts from the
//! request's start. A clock set to `0` is off.
//!
//! **Timers.** One `Sleep`, armed at the nearest deadline. Events only write
//! timestamps; when the sleep fires, the deadlines are recomputed from them and the sleep
//! is re-armed (the lazy timer of pingora, with linkerd's re-check on wake-up), so no
//! timer is touched per event. The sleep is polled again only when it was re-armed or
//! the task's waker changed, and the clock is read at most once per poll
//! ([`PollTime`]): every event of one upstream read arrives, and is sent, at one instant.

mod holdback;
mod record;
mod tokens;

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::access_log::RequestLog;
use crate::changes::OwnedChange;
use crate::config::StreamConfig;
use crate::engine::{Engine, Stop};
use crate::metrics::RouteMetrics;
use crate::rewrite::Pipeline;
use crate::shutdown::Shutdown;
use crate::upstream::{UpstreamErrorKind, UpstreamIncoming};

use record::Record;

pub(crate) use holdback::Started;
pub(crate) use record::Stuck;

/// The comment sent when nothing else was sent for `heartbeat`.
pub(crate) const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// Whether a frame is the supervisor's heartbeat: a resumable stream neither numbers
/// nor keeps it.
pub(crate) fn is_heartbeat(frame: &[u8]) -> bool {
    frame == HEARTBEAT
}

/// When no clock is on, the sleep is parked this far out (about 30 years is what
/// tokio accepts without overflow; a day is plenty and re-arms harmlessly).
const PARKED: Duration = Duration::from_secs(24 * 60 * 60);

/// A route's stream handling, built once per config and shared by its streams.
#[derive(Debug)]
pub(crate) struct StreamPlan {
    route: Arc<str>,
    pipeline: Arc<Pipeline>,
    max_event_size: usize,
    /// `stream.usage: request`: the gateway asks the upstream for usage.
    requests_usage: bool,
    clocks: Clocks,
    metrics: Arc<RouteMetrics>,
    /// Fired when the gateway's drain time has run out.
    shutdown: Shutdown,
}

/// The supervision clocks of a route; `0` is off.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    stuck_after: Duration,
    idle_timeout: Duration,
    heartbeat: Duration,
    max_duration: Duration,
}

impl StreamPlan {
    pub(crate) fn new(
        route: Arc<str>,
        config: &StreamConfig,
        metrics: Arc<RouteMetrics>,
        shutdown: Shutdown,
    ) -> StreamPlan {
        StreamPlan {
            route,
            pipeline: config.pipeline.clone(),
            max_event_size: config.max_event_size,
            requests_usage: config.usage == crate::config::StreamUsage::Request,
            clocks: Clocks {
                stuck_after: config.stuck_after,
                idle_timeout: config.idle_timeout,
                heartbeat: config.heartbeat,
                max_duration: config.max_duration,
            },
            metrics,
            shutdown,
        }
    }
}

impl StreamPlan {
    /// A new engine for one of the route's streams. `remove_usage_chunk`: the
    /// gateway added `include_usage` to the request, so the usage-only chunk is read,
    /// then kept from the client.
    fn engine(&self, remove_usage_chunk: bool) -> Engine {
        let mut engine = Engine::new(
            self.pipeline.clone(),
            self.max_event_size,
            self.route.clone(),
        );
        if remove_usage_chunk {
            engine.remove_usage_chunk();
        }
        engine
    }

    /// The protocol the route's upstream speaks.
    pub(crate) fn protocol(&self) -> crate::protocol::Protocol {
        self.pipeline.contract().protocol
    }

    /// Whether the gateway asks the upstream for token usage (`stream.usage: request`).
    pub(crate) fn requests_usage(&self) -> bool {
        self.requests_usage
    }
}

/// The instant of one `poll_frame`, read from the clock when first needed and then
/// kept: a clock read per use was three per event.
#[derive(Debug, Default)]
struct PollTime(Option<Instant>);

impl PollTime {
    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }

    /// A fresh reading, kept from now on. The sleep's deadline can pass during the
    /// poll (another worker turns the timer), after the time was first read: a clock
    /// judged by that earlier time would find nothing due and re-arm the sleep at a
    /// deadline already past, which fires at once, for ever.
    fn read_again(&mut self) -> Instant {
        *self.0.insert(Instant::now())
    }
}

/// Errors a supervised body never returns: every failure becomes an error event.
pub(crate) type Never = std::convert::Infallible;

/// The streaming response body of one supervised event stream, over the upstream's
/// body `B` ([`UpstreamIncoming`] in the gateway; an in-memory body in unit tests).
#[derive(Debug)]
pub(crate) struct SupervisedBody<B = UpstreamIncoming> {
    /// `None` once the stream has ended: dropping it closes the upstream connection.
    upstream: Option<B>,
    engine: Engine,
    plan: Arc<StreamPlan>,
    clock: Pin<Box<Sleep>>,
    /// Wakes this stream when the gateway's drain time has run out.
    shutdown: Pin<Box<OwnedChange>>,
    /// The waker the armed `clock` holds; `None` once it is re-armed.
    clock_waker: Option<Waker>,
    last_data: Instant,
    /// When bytes last went to the client: the heartbeat is due `heartbeat` after.
    last_sent: Instant,
    /// When the last frame left this body; it becomes `last_sent` once
    /// [`Self::sent`] says bytes of it went out.
    framed_at: Instant,
    /// When the upstream read that the engine is framing now arrived: its content
    /// events arrive together, however many polls send them.
    read_at: Instant,
    record: Record,
    /// Frames of a start held back until its first content event (`holdback.rs`),
    /// sent before anything else; empty on routes without retry.
    held: std::collections::VecDeque<Bytes>,
    /// The frame returned last came straight from the engine ([`Self::event_ends`]).
    last_from_engine: bool,
    /// The layer above sends other bytes than the frames (resume's ids, comments
    /// without their blank line) and counts them itself ([`Self::sent`]).
    counted_above: bool,
}

impl<B> SupervisedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Supervises `upstream`; `started` is when the request arrived;
    /// `remove_usage_chunk` as for [`StreamPlan::start`].
    pub(crate) fn new(
        upstream: B,
        plan: Arc<StreamPlan>,
        started: Instant,
        log: RequestLog,
        remove_usage_chunk: bool,
    ) -> Self {
        let unheld = Started::unheld(plan, upstream, remove_usage_chunk, Stuck::default());
        Self::resume(unheld, started, log)
    }

    /// Supervises a stream whose start was held back (`holdback.rs`): its held frames
    /// go first, then the engine goes on where the start left it.
    pub(crate) fn resume(start: Started<B>, started: Instant, log: RequestLog) -> Self {
        let now = Instant::now();
        let Started {
            plan,
            engine,
            held,
            upstream,
            stuck,
        } = start;
        let mut body = SupervisedBody {
            held,
            upstream: Some(upstream),
            engine,
            clock: Box::pin(sleep_until(now + PARKED)),
            shutdown: Box::pin(plan.shutdown.fired()),
            clock_waker: None,
            last_data: now,
            last_sent: now,
            framed_at: now,
            read_at: now,
            record: Record::new(plan.metrics.clone(), started, log, stuck),
            plan,
            last_from_engine: false,
            counted_above: false,
        };
        // What the start did (events, first event and token, usage, and the outcome
        // when the whole answer came while it was held) is the stream's: accounted now,
        // for hyper may take the held frames and drop the body without polling again.
        body.account(&mut PollTime(Some(now)));
        let deadline = body.next_deadline();
        body.rearm(deadline);
        body
    }

    /// The layer above counts what it sends in place of each frame ([`Self::sent`]):
    /// resume adds `id:` lines and leaves comments without their blank line, so the
    /// frame's own length would be wrong either way.
    pub(crate) fn count_sent_above(&mut self) {
        self.counted_above = true;
    }

    /// The layer above sent `bytes` bytes in place of the frame it took from here.
    /// None (comments past resume's bound on them) do not postpone the heartbeat, or
    /// an upstream that pings would leave the connection silent.
    pub(crate) fn sent(&mut self, bytes: usize) {
        if bytes > 0 {
            self.last_sent = self.framed_at;
        }
        self.plan.metrics.bytes_downstream.inc_by(bytes as u64);
        self.record.add_bytes(bytes);
    }

    /// The gateway's "drain time is over" signal this stream watches.
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.plan.shutdown
    }

    /// Keep where the events of each frame end ([`Self::event_ends`]).
    pub(crate) fn track_event_ends(&mut self) {
        self.engine.track_event_ends();
    }

    /// Where the events of the frame returned last end, when the engine vouches for
    /// them; `None`: the caller finds them itself (held frames, heartbeats, frames a
    /// rule wrote, closing frames).
    pub(crate) fn event_ends(&self) -> Option<&[u32]> {
        if self.last_from_engine {
            self.engine.event_ends()
        } else {
            None
        }
    }

    /// The earliest instant at which a clock needs attention.
    fn next_deadline(&self) -> Instant {
        let c = &self.plan.clocks;
        let on = |d: Duration| (!d.is_zero()).then_some(d);
        [
            on(c.max_duration).map(|d| self.record.started() + d),
            on(c.idle_timeout).map(|d| self.last_data + d),
            on(c.stuck_after)
                .filter(|_| !self.record.is_stuck())
                .map(|d| self.last_data + d),
            on(c.heartbeat).map(|d| self.last_sent + d),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + PARKED)
    }

    /// The sleep fired: act on every clock that is due, then re-arm. Returns a
    /// heartbeat to send, if one is due.
    fn on_clock(&mut self, now: Instant) -> Option<Bytes> {
        let c = self.plan.clocks;
        let due = |d: Duration, since: Instant| !d.is_zero() && now >= since + d;
        if due(c.max_duration, self.record.started()) {
            self.engine.stop(Stop::MaxDuration {
                limit: c.max_duration,
            });
            return None;
        }
        if due(c.idle_timeout, self.last_data) {
            self.engine.stop(Stop::IdleTimeout {
                after: c.idle_timeout,
            });
            return None;
        }
        if !self.record.is_stuck() && due(c.stuck_after, self.last_data) {
            self.record.stick(now, &self.plan.route, c.stuck_after);
        }
        let heartbeat = due(c.heartbeat, self.last_sent).then(|| Bytes::from_static(HEARTBEAT));
        let deadline = self.next_deadline();
        self.rearm(deadline);
        heartbeat
    }

    /// Arms the sleep for `deadline`; it is polled again before the stream waits.
    fn rearm(&mut self, deadline: Instant) {
        self.clock.as_mut().reset(deadline);
        self.clock_waker = None;
    }

    /// Whether the sleep is still running; registers this task's waker with it once
    /// per arming.
    fn clock_pending(&mut self, cx: &mut Context<'_>) -> bool {
        let registered = self.clock_waker.as_ref();
        if registered.is_some_and(|waker| waker.will_wake(cx.waker())) {
            return true;
        }
        // Outside the task's budget: a sleep polled over budget answers `Pending`
        // without keeping the waker, and a wake-up skipped here would be lost.
        let clock = self.clock.as_mut();
        if std::pin::pin!(tokio::task::unconstrained(clock))
            .poll(cx)
            .is_ready()
        {
            return false;
        }
        self.clock_waker = Some(cx.waker().clone());
        true
    }

    /// Turns what the engine did since the last call into metrics, the data clock and
    /// the stream's record; lets the upstream go once the outcome is decided.
    fn account(&mut self, now: &mut PollTime) {
        if self.engine.has_progress() {
            self.account_progress(now);
        }
        if let Some(outcome) = self.engine.outcome() {
            // Dropping the upstream closes its connection at once.
            self.upstream = None;
            if self.record.outcome.is_none() {
                self.record.trace_end(outcome, self.engine.has_evidence());
            }
            self.record.outcome = Some(outcome);
        }
    }

    fn account_progress(&mut self, now: &mut PollTime) {
        let progress = self.engine.take_progress();
        let metrics = &self.plan.metrics;
        if progress.events_out > 0 {
            self.record.events += progress.events_out;
            metrics.events.inc_by(progress.events_out);
        }
        if progress.rules_hit > 0 {
            self.record.rules_hit += progress.rules_hit;
            self.engine.take_rule_hits(|rule, hits| {
                if let Some(counter) = metrics.rule_hits.get(rule) {
                    counter.inc_by(hits);
                }
            });
        }
        let started = self.record.started();
        if progress.first_data_event {
            let elapsed = now.get() - started;
            metrics.first_event.observe(elapsed.as_secs_f64());
        }
        // Events a rule rewrote (or CRLF ones) leave one read in several frames, sent
        // over several polls: timed by the poll, each would add an inter-token gap
        // near 0 where the read was one arrival.
        self.record
            .tokens
            .account(&progress, started, self.read_at, metrics);
        if progress.content_seen {
            self.on_data(now.get());
        }
        self.record.finish_reasons.add(progress.finish_reasons);
        if let Some(error_type) = progress.upstream_error_event {
            self.plan.metrics.count_upstream_error_event(error_type);
            self.record.trace_upstream_error(error_type);
            let _span = self.record.span().enter();
            tracing::warn!(
                route = %self.plan.route,
                path = self.record.path(),
                upstream_error_type = error_type,
                "the upstream sent an error event; passed through and the stream ended"
            );
        }
    }

    /// Upstream data arrived: restart the data clock, and the stream is no longer stuck.
    fn on_data(&mut self, now: Instant) {
        self.last_data = now;
        if self.record.unstick(now) {
            // The stuck deadline was left out of the armed sleep; bring it back.
            let deadline = self.next_deadline().min(self.clock.deadline());
            self.rearm(deadline);
        }
    }

    fn send(
        &mut self,
        bytes: Bytes,
        now: &mut PollTime,
    ) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        // Once per frame, not per event: a frame carries a whole read's events.
        self.framed_at = now.get();
        if !self.counted_above {
            self.sent(bytes.len());
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl<B> Body for SupervisedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Never;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        let this = &mut *self;
        let mut now = PollTime::default();
        this.last_from_engine = false;
        if let Some(frame) = this.held.pop_front() {
            return this.send(frame, &mut now);
        }
        loop {
            let frame = this.engine.next_frame();
            this.account(&mut now);
            if let Some(frame) = frame {
                this.last_from_engine = true;
                return this.send(frame, &mut now);
            }
            if this.engine.is_finished() {
                return Poll::Ready(None);
            }
            if this.clock.is_elapsed() {
                if let Some(heartbeat) = this.on_clock(now.read_again()) {
                    return this.send(heartbeat, &mut now);
                }
                continue;
            }
            // Checked before every read, not only when the upstream is quiet: one that
            // never pauses would otherwise run past the drain deadline.
            if this.plan.shutdown.has_fired() {
                this.engine.stop(Stop::Shutdown);
                continue;
            }
            let Some(upstream) = this.upstream.as_mut() else {
                // Unreachable while undecided; end rather than spin if it ever is.
                return Poll::Ready(None);
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.plan.metrics.bytes_upstream.inc_by(data.len() as u64);
                        this.read_at = now.get();
                        this.engine.push(data);
                    }
                    continue;
                }
                Poll::Ready(Some(Err(error))) => {
                    let error = error.into();
                    let kind = UpstreamErrorKind::of_body_error(&*error);
                    this.plan.metrics.count_upstream_error(kind);
                    let _span = this.record.span().enter();
                    tracing::warn!(route = %this.plan.route, kind = kind.as_str(), %error, "upstream failed mid-stream");
                    this.engine.upstream_failure(&error);
                    continue;
                }
                Poll::Ready(None) => {
                    this.engine.upstream_end();
                    continue;
                }
                Poll::Pending => {}
            }
            // Registers the waker, so that a quiet stream hears the drain deadline too;
            // then one atomic load per poll: see `changes.rs`.
            if this.shutdown.as_mut().poll(cx).is_ready() {
                this.engine.stop(Stop::Shutdown);
                continue;
            }
            if this.clock_pending(cx) {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.engine.is_finished()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
