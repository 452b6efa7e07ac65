//! The start of an event stream on a route that retries: everything up to the first
//! content event is held back, so that a start that fails can be thrown away and the
//! request tried on another endpoint without the client seeing any of it.
//!
//! Role-only deltas, `response.created`, `message_start` and comments say nothing a
//! second attempt would not say again; a client that saw them from two attempts would
//! see two starts. So the engine runs as it always does, but its frames are kept
//! here until one of them carries content (protocol presets decide what content is):
//! then the stream is *committed*, the held frames go out first, and the live body
//! (`SupervisedBody::resume`) takes over, with no retry possible from then on.
//!
//! While held, the stream counts in `streams_active`, and in `streams_stuck` once no
//! data came for `stuck_after`, as a live stream does (a stuck period still open at
//! the commit goes on in the live body); a client that leaves then (the request's
//! future is dropped) ends it as `client_closed`, in the duration histogram and the
//! log line, as it would after the commit. A start thrown away leaves the client
//! waiting for the same stream from the next endpoint: through that wait the stream
//! stays active, its stuck period goes on, and a client that leaves ends it as
//! `client_closed` all the same ([`StreamPlan::retrying`]).
//!
//! Bounded: past [`MAX_HELD`] bytes without content the stream commits anyway. The
//! response headers wait for the commitment; while waiting, the route's clocks hold as
//! they do for a live stream: `idle_timeout` counts from the last data event (a ping
//! or a comment does not restart it, or an upstream that only keeps the connection
//! alive would hold the start, and its retry, for hours), `max_duration` from the
//! request, and the drain ends the wait.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::record::{Held, Stuck};
use super::StreamPlan;
use crate::access_log::RequestLog;
use crate::engine::{Engine, Outcome, Stop};
use crate::upstream::{Failure, UpstreamErrorKind};

/// The most bytes held back before the first content event; past it the stream is
/// committed (an upstream that sends this much before any content is not starting).
pub(crate) const MAX_HELD: usize = 64 * 1024;

/// A stream's start, held back: the engine that ran it, its frames, the upstream
/// body to go on reading, and its stuck periods.
#[derive(Debug)]
pub(crate) struct Started<B> {
    pub(super) plan: Arc<StreamPlan>,
    pub(super) engine: Engine,
    pub(super) held: VecDeque<Bytes>,
    pub(super) upstream: B,
    pub(super) stuck: Stuck,
}

impl<B> Started<B> {
    /// A start with nothing held, for a response not held back after attempts whose
    /// starts were: it goes on with their stuck periods.
    pub(crate) fn unheld(
        plan: Arc<StreamPlan>,
        upstream: B,
        remove_usage_chunk: bool,
        stuck: Stuck,
    ) -> Self {
        Started {
            engine: plan.engine(remove_usage_chunk),
            plan,
            held: VecDeque::new(),
            upstream,
            stuck,
        }
    }

    /// The stuck periods, out of a start that is thrown away for another attempt.
    pub(crate) fn take_stuck(&mut self) -> Stuck {
        std::mem::take(&mut self.stuck)
    }

    /// The upstream's own error event that ended a start thrown away for another
    /// attempt: still the upstream's error, counted and traced as any other.
    pub(crate) fn take_upstream_error_event(&mut self) -> Option<&'static str> {
        self.engine.take_progress().upstream_error_event
    }
}

impl StreamPlan {
    /// The wait for the attempt after a start thrown away, from `started` (when the
    /// request came) with the thrown-away starts' `stuck` periods: the stream stays
    /// active, and ends as `client_closed` in `log` if the wait is dropped (the client
    /// left) before [`Held::hand_on`] gives the stuck periods back for what the attempt
    /// comes to.
    pub(crate) fn retrying<'a>(
        &'a self,
        started: Instant,
        log: &'a mut RequestLog,
        stuck: Stuck,
    ) -> Held<'a> {
        Held::new(&self.metrics, started, log, stuck)
    }

    /// Runs `upstream` until its first content event, or its end. Returns the start
    /// and, when it ended before any content in a way another attempt may fix, the
    /// failure (the start then holds the closing frames the client gets if nothing
    /// is retried). `started`: when the request came, where `max_duration` counts
    /// from; `log`, the request's, is told the outcome if the client leaves first;
    /// `stuck`: the stuck periods of the attempts before this one.
    pub(crate) async fn start<B>(
        self: &Arc<Self>,
        mut upstream: B,
        remove_usage_chunk: bool,
        started: Instant,
        log: &mut RequestLog,
        stuck: Stuck,
    ) -> (Started<B>, Option<Failure>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut held_start = Held::new(&self.metrics, started, log, stuck);
        let mut engine = self.engine(remove_usage_chunk);
        let mut held = VecDeque::new();
        let mut held_bytes = 0;
        let mut shutdown = pin!(self.shutdown.fired());
        let mut timed_out = false;
        // The route's own limits (max_duration, the drain) ended the start: another
        // attempt cannot do better, and the endpoint is not to blame.
        let mut limited = false;
        let clocks = self.clocks;
        let mut last_data = Instant::now();
        loop {
            while let Some(frame) = engine.next_frame() {
                held_bytes += frame.len();
                held.push_back(frame);
            }
            if engine.take_content_seen() {
                last_data = Instant::now();
                held_start.unstick(last_data);
            }
            if engine.has_sent_output() || held_bytes > MAX_HELD {
                return (
                    Started {
                        plan: self.clone(),
                        engine,
                        held,
                        upstream,
                        stuck: held_start.hand_on(),
                    },
                    None,
                );
            }
            if let Some(outcome) = engine.outcome() {
                let failed = matches!(
                    outcome,
                    Outcome::UpstreamError
                        | Outcome::Truncated
                        | Outcome::UpstreamErrorEvent
                        | Outcome::IdleTimeout
                );
                let failure = match () {
                    () if limited => None,
                    () if timed_out => Some(Failure::Timeout),
                    () if failed => Some(Failure::BeforeContent),
                    () => None,
                };
                return (
                    Started {
                        plan: self.clone(),
                        engine,
                        held,
                        upstream,
                        stuck: held_start.hand_on(),
                    },
                    failure,
                );
            }
            let idle = clocks.idle_timeout;
            let limit = clocks.max_duration;
            let on = |clock: Duration, from: Instant| (!clock.is_zero()).then(|| from + clock);
            let (idle_at, limit_at) = (on(idle, last_data), on(limit, started));
            let stuck_after = clocks.stuck_after;
            let stuck_at = on(stuck_after, last_data).filter(|_| !held_start.is_stuck());
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    limited = true;
                    engine.stop(Stop::Shutdown);
                }
                () = sleep_until(limit_at) => {
                    limited = true;
                    engine.stop(Stop::MaxDuration { limit });
                }
                () = sleep_until(idle_at) => {
                    timed_out = true;
                    engine.stop(Stop::IdleTimeout { after: idle });
                }
                () = sleep_until(stuck_at) => {
                    held_start.stick(Instant::now(), &self.route, stuck_after);
                }
                read = upstream.frame() => match read {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.metrics.bytes_upstream.inc_by(data.len() as u64);
                            engine.push(data);
                        }
                    }
                    Some(Err(error)) => {
                        let error = error.into();
                        let kind = UpstreamErrorKind::of_body_error(&*error);
                        self.metrics.count_upstream_error(kind);
                        tracing::warn!(route = %self.route, kind = kind.as_str(), %error, "upstream failed before the first content event");
                        engine.upstream_failure(&error);
                    }
                    None => engine.upstream_end(),
                },
            }
        }
    }
}

/// Sleeps until `deadline`; never resolves without one (a clock that is off).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
