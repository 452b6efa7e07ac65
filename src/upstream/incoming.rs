//! An upstream response body: from hyper's pooled client, or read straight from a
//! connection of the stream's own (`lean.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::error::BoxError;
use super::lean::LeanBody;

/// An upstream response body.
#[derive(Debug)]
pub(crate) enum UpstreamIncoming {
    /// On a pooled connection, driven by the connection's own task.
    Pooled(Incoming),
    /// On the stream's own connection, read when the body is polled.
    Lean(LeanBody),
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamIncoming::Pooled(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
            UpstreamIncoming::Lean(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Pooled(body) => body.is_end_stream(),
            UpstreamIncoming::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::Pooled(body) => body.size_hint(),
            UpstreamIncoming::Lean(body) => body.size_hint(),
        }
    }
}
