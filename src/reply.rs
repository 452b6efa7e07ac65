//! What the gateway says itself, in the error shape of the route's protocol.
//!
//! `{"error":{"type":"...","message":"...","route":"..."}}` is the generic shape (`sse`
//! routes, and requests no route matched), used alike for a 404, a 504 before headers,
//! and an `event: error` inside a stream; a route with an assistant protocol gets the
//! shape its SDK raises on (`docs/protocols.md`). Responses made here carry
//! `x-sse-gateway-error: <type>`, so an operator can tell the gateway's own answers from
//! the upstream's.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Response, StatusCode};

use crate::protocol::Protocol;

pub(crate) use crate::protocol::shape::{error_json, error_json_in};

/// Marks responses the gateway made itself; the value is the error type.
pub(crate) const ERROR_HEADER: &str = "x-sse-gateway-error";

/// The `type` of an error the gateway reports; also a fixed, bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorType {
    NotFound,
    MethodNotAllowed,
    BadRequest,
    /// The request body is larger than the route's `max_body_size`.
    PayloadTooLarge,
    /// The request body stopped arriving (`body_timeout`), or was unfinished when the
    /// upstream's `header_timeout` passed.
    RequestTimeout,
    /// The upstream could not be reached (refused, DNS, TLS).
    UpstreamUnavailable,
    /// The upstream did not connect or answer in time.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, malformed response).
    UpstreamError,
    /// The route (or this client) has as many streams open as its `limits` allow.
    TooManyRequests,
    /// A resumable stream's shared store (Redis) cannot be reached for what it must do.
    StoreUnavailable,
}

impl ErrorType {
    /// Every type, in declaration order (the tests hold each to a distinct label).
    #[cfg(test)]
    pub(crate) const ALL: [ErrorType; 10] = [
        ErrorType::NotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::BadRequest,
        ErrorType::PayloadTooLarge,
        ErrorType::RequestTimeout,
        ErrorType::UpstreamUnavailable,
        ErrorType::UpstreamTimeout,
        ErrorType::UpstreamError,
        ErrorType::TooManyRequests,
        ErrorType::StoreUnavailable,
    ];

    /// The `type` of the JSON error object.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::BadRequest => "bad_request",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::RequestTimeout => "request_timeout",
            ErrorType::UpstreamUnavailable => "upstream_unavailable",
            ErrorType::UpstreamTimeout => "upstream_timeout",
            ErrorType::UpstreamError => "upstream_error",
            ErrorType::TooManyRequests => "too_many_requests",
            ErrorType::StoreUnavailable => "store_unavailable",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::BadRequest => StatusCode::BAD_REQUEST,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::UpstreamUnavailable | ErrorType::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorType::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorType::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A complete error response in the generic shape.
pub(crate) fn error_response(
    error_type: ErrorType,
    message: &str,
    route: Option<&str>,
) -> Response<Bytes> {
    error_response_in(Protocol::Sse, error_type, message, route)
}

/// A complete error response in `protocol`'s shape.
pub(crate) fn error_response_in(
    protocol: Protocol,
    error_type: ErrorType,
    message: &str,
    route: Option<&str>,
) -> Response<Bytes> {
    let body = error_json_in(protocol, error_type.as_str(), message, route, None);
    let mut response = Response::new(body);
    *response.status_mut() = error_type.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(error_type.as_str()));
    response
}

/// 405 with the `Allow` header listing what the path takes, in the shape of the
/// route that owns the path (its clients are that protocol's SDKs).
pub(crate) fn method_not_allowed(
    protocol: Protocol,
    method: &Method,
    allow: &[Method],
    route: Option<&str>,
) -> Response<Bytes> {
    let allowed = allow
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!("method {method} is not allowed here; allowed: {allowed}");
    let mut response = error_response_in(protocol, ErrorType::MethodNotAllowed, &message, route);
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_error_shape() {
        let json: serde_json::Value = serde_json::from_slice(&error_json(
            "upstream_timeout",
            "no \"answer\"",
            Some("chat"),
        ))
        .unwrap();
        assert_eq!(json["error"]["type"], "upstream_timeout");
        assert_eq!(json["error"]["message"], "no \"answer\"");
        assert_eq!(json["error"]["route"], "chat");
        let none: serde_json::Value =
            serde_json::from_slice(&error_json("not_found", "x", None)).unwrap();
        assert!(none["error"]["route"].is_null());
        assert_eq!(
            &error_json("not_found", "x", None)[..],
            br#"{"error":{"type":"not_found","message":"x","route":null}}"#
        );
    }

    #[test]
    fn every_type_has_its_own_name_and_an_error_status() {
        let names: std::collections::BTreeSet<&str> =
            ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), ErrorType::ALL.len());
        for error_type in ErrorType::ALL {
            let status = error_type.status();
            assert!(status.is_client_error() || status.is_server_error());
        }
    }

    #[test]
    fn shapes_per_protocol() {
        let parse = |protocol, seq| -> serde_json::Value {
            serde_json::from_slice(&error_json_in(
                protocol,
                "upstream_timeout",
                "m",
                Some("r"),
                seq,
            ))
            .unwrap()
        };
        let chat = parse(Protocol::OpenaiChat, None);
        assert_eq!(chat["error"]["type"], "upstream_timeout");
        assert_eq!(chat["error"]["code"], "upstream_timeout");
        assert!(chat["error"]["param"].is_null());
        assert_eq!(parse(Protocol::OpenaiResponses, None), chat);
        let anthropic = parse(Protocol::Anthropic, None);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["message"], "m");
        let responses = parse(Protocol::OpenaiResponses, Some(7));
        assert_eq!(responses["type"], "error");
        assert_eq!(responses["code"], "upstream_timeout");
        assert_eq!(responses["sequence_number"], 7);
        assert_eq!(responses["error"]["message"], "m");
        assert_eq!(parse(Protocol::Sse, None)["error"]["route"], "r");
        let response = error_response_in(
            Protocol::Anthropic,
            ErrorType::UpstreamUnavailable,
            "down",
            Some("r"),
        );
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[ERROR_HEADER], "upstream_unavailable");
    }

    #[test]
    fn allow_lists_methods() {
        let response = method_not_allowed(
            Protocol::Sse,
            &Method::PUT,
            &[Method::GET, Method::POST],
            Some("chat"),
        );
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
        assert_eq!(response.headers()[ERROR_HEADER], "method_not_allowed");
    }
}
