//! The response body the gateway hands to hyper: an upstream body streamed through
//! frame by frame, a supervised event stream, or a body the gateway made itself.
//!
//! Each upstream frame is passed on the moment it is polled (no buffering, no
//! coalescing). When hyper drops the body — the last frame was written, or the client
//! went away — the upstream response is dropped with it, which closes the upstream
//! connection at once if the stream was not finished, and the request's log line is
//! written.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::access_log::RequestLog;
use crate::supervise::SupervisedBody;
use crate::upstream::UpstreamIncoming;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Errors a response body can end with.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of every response the gateway sends.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Passed through untouched.
    Upstream {
        body: UpstreamIncoming,
        log: RequestLog,
    },
    /// An event stream on a route with a `stream` section (boxed: it is the large
    /// variant, and one allocation per stream is nothing).
    Supervised(Box<SupervisedBody>),
    /// An error reply.
    Made {
        body: Option<Bytes>,
        log: RequestLog,
    },
}

impl ResponseBody {
    /// Streams an upstream response body.
    pub fn upstream(body: UpstreamIncoming, mut log: RequestLog) -> ResponseBody {
        // An empty body (204, 304, HEAD) is never polled: it is complete as it is.
        if body.is_end_stream() {
            log.finished();
        }
        ResponseBody {
            kind: Kind::Upstream { body, log },
        }
    }

    /// A supervised event stream (it carries its own log).
    pub fn supervised(body: SupervisedBody) -> ResponseBody {
        ResponseBody {
            kind: Kind::Supervised(Box::new(body)),
        }
    }

    /// A body the gateway made (an error reply).
    pub fn made(body: Bytes, log: RequestLog) -> ResponseBody {
        ResponseBody {
            kind: Kind::Made {
                body: (!body.is_empty()).then_some(body),
                log,
            },
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
            Kind::Made { body, log } => {
                // hyper stops polling once `is_end_stream` says so; the end is noted
                // here, not only on a final `None`.
                log.finished();
                Poll::Ready(body.take().map(|bytes| {
                    log.add_bytes(bytes.len());
                    Ok(Frame::data(bytes))
                }))
            }
            Kind::Upstream { body, log } => {
                let polled = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(frame) => frame.map(|result| result.map_err(BoxError::from)),
                };
                match &polled {
                    None => log.finished(),
                    Some(Err(error)) => log.failed(error.to_string()),
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
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Supervised(body) => body.is_end_stream(),
            Kind::Made { body, .. } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Supervised(body) => body.size_hint(),
            Kind::Made { body, .. } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
