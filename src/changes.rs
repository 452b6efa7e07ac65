//! A count of changes that tasks wait past, polled on every wake of their task.
//!
//! A connection's task, and the body of each stream it serves, is woken for every
//! event sent, and every wake polls everything the task waits on: the listener's
//! drain, an eviction, the connection's count of requests in flight, the gateway's
//! shutdown. A `CancellationToken` or a `watch` channel takes a lock on every such
//! poll, and the drain's and the shutdown's are shared by every connection, on a mutex
//! every worker thread takes. A [`Change`] registers its task's waker once, again only
//! if the task's waker changes, and from then on a poll is one atomic load; a change
//! wakes it through [`Notify`].

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::{Notified, OwnedNotified};
use tokio::sync::Notify;

/// How many changes there have been; waiters wake at each.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    count: AtomicU64,
    notify: Arc<Notify>,
}

impl Changes {
    /// How many changes there have been: what [`Changes::after`] waits past.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// One change more; wakes every waiter.
    pub(crate) fn bump(&self) {
        // The count first: a waiter created after the notification sees it.
        self.count.fetch_add(1, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Resolves once there has been a change after the `seen`th; `seen` is a value
    /// read from [`Changes::count`].
    pub(crate) fn after(&self, seen: u64) -> Change<&Changes, Notified<'_>> {
        Change {
            notified: self.notify.notified(),
            changes: self,
            seen,
            registered: None,
        }
    }

    /// [`Changes::after`], for a future that must own what it waits on.
    pub(crate) fn after_owned(self: &Arc<Self>, seen: u64) -> OwnedChange {
        Change {
            notified: self.notify.clone().notified_owned(),
            changes: self.clone(),
            seen,
            registered: None,
        }
    }
}

/// The future of [`Changes::after_owned`].
pub(crate) type OwnedChange = Change<Arc<Changes>, OwnedNotified>;

pin_project_lite::pin_project! {
    /// The future of [`Changes::after`] and [`Changes::after_owned`].
    #[derive(Debug)]
    pub(crate) struct Change<C, N> {
        changes: C,
        // Created with the future: a change after this is seen by its first poll.
        #[pin]
        notified: N,
        seen: u64,
        // The waker the notification wakes; polled again only for another task.
        registered: Option<Waker>,
    }
}

impl<C, N> Future for Change<C, N>
where
    C: Deref<Target = Changes>,
    N: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.changes.count() != *this.seen {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() || this.changes.count() != *this.seen {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counting {
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_waiter_polled_by_another_task_wakes_that_task() {
        let changes = Changes::default();
        let mut change = std::pin::pin!(changes.after(changes.count()));
        let first = Arc::new(Counting::default());
        let second = Arc::new(Counting::default());
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        for _ in 0..3 {
            let mut cx = Context::from_waker(&first_waker);
            assert!(change.as_mut().poll(&mut cx).is_pending());
        }
        let mut cx = Context::from_waker(&second_waker);
        assert!(change.as_mut().poll(&mut cx).is_pending());
        changes.bump();
        assert_eq!(second.wakes(), 1, "the task that polled last is woken");
        assert_eq!(first.wakes(), 0, "the task that moved on is not");
        assert!(change.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_waiter_polled_again_by_the_same_task_is_still_woken_by_the_next_change() {
        let changes = Changes::default();
        let mut change = std::pin::pin!(changes.after(changes.count()));
        let task = Arc::new(Counting::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // Spurious wakes of the task poll it again and again; the registration made by
        // the first poll must stand.
        for _ in 0..5 {
            assert!(change.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(task.wakes(), 0);
        changes.bump();
        assert_eq!(task.wakes(), 1, "the change wakes the task");
        assert!(change.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn an_owned_waiter_on_another_task_sees_a_change_made_before_its_first_poll() {
        let changes = Arc::new(Changes::default());
        let change = changes.after_owned(0);
        changes.bump();
        tokio::time::timeout(Duration::from_secs(5), tokio::spawn(change))
            .await
            .expect("seen")
            .unwrap();
        let waiting = tokio::spawn(changes.after_owned(changes.count()));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        changes.bump();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
