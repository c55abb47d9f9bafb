//! Secret mounts: values that never touch a disk (see the module above).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use rbuild_cache::Store;

use super::{MountError, MountSources, PreparedMounts, io_err};

/// A secret's value. Its `Debug` shows only the length, so it cannot end up in a log by accident.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes>)", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

impl PreparedMounts {
    /// This step's secrets tmpfs, mounted on first use.
    pub(super) fn secret_fs(&mut self, store: &Store, sources: &MountSources) -> Result<PathBuf, MountError> {
        if let Some(fs) = &self.secret_fs {
            return Ok(fs.clone());
        }
        let dir = store.tmp_dir("secrets")?;
        self.dirs.push(dir.clone());
        let fs = dir.join("fs");
        fs::create_dir(&fs).map_err(io_err("create", &fs))?;
        // Room for every secret plus the runtime bundle.
        let size: usize = sources.secrets.values().map(|s| s.bytes().len()).sum::<usize>() + (4 << 20);
        nix::mount::mount(
            Some("tmpfs"),
            &fs,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=0700,size={size}").as_str()),
        )
        .map_err(|e| MountError::Io(rbuild_types::IoError::new("mount a tmpfs at", fs.clone(), e.into())))?;
        self.secret_fs = Some(fs.clone());
        self.bundle_dir = Some(fs.clone());
        Ok(fs)
    }
}

pub(super) fn write_secret(path: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), MountError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err("create", path))?;
    file.write_all(value).map_err(io_err("write", path))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
    Ok(())
}
