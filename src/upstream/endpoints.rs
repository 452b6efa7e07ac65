//! An upstream's endpoints: where each one is, its health, and which one the next
//! attempt of a request goes to.
//!
//! `priority` (the default) takes the first endpoint in the listed order that is in;
//! `round_robin` starts each request at the next endpoint in turn. Either way an
//! attempt skips the endpoints the request already tried and those that are out
//! (cooldown, `Retry-After`). When every untried endpoint is out, the attempt goes to
//! the first untried one anyway: a request is better sent to an endpoint that may
//! have recovered than refused by the gateway on a guess.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Uri;
use tokio::time::Instant;

use super::health::{millis, Health, HealthGeneration};
use crate::config::{Balance, EndpointConfig, HealthConfig};

/// One endpoint, ready for requests.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The `endpoint` metric label.
    pub name: Arc<str>,
    /// `scheme://authority`
    pub origin: String,
    /// `host:port` of a plain-HTTP endpoint, for dedicated stream connections.
    pub plain_http: Option<String>,
    pub base_path: String,
    /// Shared with the generations before and after this one ([`HealthGeneration`]).
    pub health: Arc<Health>,
}

/// An upstream's endpoints and the choice between them.
#[derive(Debug)]
pub(crate) struct Endpoints {
    list: Vec<Endpoint>,
    balance: Balance,
    /// Where the next `round_robin` request starts.
    next: AtomicUsize,
    /// Time zero of the health clocks, the same in every generation.
    epoch: Instant,
}

/// A set of endpoints by index (an upstream has at most 64 that count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tried(u64);

impl Tried {
    pub(crate) fn add(&mut self, endpoint: usize) {
        self.0 |= 1u64
            .checked_shl(u32::try_from(endpoint).unwrap_or(u32::MAX))
            .unwrap_or(0);
    }

    fn has(self, endpoint: usize) -> bool {
        let bit = 1u64
            .checked_shl(u32::try_from(endpoint).unwrap_or(u32::MAX))
            .unwrap_or(0);
        self.0 & bit != 0
    }
}

impl Endpoints {
    /// `configs` in priority order; `(origin, base_path)` pairs for an upstream with
    /// one implicit endpoint (the demo).
    pub(crate) fn new(
        upstream: &str,
        configs: &[EndpointConfig],
        balance: Balance,
        health: HealthConfig,
        generation: &mut HealthGeneration,
    ) -> Endpoints {
        let list = configs
            .iter()
            .map(|config| {
                let scheme = config.uri.scheme_str().unwrap_or("http");
                let authority = config.uri.authority().map_or("", |a| a.as_str());
                let origin = format!("{scheme}://{authority}");
                Endpoint {
                    plain_http: plain_http(&origin),
                    health: generation.health(upstream, &config.name, &origin, health),
                    origin,
                    base_path: config.base_path.clone(),
                    name: Arc::from(config.name.as_str()),
                }
            })
            .collect();
        Endpoints {
            list,
            balance,
            next: AtomicUsize::new(0),
            epoch: generation.epoch(),
        }
    }

    pub(crate) fn get(&self, index: usize) -> &Endpoint {
        &self.list[index]
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|e| &*e.name)
    }

    /// Milliseconds on the health clocks.
    pub(crate) fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Where a request's attempts start: always the first for `priority`, the next in
    /// turn for `round_robin`. One atomic add per request, only with more than one
    /// endpoint.
    pub(crate) fn start(&self) -> usize {
        match self.balance {
            Balance::RoundRobin if self.list.len() > 1 => {
                self.next.fetch_add(1, Ordering::Relaxed) % self.list.len()
            }
            _ => 0,
        }
    }

    /// The endpoint for the next attempt of a request that started at `start` and has
    /// tried `tried`; `None` when it has tried them all.
    pub(crate) fn pick(&self, start: usize, tried: Tried) -> Option<usize> {
        let n = self.list.len();
        if n == 1 {
            // Nothing to choose: the one endpoint, whatever its health says.
            return (!tried.has(0)).then_some(0);
        }
        let untried = (0..n).map(|i| (start + i) % n).filter(|&i| !tried.has(i));
        let now = self.now();
        let mut fallback = None;
        for index in untried {
            if self.list[index].health.admits(now) {
                return Some(index);
            }
            fallback.get_or_insert(index);
        }
        fallback
    }

    /// `uri` (made for the first endpoint) aimed at endpoint `index` instead.
    pub(crate) fn retarget(&self, uri: &Uri, index: usize) -> Uri {
        if index == 0 {
            return uri.clone();
        }
        let first = &self.list[0];
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let rest = path_and_query
            .strip_prefix(first.base_path.as_str())
            .unwrap_or(path_and_query);
        let target = &self.list[index];
        let text = format!("{}{}{rest}", target.origin, target.base_path);
        Uri::try_from(text).unwrap_or_else(|_| uri.clone())
    }
}

/// `host:port` of a plain-HTTP origin.
fn plain_http(origin: &str) -> Option<String> {
    origin
        .strip_prefix("http://")
        .and_then(|authority| authority.parse::<http::uri::Authority>().ok())
        .map(|authority| {
            let port = authority.port_u16().unwrap_or(80);
            format!("{}:{port}", authority.host())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::health::HealthBook;
    use std::time::Duration;

    fn endpoints(balance: Balance, urls: &[&str]) -> Endpoints {
        let configs: Vec<EndpointConfig> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let uri: Uri = url.parse().unwrap();
                EndpointConfig {
                    name: format!("e{i}"),
                    base_path: uri.path().trim_end_matches('/').to_owned(),
                    uri,
                }
            })
            .collect();
        let health = HealthConfig {
            failures: 1,
            cooldown: Duration::from_secs(60),
        };
        let (book, metrics) = (Arc::new(HealthBook::default()), Arc::new(Metrics::new()));
        Endpoints::new(
            "up",
            &configs,
            balance,
            health,
            &mut book.generation(&metrics),
        )
    }

    #[test]
    fn priority_takes_the_first_untried_endpoint_that_is_in() {
        let list = endpoints(Balance::Priority, &["http://a", "http://b", "http://c"]);
        let mut tried = Tried::default();
        assert_eq!(list.pick(list.start(), tried), Some(0));
        tried.add(0);
        assert_eq!(list.pick(0, tried), Some(1));
        list.get(1).health.failure(list.now());
        assert_eq!(list.pick(0, tried), Some(2), "b is out");
        tried.add(2);
        assert_eq!(list.pick(0, tried), Some(1), "out, but the last one left");
        tried.add(1);
        assert_eq!(list.pick(0, tried), None);
    }

    #[test]
    fn round_robin_starts_each_request_at_the_next_endpoint() {
        let list = endpoints(Balance::RoundRobin, &["http://a", "http://b"]);
        let starts: Vec<usize> = (0..4).map(|_| list.start()).collect();
        assert_eq!(starts, [0, 1, 0, 1]);
        let mut tried = Tried::default();
        tried.add(1);
        assert_eq!(list.pick(1, tried), Some(0), "then wraps around");
    }

    #[test]
    fn a_uri_is_aimed_at_another_endpoint_with_its_base_path() {
        let list = endpoints(
            Balance::Priority,
            &["http://a:8000/v1", "https://b.example/api/v1"],
        );
        let uri: Uri = "http://a:8000/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(list.retarget(&uri, 0), uri);
        assert_eq!(
            list.retarget(&uri, 1).to_string(),
            "https://b.example/api/v1/chat/completions?x=1"
        );
        assert_eq!(list.get(0).plain_http.as_deref(), Some("a:8000"));
        assert_eq!(list.get(1).plain_http, None);
    }
}
