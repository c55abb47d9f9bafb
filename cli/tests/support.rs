//! Fixtures: temporary build contexts, stores, a local registry, and gates for tests that need root and tools.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The lock file that serialises runs of `shared/tools/buildkit-up.sh` between tests (see `flock(1)`).
pub const BUILDKIT_UP_LOCK: &str = "/tmp/rbuild-buildkit-up.lock";

/// True when running in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Checks that this test can run: as root, with the named tools. In CI a missing requirement fails the test;
/// elsewhere the test is skipped with a visible message. Returns false to skip.
pub fn require(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for t in tools {
        if which(t).is_none() {
            missing.push(t.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("needs {}", missing.join(", "));
    assert!(!in_ci(), "{msg} (CI must have everything: see .ci/run)");
    eprintln!("SKIPPED: {msg}");
    println!("SKIPPED: {msg}");
    false
}

/// Skips a test whose requirement is missing, visibly; in CI, where nothing may be skipped, fails it instead.
pub fn skip(why: &str) {
    assert!(!in_ci(), "{why} (CI must have everything: see .ci/run)");
    eprintln!("SKIPPED: {why}");
    println!("SKIPPED: {why}");
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

/// The directory of this repository's test data.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(name)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A temporary directory holding a store and any number of build contexts.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        // Under /var/tmp rather than a tmpfs /tmp: overlayfs needs upper dirs on a filesystem that supports it.
        let dir = tempfile::Builder::new().prefix("rbuild-test-").tempdir_in("/var/tmp").unwrap();
        Workspace { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Copies `testdata/<name>` to a fresh context dir and returns it.
    pub fn context_from(&self, name: &str) -> PathBuf {
        let ctx = self.path(&format!("ctx-{name}"));
        copy_dir(&testdata(name), &ctx);
        if name == "busybox-base" {
            std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static provides /bin/busybox");
        }
        ctx
    }

    /// A context made of the given files.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(&format!("ctx-{name}"));
        for (path, content) in files {
            let p = ctx.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        ctx
    }

    /// `rbuild --root <store>` with `args`.
    pub fn rbuild(&self, store: &str, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(self.path(store))
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from(out, format!("rbuild {}", args.join(" ")))
    }

    /// Builds the busybox base image into `store` and tags it `name`.
    pub fn build_base(&self, store: &str, name: &str) -> Run {
        let ctx = self.context_from("busybox-base");
        self.rbuild(store, &["build", "-t", name, ctx.to_str().unwrap()]).success()
    }
}

/// A finished command.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Run {
    pub fn from(out: Output, what: String) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what,
        }
    }

    pub fn success(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "{} failed\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs any command to completion.
pub fn cmd(program: &str, args: &[&str]) -> Run {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    Run::from(out, format!("{program} {}", args.join(" ")))
}

/// A `docker-registry` (CNCF distribution) on a free loopback port, stopped on drop. With
/// `RBUILD_TEST_REGISTRY=host:port` set (as .ci/run does), that registry is used instead.
pub struct Registry {
    pub addr: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Registry {
    pub fn start() -> Registry {
        if let Ok(addr) = std::env::var("RBUILD_TEST_REGISTRY")
            && !addr.is_empty()
        {
            return Registry { addr, child: None, _dir: None };
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { addr, child: Some(child), _dir: Some(dir) }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A unique repository path per test, so tests sharing one registry never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
