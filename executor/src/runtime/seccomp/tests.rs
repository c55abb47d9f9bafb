//! The profile against Docker's, rule by rule.

use super::syscalls::PTRACE_SAFE_KERNEL;
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
