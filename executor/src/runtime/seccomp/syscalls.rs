//! The profile's data: moby's default seccomp profile, group by group, in its own order.

use super::{
    ALWAYS, Action, CLONE_NAMESPACE_FLAGS, KernelVersion, Rule, When, arg_eq, arg_ne, arg_without, on_arches, with_caps,
};
use oci_spec::runtime::Capability;

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
pub(super) const PTRACE_SAFE_KERNEL: KernelVersion = KernelVersion { major: 4, minor: 8 };

pub(super) const RULES: &[Rule] = &[
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
