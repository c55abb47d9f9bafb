//! Layer tar → snapshot directory, and `ADD <archive>` → a directory of a root filesystem.
//!
//! The archive is untrusted. Every name is cleaned lexically (`.` and empty components dropped, `..` popped) and
//! rejected if it is absolute or climbs above the root; every parent component is checked to be a real directory
//! (never a symlink) before anything is created under it; files are created with `O_EXCL | O_NOFOLLOW` after
//! whatever was at the name is removed; metadata calls never dereference the final component. Since the destination
//! is a fresh directory that only this extraction writes to, these checks cannot be raced.
//!
//! `ADD` ([`ExtractMode::Add`]) follows symlinks among the parents as BuildKit does, resolving each one inside the
//! destination directory (`rbuild_cache::contenthash::resolve_in_root`, chroot semantics, one component at a time
//! from directory descriptors), so an entry still never lands outside it.

use super::{LayerError, decompress, write};
use rbuild_cache::contenthash::{is_ignored_xattr, resolve_in_root};
use rbuild_cache::overlay_xattr;
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

/// What an archive is extracted as; the differences between a layer and `ADD <archive>` are all here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtractMode {
    /// A layer tar into a fresh, empty snapshot directory. `.wh.<name>` and `.wh..wh..opq` become overlayfs
    /// whiteouts and opaque markers; a name that is absolute or climbs out with `..` is refused; no symlink is
    /// followed (a parent that is not a real directory is refused); an entry naming the root sets its metadata.
    Layer,
    /// `ADD <archive>` onto an existing directory, as BuildKit does it (moby's `chrootarchive.Untar`, checked against
    /// BuildKit 0.13): names resolve as in a chroot at the directory, so a leading `/` and `..` at the top stay
    /// inside it and symlinks among the parents are followed, inside it too. `.wh.` names are ordinary files, the
    /// root entry is skipped, a hardlink takes its header's owner, mode and time, and an xattr the destination does
    /// not support is dropped with a warning.
    Add,
}

/// How to extract an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Layer or `ADD` rules.
    pub mode: ExtractMode,
    /// The owner of every entry (and of every parent created for one) instead of the tar's: `ADD --chown`.
    pub owner: Option<(u32, u32)>,
}

impl ExtractOptions {
    /// The rules for a layer tar.
    pub fn layer() -> ExtractOptions {
        ExtractOptions { mode: ExtractMode::Layer, owner: None }
    }
}

/// Extracts `reader` into `dest`, feeding the whole uncompressed stream to `hasher` if given (a layer's diff_id;
/// `ADD` has no use for one).
pub(super) fn extract<R: Read>(
    reader: R,
    dest: &Path,
    opts: &ExtractOptions,
    hasher: Option<&mut Sha256>,
) -> Result<(), LayerError> {
    let read_err = |source| LayerError::ReadLayer { dest: dest.to_path_buf(), source };
    let stream = decompress::decompressed(reader).map_err(read_err)?;
    let hashing = HashingReader { inner: io::BufReader::with_capacity(write::BUFFER, stream), hasher };
    let mut archive = tar::Archive::new(hashing);
    let mut extractor = Extractor { dest, opts, dirs: HashSet::new(), dir_times: Vec::new() };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        extractor.apply(&mut entry)?;
    }
    extractor.finish()?;
    // The diff_id covers the whole stream, including the zero blocks and padding after the last entry; reading to
    // the end also makes the decompressor check the stream's trailer.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read_err)?;
    Ok(())
}

struct HashingReader<'h, R> {
    inner: R,
    hasher: Option<&'h mut Sha256>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = self.hasher.as_deref_mut() {
            hasher.update(&buf[..n]);
        }
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
    fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<EntryMeta, LayerError> {
        let invalid = |field| LayerError::InvalidHeader { entry: name.to_string(), field };
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(header.mode().map(u64::from), &old.mode).ok_or_else(|| invalid("mode"))? as u32 & 0o7777;
        let uid = numeric(header.uid(), &old.uid).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| invalid("uid"))?;
        let gid = numeric(header.gid(), &old.gid).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| invalid("gid"))?;
        let (uid, gid) = owner.unwrap_or((uid, gid));
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
                    // overlayfs' own xattrs would change how the snapshot is read (redirects, metacopy), and an
                    // SELinux label is the host's business; the opaque marker travels as `.wh..wh..opq`.
                    if !is_ignored_xattr(xattr) && !xattr.is_empty() {
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

/// Splits an archive name into clean components; `Err` says why the name is unsafe. A layer refuses a name that is
/// absolute or climbs out of the root; `ADD` reads it as a chroot would, the root being its own parent.
fn clean(name: &[u8], mode: ExtractMode) -> Result<Vec<&[u8]>, &'static str> {
    if name.starts_with(b"/") && mode == ExtractMode::Layer {
        return Err("absolute path");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() && mode == ExtractMode::Layer {
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

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &str, field: &'static str) -> Result<Vec<u8>, LayerError> {
    let target = entry.link_name_bytes().ok_or_else(|| LayerError::InvalidHeader { entry: name.to_string(), field })?;
    Ok(target.into_owned())
}

fn extract_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let path = path.to_path_buf();
    move |source| LayerError::Extract(IoError::new(op, path, source))
}

struct Extractor<'d> {
    dest: &'d Path,
    opts: &'d ExtractOptions,
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
        let mode = self.opts.mode;
        let parts = clean(&raw, mode).map_err(|reason| LayerError::UnsafePath { entry: name.clone(), reason })?;
        let meta = EntryMeta::read(entry, &name, self.opts.owner)?;

        let Some((&last, parents)) = parts.split_last() else {
            if kind != EntryType::Directory {
                return Err(LayerError::UnsafePath { entry: name, reason: "a non-directory names the root" });
            }
            // ADD keeps the directory it extracts into as it is (moby's Unpack skips ".").
            return match mode {
                ExtractMode::Layer => self.set_metadata(self.dest, &meta, MetaKind::Directory),
                ExtractMode::Add => Ok(()),
            };
        };

        if mode == ExtractMode::Layer {
            if last == OPAQUE_MARKER {
                let dir = self.parent_dir(parents, &name)?;
                return xattr::set(&dir, overlay_xattr::opaque_name(), b"y").map_err(extract_err("mark opaque", &dir));
            }
            if last.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(LayerError::UnsafePath { entry: name, reason: "whiteout of an invalid name" });
                }
                let path = self.parent_dir(parents, &name)?.join(OsStr::from_bytes(hidden));
                self.clear(&path, false)?;
                mknod(&path, libc::S_IFCHR, 0)?;
                return set_mtime(&path, meta.mtime);
            }
        }

        let path = self.parent_dir(parents, &name)?.join(OsStr::from_bytes(last));
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&path, false)?;
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(extract_err("create", &path))?;
                io::copy(entry, &mut file).map_err(extract_err("write the content of", &path))?;
                drop(file);
                self.set_metadata(&path, &meta, MetaKind::Other)
            }
            EntryType::Directory => {
                if !self.clear(&path, true)? {
                    DirBuilder::new().mode(0o700).create(&path).map_err(extract_err("create directory", &path))?;
                }
                if mode == ExtractMode::Layer {
                    self.dirs.insert(parts.join(&b'/'));
                }
                self.set_metadata(&path, &meta, MetaKind::Directory)
            }
            EntryType::Symlink => {
                let target = link_name(entry, &name, "symlink target")?;
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(extract_err("create symlink", &path))?;
                self.set_metadata(&path, &meta, MetaKind::Symlink)
            }
            EntryType::Link => {
                let target = link_name(entry, &name, "hardlink target")?;
                let (target_path, target_kind) = self.hardlink_target(&target, &name)?;
                self.clear(&path, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                fs::hard_link(&target_path, &path).map_err(extract_err("create hardlink", &path))?;
                match mode {
                    ExtractMode::Layer => Ok(()),
                    // moby applies a hardlink's header to the (shared) inode, as it does for any entry.
                    ExtractMode::Add => self.set_metadata(&path, &meta, target_kind),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let invalid = |field| LayerError::InvalidHeader { entry: name.clone(), field };
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let major = entry.header().device_major().map_err(|_| invalid("device major"))?;
                        let minor = entry.header().device_minor().map_err(|_| invalid("device minor"))?;
                        let (Some(major), Some(minor)) = (major, minor) else { return Err(invalid("device number")) };
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

    /// The real directory that `parents` names under the root, created (mode 0755, like containerd and moby) where
    /// missing.
    fn parent_dir(&mut self, parents: &[&[u8]], entry: &str) -> Result<PathBuf, LayerError> {
        match self.opts.mode {
            ExtractMode::Layer => self.ensure_dirs(parents, entry),
            ExtractMode::Add => {
                let rel = join(Path::new(""), parents);
                let real = resolve_in_root(self.dest, &rel, true)
                    .map_err(|source| LayerError::Resolve { entry: entry.to_string(), source: Box::new(source) })?;
                let below = real.strip_prefix(self.dest).unwrap_or(Path::new("")).to_path_buf();
                let mut path = self.dest.to_path_buf();
                for part in below.components() {
                    path.push(part);
                    self.make_parent(&path, entry)?;
                }
                Ok(path)
            }
        }
    }

    /// Layer rules: every component of `parts` under the root must be a real directory or missing. A symlink or a
    /// file in the way is an error: following it could leave the root.
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
            self.make_parent(&path, entry)?;
            self.dirs.insert(rel.clone());
        }
        Ok(path)
    }

    /// Checks that `path` (a parent of `entry`, its own parents already real directories) is a directory, creating it
    /// when missing.
    fn make_parent(&self, path: &Path, entry: &str) -> Result<(), LayerError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(LayerError::UnsafePath {
                entry: entry.to_string(),
                reason: "a parent in the archive is a symlink or not a directory",
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().mode(0o755).create(path).map_err(extract_err("create directory", path))?;
                if let Some((uid, gid)) = self.opts.owner {
                    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(extract_err("chown", path))?;
                }
                fs::set_permissions(path, Permissions::from_mode(0o755)).map_err(extract_err("chmod", path))
            }
            Err(source) => Err(LayerError::Extract(IoError::new("inspect", path.to_path_buf(), source))),
        }
    }

    /// Resolves a hardlink target to an existing non-directory (and says whether it is a symlink): for a layer, an
    /// entry of this layer reached without following a symlink; for `ADD`, whatever the name leads to in the root.
    fn hardlink_target(&self, target: &[u8], entry: &str) -> Result<(PathBuf, MetaKind), LayerError> {
        let reject = |reason| LayerError::UnsafeLink {
            entry: entry.to_string(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason,
        };
        let parts = clean(target, self.opts.mode).map_err(reject)?;
        let Some((_, parents)) = parts.split_last() else { return Err(reject("the target is the root")) };
        let path = match self.opts.mode {
            ExtractMode::Layer => {
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
                join(self.dest, &parts)
            }
            ExtractMode::Add => resolve_in_root(self.dest, &join(Path::new(""), &parts), false)
                .map_err(|source| LayerError::Resolve { entry: entry.to_string(), source: Box::new(source) })?,
        };
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Err(reject("the target is a directory")),
            Ok(meta) if meta.file_type().is_symlink() => Ok((path, MetaKind::Symlink)),
            Ok(_) => Ok((path, MetaKind::Other)),
            Err(_) => Err(reject("the target does not exist")),
        }
    }

    /// Removes what is at `path` so a new entry can take its place; a directory is kept (and `true` returned) when
    /// `keep_dir` is set, since a directory entry only updates an existing directory's metadata.
    fn clear(&mut self, path: &Path, keep_dir: bool) -> Result<bool, LayerError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && keep_dir => Ok(true),
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(path).map_err(extract_err("replace directory", path))?;
                // Cached directories under it are gone; a symlink could now take their place.
                self.dirs.clear();
                Ok(false)
            }
            Ok(_) => fs::remove_file(path).map(|()| false).map_err(extract_err("replace", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LayerError::Extract(IoError::new("inspect", path.to_path_buf(), source))),
        }
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown clears capabilities), then mtime.
    fn set_metadata(&mut self, path: &Path, meta: &EntryMeta, kind: MetaKind) -> Result<(), LayerError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(extract_err("chown", path))?;
        if kind != MetaKind::Symlink {
            fs::set_permissions(path, Permissions::from_mode(meta.mode)).map_err(extract_err("chmod", path))?;
        }
        for (name, value) in &meta.xattrs {
            match xattr::set(path, OsStr::from_bytes(name), value) {
                Ok(()) => {}
                // moby's BestEffortXattrs, which BuildKit's ADD sets.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && self.opts.mode == ExtractMode::Add => {
                    tracing::warn!(
                        path = %path.display(),
                        xattr = %String::from_utf8_lossy(name),
                        "destination does not support xattrs; dropped"
                    );
                }
                Err(e) => return Err(extract_err("set an xattr on", path)(e)),
            }
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
        let layer = |name| clean(name, ExtractMode::Layer);
        assert_eq!(layer(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(layer(b"a/../b").unwrap(), vec![&b"b"[..]]);
        assert!(layer(b"./").unwrap().is_empty());
        assert!(layer(b"../x").is_err());
        assert!(layer(b"a/../../x").is_err());
        assert!(layer(b"/etc/passwd").is_err());
        // ADD reads names as a chroot at the destination would.
        let add = |name| clean(name, ExtractMode::Add).unwrap();
        assert_eq!(add(b"../x"), vec![&b"x"[..]]);
        assert_eq!(add(b"a/../../b/../c"), vec![&b"c"[..]]);
        assert_eq!(add(b"/etc/passwd"), vec![&b"etc"[..], b"passwd"]);
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
