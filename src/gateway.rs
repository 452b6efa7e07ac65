//! The composition root: from a validated config to a listening gateway, and from a
//! new config to a swapped one.
//!
//! Starts the demo upstream when a config uses it, builds one client per upstream and
//! the route table, binds the public listener (HTTP/1.1 and h2c prior knowledge) and
//! the admin listener. Startup and reload share one path, [`Gateway::apply`]: a config
//! becomes a [`Generation`] that is swapped in atomically for new requests, while
//! requests already running keep the generation they started with. The only file that
//! knows every other module.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::{GatewayConfig, UpstreamTarget};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;
use crate::upstream::demo::DemoServer;
use crate::upstream::{TlsError, Upstream};

/// A client has this long to send its first byte, and then this long to send its
/// request headers; slow-loris connections are closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After an accept error (out of file descriptors, most often) wait this long before
/// accepting again, instead of spinning or exiting.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Once the drain time is over and streams were told to end, how long they get to
/// write their last frames before the gateway stops anyway.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// After the drain, how long a scraped gateway waits for the scrape that carries the
/// drain's outcomes (the Kubernetes example's grace period leaves this much room).
const FINAL_SCRAPE_WAIT: Duration = Duration::from_secs(10);

/// Why the gateway could not start, or a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (admin): {source}")]
    BindAdmin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the demo upstream: {0}")]
    Demo(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// One config, compiled for serving.
#[derive(Debug)]
pub struct Generation {
    pub config: Arc<GatewayConfig>,
    pub proxy: Arc<Proxy>,
}

/// What outlives a generation: metrics, the demo server, the shutdown signal.
#[derive(Debug)]
pub struct Gateway {
    metrics: Arc<Metrics>,
    current: watch::Sender<Arc<Generation>>,
    config: watch::Sender<Arc<GatewayConfig>>,
    demo: Mutex<Option<DemoServer>>,
    /// Fired when the drain time has run out: supervised streams end with `shutdown`.
    shutdown: Shutdown,
}

impl Gateway {
    /// Compiles `config` into a generation and swaps it in for new requests.
    ///
    /// The first call (startup) and every reload go through here, so a reload is
    /// exercised by every start.
    pub async fn apply(&self, config: GatewayConfig) -> Result<(), StartError> {
        let proxy = Arc::new(self.build_proxy(&config).await?);
        let config = Arc::new(config);
        self.config.send_replace(config.clone());
        self.current
            .send_replace(Arc::new(Generation { config, proxy }));
        Ok(())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.config.borrow().clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn build_proxy(&self, config: &GatewayConfig) -> Result<Proxy, StartError> {
        let demo_interval = config.upstreams.values().find_map(|u| match u.target {
            UpstreamTarget::Demo { token_interval } => Some(token_interval),
            UpstreamTarget::Url { .. } => None,
        });
        // One demo server for the process: started by the first config that uses it,
        // kept across reloads (its pace is the first config's).
        let demo_origin = match demo_interval {
            None => None,
            Some(interval) => {
                let mut demo = self.demo.lock().await;
                if demo.is_none() {
                    *demo = Some(
                        DemoServer::start(interval)
                            .await
                            .map_err(StartError::Demo)?,
                    );
                }
                demo.as_ref().map(DemoServer::origin)
            }
        };
        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let upstream = Upstream::new(upstream, demo_origin.as_deref())?;
            upstreams.insert(name.clone(), Arc::new(upstream));
        }
        Ok(Proxy::new(
            config,
            &upstreams,
            &self.metrics,
            self.shutdown.clone(),
        ))
    }
}

/// A running gateway. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    admin: Arc<AdminState>,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The public listener's address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Drains and stops: `/readyz` turns 503 and no new connection is accepted; open
    /// requests get `drain` to finish; then supervised streams still open are ended at
    /// an event boundary with outcome `shutdown`. If Prometheus scrapes this gateway,
    /// the admin listener then waits for one more scrape (up to 10 s) so the drain's
    /// outcomes are not lost, and the call returns.
    pub async fn shutdown(mut self, drain: Duration) {
        self.admin.ready.store(false, Ordering::Release);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(drain);
        }
        let _ = (&mut self.task).await;
        self.admin.final_scrape(FINAL_SCRAPE_WAIT).await;
    }
}

/// Binds the listeners and starts serving `config`.
pub async fn start(config: GatewayConfig) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr, admin: bool| async move {
        let listener = TcpListener::bind(addr).await;
        let listener = listener.and_then(|l| Ok((l.local_addr()?, l)));
        listener.map_err(|source| match admin {
            false => StartError::Bind { addr, source },
            true => StartError::BindAdmin { addr, source },
        })
    };
    let (local_addr, listener) = bind(config.listen, false).await?;
    let (admin_addr, admin_listener) = bind(config.admin_listen, true).await?;

    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let empty = Arc::new(GatewayConfig::empty());
    let placeholder = Arc::new(Generation {
        proxy: Arc::new(Proxy::new(
            &empty,
            &BTreeMap::new(),
            &metrics,
            shutdown.clone(),
        )),
        config: empty.clone(),
    });
    let gateway = Arc::new(Gateway {
        metrics: metrics.clone(),
        current: watch::channel(placeholder).0,
        config: watch::channel(empty).0,
        demo: Mutex::new(None),
        shutdown,
    });
    let routes = config.routes.len();
    gateway.apply(config).await?;
    tracing::info!(listen = %local_addr, admin = %admin_addr, routes, "gateway listening");

    let admin = Arc::new(AdminState::new(metrics, gateway.config.subscribe()));
    admin::serve(admin_listener, admin.clone());

    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, gateway.clone(), stop_rx));
    Ok(Running {
        local_addr,
        admin_addr,
        gateway,
        admin,
        stop: Some(stop_tx),
        task,
    })
}

/// The server side of both protocols, configured once and shared by every connection.
#[derive(Debug)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

fn connection_builders() -> Arc<Builders> {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    Arc::new(Builders { http1, http2 })
}

async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let builders = connection_builders();
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain starts: connections that have sent nothing yet close.
    let draining = CancellationToken::new();
    let current = gateway.current.subscribe();
    let drain = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The watcher is taken now, so a drain that starts while the first
                    // bytes are awaited still reaches the connection.
                    let watcher = graceful.watcher();
                    let draining = draining.clone();
                    serve_connection(&builders, watcher, draining, stream, peer, current.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            drain = &mut stop => break drain.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    draining.cancel();
    tracing::info!(drain = ?drain, "draining: no new connections; open streams may finish");
    // Idle keep-alive connections close now; busy ones after their response.
    let mut all_closed = pin!(graceful.shutdown());
    if tokio::time::timeout(drain, &mut all_closed).await.is_ok() {
        return;
    }
    tracing::warn!("drain time over: ending the remaining streams with outcome shutdown");
    gateway.shutdown.fire();
    if tokio::time::timeout(SHUTDOWN_FLUSH, all_closed)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain; closing them");
    }
}

fn serve_connection(
    builders: &Arc<Builders>,
    watcher: Watcher,
    draining: CancellationToken,
    stream: TcpStream,
    peer: SocketAddr,
    current: watch::Receiver<Arc<Generation>>,
) {
    // Events are small and latency matters more than packet count.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        // The generation is taken once per request: a reload never changes the
        // rules of a request, or a stream, already running.
        let proxy = current.borrow().proxy.clone();
        // Boxed: hyper keeps the slot of a request's future as long as the
        // connection; this box is freed once the response head is out, so an open
        // stream does not keep the routing and forwarding state (~2 KB).
        Box::pin(async move { Ok::<_, Infallible>(proxy.serve(request, peer).await) })
    });
    let builders = builders.clone();
    tokio::spawn(async move {
        let protocol = tokio::select! {
            sniffed = tokio::time::timeout(HEADER_READ_TIMEOUT, sniff(&stream)) => sniffed,
            () = draining.cancelled() => return,
        };
        drop(draining);
        let io = TokioIo::new(stream);
        let ended = match protocol {
            Ok(Ok(Some(Protocol::Http1))) => {
                let connection = builders.http1.serve_connection(io, service);
                watcher.watch(connection).await
            }
            Ok(Ok(Some(Protocol::Http2))) => {
                let connection = builders.http2.serve_connection(io, service);
                // Boxed, so that this task is sized for an HTTP/1 connection.
                Box::pin(watcher.watch(connection)).await
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
    });
}

/// The first bytes of an h2c connection (HTTP/2 with prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again when the bytes so far are only a part of
/// the HTTP/2 preface (a client that splits it, which is rare).
const PREFACE_RETRY: Duration = Duration::from_millis(5);

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
        tokio::time::sleep(PREFACE_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
