//! Serving connections, for the public and the admin listener alike: the accept loop
//! with its backoff, telling HTTP/1 from h2c, and the deadlines every connection
//! lives under.
//!
//! Both listeners face the same abuse (connections that send nothing, half a request
//! head, or nothing after the HTTP/2 preface), so both get their defences from here,
//! whatever the protocol: a client has `header_read_timeout` from connecting to
//! complete its first request's head, and a connection with no request in flight is
//! closed after `idle_timeout`. hyper has a header deadline for HTTP/1 only; the
//! deadlines here hold for h2c too. The drain closes connections through here as well.

mod activity;
mod signal;
mod slots;
mod stall;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use activity::ClientConnection;
use activity::{Activity, Counter, Tracked};
use signal::Signal;
use slots::{Admitted, Slots};

/// The deadlines and the cap connections live under. The defaults are what the
/// gateway runs with; they are not operator settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From connecting, how long a client has to complete its first request's head
    /// (HTTP/1 request line and headers; h2c preface, SETTINGS and a HEADERS frame).
    /// hyper applies it to every later HTTP/1 request head too, counted from the
    /// previous response: for HTTP/1 it is also the keep-alive timeout.
    pub header_read_timeout: Duration,
    /// After its last response, how long a connection with no request in flight
    /// stays open (for h2c: no open stream). As long as the HTTP/1 keep-alive
    /// timeout above, so both protocols behave alike.
    pub idle_timeout: Duration,
    /// At most this many admin connections are open at once.
    pub admin_max_connections: usize,
    /// How long bytes sent to a client may go unacknowledged before its connection is
    /// closed: a client gone without a FIN or RST (a phone off the network, a laptop
    /// closed) or one that reads nothing. NGINX's `send_timeout` has the same 60 s.
    /// Without it such a connection holds its stream, and on a resumable route the
    /// upstream, until the kernel gives up retransmitting, about 15 minutes later. Set
    /// as `TCP_USER_TIMEOUT` (Linux; elsewhere the kernel's own limit holds).
    pub send_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            admin_max_connections: 64,
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// After an accept error (out of file descriptors, most often) wait this long before
/// accepting again, instead of spinning or exiting.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A connection asked to close (idle, or draining) with nothing in flight gets this
/// long to close on its own (an h2c client acknowledges the GOAWAY) before it is
/// dropped; a client that never answers does not keep it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A listening socket whose accept errors are waited out and logged once per run of
/// errors, not once per attempt.
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: TcpListener,
    name: &'static str,
    failures: u64,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            name,
            failures: 0,
        }
    }

    /// The next connection; never fails.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failures = self.failures,
                            "accepting again"
                        );
                        self.failures = 0;
                    }
                    return accepted;
                }
                Err(error) => {
                    if self.failures == 0 {
                        tracing::warn!(listener = self.name, %error, "accept failed; retrying every 100ms");
                    }
                    self.failures += 1;
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }
}

/// The server side of both protocols, configured once and shared by every connection.
#[derive(Debug)]
struct Builders {
    http1: http1::Builder,
    /// `None`: h2c is not served (the admin listener).
    http2: Option<http2::Builder<TokioExecutor>>,
}

/// The connections of one listener: how they are served, how many are open, and the
/// drain that closes them.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    builders: Builders,
    limits: ConnectionLimits,
    open: watch::Sender<usize>,
    draining: Signal,
    slots: Option<Arc<Slots>>,
}

impl Connections {
    /// `cap`: at most this many open at once (the oldest idle one makes room).
    pub(crate) fn new(limits: ConnectionLimits, cap: Option<usize>) -> Connections {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Connections::with(limits, cap, Some(http2))
    }

    /// As [`Connections::new`], HTTP/1 only. Probes and scrapers speak HTTP/1.1, and an
    /// h2 client that grants no flow-control window would hold its connection busy
    /// (and out of the cap's eviction) for as long as it likes.
    pub(crate) fn http1_only(limits: ConnectionLimits, cap: Option<usize>) -> Connections {
        Connections::with(limits, cap, None)
    }

    fn with(
        limits: ConnectionLimits,
        cap: Option<usize>,
        http2: Option<http2::Builder<TokioExecutor>>,
    ) -> Connections {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        Connections {
            inner: Arc::new(Inner {
                builders: Builders { http1, http2 },
                limits,
                open: watch::channel(0).0,
                draining: Signal::default(),
                slots: cap.map(|cap| Arc::new(Slots::new(cap))),
            }),
        }
    }

    /// Asks every connection to close: idle ones at once, busy ones after their
    /// responses (HTTP/1) or open streams (h2c).
    pub(crate) fn start_draining(&self) {
        self.inner.draining.fire();
    }

    /// Resolves once no connection is open.
    pub(crate) async fn all_closed(&self) {
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Serves one accepted connection on its own task.
    pub(crate) fn serve<S, B>(&self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let accepted = Instant::now();
        // Events are small and latency matters more than packet count.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        set_send_timeout(&stream, self.inner.limits.send_timeout);
        let (activity, counter) = Activity::new();
        let admitted = match &self.inner.slots {
            None => None,
            Some(slots) => {
                if let Some(admitted) = slots.admit(activity.clone()) {
                    Some(admitted)
                } else {
                    tracing::debug!(%peer, "every connection busy; refusing one");
                    return;
                }
            }
        };
        // Counted now, so a drain that starts while the first bytes are awaited
        // waits for this connection too.
        self.inner.open.send_modify(|n| *n += 1);
        let evicted = admitted.as_ref().map(|a| a.evicted.clone());
        let open = Open {
            inner: self.inner.clone(),
            admitted,
        };
        // The future is spawned as it is: wrapped in an `async` block that awaits it,
        // the task would hold it twice (the block keeps the moved-from future's
        // storage beside the one it polls), ~2.4 KB more per open connection.
        let activity = (activity, counter);
        tokio::spawn(serve(
            open, stream, peer, service, activity, accepted, evicted,
        ));
    }
}

/// Bounds how long a client's unacknowledged bytes may wait (`send_timeout`): the
/// kernel then fails the connection's next write or wait, and hyper ends it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_send_timeout(stream: &TcpStream, timeout: Duration) {
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_send_timeout(_stream: &TcpStream, _timeout: Duration) {}

/// One open connection, as the listener counts it: uncounted, and its place under
/// the cap freed, when dropped (the connection's end, or its task's).
struct Open {
    inner: Arc<Inner>,
    admitted: Option<Admitted>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // The place under the cap, then the count a drain waits on.
        drop(self.admitted.take());
        self.inner.open.send_modify(|n| *n -= 1);
    }
}

async fn serve<S, B>(
    open: Open,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    (activity, counter): (Arc<Activity>, Counter),
    accepted: Instant,
    evicted: Option<Arc<Signal>>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let inner = &*open.inner;
    // A listener without a cap evicts nothing: a signal never fired.
    let evicted = evicted.unwrap_or_default();
    let protocol = tokio::select! {
        sniffed = tokio::time::timeout(inner.limits.header_read_timeout, sniff(&stream)) => sniffed,
        () = inner.draining.fired() => return,
        () = evicted.fired() => return,
    };
    let watch = Watch {
        seen: activity.changes(),
        activity: &activity,
        limits: inner.limits,
        accepted,
        draining: &inner.draining,
        evicted: &evicted,
        peer,
    };
    let io = TokioIo::new(stream);
    let service = Tracked {
        inner: service,
        activity: counter,
        closable: matches!(protocol, Ok(Ok(Some(Protocol::Http1)))),
        stall_after: matches!(protocol, Ok(Ok(Some(Protocol::Http2))))
            .then_some(inner.limits.send_timeout),
    };
    let ended = match protocol {
        Ok(Ok(Some(Protocol::Http1))) => {
            let connection = pin!(inner.builders.http1.serve_connection(io, service));
            watch
                .drive(
                    connection,
                    hyper::server::conn::http1::Connection::graceful_shutdown,
                    BodiesPolled::Inside,
                )
                .await
        }
        Ok(Ok(Some(Protocol::Http2))) => {
            let Some(http2) = &inner.builders.http2 else {
                tracing::debug!(%peer, "h2c is not served on this listener; closing");
                return;
            };
            // Boxed, so that this task is sized for an HTTP/1 connection.
            let mut connection = Box::pin(http2.serve_connection(io, service));
            watch
                .drive(
                    connection.as_mut(),
                    hyper::server::conn::http2::Connection::graceful_shutdown,
                    BodiesPolled::Apart,
                )
                .await
        }
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no byte within the header read timeout; closing");
            return;
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Where hyper polls a connection's response bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodiesPolled {
    /// Inside the connection's own poll (HTTP/1): the connection counts its polls,
    /// so that a body need not be asked twice in one (see `activity`).
    Inside,
    /// On tasks of their own (h2, one per stream).
    Apart,
}

/// What one connection's deadlines watch.
struct Watch<'a> {
    activity: &'a Activity,
    /// The activity's changes this watch has acted on.
    seen: u64,
    limits: ConnectionLimits,
    accepted: Instant,
    draining: &'a Signal,
    evicted: &'a Signal,
    peer: SocketAddr,
}

impl Watch<'_> {
    /// Runs `connection` to its end, closing it when it has had no request in flight
    /// for too long, and gracefully when the drain starts. `graceful` asks hyper to
    /// close after what is in flight.
    ///
    /// The connection is pinned by the caller: an `async fn` keeps its arguments'
    /// storage for its whole life, so one pinned here again would be held twice.
    async fn drive<C>(
        mut self,
        mut connection: Pin<&mut C>,
        graceful: impl Fn(Pin<&mut C>),
        bodies: BodiesPolled,
    ) -> Result<(), hyper::Error>
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        let activity = self.activity;
        let count_polls = bodies == BodiesPolled::Inside;
        // Until the first request, the header deadline; after it, the idle timeout.
        let mut allowed = self.limits.header_read_timeout;
        let mut idle_since = Some(self.accepted);
        let mut closing = false;
        loop {
            let deadline = idle_since.map(|since| since + allowed);
            // In order, without the random start: polled on every event, and the
            // branches are never ready together in a way that starves one.
            tokio::select! {
                biased;
                ended = poll_fn(|cx| poll_counted(connection.as_mut(), activity, count_polls, cx)) => return ended,
                () = self.evicted.fired(), if !closing => {
                    // Chosen because no request was in flight, which is not to say that
                    // none had come: one may be in the socket, not yet seen by the
                    // runtime (the accept ran first), or read since on another worker;
                    // and a response's last bytes may still be in hyper's buffer (a
                    // body is dropped once hyper has taken it, not once it is written).
                    // So the task yields (tokio wakes it again after polling for I/O
                    // events) and hyper reads what came before it is asked to close, as
                    // at the idle deadline: it answers what it has read, writes out what
                    // it holds, then closes. A request sent after that meets a closed
                    // connection, as one sent at the idle deadline does.
                    tokio::task::yield_now().await;
                    let polled = poll_fn(|cx| {
                        Poll::Ready(poll_counted(connection.as_mut(), activity, count_polls, cx))
                    });
                    if let Poll::Ready(ended) = polled.await {
                        return ended;
                    }
                    tracing::debug!(peer = %self.peer, "closing an idle connection to make room");
                    graceful(connection.as_mut());
                    closing = true;
                    allowed = CLOSE_GRACE;
                    idle_since = idle_since.map(|_| Instant::now());
                }
                () = self.draining.fired(), if !closing => {
                    graceful(connection.as_mut());
                    closing = true;
                    allowed = CLOSE_GRACE;
                    idle_since = idle_since.map(|_| Instant::now());
                }
                () = self.activity.change_after(self.seen) => {
                    self.seen = self.activity.changes();
                    if self.activity.is_close_asked() {
                        tracing::debug!(peer = %self.peer, "closing: a resume on another connection took its stream over");
                        return Ok(());
                    }
                    if self.activity.has_ended() {
                        // The service is gone: hyper is finishing the connection.
                        idle_since = None;
                        continue;
                    }
                    if self.activity.is_idle() {
                        idle_since = Some(Instant::now());
                    } else {
                        idle_since = None;
                        if !closing {
                            allowed = self.limits.idle_timeout;
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    if closing {
                        return Ok(());
                    }
                    tracing::debug!(peer = %self.peer, ?allowed, "no request in flight for too long; closing");
                    graceful(connection.as_mut());
                    closing = true;
                    allowed = CLOSE_GRACE;
                    idle_since = Some(Instant::now());
                }
            }
        }
    }
}

/// Polls `connection`, counting the poll first where bodies are polled inside it.
fn poll_counted<C: Future>(
    connection: Pin<&mut C>,
    activity: &Activity,
    count_polls: bool,
    cx: &mut std::task::Context<'_>,
) -> Poll<C::Output> {
    if count_polls {
        activity.polled();
    }
    connection.poll(cx)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Accepts connections on `acceptor` and serves each with the service `make`
/// builds for its peer, until `stop` resolves; then the listening socket closes.
pub(crate) async fn accept_until<S, B>(
    mut acceptor: Acceptor,
    connections: Connections,
    make: impl Fn(SocketAddr) -> S,
    stop: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => connections.serve(stream, peer, make(peer)),
            () = &mut stop => return,
        }
    }
}

/// The first bytes of an h2c connection (HTTP/2 with prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again when the bytes so far are only a part of
/// the HTTP/2 preface (a client that splits it, which is rare), at first; each look
/// that finds no more doubles it, up to [`PREFACE_RETRY_MAX`]. A peek does not take
/// the bytes, so the socket stays readable: without the growing wait, a client that
/// sends one byte of the preface and stops would cost a look every few milliseconds
/// until the header deadline.
const PREFACE_RETRY: Duration = Duration::from_millis(5);
const PREFACE_RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Tells HTTP/1 from h2c by the first bytes, without taking them from the socket.
///
/// Left in the socket, the bytes reach hyper's first read together with the rest of
/// the request head, in one 8 KiB read buffer. (Read first and handed back, as
/// hyper-util's auto builder does, they make hyper grow that buffer to 16 KiB, and
/// every open stream keeps it.) `None`: the client closed without sending a byte.
async fn sniff(stream: &TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut retry = PREFACE_RETRY;
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        // A peek now would return the same bytes at once: give the rest time to come.
        retry = next_preface_retry(retry, n > seen);
        seen = n;
        tokio::time::sleep(retry).await;
    }
}

/// The wait before the next look at a split preface: the first again when the last
/// look found more bytes, else twice the last, up to [`PREFACE_RETRY_MAX`].
fn next_preface_retry(last: Duration, grew: bool) -> Duration {
    if grew {
        PREFACE_RETRY
    } else {
        (last * 2).min(PREFACE_RETRY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preface_that_stops_coming_is_looked_at_less_and_less_often() {
        let mut wait = PREFACE_RETRY;
        let mut looks_in_30s = 0;
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(30) {
            wait = next_preface_retry(wait, false);
            waited += wait;
            looks_in_30s += 1;
        }
        // Every 5 ms, it would be 6,000.
        assert!(looks_in_30s < 50, "{looks_in_30s}");
        assert_eq!(next_preface_retry(PREFACE_RETRY_MAX, true), PREFACE_RETRY);
    }
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the client's end and the accepted end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn sniff_tells_http1_from_h2c_and_leaves_the_bytes() {
        let (mut client, accepted) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff(&accepted).await.unwrap(), Some(Protocol::Http1));
        let mut first = [0u8; 3];
        accepted.peek(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");

        let (mut client, accepted) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        assert_eq!(sniff(&accepted).await.unwrap(), Some(Protocol::Http2));
    }

    #[tokio::test]
    async fn sniff_waits_out_a_split_preface_or_a_split_method() {
        let (mut client, accepted) = pair().await;
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let sniffing = tokio::spawn(async move { sniff(&accepted).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        assert_eq!(sniffing.await.unwrap(), Some(Protocol::Http2));

        let (mut client, accepted) = pair().await;
        client.write_all(b"P").await.unwrap();
        let sniffing = tokio::spawn(async move { sniff(&accepted).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniffing.await.unwrap(), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn sniff_sees_a_client_that_closes_without_a_byte() {
        let (client, accepted) = pair().await;
        drop(client);
        assert_eq!(sniff(&accepted).await.unwrap(), None);
    }
}
