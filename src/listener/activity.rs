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
//!
//! The wrapped response body also answers hyper's repeated asks. On HTTP/1, hyper's
//! write loop polls the body again after every frame, and once more after the flush
//! that follows ("can it write again?"): three polls per event, the last two
//! `Pending`. A body's `Pending` already stands for the rest of the connection's
//! poll (the body has registered the task's waker for what it waits on), so the
//! third goes down the whole stack (supervision, engine, upstream socket) to learn
//! nothing. The connection counts its polls; a body that said `Pending` in this
//! poll says it again without asking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::sync::futures::Notified;

use super::stall::Stall;
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
    /// How many times the connection has been polled, counted only where the
    /// response bodies are polled inside the connection's poll (HTTP/1; h2 polls each
    /// stream's body on a task of its own). 0: not counted.
    polls: AtomicU64,
    /// Someone asked for the connection to be closed ([`ClientConnection::close`]).
    close_asked: AtomicBool,
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

    /// Counts one poll of the connection; called before the connection is polled.
    pub(super) fn polled(&self) {
        // Only the connection's task writes it: a load and a store, no locked add.
        let polls = self.polls.load(Ordering::Relaxed);
        self.polls
            .store(polls.wrapping_add(1).max(1), Ordering::Relaxed);
    }

    /// The current poll of the connection, or 0 where polls are not counted.
    fn poll_count(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Whether [`ClientConnection::close`] was called: the watch closes the connection.
    pub(super) fn is_close_asked(&self) -> bool {
        self.close_asked.load(Ordering::Acquire)
    }
}

/// The HTTP/1 connection a request came on, in the request's extensions: what lets a
/// resume close the connection a stream's first client hangs on (a phone that lost its
/// network sends no FIN), so that the stream is read on without it. h2 requests carry
/// none: closing their connection would cut every other stream on it.
#[derive(Debug, Clone)]
pub(crate) struct ClientConnection(Arc<Activity>);

impl ClientConnection {
    /// Closes the connection at once, whatever it is doing; its response body is
    /// dropped as when the client leaves.
    pub(crate) fn close(&self) {
        self.0.close_asked.store(true, Ordering::Release);
        self.0.changed();
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

impl Busy {
    fn activity(&self) -> &Activity {
        &(self.0 .0).0
    }

    fn activity_handle(&self) -> Arc<Activity> {
        (self.0 .0).0.clone()
    }
}

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
    /// Whether requests carry their [`ClientConnection`] (HTTP/1).
    pub(super) closable: bool,
    /// h2: a response body not polled for this long after it was woken closes the
    /// connection ([`Stall`]).
    pub(super) stall_after: Option<std::time::Duration>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        // Counted before the service runs: a request waiting for its upstream is busy.
        let busy = self.activity.request();
        if self.closable {
            let activity = busy.activity_handle();
            request.extensions_mut().insert(ClientConnection(activity));
        }
        TrackedFuture {
            inner: self.inner.call(request),
            busy: Some(busy),
            stall_after: self.stall_after,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; hands the request's count on to the response body.
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
        stall_after: Option<std::time::Duration>,
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
        let stall_after = *this.stall_after;
        Poll::Ready(result.map(|response| {
            // Watched from when hyper has the body, which it is to poll at once.
            let stall = stall_after.zip(busy.as_ref()).map(|(limit, busy)| {
                StallGuard(Stall::watch(
                    ClientConnection(busy.activity_handle()),
                    limit,
                ))
            });
            response.map(|inner| TrackedBody {
                inner,
                busy,
                pending_in: 0,
                stall,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until hyper drops it, and
    /// says `Pending` again, without asking, in a connection poll where it said so.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
        // The connection poll in which `inner` last said `Pending`; 0: none.
        pending_in: u64,
        // h2 only: the wait of a woken body to be polled.
        stall: Option<StallGuard>,
    }
}

/// Ends a [`Stall`] watch when its body goes.
#[derive(Debug)]
struct StallGuard(Arc<Stall>);

impl Drop for StallGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let poll = this
            .busy
            .as_ref()
            .map_or(0, |busy| busy.activity().poll_count());
        if poll != 0 && *this.pending_in == poll {
            return Poll::Pending;
        }
        if let Some(StallGuard(stall)) = this.stall {
            let waker = stall.polled(cx);
            let frame = this.inner.poll_frame(&mut Context::from_waker(&waker));
            if matches!(frame, Poll::Ready(Some(_))) {
                // hyper asks for the next frame as soon as it has window for it.
                stall.wait();
            }
            return frame;
        }
        let frame = this.inner.poll_frame(cx);
        if frame.is_pending() {
            *this.pending_in = poll;
        }
        frame
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
    use std::task::Waker;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// A body that says `Pending` until `ready` is set, counting how often it is asked.
    #[derive(Default)]
    struct Asked {
        asks: usize,
        ready: bool,
    }

    impl Body for Asked {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.asks += 1;
            if self.ready {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: x\n\n")))))
            } else {
                Poll::Pending
            }
        }
    }

    fn tracked(counter: &Counter) -> Pin<Box<TrackedBody<Asked>>> {
        Box::pin(TrackedBody {
            inner: Asked::default(),
            busy: Some(counter.request()),
            pending_in: 0,
            stall: None,
        })
    }

    #[test]
    fn a_body_that_said_pending_is_not_asked_again_in_the_same_connection_poll() {
        let (activity, counter) = Activity::new();
        let mut body = tracked(&counter);
        let mut cx = Context::from_waker(Waker::noop());

        activity.polled();
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert_eq!(
            body.inner.asks, 1,
            "the second ask in one poll is answered here"
        );

        // The next poll of the connection asks it again, and gets what it has.
        activity.polled();
        body.as_mut().project().inner.ready = true;
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(
            body.inner.asks, 3,
            "a body that gave a frame is always asked"
        );
    }

    #[test]
    fn where_polls_are_not_counted_every_ask_reaches_the_body() {
        // h2: each stream's body is polled on a task of its own, so the connection's
        // polls say nothing about the body's.
        let (_activity, counter) = Activity::new();
        let mut body = tracked(&counter);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        }
        assert_eq!(body.inner.asks, 3);
    }

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
