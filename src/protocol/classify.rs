//! What one event means on a protocol: completion evidence, terminal, the upstream's
//! own error, its sequence number, or only a keep-alive.
//!
//! Every check starts with a literal search on the event's bytes, and the event type
//! comes from the event view (its `event:` line) or the start of its data, so an
//! ordinary content event costs no JSON parse and no allocation. JSON is read only to
//! confirm what the literals suggest: a `finish_reason`/`stop_reason` that is not
//! `null`, or an error object.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

use super::usage::{self, Usage};
use super::{CompleteWhen, Contract, FinishReasons, Protocol};
use crate::sse::Event;

/// The upstream error types counted under their own label; any other is `other`, so
/// an upstream cannot grow the series count.
pub(crate) const UPSTREAM_ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "rate_limit_exceeded",
    "insufficient_quota",
    "context_length_exceeded",
    "api_error",
    "server_error",
    "overloaded_error",
    "timeout",
    "other",
];

/// What an event forwarded on a route meant.
// Independent facts about one event, each read by a different consumer: not a state.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// The answer is complete (a finish reason, a stop reason, a terminal event, or
    /// what `complete_when` asks for).
    pub evidence: bool,
    /// The event ends the stream, as a terminator does.
    pub terminal: bool,
    /// The upstream's own error: its type as a bounded label.
    pub upstream_error: Option<&'static str>,
    /// That error is in a form the protocol's SDKs do not raise on (an Anthropic
    /// error without its `event: error` line, which they skip; a Chat
    /// `finish_reason` of `error` without an error object, which they return as a
    /// finish): passed on alone, it would seal a failed answer as a complete one.
    pub error_unseen: bool,
    /// The Responses event's `sequence_number`.
    pub sequence_number: Option<u64>,
    /// The event carries content: a non-empty delta of answer text, refusal text or
    /// tool-call arguments. A role-only delta, `response.created`, `message_start`, a
    /// ping or streamed reasoning is none: time to first token, inter-token gaps and the failover commit
    /// point are measured on these. On the `sse` protocol every data event that is no
    /// keep-alive counts.
    pub content: bool,
    /// The event carries streamed reasoning: a non-empty thinking delta. Not the
    /// answer, so not content; but the client has seen the model's output, which an
    /// attempt on another endpoint could not take back.
    pub reasoning: bool,
    /// The upstream's token usage, where this event reports it (`protocol::usage`).
    pub usage: Option<Usage>,
    /// A Chat Completions chunk that carries only usage (`choices` empty): the one
    /// `stream_options.include_usage` adds before `[DONE]`.
    pub usage_only: bool,
    /// The Chat Completions choices this chunk speaks for, and those it finishes: with
    /// `n` above 1 the answer is complete only when every choice seen has finished.
    pub choices: Choices,
    /// Why the answer (or, with `n` above 1, each choice this chunk finishes) ended,
    /// where this event says so.
    pub finish: FinishReasons,
}

/// A set of Chat Completions choices by `index`, and which of them have finished.
///
/// Choices past index 127 are not tracked (the API allows `n` up to 128); a chunk
/// without an `index` speaks for choice 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Choices {
    seen: u128,
    finished: u128,
}

impl Choices {
    /// Adds what one chunk said.
    pub fn add(&mut self, other: Choices) {
        self.seen |= other.seen;
        self.finished |= other.finished;
    }

    /// Whether every choice seen has finished (true when none was seen).
    pub fn all_finished(&self) -> bool {
        self.seen & !self.finished == 0
    }

    fn bit(index: u64) -> u128 {
        1u128
            .checked_shl(u32::try_from(index).unwrap_or(u32::MAX))
            .unwrap_or(0)
    }
}

static FINISH_REASON: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"finish_reason\""));
static STOP_REASON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"stop_reason\""));
static ERROR_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
static TYPE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\""));
static SEQUENCE_NUMBER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"sequence_number\""));
static INDEX_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"index\""));
static CONTENT_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\""));
static REFUSAL_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"refusal\""));
static ARGUMENTS_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"arguments\""));
static DELTA_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"delta\""));
static TEXT_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\""));
static THINKING_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"thinking\""));
static REASONING_CONTENT_KEY: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"reasoning_content\""));
static REASONING_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"reasoning\""));
static PARTIAL_JSON_KEY: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"partial_json\""));

impl Contract {
    /// True for an event that carries data but is no content: Anthropic's `ping`. It
    /// must not restart the data clock, or pings would hide a stalled answer.
    pub fn is_keep_alive(&self, event: &Event<'_>) -> bool {
        self.protocol == Protocol::Anthropic && event_kind(event) == Some(b"ping")
    }

    /// Classifies an event about to be forwarded (after the rules ran, LF-only).
    /// `terminal_events`: the protocol's terminal events end the stream (the route
    /// names no terminator of its own).
    pub fn classify(&self, text: &[u8], terminal_events: bool) -> Class {
        let event = Event::new(text);
        match self.protocol {
            Protocol::OpenaiChat => chat(text, &event),
            Protocol::OpenaiResponses => responses(text, &event, terminal_events),
            Protocol::Anthropic => anthropic(text, &event, terminal_events),
            Protocol::Sse => Class {
                evidence: self.complete_when.as_ref().is_some_and(|when| match when {
                    CompleteWhen::DataMatches(regex) => {
                        event.data().is_some_and(|data| regex.is_match(&data))
                    }
                    CompleteWhen::Event(name) => event.event_type() == Some(&name[..]),
                }),
                content: event.has_data() && !self.is_keep_alive(&event),
                ..Class::default()
            },
        }
    }
}

fn chat(text: &[u8], event: &Event<'_>) -> Class {
    let mut class = Class {
        content: [&*CONTENT_KEY, &*ARGUMENTS_KEY, &*REFUSAL_KEY]
            .into_iter()
            .any(|key| non_empty_string_after(text, key)),
        choices: Choices {
            seen: choice_indices(text, event),
            finished: 0,
        },
        ..Class::default()
    };
    // Streamed reasoning, as DeepSeek and vLLM (`reasoning_content`) or OpenRouter
    // (`reasoning`) write it; looked for only in chunks without answer text.
    class.reasoning = !class.content
        && [&*REASONING_CONTENT_KEY, &*REASONING_KEY]
            .into_iter()
            .any(|key| non_empty_string_after(text, key));
    if usage::mentions_usage(text) {
        if let Some((usage, usage_only)) = data_json(event).as_ref().and_then(usage::chat) {
            class.usage = Some(usage);
            class.usage_only = usage_only;
        }
    }
    // The last choice's reason: a chunk carries one choice, or (with `n` above 1) any
    // of them, so there every reason is looked at.
    let reason_set = |at: usize| not_null_at(&text[at + FINISH_REASON.needle().len()..]);
    let several = class.choices.seen & !1 != 0;
    let finished = find_near_end(text, &FINISH_REASON).is_some_and(|at| {
        reason_set(at) || several && FINISH_REASON.find_iter(text).any(reason_set)
    });
    if !finished {
        // An error chunk may have no choices, or choices with no reason (a provider's
        // mid-stream error). Outside a string `"error"` can only be a key: the text
        // of an answer has its quotes escaped.
        if ERROR_KEY.find(text).is_some() {
            class.upstream_error = data_json(event).as_ref().and_then(chat_error);
        }
        return class;
    }
    if let Some(json) = data_json(event) {
        // An error chunk may name a finish_reason too (OpenRouter's says "error"): the
        // SDKs raise on its `error`, so it is no finish.
        if let Some(error) = chat_error(&json) {
            class.upstream_error = Some(error);
            return class;
        }
        let choices = json["choices"].as_array().map_or(&[][..], Vec::as_slice);
        // OpenRouter's reason for a provider's failure; an aborted generation. Any
        // choice's fails the answer, whatever the others said before it.
        let failed =
            |choice: &Value| matches!(choice["finish_reason"].as_str(), Some("error" | "abort"));
        if choices.iter().any(failed) {
            class.upstream_error = Some("other");
            class.error_unseen = true;
            return class;
        }
        for (position, choice) in (0u64..).zip(choices) {
            let bit = Choices::bit(choice["index"].as_u64().unwrap_or(position));
            class.choices.seen |= bit;
            let reason = &choice["finish_reason"];
            if is_set(reason) {
                class.choices.finished |= bit;
                class.evidence = true;
                class
                    .finish
                    .add(FinishReasons::of(Protocol::OpenaiChat, reason.as_str()));
            }
        }
    }
    class
}

/// The `index` of each choice a chunk holds, as bits. Index 0 needs no check: every
/// stream that has choices has choice 0, so an ordinary chunk costs one search. Any
/// other index is taken from the data alone ([`indices_by_depth`]).
fn choice_indices(text: &[u8], event: &Event<'_>) -> u128 {
    let mut bits = 0;
    for at in INDEX_KEY.find_iter(text) {
        match number_after(&text[at + INDEX_KEY.needle().len()..]) {
            Some(0) => bits |= 1,
            Some(_) => return bits | event.data().map_or(0, |data| indices_by_depth(&data)),
            None => {}
        }
    }
    bits
}

/// Every `"index"` key one level inside the top-level object's arrays
/// (`{"choices":[{"index":1,...`). A tool call's own `index` sits deeper, and may
/// come first: writers that sort keys put `delta` before `index`.
fn indices_by_depth(data: &[u8]) -> u128 {
    keys_at_depth(data, &INDEX_KEY, 3)
        .filter_map(|at| number_after(&data[at + INDEX_KEY.needle().len()..]))
        .fold(0, |bits, index| bits | Choices::bit(index))
}

/// The upstream's error in a chunk, as the openai SDKs see one: a top-level `error`
/// that Python holds true (not null, false, 0 or empty). An object names its type;
/// anything else (text-generation-inference writes a string) is `other`.
fn chat_error(json: &Value) -> Option<&'static str> {
    let error = json.get("error")?;
    let truthy = match error {
        Value::Null => false,
        Value::Bool(set) => *set,
        Value::Number(number) => number.as_f64() != Some(0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
    };
    truthy.then(|| label(error, &["type", "code"]))
}

fn responses(text: &[u8], event: &Event<'_>, terminal_events: bool) -> Class {
    let mut class = Class {
        sequence_number: sequence_number(text),
        ..Class::default()
    };
    match event_kind(event) {
        Some(kind @ (b"response.completed" | b"response.incomplete" | b"response.failed")) => {
            class.evidence = true;
            class.terminal = terminal_events;
            let failed = kind == b"response.failed";
            let incomplete = kind == b"response.incomplete";
            let json = (failed || incomplete || usage::mentions_usage(text))
                .then(|| data_json(event))
                .flatten();
            class.usage = json.as_ref().and_then(usage::responses);
            if !failed {
                let reason = if incomplete {
                    json.as_ref()
                        .and_then(|json| json["response"]["incomplete_details"]["reason"].as_str())
                        .unwrap_or("incomplete")
                } else {
                    "completed"
                };
                class.finish = FinishReasons::of(Protocol::OpenaiResponses, Some(reason));
            }
            if failed {
                let error = json.as_ref().map(|json| &json["response"]["error"]);
                class.upstream_error = Some(error.map_or("other", |error| label(error, &["code"])));
            }
        }
        Some(
            b"response.output_text.delta"
            | b"response.refusal.delta"
            | b"response.function_call_arguments.delta",
        ) => class.content = non_empty_string_after(text, &DELTA_KEY),
        Some(b"response.reasoning_text.delta" | b"response.reasoning_summary_text.delta") => {
            class.reasoning = non_empty_string_after(text, &DELTA_KEY);
        }
        Some(b"error") => {
            let json = data_json(event);
            class.upstream_error = Some(json.as_ref().map_or("other", |json| {
                match json.get("error").filter(|error| error.is_object()) {
                    Some(nested) => label(nested, &["type", "code"]),
                    None => label(json, &["code"]),
                }
            }));
        }
        _ => {}
    }
    class
}

fn anthropic(text: &[u8], event: &Event<'_>, terminal_events: bool) -> Class {
    let mut class = Class::default();
    match event_kind(event) {
        Some(b"message_stop") => {
            class.evidence = true;
            // Known by its data alone (a writer that leaves out `event:` lines), the
            // preset's terminator did not see it: it ends the stream here.
            class.terminal = terminal_events && event.event_type().is_none();
        }
        Some(b"content_block_delta") => {
            class.content = non_empty_string_after(text, &TEXT_KEY)
                || non_empty_string_after(text, &PARTIAL_JSON_KEY);
            class.reasoning = !class.content && non_empty_string_after(text, &THINKING_KEY);
        }
        Some(b"message_start") if usage::mentions_input_tokens(text) => {
            class.usage = data_json(event).as_ref().and_then(usage::anthropic_start);
        }
        Some(b"message_delta") => {
            let stop = not_null_after(text, &STOP_REASON);
            let tokens = usage::mentions_output_tokens(text);
            if stop || tokens {
                if let Some(json) = data_json(event) {
                    let reason = &json["delta"]["stop_reason"];
                    class.evidence = stop && is_set(reason);
                    if class.evidence {
                        class.finish = FinishReasons::of(Protocol::Anthropic, reason.as_str());
                    }
                    class.usage = usage::anthropic_delta(&json);
                }
            }
        }
        Some(b"error") => {
            let json = data_json(event);
            class.upstream_error = Some(
                json.as_ref()
                    .map_or("other", |json| label(&json["error"], &["type"])),
            );
            class.error_unseen = event.event_type().is_none();
        }
        _ => {}
    }
    class
}

/// The event's type: its `event:` line, else the `type` of its data's top-level
/// object (clients that ignore event names read that one).
fn event_kind<'a>(event: &Event<'a>) -> Option<&'a [u8]> {
    if let Some(kind) = event.event_type() {
        return Some(kind);
    }
    match event.data()? {
        Cow::Borrowed(data) => top_level_string(data, &TYPE_KEY),
        // A multi-line payload is no event of these protocols' own writers.
        Cow::Owned(_) => None,
    }
}

/// The string value of `key` (quoted) in the top-level object of `json`, with any
/// spaces around its colon. A nested object's key of that name is skipped: the scan
/// keeps the depth of every byte it passes, and only goes as far as the key found.
fn top_level_string<'a>(json: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let value = keys_at_depth(json, key, 1).find_map(|at| {
        value_after(&json[at + key.needle().len()..]).and_then(|value| value.strip_prefix(b"\""))
    })?;
    memchr::memchr(b'"', value).map(|end| &value[..end])
}

/// Where `key` occurs in `json` with `open` objects and arrays around it, outside
/// strings. The scan keeps the depth of every byte it passes, and only goes as far as
/// the keys asked for.
fn keys_at_depth<'a>(
    json: &'a [u8],
    key: &'a Finder<'_>,
    open: usize,
) -> impl Iterator<Item = usize> + 'a {
    let mut depth = Depth::default();
    let mut scanned = 0;
    key.find_iter(json).filter(move |&at| {
        depth.scan(&json[scanned..at]);
        scanned = at;
        depth.open == open && !depth.in_string
    })
}

/// How deep a JSON text is at the end of what [`Depth::scan`] was given.
#[derive(Debug, Default)]
struct Depth {
    /// Objects and arrays open.
    open: usize,
    in_string: bool,
    escaped: bool,
}

impl Depth {
    fn scan(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.open += 1,
                    b'}' | b']' => self.open = self.open.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }
}

/// Where `needle` occurs, looking at the end of `text` first: a chunk's
/// `finish_reason` sits a few bytes before its end, so most events cost a search of
/// their tail only.
fn find_near_end(text: &[u8], needle: &Finder<'_>) -> Option<usize> {
    let tail = text.len().saturating_sub(TAIL);
    match needle.find(&text[tail..]) {
        Some(at) => Some(tail + at),
        None => needle.find(text),
    }
}

/// How much of an event's end [`find_near_end`] searches first.
const TAIL: usize = 64;

/// True when `key` occurs and the value after its colon is not `null`.
pub(super) fn not_null_after(text: &[u8], key: &Finder<'_>) -> bool {
    let mut rest = text;
    while let Some(at) = key.find(rest) {
        if not_null_at(&rest[at + key.needle().len()..]) {
            return true;
        }
        rest = &rest[at + 1..];
    }
    false
}

/// The value after a quoted key: what follows its colon, spaces around the colon
/// skipped; `None` when no colon follows (the quoted text was no key).
fn value_after(after_key: &[u8]) -> Option<&[u8]> {
    Some(
        after_key
            .trim_ascii_start()
            .strip_prefix(b":")?
            .trim_ascii_start(),
    )
}

/// True when `after_key` (what follows a quoted key) is a colon and a value other
/// than `null` or the empty string (which some OpenAI-compatible servers write on
/// every chunk: it says nothing finished).
fn not_null_at(after_key: &[u8]) -> bool {
    value_after(after_key)
        .is_some_and(|value| !value.starts_with(b"null") && !value.starts_with(b"\"\""))
}

/// A finish or stop reason that is set: not `null`, not the empty string.
fn is_set(reason: &Value) -> bool {
    !reason.is_null() && reason.as_str() != Some("")
}

/// True when `key` occurs as a key whose value is a string of at least one
/// character. Inside a JSON string every quote is escaped, so a quoted key followed by
/// its colon is a real key, not text of the answer.
fn non_empty_string_after(text: &[u8], key: &Finder<'_>) -> bool {
    let mut rest = text;
    while let Some(at) = key.find(rest) {
        let value = value_after(&rest[at + key.needle().len()..])
            .and_then(|value| value.strip_prefix(b"\""));
        if value.is_some_and(|string| string.first().is_some_and(|b| *b != b'"')) {
            return true;
        }
        rest = &rest[at + 1..];
    }
    false
}

fn sequence_number(text: &[u8]) -> Option<u64> {
    SEQUENCE_NUMBER
        .find_iter(text)
        .find_map(|at| number_after(&text[at + SEQUENCE_NUMBER.needle().len()..]))
}

/// The unsigned integer after a quoted key; `None` past `u64`.
fn number_after(after_key: &[u8]) -> Option<u64> {
    let digits = value_after(after_key)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    digits[..end].iter().try_fold(0u64, |number, digit| {
        number.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn data_json(event: &Event<'_>) -> Option<Value> {
    serde_json::from_slice(&event.data()?).ok()
}

/// The first of `keys` that holds a string, as a bounded label.
fn label(object: &Value, keys: &[&str]) -> &'static str {
    let value = keys.iter().find_map(|key| object[*key].as_str());
    value
        .and_then(|value| UPSTREAM_ERROR_TYPES.iter().find(|known| **known == value))
        .copied()
        .unwrap_or("other")
}
