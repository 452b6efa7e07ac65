//! Literal scan: one pass over an event finds every literal that the route's rules and
//! terminator need, so an event that none of them can touch costs one search instead of
//! one search per rule and a parse for the terminator.
//!
//! A packed multi-literal search (Teddy, SIMD) reports leftmost, non-overlapping matches.
//! That finds every literal that occurs only if no two literals can overlap (one inside
//! another, or the end of one the start of another); the scan is built only for such sets.
//! Otherwise, and for fewer than two literals, each rule runs its own prefilter as before.

use aho_corasick::packed::{Config, MatchKind, Searcher};

use super::{Rule, Terminator};

/// The literals a route's rules and terminator look for, and which of them each needs.
#[derive(Clone, Debug)]
pub(crate) struct LiteralScan {
    searcher: Searcher,
    /// Per rule, in order: the bits of its literals, one of which must occur for the rule
    /// to match; `None` for a rule the scan cannot rule out.
    rules: Vec<Option<u64>>,
    terminator: Option<u64>,
}

/// The literals found in one event's text, as bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found(u64);

impl LiteralScan {
    /// The scan for these rules and terminator; `None` when it would not pay (fewer than two
    /// literals) or could miss a literal (overlapping literals, more than 64).
    pub(crate) fn new(rules: &[Rule], terminator: Option<&Terminator>) -> Option<LiteralScan> {
        let mut literals: Vec<&[u8]> = Vec::new();
        let rule_masks: Vec<Option<u64>> = rules
            .iter()
            .map(|rule| mask_of(&mut literals, &rule.required_literals()?))
            .collect();
        let terminator_mask = terminator
            .and_then(Terminator::required_literal)
            .and_then(|literal| mask_of(&mut literals, &[literal]));
        if literals.len() < 2 || literals.len() > 64 || !overlap_free(&literals) {
            return None;
        }
        let searcher = Config::new()
            .match_kind(MatchKind::LeftmostFirst)
            .builder()
            .extend(&literals)
            .build()?;
        Some(LiteralScan {
            searcher,
            rules: rule_masks,
            terminator: terminator_mask,
        })
    }

    /// Which literals occur in `text`.
    pub(crate) fn find(&self, text: &[u8]) -> Found {
        let bits = self
            .searcher
            .find_iter(text)
            .fold(0u64, |bits, found| bits | 1 << found.pattern().as_usize());
        Found(bits)
    }

    /// False only when rule `index` cannot match the text `found` was taken from.
    pub(crate) fn rule_may_match(&self, found: Found, index: usize) -> bool {
        match self.rules.get(index) {
            Some(Some(mask)) => found.0 & mask != 0,
            _ => true,
        }
    }

    /// False only when the text `found` was taken from cannot be the terminator.
    pub(crate) fn may_be_terminator(&self, found: Found) -> bool {
        self.terminator.is_none_or(|mask| found.0 & mask != 0)
    }
}

/// The bits of `wanted` in `literals`, adding the ones not there yet; `None` past 64.
fn mask_of<'a>(literals: &mut Vec<&'a [u8]>, wanted: &[&'a [u8]]) -> Option<u64> {
    let mut mask = 0u64;
    for &literal in wanted {
        let bit = if let Some(bit) = literals.iter().position(|known| *known == literal) {
            bit
        } else {
            literals.push(literal);
            literals.len() - 1
        };
        mask |= 1u64.checked_shl(u32::try_from(bit).ok()?)?;
    }
    Some(mask)
}

/// True when no two literals can overlap in a text: none contains another, and no
/// literal's end is another's start. (A literal overlapping itself is harmless: one
/// occurrence of it is enough.)
fn overlap_free(literals: &[&[u8]]) -> bool {
    literals.iter().enumerate().all(|(i, a)| {
        literals.iter().enumerate().all(|(j, b)| {
            let contains = a.windows(b.len()).any(|w| w == *b);
            let joins = (1..a.len().min(b.len())).any(|n| a.ends_with(&b[..n]));
            i == j || (!contains && !joins)
        })
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use regex::bytes::Regex;

    use super::*;
    use crate::rewrite::{Scope, TerminatorMatch};

    fn replace(pattern: &str, scope: Scope) -> Rule {
        let regex = Regex::new(pattern).expect("valid");
        Rule::replace("r".into(), regex, b"x".to_vec(), scope)
    }

    fn done() -> Terminator {
        Terminator {
            matcher: TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
            forward: true,
            synthesize_on_eof: true,
        }
    }

    #[test]
    fn finds_which_rules_and_the_terminator_may_match() {
        let rules = [
            Rule::repair_orphan_lines("repair".into()),
            replace(r"(?m)^data:\r?\n", Scope::Event),
            replace(r#""text":"#, Scope::Data),
            Rule::drop(
                "pings".into(),
                Regex::new("^:").expect("valid"),
                Scope::Event,
            ),
        ];
        let scan = LiteralScan::new(&rules, Some(&done())).expect("three distinct literals");
        let plain = scan.find(b"data: {\"content\":\"hi\"}\n");
        assert!(scan.rule_may_match(plain, 0), "repair always runs");
        assert!(!scan.rule_may_match(plain, 1));
        assert!(!scan.rule_may_match(plain, 2));
        assert!(
            scan.rule_may_match(plain, 3),
            "anchored rules check the start themselves"
        );
        assert!(!scan.may_be_terminator(plain));

        let broken = scan.find(b"data:\n{\"text\":\"hi\"}\n");
        assert!(scan.rule_may_match(broken, 1));
        assert!(scan.rule_may_match(broken, 2));
        assert!(scan.may_be_terminator(scan.find(b"data: [DONE]\n")));
    }

    #[test]
    fn every_occurring_literal_is_found() {
        let literals: [&[u8]; 4] = [b"data:\n", b"data:\r\n", b"\"text\":", b"[DONE]"];
        let rules: Vec<Rule> = [r"(?m)^data:\r?\n", r#""text":"#, r"\[DONE\]"]
            .iter()
            .map(|p| replace(p, Scope::Event))
            .collect();
        let scan = LiteralScan::new(&rules, None).expect("overlap-free literals");
        for (i, a) in literals.iter().enumerate() {
            for b in &literals[i..] {
                let text = [*a, b"x", *b, *a].concat();
                let found = scan.find(&text);
                for (index, rule) in rules.iter().enumerate() {
                    let literal_present = rule
                        .required_literals()
                        .expect("literals")
                        .iter()
                        .any(|l| text.windows(l.len()).any(|w| w == *l));
                    assert_eq!(scan.rule_may_match(found, index), literal_present);
                }
            }
        }
    }

    #[test]
    fn no_scan_for_literals_that_can_overlap_or_too_few() {
        assert!(
            !overlap_free(&[b"ab", b"bc"]),
            "ab|c: the end of one starts the other"
        );
        assert!(!overlap_free(&[b"abc", b"b"]), "one inside the other");
        assert!(
            overlap_free(&[b"aba", b"x"]),
            "a literal may overlap itself"
        );
        assert!(overlap_free(&[b"data:\n", b"data:\r\n", b"[DONE]"]));
        let overlapping = [replace("ab", Scope::Event), replace("bc", Scope::Event)];
        assert!(LiteralScan::new(&overlapping, None).is_none());
        assert!(LiteralScan::new(&[replace("ab", Scope::Event)], None).is_none());
    }

    proptest::proptest! {
        /// Sound: whatever the scan rules out, the rule would have kept, and the event is
        /// not the terminator.
        #[test]
        fn what_the_scan_rules_out_cannot_match(pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "data:", "data: ", "\n", "\"text\":", "[DONE]", "[DONE", ":", "x", "event: ",
                "\"content\":", "data:\n",
            ]),
            0..12,
        )) {
            let rules = [
                replace(r"(?m)^data:\r?\n", Scope::Event),
                replace(r#""text":"#, Scope::Data),
                replace(r"event: x", Scope::Data),
            ];
            let terminator = done();
            let scan = LiteralScan::new(&rules, Some(&terminator)).expect("a scan");
            let mut text = pieces.concat();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let text = text.replace("\n\n", "\n");
            let found = scan.find(text.as_bytes());
            for (index, rule) in rules.iter().enumerate() {
                if !scan.rule_may_match(found, index) {
                    proptest::prop_assert_eq!(rule.apply(text.as_bytes(), usize::MAX), crate::rewrite::Outcome::Keep);
                }
            }
            if !scan.may_be_terminator(found) {
                proptest::prop_assert!(!terminator.matches(&crate::sse::Event::new(text.as_bytes())));
            }
        }
    }
}
