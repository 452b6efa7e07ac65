//! Shutdown: the signal that tells open streams the drain time is over.
//!
//! The drain itself (stop accepting, let streams finish, then fire this signal) is
//! run by the accept loop; this is what every supervised stream watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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
