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
use rbuild_types::Digest;
use rbuild_types::oci::ImageConfig;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors of du, prune and check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    move |source| GcError::Io { op, path: path.to_path_buf(), source }
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
                out.push(e.map_err(io_err("listing", dir))?.path());
            }
            out.sort();
            Ok(out)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("listing", dir)(e)),
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
        Err(e) => Err(io_err("removing", p)(e)),
    }
}

/// Removes cache entries as `opts` says, then everything no tag and no remaining entry needs.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, GcError> {
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

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub blobs: usize,
    pub snapshots: usize,
    pub tags: usize,
    pub cache_entries: usize,
    /// Entries whose snapshots are gone: a clean miss, not an error.
    pub stale_entries: usize,
    /// Everything that is wrong; empty for a healthy store.
    pub problems: Vec<String>,
}

fn hash_file(path: &Path) -> Result<Digest, GcError> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_sha256(h.finalize().into()))
}

/// Verifies a store: every blob's content matches its name, every tag's config and layers exist, every cache
/// entry parses and either has its snapshots or is a clean miss, and no dead process left a tmp dir behind.
/// `store` should be opened with [`LockMode::Exclusive`], so that nothing changes while it is read and the tmp
/// dirs found when opening it are the leftovers of dead processes.
pub fn check(store: &Store) -> Result<CheckReport, GcError> {
    use rbuild_solver::CacheStore;
    let root = store.root();
    let mut r = CheckReport::default();
    for p in list_dir(&root.join("blobs/sha256"))? {
        r.blobs += 1;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match format!("sha256:{name}").parse::<Digest>() {
            Ok(d) => {
                let actual = hash_file(&p)?;
                if actual != d {
                    r.problems.push(format!("blob {d} is corrupt: its content hashes to {actual}"));
                }
            }
            Err(_) => r.problems.push(format!("stray file in the blob store: {}", p.display())),
        }
    }
    for p in list_dir(&root.join("snapshots"))? {
        r.snapshots += 1;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if format!("sha256:{name}").parse::<Digest>().is_err() || !p.is_dir() {
            r.problems.push(format!("stray entry in snapshots: {}", p.display()));
        }
    }
    if let Some(mode) = store.was_exposed() {
        r.problems.push(format!(
            "the store root {} had mode {mode:04o}: other users could reach its content (it is 0700 now)",
            root.display()
        ));
    }
    if let Some(p) = crate::store::root_problem(root) {
        r.problems.push(p);
    }
    let (tags, bad_tags) = store.tags_checked()?;
    r.tags = tags.len();
    for e in bad_tags {
        r.problems.push(format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()));
    }
    let (_, tag_problems) = mark_tags(store)?;
    r.problems.extend(tag_problems);
    for e in cache_entries(store)? {
        r.cache_entries += 1;
        match (&e.key, &e.record) {
            (Some(key), Some(record)) => {
                let complete = record.output.layers().iter().all(|l| store.has_snapshot(l));
                if !complete {
                    r.stale_entries += 1;
                    if store.get(key).is_some() {
                        r.problems.push(format!("cache entry {key} refers to missing snapshots but is a hit"));
                    }
                }
            }
            _ => r.problems.push(format!("malformed cache entry {}", e.path.display())),
        }
    }
    for p in list_dir(&root.join("index/layers"))? {
        let ok = fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Vec<crate::LayerBlob>>(&b).ok()).is_some();
        if !ok {
            r.problems.push(format!("malformed layer record {}", p.display()));
        }
    }
    for p in store.dead_tmp_collected() {
        r.problems.push(format!("a dead process left {} behind", p.display()));
    }
    for what in store.reaped() {
        r.problems.push(format!("a dead process left a container running: {what}"));
    }
    if store.is_exclusive() {
        for p in list_dir(&root.join("tmp"))? {
            let own_lock = p.with_extension("") == store.own_tmp() && p.extension().is_some_and(|e| e == "lock");
            if p != store.own_tmp() && !own_lock {
                r.problems.push(format!("leftover tmp entry {}", p.display()));
            }
        }
    }
    Ok(r)
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
mod tests {
    use super::*;
    use crate::ImageRecord;
    use rbuild_solver::{CacheStore, Output};
    use rbuild_types::oci::{RootFs, to_canonical_json};

    /// Commits a snapshot holding one file of `bytes` bytes; returns its (made-up) diff_id.
    fn snapshot(store: &Store, name: &str, bytes: usize) -> Digest {
        let d = Digest::of(name.as_bytes());
        let dir = store.tmp_dir("snap").unwrap();
        fs::write(dir.join("f"), vec![7u8; bytes]).unwrap();
        store.commit_snapshot(&dir, &d).unwrap();
        d
    }

    fn tag(store: &Store, name: &str, layers: &[Digest]) -> Digest {
        let config =
            ImageConfig { rootfs: RootFs { diff_ids: layers.to_vec(), ..Default::default() }, ..Default::default() };
        let c = store.write_blob(&to_canonical_json(&config)).unwrap();
        store
            .set_tag(&ImageRecord { name: name.into(), config: c.clone(), manifest: None, platforms: Vec::new() })
            .unwrap();
        c
    }

    fn set_used(store: &Store, key: &Digest, ago: Duration) {
        let f = fs::File::options().write(true).open(store.cache_path(key)).unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn prune_needs_an_exclusive_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(prune(&store, &PruneOptions::default()), Err(GcError::NotExclusive)));
        assert!(Store::open_with(dir.path(), LockMode::TryExclusive).unwrap().is_none(), "a shared holder blocks");
        drop(store);
        assert!(Store::open_with(dir.path(), LockMode::TryExclusive).unwrap().is_some());
    }

    #[test]
    fn plain_prune_keeps_tagged_images_and_their_cache_all_keeps_only_images() {
        let dir = tempfile::tempdir().unwrap();
        // A store of its own making (a tempdir is 0755, which opening reports and tightens).
        let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
        let base = snapshot(&store, "base", 10);
        let app = snapshot(&store, "app", 10);
        let junk = snapshot(&store, "junk", 100_000);
        let orphan = snapshot(&store, "orphan", 100);
        let config = tag(&store, "app:1", &[base.clone(), app.clone()]);
        let untagged_config = store.write_blob(b"{}").unwrap();
        let (k_app, k_junk, k_base) = (Digest::of(b"k1"), Digest::of(b"k2"), Digest::of(b"k3"));
        store.put(&k_app, &Output::RootFs(vec![base.clone(), app.clone()])).unwrap();
        store.put(&k_junk, &Output::RootFs(vec![base.clone(), junk.clone()])).unwrap();
        store.put(&k_base, &Output::RootFs(vec![base.clone()])).unwrap();
        let before = disk_usage(&store).unwrap();
        assert_eq!((before.snapshot_count, before.cache_entries), (4, 3));

        let r = prune(&store, &PruneOptions::default()).unwrap();
        assert_eq!((r.cache_entries, r.snapshots, r.blobs), (1, 2, 1));
        assert!(r.freed >= 100_000, "freed {}", r.freed);
        assert!(store.get(&k_app).is_some() && store.get(&k_base).is_some() && store.get(&k_junk).is_none());
        assert!(!store.has_snapshot(&junk) && !store.has_snapshot(&orphan) && !store.has_blob(&untagged_config));
        assert!(store.has_blob(&config));
        let after = disk_usage(&store).unwrap();
        assert!(after.snapshots < before.snapshots);

        let r = prune(&store, &PruneOptions { all: true, ..Default::default() }).unwrap();
        assert_eq!(r.cache_entries, 2);
        assert!(store.has_snapshot(&base) && store.has_snapshot(&app) && store.has_blob(&config));
        let ok = check(&store).unwrap();
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    }

    #[test]
    fn until_spares_recent_entries_and_keep_storage_drops_lru_first() {
        let dir = tempfile::tempdir().unwrap();
        // A store of its own making (a tempdir is 0755, which opening reports and tightens).
        let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
        let keys: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
        for (i, k) in keys.iter().enumerate() {
            let s = snapshot(&store, &format!("s{i}"), 200_000);
            store.put(k, &Output::RootFs(vec![s])).unwrap();
            set_used(&store, k, Duration::from_secs(3600 * (10 - i as u64)));
        }
        // Entries were used 10h, 9h and 8h ago.
        let r =
            prune(&store, &PruneOptions { until: Some(Duration::from_secs(9 * 3600 + 1800)), ..Default::default() })
                .unwrap();
        assert_eq!(r.cache_entries, 1);
        assert!(store.get(&keys[0]).is_none() && store.get(&keys[1]).is_some());
        // A hit refreshes the last use: entry 1 becomes the most recent, so LRU drops entry 2 first.
        let total = disk_usage(&store).unwrap().total();
        let r = prune(&store, &PruneOptions { all: true, keep_storage: Some(total - 1000), until: None }).unwrap();
        assert_eq!(r.cache_entries, 1);
        assert!(store.get(&keys[1]).is_some() && store.get(&keys[2]).is_none());
    }

    #[test]
    fn check_finds_corrupt_blobs_missing_configs_and_malformed_entries() {
        let dir = tempfile::tempdir().unwrap();
        // A store of its own making (a tempdir is 0755, which opening reports and tightens).
        let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
        let b = store.write_blob(b"hello").unwrap();
        fs::write(store.blob_path(&b), b"jello").unwrap();
        store
            .set_tag(&ImageRecord {
                name: "x:1".into(),
                config: Digest::of(b"none"),
                manifest: None,
                platforms: Vec::new(),
            })
            .unwrap();
        let k = Digest::of(b"k");
        store.put(&k, &Output::RootFs(vec![Digest::of(b"gone")])).unwrap();
        let bad = store.cache_path(&Digest::of(b"bad"));
        fs::create_dir_all(bad.parent().unwrap()).unwrap();
        fs::write(&bad, b"{").unwrap();
        let r = check(&store).unwrap();
        assert_eq!(r.stale_entries, 1, "a stale entry is a clean miss");
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert!(r.problems[0].contains("corrupt"));
        assert!(r.problems[1].contains("x:1"));
        assert!(r.problems[2].contains("malformed"));
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5 MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("ten").is_err() && parse_size("5XB").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_filter("until=2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("10").is_err() && parse_filter("label=x").is_err());
    }
}
