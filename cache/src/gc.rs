//! Disk usage, garbage collection and integrity checking of a store.
//!
//! Collection is mark and sweep. Tagged images are the roots that nothing but `rmi` removes: their config blob,
//! manifest (and what it lists), the snapshots of their `diff_ids` and the compressed blobs recorded for those
//! layers. Cache entries are the second set of roots, and the one prune trims: a plain prune drops entries whose
//! result is not part of a tagged image ("dangling": intermediate stages, builds never tagged), `--all` drops every
//! entry, `until` spares entries used recently, and `keep_storage` drops them least recently used first only until
//! the store fits. Whatever no remaining root reaches is swept. Entry last-use times are their index file's mtime
//! (touched on every cache hit), so LRU costs one `utimensat` per hit and no index rewrite.
//!
//! Collecting needs the store to itself: [`prune`] refuses a store not opened with an exclusive lock, so it can
//! never remove a snapshot a running build is about to mount.

use crate::store::{LockMode, Store, StoreError};
use rbuild_solver::CacheRecord;
use rbuild_types::oci::ImageConfig;
use rbuild_types::{Digest, IoError};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod check;
pub use check::{CheckReport, check};

/// Errors of du, prune and check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("pruning needs the store to itself: open it with an exclusive lock")]
    NotExclusive,
    #[error("invalid size {0:?}: expected a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
    BadSize(String),
    #[error("invalid duration {0:?}: expected a number with a unit (s, m, h, d), e.g. 24h or 1h30m")]
    BadDuration(String),
    #[error("invalid filter {0:?}: only until=DURATION is supported")]
    BadFilter(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GcError + 'a {
    move |source| GcError::Io(IoError::new(op, path, source))
}

/// Bytes on disk per kind of content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub snapshots: u64,
    pub snapshot_count: usize,
    pub blobs: u64,
    pub blob_count: usize,
    pub cache_mounts: u64,
    pub cache_mount_count: usize,
    /// The index, stat caches, tmp and runtime state.
    pub other: u64,
    pub cache_entries: usize,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.snapshots + self.blobs + self.cache_mounts + self.other
    }
}

/// Bytes a tree takes on disk (allocated blocks; hard-linked files once).
pub fn tree_size(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    tree_size_inner(path, &mut seen)
}

fn tree_size_inner(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(md) = fs::symlink_metadata(path) else { return 0 };
    if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
        return 0;
    }
    let mut total = md.blocks() * 512;
    if md.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += tree_size_inner(&e.path(), seen);
        }
    }
    total
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, GcError> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut out = Vec::new();
            for e in rd {
                out.push(e.map_err(io_err("list", dir))?.path());
            }
            out.sort();
            Ok(out)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

/// Space used by each kind of content in the store.
pub fn disk_usage(store: &Store) -> Result<Usage, GcError> {
    let root = store.root();
    let mut u = Usage::default();
    for p in list_dir(&root.join("snapshots"))? {
        u.snapshots += tree_size(&p);
        u.snapshot_count += 1;
    }
    for p in list_dir(&root.join("blobs/sha256"))? {
        u.blobs += tree_size(&p);
        u.blob_count += 1;
    }
    for p in list_dir(&store.cache_mounts_dir())? {
        u.cache_mounts += tree_size(&p);
        u.cache_mount_count += 1;
    }
    u.cache_entries = cache_entries(store)?.len();
    let counted: [PathBuf; 3] = [root.join("snapshots"), root.join("blobs"), store.cache_mounts_dir()];
    for p in list_dir(root)? {
        if !counted.contains(&p) {
            u.other += tree_size(&p);
        }
    }
    Ok(u)
}

/// A cache index entry as found on disk.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: Option<Digest>,
    pub path: PathBuf,
    /// `None` when the file does not parse.
    pub record: Option<CacheRecord>,
    pub last_used: SystemTime,
}

/// Every entry of the cache index.
pub fn cache_entries(store: &Store) -> Result<Vec<CacheEntry>, GcError> {
    let mut out = Vec::new();
    for shard in list_dir(&store.root().join("index/cache"))? {
        for path in list_dir(&shard)? {
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let key = format!("sha256:{name}").parse::<Digest>().ok();
            let last_used = fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            let record = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<CacheRecord>(&b).ok());
            out.push(CacheEntry { key, path, record, last_used });
        }
    }
    Ok(out)
}

/// What tagged images need.
#[derive(Debug, Default)]
struct Marks {
    snapshots: BTreeSet<Digest>,
    blobs: BTreeSet<Digest>,
}

/// Marks everything the tagged images reach; problems found on the way (missing or unreadable blobs) are returned
/// for `check` to report.
fn mark_tags(store: &Store) -> Result<(Marks, Vec<String>), GcError> {
    let mut marks = Marks::default();
    let mut problems = Vec::new();
    for tag in store.tags()? {
        // A multi-platform image keeps every platform's image.
        let configs = std::iter::once(&tag.config).chain(tag.platforms.iter().filter(|c| **c != tag.config));
        for config in configs {
            mark_config(store, &tag.name, config, &mut marks, &mut problems);
        }
        if let Some(m) = &tag.manifest {
            mark_manifest(store, m, &mut marks, &mut problems, &tag.name, 0);
        }
    }
    Ok((marks, problems))
}

/// Marks an image config blob and the snapshots and layer blobs of its layers.
fn mark_config(store: &Store, name: &str, config: &Digest, marks: &mut Marks, problems: &mut Vec<String>) {
    marks.blobs.insert(config.clone());
    match store.read_blob(config) {
        Ok(bytes) => match serde_json::from_slice::<ImageConfig>(&bytes) {
            Ok(config) => {
                for id in &config.rootfs.diff_ids {
                    marks.snapshots.insert(id.clone());
                    let blobs = store.layer_blobs(id);
                    let has_blob = blobs.iter().any(|b| store.has_blob(&b.digest));
                    if !store.has_snapshot(id) && !has_blob {
                        problems.push(format!("tag {name}: layer {id} has neither a snapshot nor a blob"));
                    }
                    marks.blobs.extend(blobs.into_iter().map(|b| b.digest));
                }
            }
            Err(e) => problems.push(format!("tag {name}: config {config} is not an image config: {e}")),
        },
        Err(e) => problems.push(format!("tag {name}: config {config}: {e}")),
    }
}

/// Marks a manifest or index blob and every blob it lists that is stored locally.
fn mark_manifest(store: &Store, d: &Digest, marks: &mut Marks, problems: &mut Vec<String>, tag: &str, depth: u32) {
    marks.blobs.insert(d.clone());
    let bytes = match store.read_blob(d) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("tag {tag}: manifest {d}: {e}"));
            return;
        }
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        problems.push(format!("tag {tag}: manifest {d} is not JSON"));
        return;
    };
    let digest_of = |v: &serde_json::Value| v.get("digest").and_then(|d| d.as_str()).and_then(|s| s.parse().ok());
    if let Some(c) = doc.get("config").and_then(digest_of) {
        marks.blobs.insert(c);
    }
    for l in doc.get("layers").and_then(|l| l.as_array()).into_iter().flatten() {
        if let Some(ld) = digest_of(l) {
            marks.blobs.insert(ld);
        }
    }
    for m in doc.get("manifests").and_then(|l| l.as_array()).into_iter().flatten() {
        if let Some(md) = digest_of(m)
            && depth < 4
            && store.has_blob(&md)
        {
            mark_manifest(store, &md, marks, problems, tag, depth + 1);
        }
    }
}

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Drop every cache entry, not only dangling ones (tagged images are kept either way).
    pub all: bool,
    /// Only drop (LRU first) until the store takes at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Keep cache entries (and cache mounts) used within this long.
    pub until: Option<Duration>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub cache_entries: usize,
    pub snapshots: usize,
    pub blobs: usize,
    pub cache_mounts: usize,
    pub freed: u64,
}

fn remove_path(p: &Path) -> Result<(), GcError> {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", p)(e)),
    }
}

/// Removes cache entries as `opts` says, then everything no tag and no remaining entry needs.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, GcError> {
    rbuild_types::ids::wait();
    if !store.is_exclusive() {
        return Err(GcError::NotExclusive);
    }
    let root = store.root().to_path_buf();
    let now = SystemTime::now();
    let recent = |t: SystemTime| opts.until.is_some_and(|u| now.duration_since(t).unwrap_or_default() < u);
    let (tag_marks, _) = mark_tags(store)?;
    let tagged_top: &BTreeSet<Digest> = &tag_marks.snapshots;

    // Which entries may go, least recently used first.
    let mut entries = cache_entries(store)?;
    entries.sort_by_key(|e| e.last_used);
    let mut report = PruneReport::default();
    let mut kept: Vec<CacheEntry> = Vec::new();
    let mut candidates: Vec<CacheEntry> = Vec::new();
    for e in entries {
        let Some(record) = &e.record else {
            // Unreadable entries are garbage whatever the options.
            remove_path(&e.path)?;
            report.cache_entries += 1;
            continue;
        };
        let layers = record.output.layers();
        if !layers.iter().all(|l| store.has_snapshot(l)) {
            // A stale entry (its result is gone) is a miss anyway.
            remove_path(&e.path)?;
            report.cache_entries += 1;
            continue;
        }
        let dangling = layers.last().is_none_or(|top| !tagged_top.contains(top));
        if recent(e.last_used) || !(opts.all || dangling) {
            kept.push(e);
        } else {
            candidates.push(e);
        }
    }

    // Snapshot sizes and reference counts, to know what removing an entry frees.
    let snapshot_dirs = list_dir(&root.join("snapshots"))?;
    let mut size: BTreeMap<Digest, u64> = BTreeMap::new();
    for p in &snapshot_dirs {
        if let Some(d) = p.file_name().and_then(|n| n.to_str()).and_then(|n| format!("sha256:{n}").parse().ok()) {
            size.insert(d, tree_size(p));
        }
    }
    let mut refs: BTreeMap<Digest, usize> = BTreeMap::new();
    for e in kept.iter().chain(&candidates) {
        for l in e.record.iter().flat_map(|r| r.output.layers()) {
            *refs.entry(l.clone()).or_default() += 1;
        }
    }
    let blob_size = |d: &Digest| fs::metadata(store.blob_path(d)).map(|m| m.blocks() * 512).unwrap_or(0);
    let layer_bytes = |l: &Digest| -> u64 {
        size.get(l).copied().unwrap_or(0) + store.layer_blobs(l).iter().map(|b| blob_size(&b.digest)).sum::<u64>()
    };
    let mut total = match opts.keep_storage {
        Some(_) => disk_usage(store)?.total(),
        None => 0,
    };
    for e in candidates {
        if let Some(limit) = opts.keep_storage
            && total <= limit
        {
            kept.push(e);
            continue;
        }
        for l in e.record.iter().flat_map(|r| r.output.layers()) {
            if let Some(n) = refs.get_mut(l) {
                *n -= 1;
                if *n == 0 && !tag_marks.snapshots.contains(l) {
                    total = total.saturating_sub(layer_bytes(l));
                }
            }
        }
        remove_path(&e.path)?;
        report.cache_entries += 1;
    }

    // Sweep: snapshots and blobs no tag and no remaining entry reaches.
    let mut keep_snapshots = tag_marks.snapshots.clone();
    for e in &kept {
        keep_snapshots.extend(e.record.iter().flat_map(|r| r.output.layers().iter().cloned()));
    }
    let mut keep_blobs = tag_marks.blobs.clone();
    for l in &keep_snapshots {
        keep_blobs.extend(store.layer_blobs(l).into_iter().map(|b| b.digest));
    }
    for p in snapshot_dirs {
        let d = p.file_name().and_then(|n| n.to_str()).and_then(|n| format!("sha256:{n}").parse::<Digest>().ok());
        if d.as_ref().is_none_or(|d| !keep_snapshots.contains(d)) {
            let bytes = d.as_ref().and_then(|d| size.get(d).copied()).unwrap_or_else(|| tree_size(&p));
            remove_path(&p)?;
            report.snapshots += 1;
            report.freed += bytes;
            if let Some(d) = d {
                let _ = fs::remove_file(root.join("index/layers").join(format!("{}.json", d.hex())));
            }
        }
    }
    for p in list_dir(&root.join("blobs/sha256"))? {
        let d = p.file_name().and_then(|n| n.to_str()).and_then(|n| format!("sha256:{n}").parse::<Digest>().ok());
        if d.as_ref().is_none_or(|d| !keep_blobs.contains(d)) {
            report.freed += tree_size(&p);
            remove_path(&p)?;
            report.blobs += 1;
        }
    }
    for p in list_dir(&store.cache_mounts_dir())? {
        let used = fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        if !recent(used) {
            report.freed += tree_size(&p);
            remove_path(&p)?;
            report.cache_mounts += 1;
        }
    }
    if opts.all && opts.until.is_none() {
        // Stat caches and step records are rebuilt by the next build.
        for p in list_dir(&root.join("index"))? {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with("statcache-") {
                report.freed += tree_size(&p);
                remove_path(&p)?;
            }
        }
        for p in list_dir(&root.join("index/steps"))? {
            report.freed += tree_size(&p);
            remove_path(&p)?;
        }
    }
    Ok(report)
}

/// Opens `root` for collection only if no other process uses it, and prunes LRU until it fits in `keep_storage`
/// when it is larger. Returns `None` when the store is busy or already small enough.
pub fn auto_gc(root: &Path, keep_storage: u64) -> Result<Option<PruneReport>, GcError> {
    let Some(store) = Store::open_with(root, LockMode::TryExclusive)? else { return Ok(None) };
    if disk_usage(&store)?.total() <= keep_storage {
        return Ok(None);
    }
    let opts = PruneOptions { all: true, keep_storage: Some(keep_storage), until: None };
    prune(&store, &opts).map(Some)
}

/// Parses `10GB` (decimal), `512MiB` (binary), `1.5G`, `100000` (bytes): see [`rbuild_types::units::human_size`].
pub fn parse_size(s: &str) -> Result<u64, GcError> {
    rbuild_types::units::human_size(s).ok_or_else(|| GcError::BadSize(s.to_string()))
}

/// Parses `24h`, `1h30m`, `90s`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, GcError> {
    rbuild_types::units::go_duration_or_days(s.trim()).ok_or_else(|| GcError::BadDuration(s.to_string()))
}

/// Parses a `--filter` value (`until=24h`).
pub fn parse_filter(s: &str) -> Result<Duration, GcError> {
    match s.split_once('=') {
        Some(("until", d)) => parse_duration(d),
        _ => Err(GcError::BadFilter(s.to_string())),
    }
}

#[cfg(test)]
mod tests;
