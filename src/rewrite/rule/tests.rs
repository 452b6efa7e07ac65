//! The rules one by one: repair, replace (bounded), drop, on the working form.

use super::*;

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("test pattern compiles")
}

proptest::proptest! {
    /// The bounded replace-all finds the same matches and expands the same way as
    /// the regex crate's own, empty matches and `$` groups included.
    #[test]
    fn bounded_replace_all_is_the_regex_crates_replace_all(
        subject in "[ab$\\n]{0,24}",
        pattern in proptest::sample::select(vec!["", "a", "a*", "(a)(b)?", "(?m)^", "b|$"]),
        with in proptest::sample::select(vec!["", "x", "[$1]", "$2$1", "$$", "${1}z"]),
    ) {
        let pattern = regex(pattern);
        let expected = pattern.replace_all(subject.as_bytes(), with.as_bytes());
        match replace_all(&pattern, subject.as_bytes(), with.as_bytes(), usize::MAX) {
            Replaced::None => proptest::prop_assert!(matches!(expected, Cow::Borrowed(_))),
            Replaced::Text(text) => proptest::prop_assert_eq!(text, expected.into_owned()),
            Replaced::TooLarge => proptest::prop_assert!(false, "no limit was set"),
        }
    }
}

#[test]
fn a_replacement_stops_growing_at_its_limit() {
    let subject = vec![b'a'; 1 << 20];
    let with = [b'x'; 90];
    let outcome = replace_all(&regex(""), &subject, &with, 1 << 20);
    assert!(matches!(outcome, Replaced::TooLarge));
    let rule = Rule::replace("grow".into(), regex(""), with.to_vec(), Scope::Event);
    assert_eq!(rule.apply(b"data: a\n", 64), Outcome::TooLarge);
    assert!(matches!(
        rule.apply(b"data: a\n", 4096),
        Outcome::Changed(_)
    ));
}

/// Applies `rule` to `text` in the working form (the last line's LF added here).
fn run(rule: &Rule, text: &str) -> Outcome {
    rule.apply(format!("{text}\n").as_bytes(), usize::MAX)
}

fn repair(text: &str) -> Outcome {
    run(&Rule::repair_orphan_lines("repair".into()), text)
}

fn changed(text: &str) -> Outcome {
    Outcome::Changed(format!("{text}\n").into_bytes())
}

#[test]
fn repair_fills_empty_data_line() {
    assert_eq!(
        repair("data:\n{\"value\":\"Hel\"}"),
        changed("data:{\"value\":\"Hel\"}")
    );
    assert_eq!(repair("data\n[DONE]"), changed("data:[DONE]"));
    assert_eq!(repair("data: \n x"), changed("data:  x"));
    assert_eq!(repair("data:\n x"), changed("data:  x"));
}

#[test]
fn repair_appends_after_non_empty_data_line() {
    assert_eq!(
        repair("data: a\nb\nc"),
        changed("data: a\ndata: b\ndata: c")
    );
    assert_eq!(repair("data:\nb\nc"), changed("data:b\ndata: c"));
}

#[test]
fn repair_fills_nearest_data_line_across_known_fields() {
    assert_eq!(repair("data:\nid: 7\n{}"), changed("data:{}\nid: 7"));
}

#[test]
fn repair_leaves_lines_before_data_and_known_lines_alone() {
    assert_eq!(repair("junk\ndata: a"), Outcome::Keep);
    assert_eq!(
        repair("data: a\n: comment\nid: 1\nevent: x\nretry: 5"),
        Outcome::Keep
    );
    assert_eq!(repair("junk\ndata:\nmore"), changed("junk\ndata:more"));
}

#[test]
fn replace_event_scope_sees_lf_text() {
    let rule = Rule::replace(
        "r".into(),
        regex(r"(?m)^data:\r?\n"),
        b"data:".to_vec(),
        Scope::Event,
    );
    assert_eq!(run(&rule, "data:\n[DONE]"), changed("data:[DONE]"));
    assert_eq!(run(&rule, "data: x"), Outcome::Keep);
}

#[test]
fn replace_expands_groups_and_keeps_one_event() {
    let rule = Rule::replace(
        "r".into(),
        regex("a(b)"),
        b"$1\n\n$1".to_vec(),
        Scope::Event,
    );
    assert_eq!(run(&rule, "x: ab"), changed("x: b\nb"));
}

#[test]
fn replace_identity_is_not_a_change() {
    let rule = Rule::replace("r".into(), regex("a"), b"a".to_vec(), Scope::Event);
    assert_eq!(run(&rule, "data: a"), Outcome::Keep);
}

#[test]
fn replace_data_scope_rewrites_data_lines_only() {
    let rule = Rule::replace(
        "r".into(),
        regex(r#""text":"#),
        br#""value":"#.to_vec(),
        Scope::Data,
    );
    assert_eq!(
        run(
            &rule,
            "event: m\ndata: {\"text\":1}\nid: 2\ndata: {\"text\":2}"
        ),
        changed("event: m\ndata: {\"value\":1}\ndata: {\"value\":2}\nid: 2")
    );
    assert_eq!(run(&rule, ": \"text\":"), Outcome::Keep);
}

#[test]
fn drop_by_event_and_data_scope() {
    let pings = Rule::drop("upstream-pings".into(), regex("^:"), Scope::Event);
    assert_eq!(run(&pings, ": ping"), Outcome::Drop);
    assert_eq!(run(&pings, "data: :"), Outcome::Keep);
    let data = Rule::drop("d".into(), regex("^secret$"), Scope::Data);
    assert_eq!(run(&data, "data: secret"), Outcome::Drop);
    assert_eq!(run(&data, "x: secret"), Outcome::Keep);
}

#[test]
fn names_and_kinds() {
    let rule = Rule::drop("upstream-pings".into(), regex("^:"), Scope::Event);
    assert_eq!((rule.name(), rule.kind_label()), ("upstream-pings", "drop"));
}
