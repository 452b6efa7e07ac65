//! Admission: how many requests a route takes at once, in all and per client, and the
//! polite refusal (429 with `Retry-After`, in the route's error shape) when it is full.
//!
//! A request takes a [`Slot`] before anything is sent upstream and holds it in its
//! response body, so the slot is freed exactly when hyper drops that body: at the
//! stream's end, when the client goes away, at a timeout or at the drain. Nothing to
//! remember to release, no path that leaks.
//!
//! The per-client key is a keyed hash of the header's value (`SipHash` with a key drawn
//! at random once per process): the value itself is never stored, logged or exported,
//! and a client cannot aim collisions at another without the key. The map of keys
//! holds only clients with a request in flight, so it is bounded by the requests in
//! flight, and by [`MAX_CLIENTS`] on a route without `max_streams`.

use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, HeaderName, Response};

use crate::config::LimitsConfig;
use crate::metrics::{AdmissionMetrics, InFlight, Metrics};
use crate::protocol::Protocol;
use crate::reply::{self, ErrorType};

/// Distinct clients in flight on a route without `max_streams`: a bound on the map.
pub(crate) const MAX_CLIENTS: usize = 100_000;

/// What a refused client is told to wait: a stream slot frees when any stream ends,
/// so soon is as good a guess as any, and short enough that a client that honours it
/// loses little.
pub(crate) const RETRY_AFTER_SECS: Duration = Duration::from_secs(1);

/// A route's limits, built once per config.
#[derive(Debug)]
pub(crate) struct Admission {
    max_streams: Option<u32>,
    per_client: Option<(HeaderName, u32)>,
    in_flight: Arc<InFlight>,
    metrics: AdmissionMetrics,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Route,
    PerClient,
}

impl Limit {
    fn index(self) -> usize {
        self as usize
    }
}

/// A request's place on its route; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    client: Option<u64>,
}

impl Admission {
    /// The admission of `route` under `limits`.
    pub(crate) fn new(route: &str, limits: &LimitsConfig, metrics: &Metrics) -> Admission {
        let (route_metrics, in_flight) = metrics.traffic().admission(route, limits.max_streams);
        Admission {
            max_streams: limits.max_streams,
            per_client: limits
                .per_client
                .as_ref()
                .map(|p| (p.header.clone(), p.max_streams)),
            in_flight,
            metrics: route_metrics,
        }
    }

    /// A slot for a request with `headers`, or the limit that is full.
    pub(crate) fn admit(self: &Arc<Self>, headers: &HeaderMap) -> Result<Slot, Limit> {
        let in_flight = &self.in_flight;
        let admitted = in_flight.route.fetch_add(1, Ordering::AcqRel) + 1;
        // From here on, dropping the slot gives the place back, whatever refuses.
        let mut slot = Slot {
            admission: self.clone(),
            client: None,
        };
        self.metrics.streams.inc();
        if self.max_streams.is_some_and(|max| admitted > max) {
            return Err(self.refuse(Limit::Route));
        }
        if let Some((header, max)) = &self.per_client {
            let key = client_key(headers.get(header));
            let mut clients = in_flight
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let bound = self.max_streams.map_or(MAX_CLIENTS, |m| m as usize);
            let full = clients.len() >= bound;
            match clients.entry(key) {
                Entry::Occupied(entry) if *entry.get() >= *max => {
                    drop(clients);
                    return Err(self.refuse(Limit::PerClient));
                }
                Entry::Occupied(mut entry) => *entry.get_mut() += 1,
                Entry::Vacant(_) if full => {
                    drop(clients);
                    return Err(self.refuse(Limit::PerClient));
                }
                Entry::Vacant(entry) => {
                    entry.insert(1);
                }
            }
            slot.client = Some(key);
        }
        Ok(slot)
    }

    fn refuse(&self, limit: Limit) -> Limit {
        self.metrics.rejected[limit.index()].inc();
        limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        admission.in_flight.route.fetch_sub(1, Ordering::AcqRel);
        admission.metrics.streams.dec();
        if let Some(key) = self.client {
            let mut clients = admission
                .in_flight
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Entry::Occupied(mut entry) = clients.entry(key) {
                *entry.get_mut() -= 1;
                if *entry.get() == 0 {
                    entry.remove();
                }
            }
        }
    }
}

/// The keyed hash of a client's header value; requests without the header share one
/// key (they are one anonymous client).
fn client_key(value: Option<&HeaderValue>) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let key = KEY.get_or_init(RandomState::new);
    key.hash_one(value.map_or(&b""[..], HeaderValue::as_bytes))
}

/// The 429 a refused request gets, in the route's error shape, with `Retry-After`.
pub(crate) fn refusal(limit: Limit, protocol: Protocol, route: &str) -> Response<Bytes> {
    let message = match limit {
        Limit::Route => "this route has as many streams open as it allows; retry shortly",
        Limit::PerClient => {
            "this client has as many streams open as the route allows; retry shortly"
        }
    };
    let mut response =
        reply::error_response_in(protocol, ErrorType::TooManyRequests, message, Some(route));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS.as_secs()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_in_a_process_and_not_the_value() {
        let value = HeaderValue::from_static("Bearer sk-secret");
        let key = client_key(Some(&value));
        assert_eq!(key, client_key(Some(&value)));
        assert_ne!(
            key,
            client_key(Some(&HeaderValue::from_static("Bearer other")))
        );
        assert_ne!(key, client_key(None));
    }
}
