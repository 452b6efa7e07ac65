//! A stream's record: the facts the stream leaves behind, written once when its body
//! is dropped. The one place that updates `streams_active`, the stuck gauge at the
//! end, the duration histogram, and the stream's part of the request's log line.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::access_log::{RequestLog, StreamSummary};
use crate::engine::Outcome;
use crate::metrics::RouteMetrics;

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
    stuck_since: Option<Instant>,
    stuck_for: Duration,
    log: RequestLog,
}

impl Record {
    /// The record of a stream that started at `started`; it counts as active now.
    pub(super) fn new(metrics: Arc<RouteMetrics>, started: Instant, log: RequestLog) -> Record {
        metrics.streams_active.inc();
        Record {
            metrics,
            started,
            outcome: None,
            events: 0,
            rules_hit: 0,
            tokens: Tokens::default(),
            stuck_since: None,
            stuck_for: Duration::ZERO,
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
        self.stuck_since.is_some()
    }

    /// The stream became stuck at `now`.
    pub(super) fn stick(&mut self, now: Instant) {
        self.stuck_since = Some(now);
        self.log.trace_event("stuck", Vec::new());
        self.metrics.streams_stuck.inc();
        self.metrics.stuck_total.inc();
    }

    /// Ends a stuck period; true if the stream was stuck.
    pub(super) fn unstick(&mut self, now: Instant) -> bool {
        match self.stuck_since.take() {
            Some(since) => {
                self.log.trace_event("unstuck", Vec::new());
                self.stuck_for += now - since;
                self.metrics.streams_stuck.dec();
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
        let metrics = &self.metrics;
        metrics.streams_active.dec();
        metrics
            .stream_duration(outcome)
            .observe((now - self.started).as_secs_f64());
        self.log.set_stream(StreamSummary {
            outcome: outcome.as_str(),
            events: self.events,
            rules_hit: self.rules_hit,
            stuck_ms: u64::try_from(self.stuck_for.as_millis()).unwrap_or(u64::MAX),
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
        });
    }
}
