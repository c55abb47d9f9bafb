//! Where the build context and the Dockerfile come from, in `docker buildx build`'s forms: a directory, `-` (a tar,
//! plain or gzip, or a Dockerfile alone, on stdin), `-f -` (the Dockerfile on stdin), a Git URL
//! (`https://host/repo.git#ref:subdir`, `git@host:repo.git`, `git://…`, `github.com/…`) or an http(s) URL of a
//! tarball (or of a Dockerfile alone).
//!
//! Every form ends as a directory and a Dockerfile path, so the rest of the build sees a local context. What comes
//! from stdin or the network is untrusted: its size is bounded while it is read ([`Limits`]), tars are unpacked by
//! the image crate's one layer extractor (which refuses names that climb out of the root and never writes through
//! a symlink), a gzip stream is counted after decompression, and the Dockerfile and subdirectory named inside a
//! fetched context must stay inside it, after symlinks are followed. Fetched contexts live in a temporary
//! directory removed when the [`Source`] is dropped. Git and HTTP go through `executor::remote` (the `git` and
//! `curl` programs, with the same scheme and option checks as `ADD`).

use anyhow::{Context as _, Result, bail};
use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// The largest Dockerfile read from stdin or a URL: BuildKit's 10 MiB.
const MAX_DOCKERFILE: u64 = 10 << 20;

/// Bounds on what a remote or stdin context may bring.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes read from stdin or downloaded, and bytes of a tar after decompression.
    pub max_bytes: u64,
}

impl Limits {
    /// Default 4 GiB; `RBUILD_CONTEXT_LIMIT` (Docker's sizes: `512m`, `2g`) changes it.
    pub fn from_env() -> Result<Limits> {
        let max_bytes = match std::env::var("RBUILD_CONTEXT_LIMIT") {
            Ok(v) if !v.is_empty() => {
                let n = rbuild_builder::container::parse_memory(&v)
                    .map_err(|e| anyhow::anyhow!("RBUILD_CONTEXT_LIMIT={v:?}: {e}"))?;
                u64::try_from(n).context("RBUILD_CONTEXT_LIMIT must be positive")?
            }
            _ => 4 << 30,
        };
        Ok(Limits { max_bytes })
    }
}

/// A build's context directory and Dockerfile, and the temporary directory holding them when they were fetched.
pub struct Source {
    pub context: PathBuf,
    /// `None`: look for `Dockerfile`/`dockerfile` in the context.
    pub dockerfile: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

/// What the context argument names.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'a> {
    Stdin,
    Git { remote: String, reference: &'a str, subdir: &'a str },
    Http(&'a str),
    Dir,
}

/// buildx's test (`urlutil.IsGitURL`): an http(s) URL whose path ends in `.git`, or a `git://`, `git@` or
/// `github.com/` prefix. The fragment is `#ref:subdir`.
fn classify(arg: &str) -> Kind<'_> {
    if arg == "-" {
        return Kind::Stdin;
    }
    let (url, fragment) = arg.split_once('#').unwrap_or((arg, ""));
    let http = url.starts_with("http://") || url.starts_with("https://");
    let git = (http && url.ends_with(".git"))
        || url.starts_with("git://")
        || url.starts_with("git@")
        || url.starts_with("github.com/");
    if git {
        let remote = if url.starts_with("github.com/") { format!("https://{url}") } else { url.to_string() };
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        return Kind::Git { remote, reference, subdir };
    }
    if http {
        return Kind::Http(arg);
    }
    Kind::Dir
}

/// Resolves the context argument and `-f` into a directory and a Dockerfile. `stdin` is read for `-` forms only.
pub fn resolve(context: &Path, file: Option<&Path>, stdin: &mut dyn Read, limits: Limits) -> Result<Source> {
    let arg = context.to_string_lossy();
    let file_from_stdin = file == Some(Path::new("-"));
    let kind = classify(&arg);
    if file_from_stdin && kind == Kind::Stdin {
        bail!("cannot read both the build context and the Dockerfile (-f -) from stdin");
    }
    if kind == Kind::Dir && !file_from_stdin {
        return Ok(Source { context: context.to_path_buf(), dockerfile: file.map(Path::to_path_buf), _tmp: None });
    }
    let tmp = temp_dir()?;
    let root = tmp.path().join("context");
    let mut dockerfile = None;
    match kind {
        Kind::Stdin => dockerfile = unpack_or_dockerfile(stdin, &root, tmp.path(), limits, "stdin")?,
        Kind::Http(url) => {
            let download = tmp.path().join("download");
            rbuild_builder::remote::fetch_http_bounded(url, &download, limits.max_bytes)
                .with_context(|| format!("fetching the build context {url}"))?;
            let mut f = std::fs::File::open(&download).with_context(|| format!("reading {}", download.display()))?;
            dockerfile = unpack_or_dockerfile(&mut f, &root, tmp.path(), limits, url)?;
        }
        Kind::Git { remote, reference, subdir } => {
            let clone = tmp.path().join("git");
            rbuild_builder::remote::clone_git(&remote, reference, false, &clone)
                .with_context(|| format!("cloning the build context {arg}"))?;
            let dir = if subdir.is_empty() { clone.clone() } else { beneath(&clone, Path::new(subdir), "subdir")? };
            if !dir.is_dir() {
                bail!("the subdirectory {subdir:?} of {arg} is not a directory");
            }
            std::fs::rename(&dir, &root).with_context(|| format!("moving {} into place", dir.display()))?;
        }
        Kind::Dir => {
            let dockerfile = match file_from_stdin {
                true => Some(dockerfile_from(stdin, tmp.path(), "stdin (-f -)")?),
                false => file.map(Path::to_path_buf),
            };
            return Ok(Source { context: context.to_path_buf(), dockerfile, _tmp: Some(tmp) });
        }
    }
    if file_from_stdin {
        dockerfile = Some(dockerfile_from(stdin, tmp.path(), "stdin (-f -)")?);
    } else if let Some(f) = file {
        // In a fetched context, -f names a file inside it (as buildx sends it to BuildKit).
        dockerfile = Some(beneath(&root, f, "-f")?);
    }
    Ok(Source { context: root, dockerfile, _tmp: Some(tmp) })
}

impl Source {
    /// Whether the context is a temporary directory (from stdin or a URL), gone after this build.
    pub fn is_temporary(&self) -> bool {
        self._tmp.as_ref().is_some_and(|t| self.context.starts_with(t.path()))
    }
}

fn temp_dir() -> Result<tempfile::TempDir> {
    // A context can be large: not on a tmpfs /tmp unless TMPDIR says so.
    let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("rbuild-context-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))
}

/// `rel` inside `root`, refusing absolute paths, `..`, and symlinks that lead out of `root`.
fn beneath(root: &Path, rel: &Path, what: &str) -> Result<PathBuf> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        bail!("{what} {} must be a relative path inside the build context", rel.display());
    }
    let joined = root.join(rel);
    let real_root = std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
    let real = std::fs::canonicalize(&joined)
        .with_context(|| format!("{what} {}: not found in the build context", rel.display()))?;
    if !real.starts_with(&real_root) {
        bail!("{what} {} leads outside the build context (through a symlink)", rel.display());
    }
    Ok(real)
}

/// Writes a Dockerfile read from `input` (at most [`MAX_DOCKERFILE`]) to `dir/Dockerfile`.
fn dockerfile_from(input: &mut dyn Read, dir: &Path, what: &str) -> Result<PathBuf> {
    let mut text = Vec::new();
    input
        .take(MAX_DOCKERFILE + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading the Dockerfile from {what}"))?;
    if text.len() as u64 > MAX_DOCKERFILE {
        bail!("the Dockerfile from {what} is larger than the limit of {} MiB", MAX_DOCKERFILE >> 20);
    }
    let path = dir.join("Dockerfile");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Reads `input` (a tar, plain or gzip, or a Dockerfile) into `root`. Returns the Dockerfile's path when the input
/// was one (the context is then empty), `None` when it was a tar.
fn unpack_or_dockerfile(
    input: &mut dyn Read,
    root: &Path,
    tmp: &Path,
    limits: Limits,
    what: &str,
) -> Result<Option<PathBuf>> {
    std::fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let mut head = Vec::with_capacity(512);
    input.take(512).read_to_end(&mut head).with_context(|| format!("reading the build context from {what}"))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if !gzip && !tar {
        let mut rest = io::Cursor::new(head).chain(input);
        return dockerfile_from(&mut rest, tmp, what).map(Some);
    }
    let exceeded = Cell::new(false);
    let raw = Bounded { inner: io::Cursor::new(head).chain(input), left: limits.max_bytes, exceeded: &exceeded };
    let result = if gzip {
        let plain = Bounded { inner: flate2::read::GzDecoder::new(raw), left: limits.max_bytes, exceeded: &exceeded };
        rbuild_image::layer::extract_layer(plain, root)
    } else {
        rbuild_image::layer::extract_layer(raw, root)
    };
    if exceeded.get() {
        bail!(
            "the build context from {what} is larger than the limit of {} bytes (RBUILD_CONTEXT_LIMIT)",
            limits.max_bytes
        );
    }
    result.with_context(|| format!("unpacking the build context from {what}"))?;
    Ok(None)
}

/// A reader that fails once more than `left` bytes went through, and says so in `exceeded`.
struct Bounded<'a, R> {
    inner: R,
    left: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("the build context is larger than the limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn classifies_contexts_as_buildx_does() {
        assert_eq!(classify("-"), Kind::Stdin);
        assert_eq!(classify("."), Kind::Dir);
        assert_eq!(classify("https://example.com/ctx.tar.gz"), Kind::Http("https://example.com/ctx.tar.gz"));
        assert_eq!(
            classify("https://example.com/r.git#v1:sub/dir"),
            Kind::Git { remote: "https://example.com/r.git".into(), reference: "v1", subdir: "sub/dir" }
        );
        assert_eq!(
            classify("git@example.com:r.git#main"),
            Kind::Git { remote: "git@example.com:r.git".into(), reference: "main", subdir: "" }
        );
        assert_eq!(
            classify("github.com/o/r"),
            Kind::Git { remote: "https://github.com/o/r".into(), reference: "", subdir: "" }
        );
    }

    #[test]
    fn names_inside_a_fetched_context_cannot_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil")).unwrap();
        assert!(beneath(dir.path(), Path::new("Dockerfile"), "-f").is_ok());
        for bad in ["../x", "/etc/passwd", "evil"] {
            assert!(beneath(dir.path(), Path::new(bad), "-f").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let mut tar = tar::Builder::new(Vec::new());
        let data = vec![0u8; 1 << 20];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, "big", &data[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 64 << 10);
        let dir = tempfile::tempdir().unwrap();
        let err =
            unpack_or_dockerfile(&mut &gz[..], &dir.path().join("c"), dir.path(), Limits { max_bytes: 64 << 10 }, "t")
                .expect_err("over the limit");
        assert!(err.to_string().contains("larger than the limit"), "{err:#}");
    }
}
