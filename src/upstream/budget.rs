//! The retry budget of a route: retries may be at most a fifth of the route's requests
//! over the last ten seconds, plus a few, so a quiet route can still retry. When every
//! endpoint fails, retries would multiply the load on an upstream already down; the
//! budget caps them at a fifth more.
//!
//! Ten one-second buckets behind a mutex taken once per request and once per retry,
//! never per event.
//!
//! A reload builds every route anew, but what a route's retries have spent is not part
//! of the config: [`RetryBudgets`] hands a route that keeps its name, its upstream and
//! its `retry` the budget it had, so a reload in the middle of an outage (an
//! operator's SIGHUP, a sync that changes another route) does not hand out another
//! round of retries. A route a reload adds or changes in any of those starts afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::RetryConfig;

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

/// A route's budget and what it was kept for.
#[derive(Debug)]
struct Kept {
    upstream: String,
    retry: RetryConfig,
    budget: Arc<RetryBudget>,
}

/// The retry budgets of the routes in force, by route name, kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct RetryBudgets {
    kept: Mutex<HashMap<String, Kept>>,
}

impl RetryBudgets {
    /// Collects the budgets of the routes of a config being built.
    pub(crate) fn generation(self: &Arc<Self>) -> BudgetGeneration {
        BudgetGeneration {
            book: self.clone(),
            budgets: HashMap::new(),
        }
    }
}

/// The budgets of one config as it is built; [`BudgetGeneration::commit`] once it
/// comes into force. A config that fails to build is dropped uncommitted and changes
/// nothing. Configs are built and committed one at a time (`Gateway::apply`), so what
/// the book keeps is the config before this one.
#[derive(Debug)]
pub(crate) struct BudgetGeneration {
    book: Arc<RetryBudgets>,
    budgets: HashMap<String, Kept>,
}

impl BudgetGeneration {
    /// The budget of `route`, which retries as `retry` on `upstream`: the one it has
    /// had when the config in force has the route the same way, otherwise a new one.
    pub(crate) fn budget(
        &mut self,
        route: &str,
        upstream: &str,
        retry: &RetryConfig,
    ) -> Arc<RetryBudget> {
        let kept = self
            .book
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .filter(|kept| kept.upstream == upstream && kept.retry == *retry)
            .map(|kept| kept.budget.clone());
        let budget = kept.unwrap_or_default();
        let kept = Kept {
            upstream: upstream.to_owned(),
            retry: retry.clone(),
            budget: budget.clone(),
        };
        self.budgets.insert(route.to_owned(), kept);
        budget
    }

    /// This generation is in force: its budgets become the ones kept.
    pub(crate) fn commit(self) {
        *self
            .book
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.budgets;
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

    #[test]
    fn a_route_left_as_it_was_keeps_its_budget_and_a_changed_one_starts_afresh() {
        let retry = RetryConfig {
            attempts: 2,
            on: crate::config::RetryOn::default(),
            max_body: 1024,
        };
        let book = Arc::new(RetryBudgets::default());
        let mut first = book.generation();
        let budget = first.budget("chat", "assistant", &retry);
        first.commit();

        let mut next = book.generation();
        assert!(Arc::ptr_eq(
            &budget,
            &next.budget("chat", "assistant", &retry)
        ));
        let elsewhere = next.budget("chat", "other", &retry);
        assert!(!Arc::ptr_eq(&budget, &elsewhere), "another upstream");
        let more = RetryConfig {
            attempts: 3,
            ..retry.clone()
        };
        assert!(!Arc::ptr_eq(
            &budget,
            &next.budget("chat", "assistant", &more)
        ));
        // Never committed: the config in force still has the route as it was.
        drop(next);
        let mut after_a_refused_config = book.generation();
        assert!(Arc::ptr_eq(
            &budget,
            &after_a_refused_config.budget("chat", "assistant", &retry)
        ));
    }
}
