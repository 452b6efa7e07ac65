//! The admission and failover families: streams admitted per route against its limit,
//! refusals, upstream attempts per endpoint, retries and the retries not made, and
//! each endpoint's health.
//!
//! Apart from the stream families because they are resolved per route *and* per
//! endpoint, and because the counts of admitted streams outlive a config generation:
//! a reload must not admit a second `max_streams` next to the streams still open on
//! the old one, so the counters live here, with the registry, keyed by route name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{opts, register};

/// Results of an upstream attempt: the `result` label. `status_5xx` is any other
/// `5xx` answer (`500`, `501`, ...): passed to the client, not tried again.
pub const ATTEMPT_RESULTS: [&str; 10] = [
    "success",
    "connect",
    "timeout",
    "status_429",
    "status_502",
    "status_503",
    "status_504",
    "status_5xx",
    "failed",
    "before_content",
];

/// Why a request was tried again: the `reason` label of `upstream_retries_total`.
pub const RETRY_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "status_429",
    "status_502",
    "status_503",
    "status_504",
    "before_content",
];

/// Why a request that failed was not tried again although its route retries.
pub const SKIP_REASONS: [&str; 2] = ["budget", "body_not_replayable"];

/// Which limit refused a request: the `limit` label.
pub const LIMITS: [&str; 2] = ["route", "per_client"];

/// Requests in flight on one route, across config generations.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Requests in flight on the route.
    pub route: std::sync::atomic::AtomicU32,
    /// Per client key (a keyed hash, never the header's value): requests in flight.
    /// Holds only clients with a request in flight.
    pub clients: Mutex<HashMap<u64, u32>>,
}

/// The families, registered once.
#[derive(Debug)]
pub struct TrafficFamilies {
    admission_streams: IntGaugeVec,
    admission_max_streams: IntGaugeVec,
    admission_rejected: IntCounterVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    retries_skipped: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    in_flight: Mutex<HashMap<String, Arc<InFlight>>>,
}

/// One route's admission handles.
#[derive(Debug)]
pub struct AdmissionMetrics {
    /// `admission_streams`.
    pub streams: IntGauge,
    /// Indexed like [`LIMITS`].
    pub rejected: [IntCounter; 2],
}

/// One route's failover handles.
#[derive(Debug)]
pub struct FailoverMetrics {
    /// Per endpoint (in the upstream's order), indexed like [`ATTEMPT_RESULTS`].
    pub attempts: Vec<Vec<IntCounter>>,
    /// Indexed like [`RETRY_REASONS`].
    pub retries: Vec<IntCounter>,
    /// Indexed like [`SKIP_REASONS`].
    pub skipped: Vec<IntCounter>,
}

impl FailoverMetrics {
    /// Counts an attempt on `endpoint` with `result` (one of [`ATTEMPT_RESULTS`]).
    pub fn attempt(&self, endpoint: usize, result: &str) {
        let index = ATTEMPT_RESULTS.iter().position(|r| *r == result);
        if let (Some(row), Some(index)) = (self.attempts.get(endpoint), index) {
            row[index].inc();
        }
    }

    /// Counts a retry for `reason` (one of [`RETRY_REASONS`]).
    pub fn retry(&self, reason: &str) {
        if let Some(index) = RETRY_REASONS.iter().position(|r| *r == reason) {
            self.retries[index].inc();
        }
    }

    /// Counts a retry not made for `reason` (one of [`SKIP_REASONS`]).
    pub fn skipped(&self, reason: &str) {
        if let Some(index) = SKIP_REASONS.iter().position(|r| *r == reason) {
            self.skipped[index].inc();
        }
    }
}

impl TrafficFamilies {
    pub(super) fn new(registry: &Registry) -> TrafficFamilies {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        TrafficFamilies {
            admission_streams: gauge(
                "admission_streams",
                "Requests in flight on the route, with or without limits (each holds a slot until its response body ends).",
                &["route"],
            ),
            admission_max_streams: gauge(
                "admission_max_streams",
                "A route's limits.max_streams.",
                &["route"],
            ),
            admission_rejected: counter(
                "admission_rejected_total",
                "Requests refused with 429 before any upstream request, by the limit that refused them.",
                &["route", "limit"],
            ),
            attempts: counter(
                "upstream_attempts_total",
                "Upstream requests (every attempt, on every route), by endpoint and result.",
                &["route", "endpoint", "result"],
            ),
            retries: counter(
                "upstream_retries_total",
                "Requests tried again on an endpoint, by what failed.",
                &["route", "reason"],
            ),
            retries_skipped: counter(
                "upstream_retries_skipped_total",
                "Failures that were not tried again although the route retries: the retry budget was spent, or the request body could not be kept.",
                &["route", "reason"],
            ),
            endpoint_healthy: gauge(
                "upstream_endpoint_healthy",
                "1 while an upstream endpoint takes requests, 0 while it is skipped after failures in a row.",
                &["upstream", "endpoint"],
            ),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The admission handles and in-flight counters of `route`; `max_streams` is
    /// exported as its limit.
    pub fn admission(
        &self,
        route: &str,
        max_streams: Option<u32>,
    ) -> (AdmissionMetrics, Arc<InFlight>) {
        if let Some(max) = max_streams {
            self.admission_max_streams
                .with_label_values(&[route])
                .set(i64::from(max));
        } else {
            let _ = self.admission_max_streams.remove_label_values(&[route]);
        }
        let metrics = AdmissionMetrics {
            streams: self.admission_streams.with_label_values(&[route]),
            rejected: LIMITS
                .map(|limit| self.admission_rejected.with_label_values(&[route, limit])),
        };
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(route.to_owned())
            .or_default()
            .clone();
        (metrics, in_flight)
    }

    /// Removes the limit of every route not in `routes`, the routes of the config
    /// just applied: a route removed or renamed by a reload has no limit any more.
    pub fn keep_limits_of<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        use prometheus::core::Collector;
        let routes: std::collections::HashSet<&str> = routes.into_iter().collect();
        let exported = self.admission_max_streams.collect();
        let gone: Vec<String> = exported
            .iter()
            .flat_map(prometheus::proto::MetricFamily::get_metric)
            .flat_map(prometheus::proto::Metric::get_label)
            .filter(|label| label.name() == "route" && !routes.contains(label.value()))
            .map(|label| label.value().to_owned())
            .collect();
        for route in gone {
            let _ = self.admission_max_streams.remove_label_values(&[&route]);
        }
    }

    /// The failover handles of `route`, whose upstream has `endpoints`.
    pub fn failover(&self, route: &str, endpoints: &[&str]) -> FailoverMetrics {
        FailoverMetrics {
            attempts: endpoints
                .iter()
                .map(|endpoint| {
                    ATTEMPT_RESULTS
                        .iter()
                        .map(|result| self.attempts.with_label_values(&[route, endpoint, result]))
                        .collect()
                })
                .collect(),
            retries: RETRY_REASONS
                .iter()
                .map(|reason| self.retries.with_label_values(&[route, reason]))
                .collect(),
            skipped: SKIP_REASONS
                .iter()
                .map(|reason| self.retries_skipped.with_label_values(&[route, reason]))
                .collect(),
        }
    }

    /// The health gauge of one endpoint.
    pub fn endpoint_healthy(&self, upstream: &str, endpoint: &str) -> IntGauge {
        self.endpoint_healthy
            .with_label_values(&[upstream, endpoint])
    }

    /// An endpoint no longer configured: its health gauge leaves `/metrics`, so a
    /// dashboard does not count it among the endpoints that are in or out.
    pub fn forget_endpoint(&self, upstream: &str, endpoint: &str) {
        let _ = self
            .endpoint_healthy
            .remove_label_values(&[upstream, endpoint]);
    }
}
