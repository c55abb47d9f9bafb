//! Fixtures shared by the integration tests: the privilege gate and a busybox root filesystem.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether root-only tests can run here. Under `CI=true` a missing prerequisite is a failure, not a skip.
pub fn privileged(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join("runc").is_file()) {
        missing.push("runc on PATH");
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push(BUSYBOX);
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {} (CI=true, so this is a failure)", missing.join(", "));
    }
    eprintln!("SKIPPED {test}: needs {}", missing.join(", "));
    false
}

/// The OCI runtime the tests run containers with: `RBUILD_RUNTIME` (`runc` or `crun`), else runc, so the suite
/// can be run once per runtime (`RBUILD_RUNTIME=crun cargo test -p rbuild-executor`).
pub fn test_runtime() -> rbuild_executor::runtime::RuntimeKind {
    use rbuild_executor::runtime::RuntimeKind;
    match std::env::var("RBUILD_RUNTIME") {
        Ok(name) => RuntimeKind::parse(&name).unwrap_or_else(|| panic!("RBUILD_RUNTIME={name:?}: use runc or crun")),
        Err(_) => RuntimeKind::Runc,
    }
}

/// Builds a busybox root filesystem in `dir`: `/bin/busybox` with one symlink per applet, an `/etc/passwd` with
/// root, `app` (1000) and nobody, an `/etc/group`, and `/mnt`, `/tmp`.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(BUSYBOX).arg("--list").output().expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
    }
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir etc");
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n")
        .expect("group");
    for d in ["mnt", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
}

/// A directory tree for one test, removed when dropped.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new().prefix(&format!("rbuild-exec-{name}-")).tempdir().expect("tempdir");
        TestDir { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}
