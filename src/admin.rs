//! The admin listener, apart from the public one so that none of this is reachable by
//! clients of the proxied API:
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 when a config is loaded and the gateway is not draining, else
//!   503 (readiness: take the pod out of the Service before it stops).
//! - `GET /config`: the effective config as JSON, secrets redacted.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::listener::{self, Acceptor, ConnectionLimits, Connections};
use crate::metrics::Metrics;
use crate::protocol::Protocol;
use crate::proxy::Proxy;
use crate::reply::{self, ErrorType};

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: watch::Receiver<Arc<Proxy>>,
    /// False before the first config is serving and once draining has begun.
    pub ready: AtomicBool,
    /// How many times `/metrics` was served, and a wake-up for each time.
    pub scrapes: AtomicU64,
    pub scraped: tokio::sync::Notify,
    /// When `/metrics` was last served: a final scrape is waited for only when
    /// something scrapes this gateway now, not when it did once long ago.
    last_scrape: std::sync::Mutex<Option<Instant>>,
}

impl AdminState {
    pub(crate) fn new(metrics: Arc<Metrics>, config: watch::Receiver<Arc<Proxy>>) -> AdminState {
        AdminState {
            metrics,
            config,
            ready: AtomicBool::new(true),
            scrapes: AtomicU64::new(0),
            scraped: tokio::sync::Notify::new(),
            last_scrape: std::sync::Mutex::new(None),
        }
    }

    /// Whether `/metrics` was served within `recent`.
    fn scraped_within(&self, recent: Duration) -> bool {
        let last = *self
            .last_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.is_some_and(|at| at.elapsed() <= recent)
    }

    fn record_scrape(&self) {
        *self
            .last_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.scrapes.fetch_add(1, Ordering::AcqRel);
        self.scraped.notify_waiters();
    }

    /// After a drain, the streams it ended are counted but not yet scraped. When
    /// something scraped this gateway within `recent`, wait (up to `limit`) for one
    /// more scrape so the `shutdown` outcomes reach Prometheus; otherwise return at
    /// once.
    pub(crate) async fn final_scrape(&self, limit: Duration, recent: Duration) {
        if limit.is_zero() || !self.scraped_within(recent) {
            return;
        }
        let before = self.scrapes.load(Ordering::Acquire);
        let next = self.scraped.notified();
        let mut next = std::pin::pin!(next);
        // Registered before the count is read again, so no scrape slips between.
        next.as_mut().enable();
        if self.scrapes.load(Ordering::Acquire) > before {
            return;
        }
        tracing::info!(?limit, "waiting for a final metrics scrape");
        let _ = tokio::time::timeout(limit, next).await;
    }
}

/// An admin response body; a scrape counts once hyper has taken its bytes and drops
/// it, so a shutdown waiting for the final scrape never ends the process before the
/// scrape's bytes are out. A body never taken (an answer to `HEAD`, a client gone
/// before it) is no scrape: Prometheus did not get the drain's last counts.
#[derive(Debug)]
struct ScrapeBody {
    body: Full<Bytes>,
    scraped: Option<Arc<AdminState>>,
    taken: bool,
}

impl http_body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let frame = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        self.taken |= matches!(frame, std::task::Poll::Ready(Some(_)));
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ScrapeBody {
    fn drop(&mut self) {
        if let Some(state) = self.scraped.take().filter(|_| self.taken) {
            state.record_scrape();
        }
    }
}

/// Serves the admin endpoints until the runtime stops, under the same deadlines as
/// the public listener and at most `limits.admin_max_connections` connections.
pub(crate) fn serve(acceptor: Acceptor, state: Arc<AdminState>, limits: ConnectionLimits) {
    let connections = Connections::http1_only(limits, Some(limits.admin_max_connections));
    let make = move |_peer| {
        let state = state.clone();
        service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let path_is_metrics = path == "/metrics";
            async move {
                let response = match path.as_str() {
                    // Their size grows with the routes (a /metrics of 20,000 routes
                    // is hundreds of MB): made on the blocking pool, so a scrape never
                    // pauses the streams.
                    "/metrics" | "/config" => {
                        let answering = state.clone();
                        tokio::task::spawn_blocking(move || answer(&answering, &method, &path))
                            .await
                            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
                    }
                    _ => answer(&state, &method, &path),
                };
                let scrape = path_is_metrics && response.status() == StatusCode::OK;
                let response = response.map(|body| ScrapeBody {
                    body,
                    scraped: scrape.then_some(state),
                    taken: false,
                });
                Ok::<_, Infallible>(response)
            }
        })
    };
    tokio::spawn(listener::accept_until(
        acceptor,
        connections,
        make,
        std::future::pending(),
    ));
}

fn answer(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let reply =
            reply::method_not_allowed(Protocol::Sse, method, &[Method::GET, Method::HEAD], None);
        return reply.map(Full::new);
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.encode(),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".to_owned(),
                )
            }
        }
        "/config" => {
            let config = state.config.borrow().config().clone();
            text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&config.redacted_json()).unwrap_or_default(),
            )
        }
        path => {
            let message =
                format!("no admin endpoint {path}; try /metrics, /healthz, /readyz or /config");
            reply::error_response(ErrorType::NotFound, &message, None).map(Full::new)
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::GatewayConfig;
    use crate::shutdown::Shutdown;

    fn state() -> AdminState {
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::new(
            Arc::new(GatewayConfig::empty()),
            &BTreeMap::new(),
            &metrics,
            Shutdown::new(),
            &crate::resume::Tables::new(),
            &mut Arc::new(crate::upstream::RetryBudgets::default()).generation(),
        );
        AdminState::new(metrics, watch::channel(Arc::new(proxy)).1)
    }

    const RECENT: Duration = Duration::from_secs(60);
    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_final_scrape_is_awaited_only_after_a_recent_scrape() {
        let state = state();
        let started = Instant::now();
        state.final_scrape(LIMIT, RECENT).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "never scraped: no wait");

        state.record_scrape();
        tokio::time::advance(Duration::from_secs(61)).await;
        let started = Instant::now();
        state.final_scrape(LIMIT, RECENT).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "scraped long ago: no wait"
        );

        state.record_scrape();
        let started = Instant::now();
        state.final_scrape(Duration::ZERO, RECENT).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "a zero wait: no wait");
        state.final_scrape(LIMIT, RECENT).await;
        assert_eq!(
            started.elapsed(),
            LIMIT,
            "scraped just now: waits, up to the limit"
        );
    }
}
