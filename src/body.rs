//! The response body the gateway hands to hyper: an upstream body streamed through
//! frame by frame, a supervised event stream, or a body the gateway made itself.
//!
//! Each upstream frame is passed on the moment it is polled (no buffering, no
//! coalescing). When hyper drops the body — the last frame was written, or the client
//! went away — the upstream response is dropped with it, which closes the upstream
//! connection at once if the stream was not finished, and the request's log line is
//! written. At the drain deadline a passed-through body ends where it is (the final
//! chunk of a chunked response), like a supervised stream, so the client sees a proper
//! end instead of a cut connection.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::access_log::RequestLog;
use crate::admission::Slot;
use crate::metrics::RouteMetrics;
use crate::resume::ResumeBody;
use crate::shutdown::{DrainWatch, Shutdown};
use crate::supervise::SupervisedBody;
use crate::upstream::{UpstreamErrorKind, UpstreamIncoming};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Errors a response body can end with.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of every response the gateway sends.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    /// The request's place under its route's `limits`, freed with the body.
    slot: Option<Slot>,
}

/// What the body is. Every large variant is boxed: hyper keeps one box of the body's
/// type per HTTP/1 connection, for as long as the connection is open, sized for the
/// largest variant; inline, a passthrough's upstream body and log would make every
/// open event stream carry some 500 bytes it never uses.
#[derive(Debug)]
enum Kind {
    /// Passed through untouched.
    Upstream(Box<Passthrough>),
    /// An event stream on a route with a `stream` section.
    Supervised(Box<SupervisedBody>),
    /// A stream on a resumable route: the first client's, or a resume's.
    Resumable(Box<ResumeBody>),
    /// An error reply.
    Made {
        body: Option<Bytes>,
        log: Box<RequestLog>,
    },
}

/// A response passed through untouched.
#[derive(Debug)]
struct Passthrough {
    body: UpstreamIncoming,
    log: RequestLog,
    /// The route's: an upstream that fails mid-body counts in `upstream_errors_total`
    /// as on a supervised stream.
    metrics: Arc<RouteMetrics>,
    drain: Option<Box<DrainEnd>>,
}

impl ResponseBody {
    /// Streams an upstream response body of a route with `metrics`.
    pub(crate) fn upstream(
        body: UpstreamIncoming,
        mut log: RequestLog,
        metrics: Arc<RouteMetrics>,
    ) -> ResponseBody {
        // An empty body (204, 304, HEAD) is never polled: it is complete as it is.
        if body.is_end_stream() {
            log.finished();
        }
        ResponseBody {
            kind: Kind::Upstream(Box::new(Passthrough {
                body,
                log,
                metrics,
                drain: None,
            })),
            slot: None,
        }
    }

    /// Holds `slot` until the body is dropped: the end of the response, whichever way
    /// it ends.
    pub(crate) fn holding(mut self, slot: Option<Slot>) -> ResponseBody {
        self.slot = slot;
        self
    }

    /// Ends a passed-through body when `signal` fires (at the drain deadline); other
    /// bodies watch it themselves or are never long.
    pub(crate) fn ends_at(mut self, signal: Shutdown) -> ResponseBody {
        match &mut self.kind {
            Kind::Upstream(passthrough) if !passthrough.body.is_end_stream() => {
                passthrough.drain = Some(Box::new(DrainEnd {
                    watch: DrainWatch::new(signal),
                    ended: false,
                }));
            }
            // A resume followed from Redis: no stream of this replica's feeds it.
            Kind::Resumable(body) => body.ends_at(signal),
            _ => {}
        }
        self
    }

    /// A supervised event stream (it carries its own log).
    pub(crate) fn supervised(body: SupervisedBody) -> ResponseBody {
        ResponseBody {
            kind: Kind::Supervised(Box::new(body)),
            slot: None,
        }
    }

    /// A stream on a resumable route.
    pub(crate) fn resumable(body: ResumeBody) -> ResponseBody {
        ResponseBody {
            kind: Kind::Resumable(Box::new(body)),
            slot: None,
        }
    }

    /// A body the gateway made (an error reply, a preflight's empty one).
    pub(crate) fn made(body: Bytes, mut log: RequestLog) -> ResponseBody {
        // hyper never polls an empty body, nor any body of a response to HEAD (whose
        // length it still announces): the answer is complete once its head is out,
        // not a client gone.
        if body.is_empty() || log.is_head() {
            log.finished();
        }
        let body = (!body.is_empty()).then_some(body);
        ResponseBody {
            kind: Kind::Made {
                body,
                log: Box::new(log),
            },
            slot: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Supervised(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
            Kind::Resumable(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
            Kind::Made { body, log } => {
                // hyper stops polling once `is_end_stream` says so; the end is noted
                // here, not only on a final `None`.
                log.finished();
                Poll::Ready(body.take().map(|bytes| {
                    log.add_bytes(bytes.len());
                    Ok(Frame::data(bytes))
                }))
            }
            Kind::Upstream(passthrough) => {
                let Passthrough {
                    body,
                    log,
                    metrics,
                    drain,
                } = &mut **passthrough;
                if let Some(drain) = drain {
                    if drain.ended {
                        return Poll::Ready(None);
                    }
                    // Checked before every read, as supervised streams do: an upstream
                    // that never pauses would otherwise run past the drain deadline.
                    if drain.has_fired() {
                        log.ended_by_shutdown();
                        return Poll::Ready(None);
                    }
                }
                let polled = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        // A quiet upstream waits on the signal too.
                        if let Some(drain) = drain {
                            if drain.poll_fired(cx) {
                                log.ended_by_shutdown();
                                return Poll::Ready(None);
                            }
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(frame) => frame,
                };
                match &polled {
                    None => log.finished(),
                    Some(Err(error)) => {
                        metrics.count_upstream_error(UpstreamErrorKind::of_body_error(&**error));
                        log.failed(error.to_string());
                    }
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            log.add_bytes(data.len());
                        }
                        if body.is_end_stream() {
                            log.finished();
                        }
                    }
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(passthrough) => {
                passthrough.body.is_end_stream()
                    || passthrough.drain.as_ref().is_some_and(|d| d.ended)
            }
            Kind::Supervised(body) => body.is_end_stream(),
            Kind::Resumable(body) => body.is_end_stream(),
            Kind::Made { body, .. } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(passthrough) => passthrough.body.size_hint(),
            Kind::Supervised(body) => body.size_hint(),
            Kind::Resumable(body) => body.size_hint(),
            Kind::Made { body, .. } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A passed-through body's watch on the drain deadline (boxed: most responses end
/// long before a drain, and the box is made only for bodies that may outlive one).
#[derive(Debug)]
struct DrainEnd {
    watch: DrainWatch,
    ended: bool,
}

impl DrainEnd {
    /// Whether the drain time is over (no waker); if so, the body ends.
    fn has_fired(&mut self) -> bool {
        self.ended = self.watch.is_over();
        self.ended
    }

    /// The same, for a quiet upstream: registers the waker (once) if it is not.
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.ended = self.watch.poll_over(cx);
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_hyper_keeps_per_connection_has_no_inline_passthrough_state() {
        // hyper boxes one `Option<ResponseBody>` per HTTP/1 connection for its whole
        // life: every open stream pays this size, whatever its kind.
        let size = std::mem::size_of::<ResponseBody>();
        assert!(
            size <= 96,
            "ResponseBody is {size} bytes; box its large variants"
        );
    }
}
