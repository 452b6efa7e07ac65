//! An answer the upstream sent before it read the whole request body, on a pooled
//! HTTP/1.1 connection.
//!
//! An upstream may answer before it has read a large body (a 401, a 413) and close;
//! with the body unread, its kernel resets the connection. The answer is already in
//! the gateway's receive queue and stays readable: a reset discards no data received,
//! and the write that fails on it takes the connection's error, so reads then give the
//! answer and the end of the stream. But hyper's HTTP/1.1 client gives up at the
//! first failed write: its dispatcher returns the error of `poll_flush` from its loop
//! and hands it to the request still waiting for its response, without another read
//! (hyper 1.x, `proto/h1/dispatch.rs`: `poll_loop`, `poll_catch`). The client got a
//! 502 for the write instead of the answer.
//!
//! The transport here keeps that failure from hyper: once a write finds the connection
//! reset, every write is taken and dropped (there is no one to send to), so hyper
//! reads on, and an answer that had arrived is parsed and returned as on any
//! connection. The reads give what arrived before the reset and then, where they would
//! end, the write's error: a request nobody answered fails as before, with the same
//! error (a reused connection's race is still told apart, `reuse.rs`), and an answer
//! the reset cut short is an error, not a clean end. Until that read, hyper may take a
//! few more frames of the request body, dropped here; the connection then ends, and
//! the rest of the body is not read. A connection that is not reset is never touched.
//!
//! HTTP/2 connections are passed through as they are: h2 has its own way to answer
//! early (`RST_STREAM` with `NO_ERROR`) without closing the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// The most read at a time once the connection was reset: what is left is an answer
/// already received, read into a buffer of its own so that its end can be seen.
const READ_AFTER_RESET: usize = 8 * 1024;

/// Where a connection stands.
#[derive(Debug)]
enum State {
    Open,
    /// A write found the connection reset: writes are dropped, reads give what had
    /// arrived, then this error.
    Reset(io::Error),
    /// The reads reached the reset: only the stream's end is left.
    Ended,
}

/// A pooled connection's transport that keeps an early answer readable after the
/// request's write failed on the reset that followed it.
#[derive(Debug)]
pub(super) struct EarlyAnswer<T> {
    io: T,
    /// False for HTTP/2, whose failures are its own.
    watch: bool,
    state: State,
}

impl<T: Connection> EarlyAnswer<T> {
    pub(super) fn new(io: T) -> EarlyAnswer<T> {
        let watch = !io.connected().is_negotiated_h2();
        EarlyAnswer {
            io,
            watch,
            state: State::Open,
        }
    }
}

impl<T> EarlyAnswer<T> {
    /// True once a write found the connection reset.
    fn dropping_writes(&self) -> bool {
        !matches!(self.state, State::Open)
    }

    /// A write's result; a reset is kept for the reads, and the write taken as done.
    fn written<N>(&mut self, result: io::Result<N>, done: impl FnOnce() -> N) -> io::Result<N> {
        match result {
            Err(error) if self.watch && is_reset(&error) => {
                tracing::debug!(%error, "the upstream reset the connection while the request was written; reading what it sent");
                self.state = State::Reset(error);
                Ok(done())
            }
            other => other,
        }
    }
}

/// A write failure that means the peer reset the connection: the send side is gone,
/// and what it sent before is still to be read.
fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

impl<T: Connection> Connection for EarlyAnswer<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for EarlyAnswer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !matches!(this.state, State::Reset(_)) || buf.remaining() == 0 {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut scratch = vec![0; buf.remaining().min(READ_AFTER_RESET)];
        let mut read = ReadBuf::new(&mut scratch);
        let ended = match ready!(Pin::new(&mut this.io).poll_read(cx, read.unfilled())) {
            Ok(()) => read.filled().is_empty(),
            // TLS: the peer's close without `close_notify`, here the reset.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => true,
            Err(error) => return Poll::Ready(Err(error)),
        };
        if ended {
            let State::Reset(error) = std::mem::replace(&mut this.state, State::Ended) else {
                unreachable!("checked above");
            };
            return Poll::Ready(Err(error));
        }
        buf.put_slice(read.filled());
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for EarlyAnswer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.dropping_writes() {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        Poll::Ready(self.written(result, || buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dropping_writes() {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(Pin::new(&mut self.io).poll_flush(cx));
        Poll::Ready(self.written(result, || ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dropping_writes() {
            return Poll::Ready(Ok(()));
        }
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
        let len = || bufs.iter().map(|buf| buf.len()).sum();
        if self.dropping_writes() {
            return Poll::Ready(Ok(len()));
        }
        let result = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        Poll::Ready(self.written(result, len))
    }
}
