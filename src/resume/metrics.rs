//! The resume metric families, registered with the gateway's others, and one
//! resumable route's handles, resolved once per config.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The results of a request that carried a stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeResult {
    /// The stream was found and the client reads it again.
    Replayed,
    /// The id names no stream this gateway knows (or it is not an id it gave out).
    Unknown,
    /// The stream's window is over, or the events asked for were dropped for room.
    Expired,
    /// The stream is known but the request's credential is not its own.
    Forbidden,
    /// The stream has finished and the client had every event of it: `204`, so an
    /// `EventSource` that did not close at the end stops reconnecting.
    Finished,
    /// A client stopped the stream (`DELETE`): `204`, so another tab's `EventSource`
    /// does not start the answer again.
    Stopped,
}

impl ResumeResult {
    pub const ALL: [ResumeResult; 6] = [
        ResumeResult::Replayed,
        ResumeResult::Unknown,
        ResumeResult::Expired,
        ResumeResult::Forbidden,
        ResumeResult::Finished,
        ResumeResult::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResumeResult::Replayed => "replayed",
            ResumeResult::Unknown => "unknown",
            ResumeResult::Expired => "expired",
            ResumeResult::Forbidden => "forbidden",
            ResumeResult::Finished => "finished",
            ResumeResult::Stopped => "stopped",
        }
    }
}

/// The families.
#[derive(Debug)]
pub struct ResumeFamilies {
    resumes: IntCounterVec,
    replayed_events: IntCounterVec,
    detached: IntGaugeVec,
    store_errors: IntCounterVec,
}

/// One resumable route's handles.
#[derive(Debug)]
pub struct ResumeMetrics {
    /// Indexed like [`ResumeResult::ALL`].
    resumes: Vec<IntCounter>,
    pub replayed_events: IntCounter,
    pub detached: IntGauge,
    pub store_errors: IntCounter,
}

impl ResumeFamilies {
    /// Registers the families on `registry` under `namespace`.
    pub fn register(registry: &Registry, namespace: &str) -> ResumeFamilies {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(namespace);
        let counter = |name: &str, help: &str| {
            let vec = IntCounterVec::new(opts(name, help), &["route"]).expect("valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("metric families are distinct");
            vec
        };
        let resumes = IntCounterVec::new(
            opts(
                "resumes_total",
                "Requests that carried a stream id (Last-Event-ID or lastEventId), by result.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(resumes.clone()))
            .expect("metric families are distinct");
        let detached = IntGaugeVec::new(
            opts(
                "streams_detached",
                "Resumable streams whose client left, still read from the upstream for a resume.",
            ),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(detached.clone()))
            .expect("metric families are distinct");
        ResumeFamilies {
            resumes,
            replayed_events: counter(
                "resume_replayed_events_total",
                "Events sent again to resuming clients from the replay buffer.",
            ),
            detached,
            store_errors: counter(
                "resume_store_errors_total",
                "Events or lookups the resume store failed to take or answer (the stream went on without it).",
            ),
        }
    }

    /// A resumable route's handles; every series exists from the start.
    pub fn route(&self, route: &str) -> ResumeMetrics {
        ResumeMetrics {
            resumes: ResumeResult::ALL
                .iter()
                .map(|result| self.resumes.with_label_values(&[route, result.as_str()]))
                .collect(),
            replayed_events: self.replayed_events.with_label_values(&[route]),
            detached: self.detached.with_label_values(&[route]),
            store_errors: self.store_errors.with_label_values(&[route]),
        }
    }
}

impl ResumeMetrics {
    pub fn count(&self, result: ResumeResult) {
        self.resumes[result as usize].inc();
    }
}
