//! Hop-by-hop headers: those that describe one connection, not the message, and
//! never cross a proxy. Both the config (which refuses to set them) and the proxy
//! (which removes them both ways) need the one list.

use http::header::{HeaderMap, HeaderName, CONNECTION};

use crate::header_list;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1, plus
/// the non-standard ones proxies meet in practice).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// True for the fixed hop-by-hop headers (configuring them is refused).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// True when a request of `version` with `headers` leaves its HTTP/1.1 connection open
/// after the answer: its `Connection` header does not say `close`.
pub(crate) fn keeps_alive(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && !header_list::items(headers, CONNECTION).any(|token| token.eq_ignore_ascii_case("close"))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// A message that came with `Transfer-Encoding` loses its `Content-Length` too: its
/// body was read by the transfer coding, and the length, which an agent must then
/// ignore (RFC 9112 section 6.3), would cut the body the next hop reads by it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = header_list::items(headers, CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["authorization"]);
    }

    #[test]
    fn only_an_http11_request_without_close_keeps_its_connection() {
        let with = |connection: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = connection {
                headers.insert(CONNECTION, HeaderValue::from_static(value));
            }
            headers
        };
        let http11 = http::Version::HTTP_11;
        assert!(keeps_alive(http11, &with(None)));
        assert!(keeps_alive(http11, &with(Some("keep-alive, x-hop"))));
        assert!(!keeps_alive(http11, &with(Some("x-hop, Close"))));
        assert!(!keeps_alive(
            http::Version::HTTP_10,
            &with(Some("keep-alive"))
        ));
        assert!(!keeps_alive(http::Version::HTTP_2, &with(None)));
    }
}
