//! Per-instruction argument splitting (BuildKit's `line_parsers.go`): flags, words, name=value pairs, JSON and health forms.

use super::*;
use json::JsonArray;
use quote::go_lower;

/// Splits a logical line into lowercased instruction name, flags and the remaining arguments.
pub(super) fn split_command(line: &str) -> (String, Vec<String>, String) {
    let mut parts = split_blanks(line.trim(), 2).into_iter();
    let cmd = go_lower(&parts.next().unwrap_or_default());
    let (args, flags) = match parts.next() {
        Some(rest) => extract_builder_flags(&rest),
        None => (String::new(), Vec::new()),
    };
    (cmd, flags, args.trim().to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Takes the leading `--flag` words off an argument string. BuildKit scans this byte by byte (each byte taken
/// as a Latin-1 character), removes quotes, always treats `\` as the escape and stops at a bare `--`.
pub(super) fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    let b = line.as_bytes();
    let n = b.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= n {
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if is_space_byte(b[pos]) {
                pos += 1;
                continue;
            }
            if b[pos] != b'-' || pos + 1 == n || b[pos + 1] != b'-' {
                return (byte_slice(line, pos, n), words);
            }
            phase = Phase::Word;
        }
        if pos == n {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        let mut ch = b[pos];
        if phase == Phase::Word {
            if is_space_byte(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (byte_slice(line, pos, n), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == b'\\' {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = b[pos];
            }
            word.push(char::from(ch));
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == b'\\' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = b[pos];
        }
        word.push(char::from(ch));
        pos += 1;
    }
    (String::new(), words)
}

/// The parsed argument part of an instruction.
#[derive(Default)]
pub(super) struct Args {
    next: Vec<Node>,
    json: bool,
}

pub(super) fn arg(value: impl Into<String>) -> Node {
    Node { value: value.into(), ..Node::default() }
}

pub(super) fn args_of(values: impl IntoIterator<Item = String>) -> Args {
    Args { next: values.into_iter().map(arg).collect(), json: false }
}

pub(super) fn new_node_from_line(
    line: &str,
    escape: char,
    comments: Vec<String>,
    depth: usize,
) -> Result<Node, ParseErrorKind> {
    let (cmd, flags, rest) = split_command(line);
    let args = match cmd.as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(&rest)?,
        "arg" => args_of(parse_words(&rest, escape)),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(&rest)?,
        "env" => parse_name_val(&rest, "ENV", escape)?,
        "label" => parse_name_val(&rest, "LABEL", escape)?,
        "expose" | "from" => parse_strings_whitespace_delimited(&rest),
        "healthcheck" => parse_health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => parse_string(&rest),
        "onbuild" => {
            if rest.is_empty() {
                Args::default()
            } else if depth >= MAX_ONBUILD_NESTING {
                return Err(ParseErrorKind::OnbuildTooDeep { limit: MAX_ONBUILD_NESTING });
            } else {
                let inner = new_node_from_line(&rest, escape, Vec::new(), depth + 1)?;
                Args { next: vec![Node { children: vec![inner], ..Node::default() }], json: false }
            }
        }
        // Unknown instructions parse (with one empty argument); the typed layer reports them.
        _ => args_of([String::new()]),
    };
    Ok(Node {
        value: cmd,
        next: args.next,
        flags,
        json: args.json,
        original: line.to_string(),
        prev_comment: comments,
        ..Node::default()
    })
}

/// Words separated by unquoted whitespace, with quotes and escapes kept (ENV, LABEL, ARG).
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= n {
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if chars[pos].is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == n {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        let mut ch = chars[pos];
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                // An unquoted escape keeps itself and the next character, even a quote.
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV and LABEL: legacy `KEY value with spaces` or `k=v k2=v2`, as key/value/separator triples.
pub(super) fn parse_name_val(rest: &str, instruction: &'static str, escape: char) -> Result<Args, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else { return Ok(Args::default()) };
    if !first.contains('=') {
        let mut parts = split_blanks(rest, 2).into_iter();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            return Err(ParseErrorKind::MissingValue { instruction });
        };
        return Ok(args_of([key, value, String::new()]));
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals { word });
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(args_of(out))
}

pub(super) fn parse_strings_whitespace_delimited(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::default();
    }
    args_of(split_blanks(rest, -1))
}

pub(super) fn parse_string(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::default();
    }
    args_of([rest.to_string()])
}

/// `Ok(Some)` for a JSON array of strings, `Ok(None)` when the text is not JSON (shell form).
pub(super) fn parse_json(rest: &str) -> Result<Option<Args>, ParseErrorKind> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match json::parse_array(rest) {
        JsonArray::Invalid => Ok(None),
        JsonArray::Elements(items) => {
            let strings: Option<Vec<String>> = items.into_iter().collect();
            match strings {
                Some(s) => Ok(Some(Args { json: true, ..args_of(s) })),
                None => Err(ParseErrorKind::JsonNotStringArray),
            }
        }
    }
}

/// RUN, CMD, ENTRYPOINT, SHELL: a JSON array, else the whole text as one argument.
pub(super) fn parse_maybe_json(rest: &str) -> Result<Args, ParseErrorKind> {
    if rest.is_empty() {
        return Ok(Args::default());
    }
    Ok(parse_json(rest)?.unwrap_or_else(|| args_of([rest.to_string()])))
}

/// ADD, COPY, VOLUME: a JSON array, else split on blanks (no quote handling).
pub(super) fn parse_maybe_json_to_list(rest: &str) -> Result<Args, ParseErrorKind> {
    Ok(parse_json(rest)?.unwrap_or_else(|| parse_strings_whitespace_delimited(rest)))
}

/// HEALTHCHECK: the first word (CMD/NONE) verbatim, then the rest like RUN. Scanned byte-wise as BuildKit does.
pub(super) fn parse_health_config(rest: &str) -> Result<Args, ParseErrorKind> {
    let b = rest.as_bytes();
    let sep = b.iter().position(|c| is_space_byte(*c)).unwrap_or(b.len());
    let next = b[sep..].iter().position(|c| !is_space_byte(*c)).map_or(b.len(), |i| sep + i);
    if sep == 0 {
        return Ok(Args::default());
    }
    let cmd = parse_maybe_json(&byte_slice(rest, next, b.len()))?;
    let mut out = vec![arg(byte_slice(rest, 0, sep))];
    out.extend(cmd.next);
    Ok(Args { next: out, json: cmd.json })
}
