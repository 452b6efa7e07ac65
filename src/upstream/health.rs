//! Passive health of one endpoint, learned from the requests it serves: after
//! `health.failures` failures in a row it is skipped for `health.cooldown`, then one
//! request tries it (the trial); a success brings it back, a failure starts another
//! cooldown. An upstream's `429` with `Retry-After` skips the endpoint for that long
//! without counting as a failure: it is busy, not broken.
//!
//! Atomics only, touched once per attempt (never per event). Times are milliseconds
//! since the upstream was built, so they fit an `AtomicU64`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;

use crate::config::HealthConfig;

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
    /// `upstream_endpoint_healthy`.
    gauge: IntGauge,
}

impl Health {
    pub(crate) fn new(config: HealthConfig, gauge: IntGauge) -> Health {
        gauge.set(1);
        Health {
            config,
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            trial_at: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            gauge,
        }
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
            self.gauge.set(1);
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
            self.gauge.set(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let config = HealthConfig {
            failures: 2,
            cooldown: Duration::from_secs(10),
        };
        Health::new(config, IntGauge::new("g", "g").unwrap())
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
        assert_eq!(health.gauge.get(), 0);
        assert!(!health.admits(5_000), "skipped during the cooldown");
        assert!(health.admits(11_000), "one trial after it");
        assert!(!health.admits(11_001), "and only one");
        health.success();
        assert_eq!(health.gauge.get(), 1);
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
        assert_eq!(health.gauge.get(), 1);
    }
}
