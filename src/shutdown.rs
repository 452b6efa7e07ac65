//! Shutdown: the drain sequence, and the signal that tells open responses the drain
//! time is over.
//!
//! Once the listener has stopped accepting, `drain` asks every connection to close
//! after what it has in flight, gives open responses `drain_timeout`, then fires
//! `Shutdown` (which every open response watches), gives them a moment to write
//! their last frames, and waits for the final metrics scrape where one helps.
//! Everything after the drain time fits in [`after_drain`], so the process's stop time
//! is known in advance: `drain_timeout` plus [`after_drain`] at most. A [`StopNow`]
//! (the operator's second Ctrl-C) ends the drain time at once and skips the wait for a
//! scrape: streams still get their closing frames, at the next event boundary.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::changes::{Changes, OwnedChange};
use crate::listener::Connections;

/// Once the drain time is over and open responses were told to end, how long they
/// get to write their last frames before the gateway stops anyway.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// A final scrape is waited for only when `/metrics` was served this recently: a
/// Prometheus scraping at any usual interval (up to 1m) qualifies; a laptop run that
/// someone scraped once an hour ago does not.
pub(crate) const RECENT_SCRAPE: Duration = Duration::from_secs(60);

/// The most a stop takes after `drain_timeout`: the flush of the ended responses, and
/// the wait for a final metrics scrape (`shutdown.final_scrape_wait`) counted from the
/// same moment. The Kubernetes example's grace period leaves this much room.
pub fn after_drain(final_scrape_wait: Duration) -> Duration {
    final_scrape_wait.max(SHUTDOWN_FLUSH)
}

/// How a stop goes: the drain time, the longest wait for a final scrape, and the
/// operator's "stop now".
#[derive(Clone, Debug)]
pub struct DrainPlan {
    /// How long open responses may run before they are ended (`drain_timeout`).
    pub drain: Duration,
    /// The longest wait for a final scrape after the drain; `0` never waits.
    pub final_scrape_wait: Duration,
    /// Fired by a second SIGINT or SIGTERM: end the drain time now.
    pub stop_now: StopNow,
}

/// How long the last steps of a stop may take from the moment they start: the wait
/// for a final scrape (`shutdown.final_scrape_wait`), and the export of the last
/// trace spans (the rest of [`after_drain`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastSteps {
    pub scrape: Duration,
    pub flush: Duration,
}

/// Drains the public connections, then takes the last steps: the final scrape where it
/// helps, the last spans' export (`last_steps`, handed in by the composition root).
/// The listener has stopped accepting already.
pub(crate) async fn drain<F: Future<Output = ()>>(
    connections: &Connections,
    plan: &DrainPlan,
    signal: &Shutdown,
    last_steps: impl FnOnce(LastSteps) -> F,
) {
    connections.start_draining();
    tracing::info!(
        drain = ?plan.drain,
        "draining: no new connections; open streams may finish; press Ctrl-C again (or send SIGTERM again) to stop now"
    );
    // Idle keep-alive connections close now; busy ones after their response. Streams
    // read on without a client get the same time (followers on other replicas may
    // read them through Redis).
    let all_ended = || async {
        connections.all_closed().await;
        signal.no_detached().await;
    };
    let drained = tokio::select! {
        ended = tokio::time::timeout(plan.drain, all_ended()) => ended.is_ok(),
        () = plan.stop_now.requested() => false,
    };
    let drain_over = Instant::now();
    let scrape_deadline = drain_over + plan.final_scrape_wait;
    let flush_deadline = drain_over + after_drain(plan.final_scrape_wait);
    if !drained {
        if plan.stop_now.is_requested() {
            tracing::warn!("stopping now: ending the remaining responses");
        } else {
            tracing::warn!("drain time over: ending the remaining responses");
        }
        signal.fire();
        if tokio::time::timeout(SHUTDOWN_FLUSH, all_ended())
            .await
            .is_err()
        {
            tracing::warn!("connections or streams still open after the drain; closing them");
        }
    }
    // A zero drain time asks for an immediate stop; so does a second signal.
    if plan.drain.is_zero() || plan.stop_now.is_requested() {
        return;
    }
    let now = Instant::now();
    let limits = LastSteps {
        scrape: scrape_deadline.saturating_duration_since(now),
        flush: flush_deadline.saturating_duration_since(now),
    };
    tokio::select! {
        () = last_steps(limits) => {}
        () = plan.stop_now.requested() => {}
    }
}

/// The operator's "stop now" during a drain (a second SIGINT or SIGTERM): cheap to
/// clone, fired once.
#[derive(Clone, Debug, Default)]
pub struct StopNow(CancellationToken);

impl StopNow {
    pub fn new() -> StopNow {
        StopNow::default()
    }

    /// Ends the drain time at once.
    pub fn request(&self) {
        self.0.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once [`StopNow::request`] was called.
    pub async fn requested(&self) {
        self.0.cancelled().await;
    }
}

/// The gateway's "drain time is over" signal, as every stream watches it.
///
/// A stream looks at it before each upstream read and polls it each time its upstream
/// has nothing to read, so once or twice per event: [`Shutdown::has_fired`] and a
/// [`Change`](crate::changes::Change) make each one atomic load, where a
/// `CancellationToken` takes a lock.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    changes: Arc<Changes>,
    /// Streams read on with no connection of their own ([`Shutdown::detached`]): the
    /// drain waits for them as for connections.
    detached: Arc<watch::Sender<usize>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown {
            changes: Arc::default(),
            detached: Arc::new(watch::channel(0).0),
        }
    }
}

/// A response body's watch on the drain deadline, for bodies that no supervised
/// stream ends (a passed-through body, a resume followed from Redis): one atomic load
/// per poll, and the task's waker registered once, on the first quiet poll.
#[derive(Debug)]
pub(crate) struct DrainWatch {
    signal: Shutdown,
    wake: Option<Pin<Box<OwnedChange>>>,
}

impl DrainWatch {
    pub(crate) fn new(signal: Shutdown) -> DrainWatch {
        DrainWatch { signal, wake: None }
    }

    /// Whether the drain time is over; registers no waker.
    pub(crate) fn is_over(&self) -> bool {
        self.signal.has_fired()
    }

    /// The same, for a body whose source has nothing now: the task is woken when the
    /// drain time ends.
    pub(crate) fn poll_over(&mut self, cx: &mut Context<'_>) -> bool {
        if self.signal.has_fired() {
            return true;
        }
        let signal = &self.signal;
        let wake = self.wake.get_or_insert_with(|| Box::pin(signal.fired()));
        wake.as_mut().poll(cx).is_ready()
    }
}

/// A stream the drain waits for though no connection carries it (a resumable stream
/// read on after its client left); dropping it says the stream ended.
#[derive(Debug)]
pub(crate) struct Detached(Arc<watch::Sender<usize>>);

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Counts a stream with no connection until the returned guard is dropped. Without
    /// it a drain with no connection left would be over at once, and the process would
    /// drop the stream unrecorded: no `shutdown` ending, no end entry for followers on
    /// other replicas, a stream still active in the last scrape.
    pub(crate) fn detached(&self) -> Detached {
        self.detached.send_modify(|n| *n += 1);
        Detached(self.detached.clone())
    }

    /// Resolves once no stream without a connection runs.
    async fn no_detached(&self) {
        let mut detached = self.detached.subscribe();
        let _ = detached.wait_for(|n| *n == 0).await;
    }

    /// Ends every supervised stream at its next event boundary.
    pub(crate) fn fire(&self) {
        self.changes.bump();
    }

    pub(crate) fn has_fired(&self) -> bool {
        self.changes.count() > 0
    }

    /// A future that resolves once the signal has fired.
    pub(crate) fn fired(&self) -> OwnedChange {
        self.changes.after_owned(0)
    }
}
