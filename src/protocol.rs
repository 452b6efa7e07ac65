//! Assistant protocols (`routes[].stream.protocol`): what completes an answer, what is
//! only a keep-alive, what is the upstream's own error, and how the gateway's errors and
//! closings are written, per protocol (the contract is `docs/protocols.md`).
//!
//! Pure code: the engine asks it about each event it forwards and about what to write
//! at the end. Per event it costs a literal search or two on the event's bytes; JSON is
//! parsed only for the rare events those searches cannot rule out (a finish reason or
//! stop reason that is not `null`, an error).

mod classify;
mod finish;
pub(crate) mod shape;
mod usage;

use bytes::Bytes;

use crate::sse::writer;
use crate::terminator::{Terminator, TerminatorMatch};

pub(crate) use classify::UPSTREAM_ERROR_TYPES;
pub use classify::{Choices, Class};
pub use finish::FinishReasons;
pub use usage::Usage;

/// The protocol a route's upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `OpenAI` Chat Completions chunks, ended by `data: [DONE]`.
    OpenaiChat,
    /// `OpenAI` Responses events, ended by their terminal `response.*` event.
    OpenaiResponses,
    /// Anthropic Messages events, ended by `event: message_stop`.
    Anthropic,
    /// Any event stream: the route's own terminator and `complete_when`.
    #[default]
    Sse,
}

/// What completes an answer on an `sse` route.
#[derive(Debug, Clone)]
pub enum CompleteWhen {
    /// The event's data payload matches.
    DataMatches(regex::bytes::Regex),
    /// The event's type equals.
    Event(Bytes),
}

/// A route's protocol and, for `sse`, its declared completion evidence.
#[derive(Debug, Clone, Default)]
pub struct Contract {
    pub protocol: Protocol,
    pub complete_when: Option<CompleteWhen>,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::OpenaiChat,
        Protocol::OpenaiResponses,
        Protocol::Anthropic,
        Protocol::Sse,
    ];

    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenaiChat => "openai-chat",
            Protocol::OpenaiResponses => "openai-responses",
            Protocol::Anthropic => "anthropic",
            Protocol::Sse => "sse",
        }
    }

    /// The terminator the preset supplies when the route names none. The Responses
    /// API has three terminal events, which the classification recognises instead.
    pub fn preset_terminator(self) -> Option<Terminator> {
        let matcher = match self {
            Protocol::OpenaiChat => TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
            Protocol::Anthropic => TerminatorMatch::Event(Bytes::from_static(b"message_stop")),
            Protocol::OpenaiResponses | Protocol::Sse => return None,
        };
        Some(Terminator {
            matcher,
            forward: true,
            synthesize_on_eof: true,
        })
    }

    /// Whether every event's data is JSON (`[DONE]`, the terminator, aside): the
    /// three assistant protocols. An event cut at the upstream's end is told by its
    /// data not parsing.
    pub fn has_json_data(self) -> bool {
        self != Protocol::Sse
    }

    /// Whether the gateway's closing (the synthesized terminator) follows an error
    /// event: `[DONE]` stops an `EventSource` from reconnecting, while the Anthropic and
    /// Responses SDKs treat an error event as the stream's last word.
    pub fn closes_after_error(self) -> bool {
        matches!(self, Protocol::OpenaiChat | Protocol::Sse)
    }

    /// The body of an error the gateway reports, before the headers or in a stream,
    /// in this protocol's shape. `sequence_number` is used by the Responses stream
    /// shape only.
    pub fn error_json(
        self,
        error_type: &str,
        message: &str,
        route: Option<&str>,
        sequence_number: Option<u64>,
    ) -> Bytes {
        shape::error_json_in(self, error_type, message, route, sequence_number)
    }

    /// An error event of this protocol, as the gateway writes it into a stream.
    pub fn error_event(
        self,
        error_type: &str,
        message: &str,
        route: &str,
        sequence_number: u64,
    ) -> Bytes {
        let json = self.error_json(error_type, message, Some(route), Some(sequence_number));
        writer::event(Some(b"error"), &json)
    }
}

impl Contract {
    /// A preset without declared evidence.
    pub fn preset(protocol: Protocol) -> Contract {
        Contract {
            protocol,
            complete_when: None,
        }
    }

    /// Whether an end without completion evidence is a truncation: always on a
    /// preset, on `sse` only with `complete_when`.
    pub fn asks_evidence(&self) -> bool {
        self.protocol != Protocol::Sse || self.complete_when.is_some()
    }

    /// What was missing when an answer ended without its evidence.
    pub fn missing(&self) -> &'static str {
        match self.protocol {
            Protocol::OpenaiChat => "no finish_reason",
            Protocol::OpenaiResponses => "no terminal response event",
            Protocol::Anthropic => "no message_stop or stop_reason",
            Protocol::Sse => "no event matched complete_when",
        }
    }

    /// The terminator as the gateway synthesizes it on this protocol, if it does:
    /// Anthropic's SDKs parse every event's data, so an event terminator carries
    /// `{"type":NAME}` there. On the `openai-*` protocols an event terminator is not
    /// synthesized: their events' data is a whole object the SDKs parse (a Responses
    /// `response.completed` carries the response), which the gateway cannot write,
    /// and the answer's own terminal event has already told the client how it ended.
    pub fn encode_terminator(&self, terminator: &Terminator) -> Option<Bytes> {
        match (&terminator.matcher, self.protocol) {
            (TerminatorMatch::Event(name), Protocol::Anthropic) => {
                let data = serde_json::json!({ "type": String::from_utf8_lossy(name) });
                Some(writer::event(Some(name), data.to_string().as_bytes()))
            }
            (TerminatorMatch::Event(_), Protocol::OpenaiChat | Protocol::OpenaiResponses) => None,
            _ => Some(terminator.encode()),
        }
    }
}

#[cfg(test)]
mod tests;
