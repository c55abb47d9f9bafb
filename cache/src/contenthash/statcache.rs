//! The persistent stat cache that skips re-reading files whose stat is unchanged.

use super::*;
use crate::confined::Stat;
use rbuild_types::IoError;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// An entry is only trusted when its file's mtime is older than the moment it was hashed by at least this much, so
/// a same-size edit landing in the same (possibly coarse, e.g. 1 s or 2 s FAT) timestamp tick is still seen.
pub(super) const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// The stat fields that must all be unchanged for a cached file digest to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatKey {
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    pub(super) ctime_ns: i64,
    pub(super) ino: u64,
    pub(super) mode: u32,
}

impl StatKey {
    pub(super) fn of(st: &Stat) -> StatKey {
        StatKey {
            size: st.size,
            mtime_ns: st.mtime.0.saturating_mul(1_000_000_000).saturating_add(st.mtime.1),
            ctime_ns: st.ctime.0.saturating_mul(1_000_000_000).saturating_add(st.ctime.1),
            ino: st.ino,
            mode: st.mode,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct CacheEntry {
    pub(super) key: StatKey,
    /// When the file was hashed (wall clock, before reading it).
    pub(super) recorded_ns: i64,
    /// Content digest and xattrs: an xattr change moves ctime, so an unchanged stat vouches for both, and a warm
    /// build needs no `llistxattr` per file.
    pub(super) hashed: Hashed,
}

#[derive(Debug, Default)]
pub(super) struct CacheInner {
    /// Keyed by the path's bytes: hashing a `Path` walks its components, which showed up in profiles.
    pub(super) entries: HashMap<Vec<u8>, CacheEntry>,
    pub(super) dirty: bool,
}

/// Persistent map from a file's stat to its content digest, so unchanged files of a large context are not re-read.
///
/// Stored as one binary file: magic, entry count, entries sorted by path, then a SHA-256 of everything before it.
/// A file that is missing, truncated or corrupt loads as an empty cache (a cache can always be rebuilt; a wrong
/// entry could not be detected).
#[derive(Debug)]
pub struct StatCache {
    pub(super) path: PathBuf,
    pub(super) inner: Mutex<CacheInner>,
    pub(super) files_read: AtomicU64,
}

const CACHE_MAGIC: &[u8; 16] = b"rbuild-statcache";
const CACHE_VERSION: u32 = 2;

impl StatCache {
    /// Loads the cache stored at `path`; anything unreadable gives an empty cache that will be saved there.
    pub fn load(path: &Path) -> StatCache {
        let entries = fs::read(path).ok().and_then(|b| decode_cache(&b)).unwrap_or_default();
        StatCache {
            path: path.to_path_buf(),
            inner: Mutex::new(CacheInner { entries, dirty: false }),
            files_read: AtomicU64::new(0),
        }
    }

    /// How many files were actually read (not answered from the cache) through this cache since it was loaded.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the cache atomically (temp file in the same directory, fsync, rename, fsync the directory). A cache
    /// that was not changed since loading is not rewritten.
    pub fn save(&self) -> Result<(), ContentHashError> {
        let bytes = {
            let inner = self.inner.lock().map_err(|_| {
                ContentHashError::Io(IoError::new(
                    "lock",
                    self.path.clone(),
                    io::Error::other("stat cache lock poisoned"),
                ))
            })?;
            if !inner.dirty {
                return Ok(());
            }
            encode_cache(&inner.entries)
        };
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temporary file in", dir))?;
        tmp.write_all(&bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", &self.path))?;
        tmp.persist(&self.path)
            .map_err(|e| ContentHashError::Io(IoError::new("rename onto", self.path.clone(), e.error)))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))?;
        if let Ok(mut inner) = self.inner.lock() {
            inner.dirty = false;
        }
        Ok(())
    }

    /// The cached digest and xattrs of `path`, if its stat is unchanged and the entry is not racy.
    pub(super) fn lookup(&self, path: &Path, key: &StatKey) -> Option<Hashed> {
        let inner = self.inner.lock().ok()?;
        let e = inner.entries.get(path.as_os_str().as_bytes())?;
        // Racy-git rule: a file modified in the same timestamp tick as (or after) the moment it was hashed may
        // have been edited again without its mtime moving; only entries whose mtime is safely older are trusted.
        // ctime too, since it is what an xattr, mode or owner change moves.
        let safe = e.recorded_ns.saturating_sub(RACY_MARGIN_NS);
        (e.key == *key && key.mtime_ns < safe && key.ctime_ns < safe).then(|| e.hashed.clone())
    }

    pub(super) fn insert(&self, path: &Path, key: StatKey, recorded_ns: i64, hashed: Hashed) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.insert(path.as_os_str().as_bytes().to_vec(), CacheEntry { key, recorded_ns, hashed });
            inner.dirty = true;
        }
    }
}

fn encode_cache(entries: &HashMap<Vec<u8>, CacheEntry>) -> Vec<u8> {
    let mut sorted: Vec<(&Vec<u8>, &CacheEntry)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(64 + sorted.len() * 128);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (path, e) in sorted {
        let p = path.as_slice();
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(&e.key.size.to_le_bytes());
        out.extend_from_slice(&e.key.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ino.to_le_bytes());
        out.extend_from_slice(&e.key.mode.to_le_bytes());
        out.extend_from_slice(&e.recorded_ns.to_le_bytes());
        out.extend_from_slice(&e.hashed.digest);
        out.extend_from_slice(&(e.hashed.xattrs.len() as u32).to_le_bytes());
        for (name, value) in &e.hashed.xattrs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn decode_cache(bytes: &[u8]) -> Option<HashMap<Vec<u8>, CacheEntry>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    let expect: [u8; 32] = Sha256::digest(body).into();
    if expect.as_slice() != sum {
        return None;
    }
    let mut c = Cursor(body);
    if c.take(CACHE_MAGIC.len())? != CACHE_MAGIC || u32::from_le_bytes(c.array()?) != CACHE_VERSION {
        return None;
    }
    let count = u64::from_le_bytes(c.array()?);
    let mut entries = HashMap::new();
    for _ in 0..count {
        let plen = u32::from_le_bytes(c.array()?) as usize;
        let path = c.take(plen)?.to_vec();
        let key = StatKey {
            size: u64::from_le_bytes(c.array()?),
            mtime_ns: i64::from_le_bytes(c.array()?),
            ctime_ns: i64::from_le_bytes(c.array()?),
            ino: u64::from_le_bytes(c.array()?),
            mode: u32::from_le_bytes(c.array()?),
        };
        let recorded_ns = i64::from_le_bytes(c.array()?);
        let digest = c.array()?;
        let n = u32::from_le_bytes(c.array()?) as usize;
        let mut xattrs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let len = u32::from_le_bytes(c.array()?) as usize;
            let name = OsStr::from_bytes(c.take(len)?).to_os_string();
            let len = u32::from_le_bytes(c.array()?) as usize;
            xattrs.push((name, c.take(len)?.to_vec()));
        }
        entries.insert(path, CacheEntry { key, recorded_ns, hashed: Hashed { digest, xattrs } });
    }
    if !c.0.is_empty() {
        return None;
    }
    Some(entries)
}
