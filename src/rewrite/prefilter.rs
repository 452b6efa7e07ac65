//! Prefilter: literals a pattern's every match must start with, read from the pattern's source,
//! so a `memmem` scan can prove "no match" before the regex runs.
//!
//! It exists because the regex engine's own prefilter does not cover every pattern: for
//! `(?m)^data:\r?\n` (the docs/architecture.md example) the engine scans each ~200-byte event byte by byte,
//! about 0.5 µs an event, while two `memmem` scans for `data:\n` and `data:\r\n` take a few
//! tens of ns. The analysis is deliberately small and conservative: it reads a leading run of
//! literal characters (with `?` on single characters, anchors and harmless inline flags) and
//! gives up on anything else, so it never claims a literal a match could lack.
//!
//! It reads [`Regex::as_str`] with the regex crate's default syntax options; a regex built with
//! `RegexBuilder::case_insensitive` or `ignore_whitespace` must not be given to a rule (write
//! `(?i)` / `(?x)` in the pattern instead, which the analysis sees and respects).

use memchr::memmem::Finder;
use regex::bytes::Regex;

/// At most this many alternative literals (each `?` doubles them); beyond it the analysis stops
/// extending, which only weakens the check.
const MAX_LITERALS: usize = 8;

/// A necessary condition for a pattern to match: the haystack contains one of these literals
/// (starts with one, when the pattern is anchored).
#[derive(Clone, Debug)]
pub(crate) struct Prefilter {
    needles: Vec<Finder<'static>>,
    /// Some literal contains an LF, so it may span two data lines.
    spans_lines: bool,
    /// The pattern starts with `^` outside multi-line mode: it can only match at the
    /// haystack's start. (`^:` is in almost every rule list, and `:` in almost every event:
    /// a byte compare instead of a regex run.)
    anchored: bool,
}

impl Prefilter {
    /// The prefilter of `pattern`, or `None` when no useful literal could be proven.
    pub(crate) fn new(pattern: &Regex) -> Option<Prefilter> {
        let Prefixes { literals, anchored } = required_prefixes(pattern.as_str())?;
        Some(Prefilter {
            spans_lines: literals.iter().any(|literal| literal.contains(&b'\n')),
            needles: literals
                .iter()
                .map(|literal| Finder::new(literal).into_owned())
                .collect(),
            anchored,
        })
    }

    /// True when a literal contains an LF.
    pub(crate) fn spans_lines(&self) -> bool {
        self.spans_lines
    }

    /// True when the pattern only matches at the haystack's start.
    pub(crate) fn anchored(&self) -> bool {
        self.anchored
    }

    /// The literals, one of which every match starts with.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &[u8]> {
        self.needles.iter().map(Finder::needle)
    }

    /// False only when the pattern cannot match `haystack`.
    pub(crate) fn may_match(&self, haystack: &[u8]) -> bool {
        if self.anchored {
            return self.literals().any(|literal| haystack.starts_with(literal));
        }
        self.may_occur_in(haystack)
    }

    /// False only when no literal occurs anywhere in `text` (a larger text that contains the
    /// haystack, such as an event's text around its data).
    pub(crate) fn may_occur_in(&self, text: &[u8]) -> bool {
        self.needles
            .iter()
            .any(|needle| needle.find(text).is_some())
    }
}

/// What the start of a pattern promises about its matches.
#[derive(Debug, PartialEq, Eq)]
struct Prefixes {
    /// Every match starts with one of these.
    literals: Vec<Vec<u8>>,
    /// Every match starts at the haystack's start.
    anchored: bool,
}

/// Literals such that every match of `pattern` (default syntax options) starts with one of them;
/// `None` when the pattern's start is not plain enough to tell, or a literal would be empty.
fn required_prefixes(pattern: &str) -> Option<Prefixes> {
    // A top-level alternation would need the other branches too; any `|` at all gives up.
    if pattern.contains('|') {
        return None;
    }
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    let mut chars = pattern.chars().peekable();
    let mut multi_line = false;
    let mut anchored = false;
    while let Some(c) = chars.next() {
        let atom: Vec<u8> = match c {
            // Zero-width: they restrict where a match is, not what it contains. A `^` before
            // anything else, outside multi-line mode, pins every match to the start.
            '^' => {
                anchored |= !multi_line && prefixes.iter().all(Vec::is_empty);
                continue;
            }
            '$' => continue,
            '(' => match skip_flag_group(&mut chars) {
                Some(flags) => {
                    multi_line = flags.multi_line.unwrap_or(multi_line);
                    continue;
                }
                None => break,
            },
            '\\' => match chars.next() {
                Some('n') => vec![b'\n'],
                Some('r') => vec![b'\r'],
                Some('t') => vec![b'\t'],
                // `\<` and `\>` are the start and end of a word, zero-width; every
                // other escaped punctuation mark is itself.
                Some(p) if p.is_ascii_punctuation() && !matches!(p, '<' | '>') => vec![p as u8],
                _ => break,
            },
            '.' | '[' | ']' | '*' | '+' | '?' | '{' | '}' | ')' | '#' | ' ' => break,
            other => other.to_string().into_bytes(),
        };
        match chars.peek() {
            Some('?') => {
                chars.next();
                // A lazy `??` is the same set of matches.
                if chars.peek() == Some(&'?') {
                    chars.next();
                }
                if prefixes.len() * 2 > MAX_LITERALS {
                    break;
                }
                let with: Vec<Vec<u8>> =
                    prefixes.iter().map(|p| [&p[..], &atom].concat()).collect();
                prefixes.extend(with);
            }
            Some('*' | '{') => break,
            Some('+') => {
                for prefix in &mut prefixes {
                    prefix.extend_from_slice(&atom);
                }
                break;
            }
            _ => {
                for prefix in &mut prefixes {
                    prefix.extend_from_slice(&atom);
                }
            }
        }
    }
    if prefixes.iter().any(Vec::is_empty) {
        return None;
    }
    prefixes.sort();
    prefixes.dedup();
    // A literal that contains another is implied by it: keep the shorter.
    let all = prefixes.clone();
    prefixes.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Some(Prefixes {
        literals: prefixes,
        anchored,
    })
}

/// The effect of an inline flag group on the analysis.
#[derive(Debug, Default)]
struct Flags {
    /// `Some(on)` when the group turns multi-line mode on or off.
    multi_line: Option<bool>,
}

/// After a `(`: consumes an inline flag group such as `?m)` or `?-s)` and returns its effect
/// when its flags cannot change which literals match; otherwise returns `None` (what was consumed
/// no longer matters, the analysis stops).
fn skip_flag_group(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Flags> {
    if chars.next() != Some('?') {
        return None;
    }
    let mut flags = Flags::default();
    let mut on = true;
    for c in chars.by_ref() {
        match c {
            ')' => return Some(flags),
            // Case-insensitive and verbose mode change what a literal character means.
            'i' | 'x' => return None,
            '-' => on = false,
            'm' => flags.multi_line = Some(on),
            c if c.is_ascii_alphabetic() => {}
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(pattern: &str) -> Option<Vec<String>> {
        required_prefixes(pattern).map(|set| {
            set.literals
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .collect()
        })
    }

    fn anchored(pattern: &str) -> bool {
        required_prefixes(pattern).expect("has literals").anchored
    }

    #[test]
    fn a_leading_caret_outside_multi_line_mode_anchors() {
        assert!(anchored("^:"));
        assert!(anchored("(?s)^abc"));
        assert!(anchored("(?m)(?-m)^abc"));
        assert!(!anchored("(?m)^data:"));
        assert!(!anchored("(?sm)^data:"));
        assert!(!anchored("a^b"));
        assert!(!anchored("data"));
    }

    #[test]
    fn an_anchored_prefilter_checks_the_start_only() {
        let filter = Prefilter::new(&Regex::new("^:").expect("valid")).expect("literal");
        assert!(filter.may_match(b": ping\n"));
        assert!(!filter.may_match(b"data: {\"a\":1}\n"));
        assert!(filter.may_occur_in(b"data: {\"a\":1}\n"));
    }

    #[test]
    fn design_patterns() {
        assert_eq!(
            prefixes(r"(?m)^data:\r?\n"),
            Some(vec!["data:\n".into(), "data:\r\n".into()])
        );
        assert_eq!(prefixes(r#""text":"#), Some(vec![r#""text":"#.into()]));
        assert_eq!(prefixes("^:"), Some(vec![":".into()]));
    }

    #[test]
    fn stops_at_the_first_non_literal() {
        assert_eq!(prefixes(r"ab*c"), Some(vec!["a".into()]));
        assert_eq!(prefixes(r"ab+c"), Some(vec!["ab".into()]));
        assert_eq!(prefixes(r"ab{2}"), Some(vec!["a".into()]));
        assert_eq!(prefixes(r"ab(c)d"), Some(vec!["ab".into()]));
        assert_eq!(prefixes(r"a\dc"), Some(vec!["a".into()]));
        assert_eq!(prefixes(r"\[DONE\]"), Some(vec!["[DONE]".into()]));
        assert_eq!(prefixes(r"ab??c"), Some(vec!["abc".into(), "ac".into()]));
        assert_eq!(prefixes(r"é?x"), Some(vec!["x".into(), "éx".into()]));
    }

    #[test]
    fn gives_up_when_unsure() {
        assert_eq!(prefixes(r"a|b"), None);
        assert_eq!(prefixes(r"(?i)data"), None);
        assert_eq!(prefixes(r"(?x)da ta"), None);
        assert_eq!(prefixes(r".*"), None);
        assert_eq!(prefixes(r"a?"), None);
        assert_eq!(prefixes(r"[a]b"), None);
        assert_eq!(prefixes(r"(?:ab)"), None);
        assert_eq!(prefixes(r"\bword"), None);
        assert_eq!(prefixes(r"\<word"), None);
    }

    #[test]
    fn harmless_flags_are_skipped() {
        assert_eq!(prefixes(r"(?ms)^a$"), Some(vec!["a".into()]));
        assert_eq!(prefixes(r"a(?-s)b"), Some(vec!["ab".into()]));
        assert_eq!(prefixes(r"ab(?i)c"), Some(vec!["ab".into()]));
    }

    #[test]
    fn every_match_contains_a_needle() {
        let cases: [(&str, &[&[u8]]); 6] = [
            (
                r"(?m)^data:\r?\n",
                &[b"x\ndata:\ny", b"data:\r\n", b"data:\n"],
            ),
            (r"a?b?c", &[b"c", b"bc", b"ac", b"abc", b"xxc"]),
            (r"(?m)^\[DONE\]$", &[b"[DONE]", b"a\n[DONE]\nb"]),
            (r"fo+", &[b"foo", b"fo"]),
            (r"secret\>", &[b"a secret", b"secret here"]),
            (r"\(x\)", &[b"(x)"]),
        ];
        for (pattern, haystacks) in cases {
            let regex = Regex::new(pattern).expect("valid");
            let filter = Prefilter::new(&regex).expect("has literals");
            for haystack in haystacks {
                assert!(regex.is_match(haystack), "{pattern} should match");
                assert!(
                    filter.may_match(haystack),
                    "{pattern}: prefilter must not reject a match"
                );
            }
            assert!(!filter.may_match(b"zzz"), "{pattern}");
        }
    }
}
