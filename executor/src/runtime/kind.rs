//! Which OCI runtime runs RUN steps: `runc` (the one BuildKit uses) or `crun` (Debian's C runtime).
//!
//! Both are driven the same way, with the same bundle: `--root`, `--log` with `--log-format json`, `run --bundle`,
//! `kill`, `delete -f` and `list --format json` mean the same to both, and everything that makes up a step's
//! security profile (namespaces, capabilities, seccomp, masked paths, cgroup limits) is in the bundle's
//! `config.json` ([`super::spec`]), so switching runtimes cannot loosen it.
//!
//! crun starts a container in less time than runc (a C program against a Go one that re-executes itself), which is
//! most of a RUN step's fixed cost, so it is preferred where it works. crun 1.8 refuses a "hybrid" cgroup layout in
//! which cgroup v2 also holds controllers (it says "cgroups in hybrid mode not supported, drop all controllers from
//! cgroupv2"), which runc handles; as root rbuild starts crun there with the v2 hierarchy hidden
//! ([`super::cgroups::V1View`]), so it applies the same limits in the same v1 controllers runc does. Rootless, the
//! hidden hierarchy cannot be unmounted (it is locked in a user namespace), so crun is refused there.

use std::path::{Path, PathBuf};

use super::cgroups;

/// An OCI runtime rbuild knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Runc,
    Crun,
}

impl RuntimeKind {
    /// Every runtime, in order of preference when more than one works.
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Crun, RuntimeKind::Runc];

    /// The program's name, also used as the name of its state directory in the store.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Runc => "runc",
            RuntimeKind::Crun => "crun",
        }
    }

    /// `runc` or `crun`.
    pub fn parse(name: &str) -> Option<RuntimeKind> {
        RuntimeKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The program on `PATH`; the `PATH` searched, as the error.
    pub fn find(self) -> Result<PathBuf, String> {
        super::find_executable(self.name())
    }

    /// Why this runtime cannot run containers on this host, if it cannot.
    pub fn unsupported_reason(self) -> Option<String> {
        match self {
            RuntimeKind::Runc => None,
            RuntimeKind::Crun => crun_cgroup_problem(Path::new("/sys/fs/cgroup"), crate::userns::in_user_namespace()),
        }
    }

    /// The first of [`RuntimeKind::ALL`] that is installed and works on this host; runc when none does (its
    /// absence is then reported when a step needs it).
    pub fn preferred() -> RuntimeKind {
        RuntimeKind::ALL
            .into_iter()
            .find(|k| k.find().is_ok() && k.unsupported_reason().is_none())
            .unwrap_or(RuntimeKind::Runc)
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// crun manages pure cgroup v2, pure v1, and v1 with an empty v2 hierarchy beside it; v1 with controllers enabled
/// in v2 only as root, through [`cgroups::V1View`].
fn crun_cgroup_problem(cgroup_root: &Path, rootless: bool) -> Option<String> {
    let controllers = cgroups::v2_controllers_beside_v1(cgroup_root)?;
    rootless.then(|| {
        format!(
            "this host mounts cgroup v1 and v2 side by side with controllers on v2 ({controllers}), which crun \
             refuses, and rootless rbuild cannot hide the v2 hierarchy from it; use runc"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in RuntimeKind::ALL {
            assert_eq!(RuntimeKind::parse(k.name()), Some(k));
        }
        assert_eq!(RuntimeKind::parse("youki"), None);
    }

    #[test]
    fn crun_is_refused_only_rootless_on_hybrid_layouts_with_v2_controllers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("unified")).expect("mkdir");
        std::fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").expect("write");
        assert_eq!(crun_cgroup_problem(root, false), None, "as root, through the v1 view");
        let why = crun_cgroup_problem(root, true).expect("refused rootless");
        assert!(why.contains("hugetlb"), "{why}");
        std::fs::write(root.join("unified/cgroup.controllers"), "\n").expect("write");
        assert_eq!(crun_cgroup_problem(root, true), None, "an empty v2 hierarchy is no problem");
    }
}
