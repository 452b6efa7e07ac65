//! What can go wrong in an upstream exchange, and whose fault it is.
//!
//! The kinds here are the only source of the `kind` label values of
//! `upstream_errors_total` and `client_errors_total`: each enum lists every value in
//! `ALL`, so metrics create every series from it and no string list is kept in step
//! by hand. A failure caused by the client's request body (malformed, cut short, too
//! slow, too large) is told apart from the upstream's, so a client cannot fire the
//! upstream alerts.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::StatusCode;

use super::client_body::ClientBodyError;
use crate::reply::ErrorType;

/// A boxed error source, as hyper and the connectors give them.
pub(super) type BoxError = Box<dyn StdError + Send + Sync>;

/// The `kind` of an upstream failure: before the response headers (connect,
/// `connect_timeout`, `header_timeout`, failed) or in the middle of the body (reset, body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connection refused, DNS or TLS failure.
    Connect,
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// No response headers within `header_timeout`.
    HeaderTimeout,
    /// The upstream broke the exchange before its headers: a reset, a malformed or
    /// unexpected (`1xx`) response.
    Failed,
    /// The connection was reset in the middle of the response body.
    Reset,
    /// The response body broke otherwise (bad chunked encoding, cut short).
    Body,
    /// The upstream answered with a `5xx` status.
    Status,
}

impl UpstreamErrorKind {
    /// Every kind, in [`UpstreamErrorKind::index`] order.
    pub const ALL: [UpstreamErrorKind; 7] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::HeaderTimeout,
        UpstreamErrorKind::Failed,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Body,
        UpstreamErrorKind::Status,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::HeaderTimeout => "header_timeout",
            UpstreamErrorKind::Failed => "failed",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Body => "body",
            UpstreamErrorKind::Status => "status",
        }
    }

    /// The position in [`UpstreamErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind of an error read from an upstream response body: `reset` when the
    /// connection was reset, else `body`.
    pub fn of_body_error(error: &(dyn StdError + 'static)) -> UpstreamErrorKind {
        let reset = causes(error)
            .filter_map(|e| e.downcast_ref::<io::Error>())
            .any(|e| e.kind() == io::ErrorKind::ConnectionReset);
        if reset {
            UpstreamErrorKind::Reset
        } else {
            UpstreamErrorKind::Body
        }
    }
}

/// The `kind` of a request the client spoiled (`client_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// The body is larger than the route's `max_body_size` (413).
    BodyTooLarge,
    /// The body is malformed: bad chunked encoding, or shorter than its
    /// `Content-Length` (400).
    BadBody,
    /// The body stopped arriving for the route's `body_timeout`, or was still
    /// unfinished when the upstream's `header_timeout` passed (408).
    BodyTimeout,
}

impl ClientErrorKind {
    /// Every kind, in [`ClientErrorKind::index`] order.
    pub const ALL: [ClientErrorKind; 3] = [
        ClientErrorKind::BodyTooLarge,
        ClientErrorKind::BadBody,
        ClientErrorKind::BodyTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::BodyTooLarge => "body_too_large",
            ClientErrorKind::BadBody => "bad_body",
            ClientErrorKind::BodyTimeout => "body_timeout",
        }
    }

    /// The position in [`ClientErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Who a failed exchange is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Upstream(UpstreamErrorKind),
    Client(ClientErrorKind),
}

/// Why an upstream request failed before its response headers arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to upstream {upstream}: {}", deepest_cause(&**.source))]
    Connect {
        upstream: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream {upstream} did not accept a connection within {after:?}")]
    ConnectTimeout {
        upstream: String,
        after: Duration,
        /// The connector's own report, when it timed out itself.
        #[source]
        source: Option<BoxError>,
    },
    #[error("upstream {upstream} sent no response headers within {after:?}")]
    HeaderTimeout { upstream: String, after: Duration },
    #[error("upstream {upstream} failed: {}", deepest_cause(&**.source))]
    Failed {
        upstream: String,
        #[source]
        source: BoxError,
    },
    /// A `1xx` other than the `100 Continue` hyper handles itself: the gateway never
    /// asks for a protocol switch, and a client must not be handed one.
    #[error("upstream {upstream} answered {status}, which a proxied request never asks for")]
    Informational {
        upstream: String,
        status: StatusCode,
    },
    /// The client's request body failed on its way up (its chain holds a
    /// [`ClientBodyError`]): the client's fault, whatever hyper made of it.
    #[error("{}", client_body_message(&**.source))]
    ClientBody {
        kind: ClientErrorKind,
        #[source]
        source: BoxError,
    },
}
impl UpstreamError {
    /// What the client is told.
    pub(crate) fn error_type(&self) -> ErrorType {
        match self.fault() {
            Fault::Upstream(UpstreamErrorKind::Connect) => ErrorType::UpstreamUnavailable,
            Fault::Upstream(
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::HeaderTimeout,
            ) => ErrorType::UpstreamTimeout,
            Fault::Upstream(_) => ErrorType::UpstreamError,
            Fault::Client(ClientErrorKind::BodyTooLarge) => ErrorType::PayloadTooLarge,
            Fault::Client(ClientErrorKind::BadBody) => ErrorType::BadRequest,
            Fault::Client(ClientErrorKind::BodyTimeout) => ErrorType::RequestTimeout,
        }
    }

    /// Whom to count it against, and under which kind.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            UpstreamError::Connect { .. } => Fault::Upstream(UpstreamErrorKind::Connect),
            UpstreamError::ConnectTimeout { .. } => {
                Fault::Upstream(UpstreamErrorKind::ConnectTimeout)
            }
            UpstreamError::HeaderTimeout { .. } => {
                Fault::Upstream(UpstreamErrorKind::HeaderTimeout)
            }
            UpstreamError::Failed { .. } | UpstreamError::Informational { .. } => {
                Fault::Upstream(UpstreamErrorKind::Failed)
            }
            UpstreamError::ClientBody { kind, .. } => Fault::Client(*kind),
        }
    }
}

/// The error and its chain of sources.
pub(crate) fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The client body's own account of an error whose chain holds one.
fn client_body_message(error: &(dyn StdError + Send + Sync + 'static)) -> String {
    let error: &(dyn StdError + 'static) = error;
    causes(error)
        .find_map(|cause| cause.downcast_ref::<ClientBodyError>())
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// The most specific message in an error chain ("connection refused" rather than
/// "client error (Connect)"), for the client's error message.
pub(crate) fn deepest_cause(error: &(dyn StdError + Send + Sync + 'static)) -> String {
    let error: &(dyn StdError + 'static) = error;
    causes(error)
        .last()
        .map_or_else(|| error.to_string(), std::string::ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_listed_in_index_order() {
        for (i, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{}", kind.as_str());
        }
        for (i, kind) in ClientErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{}", kind.as_str());
        }
    }

    #[test]
    fn a_reset_anywhere_in_the_chain_is_a_reset() {
        #[derive(Debug, thiserror::Error)]
        #[error("body error")]
        struct Wrapper(#[source] io::Error);
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let wrapped = Wrapper(reset);
        assert_eq!(
            UpstreamErrorKind::of_body_error(&wrapped),
            UpstreamErrorKind::Reset
        );
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "cut short");
        assert_eq!(
            UpstreamErrorKind::of_body_error(&eof),
            UpstreamErrorKind::Body
        );
    }

    #[test]
    fn the_message_is_the_deepest_cause_and_the_source_is_kept() {
        let error = UpstreamError::Connect {
            upstream: "assistant".into(),
            source: Box::new(io::Error::other(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
        };
        assert_eq!(
            error.to_string(),
            "cannot connect to upstream assistant: connection refused"
        );
        assert!(StdError::source(&error).is_some());
    }
}
