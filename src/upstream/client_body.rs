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
//!
//! A body let go before its end, after the upstream began to take it (the upstream
//! answered early and closed, or failed), is read on and dropped for a while
//! ([`linger`]), as NGINX's lingering close does: a client that sends its whole body
//! before it reads then gets the answer. A body closed with data unread would reset
//! the connection, and the reset can discard the answer before the client reads it.
//! Only on an HTTP/1.1 connection that stays open after the answer: there the answer's
//! framing tells the client where it ends. An answer ended by the connection's close
//! (HTTP/1.0, `Connection: close`) would wait for the lingering; over HTTP/2 hyper
//! ends the answered stream's upload itself (`RST_STREAM` with `NO_ERROR`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
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

/// How the client's body is doing, shared with the sender: whether it waits for the
/// client right now, and whether the sender refused the rest of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyProgress(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    waiting: AtomicBool,
    refused: AtomicBool,
}

impl BodyProgress {
    /// True while the last read of the body found nothing from the client, and the
    /// body is not finished.
    pub(crate) fn waiting_for_client(&self) -> bool {
        self.0.waiting.load(Ordering::Relaxed)
    }

    fn set_waiting(&self, waiting: bool) {
        self.0.waiting.store(waiting, Ordering::Relaxed);
    }

    /// The client is answered for sending too slowly (a 408): what is left of its body
    /// is not read on ([`linger`]), and the connection closes after the answer. Called
    /// before the body is let go, so a [`linger`] never reads a byte of it.
    pub(crate) fn refuse_rest(&self) {
        self.0.refused.store(true, Ordering::Release);
    }

    fn rest_refused(&self) -> bool {
        self.0.refused.load(Ordering::Acquire)
    }
}

/// How long a body let go before its end is read on at most ([`linger`]): NGINX's
/// `lingering_time`.
const LINGER_FOR: Duration = Duration::from_secs(30);

/// How long [`linger`] waits for more of the body at most (a route's shorter
/// `body_timeout` wins): NGINX's `lingering_timeout`.
const LINGER_STALL: Duration = Duration::from_secs(5);

/// The client's body, within the route's size limit and `body_timeout`.
#[derive(Debug)]
pub(crate) struct ClientBody {
    /// `None` once the body is over: ended, failed, or handed to [`linger`].
    inner: Option<Limited<Incoming>>,
    /// The connection may linger on the body ([`ClientBody::new`]).
    may_linger: bool,
    /// The upstream's sender began to take the body.
    taken: bool,
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
    /// `keep_alive`: the request came on an HTTP/1.1 connection that stays open after
    /// the answer, where what is left of the body may be read on ([`linger`]).
    pub(crate) fn new(
        body: Incoming,
        limit: usize,
        timeout: Duration,
        keep_alive: bool,
    ) -> ClientBody {
        ClientBody {
            inner: Some(Limited::new(body, limit)),
            may_linger: keep_alive,
            taken: false,
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.taken = true;
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.progressed();
                this.inner = None;
                let error = if error.is::<LengthLimitError>() {
                    ClientBodyError::TooLarge
                } else {
                    ClientBodyError::Malformed(error)
                };
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.progressed();
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.progress.set_waiting(true);
                if this.stalled(cx) {
                    this.progressed();
                    this.inner = None;
                    return Poll::Ready(Some(Err(ClientBodyError::Stalled(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // A body nobody began to take was refused before it went anywhere (a request
        // the gateway answers itself): the connection closes after the answer.
        if !(self.may_linger && self.taken) {
            return;
        }
        let Some(inner) = self.inner.take().filter(|inner| !inner.is_end_stream()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stall = if self.timeout.is_zero() {
                LINGER_STALL
            } else {
                self.timeout.min(LINGER_STALL)
            };
            runtime.spawn(linger(inner, stall, self.progress.clone()));
        }
    }
}

/// Reads what is left of a body nobody sends on, and drops it: until its end, an
/// error (the client left, or the route's size limit), `stall` without data, or
/// [`LINGER_FOR`] in all; not at all when the sender refused the rest. Meanwhile hyper
/// writes the answer, and the client still sending its body does not meet a reset.
async fn linger(mut body: Limited<Incoming>, stall: Duration, progress: BodyProgress) {
    let until = Instant::now() + LINGER_FOR;
    while !progress.rest_refused() {
        let wait = (Instant::now() + stall).min(until);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}
