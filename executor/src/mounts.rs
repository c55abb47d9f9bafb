//! `RUN --mount` on the host side: what each mount type becomes before runc starts, and how it is undone.
//!
//! Every mount is a bind of a host path (or a fresh tmpfs) into the container, never a write into the step's
//! rootfs, so nothing but runc's mount-point stubs can reach the layer, and those are removed by
//! [`crate::runtime::stubs`]. Per type:
//!
//! - **bind**: the input's layers are overlaid with a throwaway upper directory (or a single snapshot is bound
//!   read-only as is); `rw` writes land in that upper and are discarded with it.
//! - **cache**: `<store>/cachemounts/<sha256(id)>/data`, kept across builds. Sharing is a file lock on the entry:
//!   `shared` holds it shared, `locked` exclusively (steps wait for each other), `private` tries it exclusively and,
//!   when someone else holds it, works on a copy that is thrown away. `rbuild prune` takes the lock exclusively
//!   too, so a cache in use is never removed from under a step. The sizes and removal are exposed here
//!   ([`list_cache_mounts`], [`remove_cache_mounts`]) for `du` and `prune`.
//! - **secret**: written to a private tmpfs mounted for this step only (and the runtime bundle goes there too,
//!   because an `env=` secret is part of `config.json`), bound read-only; the tmpfs is unmounted afterwards, so a
//!   secret value never touches a disk, the graph, a cache key or the index.
//! - **ssh**: a socket owned by the step's `uid`/`gid` with its `mode`, whose connections are forwarded to the
//!   agent socket given on the command line, so a non-root step can use an agent the host user owns.
//! - **tmpfs**: mounted by runc itself.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::mount::{MntFlags, MsFlags};
use rbuild_cache::Store;
use rbuild_solver::{CacheSharing, ExecMount, Output};
use rbuild_types::Digest;

use crate::copy::{CopyOptions, copy};
use crate::runtime::{BindMount, TmpfsMount};
use crate::snapshotter::{Rootfs, Snapshotter};
use crate::user::resolve_in_root;

/// The directory under a store root that holds cache mounts.
pub const CACHE_MOUNTS_DIR: &str = "cachemounts";

/// Where cache mounts of the store at `store_root` live.
pub fn cache_mounts_dir(store_root: &Path) -> PathBuf {
    store_root.join(CACHE_MOUNTS_DIR)
}

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

/// What `--secret` and `--ssh` gave the build: values by id, never part of the graph.
#[derive(Debug, Default)]
pub struct MountSources {
    pub secrets: BTreeMap<String, SecretValue>,
    /// SSH agent sockets by id.
    pub ssh: BTreeMap<String, PathBuf>,
}

/// Errors of preparing mounts and of managing cache mounts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("secret {id:?} is required but was not given")]
    MissingSecret { id: String },
    #[error("SSH agent {id:?} is required but was not given")]
    MissingSsh { id: String },
    #[error("mount input {input} does not exist")]
    NoInput { input: usize },
    #[error("mount source {source_path:?} does not exist in the mounted filesystem")]
    NoSource { source_path: String },
    #[error("layer {layer} of a mounted filesystem is missing from the store")]
    MissingLayer { layer: Digest },
    #[error(transparent)]
    Io(#[from] rbuild_types::IoError),
    #[error("mounting the filesystem of a bind or cache mount")]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error("assembling the filesystem of a bind mount")]
    Snapshot(#[from] crate::snapshotter::SnapshotError),
    #[error("seeding cache mount {id:?}")]
    Seed {
        id: String,
        #[source]
        source: crate::copy::CopyError,
    },
    #[error("making a temporary directory")]
    Tmp(#[from] rbuild_cache::StoreError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Io(rbuild_types::IoError::new(op, path, source))
}

/// The host side of a step's mounts; everything is undone when dropped.
#[derive(Debug, Default)]
pub struct PreparedMounts {
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    /// `NAME=value` entries for `env=` secrets. Never log these.
    pub env: Vec<String>,
    /// A tmpfs for the runtime bundle, when a secret is in play.
    pub bundle_dir: Option<PathBuf>,
    proxies: Vec<SshProxy>,
    secret_fs: Option<PathBuf>,
    overlays: Vec<Rootfs>,
    snapshotter: Snapshotter,
    locks: Vec<File>,
    dirs: Vec<PathBuf>,
}

impl Drop for PreparedMounts {
    fn drop(&mut self) {
        self.proxies.clear();
        if let Some(fs) = self.secret_fs.take()
            && let Err(err) = nix::mount::umount2(&fs, MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %fs.display(), error = %err, "unmounting the secrets tmpfs");
        }
        for overlay in self.overlays.drain(..).rev() {
            if let Err(err) = overlay.finish() {
                tracing::warn!(error = %err, "unmounting a mount's overlay");
            }
        }
        // Closing the files releases the cache locks.
        self.locks.clear();
        for dir in self.dirs.drain(..).rev() {
            if let Err(err) = fs::remove_dir_all(&dir)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %dir.display(), error = %err, "removing a mount's work directory");
            }
        }
    }
}

/// Prepares `mounts` of a step whose inputs are `inputs` (input 0 is its rootfs), on overlayfs.
pub fn prepare(
    store: &Store,
    sources: &MountSources,
    mounts: &[ExecMount],
    inputs: &[Output],
) -> Result<PreparedMounts, MountError> {
    prepare_with(store, sources, mounts, inputs, Snapshotter::Overlayfs)
}

/// [`prepare`], with bind mounts of multi-layer inputs assembled by `snapshotter`.
pub fn prepare_with(
    store: &Store,
    sources: &MountSources,
    mounts: &[ExecMount],
    inputs: &[Output],
    snapshotter: Snapshotter,
) -> Result<PreparedMounts, MountError> {
    let mut p = PreparedMounts::default();
    p.snapshotter = snapshotter;
    for mount in mounts {
        match mount {
            ExecMount::Bind { target, input, source, readonly } => {
                let output = inputs.get(*input).ok_or(MountError::NoInput { input: *input })?;
                let root = p.view(store, output, !*readonly)?;
                let host = resolve_in_root(&root, Path::new(source)).map_err(io_err("resolve", &root))?;
                if fs::symlink_metadata(&host).is_err() {
                    return Err(MountError::NoSource { source_path: source.clone() });
                }
                p.binds.push(BindMount { source: host, destination: target.clone(), readonly: *readonly });
            }
            ExecMount::Cache { target, id, sharing, from, source, mode, uid, gid, readonly } => {
                let seed = match from {
                    Some(i) => {
                        let output = inputs.get(*i).ok_or(MountError::NoInput { input: *i })?;
                        Some(p.view(store, output, false)?)
                    }
                    None => None,
                };
                let owner = (*mode, *uid, *gid);
                let data = p.cache(store, id, *sharing, seed.as_deref().map(|r| (r, source.as_str())), owner)?;
                let host = if from.is_some() {
                    data
                } else {
                    let host = resolve_in_root(&data, Path::new(source)).map_err(io_err("resolve", &data))?;
                    if !host.exists() {
                        create_owned_dirs(&host, owner)?;
                    }
                    host
                };
                p.binds.push(BindMount { source: host, destination: target.clone(), readonly: *readonly });
            }
            ExecMount::Tmpfs { target, size } => {
                p.tmpfs.push(TmpfsMount { destination: target.clone(), size: *size });
            }
            ExecMount::Secret { id, target, env, required, mode, uid, gid } => {
                let Some(value) = sources.secrets.get(id) else {
                    if *required {
                        return Err(MountError::MissingSecret { id: id.clone() });
                    }
                    continue;
                };
                if let Some(name) = env {
                    p.env.push(format!("{name}={}", String::from_utf8_lossy(value.bytes())));
                }
                let secret_dir = p.secret_fs(store, sources)?;
                if let Some(target) = target {
                    let file = secret_dir.join(format!("secret-{}", p.binds.len()));
                    write_secret(&file, value.bytes(), *mode, *uid, *gid)?;
                    p.binds.push(BindMount { source: file, destination: target.clone(), readonly: true });
                }
            }
            ExecMount::Ssh { id, target, required, mode, uid, gid } => {
                let Some(agent) = sources.ssh.get(id) else {
                    if *required {
                        return Err(MountError::MissingSsh { id: id.clone() });
                    }
                    continue;
                };
                let dir = store.tmp_dir("ssh")?;
                p.dirs.push(dir.clone());
                let socket = dir.join("agent.sock");
                p.proxies.push(SshProxy::start(agent.clone(), &socket, *mode, *uid, *gid)?);
                p.binds.push(BindMount { source: socket, destination: target.clone(), readonly: false });
            }
        }
    }
    Ok(p)
}

impl PreparedMounts {
    /// A directory showing `output`; writable views get a throwaway upper layer.
    fn view(&mut self, store: &Store, output: &Output, writable: bool) -> Result<PathBuf, MountError> {
        let layers = match output {
            Output::Dir(dir) if !writable => return Ok(dir.clone()),
            Output::Dir(dir) => vec![dir.clone()],
            Output::RootFs(layers) => {
                let mut lowers = Vec::new();
                for layer in layers.iter().rev() {
                    let path = store.snapshot_path(layer);
                    if !path.is_dir() {
                        return Err(MountError::MissingLayer { layer: layer.clone() });
                    }
                    lowers.push(path);
                }
                lowers
            }
        };
        if !writable && layers.len() == 1 {
            return Ok(layers[0].clone());
        }
        let dir = store.tmp_dir("mount")?;
        self.dirs.push(dir.clone());
        let mount = Rootfs::view(self.snapshotter, &layers, &dir)?;
        let merged = mount.target().to_path_buf();
        self.overlays.push(mount);
        Ok(merged)
    }

    /// The data directory of cache `id`, locked as `sharing` says; created (from `seed`, if given) when new.
    fn cache(
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

    /// This step's secrets tmpfs, mounted on first use.
    fn secret_fs(&mut self, store: &Store, sources: &MountSources) -> Result<PathBuf, MountError> {
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
fn create_owned_dirs(path: &Path, (mode, uid, gid): (u32, u32, u32)) -> Result<(), MountError> {
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

fn write_secret(path: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), MountError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err("create", path))?;
    file.write_all(value).map_err(io_err("write", path))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
    Ok(())
}

/// A listening socket forwarding each connection to an SSH agent; stops accepting when dropped.
#[derive(Debug)]
struct SshProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SshProxy {
    fn start(agent: PathBuf, socket: &Path, mode: u32, uid: u32, gid: u32) -> Result<SshProxy, MountError> {
        let listener = UnixListener::bind(socket).map_err(io_err("listen on", socket))?;
        std::os::unix::fs::chown(socket, Some(uid), Some(gid)).map_err(io_err("chown", socket))?;
        fs::set_permissions(socket, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rbuild-ssh-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(conn) => forward(conn, &agent),
                        Err(err) => tracing::debug!(error = %err, "ssh proxy accept"),
                    }
                }
            })
            .map_err(io_err("start a thread for", socket))?;
        Ok(SshProxy { socket: socket.to_path_buf(), stop, thread: Some(thread) })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pipes `client` to a new connection to `agent`, both ways, on threads of their own.
fn forward(client: UnixStream, agent: &Path) {
    let upstream = match UnixStream::connect(agent) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(agent = %agent.display(), error = %err, "cannot reach the SSH agent");
            return;
        }
    };
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    match (client.try_clone(), upstream.try_clone()) {
        (Ok(client2), Ok(upstream2)) => {
            let _ = std::thread::Builder::new().name("rbuild-ssh-up".into()).spawn(pipe(client, upstream));
            let _ = std::thread::Builder::new().name("rbuild-ssh-down".into()).spawn(pipe(upstream2, client2));
        }
        (Err(err), _) | (_, Err(err)) => tracing::warn!(error = %err, "ssh proxy"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn has_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> bool {
        fs::metadata(path).map(|m| m.uid() == uid && m.gid() == gid && m.mode() & 0o7777 == mode).unwrap_or(false)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        (dir, store)
    }

    fn cache(id: &str, sharing: CacheSharing) -> ExecMount {
        ExecMount::Cache {
            target: "/cache".into(),
            id: id.into(),
            sharing,
            from: None,
            source: "/".into(),
            mode: 0o750,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            readonly: false,
        }
    }

    #[test]
    fn cache_mounts_persist_are_listed_and_pruned() {
        let (dir, store) = store();
        let sources = MountSources::default();
        let p = prepare(&store, &sources, &[cache("go-build", CacheSharing::Shared)], &[]).expect("prepare");
        let host = p.binds[0].source.clone();
        assert!(host.starts_with(cache_mounts_dir(dir.path())), "{}", host.display());
        assert!(has_owner_and_mode(&host, nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw(), 0o750));
        fs::write(host.join("f"), b"12345").expect("write");
        drop(p);
        // The next step sees what the last one left.
        let p = prepare(&store, &sources, &[cache("go-build", CacheSharing::Locked)], &[]).expect("prepare");
        assert_eq!(fs::read(p.binds[0].source.join("f")).expect("read"), b"12345");
        let listed = list_cache_mounts(dir.path()).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id.as_str(), listed[0].size), ("go-build", 5));
        // A cache in use is not pruned.
        let pruned = remove_cache_mounts(dir.path()).expect("prune");
        assert_eq!(pruned, PrunedCacheMounts { removed: 0, bytes: 0, in_use: 1 });
        drop(p);
        let pruned = remove_cache_mounts(dir.path()).expect("prune");
        assert_eq!(pruned, PrunedCacheMounts { removed: 1, bytes: 5, in_use: 0 });
        assert!(list_cache_mounts(dir.path()).expect("list").is_empty());
        assert_eq!(cache_mounts_size(dir.path()).expect("size"), 0);
    }

    #[test]
    fn private_cache_in_use_gets_a_throwaway_copy() {
        let (_dir, store) = store();
        let sources = MountSources::default();
        let first = prepare(&store, &sources, &[cache("p", CacheSharing::Private)], &[]).expect("prepare");
        fs::write(first.binds[0].source.join("a"), b"x").expect("write");
        let second = prepare(&store, &sources, &[cache("p", CacheSharing::Private)], &[]).expect("prepare");
        assert_ne!(first.binds[0].source, second.binds[0].source);
        assert!(second.binds[0].source.join("a").is_file(), "the copy starts from the cache's content");
        fs::write(second.binds[0].source.join("b"), b"y").expect("write");
        let copy = second.binds[0].source.clone();
        drop(second);
        assert!(!copy.exists(), "the copy is removed");
        assert!(!first.binds[0].source.join("b").exists(), "writes to the copy are discarded");
    }

    #[test]
    fn cache_ids_are_separate_and_source_is_a_subdirectory() {
        let (_dir, store) = store();
        let sources = MountSources::default();
        let mut m = cache("a", CacheSharing::Shared);
        if let ExecMount::Cache { source, .. } = &mut m {
            *source = "/sub/dir".into();
        }
        let p = prepare(&store, &sources, &[m, cache("b", CacheSharing::Shared)], &[]).expect("prepare");
        assert!(p.binds[0].source.ends_with("data/sub/dir") && p.binds[0].source.is_dir());
        assert_ne!(p.binds[0].source.parent(), p.binds[1].source.parent());
    }

    #[test]
    fn missing_secrets_and_agents_fail_only_when_required() {
        let (_dir, store) = store();
        let sources = MountSources::default();
        let secret = |required| ExecMount::Secret {
            id: "tok".into(),
            target: Some("/run/secrets/tok".into()),
            env: None,
            required,
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        let p = prepare(&store, &sources, &[secret(false)], &[]).expect("optional");
        assert!(p.binds.is_empty() && p.bundle_dir.is_none());
        let err = prepare(&store, &sources, &[secret(true)], &[]).expect_err("required");
        assert!(matches!(err, MountError::MissingSecret { ref id } if id == "tok"), "{err}");
        let ssh =
            ExecMount::Ssh { id: "default".into(), target: "/s".into(), required: true, mode: 0o600, uid: 0, gid: 0 };
        let err = prepare(&store, &sources, &[ssh], &[]).expect_err("required");
        assert!(matches!(err, MountError::MissingSsh { .. }), "{err}");
    }

    #[test]
    fn bind_needs_an_existing_source() {
        let (dir, store) = store();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("sub")).expect("mkdir");
        let bind =
            |source: &str| ExecMount::Bind { target: "/m".into(), input: 1, source: source.into(), readonly: true };
        let inputs = [Output::RootFs(vec![]), Output::Dir(ctx.clone())];
        let p = prepare(&store, &MountSources::default(), &[bind("/sub")], &inputs).expect("prepare");
        assert_eq!(p.binds[0].source, ctx.join("sub"));
        assert!(p.binds[0].readonly);
        let err = prepare(&store, &MountSources::default(), &[bind("/nope")], &inputs).expect_err("missing");
        assert!(matches!(err, MountError::NoSource { .. }), "{err}");
        let err = prepare(
            &store,
            &MountSources::default(),
            &[ExecMount::Bind { target: "/m".into(), input: 7, source: "/".into(), readonly: true }],
            &inputs,
        )
        .expect_err("no input");
        assert!(matches!(err, MountError::NoInput { input: 7 }));
    }

    #[test]
    fn secret_debug_hides_the_value() {
        let s = SecretValue::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "SecretValue(<7 bytes>)");
    }
}
