//! Expansion of `$v`, `${v}` and the `${v:-w}` family of modifiers, and the patterns of `${v#p}`, `${v%p}` and `${v/p/r}`.

use super::*;
use regex::{NoExpand, Regex};

impl ShellWord<'_> {
    pub(super) fn process_dollar(&mut self) -> Result<String, ShellErrorKind> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err(ShellErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut chs = rune_str(first);
        let mut null_is_unset = false;
        let modifier = match first {
            Some('}') => {
                return Ok(match self.get_env(&name) {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            Some(':') => {
                null_is_unset = true;
                let m = self.next();
                chs.push_str(&rune_str(m));
                m
            }
            Some('+' | '-' | '?' | '#' | '%') => first,
            Some('/') => return self.process_replace(name),
            _ => return Err(ShellErrorKind::UnsupportedModifier { modifier: chs }),
        };
        let raw = matches!(modifier, Some('#' | '%'));
        if null_is_unset && raw {
            return Err(ShellErrorKind::UnsupportedModifier { modifier: chs });
        }
        let word = self.stop_on_or('}', raw, ShellErrorKind::MissingBrace)?;
        let found = self.get_env(&name);
        if found.is_none() && self.lex.skip_unset_env {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let set = found.is_some();
        let value = found.unwrap_or_default();
        // With `:` an empty value counts as unset.
        let unset = !set || (null_is_unset && value.is_empty());
        match modifier {
            Some('-') => Ok(if unset { word } else { value }),
            Some('+') => Ok(if unset { String::new() } else { word }),
            Some('?') if !set => Err(ShellErrorKind::Required {
                name,
                message: if word.is_empty() { "is not allowed to be unset".to_string() } else { word },
            }),
            Some('?') if unset => Err(ShellErrorKind::Required {
                name,
                message: if word.is_empty() { "is not allowed to be empty".to_string() } else { word },
            }),
            Some('?') => Ok(value),
            Some(c @ ('%' | '#')) => {
                // `%`/`#` remove the shortest match, `%%`/`##` the longest.
                let (pattern, greedy) = match word.strip_prefix(c) {
                    Some(rest) => (rest.to_string(), true),
                    None => (word, false),
                };
                if c == '%' { trim_suffix(&pattern, &value, greedy) } else { trim_prefix(&pattern, &value, greedy) }
            }
            _ => Err(ShellErrorKind::UnsupportedModifier { modifier: chs }),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn process_replace(&mut self, name: String) -> Result<String, ShellErrorKind> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let pattern = self.stop_on_or('/', true, ShellErrorKind::MissingSlash)?;
        let replacement = self.stop_on_or('}', true, ShellErrorKind::MissingBrace)?;
        let value = match self.get_env(&name) {
            Some(v) => v,
            None if self.lex.skip_unset_env => return Ok(format!("${{{name}/{pattern}/{replacement}}}")),
            None => String::new(),
        };
        let re = shell_pattern_regex(&pattern, true, false)?;
        // Every match inserts the replacement, and with `//` each `$group` in it may insert up to the whole
        // value: bound the result before building it.
        let (matches, per_match) = if all {
            let refs = replacement.matches('$').count();
            (re.find_iter(&value).count(), replacement.len().saturating_add(refs.saturating_mul(value.len())))
        } else {
            (usize::from(re.is_match(&value)), replacement.len())
        };
        self.check_len(value.len().saturating_add(matches.saturating_mul(per_match)))?;
        if all {
            Ok(re.replace_all(&value, replacement.as_str()).into_owned())
        } else {
            Ok(re.replace(&value, NoExpand(&replacement)).into_owned())
        }
    }
}

/// Converts a `${v#pattern}`-style shell pattern (`*`, `?`, `\` escapes; no bracket expressions) to a regex.
fn shell_pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, ShellErrorKind> {
    let invalid = |reason: String| ShellErrorKind::InvalidPattern { pattern: pattern.to_string(), reason };
    let chars = scanner_chars(pattern);
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut i = 0;
    while i < chars.len() {
        let tok = chars[i];
        i += 1;
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `\}` and `\/` only protect the delimiters of `${}`; the backslash is not part of the pattern.
                if matches!(chars.get(i), Some('}' | '/')) {
                    continue;
                }
                let next = chars.get(i).copied();
                i += 1;
                match next {
                    Some(c @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(c);
                    }
                    other => return Err(invalid(format!("invalid escape '\\{}'", rune_str(other)))),
                }
            }
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0u8; 4]))),
        }
    }
    Regex::new(&out).map_err(|e| invalid(e.to_string()))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellErrorKind> {
    let re = shell_pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern but keeps each `\x` escape pair in order (`a\*c` becomes `c\*a`).
pub(super) fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let out_idx = last - i;
        if chars[i] == '\\' && i != last && out_idx >= 1 {
            out[out_idx - 1] = '\\';
            out[out_idx] = chars[i + 1];
            i += 2;
        } else {
            out[out_idx] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellErrorKind> {
    // Regexes find the leftmost match, so the shortest *suffix* is found by reversing both sides.
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}
