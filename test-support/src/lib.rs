//! Fixtures every crate's tests share: one gate for tests that need root or tools, one local registry, and the
//! reference BuildKits.
//!
//! A dev-dependency only (no production crate may depend on it; `scripts/check-arrows.sh` lists it with no
//! arrows): tests of `image` and `cli` both need a real registry, and a second launcher in each would drift.
//!
//! The gate's rule: a test whose requirement is missing prints `SKIPPED: ...` and passes, except under `CI=true`,
//! where nothing may be skipped and a missing requirement fails the test.
// Fixtures fail by panicking: a fixture that cannot be set up is a failed test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod buildkit;
mod registry;

pub use buildkit::Reference;
pub use registry::{Config as RegistryConfig, FakeRegistry, Registry, Route, trickling_registry};

use std::path::{Path, PathBuf};

/// True when running in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips a test whose requirement is missing, visibly; in CI, where nothing may be skipped, fails it instead.
pub fn skip(why: &str) {
    assert!(!in_ci(), "{why} (CI must have everything: see .ci/run)");
    eprintln!("SKIPPED: {why}");
    println!("SKIPPED: {why}");
}

/// Checks that this test can run as root with the named tools on `PATH`; see the module docs for what happens
/// when it cannot. Returns false to skip.
pub fn require(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    gate(if root { Vec::new() } else { vec!["root".to_string()] }, tools)
}

/// Like [`require`], for a test that needs the tools but not root.
pub fn require_tools(tools: &[&str]) -> bool {
    gate(Vec::new(), tools)
}

fn gate(mut missing: Vec<String>, tools: &[&str]) -> bool {
    missing.extend(tools.iter().filter(|t| which(t).is_none()).map(|t| t.to_string()));
    if missing.is_empty() {
        return true;
    }
    skip(&format!("needs {}", missing.join(", ")));
    false
}

/// `tool`'s path on `PATH`, if it is there.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Whether `path` names an existing file (for tools found by path, not on `PATH`, such as `/bin/busybox`).
pub fn has_file(path: &str) -> bool {
    Path::new(path).is_file()
}
