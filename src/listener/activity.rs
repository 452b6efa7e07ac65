//! Whether a connection has a request in flight, as its deadlines need to know.
//!
//! hyper does not say when a connection is idle, so the service handed to it is
//! wrapped: a request counts from the moment its head is complete (hyper calls the
//! service) until its response body is dropped (written out, or the client left). The
//! count lives in a `watch` channel, which wakes the connection's driver on each
//! change; that is one notification per request, never per frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::sync::watch;

/// Requests in flight on one connection.
pub(super) type Activity = Arc<watch::Sender<usize>>;

/// One request in flight; dropping it ends the request.
#[derive(Debug)]
struct Busy(Activity);

impl Busy {
    fn new(activity: &Activity) -> Busy {
        activity.send_modify(|n| *n += 1);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A service whose requests are counted in `activity`.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Activity,
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
        let busy = Busy::new(&self.activity);
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
