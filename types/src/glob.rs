//! Go's `filepath.Match`, for one path component: `*`, `?`, `[...]` classes with ranges and `^`, `\` escapes.
//!
//! The build context's `COPY` sources (in the cache's content hashing) match with it, and `.dockerignore` patterns
//! (in [`crate::patterns`]) are checked against its syntax before they are compiled to regular expressions, so
//! both agree on what a malformed pattern is. Errors are Go's `ErrBadPattern`, with the reason.

/// Matches one path component against one pattern component with Go's `filepath.Match` rules.
pub fn match_component(pattern: &str, name: &str) -> Result<bool, &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> Result<bool, &'static str> {
    let (mut pi, mut ni) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern index after it, name index it currently absorbs up to).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                c => {
                    if ni < n.len() {
                        let (ok, width) = match c {
                            '?' => (n[ni] != '/', 1),
                            '[' => class_matches(&p[pi..], n[ni])?,
                            '\\' => {
                                let Some(&lit) = p.get(pi + 1) else { return Err("trailing backslash") };
                                (lit == n[ni], 2)
                            }
                            lit => (lit == n[ni], 1),
                        };
                        if ok {
                            pi += width;
                            ni += 1;
                            continue;
                        }
                    } else if c == '[' {
                        // Go reports a malformed class even when the name ran out.
                        class_matches(&p[pi..], '\0')?;
                    }
                }
            }
        } else if ni == n.len() {
            return Ok(true);
        }
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => {
                // Validate the rest of the pattern so a bad pattern is an error, not a silent non-match.
                validate_pattern(&p[pi.min(p.len())..])?;
                return Ok(false);
            }
        }
    }
}

/// Checks `pattern` against Go's `filepath.Match` syntax (unclosed `[`, bad ranges, trailing `\`) without matching.
pub fn validate(pattern: &str) -> Result<(), &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    validate_pattern(&p)
}

fn validate_pattern(p: &[char]) -> Result<(), &'static str> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => i += class_matches(&p[i..], '\0')?.1,
            '\\' if i + 1 >= p.len() => return Err("trailing backslash"),
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Matches `c` against the class starting at `p[0] == '['`; returns whether it matched and the class's width.
fn class_matches(p: &[char], c: char) -> Result<(bool, usize), &'static str> {
    let mut i = 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let Some(&ch) = p.get(i) else { return Err("unterminated character class") };
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = read_class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            read_class_char(p, &mut i)?
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Ok((matched != negated && c != '/', i))
}

fn read_class_char(p: &[char], i: &mut usize) -> Result<char, &'static str> {
    match p.get(*i) {
        None => Err("unterminated character class"),
        Some('-') | Some(']') => Err("bad character range"),
        Some('\\') => {
            let c = *p.get(*i + 1).ok_or("trailing backslash")?;
            *i += 2;
            Ok(c)
        }
        Some(&c) => {
            *i += 1;
            Ok(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ranges_and_escapes() {
        for (p, n, want) in [
            ("a*", "abc", true),
            ("a?c", "abc", true),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[\\]]", "]", true),
            ("\\*", "*", true),
            ("*", "a/b", false),
        ] {
            assert_eq!(match_component(p, n), Ok(want), "{p:?} vs {n:?}");
        }
        for bad in ["[", "[]", "[a-", "[z-]", "a\\", "[^]"] {
            assert!(validate(bad).is_err(), "{bad:?}");
            assert!(match_component(bad, "zzz").is_err(), "{bad:?}");
        }
        assert_eq!(validate("dir/[a-z]*.go"), Ok(()));
    }
}
