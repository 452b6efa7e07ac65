//! Rewrite pipeline: a route's ordered rules and terminator, applied to one framed event at a time.
//!
//! Rules work on the event's text in one working form (each line followed by LF, no CR, no empty
//! line, no final blank line), so a rule never has to care what line ends the upstream used. An
//! event that no rule changed and that arrived LF-only leaves as the exact bytes received (zero
//! copy); anything else is written back with LF line ends. Lines are kept as received (comments and
//! unknown fields included) except those a rule rewrote; lines the gateway writes are
//! `field: value`.
//!
//! Cost (`benches/pipeline.rs`, ~200-byte OpenAI-style events, 2-core dev machine): framing and
//! forwarding alone run at about 3 GiB/s; the docs/architecture.md example rules at about 900 MiB/s when
//! events pass untouched and 250–300 MiB/s when every event is rewritten.

mod prefilter;
mod rule;
mod scan;

use std::borrow::Cow;

use bytes::Bytes;
use memchr::memmem;

use crate::protocol::Contract;
use crate::sse::{Event, RawEvent};

use scan::LiteralScan;

pub use crate::terminator::{Terminator, TerminatorMatch};
pub use rule::{Rule, Scope};

use rule::Outcome;

/// What to do with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What to send downstream: `None` when dropped (or the terminator with `forward: false`).
    pub output: Option<Bytes>,
    /// This event is the terminator: the caller ends the downstream response after sending
    /// `output`.
    pub is_terminator: bool,
}

/// A route's compiled rules and terminator.
///
/// ```
/// use bytes::Bytes;
/// use sse_gateway::rewrite::{Pipeline, Rule, Terminator, TerminatorMatch};
/// use sse_gateway::sse::Framer;
///
/// let done = Terminator {
///     matcher: TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
///     forward: true,
///     synthesize_on_eof: true,
/// };
/// let pipeline = Pipeline::new(vec![Rule::repair_orphan_lines("repair".into())], Some(done));
/// let mut framer = Framer::new(1 << 20);
/// framer.push(Bytes::from_static(b"data:\n{\"value\":\"Hel\"}\n\ndata:\n[DONE]\n\n"));
/// let mut hits = 0;
/// let first = pipeline.apply(framer.next_event().unwrap().unwrap(), &mut |_| hits += 1).unwrap();
/// assert_eq!(first.output.as_deref(), Some(&b"data:{\"value\":\"Hel\"}\n\n"[..]));
/// let last = pipeline.apply(framer.next_event().unwrap().unwrap(), &mut |_| hits += 1).unwrap();
/// assert!(last.is_terminator);
/// assert_eq!(hits, 2);
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline {
    rules: Vec<Rule>,
    /// The largest event a rule may write (`max_event_size`): what the gateway sends
    /// is bounded like what it reads.
    max_event_size: usize,
    terminator: Option<Terminator>,
    /// One search for every rule's and the terminator's literals, when it can be built.
    scan: Option<LiteralScan>,
    /// The route's protocol: what completes an answer, how errors are written.
    contract: Contract,
    /// The protocol's own terminal events end the stream (the Responses ones, an
    /// Anthropic `message_stop` known by its data alone): the route named no
    /// terminator of its own.
    ends_at_terminal_events: bool,
}

impl Pipeline {
    /// A pipeline running `rules` in order, then checking `terminator`.
    pub fn new(rules: Vec<Rule>, terminator: Option<Terminator>) -> Pipeline {
        let scan = LiteralScan::new(&rules, terminator.as_ref());
        Pipeline {
            rules,
            max_event_size: usize::MAX,
            terminator,
            scan,
            contract: Contract::default(),
            ends_at_terminal_events: false,
        }
    }

    /// Applies a protocol: its preset terminator unless the route named one.
    #[must_use]
    pub fn with_contract(mut self, contract: Contract) -> Pipeline {
        self.ends_at_terminal_events = self.terminator.is_none();
        if self.terminator.is_none() {
            self.terminator = contract.protocol.preset_terminator();
            self.scan = LiteralScan::new(&self.rules, self.terminator.as_ref());
        }
        self.contract = contract;
        self
    }

    /// The route's protocol contract.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// Bounds what a rule may write: an event it would make longer than `limit` bytes
    /// (blank line included) is refused ([`OutputTooLarge`]) rather than built.
    #[must_use]
    pub fn with_max_event_size(mut self, limit: usize) -> Pipeline {
        self.max_event_size = limit;
        self
    }

    /// The rules, in the order they run; `on_hit` indexes refer to this slice.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The terminator, if the route has one.
    pub fn terminator(&self) -> Option<&Terminator> {
        self.terminator.as_ref()
    }

    /// Whether the protocol's terminal events end the stream (the route named no
    /// terminator of its own).
    pub fn ends_at_terminal_events(&self) -> bool {
        self.ends_at_terminal_events
    }

    /// Runs all rules in order, then the terminator check.
    ///
    /// `on_hit(i)` is called once for each rule index `i` that changed or dropped the event (a
    /// dropped event stops the pipeline). A rewrite that leaves no line drops the event. An
    /// LF-only event that no rule changed costs no allocation, with one exception: a `scope: data`
    /// rule that cannot rule out a match from the event's text joins a multi-line payload to run
    /// its regex.
    ///
    /// # Errors
    /// [`OutputTooLarge`] when a rule would make the event longer than the pipeline's
    /// `max_event_size`; the stream must end then.
    pub fn apply(
        &self,
        event: RawEvent,
        on_hit: &mut impl FnMut(usize),
    ) -> Result<Verdict, OutputTooLarge> {
        let lf_only = event.is_lf_only();
        let (rewritten, is_terminator) = {
            let raw = event.as_bytes();
            let mut text = if lf_only {
                Cow::Borrowed(lf_text(raw))
            } else {
                Cow::Owned(normalize(raw))
            };
            // What the scan found holds for the text as it came; once a rule changes it,
            // every later rule runs its own check.
            let mut found = self.scan.as_ref().map(|scan| (scan, scan.find(&text)));
            // The working text lacks the blank line's LF.
            let limit = self.max_event_size.saturating_sub(1);
            for (index, rule) in self.rules.iter().enumerate() {
                if found.is_some_and(|(scan, found)| !scan.rule_may_match(found, index)) {
                    continue;
                }
                match rule.apply(&text, limit) {
                    Outcome::Keep => {}
                    Outcome::TooLarge => {
                        on_hit(index);
                        return Err(OutputTooLarge {
                            rule: index,
                            limit: self.max_event_size,
                        });
                    }
                    Outcome::Changed(new) => {
                        on_hit(index);
                        text = Cow::Owned(new);
                        found = None;
                    }
                    Outcome::Drop => {
                        on_hit(index);
                        return Ok(Verdict::nothing(false));
                    }
                }
            }
            if text.is_empty() {
                return Ok(Verdict::nothing(false));
            }
            let is_terminator = self.terminator.as_ref().is_some_and(|terminator| {
                let may_be = match found {
                    Some((scan, found)) => scan.may_be_terminator(found),
                    None => terminator
                        .required_literal()
                        .is_none_or(|literal| memmem::find(&text, literal).is_some()),
                };
                may_be && terminator.matches(&Event::new(&text))
            });
            // Owned text means a rule changed the event or its line ends were not LF.
            let rewritten = match text {
                Cow::Borrowed(_) => None,
                Cow::Owned(text) => Some(encode(text)),
            };
            (rewritten, is_terminator)
        };
        if is_terminator && !self.terminator.as_ref().is_some_and(|t| t.forward) {
            return Ok(Verdict::nothing(true));
        }
        Ok(Verdict {
            output: Some(rewritten.unwrap_or_else(|| event.into_bytes())),
            is_terminator,
        })
    }

    /// Bytes to send when the upstream ended without a terminator and synthesis is on; `None`
    /// otherwise, and when the terminator is not forwarded (clients never see it then).
    pub fn synthesized_terminator(&self) -> Option<Bytes> {
        self.terminator
            .as_ref()
            .filter(|t| t.synthesize_on_eof && t.forward)
            .and_then(|t| self.contract.encode_terminator(t))
    }
}

/// A rule would have written an event longer than `max_event_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule #{rule} would write an event over max_event_size ({limit} bytes)")]
pub struct OutputTooLarge {
    /// The rule's index in the pipeline.
    pub rule: usize,
    pub limit: usize,
}

impl Verdict {
    fn nothing(is_terminator: bool) -> Verdict {
        Verdict {
            output: None,
            is_terminator,
        }
    }
}

/// The working text of an LF-only event: its bytes without the blank line's LF.
fn lf_text(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"\n").unwrap_or(raw)
}

/// The working form of any event text: its lines (split at LF, CR or CRLF, empty ones removed),
/// each followed by LF.
fn normalize(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let lines = text
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|line| !line.is_empty());
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Encodes working text as an event: the blank line after its lines.
fn encode(mut text: Vec<u8>) -> Bytes {
    text.push(b'\n');
    Bytes::from(text)
}
