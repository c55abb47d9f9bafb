//! Heredocs: finding `<<EOF` words on an instruction line and chomping their bodies.

use super::*;
use crate::shell::{Lexer, NoEnv};

/// Finds the heredoc words of an instruction line (`<<EOF`, `<<-'EOF'`, `3<<EOF`, `<< EOF`).
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, HeredocError> {
    let lexer = Lexer::new('\\').raw_quotes(true).raw_escapes(true).skip_unset_env(true);
    let words = lexer.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(h) = parse_heredoc(&word)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

/// Reads one word as a heredoc opener (BuildKit `ParseHeredoc`); `Ok(None)` if it is not one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, HeredocError> {
    // ^(\d*)<<(-?)\s*([^<]*)$
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else { return Ok(None) };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(is_re_space);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let file_descriptor = if digits == 0 { 0 } else { word[..digits].parse::<u64>().unwrap_or(u64::MAX) };

    // Lex the terminator with and without quote removal: if quotes disappear, part of it was quoted, and a
    // quoted terminator turns off expansion of the body. Escaped quotes survive both passes and cancel out.
    let lexer = Lexer::new('\\').skip_unset_env(true);
    let words = lexer.process_words(rest, &NoEnv)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = lexer.raw_quotes(true).process_words(rest, &NoEnv)?;
    if raw.len() != words.len() {
        return Err(HeredocError::Inconsistent { rest: rest.to_string() });
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words.into_iter().next().unwrap_or_default(),
        content: String::new(),
        expand,
        chomp,
        file_descriptor,
    }))
}

/// Removes the leading tabs of every line of a `<<-` heredoc body.
pub fn chomp_heredoc_content(src: &str) -> String {
    src.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect()
}
