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

// The allow list, by area. Variants for 32-bit ABIs (`…32`, `…64`, `…_time64`) sit with their base syscall.

#[rustfmt::skip]
const FILES: &[&str] = &[
    "access", "faccessat", "faccessat2",
    "open", "openat", "openat2", "creat", "close", "close_range", "name_to_handle_at",
    "read", "readv", "pread64", "preadv", "preadv2",
    "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek",
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "flock",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat", "statx",
    "statfs", "statfs64", "fstatfs", "fstatfs64",
    "truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate",
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "fadvise64", "fadvise64_64", "readahead", "cachestat",
    "copy_file_range", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "mkdir", "mkdirat", "mknod", "mknodat", "rmdir",
    "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "unlink", "unlinkat",
    "rename", "renameat", "renameat2",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
    "umask",
    "utime", "utimes", "futimesat", "utimensat", "utimensat_time64",
    "getxattr", "lgetxattr", "fgetxattr", "getxattrat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "listxattr", "llistxattr", "flistxattr", "listxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "listmount", "statmount",
];

#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "fork", "vfork", "execve", "execveat", "exit", "exit_group",
    "wait4", "waitid", "waitpid",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
    "setresuid", "setresuid32", "setresgid", "setresgid32", "setgroups", "setgroups32",
    "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    "capget", "capset", "prctl", "seccomp",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "getpriority", "setpriority",
    "ioprio_get", "ioprio_set",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "getcpu", "get_robust_list", "set_robust_list", "set_tid_address", "get_thread_area", "set_thread_area",
    "rseq", "restart_syscall",
    "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "uname", "sysinfo", "getrandom",
];

#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "remap_file_pages",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "membarrier",
    "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",
    "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
];

#[rustfmt::skip]
const TIME_AND_SIGNALS: &[&str] = &[
    "time", "gettimeofday", "times", "adjtimex", "clock_adjtime", "clock_adjtime64",
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64", "clock_nanosleep",
    "clock_nanosleep_time64", "nanosleep", "alarm", "pause", "getitimer", "setitimer",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn", "signalfd", "signalfd4",
    "uretprobe",
];

#[rustfmt::skip]
const EVENTS_AND_IPC: &[&str] = &[
    "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old", "epoll_pwait",
    "epoll_pwait2", "eventfd", "eventfd2", "pipe", "pipe2",
    "ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop", "semtimedop", "semtimedop_time64",
    "shmget", "shmctl", "shmat", "shmdt",
    "mq_open", "mq_unlink", "mq_getsetattr", "mq_notify", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64",
];

/// Sockets; `socket` itself is conditional (see [`RULES`]).
#[rustfmt::skip]
const NETWORK: &[&str] = &[
    "socketcall", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt",
    "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
];

/// `personality(2)` values a container may set: Linux, Linux32, UNAME26, both, and the query value 0xffffffff.
const PERSONALITY_LINUX: u64 = 0x0000;
const PERSONALITY_LINUX32: u64 = 0x0008;
const PERSONALITY_UNAME26: u64 = 0x0002_0000;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// ptrace and friends could bypass seccomp before 4.8 (the filter was checked before the tracer could change the
/// syscall); from then on Docker allows them without `CAP_SYS_PTRACE`.
const PTRACE_SAFE_KERNEL: KernelVersion = KernelVersion { major: 4, minor: 8 };

const RULES: &[Rule] = &[
    Rule::allow(FILES, ALWAYS),
    Rule::allow(PROCESSES, ALWAYS),
    Rule::allow(MEMORY, ALWAYS),
    Rule::allow(TIME_AND_SIGNALS, ALWAYS),
    Rule::allow(EVENTS_AND_IPC, ALWAYS),
    Rule::allow(NETWORK, ALWAYS),
    Rule::allow(
        &["ptrace", "process_vm_readv", "process_vm_writev"],
        When { caps: &[], arches: &[], min_kernel: Some(PTRACE_SAFE_KERNEL) },
    ),
    // Any address family but vsock, which reaches the host (or hypervisor) outside every namespace.
    Rule {
        names: &["socket"],
        action: Action::Allow,
        args: &[arg_ne(0, libc::AF_VSOCK as u64)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[arg_eq(0, PERSONALITY_LINUX)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[arg_eq(0, PERSONALITY_LINUX32)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[arg_eq(0, PERSONALITY_UNAME26)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[arg_eq(0, PERSONALITY_UNAME26 | PERSONALITY_LINUX32)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[arg_eq(0, PERSONALITY_QUERY)],
        includes: ALWAYS,
        excludes: ALWAYS,
    },
    // Architecture-specific calls.
    Rule::allow(&["sync_file_range2", "swapcontext"], on_arches(&["ppc64le"])),
    Rule::allow(
        &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
        on_arches(&["arm", "arm64"]),
    ),
    Rule::allow(&["arch_prctl"], on_arches(&["amd64", "x32"])),
    Rule::allow(&["modify_ldt"], on_arches(&["amd64", "x32", "x86"])),
    Rule::allow(&["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"], on_arches(&["s390", "s390x"])),
    Rule::allow(&["riscv_flush_icache", "riscv_hwprobe"], on_arches(&["riscv64"])),
    // Groups that come with a capability.
    Rule::allow(&["open_by_handle_at"], with_caps(&[Capability::DacReadSearch])),
    Rule::allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        with_caps(&[Capability::SysAdmin]),
    ),
    // Without CAP_SYS_ADMIN, `clone` only without namespace flags; s390 passes the flags second.
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[arg_without(0, CLONE_NAMESPACE_FLAGS)],
        includes: ALWAYS,
        excludes: When { caps: &[Capability::SysAdmin], arches: &["s390", "s390x"], min_kernel: None },
    },
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[arg_without(1, CLONE_NAMESPACE_FLAGS)],
        includes: on_arches(&["s390", "s390x"]),
        excludes: with_caps(&[Capability::SysAdmin]),
    },
    Rule {
        names: &["clone3"],
        action: Action::Errno(libc::ENOSYS),
        args: &[],
        includes: ALWAYS,
        excludes: with_caps(&[Capability::SysAdmin]),
    },
    Rule::allow(&["reboot"], with_caps(&[Capability::SysBoot])),
    Rule::allow(&["chroot"], with_caps(&[Capability::SysChroot])),
    Rule::allow(&["delete_module", "init_module", "finit_module"], with_caps(&[Capability::SysModule])),
    Rule::allow(&["acct"], with_caps(&[Capability::SysPacct])),
    Rule::allow(
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
        with_caps(&[Capability::SysPtrace]),
    ),
    Rule::allow(&["iopl", "ioperm"], with_caps(&[Capability::SysRawio])),
    Rule::allow(&["settimeofday", "stime", "clock_settime", "clock_settime64"], with_caps(&[Capability::SysTime])),
    Rule::allow(&["vhangup"], with_caps(&[Capability::SysTtyConfig])),
    Rule::allow(
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
        with_caps(&[Capability::SysNice]),
    ),
    Rule::allow(&["syslog"], with_caps(&[Capability::Syslog])),
    Rule::allow(&["bpf"], with_caps(&[Capability::Bpf])),
    Rule::allow(&["perf_event_open"], with_caps(&[Capability::Perfmon])),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::DEFAULT_CAPABILITIES;

    fn default_caps() -> HashSet<Capability> {
        DEFAULT_CAPABILITIES.into_iter().collect()
    }

    const NEW_KERNEL: Option<KernelVersion> = Some(KernelVersion { major: 6, minor: 1 });

    fn profile(caps: &HashSet<Capability>, goarch: &str, kernel: Option<KernelVersion>) -> serde_json::Value {
        serde_json::to_value(docker_default(caps, goarch, kernel).expect("profile")).expect("serialize")
    }

    /// The rules naming `name`, as JSON.
    fn rules_for<'a>(json: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
        json["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|rule| rule["names"].as_array().is_some_and(|names| names.iter().any(|n| n == name)))
            .collect()
    }

    /// Allowed whatever the arguments.
    fn allowed(json: &serde_json::Value, name: &str) -> bool {
        rules_for(json, name).iter().any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
    }

    /// Not named by any rule: the default action (EPERM) applies.
    fn denied(json: &serde_json::Value, name: &str) -> bool {
        rules_for(json, name).is_empty()
    }

    #[test]
    fn default_action_is_eperm_for_all_abis_of_the_host() {
        let json = profile(&default_caps(), "amd64", NEW_KERNEL);
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert_eq!(json["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        let json = profile(&default_caps(), "arm64", NEW_KERNEL);
        assert_eq!(json["architectures"], serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]));
        let json = profile(&default_caps(), "riscv64", NEW_KERNEL);
        assert!(json.get("architectures").is_none(), "native only: {}", json["architectures"]);
    }

    #[test]
    fn everyday_syscalls_are_allowed() {
        let json = profile(&default_caps(), "amd64", NEW_KERNEL);
        for name in ["read", "write", "openat", "execve", "fork", "wait4", "chown", "mknod", "setuid", "chroot"] {
            assert!(allowed(&json, name), "{name}");
        }
        assert!(allowed(&json, "arch_prctl") && allowed(&json, "modify_ldt"), "x86 specifics");
        assert!(denied(&json, "set_tls") && denied(&json, "s390_runtime_instr"), "other architectures' calls");
        let arm = profile(&default_caps(), "arm64", NEW_KERNEL);
        assert!(allowed(&arm, "set_tls") && allowed(&arm, "cacheflush"));
        assert!(denied(&arm, "arch_prctl") && denied(&arm, "modify_ldt"));
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7e02_0000, "NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP");
        let json = profile(&default_caps(), "amd64", NEW_KERNEL);
        let clone = rules_for(&json, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "value": 0x7e02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        // clone3 hides its flags in memory: ENOSYS makes libc fall back to clone.
        let clone3 = rules_for(&json, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        // s390 passes the flags as the second argument.
        let s390 = profile(&default_caps(), "s390x", NEW_KERNEL);
        let clone = rules_for(&s390, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["args"][0]["index"], 1);
    }

    #[test]
    fn namespace_mount_and_kernel_facilities_are_refused() {
        let json = profile(&default_caps(), "amd64", NEW_KERNEL);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "fsopen",
            "open_tree",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "perf_event_open",
            "add_key",
            "keyctl",
            "request_key",
            "userfaultfd",
            "open_by_handle_at",
            "init_module",
            "reboot",
            "swapon",
            "pivot_root",
            "settimeofday",
            "clock_settime",
            "iopl",
            "kcmp",
            "pidfd_getfd",
            "syslog",
            "lsm_set_self_attr",
        ] {
            assert!(denied(&json, name), "{name} must fall to the default EPERM: {:?}", rules_for(&json, name));
        }
    }

    #[test]
    fn personality_and_socket_are_conditional() {
        let json = profile(&default_caps(), "amd64", NEW_KERNEL);
        let mut values: Vec<u64> = rules_for(&json, "personality")
            .iter()
            .map(|r| {
                assert_eq!(r["args"][0]["op"], "SCMP_CMP_EQ");
                assert_eq!(r["args"][0]["index"], 0);
                r["args"][0]["value"].as_u64().expect("value")
            })
            .collect();
        values.sort();
        assert_eq!(values, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
        let socket = rules_for(&json, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0]["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket[0]["args"][0]["value"], 40, "AF_VSOCK");
    }

    #[test]
    fn ptrace_needs_kernel_4_8_but_no_capability() {
        for name in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            assert!(allowed(&profile(&default_caps(), "amd64", NEW_KERNEL), name), "{name}");
            assert!(allowed(&profile(&default_caps(), "amd64", Some(KernelVersion { major: 4, minor: 8 })), name));
            let old = profile(&default_caps(), "amd64", Some(KernelVersion { major: 4, minor: 4 }));
            assert!(denied(&old, name), "{name} on 4.4");
            assert!(denied(&profile(&default_caps(), "amd64", None), name), "{name} on an unknown kernel");
        }
        // The rest of the CAP_SYS_PTRACE group stays out.
        assert!(denied(&profile(&default_caps(), "amd64", NEW_KERNEL), "process_madvise"));
    }

    #[test]
    fn capability_groups_follow_the_capability_set() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysTime);
        let json = profile(&caps, "amd64", NEW_KERNEL);
        for name in ["mount", "unshare", "setns", "clone", "clone3", "bpf", "settimeofday"] {
            assert!(allowed(&json, name), "{name} with CAP_SYS_ADMIN/CAP_SYS_TIME");
        }
        assert!(rules_for(&json, "clone3").iter().all(|r| r["action"] == "SCMP_ACT_ALLOW"), "no ENOSYS rule");
        assert!(rules_for(&json, "clone").iter().all(|r| r.get("args").is_none()), "no flag check");
        // And without CAP_SYS_CHROOT, no chroot.
        let mut caps = default_caps();
        caps.remove(&Capability::SysChroot);
        assert!(denied(&profile(&caps, "amd64", NEW_KERNEL), "chroot"));
    }

    #[test]
    fn tables_have_no_duplicates_and_the_expected_size() {
        let always: Vec<&str> = RULES
            .iter()
            .filter(|r| r.action == Action::Allow && r.args.is_empty())
            .filter(|r| r.includes.caps.is_empty() && r.includes.arches.is_empty() && r.includes.min_kernel.is_none())
            .flat_map(|r| r.names.iter().copied())
            .collect();
        let unique: HashSet<&str> = always.iter().copied().collect();
        assert_eq!(unique.len(), always.len(), "a name listed twice in the allow list");
        // Docker's unconditional allow list, including the syscalls of kernels up to 6.13.
        assert_eq!(always.len(), 363);
        for name in &always {
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name:?}");
        }
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(KernelVersion::parse("6.1.0-18-amd64\n"), Some(KernelVersion { major: 6, minor: 1 }));
        assert_eq!(KernelVersion::parse("4.8"), Some(KernelVersion { major: 4, minor: 8 }));
        assert_eq!(KernelVersion::parse("5"), None);
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion { major: 4, minor: 10 } > PTRACE_SAFE_KERNEL);
        assert!(KernelVersion { major: 3, minor: 19 } < PTRACE_SAFE_KERNEL);
    }
}
