//! The `stream` section of a route: rules (each deserialized on its own, so every bad
//! rule is reported), regexes compiled once with a size cap, the terminator and the
//! clocks.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{is_plain_name, join, Validator, MAX_NAME_LEN};
use crate::config::{defaults, raw, HumanDuration, OnUpstreamEof, StreamConfig, StreamUsage};
use crate::protocol::{CompleteWhen, Contract, Protocol};
use crate::rewrite::{Pipeline, Rule, Scope, Terminator, TerminatorMatch};

/// Compiled size cap for one rule's regex: generous for real patterns, and a bound on
/// what a config can make the gateway allocate.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Validator<'_> {
    pub(super) fn stream(&mut self, path: &str, raw: raw::Stream) -> Option<StreamConfig> {
        let mut ok = true;
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (index, rule) in raw.rules.into_iter().enumerate() {
            let rule_path = format!("{path}.rules[{index}]");
            let Some(rule) = self.section::<raw::Rule>(Some(rule), &rule_path) else {
                ok = false;
                continue;
            };
            match self.rule(&rule_path, index, rule) {
                Some(rule) => {
                    if let Some(first) = names.insert(rule.name().to_owned(), index) {
                        self.error_at_value(
                            &rule_path,
                            format!(
                                "duplicate rule name \"{}\" (also rules[{first}])",
                                rule.name()
                            ),
                        );
                        ok = false;
                    }
                    rules.push(rule);
                }
                None => ok = false,
            }
        }
        let terminator = match raw.terminator {
            None => None,
            Some(terminator) => {
                let terminator_path = join(path, "terminator");
                let matcher = match (terminator.data, terminator.event) {
                    (Some(data), None) => Some(TerminatorMatch::Data(Bytes::from(data))),
                    (None, Some(event)) => Some(TerminatorMatch::Event(Bytes::from(event))),
                    _ => {
                        self.error_at_value(
                            &terminator_path,
                            "give exactly one of `data` (such as \"[DONE]\") or `event`",
                        );
                        None
                    }
                };
                ok &= matcher.is_some();
                matcher.map(|matcher| Terminator {
                    matcher,
                    forward: terminator.forward.unwrap_or(true),
                    synthesize_on_eof: terminator
                        .on_upstream_eof
                        .unwrap_or(OnUpstreamEof::Synthesize)
                        == OnUpstreamEof::Synthesize,
                })
            }
        };
        let protocol = raw.protocol.unwrap_or_default();
        let complete_when = match raw.complete_when {
            None => None,
            Some(_) if protocol != Protocol::Sse => {
                self.error_at_value(
                    &join(path, "complete_when"),
                    format!(
                        "protocol {} brings its own completion evidence; complete_when is for protocol: sse",
                        protocol.as_str()
                    ),
                );
                ok = false;
                None
            }
            Some(when) => {
                let when_path = join(path, "complete_when");
                let when = match (when.data_matches, when.event) {
                    (Some(pattern), None) => self
                        .regex(&join(&when_path, "data_matches"), &pattern)
                        .map(CompleteWhen::DataMatches),
                    (None, Some(event)) if !event.is_empty() => {
                        Some(CompleteWhen::Event(Bytes::from(event)))
                    }
                    _ => {
                        self.error_at_value(
                            &when_path,
                            "give exactly one of `data_matches` (a regex) or `event` (an event type)",
                        );
                        None
                    }
                };
                ok &= when.is_some();
                when
            }
        };
        let usage = raw.usage.unwrap_or_default();
        if usage == StreamUsage::Request && protocol != Protocol::OpenaiChat {
            self.error_at_value(
                &join(path, "usage"),
                format!(
                    "usage: request adds stream_options.include_usage, which only protocol: openai-chat has (this route's protocol is {})",
                    protocol.as_str()
                ),
            );
            ok = false;
        }
        let contract = Contract {
            protocol,
            complete_when,
        };
        let max_event_size = raw.max_event_size.map_or(defaults::MAX_EVENT_SIZE, |s| s.0);
        if max_event_size == 0 || max_event_size > 1 << 30 {
            self.error_at_value(
                &join(path, "max_event_size"),
                "max_event_size must be between 1B and 1GiB",
            );
            ok = false;
        }
        let resume = match raw.resume {
            None => None,
            Some(resume) => {
                let resume = self.resume(&join(path, "resume"), resume);
                ok &= resume.is_some();
                resume
            }
        };
        let clock = |value: Option<HumanDuration>, default| value.map_or(default, |d| d.0);
        let max_event_size = usize::try_from(max_event_size).unwrap_or(usize::MAX);
        ok.then(|| StreamConfig {
            pipeline: Arc::new(
                Pipeline::new(rules, terminator)
                    .with_max_event_size(max_event_size)
                    .with_contract(contract),
            ),
            max_event_size,
            stuck_after: clock(raw.stuck_after, defaults::STUCK_AFTER),
            idle_timeout: clock(raw.idle_timeout, defaults::IDLE_TIMEOUT),
            heartbeat: clock(raw.heartbeat, defaults::HEARTBEAT),
            max_duration: clock(raw.max_duration, defaults::MAX_DURATION),
            usage,
            resume,
        })
    }

    fn rule(&mut self, path: &str, index: usize, raw: raw::Rule) -> Option<Rule> {
        let (kind, inner_name) = match (&raw.repair, &raw.replace, &raw.drop) {
            (Some(raw::Repair::OrphanLines), None, None) => ("repair", None),
            (None, Some(replace), None) => ("replace", replace.name.clone()),
            (None, None, Some(drop)) => ("drop", drop.name.clone()),
            _ => {
                self.error_at_value(
                    path,
                    "a rule is exactly one of `repair: orphan_lines`, `replace: {pattern, with}` or `drop: {pattern}`",
                );
                return None;
            }
        };
        let name = match (raw.name, inner_name) {
            (Some(_), Some(_)) => {
                self.error_at_value(path, "give the rule's `name` once, not twice");
                return None;
            }
            (Some(name), None) | (None, Some(name)) => name,
            (None, None) => format!("{kind}#{index}"),
        };
        // `#` is allowed so that default names (`replace#1`) are valid names too.
        if !is_plain_name(&name, b"_-.#") {
            self.error_at_value(
                path,
                format!("invalid rule name \"{name}\": use 1 to {MAX_NAME_LEN} letters, digits, `_`, `-`, `.` or `#` (it becomes a metric label)"),
            );
            return None;
        }
        match (raw.replace, raw.drop) {
            (Some(replace), _) => {
                let pattern = self.regex(&format!("{path}.replace.pattern"), &replace.pattern)?;
                let scope = replace.scope.unwrap_or(Scope::Event);
                Some(Rule::replace(
                    name,
                    pattern,
                    replace.with.into_bytes(),
                    scope,
                ))
            }
            (_, Some(drop)) => {
                let pattern = self.regex(&format!("{path}.drop.pattern"), &drop.pattern)?;
                Some(Rule::drop(
                    name,
                    pattern,
                    drop.scope.unwrap_or(Scope::Event),
                ))
            }
            (None, None) => Some(Rule::repair_orphan_lines(name)),
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) -> Option<regex::bytes::Regex> {
        match regex::bytes::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(error) => {
                // The regex crate's message spans lines with a caret under the fault;
                // its last line says what is wrong.
                let text = error.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .map_or(text.as_str(), |line| {
                        line.trim().trim_start_matches("error: ")
                    });
                self.error_at_value(path, format!("invalid regex \"{pattern}\": {reason}"));
                None
            }
        }
    }
}
