//! Lexical path cleaning for `/`-separated paths inside a root (a build context, an image's filesystem).
//!
//! One walk serves every caller: `.` and empty components vanish and `..` pops one. What differs is only what a
//! `..` at the top means, and the caller decides from [`Cleaned::climbed`]: inside a container `/../x` is `/x`
//! (clamped, as `WORKDIR` and mount targets resolve), while a `COPY` source that climbs out of its context is an
//! error. Go's `filepath.Clean` for relative `.dockerignore` patterns keeps leading `..` and is
//! [`crate::patterns::clean`].

/// A path's components after cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned<'a> {
    pub parts: Vec<&'a str>,
    /// True if some `..` tried to climb above the top (and was dropped).
    pub climbed: bool,
}

/// Cleans `path` lexically, as if it were relative to a root (a leading `/` means the root).
pub fn clean_in_root(path: &str) -> Cleaned<'_> {
    let mut parts: Vec<&str> = Vec::new();
    let mut climbed = false;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => climbed |= parts.pop().is_none(),
            p => parts.push(p),
        }
    }
    Cleaned { parts, climbed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_vanish_and_dotdot_pops_or_climbs() {
        assert_eq!(clean_in_root("/a//./b/../c/"), Cleaned { parts: vec!["a", "c"], climbed: false });
        assert_eq!(clean_in_root("../x"), Cleaned { parts: vec!["x"], climbed: true });
        assert_eq!(clean_in_root("a/../../b"), Cleaned { parts: vec!["b"], climbed: true });
        assert_eq!(clean_in_root(""), Cleaned { parts: vec![], climbed: false });
    }
}
