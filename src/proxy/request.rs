//! Request translation: the client's request, made into the upstream's.
//!
//! Path prefix rewrite, method override, `query_as_json`, configured header changes,
//! hop-by-hop removal and the `X-Forwarded-*` headers. Everything here is decided by
//! the route's [`RequestPlan`], resolved once per request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
};
use http::{Method, Request, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{BodyMode, RequestPlan};
use crate::hop_by_hop::{keeps_alive, strip_hop_by_hop};
use crate::request_id::X_REQUEST_ID;
use crate::upstream::{ClientBody, ClientErrorKind, Upstream, UpstreamBody};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why an HTTP/1.1 request's `Host` makes it unanswerable (RFC 9112 section 3.2: a
/// server must answer 400 to a request without exactly one); `None` when it is fine.
/// Two `Host` headers are how a request means one thing to the gateway and another
/// to a server behind it; HTTP/1.0 and h2 (`:authority`) requests need none.
pub(crate) fn host_problem<B>(request: &Request<B>) -> Option<&'static str> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => Some("an HTTP/1.1 request needs a Host header"),
        (Some(_), Some(_)) => Some("the request has more than one Host header"),
        (Some(_), None) => None,
    }
}

/// The request's facts that translation needs beyond the request itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub peer: SocketAddr,
    /// The peer is in `trusted_proxies`: its `X-Forwarded-Proto` and `-Host` stand.
    pub trusted_peer: bool,
    /// Length of the path prefix the route matched (replaced by `path_prefix`).
    pub matched_len: usize,
    pub plan: &'a RequestPlan,
    pub upstream: &'a Upstream,
}

/// Why a request could not be translated; the client gets a 400.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TranslateError {
    #[error("the request cannot be turned into an upstream request: {0}")]
    Uri(#[from] http::Error),
    #[error("the request body of {length} bytes is larger than this route's {limit} bytes")]
    BodyTooLarge { length: u64, limit: u64 },
}

impl TranslateError {
    pub(crate) fn error_type(&self) -> crate::reply::ErrorType {
        match self {
            TranslateError::Uri(_) => crate::reply::ErrorType::BadRequest,
            TranslateError::BodyTooLarge { .. } => crate::reply::ErrorType::PayloadTooLarge,
        }
    }

    /// The `client_errors_total` kind, for the errors that are about the body.
    pub(crate) fn client_error_kind(&self) -> Option<ClientErrorKind> {
        match self {
            TranslateError::Uri(_) => None,
            TranslateError::BodyTooLarge { .. } => Some(ClientErrorKind::BodyTooLarge),
        }
    }
}

/// Builds the upstream request from the client's.
pub(crate) fn translate(
    request: Request<Incoming>,
    origin: Origin<'_>,
) -> Result<Request<UpstreamBody>, TranslateError> {
    let (mut parts, body) = request.into_parts();
    let plan = origin.plan;
    // A declared length over the limit is refused before anything is sent upstream;
    // an undeclared one is cut off by `Limited` as it streams.
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&length| length > plan.max_body_size) {
        return Err(TranslateError::BodyTooLarge {
            length,
            limit: plan.max_body_size,
        });
    }

    // The authority the client asked for, before Host is replaced by the upstream's
    // (and before a `Connection: host` could remove it).
    let client_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let keep_alive = keeps_alive(parts.version, &parts.headers);
    // The client's hop-by-hop headers go before the gateway adds its own: a client
    // naming `Content-Type` in `Connection` must not remove the one set below. The
    // request id, set before routing, is the gateway's too: a `Connection` naming it
    // does not keep it from the upstream.
    let request_id = parts.headers.get(&X_REQUEST_ID).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(request_id) = request_id {
        parts.headers.insert(X_REQUEST_ID.clone(), request_id);
    }

    let path = parts.uri.path();
    let path = match &plan.path_prefix {
        None => path.to_owned(),
        Some(prefix) => replace_prefix(prefix, &path[origin.matched_len.min(path.len())..]),
    };

    // Only the requests a streaming client makes, an `EventSource` GET and an SDK's
    // POST, are translated to the route's method and `query_as_json` body. A HEAD
    // asks only for the headers a GET would get: the route's method (a POST that
    // starts a paid generation) would answer it with a body nobody reads, and a body
    // on a HEAD may be refused as a smuggling attempt (RFC 9110 section 9.3.2). A
    // DELETE, PUT, PATCH or a preflight OPTIONS on a route without `match.methods`
    // means something of its own: turned into the POST, it would start a generation.
    let translated = matches!(parts.method, Method::GET | Method::POST);
    let query = parts.uri.query();
    // A client that sends a body (a `Content-Length` above 0, or a chunked body) can
    // speak the upstream's API itself: its body goes through untouched, with the query
    // on the URL. Replacing it with the query would silently lose what it sent.
    let query_body =
        translated && plan.body == BodyMode::QueryAsJson && hyper::body::Body::is_end_stream(&body);
    let (query, body) = if query_body {
        let json = query_as_json(query.unwrap_or(""));
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
        (None, Either::Right(Full::new(json)))
    } else {
        let limit = usize::try_from(plan.max_body_size).unwrap_or(usize::MAX);
        (
            query,
            Either::Left(ClientBody::new(body, limit, plan.body_timeout, keep_alive)),
        )
    };
    let uri = origin.upstream.uri(&path, query)?;

    let headers = &mut parts.headers;
    headers.remove(HOST);
    for name in &plan.remove_headers {
        headers.remove(name);
    }
    append_forwarded_for(headers, origin.peer);
    let proto = origin
        .trusted_peer
        .then(|| forwarded_proto(headers))
        .flatten()
        .unwrap_or(HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    // Anyone else's goes, even when there is no host to put in its place (an HTTP/1.0
    // request without `Host`).
    let host_forwarded = origin.trusted_peer && headers.contains_key(&X_FORWARDED_HOST);
    if !host_forwarded {
        headers.remove(&X_FORWARDED_HOST);
        if let Some(host) = client_host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    // Stream bytes are parsed and rewritten on the way back: ask for them unencoded.
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    for (name, value) in &plan.set_headers {
        headers.insert(name.clone(), value.clone());
    }

    parts.uri = uri;
    if let Some(method) = plan.method.as_ref().filter(|_| translated) {
        parts.method = method.clone();
    }
    // The upstream connection's protocol is the pool's choice (ALPN), not the
    // client's: an h2c client must not force h2 on an HTTP/1.1 upstream.
    if parts.version == Version::HTTP_2 {
        join_cookie_crumbs(&mut parts.headers);
    }
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// `prefix` in place of the matched part of a path, `rest` what followed it. The
/// separator goes between them once: a match of `/api` leaves `/chat` of `/api/chat`,
/// a match of `/` (or `/api/`) leaves `chat`.
fn replace_prefix(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        return prefix.to_owned();
    }
    let prefix = prefix.trim_end_matches('/');
    if rest.starts_with('/') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}/{rest}")
    }
}

/// The client's `X-Forwarded-For` list with the peer's address added: every line of
/// it, for several lines are one list (RFC 9110 section 5.3), and a front proxy may
/// have added its own line after the client's.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = String::new();
    for line in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(line) = line.to_str() else { continue };
        if !line.trim().is_empty() {
            value.push_str(line.trim());
            value.push_str(", ");
        }
    }
    value.push_str(&peer.ip().to_string());
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// A trusted proxy's `X-Forwarded-Proto`, as one value, when every scheme in it is
/// `http` or `https` (a chain of proxies may list several, the client's first);
/// anything else is replaced by the connection's scheme.
fn forwarded_proto(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut schemes = Vec::new();
    for line in headers.get_all(&X_FORWARDED_PROTO) {
        for scheme in line.to_str().ok()?.split(',').map(str::trim) {
            // Lower case as RFC 3986 writes schemes: an application that compares
            // with "https" must not take a proxy's `HTTPS` for plain http.
            let scheme = if scheme.eq_ignore_ascii_case("https") {
                "https"
            } else if scheme.eq_ignore_ascii_case("http") {
                "http"
            } else {
                return None;
            };
            schemes.push(scheme);
        }
    }
    match schemes.as_slice() {
        [] => None,
        [one] => Some(HeaderValue::from_static(one)),
        several => HeaderValue::from_str(&several.join(", ")).ok(),
    }
}

/// An h2 client may send its cookies as several `cookie` fields; toward HTTP/1.1 they
/// must be one, joined by `; ` (RFC 9113 section 8.2.3): many HTTP/1 servers read only
/// the first line.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, joined);
    }
}

/// `q=hi&n=1` -> `{"q":"hi","n":"1"}`; a repeated key becomes an array of its values
/// in order, so nothing the client sent is lost.
pub(crate) fn query_as_json(query: &str) -> Bytes {
    use serde_json::{Map, Value};
    let mut object = Map::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = Value::String(value.into_owned());
        match object.get_mut(key.as_ref()) {
            None => {
                object.insert(key.into_owned(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                object.insert(key.into_owned(), Value::Array(vec![first, value]));
            }
        }
    }
    Bytes::from(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_becomes_a_json_object_of_strings() {
        let json: serde_json::Value =
            serde_json::from_slice(&query_as_json("q=hi%20there&conversation=7&e=")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"q": "hi there", "conversation": "7", "e": ""})
        );
    }

    #[test]
    fn repeated_keys_keep_every_value() {
        let json: serde_json::Value =
            serde_json::from_slice(&query_as_json("t=a&t=b&t=c&x=1")).unwrap();
        assert_eq!(json, serde_json::json!({"t": ["a", "b", "c"], "x": "1"}));
    }

    #[test]
    fn control_characters_are_escaped_in_json_not_passed_to_headers() {
        let body = query_as_json("q=a%0D%0AX-Injected:%201");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["q"], "a\r\nX-Injected: 1");
        assert!(!body.contains(&b'\r'));
    }
}
