//! A one-shot signal a connection's watch waits on: the drain, or an eviction.
//!
//! A connection's task is woken for every event its streams send, and every wake
//! polls everything the task waits on. A `CancellationToken` locks its node on each
//! poll, and the drain's token is one node shared by every connection of the
//! listener, so a wait on it cost two lock round trips per event, on a mutex every
//! worker thread takes. [`Fired`] registers its waker once, at its first poll, and
//! from then on a poll is one atomic load; the signal wakes it through [`Notify`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Fired once, seen by every waiter, before or after it began to wait.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub(crate) fn fire(&self) {
        // The flag first: a waiter created after the notification sees it.
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once the signal is fired. Meant to be polled by one task: the waker
    /// it registers at its first poll is the one woken (a task's waker never changes).
    pub(crate) fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            notified: self.notify.notified(),
            registered: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::fired`].
    pub(crate) struct Fired<'a> {
        signal: &'a Signal,
        // Created with the future: a `notify_waiters` after this counts for it even
        // before its first poll.
        #[pin]
        notified: Notified<'a>,
        registered: bool,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        if !*this.registered {
            *this.registered = true;
            if this.notified.poll(cx).is_ready() || this.signal.is_fired() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_fired_and_a_later_one_resolves_at_once() {
        let signal = Arc::new(Signal::default());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.fired().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(signal.is_fired());
        tokio::time::timeout(Duration::from_secs(5), signal.fired())
            .await
            .expect("already fired");
    }

    #[tokio::test]
    async fn a_fire_between_creation_and_first_poll_is_not_lost() {
        let signal = Signal::default();
        let fired = signal.fired();
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("seen");
    }
}
