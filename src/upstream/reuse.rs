//! Which pooled connection a request went out on had answered before, and whether
//! the request can be sent again.
//!
//! An upstream may close a keep-alive connection without `Connection: close` (a
//! keep-alive timeout) just as the pool hands it to the next request, which then fails
//! before any byte of its response. hyper-util's own retry covers only a request the
//! connection never took (`retry_canceled_requests`); one that was written to the
//! closing socket fails with a reset or an incomplete message. Such a failure on a
//! connection that had answered before is the pool's race, not the upstream breaking:
//! an idempotent request, or one without a body, is sent once more on a fresh
//! connection. A fresh connection that fails is the upstream's failure, never retried.
//!
//! The connector wraps each connection's transport to hand the pool an [`Answered`]
//! flag as connection metadata; the flag is set when a response arrives on it. The
//! transport inside keeps an answer readable that came before a reset
//! (`early_answer.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Extensions, Method, Request, Uri};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use tower_service::Service;

use super::early_answer::EarlyAnswer;
use super::error::{causes, BoxError};
use super::UpstreamBody;

/// Set once a response arrived on the connection.
#[derive(Debug, Clone, Default)]
pub(super) struct Answered(Arc<AtomicBool>);

impl Answered {
    /// Marks the connection a response came on; a no-op for responses without one.
    pub(super) fn mark(extensions: &Extensions) {
        if let Some(answered) = extensions.get::<Answered>() {
            answered.0.store(true, Ordering::Relaxed);
        }
    }

    /// True when the connection a request was captured on had answered before.
    pub(super) fn before(captured: &CaptureConnection) -> bool {
        let metadata = captured.connection_metadata();
        let Some(connected) = metadata.as_ref() else {
            return false;
        };
        let mut extras = Extensions::new();
        connected.get_extras(&mut extras);
        extras
            .get::<Answered>()
            .is_some_and(|answered| answered.0.load(Ordering::Relaxed))
    }
}

/// A connector whose connections carry an [`Answered`] flag.
#[derive(Debug, Clone)]
pub(super) struct Tracking<C>(pub C);

impl<C> Service<Uri> for Tracking<C>
where
    C: Service<Uri>,
    C::Response: Connection,
    C::Future: Send + 'static,
{
    type Response = Tracked<EarlyAnswer<C::Response>>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            connecting.await.map(|io| Tracked {
                io: EarlyAnswer::new(io),
                answered: Answered::default(),
            })
        })
    }
}

/// A connection's transport with its flag.
#[derive(Debug)]
pub(super) struct Tracked<T> {
    io: T,
    answered: Answered,
}

impl<T: Connection> Connection for Tracked<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.answered.clone())
    }
}

impl<T: Read + Unpin> Read for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// A copy of `request` to send again, when it may be: an idempotent method or no
/// body, and a body the gateway can make again (none, or its own `query_as_json`).
pub(super) fn replay(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let body = match request.body() {
        Either::Right(made) if idempotent || made.is_end_stream() => Either::Right(made.clone()),
        Either::Left(client) if client.is_end_stream() => Either::Right(Full::new(Bytes::new())),
        _ => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// True for a failure that means the connection was closed under the request: a
/// reset, a broken pipe, or the connection's end before a response.
pub(super) fn is_closed_connection(error: &BoxError) -> bool {
    causes(&**error).any(|cause| {
        if let Some(error) = cause.downcast_ref::<hyper::Error>() {
            return error.is_incomplete_message() || error.is_canceled();
        }
        cause.downcast_ref::<io::Error>().is_some_and(|error| {
            matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, body: &'static [u8]) -> Request<UpstreamBody> {
        let mut request = Request::new(Either::Right(Full::new(Bytes::from_static(body))));
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_static("http://upstream/v1/x?q=1");
        request
            .headers_mut()
            .insert("x-trace", http::HeaderValue::from_static("7"));
        request
    }

    #[test]
    fn idempotent_or_bodiless_requests_may_be_sent_again() {
        for (method, body) in [
            (Method::GET, &b""[..]),
            (Method::GET, &b"{\"q\":\"1\"}"[..]),
            (Method::HEAD, &b""[..]),
            (Method::OPTIONS, &b""[..]),
            (Method::POST, &b""[..]),
            (Method::DELETE, &b""[..]),
        ] {
            let original = request(method.clone(), body);
            let copy = replay(&original).unwrap_or_else(|| panic!("{method} {body:?}"));
            assert_eq!(copy.method(), original.method());
            assert_eq!(copy.uri(), original.uri());
            assert_eq!(copy.headers(), original.headers());
            assert_eq!(copy.body().size_hint().exact(), Some(body.len() as u64));
        }
    }

    #[test]
    fn a_request_with_a_body_that_may_change_state_is_never_sent_again() {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(
                replay(&request(method.clone(), b"{}")).is_none(),
                "{method}"
            );
        }
    }
}
