//! Docker's default seccomp profile, as the syscall filter of every build container.
//!
//! Capabilities and masked paths already stop most of what a RUN step must not do, but some kernel interfaces are
//! reachable without any capability and are not namespaced (the kernel keyring, user namespaces as an attack
//! surface, `perf_event_open`, `userfaultfd`, `kexec_load`, ...). `docker build` filters them with moby's default
//! profile, so Dockerfiles are written against it; rbuild applies the same rules so a step that builds here builds
//! there, and is refused here what it would be refused there.
//!
//! The profile is kept as data in Docker's own shape: one allow list, plus groups that apply only for given
//! capabilities, architectures or kernel versions. [`docker_default`] resolves it for one capability set, Go-style
//! architecture name and kernel, exactly as the Docker daemon does when it creates a container: a group is kept when
//! every capability it *includes* is granted, the architecture is among those it includes (if it names any), the
//! kernel is new enough, and none of its *excluded* capabilities or architectures apply. Anything not allowed fails
//! with `EPERM`; `clone3` fails with `ENOSYS` so that libc falls back to `clone`, whose namespace flags can be
//! checked (`clone3` passes them in memory, out of seccomp's reach).
//!
//! Syscall names the installed libseccomp does not know are skipped by runc, and runc makes syscalls newer than the
//! newest one it knows fail with `ENOSYS` rather than `EPERM`, so listing syscalls of future kernels here is safe.

mod syscalls;
#[cfg(test)]
mod tests;

use syscalls::RULES;

use std::collections::HashSet;
use std::sync::OnceLock;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

/// What every filtered-out syscall returns.
pub const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// The namespace flags an unprivileged `clone` may not pass (the mask of Docker's conditional `clone` rule).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// A kernel release, major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    /// Reads `6.1.0-18-amd64`-style release strings; `None` if there are not two leading numbers.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }
}

/// The running kernel's version, read once; `None` if it cannot be read, which drops the kernel-gated groups (as
/// Docker does when it cannot tell).
pub fn host_kernel() -> Option<KernelVersion> {
    static KERNEL: OnceLock<Option<KernelVersion>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease");
        match release {
            Ok(release) => KernelVersion::parse(&release),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the kernel version; seccomp keeps ptrace disallowed");
                None
            }
        }
    })
}

/// The Go name (`GOARCH`) of the architecture rbuild was built for, which is what the profile's architecture
/// conditions are written against.
pub fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Docker's default profile for a process holding `caps` on `goarch` under `kernel`. (The error is oci-spec's
/// builder contract; the profile's fixed data never triggers it.)
pub fn docker_default(
    caps: &HashSet<Capability>,
    goarch: &str,
    kernel: Option<KernelVersion>,
) -> Result<LinuxSeccomp, OciSpecError> {
    let syscalls = RULES
        .iter()
        .filter(|rule| rule.applies(caps, goarch, kernel))
        .map(Rule::to_oci)
        .collect::<Result<Vec<LinuxSyscall>, _>>()?;
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(DEFAULT_ERRNO));
    // A 64-bit process can switch to its 32-bit ABIs (int 0x80, x32, AArch32), which have syscall numbers of their
    // own; listing them makes the same rules apply there instead of the default action blocking everything.
    let architectures = match goarch {
        "amd64" => Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]),
        "arm64" => Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]),
        // Elsewhere only the native ABI is filtered (runc's default for an empty list).
        _ => None,
    };
    profile.set_architectures(architectures);
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// What a rule does to the syscalls it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(i32),
}

/// A condition on one syscall argument.
#[derive(Debug, Clone, Copy)]
struct ArgCheck {
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    /// Compared with `arg & value` for [`LinuxSeccompOperator::ScmpCmpMaskedEq`].
    value_two: u64,
}

const fn arg_eq(index: usize, value: u64) -> ArgCheck {
    ArgCheck { index, op: LinuxSeccompOperator::ScmpCmpEq, value, value_two: 0 }
}

const fn arg_ne(index: usize, value: u64) -> ArgCheck {
    ArgCheck { index, op: LinuxSeccompOperator::ScmpCmpNe, value, value_two: 0 }
}

/// `arg & mask == 0`: none of the bits in `mask` set.
const fn arg_without(index: usize, mask: u64) -> ArgCheck {
    ArgCheck { index, op: LinuxSeccompOperator::ScmpCmpMaskedEq, value: mask, value_two: 0 }
}

/// When a rule applies. Empty lists impose nothing.
#[derive(Debug, Clone, Copy)]
struct When {
    caps: &'static [Capability],
    arches: &'static [&'static str],
    min_kernel: Option<KernelVersion>,
}

const ALWAYS: When = When { caps: &[], arches: &[], min_kernel: None };

const fn with_caps(caps: &'static [Capability]) -> When {
    When { caps, arches: &[], min_kernel: None }
}

const fn on_arches(arches: &'static [&'static str]) -> When {
    When { caps: &[], arches, min_kernel: None }
}

/// One group of the profile.
struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [ArgCheck],
    includes: When,
    /// The rule is dropped if *any* of these capabilities is granted or the architecture is one of these.
    excludes: When,
}

impl Rule {
    const fn allow(names: &'static [&'static str], includes: When) -> Rule {
        Rule { names, action: Action::Allow, args: &[], includes, excludes: ALWAYS }
    }

    fn applies(&self, caps: &HashSet<Capability>, goarch: &str, kernel: Option<KernelVersion>) -> bool {
        let inc = &self.includes;
        let exc = &self.excludes;
        if !inc.caps.iter().all(|c| caps.contains(c)) {
            return false;
        }
        if !inc.arches.is_empty() && !inc.arches.contains(&goarch) {
            return false;
        }
        if inc.min_kernel.is_some_and(|min| kernel.is_none_or(|k| k < min)) {
            return false;
        }
        !(exc.caps.iter().any(|c| caps.contains(c)) || exc.arches.contains(&goarch))
    }

    fn to_oci(&self) -> Result<LinuxSyscall, OciSpecError> {
        let mut syscall = LinuxSyscall::default();
        syscall.set_names(self.names.iter().map(|n| n.to_string()).collect());
        match self.action {
            Action::Allow => {
                syscall.set_action(LinuxSeccompAction::ScmpActAllow);
            }
            Action::Errno(errno) => {
                syscall.set_action(LinuxSeccompAction::ScmpActErrno);
                syscall.set_errno_ret(Some(errno.unsigned_abs()));
            }
        }
        if !self.args.is_empty() {
            let args = self
                .args
                .iter()
                .map(|a| {
                    LinuxSeccompArgBuilder::default()
                        .index(a.index)
                        .op(a.op)
                        .value(a.value)
                        .value_two(a.value_two)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            syscall.set_args(Some(args));
        }
        Ok(syscall)
    }
}
