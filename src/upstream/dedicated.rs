//! Dedicated connections: one plain-HTTP/1.1 upstream connection per event stream,
//! driven by the response body that reads from it instead of by a spawned task.
//!
//! Why: through the pooled client every upstream read is made by the connection's own
//! task and handed to the response's task through hyper's body channel, a task wake per
//! read (a quarter of the instructions per event in a paced stream). Driving the
//! connection from the body's `poll_frame` makes the read, the decode and the rewrite
//! one poll of one task, and lets hyper queue several reads' frames into one write.
//!
//! What it gives up is the pool, which event streams barely use: a stream ended by its
//! terminator, by a clock or by its client closes its upstream connection anyway. HTTPS
//! upstreams keep the pooled client (TLS handshakes are worth reusing; the sidecar case
//! is plain HTTP on localhost).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::UpstreamBody;

/// The connection a dedicated response is read from.
type Conn = Connection<TokioIo<TcpStream>, UpstreamBody>;

/// An upstream response body, with the connection it arrives on when that connection
/// is the response's own.
#[derive(Debug)]
pub(crate) struct UpstreamIncoming {
    body: Incoming,
    /// `None` for a pooled connection (its task drives it), and once the connection is
    /// done.
    conn: Option<Pin<Box<Conn>>>,
}

impl UpstreamIncoming {
    /// A body read from a pooled connection.
    pub(crate) fn pooled(body: Incoming) -> UpstreamIncoming {
        UpstreamIncoming { body, conn: None }
    }

    /// Lets the connection read, decode and hand on what it can; false when there is
    /// no connection to drive (pooled, or done).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if conn.as_mut().poll(cx).is_ready() {
            // Done or failed: the body has its end or its error, read by the next poll.
            self.conn = None;
        }
        true
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // The body first: polling it is what asks the connection for the next read.
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if !this.drive(cx) {
            // A pooled connection's task wakes the body; a finished connection has
            // closed it, which the next poll reads.
            return Poll::Pending;
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Sends `request` (absolute-form URI) on `tcp`, a new connection, and waits for the
/// response headers, driving the connection meanwhile. Timeouts are the caller's.
pub(super) async fn send(
    tcp: TcpStream,
    mut request: Request<UpstreamBody>,
) -> Result<Response<UpstreamIncoming>, hyper::Error> {
    // On a connection of its own the request goes in origin form, with the Host the
    // pooled client would have set.
    let uri = request.uri().clone();
    if let Some(authority) = uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
    }
    *request.uri_mut() = origin_form(&uri);

    let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
    let mut conn = Some(Box::pin(conn));
    let mut response = std::pin::pin!(sender.send_request(request));
    // No second request: the connection ends when this response does.
    drop(sender);
    let response = poll_fn(|cx| {
        if let Some(driving) = conn.as_mut() {
            if driving.as_mut().poll(cx).is_ready() {
                // Done before the response arrived: the request future fails with the
                // reason, so nothing is lost by dropping the connection here.
                conn = None;
            }
        }
        response.as_mut().poll(cx)
    })
    .await?;
    Ok(response.map(|body| UpstreamIncoming { body, conn }))
}

/// `/path?query` of an absolute URI.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}
