//! `ADD <url>` and `ADD <git repository>`: remote sources fetched onto the host, then copied like context files.
//!
//! A URL is downloaded with `reqwest` (already linked for registries; it reads the `HTTP(S)_PROXY`/`NO_PROXY`
//! variables and trusts the system's CA store), hashed while it is written, so a `--checksum` costs no second
//! read. A repository is cloned by the `git` program (a Debian package, like runc) rather than a linked Git stack:
//! it handles credential helpers, SSH and submodules the way users configured them. A fetched source is a plain
//! directory, so the step that copies from it is keyed by the content digest of what arrived, exactly like a COPY
//! from the build context: a URL whose content did not change hits the cache, one whose content changed does not.

use sha2::{Digest as _, Sha256};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    #[error("downloading {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url} failed: the server answered {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("downloading {url} to {path} failed")]
    Transfer {
        url: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the download {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    #[error("{what} is larger than the limit of {max_bytes} bytes")]
    TooLarge { what: String, max_bytes: u64 },
    #[error("refusing {what} {value:?}: {reason}")]
    Refused { what: &'static str, value: String, reason: &'static str },
}

/// Checks a value before it is handed to `git` or `curl` as an argument: a leading `-` would make it an option
/// (`--pathspec-from-file=/etc/shadow`, `--upload-pack=...`), and control characters have no place in a URL or ref.
fn plain_argument(what: &'static str, value: &str) -> Result<(), RemoteError> {
    let refuse = |reason| Err(RemoteError::Refused { what, value: value.to_string(), reason });
    if value.starts_with('-') {
        return refuse("it starts with '-' and would be read as an option");
    }
    if value.chars().any(char::is_control) {
        return refuse("it contains control characters");
    }
    Ok(())
}

/// The URL schemes `ADD <url>` may download from. Anything else (`file://`, `ftp://`, `gopher://`, ...) could read
/// the build machine's own files or reach services a Dockerfile has no business with.
fn check_http_url(url: &str) -> Result<(), RemoteError> {
    plain_argument("URL", url)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(RemoteError::Refused {
            what: "URL",
            value: url.to_string(),
            reason: "only http:// and https:// may be downloaded",
        });
    }
    Ok(())
}

/// The Git remotes `ADD` may clone: https/http/ssh/git URLs and scp-like `user@host:path`. Git's other transports
/// (`file://`, plain paths, `ext::`, `fd::`) would read the build machine's own repositories or run commands.
fn check_git_remote(remote: &str) -> Result<(), RemoteError> {
    plain_argument("Git remote", remote)?;
    let allowed_scheme = ["https://", "http://", "ssh://", "git://"].iter().any(|s| remote.starts_with(s));
    // scp-like syntax: `user@host:path`, where the part before ':' has no '/' (otherwise git reads a local path).
    let scp_like = remote.split_once(':').is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
    // The host (after any `scheme://` and `user@`) must not look like an option to ssh (`-oProxyCommand=...`).
    let after_scheme = remote.split_once("://").map_or(remote, |(_, rest)| rest);
    let authority = after_scheme.split(['/', ':']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.starts_with('-') || authority.starts_with('-') {
        return Err(RemoteError::Refused {
            what: "Git remote",
            value: remote.to_string(),
            reason: "its host starts with '-' and would be read as an option",
        });
    }
    if !(allowed_scheme || scp_like) || remote.contains("::") {
        return Err(RemoteError::Refused {
            what: "Git remote",
            value: remote.to_string(),
            reason: "only https://, http://, ssh://, git:// and user@host:path remotes may be cloned",
        });
    }
    Ok(())
}

fn run(program: &'static str, args: &[&str], what: &str) -> Result<(), RemoteError> {
    // The program sees the ids of the namespace (git compares a repository's owner with its own).
    rbuild_types::ids::wait();
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

/// Checks a `--checksum` value's form before anything is downloaded.
pub fn parse_checksum(checksum: &str) -> Result<String, RemoteError> {
    let bad = || RemoteError::BadChecksum { checksum: checksum.to_string() };
    let hex = checksum.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hex.to_ascii_lowercase())
}

/// How long a download may wait for a connection, for the next bytes, and in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Redirects followed at most (reqwest follows only http and https, never `file://`).
const MAX_REDIRECTS: usize = 10;

/// Downloads `url` to `dir/filename` (following redirects, failing on HTTP errors) and verifies `checksum`.
/// Called on a blocking thread (the worker's), never on the async runtime.
pub fn fetch_http(url: &str, checksum: Option<&str>, filename: &str, dir: &Path) -> Result<PathBuf, RemoteError> {
    if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
        return Err(RemoteError::BadName { name: filename.to_string() });
    }
    let expected = checksum.map(parse_checksum).transpose()?;
    let dest = dir.join(filename);
    // BuildKit gives downloaded files mode 0600 (ADD --chmod changes it when copying).
    let got = download(url, &dest, None)?;
    if let (Some(expected), Some(raw)) = (expected, checksum)
        && got != expected
    {
        return Err(RemoteError::Checksum { url: url.to_string(), expected: raw.to_string(), got });
    }
    Ok(dest)
}

/// Downloads `url` into the file `dest` (created new), stopping with [`RemoteError::TooLarge`] once more than
/// `max_bytes` arrived, whether or not the response announced its length. For remote build contexts, which
/// nothing else bounds.
pub fn fetch_http_bounded(url: &str, dest: &Path, max_bytes: u64) -> Result<(), RemoteError> {
    download(url, dest, Some(max_bytes)).map(|_| ())
}

/// Downloads `url` into the new file `dest` (mode 0600, the server's Last-Modified as its mtime), at most
/// `max_bytes` if given; returns the sha256 of what arrived, as hex.
///
/// reqwest's blocking client runs a runtime of its own, which must not be created or dropped on an async
/// runtime's thread: the download runs on a thread of its own, so callers on either kind of thread may wait.
fn download(url: &str, dest: &Path, max_bytes: Option<u64>) -> Result<String, RemoteError> {
    check_http_url(url)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("rbuild-download".into())
            .spawn_scoped(scope, || download_here(url, dest, max_bytes))
            .map_err(|source| RemoteError::Spawn { program: "a download thread", what: url.to_string(), source })?
            .join()
            .unwrap_or_else(|_| {
                Err(RemoteError::Refused {
                    what: "URL",
                    value: url.to_string(),
                    reason: "the download thread panicked",
                })
            })
    })
}

fn download_here(url: &str, dest: &Path, max_bytes: Option<u64>) -> Result<String, RemoteError> {
    let http_err = |source| RemoteError::Http { url: url.to_string(), source };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // The blocking client applies this to the request and to every read of the body: an idle timeout.
        .timeout(IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .build()
        .map_err(http_err)?;
    let response = client.get(url).send().map_err(http_err)?;
    if !response.status().is_success() {
        return Err(RemoteError::Status { url: url.to_string(), status: response.status() });
    }
    let too_large = || RemoteError::TooLarge { what: url.to_string(), max_bytes: max_bytes.unwrap_or(0) };
    if let (Some(max), Some(announced)) = (max_bytes, response.content_length())
        && announced > max
    {
        return Err(too_large());
    }
    // The file's mtime is the server's Last-Modified, as BuildKit sets it.
    let modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let write_err = |source| RemoteError::Write { path: dest.to_path_buf(), source };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .map_err(write_err)?;
    let mut out = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        deadline: std::time::Instant::now() + TOTAL_TIMEOUT,
    };
    let mut body = response.take(max_bytes.unwrap_or(u64::MAX));
    // A read error (a timeout, a reset) and a write error both end the transfer; the message says which.
    io::copy(&mut body, &mut out).map_err(|source| RemoteError::Transfer {
        url: url.to_string(),
        path: dest.to_path_buf(),
        source,
    })?;
    // At the limit: one more byte means the body is larger than allowed (what was written stays within it).
    if max_bytes.is_some() && body.into_inner().read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(too_large());
    }
    let file = out.inner.into_inner().map_err(|e| write_err(e.into_error()))?;
    if let Some(t) = modified {
        file.set_modified(t).map_err(write_err)?;
    }
    Ok(hex::encode(out.hasher.finalize()))
}

/// Hashes what passes through it, and ends a download that trickles past its deadline.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    deadline: std::time::Instant,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if std::time::Instant::now() > self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the download took longer than an hour"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Every git command runs with only the network transports enabled, so a submodule cannot use `file` or `ext`.
const GIT_TRANSPORTS: [&str; 10] = [
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.https.allow=always",
    "-c",
    "protocol.http.allow=always",
    "-c",
    "protocol.ssh.allow=always",
    "-c",
    "protocol.git.allow=always",
];

/// Clones `remote` at `reference` (a branch, tag or commit; the default branch when empty) into `dir`, which must
/// not exist yet. Without `keep_git_dir` the `.git` directory is removed, as BuildKit does.
pub fn clone_git(remote: &str, reference: &str, keep_git_dir: bool, dir: &Path) -> Result<(), RemoteError> {
    check_git_remote(remote)?;
    if !reference.is_empty() {
        plain_argument("Git ref", reference)?;
    }
    let dir_str = dir.to_string_lossy().into_owned();
    let what = if reference.is_empty() { remote.to_string() } else { format!("{remote}#{reference}") };
    // Submodules are cloned with the same transports allowed and no others (`file` and `ext` never).
    let git = |args: &[&str]| {
        let mut all = GIT_TRANSPORTS.to_vec();
        all.extend_from_slice(args);
        run("git", &all, &what)
    };
    git(&["clone", "--quiet", "--recurse-submodules", "--", remote, &dir_str])?;
    if !reference.is_empty() {
        git(&[
            "-C",
            &dir_str,
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--end-of-options",
            reference,
        ])?;
        git(&["-C", &dir_str, "submodule", "update", "--quiet", "--init", "--recursive"])?;
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

    /// Serves `body` once over HTTP on a loopback port; returns the URL of `/name`.
    fn serve_once(body: &'static [u8], name: &str) -> String {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 13 Sep 2020 12:26:40 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            }
        });
        format!("http://127.0.0.1:{port}/{name}")
    }

    /// Serves a body that never ends and announces no length, as a hostile server would.
    fn serve_endless() -> String {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                let chunk = vec![b'x'; 1 << 16];
                // Stops when the client hangs up.
                while conn.write_all(&chunk).is_ok() {}
            }
        });
        format!("http://127.0.0.1:{port}/endless")
    }

    #[test]
    fn bounded_downloads_stop_at_the_limit_with_or_without_a_length() {
        let t = tempfile::tempdir().unwrap();
        let small = t.path().join("small");
        fetch_http_bounded(&serve_once(b"hello\n", "s"), &small, 1024).expect("under the limit");
        assert_eq!(std::fs::read(&small).unwrap(), b"hello\n");
        static BIG: [u8; 4096] = [b'y'; 4096];
        let err = fetch_http_bounded(&serve_once(&BIG, "big"), &t.path().join("big"), 1024).expect_err("announced");
        assert!(matches!(err, RemoteError::TooLarge { max_bytes: 1024, .. }), "{err}");
        let err = fetch_http_bounded(&serve_endless(), &t.path().join("endless"), 64 << 10).expect_err("endless");
        assert!(matches!(err, RemoteError::TooLarge { .. }), "{err}");
        // What was written never passed the limit (and the partial file is removed).
        assert!(std::fs::metadata(t.path().join("endless")).map_or(0, |m| m.len()) <= 64 << 10);
    }

    #[test]
    fn http_urls_download_and_verify() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // sha256("hello\n")
        let sum = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let got = fetch_http(&serve_once(b"hello\n", "f.txt"), Some(sum), "f.txt", &out).unwrap();
        assert_eq!(std::fs::read_to_string(&got).unwrap(), "hello\n");
        // Regression (issue 11, item 7): downloads are 0600, as BuildKit makes them; mtime from Last-Modified.
        let meta = std::fs::metadata(&got).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_600_000_000);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let url = serve_once(b"hello\n", "g.txt");
        assert!(matches!(fetch_http(&url, Some(&wrong), "g.txt", &out), Err(RemoteError::Checksum { .. })));
        assert!(matches!(fetch_http(&url, None, "../x", &out), Err(RemoteError::BadName { .. })));
    }

    /// Regression (adversarial review, hole 2): `file://` read the build machine's files into the image.
    #[test]
    fn only_http_and_https_urls_are_downloaded() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "host file").unwrap();
        for url in [format!("file://{}", secret.display()), "ftp://127.0.0.1/x".into(), "--config=/etc/x".into()] {
            let err = fetch_http(&url, None, "x", t.path()).unwrap_err();
            assert!(matches!(err, RemoteError::Refused { .. }), "{url}: {err}");
        }
        assert!(!t.path().join("x").exists());
    }

    /// Regression (adversarial review, hole 2): `ADD repo.git#--pathspec-from-file=/etc/shadow` made `git
    /// checkout` read a host file into its error output. Refs and remotes are never options.
    #[test]
    fn git_refs_and_remotes_are_never_options() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "TOPSECRET").unwrap();
        let inject = format!("--pathspec-from-file={}", secret.display());
        let remote_ok = "https://127.0.0.1:1/repo.git";
        let err = clone_git(remote_ok, &inject, false, &t.path().join("a")).unwrap_err();
        assert!(matches!(err, RemoteError::Refused { what: "Git ref", .. }), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"));
        for remote in [
            "--upload-pack=touch /tmp/pwned".to_string(),
            format!("file://{}", t.path().display()),
            t.path().display().to_string(),
            "ext::sh -c touch% /tmp/pwned".into(),
            "/etc:x@y".into(),
            "ssh://-oProxyCommand=touch%20/tmp/pwned/r.git".into(),
            "git@-oProxyCommand=x:r.git".into(),
        ] {
            let err = clone_git(&remote, "", false, &t.path().join("b")).unwrap_err();
            assert!(matches!(err, RemoteError::Refused { what: "Git remote", .. }), "{remote}: {err}");
        }
        for ok in ["https://h/r.git", "git@github.com:o/r.git", "ssh://git@h/r.git", "git://h/r"] {
            check_git_remote(ok).unwrap();
        }
    }
}
