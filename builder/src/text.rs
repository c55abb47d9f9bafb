//! Text for people: error chains and sizes.

/// An error with its causes, one after another: `pulling x: layer y: digest mismatch`.
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

/// Sizes as `docker` prints them: decimal units, one decimal.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{n}B") } else { format!("{v:.1}{}", units[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_name_each_cause_once() {
        let inner = std::io::Error::other("digest mismatch");
        let outer = anyhow::Error::new(inner).context("layer sha256:ab");
        let e: &(dyn std::error::Error + 'static) = outer.as_ref();
        assert_eq!(error_chain(e), "layer sha256:ab: digest mismatch");
    }
}
