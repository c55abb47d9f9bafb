//! The on-disk store (layout in DESIGN.md): `blobs/sha256/<hex>`, `snapshots/<diff_id hex>/`, `index/` and `tmp/`.
//!
//! The index is a directory of small JSON files, one per cache key, tag and layer, rather than an embedded
//! database: every update is a single atomic rename, so any number of rbuild processes can read and write it at
//! once without a database lock serialising whole builds, and a crash can only lose the entry being written.
//! Each process works in its own `tmp/<pid>-<n>/` directory, held by a file lock; a later process removes the tmp
//! directories whose lock is free (their process died). Builds hold the store's lock shared; prune takes it
//! exclusively, so nothing is collected from under a running build.

use rbuild_solver::explain::StepInputs;
use rbuild_solver::{CacheError, CacheRecord, CacheStore, Output};
use rbuild_types::{Digest, IoError};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tmpdirs::{collect_dead_tmp, own_tmp_dir, remove_unmounted, tmp_lock_path};

mod tmpdirs;

/// A store operation that failed, with the path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("blob {digest} in the store is corrupt: its content hashes to {actual}")]
    CorruptBlob { digest: Digest, actual: Digest },
    #[error("store {path}: malformed index entry")]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no image named {0:?} in the local store")]
    NoSuchImage(String),
    #[error("store {path} is owned by uid {owner}, not by this user (uid {user}): refusing to use it")]
    NotOwned { path: PathBuf, owner: u32, user: u32 },
}

/// Called with the tmp dirs of dead processes before they are collected, so that whatever those processes left
/// running there (containers) is stopped before their mounts are detached. Returns a line per thing it stopped.
pub type Reaper<'a> = &'a dyn Fn(&[PathBuf]) -> Vec<String>;

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io(IoError::new(op, path, source))
}

/// A compressed form of a layer, made the first time a push or export needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What a tag points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// The image config blob (its digest is the image ID).
    pub config: Digest,
    /// The manifest blob, when one exists locally (pulled, or pushed/exported once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// A multi-platform image: the config of each platform's image (`config` is one of them). Empty for a
    /// single-platform image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Digest>,
}

/// How a store is held: builds share it; garbage collection owns it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    /// Waits until no other process has the store open.
    Exclusive,
    /// Gives up at once (`Ok(None)`) if another process has the store open.
    TryExclusive,
}

/// An open store.
pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    _tmp_lock: File,
    _store_lock: File,
    counter: AtomicU64,
    dead_tmp_collected: Vec<PathBuf>,
    reaped: Vec<String>,
    /// The mode the store root had when it was found reachable by other users (and made private).
    was_exposed: Option<u32>,
    mode: LockMode,
}

/// The store's subdirectories (cache mounts are made by the executor, on first use).
const SUBDIRS: [&str; 8] =
    ["blobs/sha256", "snapshots", "index/cache", "index/tags", "index/layers", "index/steps", "index/unpacked", "tmp"];

impl Store {
    /// Opens (creating if needed) the store at `root`, holding its lock shared, and removes dead processes' tmp dirs.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Self::open_with(root, LockMode::Shared)?.ok_or_else(|| {
            StoreError::Io(IoError::new("lock", root.join("lock"), io::Error::from(io::ErrorKind::WouldBlock)))
        })
    }

    /// Opens the store with no other process in it (waiting for running builds to finish).
    pub fn open_exclusive(root: &Path) -> Result<Store, StoreError> {
        Self::open_with(root, LockMode::Exclusive)?.ok_or_else(|| {
            StoreError::Io(IoError::new("lock", root.join("lock"), io::Error::from(io::ErrorKind::WouldBlock)))
        })
    }

    /// Opens the store locked as `mode`; `None` only for [`LockMode::TryExclusive`] when another process has it.
    pub fn open_with(root: &Path, mode: LockMode) -> Result<Option<Store>, StoreError> {
        Self::open_reaping(root, mode, &|_| Vec::new())
    }

    /// Like [`Store::open_with`], calling `reaper` with the tmp dirs of dead processes before they are collected.
    pub fn open_reaping(root: &Path, mode: LockMode, reaper: Reaper) -> Result<Option<Store>, StoreError> {
        let was_exposed = private_root(root)?;
        for sub in SUBDIRS {
            let p = root.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(io_err(&p, "create the store"))?;
            }
        }
        let lock_path = root.join("lock");
        let store_lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open the store lock"))?;
        match mode {
            LockMode::Shared => store_lock.lock_shared().map_err(io_err(&lock_path, "lock"))?,
            LockMode::Exclusive => store_lock.lock().map_err(io_err(&lock_path, "lock"))?,
            LockMode::TryExclusive => match store_lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Io(IoError::new("lock", lock_path, e)));
                }
            },
        }
        spread_new_dirs(&root.join("tmp"));
        let (dead_tmp_collected, reaped) = collect_dead_tmp(&root.join("tmp"), reaper);
        let (tmp, tmp_lock) = own_tmp_dir(&root.join("tmp"))?;
        Ok(Some(Store {
            root: root.to_path_buf(),
            tmp,
            _tmp_lock: tmp_lock,
            _store_lock: store_lock,
            counter: AtomicU64::new(0),
            dead_tmp_collected,
            reaped,
            was_exposed,
            mode,
        }))
    }

    /// The mode of the store root if opening found it reachable by other users (it is 0700 now).
    pub fn was_exposed(&self) -> Option<u32> {
        self.was_exposed
    }

    /// Records that the snapshot `diff_id` was unpacked from another builder's layer (so its own tar, as rbuild
    /// writes it, need not hash to its name; `check --deep` compares it with its blob instead).
    pub fn mark_unpacked(&self, diff_id: &Digest) -> Result<(), StoreError> {
        let p = self.root.join("index/unpacked").join(diff_id.hex());
        write_synced(&p, b"")
    }

    /// Whether [`Store::mark_unpacked`] was called for `diff_id`.
    pub fn is_unpacked(&self, diff_id: &Digest) -> bool {
        self.root.join("index/unpacked").join(diff_id.hex()).exists()
    }

    /// What the reaper stopped when this store was opened (containers of dead processes).
    pub fn reaped(&self) -> &[String] {
        &self.reaped
    }

    /// True when no other process has the store open (so collecting garbage is safe).
    pub fn is_exclusive(&self) -> bool {
        self.mode != LockMode::Shared
    }

    /// This process's own tmp dir.
    pub fn own_tmp(&self) -> &Path {
        &self.tmp
    }

    /// Tmp dirs of processes that died without cleaning up, found (and removed) when this store was opened.
    pub fn dead_tmp_collected(&self) -> &[PathBuf] {
        &self.dead_tmp_collected
    }

    /// Where `RUN --mount=type=cache` directories live.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("cachemounts")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new, empty directory under this process's tmp dir, on the store's filesystem (so it can be renamed in).
    pub fn tmp_dir(&self, what: &str) -> Result<PathBuf, StoreError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp.join(format!("{what}-{n}"));
        fs::create_dir(&p).map_err(io_err(&p, "create temporary directory"))?;
        Ok(p)
    }

    /// A path for a new temporary file (not created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{what}-{n}"))
    }

    // ---- blobs ----

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            let tmp = self.tmp_path("blob");
            write_synced(&tmp, bytes)?;
            self.rename_in(&tmp, &self.blob_path(&d))?;
        }
        Ok(d)
    }

    /// Moves a complete, already verified file into the blob store as `d`.
    pub fn import_blob(&self, file: &Path, d: &Digest) -> Result<(), StoreError> {
        File::open(file).and_then(|f| f.sync_all()).map_err(io_err(file, "fsync blob"))?;
        self.rename_in(file, &self.blob_path(d))
    }

    /// Reads a blob and checks that its content still matches its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let mut bytes = Vec::new();
        File::open(&p).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(&p, "read blob"))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(StoreError::CorruptBlob { digest: d.clone(), actual });
        }
        Ok(bytes)
    }

    // ---- snapshots ----

    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(diff_id.hex())
    }

    pub fn has_snapshot(&self, diff_id: &Digest) -> bool {
        self.snapshot_path(diff_id).is_dir()
    }

    /// Makes the finished directory `dir` the snapshot of `diff_id`. If another process committed the same layer
    /// first, its snapshot is kept and `dir` is removed.
    pub fn commit_snapshot(&self, dir: &Path, diff_id: &Digest) -> Result<(), StoreError> {
        let dest = self.snapshot_path(diff_id);
        if dest.exists() {
            return remove_tree(dir);
        }
        sync_dir(dir);
        match fs::rename(dir, &dest) {
            Ok(()) => {
                sync_dir(&self.root.join("snapshots"));
                Ok(())
            }
            Err(_) if dest.exists() => remove_tree(dir),
            Err(e) => Err(StoreError::Io(IoError::new("commit snapshot", dest, e))),
        }
    }

    // ---- layers ----

    fn layer_index(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("index/layers").join(format!("{}.json", diff_id.hex()))
    }

    /// Compressed forms known for a layer.
    pub fn layer_blobs(&self, diff_id: &Digest) -> Vec<LayerBlob> {
        read_json::<Vec<LayerBlob>>(&self.layer_index(diff_id)).ok().flatten().unwrap_or_default()
    }

    /// Records a compressed form of a layer (its blob must already be in the store).
    pub fn add_layer_blob(&self, diff_id: &Digest, blob: LayerBlob) -> Result<(), StoreError> {
        let mut blobs = self.layer_blobs(diff_id);
        if !blobs.contains(&blob) {
            blobs.retain(|b| b.media_type != blob.media_type);
            blobs.push(blob);
            self.write_json(&self.layer_index(diff_id), &blobs)?;
        }
        Ok(())
    }

    // ---- tags ----

    fn tag_path(&self, name: &str) -> PathBuf {
        self.root.join("index/tags").join(format!("{}.json", escape_name(name)))
    }

    /// Points `record.name` at an image.
    pub fn set_tag(&self, record: &ImageRecord) -> Result<(), StoreError> {
        // An unchanged rebuild names the same image again: skip the synced rewrite.
        if matches!(self.tag(&record.name), Ok(Some(existing)) if existing == *record) {
            return Ok(());
        }
        self.write_json(&self.tag_path(&record.name), record)
    }

    pub fn tag(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        read_json(&self.tag_path(name))
    }

    pub fn remove_tag(&self, name: &str) -> Result<(), StoreError> {
        let p = self.tag_path(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NoSuchImage(name.to_string())),
            Err(e) => Err(StoreError::Io(IoError::new("remove tag", p, e))),
        }
    }

    /// Every readable tag, sorted by name; a malformed tag file is left out (see [`Store::tags_checked`]).
    pub fn tags(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.tags_checked()?.0)
    }

    /// Every readable tag, sorted by name, and the tag files that could not be read. One damaged file must not
    /// hide every other image: `images` lists the rest and `check` reports the damaged one.
    pub fn tags_checked(&self) -> Result<(Vec<ImageRecord>, Vec<StoreError>), StoreError> {
        let dir = self.root.join("index/tags");
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "list tags in"))? {
            let entry = entry.map_err(io_err(&dir, "list tags in"))?;
            if !entry.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            match read_json::<ImageRecord>(&entry.path()) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, bad))
    }

    // ---- helpers ----

    fn rename_in(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        fs::rename(from, to).map_err(io_err(to, "move into the store:"))?;
        if let Some(parent) = to.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    /// Writes a JSON index file atomically.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec_pretty(value).map_err(|e| StoreError::BadIndex { path: path.into(), source: e })?;
        let tmp = self.tmp_path("index");
        write_synced(&tmp, &bytes)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent, "create index directory"))?;
        }
        self.rename_in(&tmp, path)
    }

    pub(crate) fn cache_path(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.root.join("index/cache").join(&hex[..2]).join(format!("{hex}.json"))
    }

    fn step_path(&self, identity: &str) -> PathBuf {
        let d = Digest::of(identity.as_bytes());
        self.root.join("index/steps").join(format!("{}.json", &d.hex()[..32]))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: what is left (a busy mount point) is collected by the next process once our lock is gone.
        remove_unmounted(&self.tmp);
        if !self.tmp.exists() {
            // Unlinked while still held, so no other process can take it for a dir that is still here.
            let _ = fs::remove_file(tmp_lock_path(&self.tmp));
        }
    }
}

/// Marks a cache entry as used now (its file's mtime is its last use, for LRU collection). Not fsynced: losing
/// a last-use time in a crash only makes an entry look older.
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

impl CacheStore for Store {
    fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, CacheError> {
        let path = self.cache_path(key);
        let record: CacheRecord = match read_json(&path) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(e) => {
                let context = format!("cannot use the entry for {key}");
                return Err(CacheError { context, source: io::Error::other(e) });
            }
        };
        // An entry whose snapshots were pruned is a miss, not an error.
        if !record.output.layers().iter().all(|l| self.has_snapshot(l)) {
            return Ok(None);
        }
        touch(&path);
        Ok(Some(record))
    }

    fn previous_step(&self, identity: &str) -> Option<StepInputs> {
        let (stored_identity, inputs): (String, StepInputs) = read_json(&self.step_path(identity)).ok().flatten()?;
        (stored_identity == identity).then_some(inputs)
    }

    fn record_step(&self, identity: &str, inputs: &StepInputs) -> Result<(), CacheError> {
        // Advisory data (it only explains a later miss): atomic, but not worth two fsyncs per step.
        let path = self.step_path(identity);
        let written = serde_json::to_vec(&(identity, inputs))
            .map_err(|e| StoreError::BadIndex { path: path.clone(), source: e })
            .and_then(|bytes| {
                let tmp = self.tmp_path("step");
                fs::write(&tmp, bytes).map_err(io_err(&tmp, "write step record"))?;
                fs::rename(&tmp, &path).map_err(io_err(&path, "move step record into the store:"))
            });
        written.map_err(|e| CacheError { context: format!("recording step {identity}"), source: io::Error::other(e) })
    }

    fn put(&self, key: &Digest, output: &Output) -> Result<CacheRecord, CacheError> {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let record = CacheRecord { output: output.clone(), created: created as i64 };
        // Atomic but not synced: a step stores its result under up to four keys, and two fsyncs each were a tenth of
        // a cold RUN step's time. An entry a crash loses is a miss; one it leaves unreadable is reported by `get`
        // and replaced by the step's next run. The snapshots an entry names are synced when they are committed.
        let path = self.cache_path(key);
        let written = serde_json::to_vec(&record)
            .map_err(|e| StoreError::BadIndex { path: path.clone(), source: e })
            .and_then(|bytes| {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent, "create index directory"))?;
                }
                let tmp = self.tmp_path("index");
                fs::write(&tmp, bytes).map_err(io_err(&tmp, "write cache entry"))?;
                fs::rename(&tmp, &path).map_err(io_err(&path, "move cache entry into the store:"))
            });
        written.map_err(|e| CacheError { context: format!("recording {key}"), source: io::Error::other(e) })?;
        Ok(record)
    }
}

/// Reads a JSON file; `None` if it does not exist.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::BadIndex { path: path.into(), source: e })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(IoError::new("read index entry", path, e))),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err(path, "create"))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(path, "write"))
}

/// Marks `dir` as a top of a directory hierarchy (`chattr +T`), so ext4 places each directory made in it (every
/// process's `tmp/<pid>-<n>/`, where layers are written before they are renamed into `snapshots/`) in a block group
/// of its own choosing (the Orlov allocator) instead of next to its parent. Measured (issue 16): without it, the
/// files of a COPY land in the group of the last build's deleted files, and on an ext4 without a journal each new
/// inode then scans past every recently deleted one (`recently_deleted` in `find_inode_bit`): three quarters of a
/// cold 20,000-file COPY was that scan. Best effort: other filesystems ignore or refuse the flag.
fn spread_new_dirs(dir: &Path) {
    let Ok(f) = File::open(dir) else { return };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&f)
        && !flags.contains(rustix::fs::IFlags::TOPDIR)
    {
        let _ = rustix::fs::ioctl_setflags(&f, flags | rustix::fs::IFlags::TOPDIR);
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: a directory fsync makes a rename durable; failing to do so is not an error for correctness.
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(IoError::new("remove directory", dir, e))),
    }
}

/// Tag names contain `/` and `:`; file names may not contain `/`.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Makes the store root reachable by its owner only (0700, as Docker's data root). Image content holds setuid
/// binaries, device nodes made by RUN steps and agent sockets: a traversable store would hand them to every local
/// user. An existing root with wider permissions is tightened; one owned by another user is refused.
fn private_root(root: &Path) -> Result<Option<u32>, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = root.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(io_err(parent, "create the store's parent directory"))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::Io(IoError::new("create the store", root, e))),
    }
    let meta = fs::metadata(root).map_err(io_err(root, "stat the store"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if meta.uid() != user {
        return Err(StoreError::NotOwned { path: root.into(), owner: meta.uid(), user });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(root, "make private (chmod 0700) the store"))?;
        return Ok(Some(meta.mode() & 0o7777));
    }
    Ok(None)
}

/// What is wrong with the store root's ownership or permissions, if anything (for `check`).
pub fn root_problem(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot inspect the store root {}: {e}", root.display())),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if meta.uid() != user {
        return Some(format!("the store root {} is owned by uid {}, not {user}", root.display(), meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Some(format!(
            "the store root {} has mode {:04o}: other users can reach its content (want 0700)",
            root.display(),
            meta.mode() & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests;
