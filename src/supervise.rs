//! Stream supervision: the response body of every event stream on a route with a
//! `stream` section. It drives framer -> pipeline -> downstream frames, watches the
//! clocks, and records exactly one [`Outcome`] per stream.
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
//! timer is touched per event.

mod batch;
pub mod offline;
mod outcome;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::access_log::{RequestLog, StreamSummary};
use crate::config::{HumanDuration, OnUpstreamEof, RuleAction, StreamConfig, TerminatorMatcher};
use crate::metrics::RouteMetrics;
use crate::reply::error_json;
use crate::rewrite::{Pipeline, Rule, Scope, Session, Step, Terminator, TerminatorMatch};
use crate::sse::writer;
use crate::upstream::{UpstreamErrorKind, UpstreamIncoming};

pub use crate::shutdown::Shutdown;

use batch::Batch;

pub use outcome::Outcome;

/// The comment sent when nothing else was sent for `heartbeat`.
const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// When no clock is on, the sleep is parked this far out (about 30 years is what
/// tokio accepts without overflow; a day is plenty and re-arms harmlessly).
const PARKED: Duration = Duration::from_secs(24 * 60 * 60);

/// A route's stream handling, built once per config and shared by its streams.
#[derive(Debug)]
pub struct StreamPlan {
    route: Arc<str>,
    pipeline: Arc<Pipeline>,
    config: StreamConfig,
    metrics: Arc<RouteMetrics>,
    /// Fired when the gateway's drain time has run out.
    shutdown: Shutdown,
}

impl StreamPlan {
    pub fn new(
        route: Arc<str>,
        config: &StreamConfig,
        metrics: Arc<RouteMetrics>,
        shutdown: Shutdown,
    ) -> StreamPlan {
        StreamPlan {
            route,
            pipeline: Arc::new(pipeline(config)),
            config: config.clone(),
            metrics,
            shutdown,
        }
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }
}

/// Compiles a route's rules and terminator into a [`Pipeline`].
pub fn pipeline(config: &StreamConfig) -> Pipeline {
    let scope = |scope: crate::config::Scope| match scope {
        crate::config::Scope::Event => Scope::Event,
        crate::config::Scope::Data => Scope::Data,
    };
    let rules = config
        .rules
        .iter()
        .map(|rule| {
            let name = rule.name.clone();
            match &rule.action {
                RuleAction::RepairOrphanLines => Rule::repair_orphan_lines(name),
                RuleAction::Replace {
                    pattern,
                    with,
                    scope: s,
                } => Rule::replace(name, pattern.clone(), with.clone().into_bytes(), scope(*s)),
                RuleAction::Drop { pattern, scope: s } => {
                    Rule::drop(name, pattern.clone(), scope(*s))
                }
            }
        })
        .collect();
    let terminator = config.terminator.as_ref().map(|t| Terminator {
        matcher: match &t.matcher {
            TerminatorMatcher::Data(data) => TerminatorMatch::Data(Bytes::from(data.clone())),
            TerminatorMatcher::Event(event) => TerminatorMatch::Event(Bytes::from(event.clone())),
        },
        forward: t.forward,
        synthesize_on_eof: t.on_upstream_eof == OnUpstreamEof::Synthesize,
    });
    Pipeline::new(rules, terminator)
}

/// The pipeline of DESIGN.md's example route, compiled from the example config
/// (`tests/fixtures/configs/valid/design.yaml`) the way the gateway compiles any
/// route: the one definition the benches, the fuzz target and the tests share.
pub fn design_example_pipeline() -> Pipeline {
    const DESIGN_EXAMPLE: &str = include_str!("../tests/fixtures/configs/valid/design.yaml");
    let config = crate::config::GatewayConfig::parse(DESIGN_EXAMPLE, "design.yaml", &|_| None)
        .expect("the DESIGN example config is valid (tests/cli.rs checks it)");
    let stream = config.routes[0]
        .stream
        .as_ref()
        .expect("the DESIGN example route has a stream section");
    pipeline(stream)
}

/// Errors a supervised body never returns: every failure becomes an error event.
pub type Never = std::convert::Infallible;

/// The streaming response body of one supervised event stream, over the upstream's
/// body `B` ([`UpstreamIncoming`] in the gateway; an in-memory body in unit tests).
#[derive(Debug)]
pub struct SupervisedBody<B = UpstreamIncoming> {
    /// `None` once the stream has ended: dropping it closes the upstream connection.
    upstream: Option<B>,
    session: Session,
    plan: Arc<StreamPlan>,
    /// Frames decided but not yet handed to hyper (an error event, a terminator).
    queue: VecDeque<Bytes>,
    /// The frame being collected from the events of the last upstream read.
    batch: Batch,
    /// The outcome is decided; after `queue` drains the body ends.
    ending: bool,
    clock: Pin<Box<Sleep>>,
    /// Wakes this stream when the gateway's drain time has run out.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `shutdown` was last polled with: polling again with the same one
    /// would only take its lock to change nothing.
    shutdown_waker: Option<Waker>,
    last_data: Instant,
    last_sent: Instant,
    first_event_sent: bool,
    record: Record,
}

impl<B> SupervisedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Supervises `upstream`; `started` is when the request arrived.
    pub fn new(upstream: B, plan: Arc<StreamPlan>, started: Instant, log: RequestLog) -> Self {
        plan.metrics.streams_active.inc();
        let now = Instant::now();
        let session = Session::new(plan.pipeline.clone(), plan.config.max_event_size);
        let mut body = SupervisedBody {
            upstream: Some(upstream),
            session,
            queue: VecDeque::new(),
            batch: Batch::default(),
            ending: false,
            clock: Box::pin(sleep_until(now + PARKED)),
            shutdown: Box::pin(plan.shutdown.fired()),
            shutdown_waker: None,
            last_data: now,
            last_sent: now,
            first_event_sent: false,
            record: Record {
                plan: plan.clone(),
                started,
                outcome: None,
                events: 0,
                rules_hit: 0,
                stuck_since: None,
                stuck_for: Duration::ZERO,
                log,
            },
            plan,
        };
        let deadline = body.next_deadline();
        body.clock.as_mut().reset(deadline);
        body
    }

    /// The earliest instant at which a clock needs attention.
    fn next_deadline(&self) -> Instant {
        let c = &self.plan.config;
        let on = |d: Duration| (!d.is_zero()).then_some(d);
        [
            on(c.max_duration).map(|d| self.record.started + d),
            on(c.idle_timeout).map(|d| self.last_data + d),
            on(c.stuck_after)
                .filter(|_| self.record.stuck_since.is_none())
                .map(|d| self.last_data + d),
            on(c.heartbeat).map(|d| self.last_sent + d),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + PARKED)
    }

    /// The sleep fired: act on every clock that is due, then re-arm.
    fn on_clock(&mut self, now: Instant) -> Option<Bytes> {
        let c = &self.plan.config;
        let due = |d: Duration, since: Instant| !d.is_zero() && now >= since + d;
        if due(c.max_duration, self.record.started) {
            let message = format!(
                "stream reached its max_duration of {}",
                HumanDuration(c.max_duration)
            );
            self.end(Outcome::MaxDuration, Some(("max_duration", message)));
            return None;
        }
        if due(c.idle_timeout, self.last_data) {
            let message = format!(
                "no data from upstream for {}",
                HumanDuration(c.idle_timeout)
            );
            self.end(
                Outcome::IdleTimeout,
                Some(("upstream_idle_timeout", message)),
            );
            return None;
        }
        if self.record.stuck_since.is_none() && due(c.stuck_after, self.last_data) {
            self.record.stuck_since = Some(now);
            self.plan.metrics.streams_stuck.inc();
            self.plan.metrics.stuck_total.inc();
            tracing::warn!(
                route = %self.plan.route,
                path = self.record.log.path(),
                stuck_after = %HumanDuration(c.stuck_after),
                "stream stuck: no data from upstream"
            );
        }
        let heartbeat = due(c.heartbeat, self.last_sent).then(|| Bytes::from_static(HEARTBEAT));
        let deadline = self.next_deadline();
        self.clock.as_mut().reset(deadline);
        heartbeat
    }

    /// Upstream data arrived: restart the data clock, and the stream is no longer stuck.
    fn on_data(&mut self, now: Instant) {
        self.last_data = now;
        if self.record.unstick(now) {
            // The stuck deadline was left out of the armed sleep; bring it back.
            let deadline = self.next_deadline().min(self.clock.deadline());
            self.clock.as_mut().reset(deadline);
        }
    }

    /// Decides the outcome: drops the upstream (closing its connection at once), queues
    /// the error event and the synthesized terminator where they apply.
    fn end(&mut self, outcome: Outcome, error: Option<(&'static str, String)>) {
        self.upstream = None;
        self.ending = true;
        self.record.outcome.get_or_insert(outcome);
        let closing = closing_frames(&self.session, &self.plan.route, outcome, error);
        self.queue.extend(closing.into_iter().flatten());
    }

    /// The drain time is over: end between events (a partial event is never sent).
    fn end_for_shutdown(&mut self) {
        let message = "the gateway is shutting down; retry on another instance".to_owned();
        self.end(Outcome::Shutdown, Some(("shutdown", message)));
    }

    /// Runs every complete upstream event through the pipeline and collects what to
    /// send into one frame ([`Batch`]). Returns that frame; frames that must follow it
    /// (an event that could not join it without a copy, closing frames) are queued.
    /// `at_eof`: the upstream has ended, and its unterminated tail is taken too.
    fn drain_ready(&mut self, at_eof: bool) -> Option<Bytes> {
        let mut events = 0;
        let mut data_seen = false;
        loop {
            match self.next_step(at_eof) {
                Some(Step::Event {
                    output,
                    had_data,
                    terminator,
                }) => {
                    data_seen |= had_data;
                    if terminator {
                        if let Some(output) = output {
                            self.push_output(output);
                        }
                        self.end(Outcome::Terminator, None);
                        break;
                    }
                    let Some(output) = output else { continue };
                    events += 1;
                    if had_data {
                        self.on_first_event();
                    }
                    if !self.push_output(output) {
                        break;
                    }
                }
                Some(Step::Oversize { limit }) => {
                    self.end(
                        Outcome::Oversize,
                        Some(("oversize", oversize_message(limit))),
                    );
                    break;
                }
                Some(Step::NeedMore) | None => {
                    self.batch.release_chunk();
                    break;
                }
            }
        }
        if events > 0 {
            self.record.events += events;
            self.plan.metrics.events.inc_by(events);
        }
        if data_seen {
            self.on_data(Instant::now());
        }
        self.batch.take()
    }

    /// An event with data is being sent: the first one's delay is observed.
    fn on_first_event(&mut self) {
        if !self.first_event_sent {
            self.first_event_sent = true;
            let elapsed = self.record.started.elapsed().as_secs_f64();
            self.plan.metrics.first_event.observe(elapsed);
        }
    }

    /// Adds `output` to the batch; false when it had to be queued behind it instead,
    /// and the batch is complete.
    fn push_output(&mut self, output: Bytes) -> bool {
        match self.batch.push(output) {
            Ok(()) => true,
            Err(output) => {
                self.queue.push_back(output);
                false
            }
        }
    }

    /// The upstream ended cleanly: its unterminated tail, if any, then the end.
    fn on_upstream_eof(&mut self) {
        if let Some(frame) = self.drain_ready(true) {
            // Ahead of anything the drain queued behind it.
            self.queue.push_front(frame);
        }
        if !self.ending {
            self.end(Outcome::UpstreamEof, None);
        }
    }

    fn send(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        // Read once per frame, not per event: a frame carries a whole read's events.
        self.last_sent = Instant::now();
        self.plan
            .metrics
            .bytes_downstream
            .inc_by(bytes.len() as u64);
        self.record.log.add_bytes(bytes.len());
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    /// The next step of the session, with rule hits counted.
    fn next_step(&mut self, at_eof: bool) -> Option<Step> {
        let metrics = &self.plan.metrics;
        let rules_hit = &mut self.record.rules_hit;
        let mut on_hit = |rule: usize| {
            *rules_hit += 1;
            if let Some(counter) = metrics.rule_hits.get(rule) {
                counter.inc();
            }
        };
        if at_eof {
            self.session.finish(&mut on_hit)
        } else {
            Some(self.session.next(&mut on_hit))
        }
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
        loop {
            if let Some(bytes) = this.queue.pop_front() {
                return this.send(bytes);
            }
            if this.ending {
                return Poll::Ready(None);
            }
            if this.clock.is_elapsed() {
                if let Some(heartbeat) = this.on_clock(Instant::now()) {
                    return this.send(heartbeat);
                }
                continue;
            }
            if let Some(frame) = this.drain_ready(false) {
                return this.send(frame);
            }
            if this.ending || !this.queue.is_empty() {
                continue;
            }
            let Some(upstream) = this.upstream.as_mut() else {
                this.ending = true;
                continue;
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.plan.metrics.bytes_upstream.inc_by(data.len() as u64);
                        this.batch.set_chunk(&data);
                        this.session.push(data);
                    }
                    continue;
                }
                Poll::Ready(Some(Err(error))) => {
                    let error = error.into();
                    let kind = UpstreamErrorKind::of_body_error(&*error);
                    this.plan.metrics.count_upstream_error(kind);
                    tracing::warn!(route = %this.plan.route, kind = kind.as_str(), %error, "upstream failed mid-stream");
                    let message = format!("upstream failed mid-stream: {error}");
                    // The partial event is dropped with the session's buffer.
                    this.end(Outcome::UpstreamError, Some(("upstream_error", message)));
                    continue;
                }
                Poll::Ready(None) => {
                    this.on_upstream_eof();
                    continue;
                }
                Poll::Pending => {}
            }
            if this.plan.shutdown.has_fired() {
                this.end_for_shutdown();
                continue;
            }
            let registered = this.shutdown_waker.as_ref();
            if !registered.is_some_and(|waker| waker.will_wake(cx.waker())) {
                if this.shutdown.as_mut().poll(cx).is_ready() {
                    this.end_for_shutdown();
                    continue;
                }
                this.shutdown_waker = Some(cx.waker().clone());
            }
            match this.clock.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ending && self.queue.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The frames that close a stream ended by `outcome`: the error event in the one
/// error shape (when there is an error), then the synthesized terminator, unless the
/// terminator itself ended the stream.
pub fn closing_frames(
    session: &Session,
    route: &str,
    outcome: Outcome,
    error: Option<(&str, String)>,
) -> [Option<Bytes>; 2] {
    let error = error.map(|(error_type, message)| {
        let json = error_json(error_type, &message, Some(route));
        writer::event(Some(b"error"), &json)
    });
    let terminator = match outcome {
        Outcome::Terminator => None,
        _ => session.synthesized_terminator(),
    };
    [error, terminator]
}

/// The message of the error event for an oversize event.
pub fn oversize_message(limit: usize) -> String {
    format!("an upstream event exceeded max_event_size ({limit} bytes)")
}

/// A stream's facts, recorded once when the body is dropped: the one place that
/// updates `streams_active`, the stuck gauge at the end, and the duration histogram.
#[derive(Debug)]
struct Record {
    plan: Arc<StreamPlan>,
    started: Instant,
    /// `None` until decided; a body dropped undecided was abandoned by its client.
    outcome: Option<Outcome>,
    events: u64,
    rules_hit: u64,
    stuck_since: Option<Instant>,
    stuck_for: Duration,
    log: RequestLog,
}

impl Record {
    /// Ends a stuck period; true if the stream was stuck.
    fn unstick(&mut self, now: Instant) -> bool {
        match self.stuck_since.take() {
            Some(since) => {
                self.stuck_for += now - since;
                self.plan.metrics.streams_stuck.dec();
                true
            }
            None => false,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let now = Instant::now();
        self.unstick(now);
        let outcome = *self.outcome.get_or_insert(Outcome::ClientClosed);
        let metrics = &self.plan.metrics;
        metrics.streams_active.dec();
        metrics
            .stream_duration(outcome)
            .observe((now - self.started).as_secs_f64());
        self.log.set_stream(StreamSummary {
            outcome: outcome.as_str(),
            events: self.events,
            rules_hit: self.rules_hit,
            stuck_ms: self.stuck_for.as_millis() as u64,
        });
    }
}

#[cfg(test)]
mod tests;
