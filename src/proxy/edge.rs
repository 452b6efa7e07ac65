//! A route's browser-facing edge: CORS (the gateway answers preflights itself and adds
//! the `Access-Control-*` headers to every response of the route) and the route's
//! `response.headers` changes.
//!
//! An `EventSource` on `app.example.com` reading a gateway on another origin gets
//! nothing without `Access-Control-Allow-Origin`; with `withCredentials` it also needs
//! the exact origin echoed (never `*`) and `Access-Control-Allow-Credentials: true`.
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here and
//! never reaches the upstream, which usually does not know the route's policy.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};

use crate::config::{AllowOrigins, CorsConfig, ResponsePlan, RouteConfig};
use crate::header_list;
use crate::reply::{error_json, ERROR_HEADER};

/// The gateway's own response headers a page on another origin may read.
static EXPOSED: HeaderValue = HeaderValue::from_static(
    "retry-after, x-request-id, x-sse-gateway-error, x-sse-gateway-stream-id",
);

/// The `type` of a refused preflight's error body.
pub(super) const CORS_REFUSED: &str = "cors_refused";

/// What a route does at its browser-facing edge.
#[derive(Debug)]
pub(super) struct Edge {
    cors: Option<CorsConfig>,
    response: ResponsePlan,
}

impl Edge {
    /// The route's edge; `None` when it has neither `cors` nor response header changes,
    /// so such routes cost nothing per request.
    pub(super) fn of(route: &RouteConfig) -> Option<Edge> {
        let response = &route.response;
        let nothing = route.cors.is_none()
            && response.set_headers.is_empty()
            && response.remove_headers.is_empty();
        (!nothing).then(|| Edge {
            cors: route.cors.clone(),
            response: response.clone(),
        })
    }

    /// The answer to a preflight (see [`preflight_method`]) on a CORS route: 204 with
    /// the `Access-Control-*` headers when the origin and the requested headers are
    /// allowed, else 403 without them (the browser then refuses the real request).
    /// `None` on a route without `cors`: there `OPTIONS` is the upstream's to answer.
    pub(super) fn preflight(
        &self,
        headers: &HeaderMap,
        requested: &Method,
        route: &str,
    ) -> Option<Response<Bytes>> {
        let cors = self.cors.as_ref()?;
        let origin = headers.get(ORIGIN);
        let Some(allow_origin) = allowed_origin(cors, origin) else {
            let shown = origin.and_then(|o| o.to_str().ok()).unwrap_or("(none)");
            return Some(refused(
                &format!("origin {shown} may not read this route (cors.allow_origins)"),
                route,
            ));
        };
        // `*` allows any header: the answer names the ones asked for, which a browser
        // takes with credentials too (a literal `*` it would not).
        let any_header = cors.allow_headers.iter().any(|name| name.as_str() == "*");
        let asked = requested_headers(headers);
        for name in asked.iter().filter(|_| !any_header) {
            if !cors.allow_headers.contains(name) {
                return Some(refused(
                    &format!(
                        "request header {name} is not allowed on this route (cors.allow_headers)"
                    ),
                    route,
                ));
            }
        }
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if cors.allow_credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Ok(method) = HeaderValue::from_str(requested.as_str()) {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, method);
        }
        let allowed = if any_header {
            &asked
        } else {
            &cors.allow_headers
        };
        if !allowed.is_empty() {
            let list = allowed
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(list) = HeaderValue::from_str(&list) {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, list);
            }
        }
        if let Some(max_age) = cors.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age.as_secs()));
        }
        // The answer depends on all three: a cache must not hand it to another origin.
        out.insert(
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Some(response)
    }

    /// Applies the route's header changes and CORS headers to a response of the route
    /// (the upstream's or one the gateway made); `origin` is the request's `Origin`.
    pub(super) fn finish(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for name in &self.response.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.response.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        let Some(cors) = &self.cors else { return };
        // The gateway owns CORS on this route: an upstream's own answer would make a
        // second, conflicting one, which browsers reject.
        headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        // A refused preflight stays without them, whatever the origin: it refuses.
        let refusal = headers.get(ERROR_HEADER).is_some_and(|t| t == CORS_REFUSED);
        if let Some(allow_origin) = allowed_origin(cors, origin).filter(|_| !refusal) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
            if cors.allow_credentials {
                headers.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            // None of these is a CORS-safelisted response header: without this a
            // page's script reads no `Retry-After` on a 429, no error type, no request
            // id. Appended, so an upstream's own list stays.
            headers.append(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED.clone());
        }
        let varies = matches!(cors.allow_origins, AllowOrigins::List(_));
        let has_vary_origin =
            header_list::items(headers, VARY).any(|v| v.eq_ignore_ascii_case("origin"));
        if varies && !has_vary_origin {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The method a CORS preflight asks about: `OPTIONS` with `Origin` and a valid
/// `Access-Control-Request-Method`; `None` for any other request.
pub(super) fn preflight_method<B>(request: &Request<B>) -> Option<Method> {
    if request.method() != Method::OPTIONS || !request.headers().contains_key(ORIGIN) {
        return None;
    }
    let requested = request.headers().get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

/// The `Access-Control-Allow-Origin` value for `origin`, if it may read the route:
/// `*` for any origin without credentials, else the origin itself.
fn allowed_origin(cors: &CorsConfig, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    match &cors.allow_origins {
        AllowOrigins::Any => Some(HeaderValue::from_static("*")),
        AllowOrigins::List(list) => {
            let origin = origin?;
            let text = origin.to_str().ok()?;
            list.iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(text))
                .then(|| origin.clone())
        }
    }
}

/// The header names of `Access-Control-Request-Headers`.
fn requested_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    header_list::items(headers, ACCESS_CONTROL_REQUEST_HEADERS)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// 403 in the one error shape, without any `Access-Control-Allow-*` header.
fn refused(message: &str, route: &str) -> Response<Bytes> {
    let mut response = Response::new(error_json(CORS_REFUSED, message, Some(route)));
    *response.status_mut() = StatusCode::FORBIDDEN;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(CORS_REFUSED));
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    response
}
