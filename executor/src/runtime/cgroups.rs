//! Whether RUN containers can get cgroup limits.
//!
//! As real root, always: runc makes a cgroup per container. In a user namespace (rootless) runc can only use a
//! cgroup v2 subtree that was delegated to the user (systemd's `Delegate=yes`, as `systemd-run --user --scope`
//! gives): the unified hierarchy is mounted at `/sys/fs/cgroup` and this process's own cgroup directory is
//! writable. Without it the container config carries no limits, and rbuild warns once when the build asked for
//! some (`--memory`, `--cpus`, ...); the default pids limit is dropped without a word, as rootless BuildKit does.

use std::path::Path;
use std::sync::Once;

use super::ContainerOptions;

/// True when runc may apply `linux.resources` here.
pub fn limits_available() -> bool {
    if !crate::userns::in_user_namespace() {
        return true;
    }
    delegated(Path::new("/sys/fs/cgroup"), &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
}

/// With the cgroup v2 root at `root` and `/proc/self/cgroup` reading `self_cgroup`: is our cgroup writable?
fn delegated(root: &Path, self_cgroup: &str) -> bool {
    if !root.join("cgroup.controllers").is_file() {
        return false;
    }
    let Some(path) = self_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else { return false };
    let dir = root.join(path.trim_start_matches('/'));
    nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// True if the build asked for limits of its own (beyond the default pids limit).
pub fn asked_for_limits(o: &ContainerOptions) -> bool {
    o.memory.is_some()
        || o.memory_swap.is_some()
        || o.cpu_shares.is_some()
        || o.cpu_period.is_some()
        || o.cpu_quota.is_some()
        || o.cpuset_cpus.is_some()
}

/// Warns once per process that limits are not applied.
pub fn warn_unavailable() {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "warning: rootless without a delegated cgroup v2 subtree: RUN steps get no memory, CPU or pids limits \
             (run rbuild under `systemd-run --user --scope -p Delegate=yes` on a cgroup v2 host to get them)"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v1_or_foreign_cgroups_are_not_delegated() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!delegated(dir.path(), "0::/user.slice\n"), "no cgroup.controllers: not v2");
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids\n").expect("write");
        assert!(!delegated(dir.path(), "1:memory:/x\n"), "no unified entry");
        std::fs::create_dir_all(dir.path().join("user.slice/me")).expect("mkdir");
        assert!(delegated(dir.path(), "0::/user.slice/me\n"), "our own, writable cgroup");
    }
}
