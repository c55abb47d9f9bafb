//! Whether RUN containers can get cgroup limits.
//!
//! As real root, always: runc makes a cgroup per container. In a user namespace (rootless) runc can only use a
//! cgroup v2 subtree that was delegated to the user (systemd's `Delegate=yes`, as `systemd-run --user --scope`
//! gives): the unified hierarchy is mounted at `/sys/fs/cgroup` and this process's own cgroup directory is
//! writable. Without it the container config carries no limits, and rbuild warns once when the build asked for
//! some (`--memory`, `--cpus`, ...); the default pids limit is dropped without a word, as rootless BuildKit does.
//!
//! Hybrid hosts (cgroup v1 controllers, plus a v2 hierarchy at `/sys/fs/cgroup/unified` that holds a controller
//! too, such as `hugetlb`): crun 1.8 refuses them outright, runc takes them (its limits then live in v1, as no
//! limit rbuild sets is on a v2 controller). crun is started there with [`V1View`]: in a mount namespace of its
//! own, where the v2 hierarchy is unmounted, it sees a plain v1 host and applies the same limits in the same v1
//! controllers runc would. Its cgroup is placed under rbuild's own v1 memory cgroup, as runc places it, so a
//! container cannot escape a memory limit that holds rbuild.

use std::io;
use std::path::{Path, PathBuf};
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

/// The controllers of a v2 hierarchy mounted beside cgroup v1 at `<cgroup_root>/unified`, if any: the "hybrid"
/// layout crun refuses. `None` on a pure v1 or v2 host and for an empty v2 hierarchy.
pub fn v2_controllers_beside_v1(cgroup_root: &Path) -> Option<String> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return None;
    }
    let controllers = std::fs::read_to_string(cgroup_root.join("unified/cgroup.controllers")).ok()?;
    let controllers = controllers.trim();
    (!controllers.is_empty()).then(|| controllers.to_string())
}

/// How crun runs on a hybrid host (see the module docs): the v2 hierarchy hidden, its cgroup under `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1View {
    /// rbuild's own cgroup in the v1 `memory` hierarchy (`/` when it has none).
    parent: PathBuf,
}

impl V1View {
    /// The view for this process on this host.
    pub fn of_this_process() -> V1View {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        V1View { parent: v1_cgroup_of(&own, "memory").unwrap_or_else(|| PathBuf::from("/")) }
    }

    /// The `linux.cgroupsPath` of container `id`: beside runc's choice, under rbuild's own memory cgroup.
    pub fn cgroups_path(&self, id: &str) -> PathBuf {
        self.parent.join(id)
    }

    /// Runs in the child between `fork` and `exec` (so raw, allocation-free system calls only): a mount namespace
    /// of its own, mounts propagating from the host into it but not back, and the v2 hierarchy detached.
    pub fn enter() -> io::Result<()> {
        // SAFETY: plain system calls on static NUL-terminated strings; nothing is allocated or locked.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let (none, root) = (std::ptr::null(), c"/".as_ptr());
            if libc::mount(none, root, none, libc::MS_REC | libc::MS_SLAVE, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The path of a v1 `controller`'s cgroup in a `/proc/<pid>/cgroup` listing.
fn v1_cgroup_of(listing: &str, controller: &str) -> Option<PathBuf> {
    listing.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == controller).then(|| PathBuf::from(path))
    })
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

    #[test]
    fn only_hybrid_layouts_with_v2_controllers_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert_eq!(v2_controllers_beside_v1(root), None, "pure v1");
        std::fs::create_dir(root.join("unified")).expect("mkdir");
        std::fs::write(root.join("unified/cgroup.controllers"), "\n").expect("write");
        assert_eq!(v2_controllers_beside_v1(root), None, "hybrid with an empty v2 hierarchy");
        std::fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").expect("write");
        assert_eq!(v2_controllers_beside_v1(root).as_deref(), Some("hugetlb"));
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        assert_eq!(v2_controllers_beside_v1(root), None, "pure v2");
    }

    #[test]
    fn the_view_nests_containers_under_our_memory_cgroup() {
        let listing = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(v1_cgroup_of(listing, "memory"), Some(PathBuf::from("/process_api/abc")));
        assert_eq!(v1_cgroup_of(listing, "cpuacct"), Some(PathBuf::from("/")));
        assert_eq!(v1_cgroup_of("0::/x\n", "memory"), None);
        let view = V1View { parent: PathBuf::from("/process_api/abc") };
        assert_eq!(view.cgroups_path("rbuild-1-x"), PathBuf::from("/process_api/abc/rbuild-1-x"));
    }
}
