//! Upstreams: a pooled HTTP/1.1 + HTTP/2 (ALPN) client per upstream, with connect and
//! response-header timeouts, and failures sorted into what a client should be told.
//!
//! One client per upstream, because the connect timeout is a property of the connector;
//! the pool inside it reuses keep-alive connections across requests. Event streams to a
//! plain-HTTP upstream take a connection of their own instead, read without hyper's
//! client (`lean.rs`).

mod budget;
mod client_body;
pub(crate) mod demo;
mod early_answer;
mod endpoints;
mod error;
mod failover;
mod health;
mod incoming;
mod lean;
pub mod response_decoder;
mod reuse;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::config::{EndpointConfig, UpstreamConfig, UpstreamTarget};
use error::{causes, BoxError};
use reuse::{Answered, Tracking};

pub(crate) use budget::{BudgetGeneration, RetryBudget, RetryBudgets};
pub(crate) use client_body::{BodyProgress, ClientBody, ClientBodyError};
pub(crate) use endpoints::{Endpoints, Tried};
pub(crate) use error::{ClientErrorKind, Fault, UpstreamError, UpstreamErrorKind};
pub(crate) use failover::Failure;
pub(crate) use health::{HealthBook, HealthGeneration};
pub(crate) use incoming::UpstreamIncoming;

/// The body of an upstream request: the client's, streamed within the route's
/// `max_body_size` and `body_timeout`, or one the gateway made (`query_as_json`).
pub(crate) type UpstreamBody = Either<ClientBody, Full<Bytes>>;

/// How long an idle pooled connection is kept; below the common 60 s of upstream
/// servers and load balancers, so the gateway closes first and never reuses a
/// connection the other side is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle keep-alive connections kept per upstream: enough to absorb the next burst,
/// and a bound on the sockets a burst of thousands of streams leaves behind.
pub const POOL_MAX_IDLE: usize = 64;

/// A configured upstream, ready to send requests.
#[derive(Debug)]
pub(crate) struct Upstream {
    name: String,
    /// Where requests go, and the health of each place (`endpoints.rs`).
    endpoints: Endpoints,
    connect_timeout: Duration,
    header_timeout: Duration,
    client: Client<Tracking<HttpsConnector<HttpConnector>>, UpstreamBody>,
}

impl Upstream {
    /// Builds the client for `config`; a demo upstream is reached at `demo_origin`
    /// (`http://127.0.0.1:PORT` of the running demo server). Its endpoints keep the
    /// health they had in the config before, where they are unchanged (`health`).
    pub(crate) fn new(
        config: &UpstreamConfig,
        demo_origin: Option<&str>,
        health: &mut HealthGeneration,
    ) -> Result<Upstream, TlsError> {
        let (endpoints, ca_file) = match &config.target {
            UpstreamTarget::Url { ca_file, .. } => (config.endpoints.clone(), ca_file.as_deref()),
            UpstreamTarget::Demo { token_interval } => {
                let origin = demo_origin.unwrap_or("http://127.0.0.1:9");
                let endpoint = EndpointConfig {
                    name: "default".to_owned(),
                    uri: Uri::try_from(origin)
                        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:9")),
                    // The demo server paces each request as its path says.
                    base_path: demo::base_path(*token_interval),
                };
                (vec![endpoint], None)
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&config.name, ca_file)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Tracking(https));
        Ok(Upstream {
            name: config.name.clone(),
            endpoints: Endpoints::new(
                &config.name,
                &endpoints,
                config.balance,
                config.health,
                health,
            ),
            connect_timeout: config.connect_timeout,
            header_timeout: config.header_timeout,
            client,
        })
    }

    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The absolute URI for an upstream path (which starts with `/`) and query, at
    /// the first endpoint ([`Endpoints::retarget`] aims it at another).
    pub(crate) fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let first = self.endpoints.get(0);
        let mut uri = String::with_capacity(
            first.origin.len()
                + first.base_path.len()
                + path.len()
                + query.map_or(0, |q| q.len() + 1),
        );
        uri.push_str(&first.origin);
        uri.push_str(&first.base_path);
        uri.push_str(path);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        Ok(Uri::try_from(uri)?)
    }

    /// Sends a request on a pooled connection and waits for the response headers,
    /// within `header_timeout`. A request that fails because a reused connection was
    /// closed under it is sent once more, when it may be (`reuse.rs`), within the same
    /// `header_timeout`.
    pub(crate) async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let progress = body_progress(&request);
        let deadline = Instant::now() + self.header_timeout;
        let mut again = reuse::replay(&request);
        loop {
            let captured = again.is_some().then(|| capture_connection(&mut request));
            // Kept until the timeout's verdict is in: it may refuse the rest of the
            // client's body, before the body is let go.
            let sent = std::pin::pin!(self.client.request(request));
            let error = match timeout_at(deadline, sent).await {
                Err(_) => return Err(self.header_timeout_error(progress)),
                Ok(Ok(response)) => {
                    Answered::mark(response.extensions());
                    return self.final_response(response.map(UpstreamIncoming::Pooled));
                }
                Ok(Err(error)) => error,
            };
            let connect = error.is_connect();
            let error: BoxError = error.into();
            let retry = !connect
                && captured.as_ref().is_some_and(Answered::before)
                && reuse::is_closed_connection(&error);
            match again.take() {
                Some(copy) if retry => {
                    tracing::debug!(upstream = %self.name, %error, "a reused connection closed under the request; sending it again");
                    request = copy;
                }
                _ => return Err(self.classify(error, connect)),
            }
        }
    }

    /// Sends a request whose response is expected to be a long stream: on a connection
    /// of its own, read by the response body (`lean.rs`), for a plain-HTTP endpoint;
    /// pooled for HTTPS. Same timeouts and errors as [`send`](Upstream::send).
    /// `endpoint` is where the request's URI points.
    ///
    /// Not an `async fn`, which would keep the request twice in its future while the
    /// head is awaited (see [`attempt`](Upstream::attempt)).
    #[allow(clippy::manual_async_fn)] // Why: in the doc comment above.
    pub(crate) fn send_for_stream(
        &self,
        request: Request<UpstreamBody>,
        endpoint: usize,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + '_ {
        async move {
            let Some(address) = &self.endpoints.get(endpoint).plain_http else {
                return self.send(request).await;
            };
            let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
                .await
            {
                Err(_) => {
                    return Err(UpstreamError::ConnectTimeout {
                        upstream: self.name.clone(),
                        after: self.connect_timeout,
                        source: None,
                    })
                }
                Ok(Err(error)) => return Err(self.classify(error.into(), true)),
                Ok(Ok(tcp)) => tcp,
            };
            // Every event is its own small write upstream of us too: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            let progress = body_progress(&request);
            // Kept until the timeout's verdict is in, as in `send`.
            let mut sent = std::pin::pin!(lean::send(tcp, request));
            match tokio::time::timeout(self.header_timeout, sent.as_mut()).await {
                Err(_) => Err(self.header_timeout_error(progress)),
                Ok(Ok(response)) => self.final_response(response.map(UpstreamIncoming::Lean)),
                Ok(Err(error)) => Err(self.classify(error.into(), false)),
            }
        }
    }

    /// A `1xx` that reaches here is one hyper passed on (a `101`): the gateway never
    /// asks for an upgrade, so it is the upstream breaking the exchange.
    fn final_response(
        &self,
        response: Response<UpstreamIncoming>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        if response.status().is_informational() {
            return Err(UpstreamError::Informational {
                upstream: self.name.clone(),
                status: response.status(),
            });
        }
        Ok(response)
    }

    /// A header timeout while the gateway is still waiting for the client's body is
    /// the client's: the upstream cannot answer a request it has not received.
    fn header_timeout_error(&self, progress: Option<BodyProgress>) -> UpstreamError {
        if let Some(progress) = progress.filter(BodyProgress::waiting_for_client) {
            progress.refuse_rest();
            return UpstreamError::ClientBody {
                kind: ClientErrorKind::BodyTimeout,
                source: Box::new(ClientBodyError::Unfinished(self.header_timeout)),
            };
        }
        UpstreamError::HeaderTimeout {
            upstream: self.name.clone(),
            after: self.header_timeout,
        }
    }

    /// Sorts a failure before the response headers; `connect` is true when it happened
    /// while connecting.
    fn classify(&self, error: BoxError, connect: bool) -> UpstreamError {
        let client = causes(&*error)
            .find_map(|cause| cause.downcast_ref::<ClientBodyError>())
            .map(ClientBodyError::kind);
        if let Some(kind) = client {
            return UpstreamError::ClientBody {
                kind,
                source: error,
            };
        }
        let upstream = self.name.clone();
        if connect {
            let timed_out = causes(&*error)
                .filter_map(|cause| cause.downcast_ref::<io::Error>())
                .any(|cause| cause.kind() == io::ErrorKind::TimedOut);
            if timed_out {
                // HttpConnector reports its own connect timeout as TimedOut.
                return UpstreamError::ConnectTimeout {
                    upstream,
                    after: self.connect_timeout,
                    source: Some(error),
                };
            }
            return UpstreamError::Connect {
                upstream,
                source: error,
            };
        }
        UpstreamError::Failed {
            upstream,
            source: error,
        }
    }
}

/// The client body's progress, when the request streams the client's body.
fn body_progress(request: &Request<UpstreamBody>) -> Option<BodyProgress> {
    match request.body() {
        Either::Left(body) => Some(body.progress()),
        Either::Right(_) => None,
    }
}

/// Why an upstream's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("upstream {upstream}: cannot read CA file {file}: {reason}")]
    CaFile {
        upstream: String,
        file: PathBuf,
        reason: String,
    },
}

/// The public web PKI roots, plus the CA certificates of `ca_file` if given.
fn tls_config(upstream: &str, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = ca_file {
        crate::config::add_ca_file(&mut roots, file).map_err(|reason| TlsError::CaFile {
            upstream: upstream.to_owned(),
            file: file.to_owned(),
            reason,
        })?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
