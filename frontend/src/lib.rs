//! The Dockerfile frontend: text in, typed stages and a build graph out.
//!
//! Everything here is pure: no filesystem, no network. The build context's file list, `.dockerignore` text and
//! base-image configs come in through arguments and traits, so every test of this crate runs offline and the
//! conformance suites can compare it byte for byte against BuildKit's parser.

pub mod convert;
pub mod history;
pub mod instructions;
pub mod lint;
pub mod mounts;
pub mod parser;
pub mod platform;
pub mod shell;

pub use convert::{
    BuildPlan, ConvertError, ConvertOptions, ErrorKind, HistoryStep, ImageResolver, NoCache, ResolvedImage, convert,
    image_references,
};

/// The longest word (in characters) worth a "did you mean": edit distance is quadratic, and a typo is short.
const MAX_SUGGEST_LEN: usize = 256;

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo ("did you mean").
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let len = word.chars().count();
    if len > MAX_SUGGEST_LEN {
        return None;
    }
    let word = word.to_lowercase();
    candidates
        .iter()
        // The distance is at least the difference in length: skip what cannot be close without computing it.
        .filter(|c| {
            let n = c.chars().count();
            n <= MAX_SUGGEST_LEN && n.abs_diff(len) <= 2.max(n / 3)
        })
        .map(|c| (edit_distance(&word, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_for_typos_and_cheap_for_huge_words() {
        assert_eq!(suggest("RUNN", &["run", "copy"]), Some("run"));
        assert_eq!(suggest("buidler", &["builder", "final"]), Some("builder"));
        let huge = "b".repeat(1 << 20);
        let long_names: Vec<String> = (0..100).map(|i| format!("{}{i}", "b".repeat(60_000))).collect();
        let names: Vec<&str> = long_names.iter().map(String::as_str).collect();
        let start = std::time::Instant::now();
        assert_eq!(suggest(&huge, &names), None);
        assert_eq!(suggest("b", &names), None);
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
