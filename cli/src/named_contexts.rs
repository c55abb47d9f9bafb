//! `--build-context NAME=VALUE` (buildx): more contexts a Dockerfile can name. VALUE is a local directory, a Git
//! or http(s) URL (fetched like the main context, see [`crate::source`]), or `docker-image://REF`.
//!
//! An image context replaces the image NAME wherever the Dockerfile uses it, in `FROM NAME` and `COPY
//! --from=NAME`: the builder resolves the name as REF, so the frontend needs to know nothing. A directory
//! context is read by `COPY --from=NAME` (an `Op::Context` of that name, keyed by the content it selects, like the
//! main context); `FROM NAME` of a directory is refused with a clear error (BuildKit turns the directory into a
//! root filesystem; rbuild does not yet). `oci-layout://` and `target:` contexts are refused.

use crate::source::{Limits, Source};
use anyhow::{Context as _, Result, bail};
use rbuild_image::registry::ImageRef;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parsed `--build-context` flags, holding fetched contexts until the build ends.
#[derive(Default)]
pub struct NamedContexts {
    dirs: BTreeMap<String, PathBuf>,
    images: BTreeMap<String, String>,
    _fetched: Vec<Source>,
}

impl NamedContexts {
    pub fn parse(specs: &[String], limits: Limits) -> Result<NamedContexts> {
        let mut out = NamedContexts::default();
        for spec in specs {
            let (name, value) = spec
                .split_once('=')
                .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                .with_context(|| format!("--build-context {spec:?}: expected NAME=VALUE"))?;
            if name == "context" {
                bail!("--build-context {spec:?}: the name \"context\" is the main build context");
            }
            if out.dirs.contains_key(name) || out.images.contains_key(name) {
                bail!("--build-context {spec:?}: {name} is given twice");
            }
            if let Some(reference) = value.strip_prefix("docker-image://") {
                let r = ImageRef::parse(reference).with_context(|| format!("--build-context {spec:?}"))?;
                out.images.insert(name.to_string(), r.to_string());
            } else if value.starts_with("oci-layout://") || value.starts_with("target:") || value == "-" {
                bail!(
                    "--build-context {spec:?}: only directories, Git and http(s) URLs and docker-image:// are supported"
                );
            } else {
                let source = crate::source::resolve(Path::new(value), None, &mut std::io::empty(), limits)
                    .with_context(|| format!("--build-context {name}"))?;
                if !source.context.is_dir() {
                    bail!("--build-context {spec:?}: {value} is not a directory");
                }
                let dir = std::fs::canonicalize(&source.context)
                    .with_context(|| format!("resolving --build-context {name}"))?;
                out.dirs.insert(name.to_string(), dir);
                out._fetched.push(source);
            }
        }
        Ok(out)
    }

    /// The directories by name (the builder reads them for `COPY --from=NAME`).
    pub fn dirs(&self) -> BTreeMap<String, PathBuf> {
        self.dirs.clone()
    }

    /// The image contexts: name → reference (the builder resolves the name as the reference).
    pub fn images(&self) -> BTreeMap<String, String> {
        self.images.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let limits = Limits { max_bytes: 1 << 20 };
        let parse = |s: &str| NamedContexts::parse(&[s.to_string()], limits);
        let n = parse("base=docker-image://alpine:3").expect("image");
        assert_eq!(n.images["base"], "docker.io/library/alpine:3");
        for bad in ["noequals", "=x", "context=.", "x=oci-layout:///tmp/l", "x=-", "x=/nonexistent/dir"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
