//! One CSV record, as the option strings of `RUN --mount=...`, `--output` and `--secret` are written.
//!
//! BuildKit and buildx read all three with Go's `encoding/csv` (buildx through `go-csvvalue`), so they share its
//! quoting: a field that starts with `"` runs to the closing quote, `""` inside it is a quote, and a comma inside
//! it does not split. A quote in the middle of an unquoted field is an error, as in Go (`name="a,b"` would otherwise
//! split where the user did not mean it to). Empty fields are kept: callers decide whether `a,,b` is an error.

/// Why a record could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("a quoted field is not closed")]
    Unclosed,
    #[error("unexpected {0:?} after a quoted field")]
    AfterQuote(char),
    #[error("a quote inside an unquoted field: put quotes around the whole field (\"key=a,b\")")]
    BareQuote,
}

/// Splits one CSV record into its fields, unquoting quoted ones.
pub fn split_record(s: &str) -> Result<Vec<String>, CsvError> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(CsvError::Unclosed),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(CsvError::AfterQuote(c)),
            }
        } else {
            let mut ended = true;
            for c in chars.by_ref() {
                match c {
                    ',' => {
                        ended = false;
                        break;
                    }
                    '"' => return Err(CsvError::BareQuote),
                    c => field.push(c),
                }
            }
            if ended {
                fields.push(field);
                return Ok(fields);
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_protect_commas_and_double_to_escape() {
        assert_eq!(split_record(r#"a,"b""c",d"#).unwrap(), ["a", "b\"c", "d"]);
        assert_eq!(
            split_record(r#"type=image,"name=a:1,b:2",push=true"#).unwrap(),
            ["type=image", "name=a:1,b:2", "push=true"]
        );
        assert_eq!(split_record("a,,b,").unwrap(), ["a", "", "b", ""]);
        assert_eq!(split_record("").unwrap(), [""]);
        assert_eq!(split_record(r#"name="a,b""#), Err(CsvError::BareQuote));
        assert_eq!(split_record(r#""open"#), Err(CsvError::Unclosed));
        assert_eq!(split_record(r#""a"b"#), Err(CsvError::AfterQuote('b')));
    }
}
