//! Shell-word processing of Dockerfile arguments: quotes, the escape character and `$VAR` expansion.
//!
//! Dockerfiles are not run through a shell: BuildKit has its own small lexer (`shell.Lex`) that removes quotes,
//! honours the escape character and expands `$v`, `${v}` and the `${v:-w}`-family of modifiers from the build's
//! environment. Images built elsewhere depend on its exact quirks (an unset `$1` is empty, `${v:=w}` is an error, a
//! trailing escape is dropped, unquoted expansion results are split into words), so this is a faithful
//! re-implementation of that lexer rather than a POSIX shell. The heredoc detector in the parser reuses it with the
//! "raw" switches that keep quotes, escapes and unset variables verbatim.
//!
//! One deliberate difference: BuildKit shares one word buffer between nested `${v:-...}` scans, which makes
//! `process_words("a${x:-b}c")` lose the leading `a`; here every scan has its own buffer, so the words are `["abc"]`.
//!
//! Two limits BuildKit does not have, because a Dockerfile is untrusted input and Go's growable stacks hide what a
//! fixed Rust stack cannot: `${v:-${w:-...}}` may nest at most [`MAX_NESTING`] deep (the scanner recurses once per
//! level), and one word may grow by at most [`MAX_EXPANSION`] bytes through expansion (thirty lines of
//! `ARG A2=${A1}${A1}` would otherwise need gigabytes). Both are errors that name the word, never a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use crate::parser::quote::{go_quote, is_go_digit, is_go_letter};

mod expand;

/// How deeply `${...}` expressions may nest inside each other's modifier words.
pub const MAX_NESTING: usize = 64;

/// How many bytes one word may grow by through variable expansion (1 MiB). Literal text never counts, so a long
/// heredoc body is not limited by it.
pub const MAX_EXPANSION: usize = 1 << 20;

/// A source of variable values for expansion.
pub trait EnvLookup {
    /// The value of `name`, or `None` if it is unset (an empty value is *set*).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl EnvLookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> EnvLookup for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An ordered environment list; a later entry for the same name wins, as in a process environment built by
/// successive `ENV` instructions.
impl EnvLookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl EnvLookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T: EnvLookup + ?Sized> EnvLookup for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// An environment in which every variable is unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl EnvLookup for NoEnv {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// What went wrong while processing one word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShellErrorKind {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("unexpected end of statement while looking for matching {stop}")]
    UnexpectedEnd { stop: char },
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier { modifier: String },
    /// `${name?message}` / `${name:?message}` on an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error("variable substitutions are nested more than {limit} levels deep")]
    TooDeep { limit: usize },
    #[error("variable expansion makes the word larger than {} bytes", .limit)]
    TooLarge { limit: usize },
}

/// A word that could not be processed, with the word itself for context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {kind}", go_quote(&shorten(.word)))]
pub struct ShellError {
    pub word: String,
    #[source]
    pub kind: ShellErrorKind,
}

/// Everything one pass over a word produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessedWord {
    /// The word with quotes removed and variables expanded (inner whitespace kept).
    pub result: String,
    /// The same, split into words on unquoted whitespace (whitespace from expansions splits too).
    pub words: Vec<String>,
    /// Variables referenced that were set in the environment.
    pub matched: BTreeSet<String>,
    /// Variables referenced that were not set.
    pub unmatched: BTreeSet<String>,
}

/// BuildKit's `shell.Lex`: one escape character plus the switches the parser needs for heredoc detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Lexer {
    /// A lexer using `escape` (`\` or `` ` ``, from the `# escape=` directive) as escape character.
    pub fn new(escape: char) -> Self {
        Lexer { escape, raw_quotes: false, raw_escapes: false, skip_unset_env: false, skip_process_quotes: false }
    }

    /// The escape character this lexer honours.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (BuildKit `RawQuotes`).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit `RawEscapes`).
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written instead of expanding them to "" (BuildKit `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters, only expanding variables (BuildKit `SkipProcessQuotes`, used for
    /// heredoc bodies whose quotes belong to the script).
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Remove quotes and escapes from `word` and expand its variables; whitespace is kept.
    pub fn process_word(&self, word: &str, env: &dyn EnvLookup) -> Result<String, ShellError> {
        Ok(self.process(word, env)?.result)
    }

    /// Like [`Lexer::process_word`], then split into words on unquoted whitespace.
    pub fn process_words(&self, word: &str, env: &dyn EnvLookup) -> Result<Vec<String>, ShellError> {
        Ok(self.process(word, env)?.words)
    }

    /// Like [`Lexer::process_word`], also returning the names of the referenced variables that were set in `env`
    /// (what BuildKit uses to decide that a build argument was consumed).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn EnvLookup,
    ) -> Result<(String, BTreeSet<String>), ShellError> {
        let p = self.process(word, env)?;
        Ok((p.result, p.matched))
    }

    /// One pass over `word` returning everything: result, words, matched and unmatched variable names.
    pub fn process(&self, word: &str, env: &dyn EnvLookup) -> Result<ProcessedWord, ShellError> {
        let mut sw = ShellWord {
            chars: scanner_chars(word),
            pos: 0,
            env,
            lex: *self,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
            limit: word.len().saturating_add(MAX_EXPANSION),
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(ProcessedWord { result, words, matched: sw.matched, unmatched: sw.unmatched }),
            Err(kind) => Err(ShellError { word: word.to_string(), kind }),
        }
    }
}

/// A word as shown in an error: at most 200 characters, so that a huge word does not flood the terminal.
fn shorten(word: &str) -> String {
    if word.chars().count() <= 200 {
        word.to_string()
    } else {
        format!("{}...", word.chars().take(197).collect::<String>())
    }
}

/// The characters Go's `text/scanner` yields for `s`: a leading byte-order mark is skipped.
pub(crate) fn scanner_chars(s: &str) -> Vec<char> {
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    s.chars().collect()
}

/// Accumulates the word list: unquoted whitespace separates words, quoted text never does.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct ShellWord<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn EnvLookup,
    lex: Lexer,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    /// How many `${...}` scans are open (each is one level of recursion).
    depth: usize,
    /// The most bytes any string built for this word may hold: the word's own length plus [`MAX_EXPANSION`].
    limit: usize,
}

fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// How Go's `string(rune)` renders a scanner result; EOF (-1) becomes U+FFFD.
fn rune_str(ch: Option<char>) -> String {
    ch.unwrap_or('\u{fffd}').to_string()
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    fn check_len(&self, len: usize) -> Result<(), ShellErrorKind> {
        if len > self.limit { Err(ShellErrorKind::TooLarge { limit: MAX_EXPANSION }) } else { Ok(()) }
    }

    /// Processes until `stop` (consumed) or the end of input; `None` means "until the end".
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellErrorKind> {
        // Each nested `${v:-...}` word is scanned by a recursive call: bound the depth so that no input can
        // exhaust the stack.
        if self.depth >= MAX_NESTING {
            return Err(ShellErrorKind::TooDeep { limit: MAX_NESTING });
        }
        self.depth += 1;
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellErrorKind> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            let quotes = !self.lex.skip_process_quotes;
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    self.check_len(result.len() + tmp.len())?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '<' => {
                    let tmp = self.process_possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '\'' if quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if quotes => {
                    let tmp = self.process_double_quote()?;
                    self.check_len(result.len() + tmp.len())?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one; at the very end it is dropped.
                        match self.next() {
                            None => break,
                            Some(c) => {
                                ch = c;
                                words.add_raw_char(c);
                            }
                        }
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(stop) = stop {
            return Err(ShellErrorKind::UnexpectedEnd { stop });
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ShellErrorKind> {
        // Everything up to the next single quote is literal; nothing can be escaped.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.push_str(&rune_str(open));
        }
        loop {
            match self.next() {
                None => return Err(ShellErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellErrorKind> {
        // Literal except `$`, and the escape character escapes only `"`, `$` and itself.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.push_str(&rune_str(open));
        }
        loop {
            match self.peek() {
                None => return Err(ShellErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    self.check_len(result.len() + v.len())?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.pos += 1;
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    /// `<<` keeps the blanks after it in the same word, so `<< EOF` is one heredoc word.
    fn process_possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.pos += 1;
        let mut result = "<<".to_string();
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            result.push(c);
            self.pos += 1;
        }
        result
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_go_digit(ch) {
                // Positional parameters: all the digits form the name.
                while let Some(d) = self.peek().filter(|c| is_go_digit(*c)) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !is_go_letter(ch) && !is_go_digit(ch) && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn stop_on_or(&mut self, stop: char, raw: bool, at_eof: ShellErrorKind) -> Result<String, ShellErrorKind> {
        match self.process_stop_on(Some(stop), raw) {
            Ok((w, _)) => Ok(w),
            Err(e @ (ShellErrorKind::TooDeep { .. } | ShellErrorKind::TooLarge { .. })) => Err(e),
            Err(_) if self.peek().is_none() => Err(at_eof),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
