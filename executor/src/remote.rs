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
    check_http_url(url)?;
    let dest_str = dest.to_string_lossy().into_owned();
    // `--proto`/`--proto-redir` keep a redirect from leading to `file://` or another scheme; the timeouts keep a
    // stalled server from holding the build forever (no data for 60 s, at most an hour in all).
    let args = [
        "--silent",
        "--show-error",
        "--fail",
        "--location",
        "--proto",
        "=http,https",
        "--proto-redir",
        "=http,https",
        "--connect-timeout",
        "30",
        "--speed-limit",
        "1",
        "--speed-time",
        "60",
        "--max-time",
        "3600",
        // The file's mtime is the server's Last-Modified, as BuildKit sets it.
        "--remote-time",
        "--output",
        &dest_str,
        url,
    ];
    run("curl", &args, url)?;
    // BuildKit gives downloaded files mode 0600 (ADD --chmod changes it when copying).
    std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|source| RemoteError::Read { path: dest.clone(), source })?;
    if let (Some(expected), Some(raw)) = (expected, checksum) {
        let got = sha256_file(&dest)?;
        if got != expected {
            return Err(RemoteError::Checksum { url: url.to_string(), expected: raw.to_string(), got });
        }
    }
    Ok(dest)
}

/// Downloads `url` into the file `dest` (created new), stopping with [`RemoteError::TooLarge`] once more than
/// `max_bytes` arrived: curl's own `--max-filesize` cannot stop a response that does not announce its length, so
/// the body is read through a pipe and counted here. For remote build contexts, which nothing else bounds.
pub fn fetch_http_bounded(url: &str, dest: &Path, max_bytes: u64) -> Result<(), RemoteError> {
    use std::io::Write as _;
    check_http_url(url)?;
    let max = max_bytes.to_string();
    let args = [
        "--silent",
        "--show-error",
        "--fail",
        "--location",
        "--proto",
        "=http,https",
        "--proto-redir",
        "=http,https",
        "--connect-timeout",
        "30",
        "--speed-limit",
        "1",
        "--speed-time",
        "60",
        "--max-time",
        "3600",
        "--max-filesize",
        &max,
        url,
    ];
    let spawn_err = |source| RemoteError::Spawn { program: "curl", what: url.to_string(), source };
    let mut child = Command::new("curl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let write_err = |source| RemoteError::Read { path: dest.to_path_buf(), source };
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(write_err)?;
    let mut body = child.stdout.take().ok_or_else(|| spawn_err(io::Error::other("no stdout pipe")))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let copied = loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(write_err(e)),
        };
        total += n as u64;
        if total > max_bytes {
            break Err(RemoteError::TooLarge { what: url.to_string(), max_bytes });
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(write_err(e));
        }
    };
    if copied.is_err() {
        let _ = child.kill();
    }
    drop(body);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(64 << 10).read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(spawn_err)?;
    copied?;
    if !status.success() {
        // curl's exit code 63: the server announced a body larger than --max-filesize.
        if status.code() == Some(63) {
            return Err(RemoteError::TooLarge { what: url.to_string(), max_bytes });
        }
        return Err(RemoteError::Failed { what: url.to_string(), status, stderr: stderr.trim().to_string() });
    }
    Ok(())
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
        use std::io::Write;
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
        assert!(std::fs::metadata(t.path().join("endless")).unwrap().len() <= 64 << 10);
    }

    #[test]
    fn http_urls_download_and_verify() {
        if std::process::Command::new("curl").arg("--version").output().is_err() {
            eprintln!("SKIPPED: needs curl");
            return;
        }
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
