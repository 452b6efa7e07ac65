//! The response body the gateway hands to hyper: an upstream body streamed through
//! frame by frame, or a body the gateway made itself.
//!
//! Each upstream frame is passed on the moment it is polled (no buffering, no
//! coalescing). When hyper drops the body — the last frame was written, or the client
//! went away — the upstream response is dropped with it, which closes the upstream
//! connection at once if the stream was not finished, and the request's log line is
//! written.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::access_log::RequestLog;

/// Errors a response body can end with.
pub type BoxError = Box<dyn StdError + Send + Sync>;

pin_project! {
    /// The body of every response the gateway sends.
    #[derive(Debug)]
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        log: RequestLog,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream { #[pin] body: Incoming },
        Made { body: Option<Bytes> },
    }
}

impl ResponseBody {
    /// Streams an upstream response body.
    pub fn upstream(body: Incoming, log: RequestLog) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream { body },
            log,
        }
    }

    /// A body the gateway made (an error reply).
    pub fn made(body: Bytes, log: RequestLog) -> ResponseBody {
        ResponseBody {
            kind: Kind::Made {
                body: (!body.is_empty()).then_some(body),
            },
            log,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let (polled, at_end) = match this.kind.project() {
            KindProj::Upstream { mut body } => match body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => (
                    frame.map(|result| result.map_err(BoxError::from)),
                    body.is_end_stream(),
                ),
            },
            KindProj::Made { body } => (body.take().map(|bytes| Ok(Frame::data(bytes))), true),
        };
        // hyper stops polling once `is_end_stream` says so; note the end here, not
        // only on a final `None`.
        if at_end {
            this.log.finished();
        }
        match &polled {
            None => this.log.finished(),
            Some(Err(error)) => this.log.failed(error.to_string()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.log.add_bytes(data.len());
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Made { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Made { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
