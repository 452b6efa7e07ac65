//! How a stream ended: exactly one outcome per stream, the `outcome` label of
//! `stream_duration_seconds`.

/// How an event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The terminator event (`[DONE]`) arrived.
    Terminator,
    /// The upstream ended its response without a terminator.
    UpstreamEof,
    /// The client went away first.
    ClientClosed,
    /// No data from the upstream for `idle_timeout`.
    IdleTimeout,
    /// The stream reached `max_duration`.
    MaxDuration,
    /// The upstream failed mid-stream (reset, bad chunked encoding).
    UpstreamError,
    /// An event exceeded `max_event_size`.
    Oversize,
    /// The gateway was shutting down and the drain time ran out.
    Shutdown,
    /// The stream ended, by any cause, without the completion evidence its route asks
    /// for: the client got an `upstream_incomplete` error.
    Truncated,
    /// The upstream sent its own error event, which was passed through.
    UpstreamErrorEvent,
}

impl Outcome {
    /// Every outcome, in [`Outcome::index`] order.
    pub const ALL: [Outcome; 10] = [
        Outcome::Terminator,
        Outcome::UpstreamEof,
        Outcome::ClientClosed,
        Outcome::IdleTimeout,
        Outcome::MaxDuration,
        Outcome::UpstreamError,
        Outcome::Oversize,
        Outcome::Shutdown,
        Outcome::Truncated,
        Outcome::UpstreamErrorEvent,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Terminator => "terminator",
            Outcome::UpstreamEof => "upstream_eof",
            Outcome::ClientClosed => "client_closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::MaxDuration => "max_duration",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Oversize => "oversize",
            Outcome::Shutdown => "shutdown",
            Outcome::Truncated => "truncated",
            Outcome::UpstreamErrorEvent => "upstream_error_event",
        }
    }

    /// Position in [`Outcome::ALL`], for per-outcome handle arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }
}
