//! Token usage as the upstream reports it, read only from the event that carries it:
//! the final `usage` chunk on `openai-chat`, `response.usage` of the terminal event on
//! `openai-responses`, and `message_start.message.usage.input_tokens` /
//! `message_delta.usage.output_tokens` on `anthropic`.
//!
//! Every reader starts with a literal search for the key followed by something other
//! than `null`, so an event without usage (nearly all of them) costs no JSON parse.
//! The numbers are the upstream's own: the gateway counts no tokens itself.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

use super::classify::not_null_after;

/// Tokens an upstream reported for the answer; a field is `None` where this event did
/// not say. Values are totals for the whole answer, not increments: Anthropic repeats a
/// growing `output_tokens` in each `message_delta`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static INPUT_TOKENS_KEY: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"input_tokens\""));
static OUTPUT_TOKENS_KEY: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"output_tokens\""));

/// The literal pre-check: `"usage"` followed by something other than `null` (with
/// `include_usage`, every Chat Completions chunk but the last carries `"usage":null`).
pub(super) fn mentions_usage(text: &[u8]) -> bool {
    not_null_after(text, &USAGE_KEY)
}

/// The pre-check for Anthropic's `message_start`.
pub(super) fn mentions_input_tokens(text: &[u8]) -> bool {
    not_null_after(text, &INPUT_TOKENS_KEY)
}

/// The pre-check for Anthropic's `message_delta`.
pub(super) fn mentions_output_tokens(text: &[u8]) -> bool {
    not_null_after(text, &OUTPUT_TOKENS_KEY)
}

/// A Chat Completions chunk's `usage`, and whether the chunk is the usage-only one that
/// `stream_options.include_usage` adds (its `choices` is empty).
pub(super) fn chat(json: &Value) -> Option<(Usage, bool)> {
    let usage = json["usage"].as_object()?;
    let usage_only = json["choices"].as_array().is_some_and(Vec::is_empty);
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    Some((
        Usage {
            input_tokens: count("prompt_tokens"),
            output_tokens: count("completion_tokens"),
        },
        usage_only,
    ))
}

/// `response.usage` of a Responses terminal event (`response.completed`,
/// `response.incomplete`, `response.failed`).
pub(super) fn responses(json: &Value) -> Option<Usage> {
    let usage = json["response"]["usage"].as_object()?;
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    Some(Usage {
        input_tokens: count("input_tokens"),
        output_tokens: count("output_tokens"),
    })
}

/// `message.usage.input_tokens` of an Anthropic `message_start`.
pub(super) fn anthropic_start(json: &Value) -> Option<Usage> {
    Some(Usage {
        input_tokens: Some(json["message"]["usage"]["input_tokens"].as_u64()?),
        output_tokens: None,
    })
}

/// `usage.output_tokens` of an Anthropic `message_delta`: its running total; and its
/// `input_tokens` where it has one, which the SDKs take over `message_start`'s (the
/// total once the server knows it, cached or added input included).
pub(super) fn anthropic_delta(json: &Value) -> Option<Usage> {
    let usage = &json["usage"];
    Some(Usage {
        input_tokens: usage["input_tokens"].as_u64(),
        output_tokens: Some(usage["output_tokens"].as_u64()?),
    })
}

impl Usage {
    /// Takes what `newer` reports, keeping what it does not.
    pub fn update(&mut self, newer: Usage) {
        if newer.input_tokens.is_some() {
            self.input_tokens = newer.input_tokens;
        }
        if newer.output_tokens.is_some() {
            self.output_tokens = newer.output_tokens;
        }
    }
}
