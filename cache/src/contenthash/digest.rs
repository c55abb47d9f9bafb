//! The length-prefixed digest encoding of a selection and the parallel hashing of its files.

use super::*;
use crate::confined::{self, Root, Stat};
use rbuild_types::Digest;
use rbuild_types::IoError;
use sha2::{Digest as _, Sha256};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Length-prefixed writer into the digest: no two different field sequences produce the same byte stream. While
/// `entry` is set, the same bytes also go to it (the digest of one entry, for [`content_files`]).
struct Encoder {
    main: Sha256,
    entry: Option<Sha256>,
}

impl Encoder {
    fn update(&mut self, b: &[u8]) {
        self.main.update(b);
        if let Some(e) = &mut self.entry {
            e.update(b);
        }
    }
    fn u8(&mut self, v: u8) {
        self.update(&[v]);
    }
    fn u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.update(b);
    }
}

const TAG_SOURCE: u8 = 1;
const TAG_MATCH: u8 = 2;
const TAG_ENTRY: u8 = 3;

fn kind_byte(st: &Stat) -> u8 {
    if st.is_dir() {
        b'd'
    } else if st.is_file() {
        b'f'
    } else if st.is_symlink() {
        b'l'
    } else if st.is_char_device() {
        b'c'
    } else if st.is_block_device() {
        b'b'
    } else if st.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

/// The xattrs of a selected entry that describe the file, sorted by name, read without following it.
pub fn entry_xattrs(root: &Root, e: &SelectedEntry) -> Result<Vec<(OsString, Vec<u8>)>, ContentHashError> {
    root.xattrs(&e.real, &e.stat, is_ignored_xattr).map_err(|err| changed_or_io(&e.real, err))
}

/// Opens a selected regular file for reading and checks that it is still the file that was listed.
pub fn open_entry(root: &Root, e: &SelectedEntry) -> Result<File, ContentHashError> {
    let f = root.open_file(&e.real).map_err(|err| changed_or_io(&e.real, err))?;
    check_unchanged(&f, e)?;
    Ok(f)
}

/// Fails with [`ContentHashError::Changed`] unless the open `f` still is `e` as listed (see [`Stat::same_content`]).
pub fn check_unchanged(f: &File, e: &SelectedEntry) -> Result<(), ContentHashError> {
    let now = confined::fstat(f).map_err(io_err("stat", &e.real))?;
    if now.same_content(&e.stat) { Ok(()) } else { Err(ContentHashError::Changed { path: e.real.clone() }) }
}

/// The target of a selected symlink, checked to be the link that was listed.
pub fn entry_link(root: &Root, e: &SelectedEntry) -> Result<PathBuf, ContentHashError> {
    let (target, st) = root.read_link(&e.real).map_err(|err| changed_or_io(&e.real, err))?;
    if (st.dev, st.ino) != (e.stat.dev, e.stat.ino) {
        return Err(ContentHashError::Changed { path: e.real.clone() });
    }
    Ok(target)
}

/// A digest of what identifies every walked entry (path, device, inode, type, mode, owner, size and, for
/// non-directories, times), with no content read. Two walks with the same fingerprint listed the same files in the
/// same state, so a copy that walks again can check it copies exactly what the cache key's digest covered.
pub fn fingerprint(trees: &[SelectedTree]) -> Digest {
    let mut enc = Encoder { main: Sha256::new(), entry: None };
    enc.bytes(b"rbuild-walk-v1");
    for tree in trees {
        enc.bytes(tree.source.source.as_bytes());
        enc.bytes(tree.source.rel.as_os_str().as_bytes());
        for e in &tree.entries {
            let st = &e.stat;
            enc.bytes(e.real.as_os_str().as_bytes());
            enc.bytes(e.rel.as_os_str().as_bytes());
            for v in [st.dev, st.ino, u64::from(st.mode), u64::from(st.uid), u64::from(st.gid)] {
                enc.u64(v);
            }
            // A directory's times move whenever anything in it changes, selected or not: its entries say enough.
            if !st.is_dir() {
                for v in [st.size as i64, st.mtime.0, st.mtime.1, st.ctime.0, st.ctime.1] {
                    enc.u64(v as u64);
                }
            }
        }
    }
    Digest::from_sha256(enc.main.finalize().into())
}

/// Digest of exactly the selected files: for every selected path (recursively for directories, parents first,
/// siblings sorted by name) its path relative to the selection, type, mode (permission and special bits), uid, gid,
/// symlink target, device numbers, xattrs (sorted, storage-specific ones left out) and, for regular files, the
/// SHA-256 of their bytes. Timestamps never enter it.
pub fn content_digest(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<Digest, ContentHashError> {
    digest_selection(root, sel, excluded, cache, false).map(|d| d.digest)
}

/// Like [`content_digest`], plus every selected path (relative to the root) with the digest of its own part of the
/// encoding (metadata and bytes), so that a changed content digest can be traced to the files that changed.
pub fn content_files(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<(Digest, Vec<(String, Digest)>), ContentHashError> {
    digest_selection(root, sel, excluded, cache, true).map(|d| (d.digest, d.files))
}

/// The content digest of a selection and the [`fingerprint`] of the walk it was computed from.
#[derive(Debug, Clone)]
pub struct HashedSelection {
    pub digest: Digest,
    pub fingerprint: Digest,
    /// Per-file digests, when asked for ([`content_files`]).
    pub files: Vec<(String, Digest)>,
}

/// [`content_digest`] and the fingerprint of the walk it hashed.
pub fn hash_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<HashedSelection, ContentHashError> {
    digest_selection(root, sel, excluded, cache, false)
}

fn digest_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
    per_file: bool,
) -> Result<HashedSelection, ContentHashError> {
    let mut files_out = Vec::new();
    let trees = walk_selection(root, sel, excluded)?;
    let files: Vec<&SelectedEntry> = trees.iter().flat_map(|t| t.entries.iter()).filter(|e| e.stat.is_file()).collect();
    // In walk order: the n-th regular file met below is `file_digests[n]`.
    let file_digests = hash_files(root, &files, cache)?;
    let mut next_file = file_digests.iter();

    let mut enc = Encoder { main: Sha256::new(), entry: None };
    enc.bytes(b"rbuild-contenthash-v1");
    enc.u8(u8::from(sel.follow_symlinks));
    let mut last_source: Option<&str> = None;
    for tree in &trees {
        if last_source != Some(tree.source.source.as_str()) {
            enc.u8(TAG_SOURCE);
            enc.bytes(tree.source.source.as_bytes());
            last_source = Some(tree.source.source.as_str());
        }
        enc.u8(TAG_MATCH);
        enc.bytes(tree.source.rel.as_os_str().as_bytes());
        for e in &tree.entries {
            let st = &e.stat;
            if per_file {
                enc.entry = Some(Sha256::new());
            }
            enc.u8(TAG_ENTRY);
            enc.bytes(e.rel.as_os_str().as_bytes());
            enc.u8(kind_byte(st));
            enc.u64(u64::from(st.permissions()));
            enc.u64(u64::from(st.uid));
            enc.u64(u64::from(st.gid));
            if st.is_symlink() {
                let target = entry_link(root, e)?;
                enc.bytes(target.as_os_str().as_bytes());
            } else {
                enc.bytes(b"");
            }
            enc.u64(if st.is_char_device() || st.is_block_device() { st.rdev } else { 0 });
            let hashed = if st.is_file() { next_file.next() } else { None };
            let listed;
            let xattrs = match hashed {
                Some(h) => &h.xattrs,
                None => {
                    listed = entry_xattrs(root, e)?;
                    &listed
                }
            };
            enc.u64(xattrs.len() as u64);
            for (name, value) in xattrs {
                enc.bytes(name.as_bytes());
                enc.bytes(value);
            }
            match hashed {
                Some(h) => enc.bytes(&h.digest),
                None => enc.bytes(b""),
            }
            if let Some(entry) = enc.entry.take() {
                let rel =
                    if e.rel.as_os_str().is_empty() { tree.source.rel.clone() } else { tree.source.rel.join(&e.rel) };
                files_out.push((rel.to_string_lossy().into_owned(), Digest::from_sha256(entry.finalize().into())));
            }
        }
    }
    Ok(HashedSelection {
        digest: Digest::from_sha256(enc.main.finalize().into()),
        fingerprint: fingerprint(&trees),
        files: files_out,
    })
}

/// A regular file's content digest and xattrs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hashed {
    pub(super) digest: [u8; 32],
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Hashes file contents, in parallel on up to 4 threads (hashing is I/O- and SHA-bound; more threads only thrash).
fn hash_files(
    root: &Root,
    files: &[&SelectedEntry],
    cache: Option<&StatCache>,
) -> Result<Vec<Hashed>, ContentHashError> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4).min(files.len());
    if workers <= 1 {
        return files.iter().map(|e| hash_one(root, e, cache)).collect();
    }
    let next = AtomicUsize::new(0);
    type Slot = Mutex<Option<Result<Hashed, ContentHashError>>>;
    let results: Vec<Slot> = files.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(e) = files.get(i) else { break };
                    let r = hash_one(root, e, cache);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(files.len());
    for (slot, e) in results.into_iter().zip(files) {
        let r = slot.into_inner().ok().flatten().ok_or_else(|| {
            ContentHashError::Io(IoError::new(
                "hash",
                e.real.clone(),
                io::Error::other("hashing thread did not finish"),
            ))
        })?;
        out.push(r?);
    }
    Ok(out)
}

/// Hashes the bytes of the file that was listed as `e`: opened beneath the root, checked to be the listed file
/// before and after reading, so the digest belongs to the stat a later copy checks against.
fn hash_one(root: &Root, e: &SelectedEntry, cache: Option<&StatCache>) -> Result<Hashed, ContentHashError> {
    let key = StatKey::of(&e.stat);
    let path = root.path().join(&e.real);
    if let Some(h) = cache.and_then(|c| c.lookup(&path, &key)) {
        return Ok(h);
    }
    let recorded_ns = now_ns();
    let mut f = open_entry(root, e)?;
    let xattrs = confined::fd_xattrs(&f, is_ignored_xattr).map_err(io_err("read xattrs of", &path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_err("read", &path)(err)),
        };
        hasher.update(&buf[..n]);
    }
    // Written to while it was read: the bytes belong to no stat anyone can check later.
    check_unchanged(&f, e)?;
    let hashed = Hashed { digest: hasher.finalize().into(), xattrs };
    if let Some(c) = cache {
        c.files_read.fetch_add(1, Ordering::Relaxed);
        c.insert(&path, key, recorded_ns, hashed.clone());
    }
    Ok(hashed)
}

pub(super) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}
