//! The client's request body on its way upstream, with its failures marked as the
//! client's.
//!
//! hyper reports a request body that fails (bad chunked encoding, a body shorter than
//! its `Content-Length`, one over the route's limit) as a failure of the upstream
//! exchange. Wrapping the body puts a [`ClientBodyError`] in that error's chain, so the
//! gateway answers 400, 408 or 413 and counts a client error instead of blaming the
//! upstream. The wrapper also ends a body that stops arriving for the route's
//! `body_timeout`, and tells the caller whether the body is waiting on the client, so
//! a `header_timeout` that passes while the client is still sending is the client's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::{sleep_until, Instant, Sleep};

use super::error::{deepest_cause, BoxError, ClientErrorKind};

/// Why the client's body could not be sent on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    #[error("the request body is larger than the route allows")]
    TooLarge,
    #[error("the request body is malformed: {}", deepest_cause(&**.0))]
    Malformed(#[source] BoxError),
    #[error("the request body stalled: nothing arrived for {0:?}")]
    Stalled(Duration),
    #[error(
        "the request body was still arriving when the upstream's header_timeout of {0:?} passed"
    )]
    Unfinished(Duration),
}

impl ClientBodyError {
    pub(crate) fn kind(&self) -> ClientErrorKind {
        match self {
            ClientBodyError::TooLarge => ClientErrorKind::BodyTooLarge,
            ClientBodyError::Malformed(_) => ClientErrorKind::BadBody,
            ClientBodyError::Stalled(_) | ClientBodyError::Unfinished(_) => {
                ClientErrorKind::BodyTimeout
            }
        }
    }
}

/// Whether the body is waiting for the client right now; shared with the sender.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyProgress(Arc<AtomicBool>);

impl BodyProgress {
    /// True while the last read of the body found nothing from the client, and the
    /// body is not finished.
    pub(crate) fn waiting_for_client(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set_waiting(&self, waiting: bool) {
        self.0.store(waiting, Ordering::Relaxed);
    }
}

/// The client's body, within the route's size limit and `body_timeout`.
#[derive(Debug)]
pub(crate) struct ClientBody {
    inner: Limited<Incoming>,
    /// `Duration::ZERO`: no limit.
    timeout: Duration,
    /// Armed when a read finds nothing, from then on: time spent waiting on the
    /// client, not time the upstream took to accept what was sent. Kept across waits,
    /// so a slow body allocates its timer once.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
    progress: BodyProgress,
}

impl ClientBody {
    pub(crate) fn new(body: Incoming, limit: usize, timeout: Duration) -> ClientBody {
        ClientBody {
            inner: Limited::new(body, limit),
            timeout,
            stall: None,
            armed: false,
            progress: BodyProgress::default(),
        }
    }

    pub(crate) fn progress(&self) -> BodyProgress {
        self.progress.clone()
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match self.stall.as_mut() {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.stall
            .as_mut()
            .is_some_and(|stall| stall.as_mut().poll(cx).is_ready())
    }

    fn progressed(&mut self) {
        self.progress.set_waiting(false);
        self.armed = false;
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.progressed();
                let error = if error.is::<LengthLimitError>() {
                    ClientBodyError::TooLarge
                } else {
                    ClientBodyError::Malformed(error)
                };
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.progressed();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.progress.set_waiting(true);
                if this.stalled(cx) {
                    this.progressed();
                    return Poll::Ready(Some(Err(ClientBodyError::Stalled(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
