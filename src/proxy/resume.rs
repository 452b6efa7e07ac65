//! The proxy's side of resumable streams: a request on a resumable route is looked at
//! for a stream id before anything is sent upstream; `DELETE` with an id stops a
//! stream. What a resume is lives in `crate::resume`; this only turns its decisions
//! into responses.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use opentelemetry::KeyValue;

use super::{made, Route};
use crate::access_log::RequestLog;
use crate::admission;
use crate::body::ResponseBody;
use crate::listener::ClientConnection;
use crate::reply::{self, ErrorType};
use crate::resume::{Begin, Intercept, Stop, STREAM_ID_HEADER};
use crate::router::{RouteMatch, RouteTable};
use crate::supervise::SupervisedBody;

/// `DELETE` with a stream id on a resumable route's path (whatever methods the route
/// takes): the stream is ended at once, `204`; `404` when no such stream is running;
/// `503` when it may run on another replica and Redis cannot be reached. `None` when
/// the request is not such a stop.
pub(super) async fn stop<'a>(
    routes: &'a RouteTable<Route>,
    request: &mut Request<Incoming>,
) -> Option<(Response<Bytes>, &'a Route)> {
    if request.method() != Method::DELETE {
        return None;
    }
    let route = match routes.find(request.method(), request.uri().path()) {
        RouteMatch::Found { route, .. } => route,
        RouteMatch::MethodNotAllowed { owner, .. } => owner,
        _ => return None,
    };
    // Boxed, as the lookup below: a stop is rare, and its store's future would
    // otherwise size every request's.
    let stop = Box::pin(route.resume.as_ref()?.stop(request)).await?;
    let (error, message) = match stop {
        Stop::Stopped => return Some((empty(StatusCode::NO_CONTENT), route)),
        Stop::Unknown => (
            ErrorType::NotFound,
            "no running stream has this id (or the credential is not its own)",
        ),
        Stop::StoreUnavailable => (
            ErrorType::StoreUnavailable,
            "the stream may run on another replica, and the shared store cannot be reached to stop it; try again",
        ),
    };
    let reply = reply::error_response_in(route.protocol(), error, message, Some(&route.name));
    Some((reply, route))
}

/// On a resumable route: answers a resume or a rejection, or says how to forward.
pub(super) async fn intercept(
    route: &Route,
    request: &mut Request<Incoming>,
    log: RequestLog,
) -> Result<(Option<Begin>, RequestLog), Response<ResponseBody>> {
    let Some(resume) = &route.resume else {
        return Ok((None, log));
    };
    let intercept = match resume.intercept(request) {
        // Boxed: only a resumption through the shared store waits for it, and inline
        // its future would size every request's future (`Proxy::serve`).
        Intercept::Remote { id, credential } => {
            Box::pin(resume.lookup_remote(id, credential)).await
        }
        decided => decided,
    };
    match intercept {
        Intercept::Forward(begin) => {
            let connection = request.extensions().get::<ClientConnection>().cloned();
            Ok((begin.map(|begin| begin.on(connection)), log))
        }
        Intercept::Reject => Err(made(empty(StatusCode::NO_CONTENT), log)),
        Intercept::Resume { slot, last_seen } => {
            trace_resume(&log, last_seen, "memory");
            slot.take_over();
            Err(resume
                .replay(slot, last_seen, log)
                .map(ResponseBody::resumable))
        }
        Intercept::ResumeRemote {
            redis_key,
            last_seen,
            result,
        } => {
            trace_resume(&log, last_seen, "redis");
            Err(resume
                .replay_remote(redis_key, last_seen, result, log)
                .map(ResponseBody::resumable))
        }
        // Looked up above: a second lookup would find nothing new.
        Intercept::Remote { .. } => Ok((None, log)),
    }
}

/// The response body of a new event stream: resumable when `begin` says so. The
/// admission slot goes with the stream: a detached stream still reads its upstream,
/// so it still counts against the route's limits until it ends.
/// A resumable stream's id goes in `headers`.
pub(super) fn body(
    route: &Route,
    begin: Option<Begin>,
    body: SupervisedBody,
    admission: Option<admission::Slot>,
    headers: &mut HeaderMap,
) -> ResponseBody {
    match (&route.resume, begin) {
        (Some(resume), Some(begin)) => {
            headers.insert(STREAM_ID_HEADER.clone(), begin.stream_id());
            ResponseBody::resumable(resume.live(begin, body, admission))
        }
        _ => ResponseBody::supervised(body).holding(admission),
    }
}

/// The request's span says it resumed a stream (no upstream request of its own): after
/// which event, and from where the replay comes.
fn trace_resume(log: &RequestLog, last_seen: u64, store: &'static str) {
    log.trace_event(
        "resume",
        vec![
            KeyValue::new(
                "sse_gateway.resume.after_event",
                i64::try_from(last_seen).unwrap_or(i64::MAX),
            ),
            KeyValue::new("sse_gateway.resume.store", store),
        ],
    );
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = status;
    response
}
