//! The OCI runtime config of a build container.
//!
//! It matches what `docker build` (BuildKit on runc) gives a RUN step, because Dockerfiles depend on it: the
//! same capabilities (a Dockerfile that runs `chown` or `ping` works, one that mounts filesystems does not), the
//! same `/proc` masking, the same `/dev` and default devices, `no_new_privs`, Docker's default seccomp profile (see
//! [`super::seccomp`]), and `PATH`/`HOME` defaults. It is a function of the [`RunSpec`] and the host's architecture
//! and kernel version only, so it can be checked without root.
//!
//! The build's [`super::ContainerOptions`] add cgroup limits (`linux.resources`; runc puts every container in a
//! cgroup of its own, named by its id), rlimits and the size of `/dev/shm`. A step's own tmpfs at `/dev/shm`
//! replaces the default one rather than stacking on it, as BuildKit dedups mounts by destination.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::options::Ulimit;
use super::{NetworkMode, RunSpec, RuntimeError, privileged, seccomp};

/// `PATH` when the step's environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set; for root it is `CapEff: 00000000a80425fb`.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths of `/proc` and `/sys` that leak host information or allow host changes; runc hides them.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of `/proc` that stay visible but read-only.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The destinations of the mounts every container gets, before the step's own mounts.
pub const SYSTEM_MOUNT_DESTINATIONS: [&str; 8] =
    ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts", "/etc/resolv.conf"];

/// Builds the config of a container running `run`, with `/etc/hosts` and `/etc/resolv.conf` bound from the given
/// host files.
pub fn build_spec(run: &RunSpec, hosts: &Path, resolv_conf: &Path) -> Result<Spec, RuntimeError> {
    let caps: HashSet<Capability> =
        if run.privileged { privileged::all_capabilities() } else { DEFAULT_CAPABILITIES.into_iter().collect() };
    // The filter is resolved for the capabilities the process gets, as Docker does; a privileged step has none.
    let seccomp = if run.privileged {
        None
    } else {
        Some(seccomp::docker_default(&caps, seccomp::host_goarch(), seccomp::host_kernel()).map_err(spec_error)?)
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_error)?;

    let user = UserBuilder::default()
        .uid(run.user.uid)
        .gid(run.user.gid)
        .additional_gids(run.user.additional_gids.clone())
        .build()
        .map_err(spec_error)?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(run.args.clone())
        .env(process_env(run))
        .cwd(run.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(!run.privileged)
        // Limits not named by --ulimit are inherited from rbuild, as the classic Docker builder does.
        .rlimits(
            run.options
                .ulimits
                .iter()
                .map(|u| {
                    let (soft, hard) = settable(u, hard_limit_ceiling(u.typ));
                    PosixRlimitBuilder::default().typ(u.typ).soft(soft).hard(hard).build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(spec_error)?,
        )
        .build()
        .map_err(spec_error)?;

    let mut namespaces =
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
            .into_iter()
            .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(spec_error)?;
    match &run.network {
        NetworkMode::Host => {}
        // A fresh network namespace: runc brings up `lo` and nothing else.
        NetworkMode::None => namespaces
            .push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).build().map_err(spec_error)?),
        // The build's namespace, set up (and torn down) by its network stack.
        NetworkMode::Join { netns, .. } => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns.clone())
                .build()
                .map_err(spec_error)?,
        ),
    }

    let mut resources = resources(&run.options)?;
    let mut linux = LinuxBuilder::default().namespaces(namespaces);
    if run.privileged {
        // Every device allowed, and the host's devices created in the container's /dev (docker's --privileged).
        let allow_all = LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().map_err(spec_error)?;
        resources.set_devices(Some(vec![allow_all]));
        linux = linux
            .devices(privileged::host_devices(Path::new("/dev"))?)
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new());
    } else {
        linux = linux
            .masked_paths(MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .readonly_paths(READONLY_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    }
    let mut linux = linux.resources(resources).build().map_err(spec_error)?;
    linux.set_seccomp(seccomp);

    let root = RootBuilder::default().path(run.rootfs.clone()).readonly(false).build().map_err(spec_error)?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .mounts(mounts(run, hosts, resolv_conf)?)
        .process(process)
        .linux(linux)
        .build()
        .map_err(spec_error)?;
    // The builder's defaults include a hostname of its own; no hostname means the namespace keeps the host's.
    spec.set_hostname(Some(run.hostname.clone()).filter(|h| !h.is_empty()));
    Ok(spec)
}

/// The container's cgroup settings: every device denied (runc then appends its default allow list: null, zero,
/// full, tty, random, urandom, pts), and the build's memory, CPU and pids limits.
pub fn resources(options: &super::ContainerOptions) -> Result<LinuxResources, RuntimeError> {
    let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(spec_error)?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if options.memory.is_some() || options.memory_swap.is_some() {
        let mut memory = LinuxMemoryBuilder::default();
        if let Some(limit) = options.memory {
            memory = memory.limit(limit);
        }
        if let Some(swap) = options.memory_swap {
            memory = memory.swap(swap);
        }
        resources = resources.memory(memory.build().map_err(spec_error)?);
    }
    let o = options;
    if o.cpu_shares.is_some() || o.cpu_period.is_some() || o.cpu_quota.is_some() || o.cpuset_cpus.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = o.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(period) = o.cpu_period {
            cpu = cpu.period(period);
        }
        if let Some(quota) = o.cpu_quota {
            cpu = cpu.quota(quota);
        }
        if let Some(cpus) = &o.cpuset_cpus {
            cpu = cpu.cpus(cpus.clone());
        }
        resources = resources.cpu(cpu.build().map_err(spec_error)?);
    }
    if let Some(limit) = options.pids_limit {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build().map_err(spec_error)?);
    }
    resources.build().map_err(spec_error)
}

/// The step's environment plus `PATH` and `HOME` when it does not set them.
pub fn process_env(run: &RunSpec) -> Vec<String> {
    let mut env = run.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = run.user.home.as_deref().filter(|h| !h.is_empty()).unwrap_or("/");
        env.push(format!("HOME={home}"));
    }
    env
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// `/sys`: a fresh sysfs, which only the owner of the network namespace may mount. A rootless step on the host's
/// network (not rbuild's namespace) gets the host's `/sys` bound instead, as BuildKit and runc do rootless.
fn sys_mount(run: &RunSpec) -> Result<Mount, RuntimeError> {
    let access = if run.privileged { "rw" } else { "ro" };
    if matches!(run.network, NetworkMode::Host) && crate::userns::in_user_namespace() {
        return bind(Path::new("/sys"), "/sys", &["rbind", access, "nosuid", "noexec", "nodev"]);
    }
    mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", access])
}

fn mounts(run: &RunSpec, hosts: &Path, resolv_conf: &Path) -> Result<Vec<Mount>, RuntimeError> {
    let etc_file_options = ["rbind", "ro", "nosuid", "nodev", "noexec"];
    let shm_size = format!("size={}k", run.options.shm_size.div_ceil(1024));
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", &shm_size])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        sys_mount(run)?,
        bind(hosts, "/etc/hosts", &etc_file_options)?,
        bind(resolv_conf, "/etc/resolv.conf", &etc_file_options)?,
    ];
    // Parents before children, so a mount at /a/b is not hidden by a later one at /a (a stable sort: equal depths
    // keep the order they were given in).
    let mut user_mounts: Vec<(&str, Mount)> = Vec::new();
    for m in &run.mounts {
        let options: &[&str] = if m.readonly { &["rbind", "ro"] } else { &["rbind", "rw"] };
        user_mounts.push((&m.destination, bind(&m.source, &m.destination, options)?));
    }
    for t in &run.tmpfs {
        let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
        if let Some(size) = t.size {
            options.push(format!("size={size}"));
        }
        let m = MountBuilder::default()
            .destination(&t.destination)
            .typ("tmpfs")
            .source("tmpfs")
            .options(options)
            .build()
            .map_err(spec_error)?;
        user_mounts.push((&t.destination, m));
    }
    // A step's own mount at a system destination (`RUN --mount=type=tmpfs,target=/dev/shm`) replaces the
    // system's, as BuildKit keeps only the last mount of a destination; stacking both would leave two mounts.
    out.retain(|m| {
        let dest = m.destination();
        !user_mounts.iter().any(|(d, _)| Path::new(d.trim_end_matches('/')) == dest.as_path() && !d.is_empty())
    });
    if let Some((destination, _)) = user_mounts.iter().find(|(d, _)| !d.starts_with('/')) {
        return Err(RuntimeError::BadMountDestination { destination: destination.to_string() });
    }
    user_mounts.sort_by_key(|(d, _)| Path::new(d).components().count());
    out.extend(user_mounts.into_iter().map(|(_, m)| m));
    Ok(out)
}

fn bind(source: &Path, destination: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// A `--ulimit` as the container may get it: at most `ceiling` (the hard limit rbuild itself has, when it may not
/// raise it), the soft limit never above the hard one. runc would otherwise fail the step with EPERM; podman
/// lowers its limits the same way.
fn settable(u: &Ulimit, ceiling: Option<u64>) -> (u64, u64) {
    let hard = ceiling.map_or(u.hard, |c| u.hard.min(c));
    (u.soft.min(hard), hard)
}

/// This process's hard limit of `typ` when it may not raise it: raising a hard limit needs CAP_SYS_RESOURCE in the
/// initial user namespace, which a rootless rbuild never has (and root lacks in some containers and VMs).
fn hard_limit_ceiling(typ: PosixRlimitType) -> Option<u64> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let may_raise = !crate::userns::in_user_namespace()
        && std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
        });
    if may_raise {
        return None;
    }
    let resource = match typ {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0).then_some(limit.rlim_max)
}

fn spec_error(source: oci_spec::OciSpecError) -> RuntimeError {
    RuntimeError::Spec { source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{BindMount, TmpfsMount};
    use crate::user::ResolvedUser;
    use std::path::PathBuf;

    fn run_spec(network: NetworkMode) -> RunSpec {
        RunSpec {
            rootfs: PathBuf::from("/merged"),
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/work".into(),
            user: ResolvedUser { uid: 1000, gid: 1001, additional_gids: vec![7], home: Some("/home/app".into()) },
            hostname: "box".into(),
            network,
            mounts: vec![
                BindMount { source: PathBuf::from("/src/deep"), destination: "/a/b".into(), readonly: true },
                BindMount { source: PathBuf::from("/src/top"), destination: "/a".into(), readonly: false },
            ],
            tmpfs: vec![TmpfsMount { destination: "/a/t".into(), size: Some(4096) }],
            bundle_dir: None,
            options: Default::default(),
            privileged: false,
        }
    }

    fn to_json(spec: &Spec) -> serde_json::Value {
        serde_json::to_value(spec).expect("serialize")
    }

    #[test]
    fn capability_mask_is_dockers() {
        // Bit numbers from <linux/capability.h>; their union is Docker's well-known 0xa80425fb.
        let bits: [u32; 14] = [0, 1, 4, 3, 27, 13, 6, 7, 31, 8, 10, 18, 5, 29];
        let mask = bits.iter().fold(0u64, |m, b| m | (1 << b));
        assert_eq!(mask, 0xa80425fb);
        let json = to_json(&build_spec(&run_spec(NetworkMode::Host), Path::new("/h"), Path::new("/r")).expect("spec"));
        let caps = &json["process"]["capabilities"];
        let mut names: Vec<&str> =
            caps["bounding"].as_array().expect("array").iter().filter_map(|v| v.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "CAP_AUDIT_WRITE",
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_KILL",
                "CAP_MKNOD",
                "CAP_NET_BIND_SERVICE",
                "CAP_NET_RAW",
                "CAP_SETFCAP",
                "CAP_SETGID",
                "CAP_SETPCAP",
                "CAP_SETUID",
                "CAP_SYS_CHROOT"
            ]
        );
        for set in ["effective", "permitted"] {
            assert_eq!(caps[set].as_array().map(Vec::len), Some(14), "{set}");
        }
        for set in ["inheritable", "ambient"] {
            assert_eq!(caps[set].as_array().map(Vec::len), Some(0), "{set}");
        }
        assert_eq!(json["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn seccomp_profile_is_dockers_default_for_the_default_capabilities() {
        let json = to_json(&build_spec(&run_spec(NetworkMode::Host), Path::new("/h"), Path::new("/r")).expect("spec"));
        let seccomp = &json["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        let names = |name: &str| {
            seccomp["syscalls"]
                .as_array()
                .expect("syscalls")
                .iter()
                .filter(|r| r["names"].as_array().is_some_and(|n| n.iter().any(|n| n == name)))
                .count()
        };
        // Resolved for DEFAULT_CAPABILITIES: chroot (CAP_SYS_CHROOT) is in, mount (CAP_SYS_ADMIN) is not.
        assert_eq!(names("chroot"), 1);
        assert_eq!(names("read"), 1);
        assert_eq!(names("mount"), 0);
        assert_eq!(names("keyctl"), 0);
    }

    #[test]
    fn network_namespace_fresh_for_none_joined_for_join_absent_for_host() {
        let join = NetworkMode::Join { netns: PathBuf::from("/store/tmp/net-0/netns"), nameserver: None };
        for (mode, want_net, want_path) in [
            (NetworkMode::Host, false, None),
            (NetworkMode::None, true, None),
            (join, true, Some("/store/tmp/net-0/netns")),
        ] {
            let json = to_json(&build_spec(&run_spec(mode.clone()), Path::new("/h"), Path::new("/r")).expect("spec"));
            let namespaces = json["linux"]["namespaces"].as_array().expect("namespaces");
            let types: Vec<&str> = namespaces.iter().filter_map(|n| n["type"].as_str()).collect();
            assert!(types.contains(&"pid") && types.contains(&"mount") && types.contains(&"ipc"), "{types:?}");
            assert!(types.contains(&"uts"));
            assert_eq!(types.contains(&"network"), want_net, "{mode:?}: {types:?}");
            assert!(!types.contains(&"user") && !types.contains(&"cgroup"));
            let path = namespaces.iter().find(|n| n["type"] == "network").and_then(|n| n["path"].as_str());
            assert_eq!(path, want_path, "{mode:?}");
        }
    }

    #[test]
    fn process_user_env_cwd_and_root() {
        let json = to_json(&build_spec(&run_spec(NetworkMode::Host), Path::new("/h"), Path::new("/r")).expect("spec"));
        let p = &json["process"];
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["gid"], 1001);
        assert_eq!(p["user"]["additionalGids"], serde_json::json!([7]));
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["terminal"], false);
        assert_eq!(p["env"], serde_json::json!(["FOO=bar", format!("PATH={DEFAULT_PATH}"), "HOME=/home/app"]));
        assert_eq!(json["root"]["path"], "/merged");
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["hostname"], "box");
        assert_eq!(json["linux"]["maskedPaths"].as_array().map(Vec::len), Some(MASKED_PATHS.len()));
        assert_eq!(json["linux"]["readonlyPaths"].as_array().map(Vec::len), Some(READONLY_PATHS.len()));
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], false);
    }

    #[test]
    fn privileged_step_has_no_filter_no_masks_and_every_device() {
        let mut run = run_spec(NetworkMode::Host);
        run.privileged = true;
        let json = to_json(&build_spec(&run, Path::new("/h"), Path::new("/r")).expect("spec"));
        let linux = &json["linux"];
        assert!(linux.get("seccomp").is_none_or(|s| s.is_null()), "no filter: {}", linux["seccomp"]);
        assert_eq!(linux["maskedPaths"], serde_json::json!([]));
        assert_eq!(linux["readonlyPaths"], serde_json::json!([]));
        assert_eq!(linux["resources"]["devices"], serde_json::json!([{"allow": true, "access": "rwm"}]));
        let devices = linux["devices"].as_array().expect("host devices");
        assert!(devices.iter().any(|d| d["path"] == "/dev/null" && d["type"] == "c"), "{devices:?}");
        assert_eq!(json["process"]["noNewPrivileges"], false);
        let caps = json["process"]["capabilities"]["bounding"].as_array().expect("caps").len();
        assert!(caps > DEFAULT_CAPABILITIES.len(), "{caps} capabilities");
        let sys = json["mounts"].as_array().expect("mounts").iter().find(|m| m["destination"] == "/sys").cloned();
        assert!(sys.is_some_and(|m| m["options"].as_array().is_some_and(|o| o.contains(&"rw".into()))));
    }

    #[test]
    fn env_defaults_do_not_override() {
        let mut run = run_spec(NetworkMode::Host);
        run.env = vec!["PATH=/x".into(), "HOME=/h".into()];
        assert_eq!(process_env(&run), ["PATH=/x", "HOME=/h"]);
        run.env.clear();
        run.user.home = None;
        assert_eq!(process_env(&run), [format!("PATH={DEFAULT_PATH}"), "HOME=/".to_string()]);
    }

    #[test]
    fn mounts_system_first_then_user_parents_first() {
        let json = to_json(&build_spec(&run_spec(NetworkMode::Host), Path::new("/h"), Path::new("/r")).expect("spec"));
        let mounts = json["mounts"].as_array().expect("mounts");
        let dests: Vec<&str> = mounts.iter().filter_map(|m| m["destination"].as_str()).collect();
        let mut want: Vec<&str> = SYSTEM_MOUNT_DESTINATIONS.to_vec();
        want.extend(["/a", "/a/b", "/a/t"]);
        assert_eq!(dests, want);
        assert_eq!(mounts[5]["options"], serde_json::json!(["nosuid", "noexec", "nodev", "ro"]), "/sys is ro");
        assert_eq!(mounts[6]["source"], "/h");
        assert_eq!(mounts[7]["source"], "/r");
        assert_eq!(mounts[8]["options"], serde_json::json!(["rbind", "rw"]));
        assert_eq!(mounts[9]["options"], serde_json::json!(["rbind", "ro"]));
        assert_eq!(mounts[10]["type"], "tmpfs");
        assert_eq!(mounts[10]["options"], serde_json::json!(["nosuid", "nodev", "size=4096"]));
    }

    #[test]
    fn relative_mount_destination_is_rejected() {
        let mut run = run_spec(NetworkMode::Host);
        run.mounts[0].destination = "rel".into();
        let err = build_spec(&run, Path::new("/h"), Path::new("/r")).expect_err("relative");
        assert!(matches!(err, RuntimeError::BadMountDestination { ref destination } if destination == "rel"));
    }

    #[test]
    fn default_resources_limit_pids_only() {
        let json = to_json(&build_spec(&run_spec(NetworkMode::Host), Path::new("/h"), Path::new("/r")).expect("spec"));
        let resources = &json["linux"]["resources"];
        assert_eq!(resources["pids"]["limit"], crate::runtime::options::DEFAULT_PIDS_LIMIT);
        assert!(resources.get("memory").is_none() && resources.get("cpu").is_none(), "{resources}");
        assert_eq!(json["process"]["rlimits"], serde_json::json!([]));
        let shm = json["mounts"].as_array().expect("mounts").iter().find(|m| m["destination"] == "/dev/shm").cloned();
        assert_eq!(shm.map(|m| m["options"][4].clone()), Some(serde_json::json!("size=65536k")));
    }

    #[test]
    fn ulimits_are_clamped_to_what_the_process_may_set() {
        let u = Ulimit { typ: PosixRlimitType::RlimitNofile, soft: 30_000, hard: 1 << 20 };
        assert_eq!(settable(&u, None), (30_000, 1 << 20));
        assert_eq!(settable(&u, Some(20_000)), (20_000, 20_000));
        assert_eq!(settable(&u, Some(50_000)), (30_000, 50_000));
        let unlimited = Ulimit { typ: PosixRlimitType::RlimitCore, soft: u64::MAX, hard: u64::MAX };
        assert_eq!(settable(&unlimited, Some(4096)), (4096, 4096));
    }

    #[test]
    fn options_become_cgroup_limits_rlimits_and_shm_size() {
        use crate::runtime::options::Ulimit;
        use oci_spec::runtime::PosixRlimitType;
        let mut run = run_spec(NetworkMode::Host);
        run.options = crate::runtime::ContainerOptions {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpu_shares: Some(512),
            cpu_period: Some(100_000),
            cpu_quota: Some(50_000),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(100),
            extra_hosts: vec![],
            shm_size: 128 << 20,
            ulimits: vec![Ulimit { typ: PosixRlimitType::RlimitNofile, soft: 100, hard: 200 }],
        };
        let json = to_json(&build_spec(&run, Path::new("/h"), Path::new("/r")).expect("spec"));
        let r = &json["linux"]["resources"];
        assert_eq!(r["memory"], serde_json::json!({"limit": 64 << 20, "swap": -1}));
        assert_eq!(r["cpu"], serde_json::json!({"shares": 512, "period": 100_000, "quota": 50_000, "cpus": "0"}));
        assert_eq!(r["pids"]["limit"], 100);
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}])
        );
        let mounts = json["mounts"].as_array().expect("mounts");
        let shm: Vec<_> = mounts.iter().filter(|m| m["destination"] == "/dev/shm").collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["options"], serde_json::json!(["nosuid", "noexec", "nodev", "mode=1777", "size=131072k"]));
        run.options.pids_limit = None;
        let json = to_json(&build_spec(&run, Path::new("/h"), Path::new("/r")).expect("spec"));
        assert!(json["linux"]["resources"].get("pids").is_none());
    }

    #[test]
    fn a_step_tmpfs_at_dev_shm_replaces_the_default_one() {
        let mut run = run_spec(NetworkMode::Host);
        run.tmpfs.push(TmpfsMount { destination: "/dev/shm".into(), size: Some(1 << 20) });
        let json = to_json(&build_spec(&run, Path::new("/h"), Path::new("/r")).expect("spec"));
        let shm: Vec<_> =
            json["mounts"].as_array().expect("mounts").iter().filter(|m| m["destination"] == "/dev/shm").collect();
        assert_eq!(shm.len(), 1, "{shm:?}");
        assert_eq!(shm[0]["source"], "tmpfs");
        assert_eq!(shm[0]["options"], serde_json::json!(["nosuid", "nodev", "size=1048576"]));
    }
}
