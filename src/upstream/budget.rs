//! The retry budget of a route: retries may be at most a fifth of the route's requests
//! over the last ten seconds, plus a few, so a quiet route can still retry. When every
//! endpoint fails, retries would multiply the load on an upstream already down; the
//! budget caps them at a fifth more.
//!
//! Ten one-second buckets behind a mutex taken once per request and once per retry,
//! never per event.

use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

/// Retries may be this share of the requests in the window.
pub(crate) const RATIO_PERCENT: u64 = 20;
/// Seconds in the window.
pub(crate) const WINDOW_SECS: usize = 10;
/// Retries always allowed in a window, whatever the ratio.
pub(crate) const MIN_RETRIES: u64 = 3;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    epoch: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECS]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The second this bucket counts; stale buckets count nothing.
    second: u64,
    requests: u64,
    retries: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            epoch: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS]),
        }
    }
}

impl RetryBudget {
    fn second(&self) -> u64 {
        // Second 0 would look like an unused bucket: start at 1.
        self.epoch.elapsed().as_secs() + 1
    }

    /// Counts a request.
    pub(crate) fn request(&self) {
        self.request_at(self.second());
    }

    /// Takes a retry from the budget; false when it is spent.
    pub(crate) fn try_retry(&self) -> bool {
        self.try_retry_at(self.second())
    }

    fn request_at(&self, second: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        current(&mut buckets, second).requests += 1;
    }

    fn try_retry_at(&self, second: u64) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let window = second.saturating_sub(WINDOW_SECS as u64);
        let (requests, retries) = buckets
            .iter()
            .filter(|b| b.second > window && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
        let allowed = (requests * RATIO_PERCENT / 100).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        current(&mut buckets, second).retries += 1;
        true
    }
}

fn current(buckets: &mut [Bucket; WINDOW_SECS], second: u64) -> &mut Bucket {
    let bucket = &mut buckets[usize::try_from(second).unwrap_or(0) % WINDOW_SECS];
    if bucket.second != second {
        *bucket = Bucket {
            second,
            ..Bucket::default()
        };
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_are_a_fifth_of_the_requests_over_the_window_plus_a_few() {
        let budget = RetryBudget::default();
        for _ in 0..50 {
            budget.request_at(5);
        }
        let granted = (0..100).filter(|_| budget.try_retry_at(5)).count();
        assert_eq!(granted, 10, "20 % of 50");
        // Ten seconds later the window has moved on: a quiet route gets its few.
        let granted = (0..100).filter(|_| budget.try_retry_at(16)).count();
        assert_eq!(granted as u64, MIN_RETRIES);
    }
}
