//! `ADD <url>` and `ADD <git repository>`: remote sources fetched onto the host, then copied like context files.
//!
//! The fetch runs the `curl` and `git` programs (Debian packages, like runc) instead of linking an HTTP and a Git
//! stack into rbuild: they already handle proxies, TLS trust stores, redirects and credentials helpers the way
//! users configured them. A fetched source is a plain directory, so the step that copies from it is keyed by the
//! content digest of what arrived, exactly like a COPY from the build context: a URL whose content did not change
//! hits the cache, one whose content changed does not.

use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A remote source could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    #[error("cannot run {program:?} to fetch {what}")]
    Spawn {
        program: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("fetching {what} failed ({status}): {stderr}")]
    Failed { what: String, status: std::process::ExitStatus, stderr: String },
    #[error("cannot read the download {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checksum mismatch for {url}: expected {expected}, got sha256:{got}")]
    Checksum { url: String, expected: String, got: String },
    #[error("invalid --checksum {checksum:?}: expected sha256:<64 hex digits>")]
    BadChecksum { checksum: String },
    #[error("invalid download file name {name:?}")]
    BadName { name: String },
}

fn run(program: &'static str, args: &[&str], what: &str) -> Result<(), RemoteError> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|source| RemoteError::Spawn {
        program,
        what: what.to_string(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(RemoteError::Failed { what: what.to_string(), status: out.status, stderr })
}

/// The sha256 of a file, as hex.
fn sha256_file(path: &Path) -> Result<String, RemoteError> {
    let read_err = |source| RemoteError::Read { path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks a `--checksum` value's form before anything is downloaded.
pub fn parse_checksum(checksum: &str) -> Result<String, RemoteError> {
    let bad = || RemoteError::BadChecksum { checksum: checksum.to_string() };
    let hex = checksum.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hex.to_ascii_lowercase())
}

/// Downloads `url` to `dir/filename` (following redirects, failing on HTTP errors) and verifies `checksum`.
pub fn fetch_http(url: &str, checksum: Option<&str>, filename: &str, dir: &Path) -> Result<PathBuf, RemoteError> {
    if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
        return Err(RemoteError::BadName { name: filename.to_string() });
    }
    let expected = checksum.map(parse_checksum).transpose()?;
    let dest = dir.join(filename);
    let dest_str = dest.to_string_lossy().into_owned();
    run("curl", &["--silent", "--show-error", "--fail", "--location", "--output", &dest_str, url], url)?;
    if let (Some(expected), Some(raw)) = (expected, checksum) {
        let got = sha256_file(&dest)?;
        if got != expected {
            return Err(RemoteError::Checksum { url: url.to_string(), expected: raw.to_string(), got });
        }
    }
    Ok(dest)
}

/// Clones `remote` at `reference` (a branch, tag or commit; the default branch when empty) into `dir`, which must
/// not exist yet. Without `keep_git_dir` the `.git` directory is removed, as BuildKit does.
pub fn clone_git(remote: &str, reference: &str, keep_git_dir: bool, dir: &Path) -> Result<(), RemoteError> {
    let dir_str = dir.to_string_lossy().into_owned();
    let what = if reference.is_empty() { remote.to_string() } else { format!("{remote}#{reference}") };
    run("git", &["clone", "--quiet", "--recurse-submodules", remote, &dir_str], &what)?;
    if !reference.is_empty() {
        run("git", &["-C", &dir_str, "-c", "advice.detachedHead=false", "checkout", "--quiet", reference], &what)?;
        run("git", &["-C", &dir_str, "submodule", "update", "--quiet", "--init", "--recursive"], &what)?;
    }
    if !keep_git_dir {
        let git = dir.join(".git");
        std::fs::remove_dir_all(&git).map_err(|source| RemoteError::Read { path: git, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_must_be_sha256_hex() {
        let ok = format!("sha256:{}", "Ab".repeat(32));
        assert_eq!(parse_checksum(&ok).unwrap(), "ab".repeat(32));
        assert!(matches!(parse_checksum("md5:abc"), Err(RemoteError::BadChecksum { .. })));
        assert!(matches!(parse_checksum("sha256:abc"), Err(RemoteError::BadChecksum { .. })));
    }

    #[test]
    fn file_urls_download_and_verify() {
        if std::process::Command::new("curl").arg("--version").output().is_err() {
            eprintln!("SKIPPED: needs curl");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src.txt");
        std::fs::write(&src, "hello\n").unwrap();
        let url = format!("file://{}", src.display());
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // sha256("hello\n")
        let sum = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let got = fetch_http(&url, Some(sum), "f.txt", &out).unwrap();
        assert_eq!(std::fs::read_to_string(got).unwrap(), "hello\n");
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(fetch_http(&url, Some(&wrong), "g.txt", &out), Err(RemoteError::Checksum { .. })));
        assert!(matches!(fetch_http(&url, None, "../x", &out), Err(RemoteError::BadName { .. })));
    }
}
