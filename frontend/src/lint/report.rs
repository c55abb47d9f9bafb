//! Build-check findings as text, in BuildKit's layout: the rule, its one-line explanation, the message, and the
//! Dockerfile lines around the finding marked `>>>`.

use super::Check;

/// BuildKit's `errdefs.Source.Print`: the lines around `start..=end`, those lines marked `>>>`.
pub fn source_lines(file: &str, lines: &[&str], start: usize, end: usize) -> String {
    if start < 1 || start > lines.len() {
        return String::new();
    }
    let (mut first, mut last) = (start, end.clamp(start, lines.len()));
    let pad = if last == first { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if first > 1 {
            first -= 1;
            p += 1;
        }
        if last != lines.len() {
            last += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{file}:{start}\n--------------------\n");
    for i in first..=last {
        let marker = if (start..=end.max(start)).contains(&i) { ">>>" } else { "   " };
        out.push_str(&format!(" {i:>3} | {marker} {}\n", lines[i - 1]));
    }
    out.push_str("--------------------\n");
    out
}

/// Findings sorted as buildx sorts them (by line; those without a line first), keeping their order otherwise.
pub fn sorted(checks: &[Check]) -> Vec<&Check> {
    let mut v: Vec<&Check> = checks.iter().collect();
    v.sort_by_key(|c| c.location.as_ref().map_or(0, |l| l.start_line));
    v
}

/// One finding, as text: the rule and its explanation, the message, and the Dockerfile lines.
pub fn check_text(file: &str, lines: &[&str], c: &Check) -> String {
    let mut out = format!("WARNING: {} - {}\n{}\n", c.rule.name, c.rule.description, c.message);
    if let Some(at) = &c.location {
        out.push_str(&source_lines(file, lines, at.start_line, at.end_line));
    }
    out
}

/// The findings of a normal build as one block of text: a count, then each with its lines (empty when there are
/// none).
pub fn findings_text(file: &str, text: &str, checks: &[Check]) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let n = checks.len();
    let mut out = format!("{n} {} found:\n", if n == 1 { "warning" } else { "warnings" });
    let lines: Vec<&str> = text.split('\n').collect();
    for c in sorted(checks) {
        out.push('\n');
        out.push_str(&check_text(file, &lines, c));
    }
    out
}
