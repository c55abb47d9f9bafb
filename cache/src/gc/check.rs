//! Integrity checking (`rbuild check`): every blob against its name, every tag's and cache entry's references, and
//! what dead processes left behind.

use super::{GcError, cache_entries, io_err, list_dir, mark_tags};
use crate::store::Store;
use rbuild_types::Digest;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Read;
use std::path::Path;

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
    let mut f = fs::File::open(path).map_err(io_err("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_sha256(h.finalize().into()))
}

/// Verifies a store: every blob's content matches its name, every tag's config and layers exist, every cache
/// entry parses and either has its snapshots or is a clean miss, and no dead process left a tmp dir behind.
/// `store` should be opened with [`LockMode::Exclusive`](crate::store::LockMode::Exclusive), so that nothing changes while it is read and the tmp
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
                    if matches!(store.get(key), Ok(Some(_))) {
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
