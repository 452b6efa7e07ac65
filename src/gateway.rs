//! The composition root: from a validated config to a listening gateway.
//!
//! Starts the demo upstream when a config uses it, builds one client per upstream and
//! the route table, binds the public listener (HTTP/1.1 and h2c prior knowledge) and
//! the admin listener. The only file that knows every other module.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{GatewayConfig, UpstreamTarget};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::upstream::demo::DemoServer;
use crate::upstream::Upstream;

/// A client has this long to send its request headers; slow-loris connections are
/// closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After an accept error (out of file descriptors, most often) wait this long before
/// accepting again, instead of spinning or exiting.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why the gateway could not start.
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
    Tls(#[from] crate::upstream::TlsError),
}

/// A running gateway. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
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

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.admin.metrics
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then returns.
    pub async fn shutdown(mut self, grace: Duration) {
        self.admin.ready.store(false, Ordering::Release);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts serving `config`.
pub async fn start(config: GatewayConfig) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(build_proxy(&config, &metrics).await?);
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
    tracing::info!(listen = %local_addr, admin = %admin_addr, routes = config.routes.len(), "gateway listening");

    let (_config_tx, config_rx) = watch::channel(Arc::new(config));
    let admin = Arc::new(AdminState {
        metrics,
        config: config_rx,
        ready: true.into(),
    });
    admin::serve(admin_listener, admin.clone());

    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, proxy, stop_rx));
    Ok(Running {
        local_addr,
        admin_addr,
        admin,
        stop: Some(stop_tx),
        task,
    })
}

async fn build_proxy(config: &GatewayConfig, metrics: &Arc<Metrics>) -> Result<Proxy, StartError> {
    // One demo server serves every demo upstream; the first one's pace is used.
    let demo_interval = config.upstreams.values().find_map(|u| match u.target {
        UpstreamTarget::Demo { token_interval } => Some(token_interval),
        UpstreamTarget::Url { .. } => None,
    });
    let demo_origin = match demo_interval {
        Some(interval) => Some(
            DemoServer::start(interval)
                .await
                .map_err(StartError::Demo)?
                .origin(),
        ),
        None => None,
    };
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
        let upstream = Upstream::new(upstream, demo_origin.as_deref())?;
        upstreams.insert(name.clone(), Arc::new(upstream));
    }
    Ok(Proxy::new(config, &upstreams, metrics))
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let builder = connection_builder();
    let graceful = GracefulShutdown::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(&builder, &graceful, stream, peer, proxy.clone()),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) {
    // Events are small and latency matters more than packet count.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.serve(request, peer).await) }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    });
}
