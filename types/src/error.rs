//! Errors as people read them: one line with every cause.

/// An error with its causes, one after another: `pulling x: layer y: digest mismatch`. A cause whose text an
/// earlier part already contains (an error that repeats its source in its own message) is left out.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("layer sha256:ab")]
    struct Layer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("pulling x: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn error_chains_name_each_cause_once() {
        let e = Layer(std::io::Error::other("digest mismatch"));
        assert_eq!(error_chain(&e), "layer sha256:ab: digest mismatch");
        let e = Repeats(std::io::Error::other("digest mismatch"));
        assert_eq!(error_chain(&e), "pulling x: digest mismatch");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the context: {0}")]
    struct Quoting(#[source] crate::IoError);

    #[test]
    fn each_cause_is_named_once() {
        let io = crate::IoError::new("open", "/ctx/a", std::io::Error::other("no such file"));
        assert_eq!(error_chain(&io), "cannot open /ctx/a: no such file");
        let quoting = Quoting(crate::IoError::new("open", "/ctx/a", std::io::Error::other("gone")));
        assert_eq!(error_chain(&quoting), "reading the context: cannot open /ctx/a: gone");
    }
}
