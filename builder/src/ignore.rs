//! The `.dockerignore` of a build.

use crate::request::{self, MAX_INPUT_FILE};
use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// `.dockerignore` patterns: `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's. A file in
/// the context is context content, read beneath it (a `.dockerignore` linking to `/etc/shadow` reads the context's
/// own `etc/shadow`, if any); one outside it was named by whoever ran the build and is read as named.
pub(crate) fn ignore_patterns(context: &Path, dockerfile: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let root = rbuild_cache::confined::Root::open(context)
        .with_context(|| format!("opening the build context {}", context.display()))?;
    let beside = dockerfile.map(|d| PathBuf::from(format!("{}.dockerignore", d.display())));
    for candidate in beside.into_iter().chain([context.join(".dockerignore")]) {
        let read = match candidate.strip_prefix(context) {
            Ok(rel) => root.read_in_root(rel).and_then(|bytes| {
                if bytes.len() as u64 > MAX_INPUT_FILE {
                    Err(std::io::Error::other(format!(
                        ".dockerignore is larger than the limit of {} MiB",
                        MAX_INPUT_FILE >> 20
                    )))
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            }),
            Err(_) => request::read_limited(&candidate, ".dockerignore"),
        };
        match read {
            Ok(text) => return Ok(rbuild_types::patterns::read_ignore_file(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", candidate.display())),
        }
    }
    Ok(Vec::new())
}
