//! Resumable streams: a client that loses its connection reconnects with
//! `Last-Event-ID` and gets the rest of the same answer, instead of a new upstream
//! request that generates (and bills) it again.
//!
//! On a route with `stream.resume`, every event the gateway forwards carries an id
//! `KEY-SEQ` (`stamp`; `KEY` is 128 random bits, `id`), and is kept in the stream's
//! bounded replay buffer (`replay`). When the client leaves mid-stream, the stream is
//! detached rather than cancelled: the same supervised body is read on by a task for up
//! to `window` (`body`). A request carrying an id (the `Last-Event-ID` header, or the
//! `lastEventId` query parameter) whose stream is known and whose credential matches is
//! answered from the buffer, then live, without calling the upstream; an unknown one
//! restarts or gets `204` (`on_unknown`). `DELETE` on the route's path with the id ends
//! a stream at once, on whichever replica owns it. Streams are kept per route in a
//! `table` that outlives config reloads; `lifetime` says when each stops being
//! resumable.
//!
//! The pure parts (`id`, `stamp`, `replay`, `lifetime`) hold no lock and read no clock;
//! `slot`, `table` and `body` are the thin shared-state and I/O layer around them.
//! Routes without `resume` never reach this module: no allocation, no id, no buffer.

mod body;
mod budget;
mod follow;
pub mod id;
mod lifetime;
pub mod metrics;
pub mod replay;
mod slot;
pub mod stamp;
mod store;
mod table;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE};
use http::{HeaderName, Request, Response, StatusCode, Uri};
use tokio::time::Instant;

use crate::access_log::RequestLog;
use crate::config::{OnUnknown, ResumeConfig, StreamConfig};
use crate::listener::ClientConnection;
use crate::protocol::Protocol;
use crate::supervise::SupervisedBody;

pub(crate) use body::ResumeBody;
use body::{LiveBody, ReplayBody};
use id::{EventId, Fingerprint, StreamKey};
pub use metrics::{ResumeFamilies, ResumeMetrics, ResumeResult};
use slot::Slot;
use store::{Ending, Mirror, RedisStore};
pub use table::Tables;
use table::{Lookup, Table};

/// The header browsers' `EventSource` sends on a reconnect.
static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The query parameter `event-source-polyfill` sends instead.
const LAST_EVENT_ID_PARAM: &str = "lastEventId";
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
/// Names a new resumable stream on its response: a client whose parser never shows it
/// the events' ids (the `openai` SDKs') can still stop the stream with `DELETE`, or
/// resume it from the start.
pub(crate) static STREAM_ID_HEADER: HeaderName = HeaderName::from_static("x-sse-gateway-stream-id");

/// A resumable route's resume handling, built once per config.
#[derive(Debug)]
pub(crate) struct ResumePlan {
    route: Arc<str>,
    config: ResumeConfig,
    table: Arc<Table>,
    metrics: ResumeMetrics,
    protocol: Protocol,
    /// Sent after a gap's error event where the protocol closes after errors.
    closing: Option<Bytes>,
    /// `store: redis`: where events are mirrored for the other replicas.
    store: Option<Arc<RedisStore>>,
}

/// What to do with a request on a resumable route.
#[derive(Debug)]
pub(crate) enum Intercept {
    /// Send it upstream; with `Some`, the stream it starts is resumable.
    Forward(Option<Begin>),
    /// Answer it from a known stream; the upstream is not called.
    Resume { slot: Arc<Slot>, last_seen: u64 },
    /// `on_unknown: reject`, a finished stream the client has all of, or a stream a
    /// client stopped: `204 No Content`, which tells `EventSource` to stop reconnecting.
    Reject,
    /// Not known here; with `store: redis` another replica may own it.
    Remote {
        id: EventId,
        credential: Option<Bytes>,
    },
    /// Answer it from Redis: another replica owns the stream. `result`, `replayed` or
    /// `expired`, is counted once the follower's first read shows the id was given
    /// out (it may not have been: it counts `unknown` then).
    ResumeRemote {
        redis_key: String,
        last_seen: u64,
        result: ResumeResult,
    },
}

impl Begin {
    /// The value of [`STREAM_ID_HEADER`]: the stream's id before its first event,
    /// `KEY-0`.
    pub(crate) fn stream_id(&self) -> HeaderValue {
        let id = EventId {
            key: self.key,
            seq: 0,
        };
        HeaderValue::try_from(id.to_string()).expect("base64url is a valid header value")
    }

    /// The stream's first client is on `connection` (`None` on h2).
    pub(crate) fn on(mut self, connection: Option<ClientConnection>) -> Begin {
        self.connection = connection;
        self
    }
}

/// What a `DELETE` with a stream id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The stream is stopped (here, or asked of the replica that owns it).
    Stopped,
    /// No stream with this id and credential is running.
    Unknown,
    /// The stream may run on another replica, and Redis cannot be reached to ask it.
    StoreUnavailable,
}

/// A new resumable stream's key and credential fingerprint.
#[derive(Debug)]
pub(crate) struct Begin {
    key: StreamKey,
    fingerprint: Fingerprint,
    /// The first client's connection, which a resume closes if it still hangs on it.
    connection: Option<ClientConnection>,
}

impl ResumePlan {
    pub(crate) fn new(
        route: Arc<str>,
        config: &ResumeConfig,
        stream: &StreamConfig,
        tables: &Tables,
        families: &ResumeFamilies,
    ) -> ResumePlan {
        let metrics = families.route(&route);
        let table = tables.table(&route, config.window, metrics.detached.clone());
        let protocol = stream.pipeline.contract().protocol;
        let closing = protocol
            .closes_after_error()
            .then(|| stream.pipeline.synthesized_terminator())
            .flatten();
        let store = match config.store {
            crate::config::ResumeStore::Memory => None,
            crate::config::ResumeStore::Redis => tables.redis(),
        };
        ResumePlan {
            route,
            config: config.clone(),
            table,
            metrics,
            protocol,
            closing,
            store,
        }
    }

    /// The request's credential: every line of the credential header, joined as one
    /// line (`; ` between cookies, which HTTP/2 sends a line each; `, ` otherwise), so
    /// no line is left out of the fingerprint. A header in one line is taken as it is.
    fn credential<'a>(&self, headers: &'a HeaderMap) -> Option<Cow<'a, [u8]>> {
        let name = &self.config.credential_header;
        let mut lines = headers.get_all(name).iter();
        let first = lines.next()?.as_bytes();
        let mut rest = lines.peekable();
        if rest.peek().is_none() {
            return Some(Cow::Borrowed(first));
        }
        let separator: &[u8] = if name == COOKIE { b"; " } else { b", " };
        let mut joined = first.to_vec();
        for line in rest {
            joined.extend_from_slice(separator);
            joined.extend_from_slice(line.as_bytes());
        }
        Some(Cow::Owned(joined))
    }

    /// Takes the stream id out of `request` (header and query parameter, so no
    /// upstream request ever carries it) and decides what the request gets.
    pub(crate) fn intercept<B>(&self, request: &mut Request<B>) -> Intercept {
        let id = take_id(request);
        let credential = self.credential(request.headers());
        let credential = credential.as_deref();
        let Some(id) = id else {
            return Intercept::Forward(self.begin(credential));
        };
        let result = match EventId::parse(id.as_bytes()) {
            None => ResumeResult::Unknown,
            Some(id) => match self.table.lookup(&id, credential, Instant::now()) {
                Lookup::Found(slot) => {
                    let gap = slot.state().log.first_kept() > id.seq + 1;
                    self.metrics.count(if gap {
                        ResumeResult::Expired
                    } else {
                        ResumeResult::Replayed
                    });
                    return Intercept::Resume {
                        slot,
                        last_seen: id.seq,
                    };
                }
                Lookup::Unknown if self.store.is_some() => {
                    return Intercept::Remote {
                        id,
                        credential: credential.map(Bytes::copy_from_slice),
                    };
                }
                Lookup::HadAll => {
                    self.metrics.count(ResumeResult::Finished);
                    return Intercept::Reject;
                }
                Lookup::Stopped => {
                    self.metrics.count(ResumeResult::Stopped);
                    return Intercept::Reject;
                }
                Lookup::Unknown | Lookup::NotGiven => ResumeResult::Unknown,
                Lookup::Expired => ResumeResult::Expired,
                Lookup::Forbidden => ResumeResult::Forbidden,
            },
        };
        self.refused(result, credential)
    }

    /// A resume that cannot be served: counted, then `on_unknown`.
    fn refused(&self, result: ResumeResult, credential: Option<&[u8]>) -> Intercept {
        self.metrics.count(result);
        tracing::info!(route = %self.route, result = result.as_str(), on_unknown = ?self.config.on_unknown, "resume refused");
        match self.config.on_unknown {
            OnUnknown::Restart => Intercept::Forward(self.begin(credential)),
            OnUnknown::Reject => Intercept::Reject,
        }
    }

    /// Looks an id this replica does not know up in Redis. Redis unreachable: the
    /// resume falls back to `on_unknown` (and the error is counted). A stream its
    /// owner dropped before its end is refused as the owner would refuse it: `expired`
    /// when dropped at its window, `unknown` when dropped over `max_detached`.
    pub(crate) async fn lookup_remote(&self, id: EventId, credential: Option<Bytes>) -> Intercept {
        let credential = credential.as_deref();
        let Some(store) = &self.store else {
            return self.refused(ResumeResult::Unknown, credential);
        };
        let redis_key = store::stream_key(&self.route, &id.key);
        let held = store.resumable(&redis_key).await;
        let result = match held.as_ref().map(Option::as_ref) {
            Ok(Some(held)) if !held.fingerprint.matches(&id.key.fingerprint(credential)) => {
                ResumeResult::Forbidden
            }
            Ok(Some(held)) if held.ending == Some(Ending::Expired) => ResumeResult::Expired,
            Ok(Some(held)) if held.ending == Some(Ending::Stopped) => {
                self.metrics.count(ResumeResult::Stopped);
                return Intercept::Reject;
            }
            // Not an id this stream gave out, as on the owner.
            Ok(Some(held)) if held.last.is_some_and(|last| id.seq > last) => ResumeResult::Unknown,
            Ok(Some(held)) if held.ending == Some(Ending::Ended) && held.last == Some(id.seq) => {
                self.metrics.count(ResumeResult::Finished);
                return Intercept::Reject;
            }
            Ok(Some(held)) if matches!(held.ending, None | Some(Ending::Ended)) => {
                // Events dropped for room: the follower tells the client of the gap, and
                // it counts as on the owner, `expired`.
                let gap = held.first_kept.is_some_and(|first| first > id.seq + 1);
                return Intercept::ResumeRemote {
                    redis_key,
                    last_seen: id.seq,
                    result: if gap {
                        ResumeResult::Expired
                    } else {
                        ResumeResult::Replayed
                    },
                };
            }
            Ok(_) => ResumeResult::Unknown,
            Err(error) => {
                self.metrics.store_errors.inc();
                tracing::warn!(route = %self.route, %error, "cannot look a resume up in Redis");
                ResumeResult::Unknown
            }
        };
        self.refused(result, credential)
    }

    /// The response to a resume of a stream another replica owns.
    pub(crate) fn replay_remote(
        self: &Arc<Self>,
        redis_key: String,
        last_seen: u64,
        result: ResumeResult,
        mut log: RequestLog,
    ) -> Response<ResumeBody> {
        log.set_status(StatusCode::OK);
        let Some(store) = self.store.clone() else {
            // Never built without a store; an empty stream rather than a panic.
            return event_stream(ResumeBody::Remote(follow::RemoteBody::closed(log)));
        };
        let follow = follow::Follow {
            redis_key,
            last_seen,
            result,
        };
        let body = follow::RemoteBody::start(store, follow, self.clone(), log);
        event_stream(ResumeBody::Remote(body))
    }

    fn begin(&self, credential: Option<&[u8]>) -> Option<Begin> {
        match StreamKey::generate() {
            Ok(key) => Some(Begin {
                fingerprint: key.fingerprint(credential),
                key,
                connection: None,
            }),
            Err(error) => {
                tracing::warn!(route = %self.route, %error, "stream served without resume");
                None
            }
        }
    }

    /// The first client's body of a new resumable stream.
    pub(crate) fn live(
        self: &Arc<Self>,
        begin: Begin,
        body: SupervisedBody,
        admission: Option<crate::admission::Slot>,
    ) -> ResumeBody {
        let slot = Arc::new(Slot::new(
            begin.key,
            begin.fingerprint,
            self.config.window,
            self.config.max_bytes,
            begin.connection,
        ));
        self.table.insert(slot.clone());
        let mirror = self.store.as_ref().map(|store| {
            Mirror::new(
                store.clone(),
                store::stream_key(&self.route, &begin.key),
                self.config.window,
                self.config.max_bytes,
                begin.fingerprint,
                self.metrics.store_errors.clone(),
            )
        });
        ResumeBody::Live(LiveBody::new(body, slot, mirror, self.clone(), admission))
    }

    /// Whether a client follows `slot`'s stream on another replica (`store: redis`),
    /// so its window must not run out here. Redis unreachable: no (the stream is then
    /// dropped at its window, as without Redis).
    pub(crate) async fn followed_elsewhere(&self, slot: &Slot) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let redis_key = store::stream_key(&self.route, &slot.key);
        match store.has_remote_reader(&redis_key).await {
            Ok(followed) => followed,
            Err(error) => {
                self.metrics.store_errors.inc();
                tracing::warn!(route = %self.route, %error, "cannot ask Redis whether another replica follows a detached stream; dropping it at its window");
                false
            }
        }
    }

    /// The response to a resume: the stream's events after `last_seen`, then live.
    pub(crate) fn replay(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        last_seen: u64,
        mut log: RequestLog,
    ) -> Response<ResumeBody> {
        log.set_status(StatusCode::OK);
        let body = ReplayBody::new(slot, self.clone(), last_seen, log);
        event_stream(ResumeBody::Replay(body))
    }

    /// `DELETE` with a stream id: ends that stream at once, here or (`store: redis`)
    /// on the replica that owns it. `None` when the request carries no id (it is not a
    /// stop, and is routed as usual).
    pub(crate) async fn stop<B>(&self, request: &mut Request<B>) -> Option<Stop> {
        let id = take_id(request)?;
        let credential = self.credential(request.headers());
        let credential = credential.as_deref();
        let Some(id) = EventId::parse(id.as_bytes()) else {
            return Some(Stop::Unknown);
        };
        let stop = if self.table.stop(&id.key, credential) {
            Stop::Stopped
        } else {
            self.stop_elsewhere(&id.key, credential).await
        };
        tracing::info!(route = %self.route, stop = ?stop, "stream stop asked");
        Some(stop)
    }

    /// A stop for a stream this replica does not hold: with `store: redis`, checked
    /// against the stream's fingerprint there and handed to its owner.
    async fn stop_elsewhere(&self, key: &StreamKey, credential: Option<&[u8]>) -> Stop {
        let Some(store) = &self.store else {
            return Stop::Unknown;
        };
        let redis_key = store::stream_key(&self.route, key);
        let asked = match store.fingerprint(&redis_key).await {
            Ok(Some(fingerprint)) if fingerprint.matches(&key.fingerprint(credential)) => {
                store.publish_stop(&redis_key).await
            }
            Ok(_) => return Stop::Unknown,
            Err(error) => Err(error),
        };
        match asked {
            Ok(0) => {
                // Not even this replica's listener heard it: every listener is between
                // a lost Redis and its next subscription. A 204 would be a stop that
                // reached nobody; 503 asks the client to try again.
                self.metrics.store_errors.inc();
                tracing::warn!(route = %self.route, "no replica listens for stops right now (Redis came back a moment ago); the stop was not delivered");
                Stop::StoreUnavailable
            }
            Ok(_) => Stop::Stopped,
            Err(error) => {
                self.metrics.store_errors.inc();
                tracing::warn!(route = %self.route, %error, "cannot hand a stream stop to the replica that owns the stream");
                Stop::StoreUnavailable
            }
        }
    }

    /// The error event for events `from..=to` that the buffer no longer holds, and
    /// the closing that follows it on this protocol.
    fn gap(&self, from: u64, to: u64) -> (Bytes, Option<Bytes>) {
        let missing = if from == to {
            format!("event {from} of this stream is")
        } else {
            format!("events {from} to {to} of this stream are")
        };
        let message = format!(
            "cannot resume: {missing} no longer held (the route keeps the last {} bytes); reload the answer",
            self.config.max_bytes
        );
        self.closing_with("resume_gap", &message)
    }

    /// The last frame of a resume that cannot go on: the error event of `error_type`
    /// saying `message`, then the route's closing.
    fn closing_with(&self, error_type: &str, message: &str) -> (Bytes, Option<Bytes>) {
        let error = self
            .protocol
            .error_event(error_type, message, &self.route, 0);
        (error, self.closing.clone())
    }
}

/// A `200 text/event-stream` response, with the headers of every event stream.
fn event_stream(body: ResumeBody) -> Response<ResumeBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
    response
}

/// Removes the stream id from the request: the `Last-Event-ID` header and the
/// `lastEventId` query parameter (other parameters are kept byte for byte). `None`
/// when neither was there (bytes that are not text are kept lossily: no id of ours).
fn take_id<B>(request: &mut Request<B>) -> Option<String> {
    let header = request
        .headers_mut()
        .remove(&LAST_EVENT_ID)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let from_query = strip_query_param(request.uri_mut(), LAST_EVENT_ID_PARAM);
    // The header is what browsers send; the parameter is the polyfill's fallback.
    header.or(from_query)
}

/// Removes every `name=...` pair from the URI's query; returns the first value.
fn strip_query_param(uri: &mut Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    let mut found = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = form_urlencoded::parse(format!("{key}=").as_bytes())
            .next()
            .map(|(key, _)| key.into_owned());
        if decoded.as_deref() == Some(name) {
            if found.is_none() {
                found = form_urlencoded::parse(format!("v={value}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned());
            }
        } else {
            kept.push(pair);
        }
    }
    found.as_ref()?;
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_parameter_is_removed_and_the_rest_kept_byte_for_byte() {
        let mut uri: Uri = "/api/stream?q=a%20b&lastEventId=k-1&n=1&x".parse().unwrap();
        assert_eq!(
            strip_query_param(&mut uri, "lastEventId").as_deref(),
            Some("k-1")
        );
        assert_eq!(uri.to_string(), "/api/stream?q=a%20b&n=1&x");

        let mut uri: Uri = "/s?lastEventId=a%2D1".parse().unwrap();
        assert_eq!(
            strip_query_param(&mut uri, "lastEventId").as_deref(),
            Some("a-1")
        );
        assert_eq!(uri.to_string(), "/s");

        let mut uri: Uri = "/s?q=lastEventId".parse().unwrap();
        assert_eq!(strip_query_param(&mut uri, "lastEventId"), None);
        assert_eq!(uri.to_string(), "/s?q=lastEventId");
    }

    #[test]
    fn both_forms_are_taken_out_of_the_request() {
        let mut request = Request::builder()
            .uri("http://gw/api?q=hi&lastEventId=from-query")
            .header("last-event-id", "from-header")
            .body(())
            .unwrap();
        assert_eq!(take_id(&mut request).as_deref(), Some("from-header"));
        assert!(request.headers().get("last-event-id").is_none());
        assert_eq!(request.uri().query(), Some("q=hi"));
        let mut plain = Request::builder().uri("/api?q=hi").body(()).unwrap();
        assert_eq!(take_id(&mut plain), None);
    }
}
