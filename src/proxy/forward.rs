//! Forwarding a request to its upstream: which endpoint each attempt goes to, and,
//! on a route with `retry`, the attempts after a failure that the client has not seen.
//!
//! A failure is retried when the route's `retry.on` names it, the request has
//! attempts and untried endpoints left, its body could be kept (`retry.max_body`),
//! and the route's retry budget allows. On a route with a `stream` section an event
//! stream's start is held back until its first content event
//! (`supervise::holdback`), so a start that fails is retried too, unseen; from the
//! first content event on, the client holds part of the answer and nothing is
//! retried. The last possible attempt is never held back: it streams as any
//! request does.
//!
//! Without `retry` a request makes one attempt, to the endpoint that `balance` and
//! health choose, exactly as a route did before retries existed.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{response, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use tokio::time::Instant;

use super::{is_event_stream, is_identity, Route};
use crate::access_log::RequestLog;
use crate::config::RetryConfig;
use crate::metrics::FailoverMetrics;
use crate::supervise::{Started, Stuck};
use crate::upstream::{
    Failure, Fault, RetryBudget, Tried, UpstreamBody, UpstreamError, UpstreamErrorKind,
    UpstreamIncoming,
};

/// A route's failover state, built once per config; the budget is kept across
/// reloads that leave the route as it was.
#[derive(Debug)]
pub(crate) struct Failover {
    pub retry: Option<RetryConfig>,
    pub budget: Arc<RetryBudget>,
    pub metrics: FailoverMetrics,
}

/// The response's body: as the upstream sends it, or a stream whose start was held
/// back and committed.
#[derive(Debug)]
pub(super) enum Forwarded {
    Upstream(UpstreamIncoming),
    /// Boxed: a held-back start is the rare, large case.
    Started(Box<Started<UpstreamIncoming>>),
}

/// What an attempt tells, once its verdict is final: the endpoint's health, the
/// attempts by result, and an error by its kind. A failure a retry then recovers is
/// counted as an upstream error all the same: the endpoint failed, and only the
/// client was spared it. An attempt the client's body spoiled tells nothing about the
/// upstream and is not settled here.
///
/// Any `5xx` answer is an upstream error, also one no retry or health check acts on
/// (a `500` may be this request's alone): an assistant that answers every request
/// with `500` must show on the dashboard and in the alerts, not as a success.
fn settle(
    route: &Route,
    endpoint: usize,
    failure: Option<Failure>,
    answer: Result<StatusCode, &UpstreamError>,
) {
    route.upstream.report(endpoint, failure);
    let server_error = matches!(answer, Ok(status) if status.is_server_error());
    let result = match failure {
        Some(failure) => failure.label(),
        None if server_error => "status_5xx",
        None => "success",
    };
    route.failover.metrics.attempt(endpoint, result);
    let fault = match answer {
        Err(error) => Some(error.fault()),
        Ok(_) => server_error.then_some(Fault::Upstream(UpstreamErrorKind::Status)),
    };
    if let Some(Fault::Upstream(kind)) = fault {
        route.metrics.count_upstream_error(kind);
    }
}

/// Sends `request` on `route`, trying again where the route allows.
/// `remove_usage_chunk`: the gateway asked for the usage chunk, which a held-back
/// stream's engine then keeps from the client. `started`: when the request came (a
/// held-back start's `max_duration` counts from it). `log`'s client span starts here,
/// once the request is ready to go (a body that fails to be read first sends nothing
/// upstream), and is told which endpoint each attempt goes to.
///
/// Not an `async fn`, which would keep the request twice in its future while the
/// response head is awaited (see `Upstream::attempt`).
#[allow(clippy::manual_async_fn)] // Why: in the doc comment above.
pub(super) fn forward<'a>(
    route: &'a Route,
    mut request: Request<UpstreamBody>,
    remove_usage_chunk: bool,
    started: Instant,
    log: &'a mut RequestLog,
) -> impl Future<Output = Result<(response::Parts, Forwarded), UpstreamError>> + 'a {
    async move {
        let upstream = &route.upstream;
        let endpoints = upstream.endpoints();
        // A response to HEAD has no body: no stream to read, hold back or judge.
        let head = request.method() == http::Method::HEAD;
        let stream = route.stream.is_some() && !head;
        let failover = &route.failover;
        let start = endpoints.start();
        let Some(retry) = &failover.retry else {
            log.trace_upstream(&mut request);
            let endpoint = endpoints.pick(start, Tried::default()).unwrap_or(0);
            log.trace_upstream_url(|| endpoints.retarget(request.uri(), endpoint));
            let result = upstream.attempt(request, endpoint, stream).await;
            let (result, failure) = upstream.judge(result, endpoint);
            if !is_client_fault(&result) {
                settle(
                    route,
                    endpoint,
                    failure,
                    result.as_ref().map(Response::status),
                );
            }
            let (parts, body) = result?.into_parts();
            return Ok((parts, Forwarded::Upstream(body)));
        };
        failover.budget.request();
        let mut request = replayable(request, retry.max_body).await?;
        log.trace_upstream(&mut request);
        let mut tried = Tried::default();
        let mut made = 0;
        // The stuck periods of the starts thrown away: the client waited through
        // them, so the attempt that goes on counts them as its own.
        let mut stuck = Stuck::default();
        // A start was thrown away: the client waits on for that stream.
        let mut restarted = false;
        loop {
            let endpoint = endpoints.pick(start, tried).unwrap_or(0);
            tried.add(endpoint);
            made += 1;
            let last = made >= retry.attempts || endpoints.pick(start, tried).is_none();
            let copy = if last { None } else { copy(&request) };
            log.trace_upstream_url(|| endpoints.retarget(request.uri(), endpoint));
            let attempt_started = Instant::now();
            let result = {
                // After a start thrown away, the stream stays active through the wait,
                // and a client that leaves during it ends it as `client_closed`.
                let waiting = route
                    .stream
                    .as_ref()
                    .filter(|_| restarted)
                    .map(|plan| plan.retrying(started, &mut *log, std::mem::take(&mut stuck)));
                let result = upstream.attempt(request, endpoint, stream).await;
                if let Some(mut waiting) = waiting {
                    stuck = waiting.hand_on();
                }
                result
            };
            let (result, mut failure) = upstream.judge(result, endpoint);
            let mut forwarded = match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let supervised = !head
                        && is_event_stream(parts.headers.get(CONTENT_TYPE))
                        && is_identity(parts.headers.get(CONTENT_ENCODING));
                    let hold = !last
                        && failure.is_none()
                        && retry.on.before_content
                        && parts.status.is_success();
                    match route.stream.as_ref().filter(|_| supervised) {
                        Some(plan) if hold => {
                            let carried = std::mem::take(&mut stuck);
                            let (started, start_failure) = plan
                                .start(body, remove_usage_chunk, started, &mut *log, carried)
                                .await;
                            failure = start_failure;
                            Ok((parts, Forwarded::Started(Box::new(started))))
                        }
                        Some(plan) if stuck.was_stuck() => {
                            let carried = std::mem::take(&mut stuck);
                            let unheld =
                                Started::unheld(plan.clone(), body, remove_usage_chunk, carried);
                            Ok((parts, Forwarded::Started(Box::new(unheld))))
                        }
                        _ => Ok((parts, Forwarded::Upstream(body))),
                    }
                }
                Err(error) => Err(error),
            };
            if is_client_fault(&forwarded) {
                return forwarded;
            }
            let answer = forwarded.as_ref().map(|(parts, _)| parts.status);
            settle(route, endpoint, failure, answer);
            let Some(failure) = failure.filter(|f| f.retried_on(retry.on)) else {
                return forwarded;
            };
            if last {
                return forwarded;
            }
            let Some(next) = copy else {
                tracing::info!(route = %route.name, failure = failure.label(), max_body = retry.max_body, "not retried: the request body is larger than retry.max_body, or of unknown length");
                failover.metrics.skipped("body_not_replayable");
                return forwarded;
            };
            if !failover.budget.try_retry() {
                tracing::warn!(route = %route.name, failure = failure.label(), "not retried: the route's retry budget is spent");
                failover.metrics.skipped("budget");
                return forwarded;
            }
            // How long the failed attempt took: a start that went silent took its
            // idle timeout, which the client waited through.
            let attempt_ms =
                u64::try_from(attempt_started.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(route = %route.name, endpoint = %endpoints.get(endpoint).name, failure = failure.label(), attempt_ms, "trying the request again on another endpoint");
            failover.metrics.retry(failure.reason());
            // The failed attempt's response, and anything held back of it, go unseen.
            if let Ok((_, Forwarded::Started(start))) = &mut forwarded {
                restarted = true;
                stuck = start.take_stuck();
                if let Some(error_type) = start.take_upstream_error_event() {
                    route.metrics.count_upstream_error_event(error_type);
                    let error_type = opentelemetry::KeyValue::new("error.type", error_type);
                    log.trace_event("upstream_error_event", vec![error_type]);
                }
            }
            drop(forwarded);
            request = next;
        }
    }
}

fn is_client_fault<T>(result: &Result<T, UpstreamError>) -> bool {
    matches!(result, Err(UpstreamError::ClientBody { .. }))
}

/// `request` with a body that can be sent again: the gateway's own, or the client's
/// read whole when its `Content-Length` is at most `max_body`. Any other body is sent
/// as it streams, once.
async fn replayable(
    request: Request<UpstreamBody>,
    max_body: u64,
) -> Result<Request<UpstreamBody>, UpstreamError> {
    let (parts, body) = request.into_parts();
    let client = match body {
        Either::Right(made) => return Ok(Request::from_parts(parts, Either::Right(made))),
        Either::Left(client) => client,
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let fits = client.is_end_stream() || declared.is_some_and(|length| length <= max_body);
    if !fits {
        return Ok(Request::from_parts(parts, Either::Left(client)));
    }
    let bytes: Bytes = match client.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return Err(UpstreamError::ClientBody {
                kind: error.kind(),
                source: Box::new(error),
            })
        }
    };
    Ok(Request::from_parts(parts, Either::Right(Full::new(bytes))))
}

/// A copy of a request whose body the gateway holds; `None` for a streamed body.
fn copy(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let Either::Right(body) = request.body() else {
        return None;
    };
    let mut copy = Request::new(Either::Right(body.clone()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}
