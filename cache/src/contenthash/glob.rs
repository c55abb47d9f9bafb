//! Wildcards: Go's `filepath.Match`, one path component at a time.

/// Whether `s` contains an unescaped `*`, `?` or `[`.
pub fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Matches one path component against one pattern component with Go's `filepath.Match` rules (one copy, shared
/// with `.dockerignore` validation).
pub use rbuild_types::glob::match_component;
