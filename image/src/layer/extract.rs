//! Layer tar → snapshot directory.
//!
//! The archive is untrusted. Every name is cleaned lexically (`.` and empty components dropped, `..` popped) and
//! rejected if it is absolute or climbs above the root; every parent component is checked to be a real directory
//! (never a symlink) before anything is created under it; files are created with `O_EXCL | O_NOFOLLOW` after
//! whatever was at the name is removed; metadata calls never dereference the final component. Since the destination
//! is a fresh directory that only this extraction writes to, these checks cannot be raced.

use super::{LayerError, write};
use rbuild_cache::overlay_xattr::{self, strip_overlay_prefix};
use rbuild_types::Digest;
use rbuild_types::IoError;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tar::EntryType;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// `.wh..wh.*` names other than the opaque marker are aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`).
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

pub(super) fn extract<R: Read>(mut reader: R, dest: &Path) -> Result<Digest, LayerError> {
    let read_err = |source| LayerError::ReadLayer { dest: dest.to_path_buf(), source };
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut reader, &mut magic).map_err(read_err)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    let stream = if magic[..n].starts_with(GZIP_MAGIC) {
        Stream::Gzip(Box::new(flate2::read::MultiGzDecoder::new(head)))
    } else if magic[..n].starts_with(ZSTD_MAGIC) {
        Stream::Zstd(Box::new(zstd::stream::read::Decoder::new(head).map_err(read_err)?))
    } else {
        Stream::Plain(head)
    };
    let hashing = HashingReader { inner: io::BufReader::with_capacity(write::BUFFER, stream), hasher: Sha256::new() };
    let mut archive = tar::Archive::new(hashing);
    let mut extractor = Extractor { dest, dirs: HashSet::new(), dir_times: Vec::new() };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        extractor.apply(&mut entry)?;
    }
    extractor.finish()?;
    // The diff_id covers the whole stream, including the zero blocks and padding after the last entry.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    Ok(Digest::from_sha256(rest.hasher.finalize().into()))
}

/// Fills as much of `buf` as the stream has; fewer bytes only at end of stream.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

enum Stream<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, io::BufReader<R>>>),
}

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(r) => r.read(buf),
            Stream::Gzip(r) => r.read(buf),
            Stream::Zstd(r) => r.read(buf),
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Metadata of one entry, with PAX records applied.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<EntryMeta, LayerError> {
        let invalid = |field| LayerError::InvalidHeader { entry: name.to_string(), field };
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(header.mode().map(u64::from), &old.mode).ok_or_else(|| invalid("mode"))? as u32 & 0o7777;
        let uid = numeric(header.uid(), &old.uid).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| invalid("uid"))?;
        let gid = numeric(header.gid(), &old.gid).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| invalid("gid"))?;
        let mtime = numeric(header.mtime(), &old.mtime).and_then(|v| i64::try_from(v).ok());
        let mut mtime = (mtime.ok_or_else(|| invalid("mtime"))?, 0);
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(|_| invalid("PAX header"))? {
            for record in records {
                let record = record.map_err(|_| invalid("PAX record"))?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(record.value_bytes()).ok_or_else(|| invalid("PAX mtime"))?;
                } else if let Some(xattr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    // overlayfs' own xattrs would change how the snapshot is read (redirects, metacopy); the opaque
                    // marker travels as `.wh..wh..opq`, never as an xattr.
                    if strip_overlay_prefix(xattr).is_none() && !xattr.is_empty() {
                        xattrs.push((xattr.to_vec(), record.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(EntryMeta { mode, uid, gid, mtime, xattrs })
    }
}

/// A parsed numeric header field; a field left blank (NULs or spaces, as some writers do) reads as 0, like Go.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> Option<u64> {
    match parsed {
        Ok(value) => Some(value),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Some(0),
        Err(_) => None,
    }
}

/// `"<secs>[.<fraction>]"`, possibly negative → (seconds, nanoseconds in 0..1e9).
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    if negative && nanos > 0 { Some((secs - 1, 1_000_000_000 - nanos)) } else { Some((secs, nanos)) }
}

/// Splits an archive name into clean components; `Err` says why the name is unsafe.
fn clean(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if name.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("`..` climbs out of the layer root");
                }
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

fn join(dest: &Path, parts: &[&[u8]]) -> PathBuf {
    let mut path = dest.to_path_buf();
    for part in parts {
        path.push(OsStr::from_bytes(part));
    }
    path
}

struct Extractor<'d> {
    dest: &'d Path,
    /// Layer-relative directories known to be real directories (created or checked), so each is checked once.
    dirs: HashSet<Vec<u8>>,
    /// Directory mtimes, applied at the end: creating children would change them.
    dir_times: Vec<(PathBuf, (i64, i64))>,
}

impl Extractor<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let mut kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        if kind == EntryType::Regular && raw.ends_with(b"/") {
            // Pre-POSIX archives mark directories only by the trailing slash.
            kind = EntryType::Directory;
        }
        let parts = clean(&raw).map_err(|reason| LayerError::UnsafePath { entry: name.clone(), reason })?;
        let meta = EntryMeta::read(entry, &name)?;

        let Some((&last, parents)) = parts.split_last() else {
            if kind != EntryType::Directory {
                return Err(LayerError::UnsafePath { entry: name, reason: "a non-directory names the layer root" });
            }
            return self.set_metadata(self.dest, &meta, MetaKind::Directory);
        };

        if last == OPAQUE_MARKER {
            let dir = self.ensure_dirs(parents, &name)?;
            return xattr::set(&dir, overlay_xattr::opaque_name(), b"y")
                .map_err(|source| LayerError::Extract(IoError::new("mark opaque", dir, source)));
        }
        if last.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(LayerError::UnsafePath { entry: name, reason: "whiteout of an invalid name" });
            }
            let path = self.ensure_dirs(parents, &name)?.join(OsStr::from_bytes(hidden));
            self.clear(&path, false)?;
            mknod(&path, libc::S_IFCHR, 0)?;
            return set_mtime(&path, meta.mtime);
        }

        let path = self.ensure_dirs(parents, &name)?.join(OsStr::from_bytes(last));
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Extract(IoError::new(op, path, source))
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&path, false)?;
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                io::copy(entry, &mut file).map_err(io_err("write the content of", &path))?;
                drop(file);
                self.set_metadata(&path, &meta, MetaKind::Other)
            }
            EntryType::Directory => {
                if !self.clear(&path, true)? {
                    DirBuilder::new().mode(0o700).create(&path).map_err(io_err("create directory", &path))?;
                }
                self.dirs.insert(parts.join(&b'/'));
                self.set_metadata(&path, &meta, MetaKind::Directory)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidHeader { entry: name.clone(), field: "symlink target" })?
                    .into_owned();
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_err("create symlink", &path))?;
                self.set_metadata(&path, &meta, MetaKind::Symlink)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidHeader { entry: name.clone(), field: "hardlink target" })?
                    .into_owned();
                let target_path = self.hardlink_target(&target, &name)?;
                self.clear(&path, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                fs::hard_link(&target_path, &path).map_err(io_err("create hardlink", &path))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let invalid = |field| LayerError::InvalidHeader { entry: name.clone(), field };
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let major =
                            entry.header().device_major().ok().flatten().ok_or_else(|| invalid("device major"))?;
                        let minor =
                            entry.header().device_minor().ok().flatten().ok_or_else(|| invalid("device minor"))?;
                        let file_type = if kind == EntryType::Char { libc::S_IFCHR } else { libc::S_IFBLK };
                        (file_type, libc::makedev(major, minor))
                    }
                };
                self.clear(&path, false)?;
                mknod(&path, file_type | 0o600, dev)?;
                self.set_metadata(&path, &meta, MetaKind::Other)
            }
            other => Err(LayerError::UnsupportedEntry { entry: name, kind: char::from(other.as_byte()) }),
        }
    }

    /// Makes sure every component of `parts` under the root is a real directory, creating missing ones (mode 0755,
    /// like containerd). A symlink or a file in the way is an error: following it could leave the root.
    fn ensure_dirs(&mut self, parts: &[&[u8]], entry: &str) -> Result<PathBuf, LayerError> {
        let mut rel: Vec<u8> = Vec::new();
        let mut path = self.dest.to_path_buf();
        for part in parts {
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(part);
            path.push(OsStr::from_bytes(part));
            if self.dirs.contains(&rel) {
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(LayerError::UnsafePath {
                        entry: entry.to_string(),
                        reason: "a parent in the layer is a symlink or not a directory",
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let err = |op| {
                        let path = path.clone();
                        move |source| LayerError::Extract(IoError::new(op, path, source))
                    };
                    DirBuilder::new().mode(0o755).create(&path).map_err(err("create directory"))?;
                    fs::set_permissions(&path, Permissions::from_mode(0o755)).map_err(err("chmod"))?;
                }
                Err(source) => return Err(LayerError::Extract(IoError::new("inspect", path, source))),
            }
            self.dirs.insert(rel.clone());
        }
        Ok(path)
    }

    /// Resolves a hardlink target to an existing non-directory of this layer, without following symlinks.
    fn hardlink_target(&self, target: &[u8], entry: &str) -> Result<PathBuf, LayerError> {
        let reject = |reason| LayerError::UnsafeLink {
            entry: entry.to_string(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason,
        };
        let parts = clean(target).map_err(reject)?;
        let Some((_, parents)) = parts.split_last() else { return Err(reject("the target is the layer root")) };
        for depth in 1..=parents.len() {
            let dir = &parents[..depth];
            if self.dirs.contains(&dir.join(&b'/')) {
                continue;
            }
            match fs::symlink_metadata(join(self.dest, dir)) {
                Ok(meta) if meta.is_dir() => {}
                _ => return Err(reject("the target is not in the layer (or lies behind a symlink)")),
            }
        }
        let path = join(self.dest, &parts);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Err(reject("the target is a directory")),
            Ok(_) => Ok(path),
            Err(_) => Err(reject("the target is not in the layer")),
        }
    }

    /// Removes what is at `path` so a new entry can take its place; a directory is kept (and `true` returned) when
    /// `keep_dir` is set, since a directory entry only updates an existing directory's metadata.
    fn clear(&mut self, path: &Path, keep_dir: bool) -> Result<bool, LayerError> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| LayerError::Extract(IoError::new(op, path, source))
        };
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && keep_dir => Ok(true),
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(path).map_err(err("replace directory"))?;
                // Cached directories under it are gone; a symlink could now take their place.
                self.dirs.clear();
                Ok(false)
            }
            Ok(_) => fs::remove_file(path).map(|()| false).map_err(err("replace")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LayerError::Extract(IoError::new("inspect", path.to_path_buf(), source))),
        }
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown clears capabilities), then mtime.
    fn set_metadata(&mut self, path: &Path, meta: &EntryMeta, kind: MetaKind) -> Result<(), LayerError> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| LayerError::Extract(IoError::new(op, path, source))
        };
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(err("chown"))?;
        if kind != MetaKind::Symlink {
            fs::set_permissions(path, Permissions::from_mode(meta.mode)).map_err(err("chmod"))?;
        }
        for (name, value) in &meta.xattrs {
            xattr::set(path, OsStr::from_bytes(name), value).map_err(err("set an xattr on"))?;
        }
        if kind == MetaKind::Directory {
            self.dir_times.push((path.to_path_buf(), meta.mtime));
            Ok(())
        } else {
            set_mtime(path, meta.mtime)
        }
    }

    fn finish(self) -> Result<(), LayerError> {
        for (path, mtime) in &self.dir_times {
            // A later entry may have replaced the directory; its own time was set then.
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                set_mtime(path, *mtime)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MetaKind {
    Directory,
    Symlink,
    Other,
}

fn c_path(path: &Path) -> Result<CString, LayerError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        LayerError::Extract(IoError::new("encode", path.to_path_buf(), io::Error::from(io::ErrorKind::InvalidInput)))
    })
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), LayerError> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LayerError::Extract(IoError::new("mknod", path.to_path_buf(), io::Error::last_os_error())))
    }
}

/// Sets atime and mtime of `path` itself (never a symlink's target).
fn set_mtime(path: &Path, (secs, nanos): (i64, i64)) -> Result<(), LayerError> {
    let c = c_path(path)?;
    let time = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as libc::c_long };
    let times = [time, time];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two initialised timespecs, both outliving the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LayerError::Extract(IoError::new("set the mtime of", path.to_path_buf(), io::Error::last_os_error())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_keeps_names_inside() {
        assert_eq!(clean(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(clean(b"a/../b").unwrap(), vec![&b"b"[..]]);
        assert!(clean(b"./").unwrap().is_empty());
        assert!(clean(b"../x").is_err());
        assert!(clean(b"a/../../x").is_err());
        assert!(clean(b"/etc/passwd").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1700000000.25"), Some((1_700_000_000, 250_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"12x"), None);
        assert_eq!(parse_pax_time(b"1.2e3"), None);
    }
}
