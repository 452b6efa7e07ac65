//! One attempt of a request on one endpoint, and what it came to: a response to keep,
//! or a failure that a route's `retry.on` may try again elsewhere. The endpoint's
//! health learns from every attempt (`health.rs`).
//!
//! The loop over attempts is the proxy's (`proxy::forward`), because deciding that an
//! event stream failed *before its first content event* needs the route's stream
//! engine, which the upstream layer does not know.

use std::future::Future;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use tokio_util::either::Either;

use super::{Upstream, UpstreamBody, UpstreamError, UpstreamIncoming};
use crate::config::RetryOn;

/// Why an attempt did not give the client its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection was refused or failed.
    Connect,
    /// No connection within `connect_timeout`, or no headers within `header_timeout`,
    /// or (before content) no data within the stream's `idle_timeout`.
    Timeout,
    /// `429`, `502`, `503` or `504`.
    Status(StatusCode),
    /// The exchange broke before the response headers.
    Failed,
    /// The event stream failed, or ended without its answer, before its first content
    /// event.
    BeforeContent,
}

impl Failure {
    /// The `result` label of `upstream_attempts_total`, and the `reason` of
    /// `upstream_retries_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status(status) => match status.as_u16() {
                429 => "status_429",
                502 => "status_502",
                503 => "status_503",
                _ => "status_504",
            },
            Failure::Failed => "failed",
            Failure::BeforeContent => "before_content",
        }
    }

    /// The `reason` label of a retry after this failure.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Failure::Failed => "before_content",
            other => other.label(),
        }
    }

    /// Whether `on` retries it.
    pub(crate) fn retried_on(self, on: RetryOn) -> bool {
        match self {
            Failure::Connect => on.connect,
            Failure::Timeout => on.timeout,
            Failure::Status(status) => on.status(status.as_u16()),
            Failure::Failed | Failure::BeforeContent => on.before_content,
        }
    }

    /// The failure an upstream error before headers is; `None` for the client's own.
    pub(crate) fn of_error(error: &UpstreamError) -> Option<Failure> {
        match error {
            UpstreamError::Connect { .. } => Some(Failure::Connect),
            UpstreamError::ConnectTimeout { .. } | UpstreamError::HeaderTimeout { .. } => {
                Some(Failure::Timeout)
            }
            UpstreamError::Failed { .. } | UpstreamError::Informational { .. } => {
                Some(Failure::Failed)
            }
            UpstreamError::ClientBody { .. } => None,
        }
    }

    /// The failure a response's status is: `429`, `502`, `503`, `504`.
    pub(crate) fn of_status(status: StatusCode) -> Option<Failure> {
        matches!(status.as_u16(), 429 | 502 | 503 | 504).then_some(Failure::Status(status))
    }
}

impl Upstream {
    /// Sends `request` (its URI made for the first endpoint) to `endpoint`, as a
    /// stream when `stream`. What the result means for a retry and for the endpoint's
    /// health is [`judge`](Upstream::judge)'s; the caller [`report`](Upstream::report)s
    /// the verdict once it is final (a stream's start may still fail before its first
    /// content event).
    ///
    /// Not an `async fn`, and the judging is not awaited here: either would keep the
    /// request, or the send's future, twice in this future while the response head is
    /// awaited (an argument and the local it moves into). That future lives until the
    /// head is read, and its size sets the allocator size class of every request's.
    pub(crate) fn attempt(
        &self,
        mut request: Request<UpstreamBody>,
        endpoint: usize,
        stream: bool,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + '_ {
        if endpoint != 0 {
            *request.uri_mut() = self.endpoints.retarget(request.uri(), endpoint);
        }
        if stream {
            Either::Left(self.send_for_stream(request, endpoint))
        } else {
            Either::Right(self.send(request))
        }
    }

    /// The failure an attempt's result is, if any; a `429`'s `Retry-After` marks
    /// `endpoint` busy for that long.
    pub(crate) fn judge(
        &self,
        result: Result<Response<UpstreamIncoming>, UpstreamError>,
        endpoint: usize,
    ) -> (
        Result<Response<UpstreamIncoming>, UpstreamError>,
        Option<Failure>,
    ) {
        let failure = match &result {
            Ok(response) => Failure::of_status(response.status()),
            Err(error) => Failure::of_error(error),
        };
        if let (Ok(response), Some(Failure::Status(StatusCode::TOO_MANY_REQUESTS))) =
            (&result, failure)
        {
            if let Some(wait) = retry_after(response) {
                let endpoints = &self.endpoints;
                endpoints.get(endpoint).health.busy(endpoints.now(), wait);
            }
        }
        (result, failure)
    }

    /// Tells `endpoint`'s health how an attempt went; `None`: it answered. A `429`
    /// is the endpoint being busy (its `Retry-After` is honoured), not broken.
    pub(crate) fn report(&self, endpoint: usize, failure: Option<Failure>) {
        let endpoints = &self.endpoints;
        let health = &endpoints.get(endpoint).health;
        match failure {
            None | Some(Failure::Status(StatusCode::TOO_MANY_REQUESTS)) => health.success(),
            Some(failure) => {
                if health.failure(endpoints.now()) {
                    tracing::warn!(
                        upstream = %self.name,
                        endpoint = %endpoints.get(endpoint).name,
                        last = failure.label(),
                        "upstream endpoint failed too often in a row: skipped for its cooldown"
                    );
                }
            }
        }
    }
}

/// A `Retry-After` in either of its forms: seconds, or an HTTP date (a date already
/// past is no wait).
fn retry_after(response: &Response<UpstreamIncoming>) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}
