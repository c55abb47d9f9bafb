//! `.dockerignore` reading and matching with Docker's semantics (moby/patternmatcher), not gitignore's.
//!
//! The differences matter for which files reach a build: patterns are anchored at the context root (`foo` does not
//! match `a/foo`), `**` spans directories, a pattern that matches a directory excludes everything below it, a later
//! `!pattern` re-includes, and patterns are tried in order with the last match winning. Each pattern is compiled the
//! way patternmatcher does (plain string comparison where possible, else a regex built from the glob), so its quirks
//! (`[...]` handed to the regex engine, a `\` escaping the next character) carry over. Syntax errors found by Go's
//! `filepath.Match` rules are reported when the matcher is built; errors the regex engine finds surface when the
//! pattern is first evaluated, as upstream.

use regex::Regex;

/// Why a set of patterns cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// Go's `filepath.ErrBadPattern`, with the offending pattern.
    #[error("syntax error in pattern {pattern:?}")]
    BadPattern { pattern: String },
    #[error("wrong number of values in parent match info: {got}, expected {expected}")]
    WrongParentInfo { got: usize, expected: usize },
}

/// Reads `.dockerignore` text into patterns (patternmatcher's `ignorefile.ReadAll`): a BOM is dropped, lines
/// starting with `#` are comments, each pattern is trimmed and path-cleaned, a leading `/` is removed (patterns are
/// relative to the context root either way), and `!` re-inclusions keep their `!`.
pub fn read_ignore_file(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert { format!("!{cleaned}") } else { cleaned });
    }
    out
}

/// Go's `path/filepath.Clean` for `/`-separated paths.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            e => out.push(e),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Dir`.
fn dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_string(),
    }
}

/// How a pattern is compared with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MatchKind {
    /// The path equals the pattern.
    Exact,
    /// `dir/**`: the path starts with the text before `**`.
    Prefix,
    /// `**/name`: the path ends with the text after `**`.
    Suffix,
    /// Anything else: a regex built from the glob.
    Regex,
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex, String),
    /// The generated regex did not compile; matching this pattern reports a bad pattern.
    Broken,
}

/// One cleaned pattern of a [`PatternMatcher`].
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    dirs: usize,
    exclusion: bool,
    compiled: Compiled,
}

impl Pattern {
    /// The pattern as matched (cleaned, without `!`).
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// A `!` re-inclusion.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// How the pattern is compared; `None` if its regex failed to compile.
    pub fn match_kind(&self) -> Option<MatchKind> {
        match self.compiled {
            Compiled::Exact => Some(MatchKind::Exact),
            Compiled::Prefix => Some(MatchKind::Prefix),
            Compiled::Suffix => Some(MatchKind::Suffix),
            Compiled::Regex(..) => Some(MatchKind::Regex),
            Compiled::Broken => None,
        }
    }

    /// The generated regex, for [`MatchKind::Regex`] patterns.
    pub fn regex_source(&self) -> Option<&str> {
        match &self.compiled {
            Compiled::Regex(_, src) => Some(src),
            _ => None,
        }
    }

    fn matches(&self, path: &str) -> Result<bool, PatternError> {
        Ok(match &self.compiled {
            Compiled::Exact => path == self.cleaned,
            Compiled::Prefix => path.starts_with(self.cleaned.strip_suffix("**").unwrap_or(&self.cleaned)),
            Compiled::Suffix => {
                let suffix = self.cleaned.get(2..).unwrap_or_default();
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Compiled::Regex(re, _) => re.is_match(path),
            Compiled::Broken => return Err(PatternError::BadPattern { pattern: self.cleaned.clone() }),
        })
    }
}

/// Regex metacharacters that mean nothing special in a glob and must be escaped.
fn should_escape(c: char) -> bool {
    matches!(c, '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$')
}

/// patternmatcher's `Pattern.compile` for the `/` separator.
fn compile(pattern: &str) -> Compiled {
    // Go's text/scanner skips a leading byte-order mark.
    let chars: Vec<char> = pattern.strip_prefix('\u{feff}').unwrap_or(pattern).chars().collect();
    let mut re = String::from("^");
    let mut kind = MatchKind::Exact;
    let mut i = 0;
    let mut iteration = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if ch == '*' {
            if chars.get(i) == Some(&'*') {
                i += 1;
                // `**/` is treated as `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    // A trailing `**` matches everything below.
                    if kind == MatchKind::Exact {
                        kind = MatchKind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchKind::Regex;
                    }
                } else {
                    // Any number of directories, including none.
                    re.push_str("(.*/)?");
                    kind = MatchKind::Regex;
                }
                if iteration == 0 {
                    kind = MatchKind::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                kind = MatchKind::Regex;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            kind = MatchKind::Regex;
        } else if should_escape(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            // Escapes the next character; a trailing backslash stays (escaped).
            match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    re.push('\\');
                    re.push(next);
                    kind = MatchKind::Regex;
                }
                None => re.push('\\'),
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            kind = MatchKind::Regex;
        } else {
            re.push(ch);
        }
        iteration += 1;
    }
    match kind {
        MatchKind::Exact => Compiled::Exact,
        MatchKind::Prefix => Compiled::Prefix,
        MatchKind::Suffix => Compiled::Suffix,
        MatchKind::Regex => {
            re.push('$');
            match Regex::new(&re) {
                Ok(r) => Compiled::Regex(r, re),
                Err(_) => Compiled::Broken,
            }
        }
    }
}

/// Syntax check with Go's `filepath.Match` rules (unclosed `[`, bad ranges, trailing `\`).
fn valid_glob(pattern: &str) -> bool {
    crate::glob::validate(pattern).is_ok()
}

/// Per-pattern results for a directory, passed down when walking a tree (see
/// [`PatternMatcher::matches_using_parent_results`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of ignore patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns (as returned by [`read_ignore_file`], or any list); blank ones are skipped.
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut pm = PatternMatcher::default();
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(PatternError::IllegalExclusion);
                }
                p = rest.to_string();
                exclusion = true;
                pm.exclusions = true;
            }
            if !valid_glob(&p) {
                return Err(PatternError::BadPattern { pattern: p });
            }
            let compiled = compile(&p);
            pm.patterns.push(Pattern { dirs: p.split('/').count(), cleaned: p, exclusion, compiled });
        }
        Ok(pm)
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` re-inclusion (then excluded directories must still be walked).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (relative, `/`-separated) is ignored: the last pattern that matches it or one of its parent
    /// directories decides.
    pub fn matches_or_parent_matches(&self, path: &str) -> Result<bool, PatternError> {
        let parent = dir(path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an already-matched path, nor an exclusion an unmatched one.
            if pattern.exclusion != matched {
                continue;
            }
            let mut m = pattern.matches(path)?;
            if !m && parent != "." {
                for i in 0..parent_dirs.len() {
                    if pattern.matches(&parent_dirs[..=i].join("/")).unwrap_or(false) {
                        m = true;
                        break;
                    }
                }
            }
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Whether `path` matches without looking at its parents.
    pub fn matches_exact(&self, path: &str) -> Result<bool, PatternError> {
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches(path)? {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// The tree-walk form of [`PatternMatcher::matches_or_parent_matches`]: `parent` is the [`MatchInfo`] returned
    /// for the containing directory (default for the root's entries), and the returned one is for `path`'s children.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), PatternError> {
        let pm = &parent.parent_matched;
        if !pm.is_empty() && pm.len() != self.patterns.len() {
            return Err(PatternError::WrongParentInfo { got: pm.len(), expected: self.patterns.len() });
        }
        let mut matched = false;
        let mut info = MatchInfo { parent_matched: vec![false; self.patterns.len()] };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = pm.get(i).copied().unwrap_or(false);
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(path)?;
                if !m && pm.is_empty() {
                    let parent_path = dir(path);
                    if parent_path != "." {
                        let dirs: Vec<&str> = parent_path.split('/').collect();
                        m = (0..dirs.len()).any(|j| pattern.matches(&dirs[..=j].join("/")).unwrap_or(false));
                    }
                }
            }
            info.parent_matched[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, info))
    }

    /// patternmatcher's deprecated `Matches`: only the parent prefix with as many components as the pattern is
    /// tried. Kept because older Docker clients filtered contexts this way.
    pub fn matches_single_parent(&self, path: &str) -> Result<bool, PatternError> {
        let parent = dir(path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut m = pattern.matches(path)?;
            if !m && parent != "." && pattern.dirs <= parent_dirs.len() {
                m = pattern.matches(&parent_dirs[..pattern.dirs].join("/")).unwrap_or(false);
            }
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }
}

/// patternmatcher's deprecated package-level `Matches(file, patterns)`: the path is cleaned first and `.` (the
/// whole context) never matches.
pub fn matches(path: &str, patterns: &[String]) -> Result<bool, PatternError> {
    let pm = PatternMatcher::new(patterns)?;
    let path = clean(path);
    if path == "." {
        return Ok(false);
    }
    pm.matches_single_parent(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(p: &[&str]) -> PatternMatcher {
        PatternMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn clean_matches_go() {
        for (i, o) in [
            ("", "."),
            ("a//b/./c/", "a/b/c"),
            ("/../a", "/a"),
            ("../../a/..", "../.."),
            ("a/b/../../..", ".."),
            ("/", "/"),
            ("./", "."),
            ("!/x/", "!/x"),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
        assert_eq!(dir("a/b/"), "a/b");
        assert_eq!(dir("file"), ".");
        assert_eq!(dir("/"), "/");
    }

    #[test]
    fn anchored_not_gitignore() {
        let m = pm(&["foo", "*.log", "!keep.log"]);
        assert!(m.matches_or_parent_matches("foo/bar").unwrap());
        assert!(!m.matches_or_parent_matches("a/foo").unwrap());
        assert!(m.matches_or_parent_matches("x.log").unwrap());
        assert!(!m.matches_or_parent_matches("keep.log").unwrap());
        assert!(!m.matches_or_parent_matches("d/x.log").unwrap());
        assert!(m.has_exclusions());
    }

    #[test]
    fn parent_results_agree_with_full_check() {
        let m = pm(&["a", "!a/keep", "**/*.tmp"]);
        let (pa, info) = m.matches_using_parent_results("a", &MatchInfo::default()).unwrap();
        assert!(pa);
        let (keep, _) = m.matches_using_parent_results("a/keep", &info).unwrap();
        assert_eq!(keep, m.matches_or_parent_matches("a/keep").unwrap());
        let (other, _) = m.matches_using_parent_results("a/other", &info).unwrap();
        assert!(other);
        assert!(m.matches_using_parent_results("x", &MatchInfo { parent_matched: vec![true] }).is_err());
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(PatternMatcher::new(&["!".to_string()]).unwrap_err(), PatternError::IllegalExclusion);
        for bad in ["[", "a[", "[^bc", "[]a]", "[x-]", "[a-b-c]", "\\"] {
            assert!(PatternMatcher::new(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(PatternMatcher::new(&["[\\]a]".to_string(), "a\\*b".to_string()]).is_ok());
    }

    #[test]
    fn read_all() {
        let got = read_ignore_file("\u{feff}# c\n/a/\r\n ! /b/../c \n!\n\n #x\n");
        assert_eq!(got, vec!["a", "!c", "!", "#x"]);
    }
}
