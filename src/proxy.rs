//! The proxy service: route -> translate the request -> forward -> stream the response.
//!
//! Built once per config. Per request it resolves the route (no lock, no config
//! lookup on the streaming path) and hands the upstream body to [`ResponseBody`];
//! requests the gateway answers itself (404, 405, 400, 502, 504) get the one JSON
//! error shape of [`crate::reply`].

mod edge;
mod forward;
mod include_usage;
pub(crate) mod request;
mod resume;
mod route;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access_log::RequestLog;
use crate::body::ResponseBody;
use crate::config::GatewayConfig;
use crate::metrics::{Metrics, UNMATCHED_ROUTE};
use crate::reply::{self, ErrorType};
use crate::request_id::{request_span, RequestId, X_REQUEST_ID};
use crate::router::{RouteMatch, RouteTable};
use crate::supervise::SupervisedBody;
use crate::telemetry::{RequestTrace, Traces};
use crate::upstream::{Fault, Upstream, UpstreamError};

pub(crate) use self::route::Route;

use self::request::{host_problem, translate, Origin};
use crate::hop_by_hop::strip_hop_by_hop;

static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Everything needed to serve requests under one config.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// The config it was compiled from: the one copy the running gateway keeps.
    config: Arc<GatewayConfig>,
    routes: RouteTable<Route>,
    metrics: Arc<Metrics>,
    /// CORS and response header changes, by route name; only routes that have some.
    edges: BTreeMap<Arc<str>, edge::Edge>,
    /// `telemetry.otlp`: each request gets a trace.
    traces: Option<Arc<Traces>>,
}

impl Proxy {
    /// Compiles `config`'s routes; `upstreams` holds a ready client per upstream name.
    pub(crate) fn new(
        config: Arc<GatewayConfig>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Arc<Metrics>,
        shutdown: crate::shutdown::Shutdown,
        resume_tables: &crate::resume::Tables,
        budgets: &mut crate::upstream::BudgetGeneration,
    ) -> Proxy {
        resume_tables.set_redis(config.state.redis.as_ref());
        let routes = config.routes.iter().filter_map(|route| {
            Route::build(route, upstreams, metrics, &shutdown, resume_tables, budgets)
        });
        let routes = RouteTable::new(routes);
        let edges = config
            .routes
            .iter()
            .filter_map(|route| Some((Arc::from(route.name.as_str()), edge::Edge::of(route)?)))
            .collect();
        Proxy {
            config,
            routes,
            metrics: metrics.clone(),
            edges,
            traces: None,
        }
    }

    /// Traces every request with `traces`.
    pub(crate) fn with_traces(mut self, traces: Option<Arc<Traces>>) -> Proxy {
        self.traces = traces;
        self
    }

    /// The config this proxy serves.
    pub(crate) fn config(&self) -> &Arc<GatewayConfig> {
        &self.config
    }

    /// Serves one request from `peer`.
    ///
    /// Neither this nor [`route_and_forward`](Proxy::route_and_forward) is an `async
    /// fn`: that keeps a by-value argument twice in the future, as the argument and as
    /// the local it moves into. The future lives until the response head is out, and
    /// its size sets the allocator size class every request takes.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn serve(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ResponseBody>> + '_ {
        async move {
            let method = request.method().clone();
            let origin = request.headers().get(http::header::ORIGIN).cloned();
            // The id goes upstream as a client header would, back to the client, and on
            // every log line of the request through its span.
            let id = RequestId::of(request.headers());
            let id_header = id.header_value().clone();
            request
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), id_header.clone());
            let span = request_span(&id);
            let trace = self.traces.as_ref().map(|traces| {
                let path = request.uri().path();
                traces.request(method.as_str(), path, request.headers(), id.as_str())
            });
            let (mut response, route) = self
                .route_and_forward(request, peer, trace)
                .instrument(span)
                .await;
            response
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), id_header);
            if let Some(edge) = route.as_ref().and_then(|name| self.edges.get(name)) {
                edge.finish(origin.as_ref(), response.headers_mut());
            }
            self.metrics
                .count_request(route.as_deref(), &method, response.status());
            response
        }
    }

    /// Routes the request and forwards it upstream, or answers it where it is.
    #[allow(clippy::manual_async_fn)]
    fn route_and_forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        trace: Option<RequestTrace>,
    ) -> impl Future<Output = Answer> + '_ {
        async move {
            let start = Instant::now();
            let Routed {
                route,
                matched_len,
                begin,
                mut log,
            } = match self.route(&mut request, trace, start).await {
                Ok(routed) => routed,
                Err(answer) => return answer,
            };
            let route_name = Some(route.name.clone());
            // The route's clients are the SDKs of its protocol: errors in their shape.
            let protocol = route.protocol();

            // Before anything is sent upstream; held by the response body until it ends.
            let slot = match route.admission.admit(request.headers()) {
                Err(limit) => {
                    let reply = crate::admission::refusal(limit, protocol, &route.name);
                    return (made(reply, log), route_name);
                }
                Ok(slot) => Some(slot),
            };

            // A response to HEAD has no body: not a stream to supervise, whatever its
            // headers say.
            let head = request.method() == http::Method::HEAD;
            let origin = Origin {
                peer,
                trusted_peer: self.config.trusted_proxies.contains(peer.ip()),
                matched_len,
                plan: &route.request,
                upstream: &route.upstream,
            };
            let upstream_request = match translate(request, origin) {
                Ok(upstream_request) => upstream_request,
                Err(error) => {
                    if let Some(kind) = error.client_error_kind() {
                        route.metrics.count_client_error(kind);
                    }
                    let reply = reply::error_response_in(
                        protocol,
                        error.error_type(),
                        &error.to_string(),
                        Some(&route.name),
                    );
                    return (made(reply, log), route_name);
                }
            };

            // `stream.usage: request`: the upstream is asked for usage the client may not
            // have asked for; the stream then keeps the usage chunk from that client.
            // Matched whole, not kept as a `Result`: what a match moves out of a named
            // local leaves the local's storage in the future across the upstream's wait.
            let (upstream_request, remove_usage_chunk) = match &route.stream {
                Some(plan) if plan.requests_usage() => {
                    match include_usage::ask_for_usage(upstream_request).await {
                        Ok(prepared) => prepared,
                        Err(error) => return (not_forwarded(route, &error, log), route_name),
                    }
                }
                _ => (upstream_request, false),
            };
            let forwarded =
                forward::forward(route, upstream_request, remove_usage_chunk, start, &mut log)
                    .await;
            let (mut parts, body) = match forwarded {
                Ok(forwarded) => forwarded,
                Err(error) => return (not_forwarded(route, &error, log), route_name),
            };
            strip_hop_by_hop(&mut parts.headers);
            // The version is the upstream connection's, not the answer's: an HTTP/1.0
            // upstream must not make hyper answer the client in HTTP/1.0 (and close).
            parts.version = http::Version::HTTP_11;
            let event_stream = is_event_stream(parts.headers.get(CONTENT_TYPE));
            if event_stream {
                // Tell every cache and buffering proxy between here and the browser to
                // pass events through as they come.
                parts.headers.insert(
                    CACHE_CONTROL,
                    HeaderValue::from_static("no-cache, no-transform"),
                );
                parts
                    .headers
                    .insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
            }
            log.set_status(parts.status);
            log.trace_upstream_status(parts.status);
            let body = match body {
                forward::Forwarded::Upstream(body) => body,
                forward::Forwarded::Started(held) => {
                    parts.headers.remove(CONTENT_LENGTH);
                    let body = SupervisedBody::resume(*held, start, log);
                    let body = resume::body(route, begin, body, slot, &mut parts.headers);
                    return (Response::from_parts(parts, body), route_name);
                }
            };
            let body = match &route.stream {
                Some(plan)
                    if event_stream
                        && !head
                        && is_identity(parts.headers.get(CONTENT_ENCODING)) =>
                {
                    // Events may be rewritten, dropped or added: the length is the body's own.
                    parts.headers.remove(CONTENT_LENGTH);
                    let supervised =
                        SupervisedBody::new(body, plan.clone(), start, log, remove_usage_chunk);
                    resume::body(route, begin, supervised, slot, &mut parts.headers)
                }
                Some(_) if event_stream && !head => {
                    tracing::warn!(route = %route.name, "upstream sent an encoded event stream despite Accept-Encoding: identity; passing it through unparsed");
                    ResponseBody::upstream(body, log, route.metrics.clone()).holding(slot)
                }
                _ => ResponseBody::upstream(body, log, route.metrics.clone()).holding(slot),
            };
            (Response::from_parts(parts, body), route_name)
        }
    }

    /// Finds the request's route. What needs no upstream is answered here: a bad
    /// `Host`, a CORS preflight, a resumable stream's stop, no route or method, a
    /// resumption. Its own future: the log it starts would otherwise keep its storage
    /// in the forwarding future beside the log that goes on (see
    /// [`serve`](Proxy::serve)).
    async fn route(
        &self,
        request: &mut Request<Incoming>,
        trace: Option<RequestTrace>,
        start: Instant,
    ) -> Result<Routed<'_>, Answer> {
        let mut log = RequestLog::new(start, request.method().clone(), request.uri().path());
        log.set_span(tracing::Span::current());
        log.set_trace(trace);

        if let Some(problem) = host_problem(request) {
            let reply =
                reply::error_response(ErrorType::BadRequest, problem, Some(UNMATCHED_ROUTE));
            return Err((made(reply, log), None));
        }
        // A CORS preflight asks about another method: the route that would take that
        // method answers it, when it has a `cors` section. A resumable route takes
        // `DELETE` for its streams' stop whatever its methods, so it answers for that.
        if let Some(requested) = edge::preflight_method(request) {
            let route = match self.routes.find(&requested, request.uri().path()) {
                RouteMatch::Found { route, .. } => Some(route),
                RouteMatch::MethodNotAllowed { owner, .. }
                    if requested == http::Method::DELETE && owner.resume.is_some() =>
                {
                    Some(owner)
                }
                _ => None,
            };
            if let Some(route) = route {
                let edge = self.edges.get(&route.name);
                let answer =
                    edge.and_then(|e| e.preflight(request.headers(), &requested, &route.name));
                if let Some(answer) = answer {
                    log.set_route(&route.name, &route.upstream_name);
                    return Err((made(answer, log), Some(route.name.clone())));
                }
            }
        }
        if let Some((reply, route)) = resume::stop(&self.routes, request).await {
            log.set_route(&route.name, &route.upstream_name);
            return Err((made(reply, log), Some(route.name.clone())));
        }
        let (route, matched_len) = match self.routes.find(request.method(), request.uri().path()) {
            RouteMatch::Found { route, matched_len } => (route, matched_len),
            RouteMatch::NotFound => {
                let message = format!("no route for {}", request.uri().path());
                let reply =
                    reply::error_response(ErrorType::NotFound, &message, Some(UNMATCHED_ROUTE));
                return Err((made(reply, log), None));
            }
            RouteMatch::UnsafePath => {
                let message =
                    "the path contains dot segments, encoded separators or ambiguous encodings";
                let reply =
                    reply::error_response(ErrorType::BadRequest, message, Some(UNMATCHED_ROUTE));
                return Err((made(reply, log), None));
            }
            RouteMatch::MethodNotAllowed { allow, owner } => {
                // The path is the route's even if the method is not: the 405 is
                // logged and counted under it, and its body names it.
                log.set_route(&owner.name, &owner.upstream_name);
                let reply = reply::method_not_allowed(
                    owner.protocol(),
                    request.method(),
                    &allow,
                    Some(&owner.name),
                );
                return Err((made(reply, log), Some(owner.name.clone())));
            }
        };
        log.set_route(&route.name, &route.upstream_name);
        match resume::intercept(route, request, log).await {
            Ok((begin, log)) => Ok(Routed {
                route,
                matched_len,
                begin,
                log,
            }),
            Err(answer) => Err((answer, Some(route.name.clone()))),
        }
    }
}

/// `text/event-stream`, case-insensitive, parameters allowed.
pub(crate) fn is_event_stream(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// No `Content-Encoding`, or `identity`: the bytes are the events themselves.
fn is_identity(encoding: Option<&HeaderValue>) -> bool {
    encoding.is_none_or(|value| value.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// A response and the route it is counted under (none when no route matched).
type Answer = (Response<ResponseBody>, Option<Arc<str>>);

/// A request matched to its route, to be forwarded.
struct Routed<'a> {
    route: &'a Route,
    /// How much of the path the route's prefix matched.
    matched_len: usize,
    /// A resumable stream's start, when the route resumes.
    begin: Option<crate::resume::Begin>,
    log: RequestLog,
}

/// The answer to a request that got no upstream response: the client's fault is
/// logged and counted here; an upstream failure was counted by its attempt
/// (`forward`), as every failed attempt is.
fn not_forwarded(route: &Route, error: &UpstreamError, log: RequestLog) -> Response<ResponseBody> {
    match error.fault() {
        Fault::Client(kind) => {
            tracing::info!(route = %route.name, kind = kind.as_str(), %error, "request refused");
            route.metrics.count_client_error(kind);
        }
        Fault::Upstream(kind) => {
            tracing::warn!(route = %route.name, kind = kind.as_str(), %error, "upstream request failed");
        }
    }
    let reply = reply::error_response_in(
        route.protocol(),
        error.error_type(),
        &error.to_string(),
        Some(&route.name),
    );
    made(reply, log)
}

fn made(response: Response<Bytes>, mut log: RequestLog) -> Response<ResponseBody> {
    log.set_status(response.status());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, ResponseBody::made(body, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_content_types() {
        let yes = [
            "text/event-stream",
            "Text/Event-Stream",
            "text/event-stream; charset=utf-8",
        ];
        for value in yes {
            assert!(
                is_event_stream(Some(&HeaderValue::from_static(value))),
                "{value}"
            );
        }
        let no = ["text/plain", "application/json", "text/event-streams"];
        for value in no {
            assert!(
                !is_event_stream(Some(&HeaderValue::from_static(value))),
                "{value}"
            );
        }
        assert!(!is_event_stream(None));
    }
}
