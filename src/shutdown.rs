//! Shutdown: the drain sequence, and the signal that tells open responses the drain
//! time is over.
//!
//! Once the listener has stopped accepting, `drain` asks every connection to close
//! after what it has in flight, gives open responses `drain_timeout`, then fires
//! [`Shutdown`] (which every open response watches), gives them a moment to write
//! their last frames, and waits for the final metrics scrape. Everything after the
//! drain time fits in [`AFTER_DRAIN`], so the process's stop time is known in advance:
//! `drain_timeout` plus [`AFTER_DRAIN`] at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::admin::AdminState;
use crate::listener::Connections;

/// Once the drain time is over and open responses were told to end, how long they
/// get to write their last frames before the gateway stops anyway.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// The most a stop takes after `drain_timeout`: the flush above, then the wait for a
/// final metrics scrape that carries the drain's outcomes (only when something
/// scrapes this gateway). The Kubernetes example's grace period leaves this much room.
pub const AFTER_DRAIN: Duration = Duration::from_secs(10);

/// Drains the public connections, then waits for the final scrape. The listener has
/// stopped accepting already.
pub(crate) async fn drain(
    connections: &Connections,
    drain: Duration,
    signal: &Shutdown,
    admin: &AdminState,
) {
    connections.start_draining();
    tracing::info!(drain = ?drain, "draining: no new connections; open streams may finish");
    // Idle keep-alive connections close now; busy ones after their response.
    let mut deadline = Instant::now() + AFTER_DRAIN;
    if tokio::time::timeout(drain, connections.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("drain time over: ending the remaining responses");
        deadline = Instant::now() + AFTER_DRAIN;
        signal.fire();
        if tokio::time::timeout(SHUTDOWN_FLUSH, connections.all_closed())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain; closing them");
        }
    }
    admin
        .final_scrape(deadline.saturating_duration_since(Instant::now()))
        .await;
}

/// The gateway's "drain time is over" signal, as every stream watches it.
///
/// A stream checks it each time its upstream has nothing to read, so once per event on a
/// paced stream: an atomic flag makes that check free, where a `CancellationToken` takes a
/// lock. The token is still there to wake streams that are waiting; each registers its
/// waker once, not on every wait.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug, Default)]
struct ShutdownInner {
    fired: AtomicBool,
    wake: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Ends every supervised stream at its next event boundary.
    pub fn fire(&self) {
        self.inner.fired.store(true, Ordering::Release);
        self.inner.wake.cancel();
    }

    pub(crate) fn has_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal has fired.
    pub(crate) fn fired(&self) -> WaitForCancellationFutureOwned {
        self.inner.wake.clone().cancelled_owned()
    }
}
