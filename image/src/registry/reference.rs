//! Image references, normalised the way Docker does it.
//!
//! `oci-client` has a `Reference` parser, but it cannot name IPv6 registries (`[::1]:5000/x`), does not expand
//! Docker Hub's `library/` prefix, and reports every failure as "invalid reference format". Users type these names
//! on the command line and in `FROM` lines, so the parser here says which part is wrong. Only the normalised form is
//! handed to `oci-client`, which then never has to guess.

use super::RegistryError;
use rbuild_types::Digest;
use std::fmt;

/// Docker Hub's canonical registry name. `index.docker.io` is accepted as an alias.
pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the whole name (registry and repository).
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed image reference with Docker's normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host, with a port if one was given: `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// Repository path inside the registry: `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest, when the reference pins one.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<ImageRef, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference { input: s.to_string(), reason };
        if s.is_empty() {
            return Err(invalid("the reference is empty".into()));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((name_tag, digest)) => {
                let digest: Digest = digest
                    .parse()
                    .map_err(|_| invalid(format!("{digest:?} is not a sha256 digest (sha256:<64 lowercase hex>)")))?;
                (name_tag, Some(digest))
            }
            None => (s, None),
        };
        // A colon after the last slash separates the tag; colons before it belong to a registry port or IPv6 host.
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_tag[..colon], Some(name_tag[colon + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        if let Some(tag) = &tag {
            check_tag(tag).map_err(invalid)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if is_registry_component(first) => {
                check_registry(first).map_err(invalid)?;
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository).map_err(invalid)?;
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(invalid(format!("the name is longer than {NAME_MAX} characters")));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// The same repository, pinned to `digest` (and without a tag).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host part of the registry, without port or IPv6 brackets.
    pub fn registry_host(&self) -> &str {
        host_of(&self.registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// The host of `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

/// Docker's rule: the first path component names a registry when it looks like a host (has a dot or a port, is
/// `localhost`, or is an IPv6 literal). Uppercase letters can only be a host, since repositories are lowercase.
fn is_registry_component(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.starts_with('[')
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let bad = || format!("{registry:?} is not a valid registry host[:port]");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(bad());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// Path components: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name {repository:?} must be lowercase"));
    }
    for component in repository.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "{component:?} is not a valid repository path component \
                 (lowercase letters and digits, separated by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: exactly ".", "_", "__", or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = tag.len() <= TAG_MAX
        && tag.as_bytes().first().is_some_and(|&b| word(b))
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{tag:?} is not a valid tag (up to {TAG_MAX} letters, digits, '_', '.', '-', not starting with '.' or '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// input, registry, repository, tag, canonical form
    type Case = (&'static str, &'static str, &'static str, Option<&'static str>, &'static str);

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalisation_table() {
        let cases: &[Case] = &[
            ("busybox", "docker.io", "library/busybox", Some("latest"), "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io", "library/busybox", Some("1.36"), "docker.io/library/busybox:1.36"),
            ("team/app", "docker.io", "team/app", Some("latest"), "docker.io/team/app:latest"),
            ("docker.io/busybox", "docker.io", "library/busybox", Some("latest"), "docker.io/library/busybox:latest"),
            ("index.docker.io/x/y:v", "docker.io", "x/y", Some("v"), "docker.io/x/y:v"),
            ("localhost/app", "localhost", "app", Some("latest"), "localhost/app:latest"),
            ("localhost:5000/a/b", "localhost:5000", "a/b", Some("latest"), "localhost:5000/a/b:latest"),
            (
                "127.0.0.1:5000/base/busybox:latest",
                "127.0.0.1:5000",
                "base/busybox",
                Some("latest"),
                "127.0.0.1:5000/base/busybox:latest",
            ),
            ("[::1]:5000/x:t", "[::1]:5000", "x", Some("t"), "[::1]:5000/x:t"),
            (
                "ghcr.io/o/r/deep/path:v1.2_3-x",
                "ghcr.io",
                "o/r/deep/path",
                Some("v1.2_3-x"),
                "ghcr.io/o/r/deep/path:v1.2_3-x",
            ),
            ("Example.com/app", "Example.com", "app", Some("latest"), "Example.com/app:latest"),
            ("a__b/c-d--e/f.g", "docker.io", "a__b/c-d--e/f.g", Some("latest"), "docker.io/a__b/c-d--e/f.g:latest"),
            // A lone `host:port` is a repository with a tag, as in Docker.
            ("localhost:5000", "docker.io", "library/localhost", Some("5000"), "docker.io/library/localhost:5000"),
        ];
        for (input, registry, repository, tag, display) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, *registry, "{input}");
            assert_eq!(r.repository, *repository, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest, None, "{input}");
            assert_eq!(r.to_string(), *display, "{input}");
            // The canonical form parses back to the same reference.
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn digests_are_kept_and_suppress_the_default_tag() {
        let r = ImageRef::parse(&format!("host/x@{D}")).unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "host/x"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));

        let r = ImageRef::parse(&format!("reg.io:443/x:v1@{D}")).unwrap();
        assert_eq!(r.registry, "reg.io:443");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.to_string(), format!("reg.io:443/x:v1@{D}"));
        assert_eq!(r.with_digest(r.digest.clone().unwrap()).to_string(), format!("reg.io:443/x@{D}"));
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("reg.io/App", "lowercase"),
            ("busybox:", "valid tag"),
            ("busybox:-x", "valid tag"),
            ("busybox:a/b", "registry host"),
            ("busybox@sha256:abc", "sha256 digest"),
            ("busybox@md5:0123", "sha256 digest"),
            ("a//b", "path component"),
            ("reg.io/-a", "path component"),
            ("reg.io/a..b", "path component"),
            ("reg.io/a_-b", "path component"),
            ("reg.io:port/a", "registry host"),
            ("reg..io/a", "registry host"),
            ("[zz]:1/a", "registry host"),
            ("reg.io:1/", "path component"),
        ];
        for (input, needle) in cases {
            match ImageRef::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{input:?}: {msg}");
                    assert!(msg.contains(&format!("{input:?}")), "error must quote the input: {msg}");
                }
            }
        }
        let long = format!("reg.io/{}", "a".repeat(300));
        assert!(ImageRef::parse(&long).is_err());
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(ImageRef::parse(&long_tag).is_err());
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("localhost:5000"), "localhost");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
        assert_eq!(host_of("reg.io"), "reg.io");
    }
}
