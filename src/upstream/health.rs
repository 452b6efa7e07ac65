//! Passive health of one endpoint, learned from the requests it serves: after
//! `health.failures` failures in a row it is skipped for `health.cooldown`, then one
//! request tries it (the trial); a success brings it back, a failure starts another
//! cooldown. An upstream's `429` with `Retry-After` skips the endpoint for that long
//! without counting as a failure: it is busy, not broken.
//!
//! Atomics, touched once per attempt (never per event); a lock only when the endpoint
//! goes out or comes back, for its gauge. Times are milliseconds since the gateway
//! started ([`HealthBook`]'s epoch), so they fit an `AtomicU64`.
//!
//! A reload builds every upstream anew, but what the gateway has learned about an
//! endpoint is not part of the config: [`HealthBook`] hands an endpoint that is still
//! configured the same way the health it had, so a reload neither sends requests back
//! to an endpoint it had taken out nor shows that endpoint as healthy on a dashboard.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::HealthConfig;
use crate::metrics::Metrics;

/// The longest an upstream's `Retry-After` is honoured: a larger value is more likely
/// a mistake than a plan, and would take the endpoint out for good.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One endpoint's health.
#[derive(Debug)]
pub(crate) struct Health {
    config: HealthConfig,
    failures: AtomicU32,
    /// Out until this time; `0`: in.
    down_until: AtomicU64,
    /// When the current trial request was let through; `0`: none.
    trial_at: AtomicU64,
    /// Skipped until this time after a `429` with `Retry-After`.
    busy_until: AtomicU64,
    /// `upstream_endpoint_healthy`: none until the endpoint's config is about to be in
    /// force, and none again once a reload has replaced it, so that a config that
    /// never comes into force shows nothing and the requests a replaced endpoint still
    /// finishes do not speak for its successor. Locked when the endpoint goes out or
    /// comes back, and at a commit.
    gauge: Mutex<Option<IntGauge>>,
}

impl Health {
    /// An endpoint that is in; its gauge comes when its generation is committed.
    fn new(config: HealthConfig) -> Health {
        Health {
            config,
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            trial_at: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            gauge: Mutex::new(None),
        }
    }

    fn show(&self, healthy: bool) {
        if let Some(gauge) = &*self.gauge.lock().unwrap_or_else(PoisonError::into_inner) {
            gauge.set(i64::from(healthy));
        }
    }

    /// Shows the endpoint's health on `gauge` from now on, or on nothing.
    fn attach(&self, gauge: Option<IntGauge>) {
        if let Some(gauge) = &gauge {
            gauge.set(i64::from(self.down_until.load(Ordering::Acquire) == 0));
        }
        *self.gauge.lock().unwrap_or_else(PoisonError::into_inner) = gauge;
    }

    /// Whether a request may go to the endpoint at `now` (ms). After a cooldown the
    /// first caller takes the trial; a trial that never reported (its client left)
    /// is given up after another cooldown.
    pub(crate) fn admits(&self, now: u64) -> bool {
        if now < self.busy_until.load(Ordering::Relaxed) {
            return false;
        }
        let down_until = self.down_until.load(Ordering::Relaxed);
        if down_until == 0 {
            return true;
        }
        if now < down_until {
            return false;
        }
        let trial = self.trial_at.load(Ordering::Relaxed);
        let cooldown = millis(self.config.cooldown);
        let free = trial == 0 || now.saturating_sub(trial) >= cooldown;
        free && self
            .trial_at
            .compare_exchange(trial, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The endpoint answered as it should.
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.trial_at.store(0, Ordering::Relaxed);
        if self.down_until.swap(0, Ordering::AcqRel) != 0 {
            self.show(true);
            tracing::info!("upstream endpoint answered its trial request: back in");
        }
    }

    /// The endpoint failed at `now`; true when this failure took it out.
    pub(crate) fn failure(&self, now: u64) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let trial_failed = self.trial_at.swap(0, Ordering::AcqRel) != 0;
        if trial_failed || failures >= self.config.failures {
            let until = now.saturating_add(millis(self.config.cooldown)).max(1);
            self.down_until.store(until, Ordering::Release);
            self.failures.store(0, Ordering::Relaxed);
            self.show(false);
            return true;
        }
        false
    }

    /// The endpoint asked to be left alone for `wait` (a `429`'s `Retry-After`).
    pub(crate) fn busy(&self, now: u64, wait: Duration) {
        let wait = millis(wait.min(MAX_RETRY_AFTER));
        self.busy_until
            .store(now.saturating_add(wait), Ordering::Relaxed);
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What makes two generations' endpoints the same one: its upstream, its name, where
/// it is, and how its health is judged. Any change gives it a fresh health.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HealthKey {
    upstream: String,
    endpoint: String,
    origin: String,
    config: HealthConfig,
}

/// The health of every configured endpoint, kept across reloads.
#[derive(Debug)]
pub(crate) struct HealthBook {
    /// Time zero of every health clock: a health kept from one generation to the next
    /// reads the same times in both.
    epoch: Instant,
    /// The endpoints of the config in force.
    kept: Mutex<HashMap<HealthKey, Arc<Health>>>,
}

impl Default for HealthBook {
    fn default() -> HealthBook {
        HealthBook {
            epoch: Instant::now(),
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl HealthBook {
    /// Collects the health of the endpoints of a config being built.
    pub(crate) fn generation(self: &Arc<Self>, metrics: &Arc<Metrics>) -> HealthGeneration {
        HealthGeneration {
            book: self.clone(),
            metrics: metrics.clone(),
            health: HashMap::new(),
        }
    }
}

/// The endpoints of one config as it is built; [`HealthGeneration::commit`] right
/// before it comes into force. A config that fails to build is dropped uncommitted and
/// changes nothing, in `/metrics` either. Configs are built and committed one at a
/// time (`Gateway::apply`), so what the book keeps is the config before this one.
#[derive(Debug)]
pub(crate) struct HealthGeneration {
    book: Arc<HealthBook>,
    metrics: Arc<Metrics>,
    health: HashMap<HealthKey, Arc<Health>>,
}

impl HealthGeneration {
    /// Time zero of the health clocks.
    pub(crate) fn epoch(&self) -> Instant {
        self.book.epoch
    }

    /// The health of `endpoint` of `upstream` at `origin`: the one it has had, when the
    /// config in force has it the same way; otherwise a new one, in.
    pub(crate) fn health(
        &mut self,
        upstream: &str,
        endpoint: &str,
        origin: &str,
        config: HealthConfig,
    ) -> Arc<Health> {
        let key = HealthKey {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
            origin: origin.to_owned(),
            config,
        };
        let health = self
            .book
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new(Health::new(config)));
        self.health.insert(key, health.clone());
        health
    }

    /// This generation is about to be in force (call it before any request can use
    /// it): its endpoints become the ones kept. An endpoint it replaces (moved,
    /// judged by other settings) or removes no longer shows on the gauge, though
    /// requests of the config before may still report to it; a removed one's series
    /// leaves `/metrics`; a new one shows as in.
    pub(crate) fn commit(self) {
        let mut kept = self
            .book
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let configured: HashSet<(&str, &str)> = self
            .health
            .keys()
            .map(|key| (key.upstream.as_str(), key.endpoint.as_str()))
            .collect();
        for (key, health) in kept.iter() {
            if self.health.contains_key(key) {
                continue;
            }
            health.attach(None);
            if !configured.contains(&(key.upstream.as_str(), key.endpoint.as_str())) {
                self.metrics
                    .traffic()
                    .forget_endpoint(&key.upstream, &key.endpoint);
            }
        }
        for (key, health) in &self.health {
            if !kept.contains_key(key) {
                health.attach(Some(
                    self.metrics
                        .traffic()
                        .endpoint_healthy(&key.upstream, &key.endpoint),
                ));
            }
        }
        *kept = self.health;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let config = HealthConfig {
            failures: 2,
            cooldown: Duration::from_secs(10),
        };
        let health = Health::new(config);
        health.attach(Some(IntGauge::new("g", "g").unwrap()));
        health
    }

    fn shown(health: &Health) -> i64 {
        health.gauge.lock().unwrap().as_ref().unwrap().get()
    }

    #[test]
    fn failures_in_a_row_take_it_out_and_one_trial_brings_it_back() {
        let health = health();
        assert!(!health.failure(1_000));
        health.success();
        assert!(
            !health.failure(1_000),
            "a success in between resets the count"
        );
        assert!(health.failure(1_000));
        assert_eq!(shown(&health), 0);
        assert!(!health.admits(5_000), "skipped during the cooldown");
        assert!(health.admits(11_000), "one trial after it");
        assert!(!health.admits(11_001), "and only one");
        health.success();
        assert_eq!(shown(&health), 1);
        assert!(health.admits(11_002) && health.admits(11_003));
    }

    #[test]
    fn a_failed_trial_starts_another_cooldown_and_a_lost_trial_is_given_up() {
        let health = health();
        health.failure(0);
        health.failure(0);
        assert!(health.admits(10_000));
        assert!(health.failure(10_000), "the trial failed: out again");
        assert!(!health.admits(15_000));
        assert!(health.admits(20_000), "the next trial");
        // That trial never reports; a cooldown later another one may go.
        assert!(!health.admits(25_000));
        assert!(health.admits(30_000));
    }

    #[test]
    fn retry_after_skips_without_counting_a_failure() {
        let health = health();
        health.busy(0, Duration::from_secs(2));
        assert!(!health.admits(1_999));
        assert!(health.admits(2_000));
        assert_eq!(shown(&health), 1);
    }

    fn config(failures: u32) -> HealthConfig {
        HealthConfig {
            failures,
            cooldown: Duration::from_secs(60),
        }
    }

    fn book() -> (Arc<HealthBook>, Arc<Metrics>) {
        (Arc::new(HealthBook::default()), Arc::new(Metrics::new()))
    }

    /// `sse_gateway_upstream_endpoint_healthy` of `up`/`endpoint` in `/metrics`.
    fn gauge(metrics: &Metrics, endpoint: &str) -> Option<String> {
        let series = format!(
            "sse_gateway_upstream_endpoint_healthy{{endpoint=\"{endpoint}\",upstream=\"up\"}} "
        );
        metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()).map(str::to_owned))
    }

    #[test]
    fn an_unchanged_endpoint_keeps_its_health_across_generations() {
        let (book, metrics) = book();
        let mut first = book.generation(&metrics);
        let a = first.health("up", "a", "http://a:80", config(1));
        first.commit();
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("1"));
        assert!(a.failure(1_000), "one failure takes it out");

        let mut second = book.generation(&metrics);
        let again = second.health("up", "a", "http://a:80", config(1));
        second.commit();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!again.admits(2_000), "still out after the reload");
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("0"));
    }

    #[test]
    fn a_moved_or_rejudged_endpoint_starts_afresh_and_a_removed_one_leaves_metrics() {
        let (book, metrics) = book();
        let mut first = book.generation(&metrics);
        let a = first.health("up", "a", "http://a:80", config(1));
        let b = first.health("up", "b", "http://b:80", config(1));
        first.commit();
        a.failure(0);
        b.failure(0);

        let mut second = book.generation(&metrics);
        let moved = second.health("up", "a", "http://a2:80", config(1));
        let rejudged = second.health("up", "b", "http://b:80", config(3));
        second.commit();
        assert!(moved.admits(1) && rejudged.admits(1));
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("1"));
        assert_eq!(gauge(&metrics, "b").as_deref(), Some("1"));

        let mut third = book.generation(&metrics);
        third.health("up", "b", "http://b:80", config(3));
        third.commit();
        assert_eq!(gauge(&metrics, "a"), None, "a is no longer configured");
        assert_eq!(gauge(&metrics, "b").as_deref(), Some("1"));
    }

    #[test]
    fn a_generation_that_is_never_committed_changes_nothing() {
        let (book, metrics) = book();
        let mut first = book.generation(&metrics);
        let a = first.health("up", "a", "http://a:80", config(1));
        first.commit();
        a.failure(0);

        // A reload that moves a and adds c, then fails to build: a stays out, and says
        // so, and c never shows.
        let mut failed = book.generation(&metrics);
        failed.health("up", "a", "http://elsewhere:80", config(1));
        failed.health("up", "c", "http://c:80", config(1));
        drop(failed);
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("0"));
        assert_eq!(gauge(&metrics, "c"), None);
        let mut next = book.generation(&metrics);
        assert!(Arc::ptr_eq(
            &a,
            &next.health("up", "a", "http://a:80", config(1))
        ));
    }

    #[test]
    fn a_replaced_endpoint_no_longer_speaks_for_its_successor() {
        let (book, metrics) = book();
        let mut first = book.generation(&metrics);
        let old = first.health("up", "a", "http://dying:80", config(1));
        first.commit();

        let mut second = book.generation(&metrics);
        let new = second.health("up", "a", "http://a:80", config(1));
        second.commit();
        // A request of the config before fails late, on the old address.
        assert!(old.failure(0));
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("1"));
        assert!(new.failure(0));
        assert_eq!(gauge(&metrics, "a").as_deref(), Some("0"));
    }
}
