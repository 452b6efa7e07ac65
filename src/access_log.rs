//! One log line per finished request: route, method, path, status, upstream, duration,
//! bytes, and how it ended.
//!
//! The line is written when the response body is dropped, so a stream is logged when
//! it really ends (completed, failed, or abandoned by the client), not when its
//! headers went out.

use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::metrics::UNMATCHED_ROUTE;
use crate::protocol::FinishReasons;
use crate::telemetry::{Finished, RequestTrace, StreamFacts};

/// The log line's status for a request whose client left before any response: NGINX's
/// 499 ("client closed request"), which log pipelines and dashboards already know.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// How the response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Dropped before its end: the client went away.
    ClientGone,
    Completed,
    Failed(String),
    /// Ended by the gateway at the drain deadline.
    Shutdown,
}

/// What a supervised event stream adds to its request's line.
#[derive(Debug, Clone)]
pub(crate) struct StreamSummary {
    pub outcome: &'static str,
    pub events: u64,
    pub rules_hit: u64,
    pub stuck_ms: u64,
    /// Request start to the first content event; absent when none was sent.
    pub ttft_ms: Option<u64>,
    /// The outcome is an error the client was told about.
    pub error: bool,
    /// The upstream's usage; absent when it reported none.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Why the answer ended, as the upstream said; empty when it did not say.
    pub finish_reasons: FinishReasons,
}

/// Collects a request's facts; writes them in one line when dropped.
#[derive(Debug)]
pub(crate) struct RequestLog {
    start: Instant,
    method: Method,
    path: String,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    /// The status sent; `None` while no response has been (a client that leaves
    /// before the headers never gets one).
    status: Option<StatusCode>,
    bytes: u64,
    end: End,
    stream: Option<StreamSummary>,
    /// The request's span (its id): the line is written inside it.
    span: tracing::Span,
    /// The request's OpenTelemetry spans, ended with the line.
    trace: Option<RequestTrace>,
}

impl RequestLog {
    pub(crate) fn new(start: Instant, method: Method, path: &str) -> RequestLog {
        RequestLog {
            start,
            method,
            path: path.to_owned(),
            route: None,
            upstream: None,
            status: None,
            bytes: 0,
            end: End::ClientGone,
            stream: None,
            span: tracing::Span::none(),
            trace: None,
        }
    }

    pub(crate) fn set_trace(&mut self, trace: Option<RequestTrace>) {
        self.trace = trace;
    }

    /// The request is sent upstream: its client span starts, and its `traceparent`
    /// goes into the request's headers.
    pub(crate) fn trace_upstream<B>(&mut self, request: &mut http::Request<B>) {
        if let (Some(trace), Some(upstream)) = (&mut self.trace, &self.upstream) {
            let method = request.method().clone();
            trace.start_upstream(method.as_str(), upstream, request.headers_mut());
        }
    }

    /// An attempt of the request goes to `url` (its endpoint's): the client span
    /// names the last. `url` is asked for only when the request is traced.
    pub(crate) fn trace_upstream_url(&mut self, url: impl FnOnce() -> http::Uri) {
        if let Some(trace) = &mut self.trace {
            trace.upstream_url(url().to_string());
        }
    }

    pub(crate) fn trace_upstream_status(&self, status: StatusCode) {
        if let Some(trace) = &self.trace {
            trace.upstream_status(status.as_u16());
        }
    }

    /// A span event of the stream (`stuck`, `terminator`, ...).
    pub(crate) fn trace_event(&self, name: &'static str, attributes: Vec<opentelemetry::KeyValue>) {
        if let Some(trace) = &self.trace {
            trace.event(name, attributes);
        }
    }

    /// The request's span, which this line and the stream's warnings are written in.
    pub(crate) fn set_span(&mut self, span: tracing::Span) {
        self.span = span;
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn set_route(&mut self, route: &Arc<str>, upstream: &Arc<str>) {
        if let Some(trace) = &self.trace {
            trace.set_route(self.method.as_str(), route, upstream);
        }
        self.route = Some(route.clone());
        self.upstream = Some(upstream.clone());
    }

    /// A `HEAD` request: its response goes without a body, which hyper drops unread.
    pub(crate) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// The request path, for log lines about this request before it finishes.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn set_status(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    pub(crate) fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// Marks the request as an event stream that ended as `summary` says.
    pub(crate) fn set_stream(&mut self, summary: StreamSummary) {
        self.end = match summary.outcome {
            "client_closed" => End::ClientGone,
            _ => End::Completed,
        };
        self.stream = Some(summary);
    }

    pub(crate) fn finished(&mut self) {
        self.end = End::Completed;
    }

    /// The gateway ended the body at the drain deadline.
    pub(crate) fn ended_by_shutdown(&mut self) {
        self.end = End::Shutdown;
    }

    pub(crate) fn failed(&mut self, reason: String) {
        self.end = End::Failed(reason);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // Whole milliseconds as an integer field, so a JSON line has a number, not a
        // string (a field recorded through Display becomes a string).
        let _span = self.span.enter();
        let duration_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let route = self.route.as_deref().unwrap_or(UNMATCHED_ROUTE);
        // No route, no upstream: the field is left out rather than given a placeholder.
        let upstream = self.upstream.as_deref();
        let (end, error) = match &self.end {
            End::Completed => ("completed", None),
            End::ClientGone => ("client_gone", None),
            End::Shutdown => ("shutdown", None),
            End::Failed(reason) => ("failed", Some(reason.as_str())),
        };
        // Streams carry their outcome instead of `end`; absent fields are not written.
        let stream = self.stream.as_ref();
        let (end, what) = match stream {
            Some(_) => (None, "stream finished"),
            None => (Some(end), "request finished"),
        };
        tracing::info!(
            route,
            method = %self.method,
            path = %self.path,
            status = self.status.map_or(CLIENT_CLOSED_REQUEST, |status| status.as_u16()),
            upstream,
            duration_ms,
            bytes = self.bytes,
            end,
            error,
            outcome = stream.map(|s| s.outcome),
            events = stream.map(|s| s.events),
            rules_hit = stream.map(|s| s.rules_hit),
            stuck_ms = stream.map(|s| s.stuck_ms),
            ttft_ms = stream.and_then(|s| s.ttft_ms),
            input_tokens = stream.and_then(|s| s.input_tokens),
            output_tokens = stream.and_then(|s| s.output_tokens),
            finish_reasons = stream
                .map(|s| s.finish_reasons)
                .filter(|reasons| !reasons.is_empty())
                .map(tracing::field::display),
            "{what}"
        );
        if let Some(trace) = self.trace.take() {
            trace.finish(&Finished {
                status: self.status.map(|status| status.as_u16()),
                bytes: self.bytes,
                end: stream.map_or_else(|| end.unwrap_or_default(), |s| s.outcome),
                stream: stream.map(|s| StreamFacts {
                    events: s.events,
                    rules_hit: s.rules_hit,
                    input_tokens: s.input_tokens,
                    output_tokens: s.output_tokens,
                    time_to_first_chunk: s.ttft_ms.map(|ms| ms as f64 / 1000.0),
                    finish_reasons: s.finish_reasons,
                    error: s.error,
                }),
            });
        }
    }
}
