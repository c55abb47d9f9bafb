//! What `RUN --security=insecure` changes in a container's config, as BuildKit's insecure mode (docker's
//! `--privileged`) does: every capability, no seccomp filter, no masked or read-only paths, every device allowed
//! in the cgroup, the host's devices created in the container's `/dev`, and a writable `/sys`.
//!
//! The host's devices are read from a directory given by the caller (`/dev` in production), so the listing can be
//! tested without root; it skips what containerd's `HostDevices` skips (the pseudo-terminal, shared-memory and
//! message-queue directories, which the container mounts itself, and `/dev/console`).

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};

use super::RuntimeError;

/// Every capability the OCI spec knows, in the kernel's bit order (CAP_CHOWN is bit 0, CAP_CHECKPOINT_RESTORE 40).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capability set of a privileged step: every capability rbuild itself holds (a runtime cannot grant more;
/// a VM or an outer container may have dropped some), as containerd's `WithAllCurrentCapabilities` does.
pub fn all_capabilities() -> HashSet<Capability> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    capabilities_in(effective_mask(&status).unwrap_or(u64::MAX))
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_mask(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The known capabilities whose bits are set in `mask`.
pub fn capabilities_in(mask: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES.into_iter().enumerate().filter(|(bit, _)| mask >> bit & 1 == 1).map(|(_, c)| c).collect()
}

/// Directories under `/dev` the container mounts itself, or that hold no devices of the host's to copy.
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The character and block devices under `dev` (recursively), as `linux.devices` entries at the same paths under
/// `/dev`. Entries that vanish or cannot be read while listing are skipped, as containerd does.
pub fn host_devices(dev: &Path) -> Result<Vec<LinuxDevice>, RuntimeError> {
    let mut out = Vec::new();
    let mut pending = vec![(dev.to_path_buf(), std::path::PathBuf::from("/dev"))];
    while let Some((dir, inside)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                    pending.push((entry.path(), inside.join(&name)));
                }
                continue;
            }
            let typ = if kind.is_char_device() {
                LinuxDeviceType::C
            } else if kind.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if inside == Path::new("/dev") && name == "console" {
                continue;
            }
            let rdev = meta.rdev();
            let device = LinuxDeviceBuilder::default()
                .path(inside.join(&name))
                .typ(typ)
                .major(i64::from(libc::major(rdev)))
                .minor(i64::from(libc::minor(rdev)))
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(|source| RuntimeError::Spec { source })?;
            out.push(device);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::DEFAULT_CAPABILITIES as DEFAULT_CAPS;

    #[test]
    fn all_capabilities_are_the_kernels_bits_0_to_40() {
        let json = serde_json::to_value(capabilities_in(u64::MAX)).unwrap_or_default();
        let names: HashSet<String> =
            json.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
        assert_eq!(names.len(), 41);
        for name in ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE", "CAP_MKNOD"] {
            assert!(names.contains(name), "{name} missing: {names:?}");
        }
    }

    #[test]
    fn capabilities_follow_the_mask_bit_by_bit() {
        let status = "Name:\tx\nCapEff:\t000001fffeffffff\nCapBnd:\t0\n";
        let caps = capabilities_in(effective_mask(status).unwrap_or_default());
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource), "bit 24 is clear");
        assert!(caps.contains(&Capability::CheckpointRestore) && caps.contains(&Capability::Chown));
        assert_eq!(capabilities_in(0xa80425fb), DEFAULT_CAPS.into_iter().collect());
    }

    #[test]
    fn host_devices_lists_char_devices_and_skips_pts_and_console() {
        let devices = host_devices(Path::new("/dev")).unwrap_or_default();
        let null = devices.iter().find(|d| d.path() == Path::new("/dev/null"));
        let null = null.unwrap_or_else(|| panic!("/dev/null missing: {devices:?}"));
        assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
        assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts") && d.path() != Path::new("/dev/console")));
    }
}
