//! Why an answer finished, as the upstream said it: a Chat Completions
//! `finish_reason`, an Anthropic `stop_reason`, or a Responses terminal event and its
//! `incomplete_details.reason`.
//!
//! A complete answer is not always a whole one: `length` and `max_tokens` mean the model
//! was cut by its token limit, `content_filter` that the provider withheld the rest. The
//! stream's outcome says the protocol ended properly; its finish reasons say how the
//! answer ended. They are counted per route (`sse_gateway_finish_reasons_total`), named
//! in the log line and on the request's span.
//!
//! Labels are bounded: each protocol has its list, and any other value is `other`, so an
//! upstream cannot grow the series count.

use super::Protocol;

/// Every label, all protocols together, each protocol's a run of them
/// ([`Protocol::finish_reasons`]); a set of them is a bit per position.
const LABELS: &[&str] = &[
    // Chat Completions
    "stop",
    "length",
    "tool_calls",
    "function_call",
    // Chat Completions and Responses
    "content_filter",
    // Responses: the terminal event, or the reason an incomplete response gives
    "completed",
    "max_output_tokens",
    "max_messages",
    "steered",
    "incomplete",
    // Anthropic Messages
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
    "other",
];

const OTHER: usize = LABELS.len() - 1;

impl Protocol {
    /// The finish reasons this protocol's upstreams send, as labels, `other` last;
    /// none for `sse`.
    pub(crate) fn finish_reasons(self) -> impl Iterator<Item = &'static str> {
        let own = match self {
            Protocol::OpenaiChat => 0..5,
            Protocol::OpenaiResponses => 4..10,
            Protocol::Anthropic => 10..OTHER,
            Protocol::Sse => 0..0,
        };
        let other = if own.is_empty() {
            0..0
        } else {
            OTHER..LABELS.len()
        };
        LABELS[own].iter().chain(&LABELS[other]).copied()
    }
}

/// A set of finish reasons: the choices of one chunk, or of a whole stream (with `n`
/// above 1, each choice finishes with its own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FinishReasons(u32);

impl FinishReasons {
    /// The set holding `reason` as `protocol` labels it: one of its list, else `other`.
    pub(crate) fn of(protocol: Protocol, reason: Option<&str>) -> FinishReasons {
        let known = reason.filter(|reason| protocol.finish_reasons().any(|own| own == *reason));
        let position = known
            .and_then(|reason| LABELS.iter().position(|label| *label == reason))
            .unwrap_or(OTHER);
        FinishReasons(1 << position)
    }

    pub fn add(&mut self, other: FinishReasons) {
        self.0 |= other.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The labels in the set, in the order of the lists above.
    pub fn labels(self) -> impl Iterator<Item = &'static str> {
        LABELS
            .iter()
            .enumerate()
            .filter(move |(position, _)| self.0 & 1 << position != 0)
            .map(|(_, label)| *label)
    }
}

/// The labels, comma-separated: the log line's `finish_reasons`.
impl std::fmt::Display for FinishReasons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (position, label) in self.labels().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            f.write_str(label)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_outside_the_protocols_list_is_other() {
        let chat = |reason| {
            FinishReasons::of(Protocol::OpenaiChat, reason)
                .labels()
                .collect::<Vec<_>>()
        };
        assert_eq!(chat(Some("length")), ["length"]);
        assert_eq!(chat(Some("end_turn")), ["other"]);
        assert_eq!(chat(Some("eos_token")), ["other"]);
        assert_eq!(chat(None), ["other"]);
    }

    #[test]
    fn a_set_keeps_each_reason_once() {
        let mut reasons = FinishReasons::default();
        assert!(reasons.is_empty());
        for reason in ["stop", "length", "stop"] {
            reasons.add(FinishReasons::of(Protocol::OpenaiChat, Some(reason)));
        }
        assert_eq!(reasons.labels().collect::<Vec<_>>(), ["stop", "length"]);
        assert_eq!(reasons.to_string(), "stop,length");
    }

    #[test]
    fn each_protocol_has_its_own_reasons_and_other() {
        let list = |protocol: Protocol| protocol.finish_reasons().collect::<Vec<_>>();
        assert_eq!(
            list(Protocol::OpenaiChat),
            [
                "stop",
                "length",
                "tool_calls",
                "function_call",
                "content_filter",
                "other"
            ]
        );
        assert_eq!(
            list(Protocol::OpenaiResponses),
            [
                "content_filter",
                "completed",
                "max_output_tokens",
                "max_messages",
                "steered",
                "incomplete",
                "other"
            ]
        );
        assert_eq!(list(Protocol::Anthropic).len(), 8);
        assert_eq!(list(Protocol::Anthropic)[0], "end_turn");
        assert_eq!(list(Protocol::Anthropic)[7], "other");
        assert!(list(Protocol::Sse).is_empty());
        assert!(LABELS.len() <= 32, "a set is a u32");
    }
}
