//! Request ids: the `x-request-id` that ties a request's log lines, its upstream
//! request, its response and its trace together.
//!
//! The client's id is kept when it is sane (1 to 128 characters: letters, digits and
//! `-_.:=+/@`), so an id minted at the edge follows the request through; anything
//! else (absent, repeated, too long, other characters) is replaced by a generated one,
//! so a client cannot write arbitrary bytes into logs or upstream headers. The id is
//! sent upstream, returned to the client, and carried by the request's `tracing` span,
//! so every log line written for the request names it.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header, in requests and responses.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id kept.
pub(crate) const MAX_LEN: usize = 128;

/// A request's id, valid as a header value and safe in a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id when it sent exactly one sane one, else a new one.
    pub(crate) fn of(headers: &HeaderMap) -> RequestId {
        let mut ids = headers.get_all(&X_REQUEST_ID).iter();
        match (ids.next(), ids.next()) {
            (Some(id), None) if is_sane(id.as_bytes()) => RequestId(id.clone()),
            _ => RequestId::generate(),
        }
    }

    /// 32 hex digits, unique per process (a counter) and not guessable across
    /// processes (a per-process random key).
    pub(crate) fn generate() -> RequestId {
        static KEY: LazyLock<std::collections::hash_map::RandomState> =
            LazyLock::new(std::collections::hash_map::RandomState::new);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let half = |salt: u64| {
            let mut hasher = KEY.build_hasher();
            hasher.write_u64(count);
            hasher.write_u64(salt);
            hasher.finish()
        };
        let id = format!("{:016x}{:016x}", half(0), half(1));
        // Hex digits are always a valid header value.
        RequestId(HeaderValue::from_str(&id).expect("hex is a header value"))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only sane (ASCII) values are ever stored.
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request's span: every log line written inside it names the id. At error level
/// so that no log filter short of `off` drops it, and with it the id from the lines.
pub(crate) fn request_span(id: &RequestId) -> tracing::Span {
    tracing::error_span!("request", request_id = %id)
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:=+/@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[&[u8]]) -> RequestId {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        }
        RequestId::of(&headers)
    }

    #[test]
    fn a_sane_client_id_is_kept() {
        for id in [
            "0b5e2c1a-7d4f-4f6e-9a3b-2c1d0e9f8a7b",
            "01HZX3K5M6N7P8Q9R0S1T2V3W4",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "a",
        ] {
            assert_eq!(of(&[id.as_bytes()]).as_str(), id);
        }
        let longest = "x".repeat(MAX_LEN);
        assert_eq!(of(&[longest.as_bytes()]).as_str(), longest);
    }

    #[test]
    fn anything_else_is_replaced_by_a_generated_id() {
        let generated = |id: &RequestId| {
            id.as_str().len() == 32 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit())
        };
        let too_long = "x".repeat(MAX_LEN + 1);
        for bad in [
            b"" as &[u8],
            too_long.as_bytes(),
            b"has space",
            b"quote\"",
            b"new\tline",
            b"caf\xc3\xa9",
            b"<script>",
        ] {
            let id = of(&[bad]);
            assert!(generated(&id), "{bad:?} -> {id}");
        }
        assert!(generated(&of(&[])), "absent");
        assert!(generated(&of(&[b"a", b"b"])), "repeated");
    }

    #[test]
    fn generated_ids_differ() {
        let ids: std::collections::BTreeSet<String> = (0..1000)
            .map(|_| RequestId::generate().to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
    }
}
