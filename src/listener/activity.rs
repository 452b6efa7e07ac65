//! Whether a connection has a request in flight, as its deadlines need to know.
//!
//! hyper does not say when a connection is idle, so the service handed to it is
//! wrapped: a request counts from the moment its head is complete (hyper calls the
//! service) until its response body is dropped (written out, or the client left).
//!
//! The connection's watch waits on the count beside the connection itself, so it is
//! polled on every wake of the task: once per event of a streaming response. A
//! `watch` channel took its `Notify`'s lock on each such poll; the wait is a
//! [`Change`], one atomic load per poll. The count changes once per request, never
//! per frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::sync::futures::Notified;

use crate::changes::{Change, Changes};

/// Requests in flight on one connection, as the connection's watch and the
/// listener's slots read it.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    busy: AtomicUsize,
    /// Counts every change of `busy`, and the end of the service.
    changes: Changes,
    /// The service and every request of it are gone: hyper is finishing the
    /// connection.
    ended: AtomicBool,
}

impl Activity {
    /// A new connection's activity, and the handle its service counts requests with.
    pub(super) fn new() -> (Arc<Activity>, Counter) {
        let activity = Arc::new(Activity::default());
        let counter = Counter(Arc::new(Ended(activity.clone())));
        (activity, counter)
    }

    /// Whether no request is in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Whether the service and its requests are gone.
    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// How many changes there have been: what [`Activity::change_after`] waits past.
    pub(super) fn changes(&self) -> u64 {
        self.changes.count()
    }

    /// Resolves once there has been a change after the `seen`th.
    pub(super) fn change_after(&self, seen: u64) -> Change<&Changes, Notified<'_>> {
        self.changes.after(seen)
    }

    fn changed(&self) {
        self.changes.bump();
    }
}

/// Marks the activity ended when the last [`Counter`] goes.
#[derive(Debug)]
struct Ended(Arc<Activity>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.changed();
    }
}

/// What the service and its requests count with; the activity ends with the last.
#[derive(Debug, Clone)]
pub(super) struct Counter(Arc<Ended>);

impl Counter {
    /// Counts a request until the returned guard is dropped.
    pub(super) fn request(&self) -> Busy {
        let activity = &(self.0).0;
        activity.busy.fetch_add(1, Ordering::AcqRel);
        activity.changed();
        Busy(self.clone())
    }
}

/// One request in flight; dropping it ends the request.
#[derive(Debug)]
pub(super) struct Busy(Counter);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &(self.0 .0).0;
        activity.busy.fetch_sub(1, Ordering::AcqRel);
        activity.changed();
    }
}

/// A service whose requests are counted in `activity`.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Counter,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // Counted before the service runs: a request waiting for its upstream is busy.
        let busy = self.activity.request();
        TrackedFuture {
            inner: self.inner.call(request),
            busy: Some(busy),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; hands the request's count on to the response body.
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(result.map(|response| response.map(|inner| TrackedBody { inner, busy })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until hyper drops it.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiting_watch_wakes_on_each_request_and_on_the_end() {
        let (activity, counter) = Activity::new();
        assert!(activity.is_idle());
        let seen = activity.changes();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.change_after(seen).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing changed yet");
        let request = counter.request();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the request")
            .unwrap();
        assert!(!activity.is_idle());

        let seen = activity.changes();
        drop(request);
        tokio::time::timeout(Duration::from_secs(5), activity.change_after(seen))
            .await
            .expect("a change before the wait is seen at once");
        assert!(activity.is_idle() && !activity.has_ended());

        let seen = activity.changes();
        let copy = counter.clone();
        drop(counter);
        assert!(!activity.has_ended(), "a counter is left");
        drop(copy);
        tokio::time::timeout(Duration::from_secs(5), activity.change_after(seen))
            .await
            .expect("the end is a change");
        assert!(activity.has_ended());
    }
}
