//! The exec-form test: is an argument string a JSON array of strings, exactly as Go's `json.Unmarshal` sees it?
//!
//! BuildKit decides between exec form and shell form by unmarshalling the text into `[]interface{}`. Any syntax
//! error (single quotes, a missing bracket, trailing text) silently means "shell form", while a well-formed array
//! holding a non-string is a hard error. A general-purpose JSON crate differs from Go at exactly these edges (lone
//! surrogate escapes become U+FFFD in Go, a number too large for a float64 is a decode error), so this small
//! reader follows Go's rules. It is iterative, so deeply nested input cannot exhaust the stack.

/// Go's limit on nesting before the scanner reports an error.
const MAX_DEPTH: usize = 10_000;

/// The outcome of reading `[...]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A valid array; `None` marks an element that is not a string.
    Elements(Vec<Option<String>>),
    /// Not valid JSON for Go (or not fully consumed): the caller falls back to shell form.
    Invalid,
}

struct Reader<'a> {
    b: &'a [u8],
    s: &'a str,
    pos: usize,
}

type R<T> = Result<T, ()>;

impl Reader<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let h = self.s.get(self.pos..self.pos + 4).ok_or(())?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(());
        }
        self.pos += 4;
        u32::from_str_radix(h, 16).map_err(|_| ())
    }

    fn string(&mut self) -> R<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(self.s.get(start..self.pos).ok_or(())?);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let e = self.peek().ok_or(())?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let u = self.hex4()?;
                            out.push(self.surrogate(u));
                        }
                        _ => return Err(()),
                    }
                }
                // Control characters and end of input are syntax errors.
                _ => return Err(()),
            }
        }
    }

    /// Combines a `\uD8xx\uDCxx` pair; a lone surrogate decodes to U+FFFD as in Go.
    fn surrogate(&mut self, u: u32) -> char {
        if (0xD800..0xDC00).contains(&u) && self.s.get(self.pos..self.pos + 2) == Some("\\u") {
            let save = self.pos;
            self.pos += 2;
            if let Ok(lo) = self.hex4()
                && (0xDC00..0xE000).contains(&lo)
            {
                let c = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                return char::from_u32(c).unwrap_or('\u{fffd}');
            }
            self.pos = save;
        }
        char::from_u32(u).unwrap_or('\u{fffd}')
    }

    /// A JSON number; `Err` also for a value a float64 cannot hold (Go reports that as a decode error).
    fn number(&mut self) -> R<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(());
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(());
            }
            self.digits();
        }
        let text = self.s.get(start..self.pos).ok_or(())?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(()),
            _ => Err(()),
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &str) -> R<()> {
        if self.s.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    fn scalar(&mut self) -> R<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            _ => self.number(),
        }
    }

    fn object_key(&mut self) -> R<()> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':')
    }

    /// Skips one value of any shape without recursion.
    fn skip_value(&mut self, depth: usize) -> R<()> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b'[') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        stack.push(b']');
                        if depth + stack.len() > MAX_DEPTH {
                            return Err(());
                        }
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        stack.push(b'}');
                        if depth + stack.len() > MAX_DEPTH {
                            return Err(());
                        }
                        self.object_key()?;
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // A value is complete: close containers until another value is due.
            loop {
                let Some(&close) = stack.last() else { return Ok(()) };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.object_key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ => return Err(()),
                }
            }
        }
    }

    fn array(&mut self) -> R<Vec<Option<String>>> {
        self.ws();
        self.expect(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            if self.peek() == Some(b'"') {
                out.push(Some(self.string()?));
            } else {
                self.skip_value(1)?;
                out.push(None);
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(()),
            }
        }
    }
}

/// Reads `s` as a JSON array the way Go's `json.Unmarshal(s, &[]interface{}{})` does.
pub(crate) fn parse_array(s: &str) -> JsonArray {
    let mut r = Reader { b: s.as_bytes(), s, pos: 0 };
    match r.array() {
        Ok(v) => {
            r.ws();
            if r.pos == s.len() { JsonArray::Elements(v) } else { JsonArray::Invalid }
        }
        Err(()) => JsonArray::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> JsonArray {
        JsonArray::Elements(v.iter().map(|s| Some(s.to_string())).collect())
    }

    #[test]
    fn accepts_what_go_accepts() {
        assert_eq!(parse_array("[]"), JsonArray::Elements(vec![]));
        assert_eq!(parse_array(" [ \"a\" ,\t\"b\" ]\n"), strings(&["a", "b"]));
        assert_eq!(parse_array(r#"["\u00e9\/\ud83d\ude00"]"#), strings(&["é/😀"]));
        assert_eq!(parse_array(r#"["\ud800x"]"#), strings(&["\u{fffd}x"]));
        assert_eq!(
            parse_array(r#"["a", 1, {"k": [null, true]}, []]"#),
            JsonArray::Elements(vec![Some("a".into()), None, None, None])
        );
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "['a']",
            "[\"a\"",
            "[\"a]",
            "[\"a\"] x",
            "[\"a\",]",
            "[01]",
            "[1e400]",
            "[\"\t\"]",
            "[\"\\x\"]",
            "[{\"a\" 1}]",
            "[tru]",
            "[1.]",
        ] {
            assert_eq!(parse_array(bad), JsonArray::Invalid, "{bad}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("[{}{}]", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(parse_array(&deep), JsonArray::Invalid);
        let ok = format!("[{}{}]", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse_array(&ok), JsonArray::Elements(vec![None]));
    }
}
