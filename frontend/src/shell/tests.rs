//! Unit tests of the shell-word lexer (BuildKit's `shell.Lex` cases).

use super::expand::reverse_pattern;
use super::*;

fn env() -> Vec<(String, String)> {
    [("PWD", "/home"), ("EMPTY", ""), ("P", "a/b/c.tar.gz"), ("SP", "x  y")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn word(s: &str) -> Result<String, ShellError> {
    Lexer::new('\\').process_word(s, &env())
}

#[test]
fn modifiers_follow_buildkit() {
    assert_eq!(word("${P#*/}").unwrap(), "b/c.tar.gz");
    assert_eq!(word("${P##*/}").unwrap(), "c.tar.gz");
    assert_eq!(word("${P%.*}").unwrap(), "a/b/c.tar");
    assert_eq!(word("${P%%.*}").unwrap(), "a/b/c");
    assert_eq!(word("${P/\\//_}").unwrap(), "a_b/c.tar.gz");
    assert_eq!(word("${P//\\//_}").unwrap(), "a_b_c.tar.gz");
    assert_eq!(word("${EMPTY-x}").unwrap(), "");
    assert_eq!(word("${EMPTY:-x}").unwrap(), "x");
    assert_eq!(word("${EMPTY+x}").unwrap(), "x");
    assert_eq!(word("${EMPTY:+x}").unwrap(), "");
    assert_eq!(word("${NOPE+x}").unwrap(), "");
    assert_eq!(word("${PWD:?boom}").unwrap(), "/home");
    let e = word("${NOPE?boom}").unwrap_err();
    assert_eq!(e.kind, ShellErrorKind::Required { name: "NOPE".into(), message: "boom".into() });
    assert!(matches!(word("${P:#x}").unwrap_err().kind, ShellErrorKind::UnsupportedModifier { .. }));
}

#[test]
fn suffix_pattern_keeps_escape_pairs() {
    assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
    assert_eq!(reverse_pattern(""), "");
    assert_eq!(word("${P%\\*}").unwrap(), "a/b/c.tar.gz");
}

#[test]
fn expansion_results_split_into_words_but_quotes_do_not() {
    let l = Lexer::new('\\');
    assert_eq!(l.process_words("a$SP\"b c\"", &env()).unwrap(), vec!["ax", "yb c"]);
    assert_eq!(l.process_words("''", &env()).unwrap(), Vec::<String>::new());
    // Own buffer per nested scan: the prefix is kept.
    assert_eq!(l.process_words("a${NOPE:-b}c", &env()).unwrap(), vec!["abc"]);
}

#[test]
fn matches_report_only_set_variables() {
    let l = Lexer::new('\\');
    let (out, m) = l.process_word_with_matches("$PWD-${NOPE:-$EMPTY}", &env()).unwrap();
    assert_eq!(out, "/home-");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), vec!["EMPTY", "PWD"]);
}

#[test]
fn raw_mode_keeps_everything_for_heredoc_detection() {
    let l = Lexer::new('\\').raw_quotes(true).raw_escapes(true).skip_unset_env(true);
    assert_eq!(
        l.process_words("RUN <<'E F' \\x $Y ${Z:-1}", &NoEnv).unwrap(),
        vec!["RUN", "<<'E F'", "\\x", "$Y", "${Z:-1}"]
    );
    assert_eq!(l.process_words("a <<  EOF >f", &NoEnv).unwrap(), vec!["a", "<<  EOF", ">f"]);
}

#[test]
fn backtick_escape() {
    let l = Lexer::new('`');
    assert_eq!(l.process_word("a`$PWD\\b", &env()).unwrap(), "a$PWD\\b");
}

#[test]
fn env_list_last_entry_wins() {
    let e = vec![("A".to_string(), "1".to_string()), ("A".to_string(), "2".to_string())];
    assert_eq!(e.lookup("A"), Some("2"));
    assert_eq!(Lexer::new('\\').process_word("$A", &e).unwrap(), "2");
}

/// Issue 9 item 6: `${X:-` nested 3,000 deep overflowed the stack (exit 134).
#[test]
fn deeply_nested_substitutions_are_an_error_not_a_stack_overflow() {
    let l = Lexer::new('\\');
    for depth in [MAX_NESTING + 1, 3_000, 100_000] {
        let w = format!("{}x{}", "${X:-".repeat(depth), "}".repeat(depth));
        let e = l.process_word(&w, &NoEnv).unwrap_err();
        assert_eq!(e.kind, ShellErrorKind::TooDeep { limit: MAX_NESTING }, "depth {depth}");
        assert!(e.to_string().len() < 400, "the message shows a shortened word: {e}");
        // Inside double quotes, and unterminated, the limit holds too.
        let q = format!("{}x", "\"${X:-".repeat(depth));
        assert!(matches!(l.process_word(&q, &NoEnv).unwrap_err().kind, ShellErrorKind::TooDeep { .. }));
    }
    let ok = format!("{}x{}", "${X:-".repeat(20), "}".repeat(20));
    assert_eq!(l.process_word(&ok, &NoEnv).unwrap(), "x");
}

/// Issue 9 item 7: doubling a variable on every line reached gigabytes; one word may grow by 1 MiB at most.
#[test]
fn expansion_growth_is_capped() {
    let l = Lexer::new('\\');
    let half = vec![("A".to_string(), "a".repeat(MAX_EXPANSION / 2))];
    assert_eq!(l.process_word("${A}", &half).unwrap().len(), MAX_EXPANSION / 2);
    assert_eq!(l.process_word("$A$A", &half).unwrap().len(), MAX_EXPANSION);
    let e = l.process_word("$A$A$A", &half).unwrap_err();
    assert_eq!(e.kind, ShellErrorKind::TooLarge { limit: MAX_EXPANSION });
    assert!(matches!(l.process_word("\"$A${A}$A\"", &half).unwrap_err().kind, ShellErrorKind::TooLarge { .. }));
    assert!(matches!(l.process_word("${X:-$A$A$A}", &half).unwrap_err().kind, ShellErrorKind::TooLarge { .. }));
    // `//` with a replacement that refers to the match multiplies the value: bounded before it is built.
    let small = vec![("A".to_string(), "a".repeat(4096)), ("R".to_string(), "$0".repeat(512))];
    assert!(matches!(l.process_word("${A//a/$R}", &small).unwrap_err().kind, ShellErrorKind::TooLarge { .. }));
    assert_eq!(l.process_word("${A//a/b}", &small).unwrap(), "b".repeat(4096));
    // Literal text does not count: a long heredoc body is not an expansion.
    let long = "x".repeat(2 * MAX_EXPANSION);
    assert_eq!(l.process_word(&long, &NoEnv).unwrap().len(), long.len());
}

#[test]
fn error_message_names_the_word() {
    let e = word("he${PWD").unwrap_err();
    assert!(e.to_string().starts_with("failed to process \"he${PWD\": "), "{e}");
}
