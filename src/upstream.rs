//! Upstreams: a pooled HTTP/1.1 + HTTP/2 (ALPN) client per upstream, with connect and
//! response-header timeouts, and failures sorted into what a client should be told.
//!
//! One client per upstream, because the connect timeout is a property of the connector;
//! the pool inside it reuses keep-alive connections across requests. Event streams to a
//! plain-HTTP upstream take a connection of their own instead (`dedicated.rs`).

mod dedicated;
pub mod demo;

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::config::{UpstreamConfig, UpstreamTarget};
use crate::reply::ErrorType;

pub use dedicated::UpstreamIncoming;

/// The body of an upstream request: the client's, streamed within the route's
/// `max_body_size`, or one the gateway made (`query_as_json`).
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// How long an idle pooled connection is kept; below the common 60 s of upstream
/// servers and load balancers, so the gateway closes first and never reuses a
/// connection the other side is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle keep-alive connections kept per upstream: enough to absorb the next burst,
/// and a bound on the sockets a burst of thousands of streams leaves behind.
pub const POOL_MAX_IDLE: usize = 64;

/// A configured upstream, ready to send requests.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    /// `scheme://authority`
    origin: String,
    /// Where a dedicated connection goes: `host:port` of a plain-HTTP upstream; `None`
    /// for HTTPS, whose streams use the pool.
    plain_http: Option<String>,
    base_path: String,
    connect_timeout: Duration,
    header_timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

/// Why an upstream request failed before its response headers arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {upstream}: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} did not accept a connection within {after:?}")]
    ConnectTimeout { upstream: String, after: Duration },
    #[error("upstream {upstream} sent no response headers within {after:?}")]
    HeaderTimeout { upstream: String, after: Duration },
    #[error("upstream {upstream} failed: {reason}")]
    Failed { upstream: String, reason: String },
    /// The client's body outgrew the route's `max_body_size` while it was streamed up.
    #[error("the request body is larger than the route allows")]
    RequestBodyTooLarge,
}

impl UpstreamError {
    /// What the client is told.
    pub fn error_type(&self) -> ErrorType {
        match self {
            UpstreamError::Connect { .. } => ErrorType::UpstreamUnavailable,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::HeaderTimeout { .. } => {
                ErrorType::UpstreamTimeout
            }
            UpstreamError::Failed { .. } => ErrorType::UpstreamError,
            UpstreamError::RequestBodyTooLarge => ErrorType::PayloadTooLarge,
        }
    }

    /// A fixed label value for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::HeaderTimeout { .. } => "header_timeout",
            UpstreamError::Failed { .. } => "failed",
            UpstreamError::RequestBodyTooLarge => "request_body",
        }
    }

    /// The client caused it, not the upstream: not an upstream error to count.
    pub fn is_client_fault(&self) -> bool {
        matches!(self, UpstreamError::RequestBodyTooLarge)
    }

    pub fn is_timeout(&self) -> bool {
        self.error_type() == ErrorType::UpstreamTimeout
    }
}

impl Upstream {
    /// Builds the client for `config`; a demo upstream is reached at `demo_origin`
    /// (`http://127.0.0.1:PORT` of the running demo server).
    pub fn new(config: &UpstreamConfig, demo_origin: Option<&str>) -> Result<Upstream, TlsError> {
        let (origin, base_path, ca_file) = match &config.target {
            UpstreamTarget::Url {
                uri,
                base_path,
                ca_file,
            } => {
                let scheme = uri.scheme_str().unwrap_or("http");
                let authority = uri.authority().map_or("", |a| a.as_str());
                (
                    format!("{scheme}://{authority}"),
                    base_path.clone(),
                    ca_file.as_deref(),
                )
            }
            UpstreamTarget::Demo { .. } => (
                demo_origin.unwrap_or("http://127.0.0.1:9").to_owned(),
                String::new(),
                None,
            ),
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
            .build(https);
        let plain_http = origin
            .strip_prefix("http://")
            .and_then(|authority| authority.parse::<http::uri::Authority>().ok())
            .map(|authority| {
                let port = authority.port_u16().unwrap_or(80);
                format!("{}:{port}", authority.host())
            });
        Ok(Upstream {
            name: config.name.clone(),
            plain_http,
            origin,
            base_path,
            connect_timeout: config.connect_timeout,
            header_timeout: config.header_timeout,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The absolute URI for an upstream path (which starts with `/`) and query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut uri = String::with_capacity(
            self.origin.len()
                + self.base_path.len()
                + path.len()
                + query.map_or(0, |q| q.len() + 1),
        );
        uri.push_str(&self.origin);
        uri.push_str(&self.base_path);
        uri.push_str(path);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        Ok(Uri::try_from(uri)?)
    }

    /// Sends a request on a pooled connection and waits for the response headers,
    /// within `header_timeout`.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        match tokio::time::timeout(self.header_timeout, self.client.request(request)).await {
            Err(_) => Err(self.header_timeout_error()),
            Ok(Ok(response)) => Ok(response.map(UpstreamIncoming::pooled)),
            Ok(Err(error)) => Err(self.classify(&error)),
        }
    }

    /// Sends a request whose response is expected to be a long stream: on a connection
    /// of its own, driven by the response body (`dedicated.rs`), for a plain-HTTP
    /// upstream; pooled for HTTPS. Same timeouts and errors as [`send`](Upstream::send).
    pub async fn send_for_stream(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let Some(address) = &self.plain_http else {
            return self.send(request).await;
        };
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Err(_) => {
                    return Err(UpstreamError::ConnectTimeout {
                        upstream: self.name.clone(),
                        after: self.connect_timeout,
                    })
                }
                Ok(Err(error)) => {
                    return Err(UpstreamError::Connect {
                        upstream: self.name.clone(),
                        reason: error.to_string(),
                    })
                }
                Ok(Ok(tcp)) => tcp,
            };
        // Every event is its own small write upstream of us too: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        match tokio::time::timeout(self.header_timeout, dedicated::send(tcp, request)).await {
            Err(_) => Err(self.header_timeout_error()),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if causes(&error).any(|c| c.is::<LengthLimitError>()) => {
                Err(UpstreamError::RequestBodyTooLarge)
            }
            Ok(Err(error)) => Err(UpstreamError::Failed {
                upstream: self.name.clone(),
                reason: deepest_cause(&error),
            }),
        }
    }

    fn header_timeout_error(&self) -> UpstreamError {
        UpstreamError::HeaderTimeout {
            upstream: self.name.clone(),
            after: self.header_timeout,
        }
    }

    fn classify(&self, error: &hyper_util::client::legacy::Error) -> UpstreamError {
        if causes(error).any(|cause| cause.is::<LengthLimitError>()) {
            return UpstreamError::RequestBodyTooLarge;
        }
        let upstream = self.name.clone();
        let io_kind = causes(error)
            .find_map(|cause| cause.downcast_ref::<io::Error>())
            .map(io::Error::kind);
        if error.is_connect() {
            if io_kind == Some(io::ErrorKind::TimedOut) {
                // HttpConnector reports its own connect timeout as TimedOut.
                return UpstreamError::ConnectTimeout {
                    upstream,
                    after: self.connect_timeout,
                };
            }
            return UpstreamError::Connect {
                upstream,
                reason: deepest_cause(error),
            };
        }
        UpstreamError::Failed {
            upstream,
            reason: deepest_cause(error),
        }
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
        let fail = |reason: String| TlsError::CaFile {
            upstream: upstream.to_owned(),
            file: file.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(file).map_err(|e| fail(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| fail(e.to_string()))?;
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(fail("no PEM certificate in it".to_owned()));
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The error and its chain of sources.
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The most specific message in an error chain ("connection refused" rather than
/// "client error (Connect)").
fn deepest_cause(error: &(dyn StdError + 'static)) -> String {
    causes(error)
        .last()
        .map_or_else(|| error.to_string(), |cause| cause.to_string())
}
