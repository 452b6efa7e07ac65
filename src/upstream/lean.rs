//! The streaming leg to a plain-HTTP upstream without hyper's client: the request is
//! written as HTTP/1.1 bytes, and the response is read with [`ResponseDecoder`] into a
//! buffer that exists only while bytes are arriving.
//!
//! Why: an open event stream spends most of its life waiting for the next token. On
//! hyper's client connection it holds, all that time, a read buffer, a write buffer and
//! the request dispatch channel, several pages of memory per stream. Here a stream
//! waiting for its upstream holds its socket and the decoder's few counters: the read
//! buffer is made when the socket is readable and given away, as the body's frames,
//! when it has been decoded.
//!
//! A token stream's read is one event of a few hundred bytes. Reads that start a burst go
//! into a buffer shared by every stream on the worker thread and are split off it, so an
//! event costs no allocation of its own; the part of a chunk a read cut off, which would
//! keep the shared buffer alive while the stream waits, is copied out first.
//!
//! HTTPS upstreams and requests that are not event streams keep hyper's pooled client.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::error::BoxError;
use super::response_decoder::{DecodeError, Decoded, Head, ResponseDecoder};
use super::UpstreamBody;

/// The first read of a burst: one event of a token stream, with room to spare.
const FIRST_READ: usize = 4 * 1024;

/// The largest read: a fast upstream's reads grow to this, so a burst costs few
/// syscalls and one frame carries many events.
const MAX_READ: usize = 256 * 1024;

/// The worker's shared read buffer: a new one is made when less than [`FIRST_READ`] is
/// left, so one allocation serves dozens of token-sized reads. Small, because a frame a
/// slow client has not taken yet keeps its whole buffer alive.
const SHARED_READ_BUFFER: usize = 16 * 1024;

thread_local! {
    /// Room for the next read that starts a burst on this worker thread; what a read
    /// fills is split off it. Always empty between reads.
    static SHARED_READS: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// Why the exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeanError {
    #[error("cannot write the request: {0}")]
    Write(#[source] io::Error),
    #[error("cannot read the response: {0}")]
    Read(#[source] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The client's body failed while it was being sent (too large, too slow, gone).
    #[error("{0}")]
    ClientBody(#[source] BoxError),
}

/// A response body read straight from the upstream's socket.
#[derive(Debug)]
pub(crate) struct LeanBody {
    tcp: TcpStream,
    decoder: ResponseDecoder,
    /// Read but not yet decoded; empty, with nothing allocated, between bursts.
    buf: BytesMut,
    /// How much the next read asks for: doubles while reads fill it, and goes back to
    /// [`FIRST_READ`] (the shared buffer) once one does not.
    read_size: usize,
    /// `buf` is a piece of the worker's shared read buffer.
    buf_shared: bool,
    done: bool,
}

impl LeanBody {
    /// Reads what the socket has into a buffer made for it; `Ready(Ok(0))` at the
    /// upstream's close.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // No buffer while the socket has nothing to read.
        ready!(self.tcp.poll_read_ready(cx))?;
        if self.buf.is_empty() && self.read_size == FIRST_READ {
            return SHARED_READS.with_borrow_mut(|shared| self.poll_read_shared(cx, shared));
        }
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        // Through `AsyncRead`: a read that leaves room in the buffer has emptied the
        // socket, and tokio then forgets its readiness, so the next poll waits for the
        // next bytes instead of reading again to hear `EAGAIN` (one syscall per event
        // less when each event is its own write upstream).
        match poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 && self.buf.capacity() == self.buf.len() {
                    self.read_size = (self.read_size * 2).min(MAX_READ);
                } else if n > 0 {
                    // The read left room: the socket is drained and the burst over. The
                    // next burst starts in the shared buffer again, not in a buffer of
                    // the stream's own for every read from now on.
                    self.read_size = FIRST_READ;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Readiness was stale: tokio waits for the next, and the wait holds no
            // buffer.
            Poll::Pending => {
                self.release_for_wait();
                Poll::Pending
            }
        }
    }

    /// Reads into the worker's shared buffer and takes what the read filled as `buf`.
    fn poll_read_shared(
        &mut self,
        cx: &mut Context<'_>,
        shared: &mut Option<BytesMut>,
    ) -> Poll<io::Result<usize>> {
        let shared = match shared {
            Some(shared) if shared.capacity() >= FIRST_READ => shared,
            _ => shared.insert(BytesMut::with_capacity(SHARED_READ_BUFFER)),
        };
        let room = shared.capacity();
        let read = ready!(poll_read_buf(Pin::new(&mut self.tcp), cx, shared));
        // Whatever happened, nothing read stays in the shared buffer.
        self.buf = shared.split();
        self.buf_shared = true;
        let n = read?;
        if n == room {
            // A burst: it goes on in buffers of the stream's own, which grow.
            self.read_size = (FIRST_READ * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Frees the read buffer when it holds nothing undecoded: what was decoded from it
    /// lives on in the frames, and goes when they are written.
    fn release(&mut self) {
        if self.buf.is_empty() {
            self.drop_buf();
        }
    }

    /// Lets go of the read buffer, whatever it holds.
    fn drop_buf(&mut self) {
        self.buf = BytesMut::new();
        self.buf_shared = false;
    }

    /// Before a wait for more bytes: frees the read buffer, or copies what is left of a
    /// piece of the shared buffer (a cut chunk-size line, a CR) into one of its own, so
    /// the wait keeps no shared buffer alive.
    fn release_for_wait(&mut self) {
        self.release();
        if self.buf_shared {
            self.buf = BytesMut::from(&self.buf[..]);
            self.buf_shared = false;
        }
    }

    fn fail(&mut self, error: LeanError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.drop_buf();
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(Decoded::Data(data))) => {
                    this.release();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(Decoded::End)) => {
                    this.done = true;
                    this.drop_buf();
                    return Poll::Ready(None);
                }
                // What is left (a chunk's CRLF, say) was framing: the wait for the
                // next bytes holds no buffer.
                Ok(None) => this.release_for_wait(),
                Err(error) => return this.fail(error.into()),
            }
            match ready!(this.poll_read(cx)) {
                Ok(0) => match this.decoder.decode_eof() {
                    Ok(_) => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    Err(error) => return this.fail(error.into()),
                },
                Ok(_) => {}
                Err(error) => return this.fail(LeanError::Read(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.decoder.is_done() && self.buf.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining_length() {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

/// Sends `request` (absolute-form URI) on `tcp`, a new connection, and reads the
/// response head. Timeouts are the caller's.
pub(super) async fn send(
    mut tcp: TcpStream,
    request: Request<UpstreamBody>,
) -> Result<Response<LeanBody>, LeanError> {
    let head_request = request.method() == Method::HEAD;
    let (parts, body) = request.into_parts();
    let mut decoder = ResponseDecoder::new(head_request);
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    // Boxed: done before the head is read, it would otherwise size the future that
    // waits for the head.
    let written = Box::pin(write_request(&mut tcp, &parts, body)).await;
    let head = match written {
        Ok(()) => read_head(&mut tcp, &mut decoder, &mut buf).await?,
        // An upstream may answer before it has read the whole body (a 401, a 413, as
        // Go's server does for a large body it will not read) and close: the answer
        // already received is the client's, not the failed write.
        Err(LeanError::Write(error)) => read_head(&mut tcp, &mut decoder, &mut buf)
            .await
            .map_err(|_| LeanError::Write(error))?,
        Err(other) => return Err(other),
    };
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    let mut response = Response::new(LeanBody {
        tcp,
        decoder,
        buf,
        read_size: FIRST_READ,
        buf_shared: false,
        done: false,
    });
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// Reads until `decoder` has the response head.
async fn read_head(
    tcp: &mut TcpStream,
    decoder: &mut ResponseDecoder,
    buf: &mut BytesMut,
) -> Result<Head, LeanError> {
    loop {
        if let Some(head) = decoder.decode_head(buf)? {
            return Ok(head);
        }
        buf.reserve(FIRST_READ);
        if tcp.read_buf(buf).await.map_err(LeanError::Read)? == 0 {
            return Err(decoder.decode_eof().unwrap_err().into());
        }
    }
}

/// Writes the request head and body: a length when it is known, chunked otherwise.
async fn write_request(
    tcp: &mut TcpStream,
    parts: &http::request::Parts,
    body: UpstreamBody,
) -> Result<(), LeanError> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .as_bytes(),
    );
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // On a connection of its own the request goes in origin form, with the Host the
    // pooled client would have set.
    let host = parts
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = &host {
        field(&mut head, HOST.as_str(), host.as_bytes());
    }
    for (name, value) in &parts.headers {
        let framing = name == CONTENT_LENGTH || name == TRANSFER_ENCODING;
        if framing || (name == HOST && host.is_some()) {
            continue;
        }
        field(&mut head, name.as_str(), value.as_bytes());
    }
    match body {
        Either::Right(full) => {
            // A body the gateway made: whole, so its length is known.
            let Ok(collected) = full.collect().await;
            let bytes = collected.to_bytes();
            field(
                &mut head,
                CONTENT_LENGTH.as_str(),
                bytes.len().to_string().as_bytes(),
            );
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&bytes);
            tcp.write_all(&head).await.map_err(LeanError::Write)
        }
        Either::Left(mut client) => {
            let length = match client.size_hint().exact() {
                Some(n) => Some(n),
                None => parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok()?.parse().ok()),
            };
            let chunked = length.is_none();
            match length {
                Some(0) if !expects_body(&parts.method) => {}
                Some(n) => field(&mut head, CONTENT_LENGTH.as_str(), n.to_string().as_bytes()),
                None => field(&mut head, TRANSFER_ENCODING.as_str(), b"chunked"),
            }
            head.extend_from_slice(b"\r\n");
            let sent = send_body(tcp, &head, &mut client, chunked).await;
            if let Err(LeanError::Write(error)) = sent {
                // The upstream may have closed because of what the client sent (a
                // body over the limit is cut mid-way): if the rest of the body fails,
                // that is the failure to report, not the closed socket.
                while let Some(frame) = client.frame().await {
                    frame.map_err(|error| LeanError::ClientBody(error.into()))?;
                }
                return Err(LeanError::Write(error));
            }
            sent
        }
    }
}

/// Writes the head, then the client's body as it arrives: what has arrived goes out
/// in one write with the head (a request is one packet, as hyper sends it), and later
/// pieces as they come.
async fn send_body(
    tcp: &mut TcpStream,
    head: &[u8],
    client: &mut super::ClientBody,
    chunked: bool,
) -> Result<(), LeanError> {
    /// Written at once when this much is waiting, whatever else has arrived.
    const WRITE_AT: usize = 64 * 1024;
    let mut out = head.to_vec();
    loop {
        let next = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *client).poll_frame(cx))).await {
            Poll::Ready(next) => next,
            Poll::Pending => {
                // Nothing more yet: send what is waiting before waiting for the client.
                tcp.write_all(&out).await.map_err(LeanError::Write)?;
                out.clear();
                poll_fn(|cx| Pin::new(&mut *client).poll_frame(cx)).await
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|error| LeanError::ClientBody(error.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() >= WRITE_AT {
            tcp.write_all(&out).await.map_err(LeanError::Write)?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    tcp.write_all(&out).await.map_err(LeanError::Write)
}

/// Methods whose requests carry a body by definition: an empty one is said with
/// `Content-Length: 0`, as hyper's client does.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// A body reading a chunked response over loopback, and the upstream's end of its
    /// connection.
    async fn connected_body() -> (LeanBody, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tcp, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (chunked_body(tcp.unwrap()), accepted.unwrap().0)
    }

    /// A body reading a chunked response from `tcp`, its head already decoded.
    fn chunked_body(tcp: TcpStream) -> LeanBody {
        let mut decoder = ResponseDecoder::new(false);
        let mut head =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
        assert!(decoder
            .decode_head(&mut head)
            .expect("a valid head")
            .is_some());
        LeanBody {
            tcp,
            decoder,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            buf_shared: false,
            done: false,
        }
    }

    async fn poll_once(body: &mut LeanBody) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
    }

    fn data(polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>) -> Option<Bytes> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    /// A read that cut a chunk-size line: the stream waits for the rest holding a copy
    /// of the cut bytes, not a piece of the worker's shared buffer, and reads on.
    #[tokio::test]
    async fn a_wait_after_a_cut_chunk_keeps_no_shared_buffer() {
        let (mut body, mut upstream) = connected_body().await;
        upstream.write_all(b"5\r\nhello\r\n1").await.unwrap();

        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            let mut got = Vec::new();
            loop {
                match poll_once(&mut body).await {
                    Poll::Pending if got == b"hello" && body.buf[..] == b"1"[..] => break got,
                    Poll::Pending => tokio::time::sleep(Duration::from_millis(5)).await,
                    polled @ Poll::Ready(_) => {
                        got.extend_from_slice(&data(polled).expect("a data frame"));
                    }
                }
            }
        })
        .await;
        assert_eq!(waited.expect("the bytes arrive within 5 s"), b"hello");
        assert!(
            !body.buf_shared,
            "the wait holds a piece of the shared buffer"
        );

        upstream.write_all(b"\r\nx\r\n0\r\n\r\n").await.unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                got.extend_from_slice(&frame.expect("no error").into_data().unwrap());
            }
            got
        })
        .await;
        assert_eq!(rest.expect("the body ends within 5 s"), b"x");
    }

    /// Reads until `want` body bytes have come, within 5 s; the largest read size seen
    /// on the way.
    async fn read_body(body: &mut LeanBody, want: usize) -> (Vec<u8>, usize) {
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut got = Vec::new();
            let mut largest = body.read_size;
            while got.len() < want {
                match poll_once(body).await {
                    Poll::Pending => tokio::time::sleep(Duration::from_millis(5)).await,
                    polled @ Poll::Ready(_) => {
                        got.extend_from_slice(&data(polled).expect("a data frame"));
                    }
                }
                largest = largest.max(body.read_size);
            }
            (got, largest)
        })
        .await;
        read.expect("the bytes arrive within 5 s")
    }

    /// A burst grows the reads into buffers of the stream's own; once a read leaves
    /// room, the next event is read into the worker's shared buffer again.
    #[tokio::test]
    async fn after_a_burst_the_reads_go_back_to_the_shared_buffer() {
        let (mut body, mut upstream) = connected_body().await;
        let burst = vec![b'x'; 4 * SHARED_READ_BUFFER];
        let mut wire = format!("{:x}\r\n", burst.len()).into_bytes();
        wire.extend_from_slice(&burst);
        wire.extend_from_slice(b"\r\n");
        upstream.write_all(&wire).await.unwrap();
        let (got, largest) = read_body(&mut body, burst.len()).await;
        assert_eq!(got, burst);
        assert!(largest > FIRST_READ, "the burst's reads grew");

        upstream.write_all(b"5\r\nhello\r\n").await.unwrap();
        let (got, _) = read_body(&mut body, 5).await;
        assert_eq!(got, b"hello");
        assert_eq!(body.read_size, FIRST_READ, "the next burst starts shared");
    }
}
