//! Go's string quoting and Unicode classes, reproduced so that AST dumps and identifier rules match BuildKit's.
//!
//! BuildKit's golden `result` files are produced with Go's `strconv.Quote`, and its lexer decides what a variable
//! name is with `unicode.IsLetter`/`IsDigit`. Rust's `char::is_alphabetic`/`is_numeric` cover more characters
//! (letter numbers, combining marks), so the Unicode general categories are checked directly through `regex`'s
//! tables instead.

use std::sync::LazyLock;

use regex::Regex;

// The patterns are constants covered by this module's tests, so `Regex::new` cannot fail at run time.
#[allow(clippy::expect_used)]
static LETTER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{L}$").expect("constant regex"));
#[allow(clippy::expect_used)]
static DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").expect("constant regex"));
#[allow(clippy::expect_used)]
static GRAPHIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{M}\p{N}\p{P}\p{S}]$").expect("constant regex"));

fn class_match(re: &Regex, c: char) -> bool {
    re.is_match(c.encode_utf8(&mut [0u8; 4]))
}

/// Go's `unicode.IsLetter` (general category L).
pub(crate) fn is_go_letter(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_alphabetic() } else { class_match(&LETTER, c) }
}

/// Go's `unicode.IsDigit` (general category Nd).
pub(crate) fn is_go_digit(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_digit() } else { class_match(&DIGIT, c) }
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
pub(crate) fn is_go_print(c: char) -> bool {
    if c.is_ascii() { (' '..='~').contains(&c) } else { class_match(&GRAPHIC, c) }
}

/// Go's `strings.ToLower`: a rune-by-rune mapping without context rules.
pub(crate) fn go_lower(s: &str) -> String {
    s.chars().map(|c| c.to_lowercase().next().unwrap_or(c)).collect()
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_go_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `fmt.Sprintf("%q", []string{..})`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\u{7f}\t\u{b}"), r#""\x00\x7f\t\v""#);
        assert_eq!(go_quote("♥ é"), "\"♥ é\"");
        assert_eq!(go_quote("\u{a0}\u{200b}\u{feff}"), r#""\u00a0\u200b\ufeff""#);
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
        assert_eq!(go_quote_list(&["--a".into(), "--b=c".into()]), r#"["--a" "--b=c"]"#);
    }

    #[test]
    fn unicode_classes_are_go_categories() {
        assert!(is_go_letter('한'));
        assert!(!is_go_letter('Ⅻ')); // letter number: alphabetic in Rust, not a letter in Go
        assert!(is_go_digit('٣'));
        assert!(!is_go_digit('²'));
        assert_eq!(go_lower("RUN İ Σ"), "run i σ");
    }
}
