//! Error rendering: what a user sees when something is wrong.
//!
//! Dockerfile errors show `file:line:col`, the offending lines with a marker, and a hint; other errors show their
//! whole cause chain, since the outermost message alone ("pushing ...") rarely says what to fix.

use rbuild_frontend::ConvertError;
use rbuild_frontend::parser::ParseError;

/// Any error, with its causes.
pub fn error(e: &anyhow::Error) {
    let mut shown = vec![e.to_string()];
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        // Some errors already quote their cause in their own message; say each thing once.
        let text = cause.to_string();
        if !shown.iter().any(|s| s.contains(&text)) {
            eprintln!("  caused by: {text}");
            shown.push(text);
        }
    }
}

/// The lines `start..=end` (1-based) of `text`, numbered, with the first marked from its first non-blank column.
pub fn snippet(file: &str, text: &str, start: usize, end: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = start.clamp(1, lines.len().max(1));
    let end = end.clamp(start, lines.len().max(1));
    let first = lines.get(start - 1).copied().unwrap_or("");
    let col = first.len() - first.trim_start().len() + 1;
    let width = end.to_string().len();
    let mut out = format!("{:width$}--> {file}:{start}:{col}\n{:width$} |\n", "", "");
    for n in start..=end.min(start + 7) {
        out.push_str(&format!("{n:>width$} | {}\n", lines.get(n - 1).copied().unwrap_or("")));
        if n == start {
            let len = first.trim().chars().count().max(1);
            out.push_str(&format!("{:width$} | {}{}\n", "", " ".repeat(col - 1), "^".repeat(len.min(80))));
        }
    }
    if end > start + 7 {
        out.push_str(&format!("{:width$} | ...\n", ""));
    }
    out
}

pub fn parse_error(file: &str, text: &str, e: &ParseError) {
    eprintln!("error: {e}");
    eprint!("{}", snippet(file, text, e.line(), e.line()));
}

pub fn convert_error(file: &str, text: &str, e: &ConvertError) {
    eprintln!("error: {}", e.message);
    if let Some(loc) = &e.location {
        eprint!("{}", snippet(file, text, loc.start_line, loc.end_line));
    } else {
        eprintln!("  --> {file}");
    }
    if let Some(h) = &e.hint {
        eprintln!("  = hint: {h}");
    }
}

/// A step that failed while the build ran: its last output lines, the error with its causes, and the step's
/// lines in the Dockerfile.
pub fn step_failure(f: &rbuild_builder::StepFailure) {
    eprintln!("------");
    eprintln!(" > {}:", f.name);
    for line in f.tail.iter().rev().take(10).rev() {
        eprintln!("   {line}");
    }
    eprintln!("------");
    eprintln!("error: failed to solve: {}", rbuild_builder::error_chain(f.error.as_ref()));
    if let Some(loc) = &f.location {
        eprint!("{}", snippet(&f.dockerfile.name, &f.dockerfile.text, loc.start_line, loc.end_line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_marks_the_line() {
        let s = snippet("Dockerfile", "FROM scratch\n  RUNN x\n", 2, 2);
        assert_eq!(s, " --> Dockerfile:2:3\n  |\n2 |   RUNN x\n  |   ^^^^^^\n");
    }
}
