//! A stream's record: the facts the stream leaves behind, written once when its body
//! is dropped. The one place that updates `streams_active`, the stuck gauge
//! ([`Stuck`]), the duration histogram, and the stream's part of the request's log
//! line; also for a start held back on a retrying route ([`Held`]), which a client may
//! leave before any body exists.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::access_log::{RequestLog, StreamSummary};
use crate::config::HumanDuration;
use crate::engine::Outcome;
use crate::metrics::RouteMetrics;
use crate::protocol::FinishReasons;

use super::tokens::Tokens;

#[derive(Debug)]
pub(super) struct Record {
    metrics: Arc<RouteMetrics>,
    started: Instant,
    /// `None` until decided; a body dropped undecided was abandoned by its client.
    pub(super) outcome: Option<Outcome>,
    pub(super) events: u64,
    pub(super) rules_hit: u64,
    pub(super) tokens: Tokens,
    /// Why the answer ended, as the upstream said: counted once the stream ends.
    pub(super) finish_reasons: FinishReasons,
    stuck: Stuck,
    log: RequestLog,
}

impl Record {
    /// The record of a stream that started at `started`; it counts as active now.
    /// `stuck`: what its held-back start was (a period still open goes on).
    pub(super) fn new(
        metrics: Arc<RouteMetrics>,
        started: Instant,
        log: RequestLog,
        stuck: Stuck,
    ) -> Record {
        metrics.streams_active.inc();
        Record {
            metrics,
            started,
            outcome: None,
            events: 0,
            rules_hit: 0,
            tokens: Tokens::default(),
            finish_reasons: FinishReasons::default(),
            stuck,
            log,
        }
    }

    pub(super) fn started(&self) -> Instant {
        self.started
    }

    pub(super) fn path(&self) -> &str {
        self.log.path()
    }

    /// The request's span: the stream's log lines are written in it.
    pub(super) fn span(&self) -> &tracing::Span {
        self.log.span()
    }

    /// The outcome was just decided: a span event says how the stream ended, when it
    /// ended with its terminator or with an error event the gateway wrote.
    pub(super) fn trace_end(&self, outcome: Outcome, complete: bool) {
        let event = match outcome {
            Outcome::Terminator => "terminator",
            Outcome::UpstreamEof | Outcome::ClientClosed | Outcome::UpstreamErrorEvent => return,
            Outcome::Truncated => "error_event",
            _ if complete => return,
            _ => "error_event",
        };
        let outcome = opentelemetry::KeyValue::new("outcome", outcome.as_str());
        self.log.trace_event(event, vec![outcome]);
    }

    /// The upstream's own error event ended the stream.
    pub(super) fn trace_upstream_error(&self, error_type: &'static str) {
        let error_type = opentelemetry::KeyValue::new("error.type", error_type);
        self.log
            .trace_event("upstream_error_event", vec![error_type]);
    }

    pub(super) fn add_bytes(&mut self, bytes: usize) {
        self.log.add_bytes(bytes);
    }

    pub(super) fn is_stuck(&self) -> bool {
        self.stuck.is_stuck()
    }

    /// The stream of `route` had no data for `stuck_after` at `now`.
    pub(super) fn stick(&mut self, now: Instant, route: &str, stuck_after: Duration) {
        self.stuck
            .stick(now, &self.metrics, &self.log, route, stuck_after);
    }

    /// Ends a stuck period; true if the stream was stuck.
    pub(super) fn unstick(&mut self, now: Instant) -> bool {
        self.stuck.unstick(now, &self.log)
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let now = Instant::now();
        self.stuck.close(now);
        let outcome = *self.outcome.get_or_insert(Outcome::ClientClosed);
        let summary = StreamSummary {
            outcome: outcome.as_str(),
            events: self.events,
            rules_hit: self.rules_hit,
            stuck_ms: self.stuck.millis(),
            ttft_ms: self
                .tokens
                .time_to_first_token
                .map(|ttft| u64::try_from(ttft.as_millis()).unwrap_or(u64::MAX)),
            error: !matches!(
                outcome,
                Outcome::Terminator | Outcome::UpstreamEof | Outcome::ClientClosed
            ),
            input_tokens: self.tokens.usage.input_tokens,
            output_tokens: self.tokens.usage.output_tokens,
            finish_reasons: self.finish_reasons,
        };
        // A truncated answer did not finish, whatever some of its choices said: its
        // reasons would count it among the answers that ended properly.
        if outcome != Outcome::Truncated {
            self.metrics.count_finish_reasons(self.finish_reasons);
        }
        end(
            &self.metrics,
            now - self.started,
            outcome,
            &mut self.log,
            summary,
        );
    }
}

/// A stream leaves `streams_active`, its duration is observed under its outcome, and
/// its part of the log line is written.
fn end(
    metrics: &RouteMetrics,
    lasted: Duration,
    outcome: Outcome,
    log: &mut RequestLog,
    summary: StreamSummary,
) {
    metrics.streams_active.dec();
    metrics
        .stream_duration(outcome)
        .observe(lasted.as_secs_f64());
    log.set_stream(summary);
}

/// A stream's stuck periods: an open one counts in `streams_stuck`, and all of them in
/// the log line's `stuck_ms`. A period still open when this is dropped ends then, so a
/// start thrown away for another attempt cannot leave the gauge up.
#[derive(Debug, Default)]
pub(crate) struct Stuck {
    /// Since when, and the gauge it counts in.
    open: Option<(Instant, IntGauge)>,
    total: Duration,
}

impl Stuck {
    fn is_stuck(&self) -> bool {
        self.open.is_some()
    }

    /// Whether any period opened: one still open, or time already counted.
    pub(crate) fn was_stuck(&self) -> bool {
        self.open.is_some() || !self.total.is_zero()
    }

    /// A period opens at `now`: the stream of `route` had no data for `stuck_after`.
    fn stick(
        &mut self,
        now: Instant,
        metrics: &RouteMetrics,
        log: &RequestLog,
        route: &str,
        stuck_after: Duration,
    ) {
        metrics.streams_stuck.inc();
        metrics.stuck_total.inc();
        self.open = Some((now, metrics.streams_stuck.clone()));
        log.trace_event("stuck", Vec::new());
        let _span = log.span().enter();
        tracing::warn!(
            route = %route,
            path = log.path(),
            stuck_after = %HumanDuration(stuck_after),
            "stream stuck: no data from upstream"
        );
    }

    /// Data came at `now`: the open period ends (the trace says so); true if there
    /// was one.
    fn unstick(&mut self, now: Instant, log: &RequestLog) -> bool {
        let ended = self.close(now);
        if ended {
            log.trace_event("unstuck", Vec::new());
        }
        ended
    }

    /// Ends the open period at `now` with no data: the stream ended while stuck. Its
    /// time counts; no `unstuck` event claims that data came.
    fn close(&mut self, now: Instant) -> bool {
        let Some((since, gauge)) = self.open.take() else {
            return false;
        };
        self.total += now - since;
        gauge.dec();
        true
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.total.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        if let Some((_, gauge)) = self.open.take() {
            gauge.dec();
        }
    }
}

/// A start held back on a retrying route (`holdback.rs`), or the wait for the attempt
/// after one thrown away ([`StreamPlan::retrying`](super::StreamPlan::retrying)):
/// active from now, and ended as `client_closed`, with nothing sent, if dropped before
/// [`Held::hand_on`] (the request's future was dropped: the client left). A start
/// handed on is recorded by the [`Record`] of the body that goes on with it, or by the
/// wait for the next attempt and then that attempt's.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    metrics: &'a RouteMetrics,
    started: Instant,
    log: &'a mut RequestLog,
    stuck: Stuck,
    handed_on: bool,
}

impl<'a> Held<'a> {
    /// `stuck`: the periods of the attempts before this one, whose starts were
    /// thrown away for it; the client has waited through them all the same.
    pub(super) fn new(
        metrics: &'a RouteMetrics,
        started: Instant,
        log: &'a mut RequestLog,
        stuck: Stuck,
    ) -> Self {
        metrics.streams_active.inc();
        Held {
            metrics,
            started,
            log,
            stuck,
            handed_on: false,
        }
    }

    pub(super) fn is_stuck(&self) -> bool {
        self.stuck.is_stuck()
    }

    /// The start on `route` had no data for `stuck_after` at `now`.
    pub(super) fn stick(&mut self, now: Instant, route: &str, stuck_after: Duration) {
        self.stuck
            .stick(now, self.metrics, self.log, route, stuck_after);
    }

    /// Data came at `now`.
    pub(super) fn unstick(&mut self, now: Instant) {
        self.stuck.unstick(now, self.log);
    }

    /// The start returns to its caller, which records what becomes of it; a stuck
    /// period still open goes with it.
    pub(crate) fn hand_on(&mut self) -> Stuck {
        self.handed_on = true;
        std::mem::take(&mut self.stuck)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.handed_on || std::thread::panicking() {
            self.metrics.streams_active.dec();
            return;
        }
        let now = Instant::now();
        self.stuck.close(now);
        let outcome = Outcome::ClientClosed;
        let summary = StreamSummary {
            outcome: outcome.as_str(),
            events: 0,
            rules_hit: 0,
            stuck_ms: self.stuck.millis(),
            ttft_ms: None,
            error: false,
            input_tokens: None,
            output_tokens: None,
            finish_reasons: FinishReasons::default(),
        };
        end(self.metrics, now - self.started, outcome, self.log, summary);
    }
}
