//! Stopping the containers of rbuild processes that died (`kill -9` in the middle of a RUN step).
//!
//! A step's `runc run` outlives an rbuild killed with SIGKILL, and so does its container: it keeps running on an
//! overlay mount in the dead process's tmp dir. The next rbuild to open the store finds that tmp dir dead (its lock
//! is free) and, before detaching its mounts, hands it here: every container in runc's state directory whose
//! bundle lies in a dead tmp dir, or whose bundle is gone altogether, is killed and deleted.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One line of `runc list --format json`.
#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    bundle: PathBuf,
}

/// Kills and deletes the containers of dead processes in runc's state directory `state_dir`: those whose bundle is
/// under one of `dead_dirs` or no longer exists. Returns a line for each one stopped. Best effort: a store must
/// still open when runc is missing or fails.
pub fn reap_containers(runc: &Path, state_dir: &Path, dead_dirs: &[PathBuf]) -> Vec<String> {
    if !state_dir.is_dir() {
        return Vec::new();
    }
    let listed = Command::new(runc)
        .arg("--root")
        .arg(state_dir)
        .args(["list", "--format", "json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = listed else { return Vec::new() };
    let containers: Vec<Listed> =
        serde_json::from_slice::<Option<Vec<Listed>>>(&out.stdout).ok().flatten().unwrap_or_default();
    let mut reaped = Vec::new();
    for c in containers {
        let orphan = dead_dirs.iter().any(|d| c.bundle.starts_with(d)) || !c.bundle.exists();
        if !orphan {
            continue;
        }
        let deleted = Command::new(runc)
            .arg("--root")
            .arg(state_dir)
            .args(["delete", "--force", &c.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let outcome = match deleted {
            Ok(s) if s.success() => "killed and deleted".to_string(),
            Ok(s) => format!("runc delete failed ({s})"),
            Err(e) => format!("runc delete could not run: {e}"),
        };
        tracing::warn!(id = %c.id, pid = c.pid, status = %c.status, %outcome, "container of a dead rbuild process");
        reaped.push(format!("{} (pid {}, {}): {outcome}", c.id, c.pid, c.status));
    }
    reaped
}

/// `runc` on `PATH`, if there is one.
pub fn find_runc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("runc")).find(|p| p.is_file())
}
