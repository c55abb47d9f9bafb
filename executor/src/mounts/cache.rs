//! Cache mounts: entries kept across builds under the store, locked as their sharing says, listed for `du` and
//! removed by `prune`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rbuild_cache::Store;
use rbuild_solver::CacheSharing;
use rbuild_types::Digest;

use super::{MountError, PreparedMounts, io_err};
use crate::copy::{CopyOptions, copy};

/// The directory under a store root that holds cache mounts.
pub const CACHE_MOUNTS_DIR: &str = "cachemounts";

/// Where cache mounts of the store at `store_root` live.
pub fn cache_mounts_dir(store_root: &Path) -> PathBuf {
    store_root.join(CACHE_MOUNTS_DIR)
}

impl PreparedMounts {
    /// The data directory of cache `id`, locked as `sharing` says; created (from `seed`, if given) when new.
    pub(super) fn cache(
        &mut self,
        store: &Store,
        id: &str,
        sharing: CacheSharing,
        seed: Option<(&Path, &str)>,
        owner: (u32, u32, u32),
    ) -> Result<PathBuf, MountError> {
        let entry = cache_entry_dir(store.root(), id);
        fs::create_dir_all(&entry).map_err(io_err("create", &entry))?;
        let id_file = entry.join("id");
        if !id_file.exists() {
            fs::write(&id_file, id).map_err(io_err("write", &id_file))?;
        }
        // The entry's mtime is when it was last used: `prune --filter until=` keeps recently used caches.
        if let Err(err) = File::open(&entry).and_then(|f| f.set_modified(std::time::SystemTime::now())) {
            tracing::debug!(path = %entry.display(), error = %err, "marking a cache mount as used");
        }
        let lock_path = entry.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let data = entry.join("data");
        if !data.is_dir() {
            lock.lock().map_err(io_err("lock", &lock_path))?;
            let made = if data.is_dir() { Ok(()) } else { init_cache(store, &entry, id, seed, owner) };
            lock.unlock().map_err(io_err("unlock", &lock_path))?;
            made?;
        }
        match sharing {
            CacheSharing::Shared => lock.lock_shared().map_err(io_err("lock", &lock_path))?,
            CacheSharing::Locked => lock.lock().map_err(io_err("lock", &lock_path))?,
            CacheSharing::Private => match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    // In use: this step gets its own copy, thrown away afterwards.
                    let dir = store.tmp_dir("cache-private")?;
                    self.dirs.push(dir.clone());
                    copy(&entry, &["/data".to_string()], &|_| false, &dir, "/data", &KEEP_OWNER)
                        .map_err(|source| MountError::Seed { id: id.to_string(), source })?;
                    return Ok(dir.join("data"));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(MountError::Io(rbuild_types::IoError::new("lock", lock_path, e)));
                }
            },
        }
        self.locks.push(lock);
        Ok(data)
    }
}

const KEEP_OWNER: CopyOptions = CopyOptions { chown: None, chmod: None, extract_archives: false, keep_owner: true };

/// The entry directory of cache `id`: named by the id's digest, so any id is a safe file name.
fn cache_entry_dir(store_root: &Path, id: &str) -> PathBuf {
    cache_mounts_dir(store_root).join(Digest::of(id.as_bytes()).hex())
}

/// Makes `entry/data`: a copy of `seed` (root, source), or an empty directory with the mount's owner and mode.
fn init_cache(
    store: &Store,
    entry: &Path,
    id: &str,
    seed: Option<(&Path, &str)>,
    owner: (u32, u32, u32),
) -> Result<(), MountError> {
    let tmp = store.tmp_dir("cache-init")?;
    let made = (|| {
        let data = tmp.join("data");
        match seed {
            Some((root, source)) => copy(root, &[source.to_string()], &|_| false, &tmp, "/data", &KEEP_OWNER)
                .map_err(|source| MountError::Seed { id: id.to_string(), source })?,
            None => create_owned_dirs(&data, owner)?,
        }
        let dest = entry.join("data");
        fs::rename(&data, &dest).map_err(io_err("move into place", &dest))
    })();
    let _ = fs::remove_dir_all(&tmp);
    made
}

/// Creates `path` and missing parents with `mode`, owned by `uid`:`gid`.
pub(super) fn create_owned_dirs(path: &Path, (mode, uid, gid): (u32, u32, u32)) -> Result<(), MountError> {
    let mut missing = Vec::new();
    let mut cur = path;
    while fs::symlink_metadata(cur).is_err() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        fs::create_dir(dir).map_err(io_err("create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io_err("chown", dir))?;
    }
    Ok(())
}

/// One cache mount in a store, for `rbuild du`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMountUsage {
    /// The `id` it was mounted with (the target path when none was given).
    pub id: String,
    pub path: PathBuf,
    /// Bytes of file content in it.
    pub size: u64,
}

/// Every cache mount of the store at `store_root`, sorted by id.
pub fn list_cache_mounts(store_root: &Path) -> Result<Vec<CacheMountUsage>, MountError> {
    let dir = cache_mounts_dir(store_root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MountError::Io(rbuild_types::IoError::new("list", dir, e))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        let path = entry.path();
        if !path.join("data").is_dir() {
            continue;
        }
        let id = fs::read_to_string(path.join("id")).unwrap_or_default();
        out.push(CacheMountUsage { id, size: tree_size(&path.join("data")), path });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Total bytes of every cache mount of the store.
pub fn cache_mounts_size(store_root: &Path) -> Result<u64, MountError> {
    Ok(list_cache_mounts(store_root)?.iter().map(|c| c.size).sum())
}

/// What [`remove_cache_mounts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedCacheMounts {
    pub removed: usize,
    pub bytes: u64,
    /// Entries a running step holds; left alone.
    pub in_use: usize,
}

/// Removes every cache mount of the store that no step is using.
pub fn remove_cache_mounts(store_root: &Path) -> Result<PrunedCacheMounts, MountError> {
    let dir = cache_mounts_dir(store_root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PrunedCacheMounts::default()),
        Err(e) => return Err(MountError::Io(rbuild_types::IoError::new("list", dir, e))),
    };
    let mut out = PrunedCacheMounts::default();
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".removing-") {
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            continue;
        }
        let lock_path = path.join("lock");
        let lock = match File::open(&lock_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(MountError::Io(rbuild_types::IoError::new("open", lock_path, e))),
        };
        if let Some(lock) = &lock {
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    out.in_use += 1;
                    continue;
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(MountError::Io(rbuild_types::IoError::new("lock", lock_path, e)));
                }
            }
        }
        let size = tree_size(&path.join("data"));
        // Renamed first, so a step starting now makes a fresh entry instead of finding a half-removed one.
        let doomed = dir.join(format!(".removing-{name}-{}", std::process::id()));
        fs::rename(&path, &doomed).map_err(io_err("move aside", &path))?;
        drop(lock);
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        out.removed += 1;
        out.bytes += size;
    }
    Ok(out)
}

fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    let Ok(entries) = fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| tree_size(&e.path())).sum()
}
