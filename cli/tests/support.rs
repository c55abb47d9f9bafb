//! Fixtures: temporary build contexts and stores. The gate for tests that need root and tools and the local
//! registry are the workspace's shared ones (`rbuild-test-support`), re-exported here.

pub use rbuild_test_support::{Registry, require, skip, which};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs the reference's `docker` CLI (`env` from [`rbuild_test_support::Reference`]) with BuildKit on.
pub fn docker(env: &[(String, String)], args: &[&str]) -> Run {
    let out = Command::new("docker")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DOCKER_BUILDKIT", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker: {e}"));
    Run::from(out, format!("docker {}", args.join(" ")))
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
    /// `rbuild build EXTRA... CTX` on `store`.
    pub fn build(&self, store: &str, ctx: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["build"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        self.rbuild(store, &args)
    }

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

/// A unique repository path per test, so tests sharing one registry never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
