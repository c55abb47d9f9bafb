//! Issue 12, "Flags and forms": where the context and the Dockerfile come from. `-f -`, `-` (a tar, a gzip tar or a
//! Dockerfile alone on stdin), a Git URL served by a local `git daemon` and by plain HTTP (git's dumb protocol), and
//! an http tarball. Each build writes its files with `-o type=local` and the test reads them back; hostile inputs
//! (a tar entry climbing out, a symlinked `-f`, a context over the size limit) must fail clearly.

use crate::support::{Run, Workspace, cmd, require};
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// `rbuild --root <store> args` with `input` on stdin and extra environment.
pub fn rbuild_stdin(ws: &Workspace, store: &str, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(ws.path(store))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbuild");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // rbuild may stop reading early (a limit): a broken pipe here is part of the test, not a failure.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("rbuild");
    let _ = writer.join();
    Run::from(out, format!("rbuild {}", args.join(" ")))
}

/// A tar of `files`, each (name, content).
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `set_path` refuses `..`; a hostile archive is written byte by byte.
        let bytes = h.as_old_mut().name.as_mut();
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, content.as_bytes()).expect("append");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dockerfile_on_stdin_builds_with_a_directory_context() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let ctx =
        ws.context("stdin-df", &[("a.txt", "from the context\n"), ("Dockerfile", "FROM scratch\nCOPY nothing /\n")]);
    let out = ws.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let df = b"FROM scratch\nCOPY a.txt /copied.txt\n";
    rbuild_stdin(&ws, "s", &["build", "-f", "-", "-o", &dest, ctx.to_str().unwrap()], df, &[]).success();
    assert_eq!(read(&out.join("copied.txt")), "from the context\n", "the Dockerfile from stdin was used");
}

#[test]
fn tar_and_gzip_tar_contexts_on_stdin_build() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let files = [("Dockerfile", "FROM scratch\nCOPY sub/b.txt /b.txt\n"), ("sub/b.txt", "in the tar\n")];
    let tar = tar_of(&files);
    for (name, input) in [("plain", tar.clone()), ("gzip", gzip(&tar))] {
        let out = ws.path(&format!("out-{name}"));
        let dest = format!("type=local,dest={}", out.display());
        rbuild_stdin(&ws, "s", &["build", "-o", &dest, "-"], &input, &[]).success();
        assert_eq!(read(&out.join("b.txt")), "in the tar\n", "{name}");
    }
    // -f names a file inside the tar.
    let tar = tar_of(&[("build/Custom", "FROM scratch\nCOPY c.txt /\n"), ("c.txt", "custom\n")]);
    let out = ws.path("out-f");
    let dest = format!("type=local,dest={}", out.display());
    rbuild_stdin(&ws, "s", &["build", "-f", "build/Custom", "-o", &dest, "-"], &tar, &[]).success();
    assert_eq!(read(&out.join("c.txt")), "custom\n");
    // A temporary context leaves no stat cache behind in the store's index, and no directory in /var/tmp.
    let leftovers: Vec<_> = std::fs::read_dir(ws.path("s/index"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("statcache-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_dockerfile_alone_on_stdin_builds_with_an_empty_context() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let df = b"FROM scratch\nLABEL from=stdin\n";
    rbuild_stdin(&ws, "s", &["build", "-t", "alone", "-"], df, &[]).success();
    let inspect = ws.rbuild("s", &["inspect", "alone"]).success();
    let doc: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("json");
    assert_eq!(doc["Config"]["config"]["Labels"]["from"], "stdin", "{}", inspect.stdout);
    // A COPY has nothing to copy from: the context is empty.
    let run = rbuild_stdin(&ws, "s", &["build", "-"], b"FROM scratch\nCOPY x /\n", &[]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn hostile_or_oversized_stdin_contexts_fail_clearly() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let escape = tar_of(&[("Dockerfile", "FROM scratch\n"), ("../../escaped.txt", "out\n")]);
    let run = rbuild_stdin(&ws, "s", &["build", "-"], &escape, &[]);
    assert_ne!(run.code, Some(0), "a tar entry climbing out was accepted:\n{}", run.stderr);
    assert!(run.stderr.contains("unpacking the build context from stdin"), "{}", run.stderr);
    assert!(!Path::new("/var/tmp/escaped.txt").exists());

    let big = "x".repeat(256 << 10);
    let tar = tar_of(&[("Dockerfile", "FROM scratch\n"), ("big", &big)]);
    let run = rbuild_stdin(&ws, "s", &["build", "-"], &gzip(&tar), &[("RBUILD_CONTEXT_LIMIT", "64k")]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("larger than the limit of 65536 bytes"), "{}", run.stderr);

    let run = rbuild_stdin(&ws, "s", &["build", "-f", "-", "-"], b"FROM scratch\n", &[]);
    assert!(run.stderr.contains("cannot read both the build context and the Dockerfile"), "{}", run.stderr);
}

/// Serves the files under `root` over HTTP/1.0 on a loopback port until the test ends; returns the base URL.
pub fn serve_dir(root: &Path) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
            let path = line.split(' ').nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_string();
            let file = root.join(path.trim_start_matches('/'));
            let resp = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") && file.is_file() => {
                    let mut r = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
                _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = conn.write_all(&resp);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn http_tarball_context_builds_and_is_bounded() {
    if !require(&["curl"]) {
        return;
    }
    let ws = Workspace::new();
    let www = ws.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let tar = tar_of(&[
        ("Dockerfile", "FROM scratch\nCOPY t.txt /\n"),
        ("t.txt", "over http\n"),
        ("pad", &"p".repeat(200 << 10)),
    ]);
    std::fs::write(www.join("ctx.tar.gz"), gzip(&tar)).unwrap();
    std::fs::write(www.join("Dockerfile.txt"), "FROM scratch\nLABEL remote=dockerfile\n").unwrap();
    let base = serve_dir(&www);

    let out = ws.path("out");
    let dest = format!("type=local,dest={}", out.display());
    ws.rbuild("s", &["build", "-o", &dest, &format!("{base}/ctx.tar.gz")]).success();
    assert_eq!(read(&out.join("t.txt")), "over http\n");

    // A URL of a Dockerfile alone, as BuildKit takes it.
    ws.rbuild("s", &["build", "-t", "remote-df", &format!("{base}/Dockerfile.txt")]).success();
    let inspect = ws.rbuild("s", &["inspect", "remote-df"]).success();
    assert!(inspect.stdout.contains("\"remote\": \"dockerfile\""), "{}", inspect.stdout);

    // Unpacked, the tar is larger than 64k: the limit counts decompressed bytes too.
    let run =
        rbuild_stdin(&ws, "s", &["build", &format!("{base}/ctx.tar.gz")], b"", &[("RBUILD_CONTEXT_LIMIT", "64k")]);
    assert!(run.stderr.contains("larger than the limit"), "{}", run.stderr);
    let run = ws.rbuild("s", &["build", &format!("{base}/missing.tar")]);
    assert!(run.stderr.contains("fetching the build context"), "{}", run.stderr);
}

/// A bare repository `repo.git` under `dir` whose `main` has `app/` with one file and whose `feature` branch
/// changes it; `app/Dockerfile` copies the file.
fn make_repo(dir: &Path) {
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("app")).unwrap();
    let git = |args: &[&str]| {
        let mut all = vec!["-C", work.to_str().unwrap(), "-c", "user.name=t", "-c", "user.email=t@t"];
        all.extend_from_slice(args);
        cmd("git", &all).success();
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(work.join("app/Dockerfile"), "FROM scratch\nCOPY f.txt /\n").unwrap();
    std::fs::write(work.join("app/f.txt"), "main\n").unwrap();
    std::fs::write(work.join("Dockerfile"), "FROM scratch\nCOPY app/f.txt /root.txt\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "main"]);
    git(&["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("app/f.txt"), "feature\n").unwrap();
    git(&["commit", "-q", "-am", "feature"]);
    git(&["checkout", "-q", "main"]);
    let bare = dir.join("repo.git");
    cmd("git", &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()]).success();
    cmd("git", &["-C", bare.to_str().unwrap(), "update-server-info"]).success();
}

/// `git daemon` serving `base` on a free loopback port; killed on drop with its process group (`git` runs the
/// daemon as a child of its own, which killing `git` alone would leave running).
struct GitDaemon(std::process::Child, u16);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the group is the one the daemon was started in.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn git_daemon(base: &Path) -> GitDaemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("git")
        .args(["daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git daemon");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    GitDaemon(child, port)
}

#[test]
fn git_contexts_build_at_a_ref_and_subdirectory() {
    if !require(&["git", "curl"]) {
        return;
    }
    let ws = Workspace::new();
    let served = ws.path("served");
    make_repo(&served);
    let daemon = git_daemon(&served);
    let http = serve_dir(&served);

    let cases = [
        (format!("git://127.0.0.1:{}/repo.git#feature:app", daemon.1), "f.txt", "feature\n"),
        (format!("git://127.0.0.1:{}/repo.git", daemon.1), "root.txt", "main\n"),
        (format!("{http}/repo.git#feature:app"), "f.txt", "feature\n"),
        (format!("{http}/repo.git#main:app"), "f.txt", "main\n"),
    ];
    for (i, (url, file, want)) in cases.iter().enumerate() {
        let out = ws.path(&format!("out-{i}"));
        let dest = format!("type=local,dest={}", out.display());
        ws.rbuild("s", &["build", "-o", &dest, url]).success();
        assert_eq!(read(&out.join(file)), *want, "{url}");
        assert!(!out.join(".git").exists());
    }
    // A subdirectory that climbs out of the repository is refused.
    let run = ws.rbuild("s", &["build", &format!("git://127.0.0.1:{}/repo.git#main:../..", daemon.1)]);
    assert!(run.stderr.contains("must be a relative path inside the build context"), "{}", run.stderr);
}
