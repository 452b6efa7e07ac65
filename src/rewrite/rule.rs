//! Rules: compiled rewrite steps (repair orphan lines, replace, drop) and how each changes
//! an event.
//!
//! A rule sees an event's text in the pipeline's working form: each line followed by LF, no CR, no
//! empty line, no final blank line. It answers keep, changed (new text in that same form) or
//! drop, and allocates only when it changes something.

use std::borrow::Cow;

use memchr::memchr;
use regex::bytes::Regex;

use crate::rewrite::normalize;
use crate::rewrite::prefilter::Prefilter;
use crate::sse::event::DATA;
use crate::sse::writer::{push_data_lines, push_field};
use crate::sse::{Event, Field, Line};

/// What a `replace` or `drop` pattern is matched against (`scope:` in the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The event's text: its lines, each followed by LF (the last one too), without the final
    /// blank line. Use `(?m)` for `^` and `$` to match at every line.
    #[default]
    Event,
    /// The event's data payload: its `data` values joined by LF. Events without data never match.
    Data,
}

/// One compiled rewrite rule with its name (the metric label).
#[derive(Clone, Debug)]
pub struct Rule {
    name: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    RepairOrphanLines,
    Replace { matcher: Matcher, with: Vec<u8> },
    Drop { matcher: Matcher },
}

/// A pattern, where it looks, and the cheap check that can rule it out.
#[derive(Clone, Debug)]
struct Matcher {
    pattern: Regex,
    scope: Scope,
    prefilter: Option<Prefilter>,
}

/// What a rule did to one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Unchanged; the pipeline keeps the text it had.
    Keep,
    /// New text, in the working form, different from the old.
    Changed(Vec<u8>),
    /// Do not forward the event.
    Drop,
    /// The new text would be longer than the limit the rule was given.
    TooLarge,
}

impl Rule {
    /// `repair: orphan_lines`: turns lines a client would ignore, found after a `data` line, into
    /// data.
    ///
    /// An orphan is a line that is not a comment and whose field name is not `data`, `event`, `id`
    /// or `retry`. When the nearest `data` line before it has an empty value, the orphan becomes
    /// that value (`data:` + `{"v":1}` gives `data:{"v":1}`, the `data` line keeping its own
    /// prefix); otherwise the orphan becomes one more `data: ` line in its place. Lines before
    /// the first `data` line are left alone.
    pub fn repair_orphan_lines(name: String) -> Rule {
        Rule {
            name,
            kind: Kind::RepairOrphanLines,
        }
    }

    /// `replace`: regex replace-all over the `scope` (`$1`, `$name` expand as in the `regex`
    /// crate).
    ///
    /// `pattern` must carry its flags inline (`(?i)`, `(?x)`): a rule reads `pattern.as_str()` to
    /// find literals every match must contain, and a regex built with
    /// `RegexBuilder::case_insensitive` or `ignore_whitespace` would make that check wrong.
    ///
    /// With [`Scope::Event`] the result is the event's new text; line ends it contains (LF, CR or
    /// CRLF) separate lines and empty lines are removed, so the result stays one event. With
    /// [`Scope::Data`] the result is the new payload, written back as `data: ` lines where the
    /// first `data` line was; other lines stay. Counts as a change only if the bytes differ.
    pub fn replace(name: String, pattern: Regex, with: Vec<u8>, scope: Scope) -> Rule {
        Rule {
            name,
            kind: Kind::Replace {
                matcher: Matcher::new(pattern, scope),
                with,
            },
        }
    }

    /// `drop`: the event is not forwarded when `pattern` matches its `scope`.
    ///
    /// `pattern` must carry its flags inline, as for [`Rule::replace`].
    pub fn drop(name: String, pattern: Regex, scope: Scope) -> Rule {
        Rule {
            name,
            kind: Kind::Drop {
                matcher: Matcher::new(pattern, scope),
            },
        }
    }

    /// The rule's name, used as the `rule` metric label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule's kind as written in the config: `repair`, `replace` or `drop` (for default names
    /// like `KIND#INDEX`).
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            Kind::RepairOrphanLines => "repair",
            Kind::Replace { .. } => "replace",
            Kind::Drop { .. } => "drop",
        }
    }

    /// The pattern of a `replace` or `drop` rule.
    pub fn pattern(&self) -> Option<&Regex> {
        match &self.kind {
            Kind::RepairOrphanLines => None,
            Kind::Replace { matcher, .. } | Kind::Drop { matcher } => Some(&matcher.pattern),
        }
    }

    /// What a `replace` rule's pattern is replaced with.
    pub fn replacement(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Replace { with, .. } => Some(with),
            _ => None,
        }
    }

    /// What a `replace` or `drop` rule's pattern is matched against.
    pub fn scope(&self) -> Option<Scope> {
        match &self.kind {
            Kind::RepairOrphanLines => None,
            Kind::Replace { matcher, .. } | Kind::Drop { matcher } => Some(matcher.scope),
        }
    }

    /// Literals one of which must occur in an event's working text for the rule to change
    /// it, when a search of the text can tell; `None` when the rule must always run (repair,
    /// no provable literal, an anchored pattern that checks its start itself, or a data
    /// literal that may span data lines).
    pub(crate) fn required_literals(&self) -> Option<Vec<&[u8]>> {
        let matcher = match &self.kind {
            Kind::RepairOrphanLines => return None,
            Kind::Replace { matcher, .. } | Kind::Drop { matcher } => matcher,
        };
        let prefilter = matcher.prefilter.as_ref()?;
        if prefilter.anchored() || (matcher.scope == Scope::Data && prefilter.spans_lines()) {
            return None;
        }
        Some(prefilter.literals().collect())
    }

    /// Applies the rule to `text`, an event in the working form; new text longer than
    /// `limit` bytes is [`Outcome::TooLarge`], and a replacement stops growing as soon as
    /// it passes `limit`, so a rule can never make the gateway hold more than that.
    pub(crate) fn apply(&self, text: &[u8], limit: usize) -> Outcome {
        let outcome = match &self.kind {
            Kind::RepairOrphanLines => repair_orphan_lines(text),
            Kind::Replace { matcher, with } => {
                let Some(subject) = matcher.subject(text) else {
                    return Outcome::Keep;
                };
                let replaced = match replace_all(&matcher.pattern, &subject, with, limit) {
                    Replaced::None => return Outcome::Keep,
                    Replaced::TooLarge => return Outcome::TooLarge,
                    Replaced::Text(replaced) => replaced,
                };
                match matcher.scope {
                    Scope::Event => changed_if_differs(text, normalize(&replaced)),
                    Scope::Data if replaced == *subject => Outcome::Keep,
                    Scope::Data => changed_if_differs(text, with_data(text, &replaced)),
                }
            }
            Kind::Drop { matcher } => match matcher.subject(text) {
                Some(subject) if matcher.pattern.is_match(&subject) => Outcome::Drop,
                _ => Outcome::Keep,
            },
        };
        match outcome {
            Outcome::Changed(new) if new.len() > limit => Outcome::TooLarge,
            outcome => outcome,
        }
    }
}

/// What a bounded replace-all made of a subject.
enum Replaced {
    /// Nothing matched.
    None,
    Text(Vec<u8>),
    /// The result passed the limit (and was abandoned there).
    TooLarge,
}

/// `pattern.replace_all(subject, with)`, same matches and expansion (`$1`, `$name`), but
/// abandoned once the result is longer than `limit`: one event must not turn into
/// gigabytes (an empty pattern matches between every two bytes).
fn replace_all(pattern: &Regex, subject: &[u8], with: &[u8], limit: usize) -> Replaced {
    let mut out = Vec::new();
    // Where the text after the last match starts; `None` until something matched.
    let mut last = None;
    if memchr(b'$', with).is_none() {
        for found in pattern.find_iter(subject) {
            out.extend_from_slice(&subject[last.unwrap_or(0)..found.start()]);
            out.extend_from_slice(with);
            last = Some(found.end());
            if out.len() > limit {
                return Replaced::TooLarge;
            }
        }
    } else {
        for caps in pattern.captures_iter(subject) {
            let Some(found) = caps.get(0) else { continue };
            out.extend_from_slice(&subject[last.unwrap_or(0)..found.start()]);
            caps.expand(with, &mut out);
            last = Some(found.end());
            if out.len() > limit {
                return Replaced::TooLarge;
            }
        }
    }
    let Some(last) = last else {
        return Replaced::None;
    };
    out.extend_from_slice(&subject[last..]);
    if out.len() > limit {
        return Replaced::TooLarge;
    }
    Replaced::Text(out)
}

impl Matcher {
    fn new(pattern: Regex, scope: Scope) -> Matcher {
        let prefilter = Prefilter::new(&pattern);
        Matcher {
            pattern,
            scope,
            prefilter,
        }
    }

    /// What the pattern must be run on; `None` when it provably cannot match (no data for
    /// `scope: data`, or the prefilter's literals are absent).
    fn subject<'t>(&self, text: &'t [u8]) -> Option<Cow<'t, [u8]>> {
        let may_match = |haystack: &[u8]| {
            self.prefilter
                .as_ref()
                .is_none_or(|prefilter| prefilter.may_match(haystack))
        };
        match self.scope {
            Scope::Event => may_match(text).then_some(Cow::Borrowed(text)),
            Scope::Data => {
                // A literal without LF lies inside one data value, so inside the text: checking
                // the text first spares parsing the data of most events.
                if self
                    .prefilter
                    .as_ref()
                    .is_some_and(|p| !p.spans_lines() && !p.may_occur_in(text))
                {
                    return None;
                }
                Event::new(text).data().filter(|data| may_match(data))
            }
        }
    }
}

fn changed_if_differs(old: &[u8], new: Vec<u8>) -> Outcome {
    if new == old {
        Outcome::Keep
    } else {
        Outcome::Changed(new)
    }
}

/// The lines of a text in the working form (split with `memchr`, not byte by byte).
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || loop {
        let current = rest?;
        let (line, next) = match memchr(b'\n', current) {
            Some(at) => (current.get(..at)?, current.get(at + 1..)),
            None => (current, None),
        };
        rest = next;
        if !line.is_empty() {
            return Some(line);
        }
    })
}

/// How the repair rule sees one line.
enum Role {
    /// A `data` line; `empty` when its value is empty.
    Data { empty: bool },
    /// A line a client would ignore that is not a comment.
    Orphan,
    /// A comment or a known field other than `data`.
    Other,
}

fn role(line: &[u8]) -> Role {
    match Line::parse(line) {
        Line::Field(Field { name, value }) if name == DATA => Role::Data {
            empty: value.is_empty(),
        },
        Line::Field(field) if !field.is_known() => Role::Orphan,
        _ => Role::Other,
    }
}

fn repair_orphan_lines(text: &[u8]) -> Outcome {
    // An orphan follows a data line: a one-line event (most of them) has none.
    if memchr(b'\n', text).is_none_or(|at| at + 1 == text.len()) {
        return Outcome::Keep;
    }
    // Cheap check first, so an event without orphans costs no allocation.
    let mut seen_data = false;
    let needs_repair = lines(text).any(|line| match role(line) {
        Role::Data { .. } => {
            seen_data = true;
            false
        }
        Role::Orphan => seen_data,
        Role::Other => false,
    });
    if !needs_repair {
        return Outcome::Keep;
    }

    let mut repaired: Vec<Cow<'_, [u8]>> = Vec::new();
    // Index in `repaired` of the nearest data line, and whether its value is still empty.
    let mut last_data: Option<(usize, bool)> = None;
    for line in lines(text) {
        match (role(line), last_data) {
            (Role::Data { empty }, _) => {
                last_data = Some((repaired.len(), empty));
                repaired.push(Cow::Borrowed(line));
            }
            (Role::Orphan, Some((at, true))) => {
                if let Some(data_line) = repaired.get_mut(at) {
                    *data_line = Cow::Owned(fill_data_line(data_line, line));
                }
                last_data = Some((at, false));
            }
            (Role::Orphan, Some((_, false))) => {
                let mut data_line = Vec::with_capacity(line.len() + 7);
                push_field(&mut data_line, DATA, line);
                data_line.pop(); // its LF comes with the others below
                last_data = Some((repaired.len(), false));
                repaired.push(Cow::Owned(data_line));
            }
            _ => repaired.push(Cow::Borrowed(line)),
        }
    }
    let mut text = repaired.join(&b'\n');
    text.push(b'\n');
    Outcome::Changed(text)
}

/// Gives an empty-valued data line (`data`, `data:` or `data: `) the orphan as its value, keeping
/// the line's own prefix.
fn fill_data_line(data_line: &[u8], orphan: &[u8]) -> Vec<u8> {
    let mut filled = Vec::with_capacity(data_line.len() + orphan.len() + 2);
    filled.extend_from_slice(data_line);
    if memchr(b':', data_line).is_none() {
        filled.push(b':');
    }
    // The parser removes one space after the colon; an orphan's own leading space must survive.
    if filled.ends_with(b":") && orphan.starts_with(b" ") {
        filled.push(b' ');
    }
    filled.extend_from_slice(orphan);
    filled
}

/// `text` with its data lines replaced by `data` written as data lines at the first one's place.
fn with_data(text: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + data.len());
    let mut written = false;
    for line in lines(text) {
        if matches!(role(line), Role::Data { .. }) {
            if !written {
                push_data_lines(&mut out, data);
                written = true;
            }
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
