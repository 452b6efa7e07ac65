//! Prometheus metrics: every family of the README's metric table, on an explicit registry.
//!
//! Families are registered once ([`Metrics::new`]); labelled handles are resolved once
//! per route and config ([`Metrics::route`]) and shared by that route's streams, so the
//! per-event cost is an atomic add, with no label lookup and no lock. Label values are
//! bounded: route and rule names (validated config), fixed enums, never request data.

#[cfg(target_os = "linux")]
mod process;
mod traffic;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::Outcome;
use crate::protocol::{FinishReasons, Protocol, UPSTREAM_ERROR_TYPES};
use crate::upstream::{ClientErrorKind, UpstreamErrorKind};

pub use traffic::{
    AdmissionMetrics, FailoverMetrics, InFlight, TrafficFamilies, ATTEMPT_RESULTS, LIMITS,
    RETRY_REASONS, SKIP_REASONS,
};

const NAMESPACE: &str = "sse_gateway";

/// Stream lives run from a rejected request (tens of ms) to an hour-long session.
const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Time to first event: a cached answer (ms) to a model that thinks for a minute.
const FIRST_EVENT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Gaps between tokens: a few ms from a fast model to seconds from a stalled one.
const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The one word for "no route", alike in the `route` metric label, the log line's
/// `route` field and the error body's `route`, so one search finds them all.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// All metric families of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    streams_active: IntGaugeVec,
    streams_stuck: IntGaugeVec,
    stuck_total: IntCounterVec,
    stream_duration: HistogramVec,
    first_event: HistogramVec,
    time_to_first_token: HistogramVec,
    inter_token: HistogramVec,
    tokens: IntCounterVec,
    events: IntCounterVec,
    bytes: IntCounterVec,
    rule_hits: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_error_events: IntCounterVec,
    finish_reasons: IntCounterVec,
    client_errors: IntCounterVec,
    config_reloads: IntCounterVec,
    config_read_errors: IntCounter,
    config_last_reload_success: IntGauge,
    config_last_reload_timestamp: Gauge,
    /// Admission and failover (`metrics/traffic.rs`).
    traffic: TrafficFamilies,
    spans_dropped: IntCounterVec,
    /// The resume families (`crate::resume::metrics`).
    resume: crate::resume::ResumeFamilies,
}

/// One route's handles, resolved once and shared by all of its streams.
#[derive(Debug)]
pub struct RouteMetrics {
    pub streams_active: IntGauge,
    pub streams_stuck: IntGauge,
    pub stuck_total: IntCounter,
    /// Indexed by [`Outcome::index`].
    stream_duration: Vec<Histogram>,
    pub first_event: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub input_tokens: IntCounter,
    pub output_tokens: IntCounter,
    pub events: IntCounter,
    pub bytes_upstream: IntCounter,
    pub bytes_downstream: IntCounter,
    /// Indexed like the route's rules.
    pub rule_hits: Vec<IntCounter>,
    /// Indexed by [`UpstreamErrorKind::index`].
    upstream_errors: Vec<IntCounter>,
    /// Indexed like [`UPSTREAM_ERROR_TYPES`].
    upstream_error_events: Vec<IntCounter>,
    /// The route protocol's finish reasons ([`Protocol::finish_reasons`]), by label.
    finish_reasons: Vec<(&'static str, IntCounter)>,
    /// Indexed by [`ClientErrorKind::index`].
    client_errors: Vec<IntCounter>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(buckets.to_vec())
}

/// Registering fixed, distinct families on a fresh registry cannot fail; a failure
/// here is a bug caught by every test that builds a gateway.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric families are distinct");
    collector
}

impl Metrics {
    /// A new registry with every family, `build_info` and the `process_*` collector.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let metrics = Metrics {
            http_requests: counter(
                "http_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            streams_active: gauge("streams_active", "Event streams open now.", &["route"]),
            streams_stuck: gauge(
                "streams_stuck",
                "Open streams with no upstream data for the route's stuck_after.",
                &["route"],
            ),
            stuck_total: counter("stuck_total", "Streams that became stuck.", &["route"]),
            stream_duration: register(
                &registry,
                HistogramVec::new(
                    histogram(
                        "stream_duration_seconds",
                        "Event stream lifetimes, by how they ended.",
                        DURATION_BUCKETS,
                    ),
                    &["route", "outcome"],
                )
                .expect("valid metric"),
            ),
            first_event: register(
                &registry,
                HistogramVec::new(
                    histogram(
                        "stream_first_event_seconds",
                        "Time from request start to the first event sent downstream.",
                        FIRST_EVENT_BUCKETS,
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            time_to_first_token: register(
                &registry,
                HistogramVec::new(
                    histogram(
                        "time_to_first_token_seconds",
                        "Time from request start to the first content event sent downstream (a non-empty text, refusal or tool-call delta).",
                        FIRST_EVENT_BUCKETS,
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            inter_token: register(
                &registry,
                HistogramVec::new(
                    histogram(
                        "inter_token_seconds",
                        "Gaps between upstream reads that carried content events, after the first (events of one read are one arrival).",
                        INTER_TOKEN_BUCKETS,
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            tokens: counter(
                "tokens_total",
                "Tokens the upstream reported in its usage, by kind (input, output).",
                &["route", "kind"],
            ),
            events: counter(
                "stream_events_total",
                "Events forwarded downstream.",
                &["route"],
            ),
            bytes: counter(
                "stream_bytes_total",
                "Event stream bytes, received from the upstream and sent downstream.",
                &["route", "direction"],
            ),
            rule_hits: counter(
                "rule_hits_total",
                "Events a rewrite rule changed or dropped.",
                &["route", "rule"],
            ),
            upstream_errors: counter(
                "upstream_errors_total",
                "Upstream failures, before or during a response.",
                &["route", "kind"],
            ),
            upstream_error_events: counter(
                "upstream_error_events_total",
                "Error events the upstream sent in a stream (passed through), by the upstream's error type: one of a known list, else other.",
                &["route", "type"],
            ),
            finish_reasons: counter(
                "finish_reasons_total",
                "Streams whose answer ended with this finish reason, as the upstream gave it (finish_reason, stop_reason, or the Responses terminal event): one of the route protocol's list, else other.",
                &["route", "reason"],
            ),
            client_errors: counter(
                "client_errors_total",
                "Requests the client spoiled: a request body too large, malformed or too slow.",
                &["route", "kind"],
            ),
            config_reloads: counter(
                "config_reloads_total",
                "Config loads after startup, by result.",
                &["result"],
            ),
            config_read_errors: register(
                &registry,
                IntCounter::with_opts(opts(
                    "config_read_errors_total",
                    "Times the config file could not be read (not reloads: its content is unknown).",
                ))
                .expect("valid metric"),
            ),
            config_last_reload_success: register(
                &registry,
                IntGauge::with_opts(opts(
                    "config_last_reload_success",
                    "1 when the latest config load (startup or reload) was applied, 0 when it was refused.",
                ))
                .expect("valid metric"),
            ),
            config_last_reload_timestamp: register(
                &registry,
                Gauge::with_opts(opts(
                    "config_last_reload_timestamp_seconds",
                    "Unix time at which the running config was applied (startup or the latest successful reload).",
                ))
                .expect("valid metric"),
            ),
            traffic: TrafficFamilies::new(&registry),
            spans_dropped: counter(
                "trace_spans_dropped_total",
                "Trace spans not exported: the export queue was full (queue_full) or the collector failed or timed out (export_failed).",
                &["reason"],
            ),
            resume: crate::resume::ResumeFamilies::register(&registry, NAMESPACE),
            registry,
        };
        let build_info = register(
            &metrics.registry,
            IntGaugeVec::new(
                opts(
                    "build_info",
                    "Always 1; the version and commit labels say which build.",
                ),
                &["version", "commit"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SSE_GATEWAY_COMMIT")])
            .set(1);
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(process::ProcessMetrics::for_self()))
            .expect("process metrics are distinct");
        // Both results exist from the start, so `increase()` sees the first failure.
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics.spans_dropped();
        metrics
    }

    /// Resolves a route's handles; `rules` are its rule names in order, `protocol`
    /// what its upstream speaks.
    pub fn route(&self, route: &str, rules: &[&str], protocol: Protocol) -> RouteMetrics {
        let one = |vec: &IntCounterVec| vec.with_label_values(&[route]);
        RouteMetrics {
            streams_active: self.streams_active.with_label_values(&[route]),
            streams_stuck: self.streams_stuck.with_label_values(&[route]),
            stuck_total: one(&self.stuck_total),
            stream_duration: Outcome::ALL
                .iter()
                .map(|outcome| {
                    self.stream_duration
                        .with_label_values(&[route, outcome.as_str()])
                })
                .collect(),
            first_event: self.first_event.with_label_values(&[route]),
            time_to_first_token: self.time_to_first_token.with_label_values(&[route]),
            inter_token: self.inter_token.with_label_values(&[route]),
            input_tokens: self.tokens.with_label_values(&[route, "input"]),
            output_tokens: self.tokens.with_label_values(&[route, "output"]),
            events: one(&self.events),
            bytes_upstream: self.bytes.with_label_values(&[route, "upstream"]),
            bytes_downstream: self.bytes.with_label_values(&[route, "downstream"]),
            rule_hits: rules
                .iter()
                .map(|rule| self.rule_hits.with_label_values(&[route, rule]))
                .collect(),
            // Every series exists from the start, so `increase()` sees the first error.
            upstream_errors: UpstreamErrorKind::ALL
                .iter()
                .map(|kind| {
                    self.upstream_errors
                        .with_label_values(&[route, kind.as_str()])
                })
                .collect(),
            upstream_error_events: UPSTREAM_ERROR_TYPES
                .iter()
                .map(|error_type| {
                    self.upstream_error_events
                        .with_label_values(&[route, error_type])
                })
                .collect(),
            finish_reasons: protocol
                .finish_reasons()
                .map(|reason| {
                    let counter = self.finish_reasons.with_label_values(&[route, reason]);
                    (reason, counter)
                })
                .collect(),
            client_errors: ClientErrorKind::ALL
                .iter()
                .map(|kind| {
                    self.client_errors
                        .with_label_values(&[route, kind.as_str()])
                })
                .collect(),
        }
    }

    /// The admission and failover families.
    pub fn traffic(&self) -> &TrafficFamilies {
        &self.traffic
    }

    /// The resume families, for resumable routes' handles.
    pub fn resume(&self) -> &crate::resume::ResumeFamilies {
        &self.resume
    }

    /// Counts an answered request. Unknown methods share one label value, so clients
    /// cannot grow the series count.
    pub fn count_request(&self, route: Option<&str>, method: &Method, status: StatusCode) {
        let method = match *method {
            Method::GET
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS
            | Method::PATCH => method.as_str(),
            _ => "OTHER",
        };
        self.http_requests
            .with_label_values(&[route.unwrap_or(UNMATCHED_ROUTE), method, status.as_str()])
            .inc();
    }

    /// Counts a config reload attempt; a failure also marks the latest load as failed.
    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if !success {
            self.config_last_reload_success.set(0);
        }
    }

    /// Records that a config was applied (at startup and on every successful reload):
    /// the two gauges an alert reads instead of reconstructing the last result from
    /// counters.
    pub fn config_applied(&self) {
        self.config_last_reload_success.set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.config_last_reload_timestamp.set(now.floor());
    }

    /// The dropped-span counters the trace exporter increments.
    pub(crate) fn spans_dropped(&self) -> crate::telemetry::Dropped {
        crate::telemetry::Dropped {
            queue_full: self.spans_dropped.with_label_values(&["queue_full"]),
            export_failed: self.spans_dropped.with_label_values(&["export_failed"]),
        }
    }

    /// Counts a failed read of the config file (descriptors, permissions, a missing
    /// file): a file-system problem, not a reload.
    pub fn count_config_read_error(&self) {
        self.config_read_errors.inc();
    }

    /// The registry, in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl RouteMetrics {
    /// The duration histogram for one outcome.
    pub fn stream_duration(&self, outcome: Outcome) -> &Histogram {
        &self.stream_duration[outcome.index()]
    }

    /// Counts an upstream failure.
    pub fn count_upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].inc();
    }

    /// Counts an upstream's in-band error event; `error_type` is one of
    /// `UPSTREAM_ERROR_TYPES`.
    pub fn count_upstream_error_event(&self, error_type: &str) {
        let index = UPSTREAM_ERROR_TYPES
            .iter()
            .position(|known| *known == error_type)
            .unwrap_or(UPSTREAM_ERROR_TYPES.len() - 1);
        self.upstream_error_events[index].inc();
    }

    /// Counts a stream's finish reasons, each once.
    pub fn count_finish_reasons(&self, reasons: FinishReasons) {
        for reason in reasons.labels() {
            let counter = self
                .finish_reasons
                .iter()
                .find(|(known, _)| *known == reason);
            if let Some((_, counter)) = counter {
                counter.inc();
            }
        }
    }

    /// Counts a request the client spoiled.
    pub fn count_client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind.index()].inc();
    }
}
