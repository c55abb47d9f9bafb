//! Dockerfile text to a syntax tree, reproducing BuildKit's parser (`frontend/dockerfile/parser`) byte for byte.
//!
//! The tree has BuildKit's shape on purpose: the root has one child per instruction, and each instruction keeps
//! its arguments as the flat `next` list its per-instruction splitting rule produced (ENV as key/value/separator
//! triples, FROM split on blanks, RUN as one string unless it is a JSON array, ...). Keeping that shape lets the
//! conformance suite compare [`Node::dump`] with BuildKit's golden `result` files, and leaves the interpretation
//! (flags, stages, variable expansion) to the typed layer above.
//!
//! The quirks that real Dockerfiles rely on are kept: parser directives only before anything else, comment and
//! blank lines skipped inside continuations (with a warning for the blank ones), continuation lines keeping their
//! leading whitespace, heredoc bodies read verbatim after the instruction line, `--flags` unquoted byte by byte,
//! and a malformed JSON array silently meaning shell form.

mod args;
mod heredoc;
mod json;
pub mod quote;

use std::fmt;

use crate::shell::ShellError;
use quote::{go_lower, go_quote, go_quote_list};

use args::*;
pub use heredoc::*;

/// The longest physical line Go's line scanner accepts (its 64 KiB buffer, newline included).
const MAX_LINE: usize = 64 * 1024;

/// How many `ONBUILD` keywords may wrap one instruction. BuildKit parses any number (the typed layer then rejects
/// `ONBUILD ONBUILD`); each level is one recursive call here, so a line of thousands would exhaust the stack.
pub const MAX_ONBUILD_NESTING: usize = 8;

/// A heredoc attached to a RUN/COPY/ADD instruction (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heredoc {
    /// The terminator word, quotes removed.
    pub name: String,
    /// The body lines exactly as written, each with its line ending; leading tabs are NOT removed here even with
    /// `<<-` (see [`chomp_heredoc_content`]).
    pub content: String,
    /// False when any part of the terminator word was quoted: the body must not be variable-expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the terminator line.
    pub chomp: bool,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u64,
}

/// One node of the tree; see the module documentation for its shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Instruction nodes: the lowercased instruction name; argument nodes: the argument.
    pub value: String,
    /// The argument chain, in order (BuildKit's `Next` list, flattened). For ONBUILD it holds one node whose
    /// `children` is the inner instruction.
    pub next: Vec<Node>,
    /// Root: one node per instruction. The argument node of ONBUILD: the one inner instruction.
    pub children: Vec<Node>,
    /// Leading `--flag[=value]` words, quotes removed as BuildKit does.
    pub flags: Vec<String>,
    /// The arguments were given in JSON (exec) form.
    pub json: bool,
    /// The logical line (continuations joined) as BuildKit keeps it.
    pub original: String,
    pub heredocs: Vec<Heredoc>,
    /// 1-based, inclusive; for an instruction with heredocs `end_line` is the last terminator line.
    pub start_line: usize,
    pub end_line: usize,
    /// The comment lines directly above the instruction (without `#`), as BuildKit collects them.
    pub prev_comment: Vec<String>,
}

impl Node {
    /// BuildKit's `Node.Dump()`; for the root, `dump() + "\n"` equals a golden `result` file.
    pub fn dump(&self) -> String {
        let mut s = go_lower(&self.value);
        if !self.flags.is_empty() {
            s.push(' ');
            s.push_str(&go_quote_list(&self.flags));
        }
        for c in &self.children {
            s.push('(');
            s.push_str(&c.dump());
            s.push_str(")\n");
        }
        for n in &self.next {
            s.push(' ');
            if n.children.is_empty() {
                s.push_str(&go_quote(&n.value));
            } else {
                s.push_str(&n.dump());
            }
        }
        s.trim().to_string()
    }

    /// The instruction ONBUILD wraps, if this is an ONBUILD node with one.
    pub fn onbuild_inner(&self) -> Option<&Node> {
        self.next.first().and_then(|n| n.children.first())
    }

    /// Whether heredoc bodies follow this instruction's line (RUN/COPY/ADD in shell form, also behind ONBUILD).
    fn can_contain_heredoc(&self) -> bool {
        let node = if self.value == "onbuild" { self.onbuild_inner().unwrap_or(self) } else { self };
        matches!(node.value.as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// A non-fatal finding, e.g. an empty line inside a continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    /// 1-based line the warning refers to.
    pub line: usize,
}

/// A parser directive (`# syntax=`, `# escape=`, `# check=`) from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lowercased name.
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub root: Node,
    /// The escape character (`\` unless `# escape=` changed it).
    pub escape: char,
    /// The value of the `# syntax=` directive, if any.
    pub syntax: Option<String>,
    pub warnings: Vec<Warning>,
    /// All parser directives, in order.
    pub directives: Vec<Directive>,
}

impl Ast {
    /// The value of a parser directive (`"syntax"`, `"escape"`, `"check"`).
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.directives.iter().find(|d| d.name == name).map(|d| d.value.as_str())
    }
}

/// Why a heredoc word could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeredocError {
    #[error("invalid heredoc terminator: {0}")]
    Lex(#[from] ShellError),
    #[error("internal lexing of heredoc produced inconsistent results: {rest}")]
    Inconsistent { rest: String },
}

/// What is wrong with a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("invalid escape token '{value}' does not match ` or \\")]
    InvalidEscapeToken { value: String },
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective { name: String },
    #[error("{instruction} must have two arguments")]
    MissingValue { instruction: &'static str },
    #[error("Syntax error - can't find = in {}. Must be of the form: name=value", go_quote(.word))]
    MissingEquals { word: String },
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStringArray,
    #[error("unterminated heredoc: no line {} closes it", go_quote(.name))]
    UnterminatedHeredoc { name: String },
    #[error(transparent)]
    Heredoc(#[from] HeredocError),
    #[error("dockerfile line greater than max allowed size of {}", MAX_LINE - 1)]
    LineTooLong,
    #[error("ONBUILD is nested more than {limit} levels deep")]
    OnbuildTooDeep { limit: usize },
}

/// A parse failure with the (1-based) lines it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    line: usize,
    end_line: usize,
    kind: ParseErrorKind,
}

impl ParseError {
    fn new(line: usize, end_line: usize, kind: ParseErrorKind) -> Self {
        ParseError { line: line.max(1), end_line: end_line.max(line).max(1), kind }
    }

    /// First line (1-based) of the offending instruction.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Last line (1-based) of the offending instruction.
    pub fn end_line(&self) -> usize {
        self.end_line
    }

    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end_line > self.line {
            write!(f, "dockerfile parse error on lines {}-{}: {}", self.line, self.end_line, self.kind)
        } else {
            write!(f, "dockerfile parse error on line {}: {}", self.line, self.kind)
        }
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ParseErrorKind::Heredoc(e) => Some(e),
            _ => None,
        }
    }
}

/// Go's `unicode.IsSpace` applied to a single byte taken as a Latin-1 rune (how BuildKit scans flags).
fn is_space_byte(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0)
}

/// The byte range `a..b` of `s` as a string; a range splitting a character (possible only in byte-wise scans
/// that treat UTF-8 continuation bytes 0x85/0xA0 as blanks) is decoded lossily instead of panicking.
fn byte_slice(s: &str, a: usize, b: usize) -> String {
    match s.get(a..b) {
        Some(t) => t.to_string(),
        None => String::from_utf8_lossy(s.as_bytes().get(a..b).unwrap_or_default()).into_owned(),
    }
}

/// The blank class of BuildKit's `[\t\v\f\r ]+` splitting regex.
fn is_token_blank(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go's `regexp.Split(s, n)` for the blank-run regex (`n < 0`: all parts).
fn split_blanks(s: &str, n: isize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if n > 0 && parts.len() as isize == n - 1 {
            break;
        }
        if is_token_blank(c) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !is_token_blank(d) {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            parts.push(s[start..i].to_string());
            start = end;
        }
    }
    parts.push(s[start..].to_string());
    parts
}

/// Go regexp `\s`: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// Matches `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` and returns (name, value).
fn match_directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_re_space);
    let name_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest[name_len..].trim_start_matches(is_re_space).strip_prefix('=')?;
    if rest.is_empty() {
        return None;
    }
    let value = rest.trim_start_matches(is_re_space);
    if value.is_empty() {
        // `.+?` needs one character: the regex takes the last blank as the value.
        let last = rest.chars().last()?;
        return Some((name.to_string(), last.to_string()));
    }
    Some((name.to_string(), value.trim_end_matches(is_re_space).to_string()))
}

/// Directive state while reading the top of the file.
struct Directives {
    escape: char,
    done: bool,
    found: Vec<Directive>,
}

impl Directives {
    /// Looks for a directive on a (left-trimmed) line; true if the line was one.
    fn possible_directive(&mut self, token: &str, line: usize) -> Result<bool, ParseErrorKind> {
        if self.done {
            return Ok(false);
        }
        let Some((name, value)) = match_directive(token) else {
            self.done = true;
            return Ok(false);
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(false);
        }
        if self.found.iter().any(|d| d.name == name) {
            return Err(ParseErrorKind::DuplicateDirective { name });
        }
        if name == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => return Err(ParseErrorKind::InvalidEscapeToken { value }),
            };
        }
        self.found.push(Directive { name, value, line });
        Ok(true)
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Removes a line-continuation escape (the escape character as last non-blank, not itself escaped).
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before.to_string(), false);
    }
    (line.to_string(), true)
}

/// Splits the input into lines that keep their `\n`, like BuildKit's scanner; also returns the index of the
/// first line too long for Go's scanner, where BuildKit stops reading.
fn split_lines(src: &str) -> (Vec<&str>, Option<usize>) {
    let mut lines = Vec::new();
    let mut rest = src;
    while !rest.is_empty() {
        let (line, more) = match rest.find('\n') {
            Some(i) => rest.split_at(i + 1),
            None => (rest, ""),
        };
        let too_long = if line.ends_with('\n') { line.len() > MAX_LINE } else { line.len() >= MAX_LINE };
        if too_long {
            let at = lines.len();
            return (lines, Some(at));
        }
        lines.push(line);
        rest = more;
    }
    (lines, None)
}

/// Parses a Dockerfile.
pub fn parse(src: &str) -> Result<Ast, ParseError> {
    let (lines, too_long) = split_lines(src);
    let mut d = Directives { escape: '\\', done: false, found: Vec::new() };
    let mut root = Node::default();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut idx = 0;
    let mut current_line = 0;

    while idx < lines.len() {
        let mut bytes_read = lines[idx];
        idx += 1;
        if current_line == 0 {
            bytes_read = bytes_read.strip_prefix('\u{feff}').unwrap_or(bytes_read);
        }
        if is_comment(bytes_read) {
            // BuildKit drops the first byte (the `#`, or the first blank of an indented comment).
            let mut chars = bytes_read.chars();
            chars.next();
            let comment = chars.as_str().trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        let token = trim_newline(bytes_read).trim_start();
        let directive = d
            .possible_directive(token, current_line + 1)
            .map_err(|k| ParseError::new(current_line + 1, current_line + 1, k))?;
        if directive {
            comments.pop();
        }
        let processed = if is_comment(token) { "" } else { token };
        current_line += 1;
        let start_line = current_line;

        let (mut line, mut end) = trim_continuation(processed, d.escape);
        if end && line.is_empty() {
            continue;
        }
        let mut has_empty_continuation = false;
        while !end && idx < lines.len() {
            let raw = lines[idx];
            idx += 1;
            let token = trim_newline(raw);
            d.possible_directive(token, current_line + 1)
                .map_err(|k| ParseError::new(current_line + 1, current_line + 1, k))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if token.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (cont, e) = trim_continuation(token, d.escape);
            line.push_str(&cont);
            end = e;
        }
        if has_empty_continuation {
            warnings.push(Warning { message: format!("Empty continuation line found in: {line}"), line: current_line });
        }

        let mut child = new_node_from_line(&line, d.escape, std::mem::take(&mut comments), 0)
            .map_err(|k| ParseError::new(start_line, current_line, k))?;
        if child.can_contain_heredoc() && line.contains("<<") {
            let heredocs = heredocs_from_line(&line)
                .map_err(|e| ParseError::new(start_line, current_line, ParseErrorKind::Heredoc(e)))?;
            for mut heredoc in heredocs {
                let mut terminated = false;
                while idx < lines.len() {
                    let raw = lines[idx];
                    idx += 1;
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::new(
                        start_line,
                        current_line,
                        ParseErrorKind::UnterminatedHeredoc { name: heredoc.name },
                    ));
                }
                child.heredocs.push(heredoc);
            }
        }
        child.start_line = start_line;
        child.end_line = current_line;
        if let Some(inner) = child.next.first_mut().and_then(|n| n.children.first_mut()) {
            inner.start_line = start_line;
            inner.end_line = current_line;
        }
        if root.children.is_empty() {
            root.start_line = start_line;
        }
        root.end_line = current_line;
        root.children.push(child);
    }

    if root.children.is_empty() {
        return Err(ParseError::new(current_line, current_line, ParseErrorKind::NoInstructions));
    }
    if let Some(i) = too_long {
        return Err(ParseError::new(i + 1, i + 1, ParseErrorKind::LineTooLong));
    }
    let syntax = d.found.iter().find(|x| x.name == "syntax").map(|x| x.value.clone());
    Ok(Ast { root, escape: d.escape, syntax, warnings, directives: d.found })
}

#[cfg(test)]
mod tests;
