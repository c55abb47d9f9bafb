//! COPY and ADD into a root filesystem, with Docker's rules.
//!
//! Which files a source selects is decided by `rbuild_cache::contenthash::walk_selection`, the same code the
//! cache key is computed from, so a copy can never write files the digest did not cover. Sources are read only
//! through `rbuild_cache::confined` (beneath the source root, checked against the stat the walk listed), and
//! [`copy_checked`] also checks the walk is the one the key was hashed from. This module only decides where they
//! land and with what metadata:
//!
//! - a directory source copies its *contents*; a file lands *at* `dest`, or *inside* it when `dest` ends with `/`
//!   or is an existing directory; several selected sources (after wildcard expansion) need such a directory
//!   destination, as in Docker's classic builder (a wildcard that matches one file may still name a file);
//! - every path in the destination is resolved with symlinks relative to the destination root (`/bin -> usr/bin`
//!   is merged into, `-> /` cannot escape), and an existing non-directory in the way is replaced rather than
//!   written through, so a copy never writes outside `dest_root`;
//! - ownership: `--chown` if given, else the source's owner for `COPY --from` (`keep_owner`), else 0:0 (build
//!   context files belong to root in the image). `--chmod` applies to every copied file and directory. Missing
//!   parents of `dest` are created 0755, owned by the `--chown` owner or root;
//! - mode bits, xattrs (minus overlayfs and SELinux ones) and timestamps are copied; directory times are set last,
//!   after their children were written; hard links between copied files stay hard links;
//! - ADD extracts a local tar archive (plain, gzip and zstd in-process; bzip2 and xz through the `bzip2` and `xz`
//!   programs) into `dest` as a directory, recognised by content like Docker, keeping the archive's owners
//!   unless `--chown` is given (BuildKit ≥ 0.23 applies `--chown` to extracted entries). A file that only looks
//!   like an archive is copied as a file.

use rbuild_cache::confined::{self, Root};
use rbuild_cache::contenthash::{self, ContentHashError, SelectedEntry, Selection};
use rbuild_types::Digest;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How a COPY/ADD writes what it selected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `--chown`, already resolved to numeric ids.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`, permission and special bits.
    pub chmod: Option<u32>,
    /// ADD: extract local tar archives into `dest`.
    pub extract_archives: bool,
    /// `COPY --from`: keep the source's uid/gid (otherwise files become 0:0).
    pub keep_owner: bool,
}

/// Errors while copying or extracting into a root filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    #[error(transparent)]
    Select(#[from] ContentHashError),
    #[error("when copying more than one source file, the destination {dest:?} must be a directory and end with a /")]
    DestNotDirectory { dest: String },
    #[error("cannot copy into {path}: it exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot replace directory {path} with a non-directory")]
    IsADirectory { path: PathBuf },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read archive {archive}")]
    Archive {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive {archive}: entry {entry:?} points outside the extraction directory")]
    ArchiveBreakout { archive: PathBuf, entry: String },
    #[error("archive {archive}: hard link {entry:?} to {target:?}: target is missing or a directory")]
    ArchiveLink { archive: PathBuf, entry: String, target: String },
    #[error("archive {archive}: cannot run {program:?} to decompress it")]
    DecompressorSpawn {
        archive: PathBuf,
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("archive {archive}: {program:?} failed ({status})")]
    DecompressorFailed { archive: PathBuf, program: &'static str, status: std::process::ExitStatus },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io { op, path: path.to_path_buf(), source }
}

/// Copies the selected sources from `src_root` into `dest_root` at `dest` (absolute inside `dest_root`, already
/// joined with WORKDIR). See the module documentation for the rules.
pub fn copy(
    src_root: &Path,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    copy_checked(src_root, sources, excluded, dest_root, dest, opts, None)
}

/// [`copy`], failing with [`ContentHashError::Changed`] unless the walk of the sources has the fingerprint
/// `expect_walk` ([`contenthash::fingerprint`]): the one the step's cache key was hashed from. Every file is read
/// beneath `src_root` and checked to be the file that walk listed, so a layer holds what its key says.
pub fn copy_checked(
    src_root: &Path,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    expect_walk: Option<&Digest>,
) -> Result<(), CopyError> {
    let src = Root::open(src_root).map_err(io_err("open", src_root))?;
    copy_from(&src, sources, excluded, dest_root, dest, opts, expect_walk)
}

/// [`copy_checked`] from a source root that is already open (the build context, opened once per build).
pub fn copy_from(
    src: &Root,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    expect_walk: Option<&Digest>,
) -> Result<(), CopyError> {
    let sel = Selection { sources: sources.to_vec(), follow_symlinks: true };
    let trees = contenthash::walk_selection(src, &sel, excluded)?;
    if let Some(want) = expect_walk
        && contenthash::fingerprint(&trees) != *want
    {
        return Err(ContentHashError::Changed { path: src.path().to_path_buf() }.into());
    }
    let dest_rel = contenthash::clean_clamped(dest);
    let dir_syntax = dest.ends_with('/') || dest.ends_with("/.") || dest_rel.as_os_str().is_empty();
    let mut c = Copier { src, dest_root, opts, hardlinks: HashMap::new(), dir_times: Vec::new() };
    if trees.len() > 1 && !dir_syntax && !c.is_dir_in_root(&dest_rel)? {
        return Err(CopyError::DestNotDirectory { dest: dest.to_string() });
    }
    for tree in &trees {
        let top = &tree.entries[0];
        if top.stat.is_dir() {
            let target = c.top_dir(&dest_rel, top)?;
            let mut dirs: HashMap<&Path, PathBuf> = HashMap::new();
            dirs.insert(Path::new(""), target);
            for e in &tree.entries[1..] {
                let parent = e.rel.parent().unwrap_or(Path::new(""));
                let (Some(pdir), Some(name)) = (dirs.get(parent), e.rel.file_name()) else {
                    // walk_selection lists parents before children; anything else is a bug in the walk.
                    return Err(CopyError::Io {
                        op: "place",
                        path: e.real.clone(),
                        source: io::Error::other("entry listed before its parent directory"),
                    });
                };
                let target = pdir.join(name);
                if e.stat.is_dir() {
                    let real = c.dir_entry(e, &target)?;
                    dirs.insert(e.rel.as_path(), real);
                } else {
                    c.non_dir_entry(e, &target)?;
                }
            }
        } else if opts.extract_archives
            && top.stat.is_file()
            && let Some(kind) = sniff_archive(src, top)?
        {
            let dir = c.mkdir_all(&dest_rel)?;
            c.extract(top, kind, &dir)?;
        } else {
            let target = if dir_syntax || c.is_dir_in_root(&dest_rel)? {
                let name = tree.source.rel.file_name().or(top.real.file_name()).unwrap_or(OsStr::new("file"));
                c.mkdir_all(&dest_rel)?.join(name)
            } else {
                // `COPY f /x` where /x is a symlink writes to its target, like cp; resolved inside dest_root.
                let real = contenthash::resolve_in_root(dest_root, &dest_rel, true)?;
                let parent_rel = real.parent().and_then(|p| p.strip_prefix(dest_root).ok()).unwrap_or(Path::new(""));
                let parent = c.mkdir_all(parent_rel)?;
                parent.join(real.file_name().unwrap_or(OsStr::new("file")))
            };
            c.non_dir_entry(top, &target)?;
        }
    }
    c.finish()
}

/// Timestamps as (seconds, nanoseconds): access, modification.
type Times = [(i64, i64); 2];

/// Metadata to give one written entry.
struct Meta {
    uid: u32,
    gid: u32,
    /// None for symlinks (their mode cannot be set on Linux).
    mode: Option<u32>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    times: Times,
}

struct Copier<'a> {
    src: &'a Root,
    dest_root: &'a Path,
    opts: &'a CopyOptions,
    /// (dev, ino) of a copied multiply-linked source file → where it was written.
    hardlinks: HashMap<(u64, u64), PathBuf>,
    /// Directories whose times are set once everything below them is written.
    dir_times: Vec<(PathBuf, Times)>,
}

fn lstat_opt(path: &Path) -> Result<Option<Metadata>, CopyError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn times_of(st: &confined::Stat) -> Times {
    [st.atime, st.mtime]
}

fn set_times(path: &Path, times: &Times) -> Result<(), CopyError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io_err("set times of", path)(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let ts = times.map(|(s, ns)| libc::timespec { tv_sec: s as libc::time_t, tv_nsec: ns as libc::c_long });
    // SAFETY: `c` is a NUL-terminated path and `ts` holds the two timespecs utimensat reads.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io_err("set times of", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn mknod(path: &Path, kind: libc::mode_t, rdev: libc::dev_t) -> Result<(), CopyError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io_err("create device node", path)(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: `c` is a NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, rdev) };
    if rc != 0 {
        return Err(io_err("create device node", path)(io::Error::last_os_error()));
    }
    Ok(())
}

impl Copier<'_> {
    fn default_owner(&self) -> (u32, u32) {
        self.opts.chown.unwrap_or((0, 0))
    }

    /// The metadata to give a copy of `e`; `xattrs` as read from the source (through the fd the copy read, for
    /// regular files).
    fn meta_from(&self, e: &SelectedEntry, xattrs: Vec<(OsString, Vec<u8>)>) -> Meta {
        let st = &e.stat;
        let (uid, gid) = self.opts.chown.unwrap_or(if self.opts.keep_owner { (st.uid, st.gid) } else { (0, 0) });
        let mode = if st.is_symlink() { None } else { Some(self.opts.chmod.unwrap_or(st.permissions())) };
        Meta { uid, gid, mode, xattrs, times: times_of(st) }
    }

    fn is_dir_in_root(&self, rel: &Path) -> Result<bool, CopyError> {
        let real = contenthash::resolve_in_root(self.dest_root, rel, true)?;
        Ok(lstat_opt(&real)?.is_some_and(|m| m.is_dir()))
    }

    /// Creates `rel` and its missing parents (0755, default owner) inside the root; returns the real directory.
    fn mkdir_all(&mut self, rel: &Path) -> Result<PathBuf, CopyError> {
        let real = contenthash::resolve_in_root(self.dest_root, rel, true)?;
        let below = real.strip_prefix(self.dest_root).unwrap_or(Path::new(""));
        let mut cur = self.dest_root.to_path_buf();
        for comp in below.components() {
            cur.push(comp);
            match lstat_opt(&cur)? {
                Some(md) if md.is_dir() => {}
                Some(_) => return Err(CopyError::NotADirectory { path: cur }),
                None => {
                    fs::create_dir(&cur).map_err(io_err("create directory", &cur))?;
                    let (uid, gid) = self.default_owner();
                    std::os::unix::fs::lchown(&cur, Some(uid), Some(gid)).map_err(io_err("chown", &cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &cur))?;
                }
            }
        }
        Ok(real)
    }

    /// The directory a directory source's contents go into: `dest` itself. A missing one is created like a missing
    /// parent (0755, the `--chown` owner or root), not with the source directory's metadata or `--chmod`: that
    /// is what BuildKit 0.13 does (checked by the differential suite); an existing directory keeps its own
    /// metadata (`COPY . /` must not chmod `/`).
    fn top_dir(&mut self, dest_rel: &Path, _top: &SelectedEntry) -> Result<PathBuf, CopyError> {
        let real = contenthash::resolve_in_root(self.dest_root, dest_rel, true)?;
        match lstat_opt(&real)? {
            Some(md) if md.is_dir() => Ok(real),
            Some(_) => Err(CopyError::NotADirectory { path: real }),
            None => self.mkdir_all(dest_rel),
        }
    }

    /// Creates or merges into a directory at `target`; returns the real directory (a symlink to a directory inside
    /// the root is followed, relative to the root).
    fn dir_entry(&mut self, e: &SelectedEntry, target: &Path) -> Result<PathBuf, CopyError> {
        let xattrs = contenthash::entry_xattrs(self.src, e)?;
        let meta = self.meta_from(e, xattrs);
        self.make_dir(target, &meta)
    }

    /// Subdirectories take the source's metadata even when they exist, as extracting a tar over them would.
    fn make_dir(&mut self, target: &Path, meta: &Meta) -> Result<PathBuf, CopyError> {
        match lstat_opt(target)? {
            None => {
                fs::create_dir(target).map_err(io_err("create directory", target))?;
                self.apply(target, meta, true)?;
                Ok(target.to_path_buf())
            }
            Some(md) if md.is_dir() => {
                self.apply(target, meta, true)?;
                Ok(target.to_path_buf())
            }
            Some(md) if md.file_type().is_symlink() => {
                let rel = target.strip_prefix(self.dest_root).unwrap_or(Path::new(""));
                let real = contenthash::resolve_in_root(self.dest_root, rel, true)?;
                if lstat_opt(&real)?.is_some_and(|m| m.is_dir()) {
                    Ok(real)
                } else {
                    Err(CopyError::NotADirectory { path: target.to_path_buf() })
                }
            }
            Some(_) => Err(CopyError::NotADirectory { path: target.to_path_buf() }),
        }
    }

    /// Removes a non-directory at `target` so a fresh entry can be created there (never writing through it).
    fn clear_target(&self, target: &Path) -> Result<(), CopyError> {
        match lstat_opt(target)? {
            Some(md) if md.is_dir() => Err(CopyError::IsADirectory { path: target.to_path_buf() }),
            Some(_) => fs::remove_file(target).map_err(io_err("replace", target)),
            None => Ok(()),
        }
    }

    fn non_dir_entry(&mut self, e: &SelectedEntry, target: &Path) -> Result<(), CopyError> {
        self.clear_target(target)?;
        let st = &e.stat;
        let xattrs = if st.is_file() {
            if st.nlink > 1
                && let Some(first) = self.hardlinks.get(&(st.dev, st.ino))
            {
                return fs::hard_link(first, target).map_err(io_err("hard link", target));
            }
            // Read beneath the source root and checked to be the listed file before and after the bytes move.
            let mut src = contenthash::open_entry(self.src, e)?;
            let xattrs = confined::fd_xattrs(&src, contenthash::is_ignored_xattr)
                .map_err(io_err("read xattrs of", &self.src.path().join(&e.real)))?;
            let mut dst = create_file(target)?;
            io::copy(&mut src, &mut dst).map_err(io_err("write", target))?;
            contenthash::check_unchanged(&src, e)?;
            if st.nlink > 1 {
                self.hardlinks.insert((st.dev, st.ino), target.to_path_buf());
            }
            xattrs
        } else if st.is_symlink() {
            let link = contenthash::entry_link(self.src, e)?;
            std::os::unix::fs::symlink(&link, target).map_err(io_err("create symlink", target))?;
            contenthash::entry_xattrs(self.src, e)?
        } else if st.is_fifo() {
            mknod(target, libc::S_IFIFO, 0)?;
            contenthash::entry_xattrs(self.src, e)?
        } else if st.is_char_device() {
            mknod(target, libc::S_IFCHR, st.rdev)?;
            contenthash::entry_xattrs(self.src, e)?
        } else if st.is_block_device() {
            mknod(target, libc::S_IFBLK, st.rdev)?;
            contenthash::entry_xattrs(self.src, e)?
        } else {
            tracing::debug!(path = %e.real.display(), "skipping socket in COPY source");
            return Ok(());
        };
        let meta = self.meta_from(e, xattrs);
        self.apply(target, &meta, false)
    }

    /// Owner first (chown clears set-id bits), then mode, xattrs (after chown, which drops file capabilities),
    /// then times (directories: at the end).
    fn apply(&mut self, path: &Path, meta: &Meta, is_dir: bool) -> Result<(), CopyError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(io_err("chown", path))?;
        if let Some(mode) = meta.mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
        }
        for (name, value) in &meta.xattrs {
            if let Err(e) = xattr::set(path, name, value) {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    tracing::warn!(path = %path.display(), xattr = %name.to_string_lossy(), "destination does not support xattrs; dropped");
                } else {
                    return Err(io_err("set xattr on", path)(e));
                }
            }
        }
        if is_dir {
            self.dir_times.push((path.to_path_buf(), meta.times));
            Ok(())
        } else {
            set_times(path, &meta.times)
        }
    }

    fn finish(self) -> Result<(), CopyError> {
        for (path, times) in self.dir_times.iter().rev() {
            set_times(path, times)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------------
    // ADD archive extraction

    fn extract(&mut self, e: &SelectedEntry, kind: Compression, dir: &Path) -> Result<(), CopyError> {
        let archive_path = self.src.path().join(&e.real);
        let archive = archive_path.as_path();
        let arch_err = |source| CopyError::Archive { archive: archive.to_path_buf(), source };
        let dir_rel = dir.strip_prefix(self.dest_root).unwrap_or(Path::new("")).to_path_buf();
        let file = contenthash::open_entry(self.src, e)?;
        let check = file.try_clone().map_err(arch_err)?;
        let mut stream = Decompressed::open(file, archive, kind)?;
        {
            let mut ar = tar::Archive::new(&mut stream.reader);
            for entry in ar.entries().map_err(arch_err)? {
                let mut entry = entry.map_err(arch_err)?;
                let raw = entry.path_bytes().into_owned();
                let name = String::from_utf8_lossy(&raw).into_owned();
                let breakout = || CopyError::ArchiveBreakout { archive: archive.to_path_buf(), entry: name.clone() };
                let parts = clean_archive_path(&raw).ok_or_else(breakout)?;
                let Some((last, parents)) = parts.split_last() else { continue };
                let header = entry.header();
                let kind = header.entry_type();
                // Empty numeric fields read as 0, as Go's archive/tar (what Docker uses) reads them.
                let (uid, gid) = match self.opts.chown {
                    Some(o) => o,
                    None => (
                        header.uid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                        header.gid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                    ),
                };
                let mtime = header.mtime().ok().and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
                let mode = header.mode().unwrap_or(0) & 0o7777;
                let dev = (header.device_major().ok().flatten(), header.device_minor().ok().flatten());
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                let mut xattrs = Vec::new();
                if let Some(pax) = entry.pax_extensions().map_err(arch_err)? {
                    for ext in pax {
                        let ext = ext.map_err(arch_err)?;
                        if let Some(x) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                            && !contenthash::is_ignored_xattr(x)
                        {
                            xattrs.push((OsStr::from_bytes(x).to_os_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
                let meta = Meta {
                    uid,
                    gid,
                    mode: if kind.is_symlink() { None } else { Some(mode) },
                    xattrs,
                    times: [(mtime, 0), (mtime, 0)],
                };
                let parent = self.mkdir_all(&dir_rel.join(parents.iter().collect::<PathBuf>()))?;
                let target = parent.join(last);
                if kind.is_dir() {
                    self.make_dir(&target, &meta)?;
                    continue;
                }
                self.clear_target(&target)?;
                if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
                    let mut f = create_file(&target)?;
                    io::copy(&mut entry, &mut f).map_err(arch_err)?;
                } else if kind.is_symlink() {
                    let link = link.unwrap_or_default();
                    std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                        .map_err(io_err("create symlink", &target))?;
                } else if kind.is_hard_link() {
                    let link = link.unwrap_or_default();
                    let link_name = String::from_utf8_lossy(&link).into_owned();
                    let link_parts = clean_archive_path(&link).ok_or_else(breakout)?;
                    let rel = dir_rel.join(link_parts.iter().collect::<PathBuf>());
                    let src = contenthash::resolve_in_root(self.dest_root, &rel, false)?;
                    if lstat_opt(&src)?.is_none_or(|m| m.is_dir()) {
                        return Err(CopyError::ArchiveLink {
                            archive: archive.to_path_buf(),
                            entry: name,
                            target: link_name,
                        });
                    }
                    fs::hard_link(&src, &target).map_err(io_err("hard link", &target))?;
                    continue;
                } else if kind.is_fifo() {
                    mknod(&target, libc::S_IFIFO, 0)?;
                } else if kind.is_character_special() || kind.is_block_special() {
                    let (major, minor) = (dev.0.unwrap_or(0), dev.1.unwrap_or(0));
                    let t = if kind.is_character_special() { libc::S_IFCHR } else { libc::S_IFBLK };
                    mknod(&target, t, libc::makedev(major, minor))?;
                } else {
                    tracing::debug!(entry = %name, "skipping unsupported tar entry type in ADD archive");
                    continue;
                }
                self.apply(&target, &meta, false)?;
            }
        }
        stream.finish(archive)?;
        contenthash::check_unchanged(&check, e)?;
        Ok(())
    }
}

fn create_file(target: &Path) -> Result<File, CopyError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(target)
        .map_err(io_err("create", target))
}

/// Cleans an archive member name; `None` when `..` would climb above the extraction directory.
fn clean_archive_path(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut parts: Vec<OsString> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            p => parts.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Some(parts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn program(self) -> Option<&'static str> {
        match self {
            Compression::Bzip2 => Some("bzip2"),
            Compression::Xz => Some("xz"),
            // gzip and zstd are decoded in process, with the crates layers use.
            Compression::None | Compression::Gzip | Compression::Zstd => None,
        }
    }
}

/// A decompressed view of an archive file; external decompressors are reaped (or killed) when done.
struct Decompressed {
    reader: Box<dyn Read>,
    child: Option<(Child, &'static str)>,
}

impl Decompressed {
    /// Reads `file` (the archive at `archive`, named in errors) decompressed as `kind`.
    fn open(file: File, archive: &Path, kind: Compression) -> Result<Decompressed, CopyError> {
        if let Some(program) = kind.program() {
            let mut child = Command::new(program)
                .arg("-dc")
                .stdin(Stdio::from(file))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| CopyError::DecompressorSpawn { archive: archive.to_path_buf(), program, source })?;
            let Some(stdout) = child.stdout.take() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CopyError::DecompressorSpawn {
                    archive: archive.to_path_buf(),
                    program,
                    source: io::Error::other("no stdout pipe"),
                });
            };
            return Ok(Decompressed { reader: Box::new(stdout), child: Some((child, program)) });
        }
        let buffered = io::BufReader::new(file);
        let reader: Box<dyn Read> = match kind {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?,
            ),
            _ => Box::new(buffered),
        };
        Ok(Decompressed { reader, child: None })
    }

    /// Drains the stream (so the decompressor is not blocked on a full pipe) and checks its exit status.
    fn finish(mut self, archive: &Path) -> Result<(), CopyError> {
        io::copy(&mut self.reader, &mut io::sink())
            .map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?;
        if let Some((mut child, program)) = self.child.take() {
            let status =
                child.wait().map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?;
            if !status.success() {
                return Err(CopyError::DecompressorFailed { archive: archive.to_path_buf(), program, status });
            }
        }
        Ok(())
    }
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        if let Some((child, _)) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `path` is a tar archive (possibly compressed), judged by content as Docker does.
fn sniff_archive(src: &Root, e: &SelectedEntry) -> Result<Option<Compression>, CopyError> {
    let path = &src.path().join(&e.real);
    let mut head = [0u8; 6];
    let mut f = contenthash::open_entry(src, e)?;
    let n = read_full(&mut f, &mut head).map_err(io_err("read", path))?;
    let kind = Compression::from_magic(&head[..n]);
    f.seek(io::SeekFrom::Start(0)).map_err(io_err("read", path))?;
    let mut stream = Decompressed::open(f, path, kind)?;
    let mut block = [0u8; 512];
    // A decompression error means "not an archive" (Docker copies such files as they are).
    let got = read_full(&mut stream.reader, &mut block).unwrap_or(0);
    Ok((got == block.len() && is_tar_header(&block)).then_some(kind))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A 512-byte block is a tar header when its checksum field matches the sum of its bytes (with the field itself
/// counted as spaces); historic tars summed signed bytes, so both sums are accepted.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> =
        field.iter().copied().skip_while(|&b| b == b' ').take_while(|b| (b'0'..=b'7').contains(b)).collect();
    if digits.is_empty() {
        return false;
    }
    let Ok(want) = u64::from_str_radix(&String::from_utf8_lossy(&digits), 8) else { return false };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::symlink;

    struct Fixture {
        _tmp: tempfile::TempDir,
        src: PathBuf,
        dst: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("rootfs");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        Fixture { _tmp: tmp, src, dst }
    }

    fn write(root: &Path, rel: &str, data: &str, mode: u32) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn none(_: &str) -> bool {
        false
    }

    fn run(f: &Fixture, sources: &[&str], dest: &str, opts: &CopyOptions) -> Result<(), CopyError> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        copy(&f.src, &sources, &none, &f.dst, dest, opts)
    }

    /// Every entry under `root` as "path type mode uid:gid [content|->target]", sorted.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let md = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let own = format!("{}:{}", md.uid(), md.gid());
                if md.is_dir() {
                    out.push(format!("{rel}/ {:o} {own}", md.mode() & 0o7777));
                    walk(root, &p, out);
                } else if md.file_type().is_symlink() {
                    out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
                } else {
                    out.push(format!("{rel} {:o} {own} {}", md.mode() & 0o7777, fs::read_to_string(&p).unwrap()));
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    fn ctx() -> Fixture {
        let f = fixture();
        write(&f.src, "a.txt", "A", 0o640);
        write(&f.src, "b.txt", "B", 0o644);
        write(&f.src, "dir/x", "X", 0o755);
        write(&f.src, "dir/sub/y", "Y", 0o600);
        fs::set_permissions(f.src.join("dir/sub"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(f.src.join("dir"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../a.txt", f.src.join("dir/rel-link")).unwrap();
        symlink("a.txt", f.src.join("link")).unwrap();
        for p in ["a.txt", "b.txt", "dir", "dir/x", "dir/sub", "dir/sub/y", "dir/rel-link", "link"] {
            std::os::unix::fs::lchown(f.src.join(p), Some(1000), Some(1000)).unwrap();
        }
        f
    }

    #[test]
    fn copy_table() {
        let ctx_opts = CopyOptions::default();
        let cases: &[(&str, &[&str], &str, &[&str])] = &[
            ("file to new name", &["a.txt"], "/x", &["x 640 0:0 A"]),
            ("file into dir by trailing slash", &["a.txt"], "/x/", &["x/ 755 0:0", "x/a.txt 640 0:0 A"]),
            (
                "file into deep missing parents",
                &["a.txt"],
                "/p/q/r",
                &["p/ 755 0:0", "p/q/ 755 0:0", "p/q/r 640 0:0 A"],
            ),
            (
                "dir copies contents",
                &["dir"],
                "/d",
                &["d/ 755 0:0", "d/rel-link -> ../a.txt", "d/sub/ 750 0:0", "d/sub/y 600 0:0 Y", "d/x 755 0:0 X"],
            ),
            (
                "dir with trailing slash copies contents",
                &["dir/"],
                "/d/",
                &["d/ 755 0:0", "d/rel-link -> ../a.txt", "d/sub/ 750 0:0", "d/sub/y 600 0:0 Y", "d/x 755 0:0 X"],
            ),
            ("wildcard into dir", &["*.txt"], "/dst/", &["dst/ 755 0:0", "dst/a.txt 640 0:0 A", "dst/b.txt 644 0:0 B"]),
            ("single-match wildcard names a file", &["a*.txt"], "/single", &["single 640 0:0 A"]),
            (
                "several sources into dir",
                &["a.txt", "dir/x"],
                "/m/",
                &["m/ 755 0:0", "m/a.txt 640 0:0 A", "m/x 755 0:0 X"],
            ),
            ("final symlink is followed", &["link"], "/l", &["l 640 0:0 A"]),
            ("final symlink into dir keeps its name", &["link"], "/l/", &["l/ 755 0:0", "l/link 640 0:0 A"]),
            ("dot source is the whole root", &["sub"], "/", &["y 600 0:0 Y"]),
        ];
        for &(name, sources, dest, want) in cases {
            let f = ctx();
            // "sub" case copies from a nested root to exercise `/` as dest.
            let f = if sources == ["sub"] { Fixture { src: f.src.join("dir"), ..f } } else { f };
            run(&f, sources, dest, &ctx_opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(tree(&f.dst), want, "{name}");
        }
    }

    #[test]
    fn several_sources_need_a_directory_destination() {
        let f = ctx();
        for (sources, dest) in [(&["a.txt", "b.txt"][..], "/dst"), (&["*.txt"][..], "/dst")] {
            let err = run(&f, sources, dest, &CopyOptions::default()).unwrap_err();
            assert!(matches!(&err, CopyError::DestNotDirectory { dest: d } if d == "/dst"), "{err}");
            assert!(err.to_string().contains("/dst"));
        }
        fs::create_dir(f.dst.join("dst")).unwrap();
        run(&f, &["a.txt", "b.txt"], "/dst", &CopyOptions::default()).unwrap();
        assert!(f.dst.join("dst/a.txt").is_file() && f.dst.join("dst/b.txt").is_file());
    }

    #[test]
    fn owners_and_modes() {
        let f = ctx();
        run(&f, &["dir"], "/keep", &CopyOptions { keep_owner: true, ..Default::default() }).unwrap();
        assert_eq!(fs::metadata(f.dst.join("keep/sub/y")).unwrap().uid(), 1000);
        assert_eq!(fs::symlink_metadata(f.dst.join("keep/rel-link")).unwrap().uid(), 1000);

        let opts = CopyOptions { chown: Some((7, 8)), chmod: Some(0o700), ..Default::default() };
        run(&f, &["dir"], "/new/parent/chowned", &opts).unwrap();
        let t = tree(&f.dst.join("new"));
        assert_eq!(
            t,
            [
                "parent/ 755 7:8",
                // A missing destination directory is made like a parent: --chmod is for what is copied.
                "parent/chowned/ 755 7:8",
                "parent/chowned/rel-link -> ../a.txt",
                "parent/chowned/sub/ 700 7:8",
                "parent/chowned/sub/y 700 7:8 Y",
                "parent/chowned/x 700 7:8 X",
            ]
        );
        assert_eq!(fs::symlink_metadata(f.dst.join("new/parent/chowned/rel-link")).unwrap().uid(), 7);

        // Set-id bits survive the chown that would clear them.
        write(&f.src, "suid", "S", 0o4755);
        run(&f, &["suid"], "/bin/suid", &CopyOptions::default()).unwrap();
        assert_eq!(fs::metadata(f.dst.join("bin/suid")).unwrap().mode() & 0o7777, 0o4755);
    }

    #[test]
    fn existing_dest_dir_keeps_its_metadata_and_times_are_copied() {
        let f = ctx();
        fs::set_permissions(&f.dst, fs::Permissions::from_mode(0o711)).unwrap();
        let c = std::ffi::CString::new(f.src.join("dir/x").as_os_str().as_bytes()).unwrap();
        let ts = [libc::timespec { tv_sec: 1_000_000, tv_nsec: 7 }, libc::timespec { tv_sec: 1_000_000, tv_nsec: 7 }];
        // SAFETY: valid path and timespecs.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) }, 0);
        let sub_mtime = fs::metadata(f.src.join("dir/sub")).unwrap().mtime();
        run(&f, &["dir"], "/", &CopyOptions::default()).unwrap();
        assert_eq!(fs::metadata(&f.dst).unwrap().mode() & 0o7777, 0o711, "COPY dir / must not chmod /");
        let md = fs::metadata(f.dst.join("x")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 7));
        assert_eq!(fs::metadata(f.dst.join("sub")).unwrap().mtime(), sub_mtime, "dir mtime set after its children");
    }

    #[test]
    fn hardlinks_stay_linked_and_existing_files_are_replaced() {
        let f = ctx();
        write(&f.src, "h/one", "same inode", 0o644);
        fs::hard_link(f.src.join("h/one"), f.src.join("h/two")).unwrap();
        write(&f.dst, "out/one", "old content", 0o600);
        symlink("/etc/passwd", f.dst.join("out/two")).unwrap();
        run(&f, &["h"], "/out", &CopyOptions::default()).unwrap();
        let a = fs::metadata(f.dst.join("out/one")).unwrap();
        let b = fs::symlink_metadata(f.dst.join("out/two")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(fs::read_to_string(f.dst.join("out/two")).unwrap(), "same inode");
    }

    #[test]
    fn source_escapes_are_rejected_or_contained() {
        let f = ctx();
        let err = run(&f, &["../x"], "/x", &CopyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("../x"), "{err}");
        assert!(matches!(err, CopyError::Select(ContentHashError::EscapesRoot { .. })));

        // A source symlink to /etc resolves inside the source root: the host's /etc/passwd is never read.
        symlink("/etc", f.src.join("etc-link")).unwrap();
        let err = run(&f, &["etc-link/passwd"], "/p", &CopyOptions::default()).unwrap_err();
        assert!(matches!(err, CopyError::Select(ContentHashError::NotFound { .. })), "{err}");
        write(&f.src, "etc/passwd", "context passwd", 0o644);
        run(&f, &["etc-link/passwd"], "/p", &CopyOptions::default()).unwrap();
        assert_eq!(fs::read_to_string(f.dst.join("p")).unwrap(), "context passwd");

        // Inside a copied directory the link stays a link (copied as is, not followed).
        fs::create_dir(f.src.join("withlink")).unwrap();
        symlink("/etc", f.src.join("withlink/etc")).unwrap();
        run(&f, &["withlink"], "/w", &CopyOptions::default()).unwrap();
        assert_eq!(fs::read_link(f.dst.join("w/etc")).unwrap(), PathBuf::from("/etc"));
    }

    #[test]
    fn dest_symlinks_resolve_inside_dest_root() {
        let f = ctx();
        symlink("/", f.dst.join("evil")).unwrap();
        symlink("../../../../../..", f.dst.join("up")).unwrap();
        run(&f, &["a.txt"], "/evil/escaped.txt", &CopyOptions::default()).unwrap();
        assert_eq!(fs::read_to_string(f.dst.join("escaped.txt")).unwrap(), "A");
        assert!(!Path::new("/escaped.txt").exists());
        run(&f, &["b.txt"], "/up/tmp/", &CopyOptions::default()).unwrap();
        assert_eq!(fs::read_to_string(f.dst.join("tmp/b.txt")).unwrap(), "B");
        // Dest path with `..` is clamped at the root too.
        run(&f, &["a.txt"], "/../../clamped", &CopyOptions::default()).unwrap();
        assert!(f.dst.join("clamped").is_file());

        // Merging a tree into /bin -> usr/bin writes into usr/bin and keeps the link.
        fs::create_dir_all(f.dst.join("usr/bin")).unwrap();
        symlink("usr/bin", f.dst.join("bin")).unwrap();
        write(&f.src, "rootfs/bin/tool", "T", 0o755);
        run(&f, &["rootfs"], "/", &CopyOptions::default()).unwrap();
        assert!(fs::symlink_metadata(f.dst.join("bin")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(f.dst.join("usr/bin/tool")).unwrap(), "T");

        // A file where a directory must go is an error naming the path.
        write(&f.dst, "blocker", "", 0o644);
        let err = run(&f, &["a.txt"], "/blocker/x/", &CopyOptions::default()).unwrap_err();
        assert!(matches!(err, CopyError::NotADirectory { .. }), "{err}");
    }

    /// Issue #9 hole 5, deterministically: the source directory is swapped for a symlink to a host directory (with
    /// files of the same names) while the copy walks it. Nothing of the host directory may be copied.
    #[test]
    fn a_source_dir_swapped_for_a_symlink_mid_copy_is_never_followed() {
        let f = fixture();
        let host = f.src.parent().unwrap().join("host");
        write(&f.src, "d/f1", "context", 0o644);
        write(&f.src, "d/f2", "context", 0o644);
        write(&host, "f1", "CANARY", 0o644);
        write(&host, "f2", "CANARY", 0o644);
        let swapped = std::sync::atomic::AtomicBool::new(false);
        let swap = |p: &str| {
            if p == "d/f1" && !swapped.swap(true, std::sync::atomic::Ordering::SeqCst) {
                fs::rename(f.src.join("d"), f.src.join("d.real")).unwrap();
                symlink(&host, f.src.join("d")).unwrap();
            }
            false
        };
        let result = copy(&f.src, &["d/".to_string()], &swap, &f.dst, "/out/", &CopyOptions::default());
        assert!(swapped.load(std::sync::atomic::Ordering::SeqCst), "the swap happened during the copy");
        for name in ["f1", "f2"] {
            let copied = fs::read_to_string(f.dst.join("out").join(name)).unwrap_or_default();
            assert!(!copied.contains("CANARY"), "the host's {name} was copied: {result:?}");
        }
        assert!(result.is_err(), "the copy notices the change");
    }

    #[test]
    fn a_copy_checks_it_copies_what_was_hashed() {
        let f = ctx();
        let root = Root::open(&f.src).unwrap();
        let sel = Selection { sources: vec!["dir".into()], follow_symlinks: true };
        let hashed = contenthash::hash_selection(&root, &sel, &none, None).unwrap();
        let sources = ["dir".to_string()];
        copy_checked(&f.src, &sources, &none, &f.dst, "/same/", &CopyOptions::default(), Some(&hashed.fingerprint))
            .unwrap();
        fs::write(f.src.join("dir/x"), "edited after hashing").unwrap();
        let err =
            copy_checked(&f.src, &sources, &none, &f.dst, "/late/", &CopyOptions::default(), Some(&hashed.fingerprint))
                .unwrap_err();
        assert!(matches!(err, CopyError::Select(ContentHashError::Changed { .. })), "{err}");
    }

    #[test]
    fn exclusions_apply_to_the_copy() {
        let f = ctx();
        let excluded = |p: &str| p == "dir/sub" || p.starts_with("dir/sub/") || p == "b.txt";
        copy(&f.src, &["*".to_string()], &excluded, &f.dst, "/e/", &CopyOptions::default()).unwrap();
        assert!(f.dst.join("e/a.txt").exists());
        assert!(!f.dst.join("e/b.txt").exists());
        assert!(f.dst.join("e/x").exists(), "dir matched by * copies its contents");
        assert!(!f.dst.join("e/sub").exists());
    }

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_mtime(1_500_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn sample_tar() -> Vec<u8> {
        tar_bytes(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o750);
            h.set_size(0);
            h.set_mtime(1_500_000_000);
            b.append_data(&mut h, "pkg/", io::empty()).unwrap();
            add_file(b, "pkg/bin/run", b"#!/bin/sh\n", 0o755);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "pkg/link", "bin/run").unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "pkg/hard", "pkg/bin/run").unwrap();
        })
    }

    #[test]
    fn add_extracts_plain_and_gzip_tars() {
        let f = fixture();
        fs::write(f.src.join("plain.tar"), sample_tar()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&sample_tar()).unwrap();
        fs::write(f.src.join("pkg.tgz"), gz.finish().unwrap()).unwrap();
        fs::write(f.src.join("notes.tar"), "not really a tar").unwrap();
        let add = CopyOptions { extract_archives: true, ..Default::default() };

        run(&f, &["plain.tar"], "/opt", &add).unwrap();
        run(&f, &["pkg.tgz"], "/gz/", &add).unwrap();
        run(&f, &["notes.tar"], "/notes/", &add).unwrap();
        for base in ["opt", "gz"] {
            let t = tree(&f.dst.join(base));
            assert_eq!(
                t,
                [
                    "pkg/ 750 0:0",
                    "pkg/bin/ 755 0:0",
                    "pkg/bin/run 755 1234:4321 #!/bin/sh\n",
                    "pkg/hard 755 1234:4321 #!/bin/sh\n",
                    "pkg/link -> bin/run",
                ],
                "{base}"
            );
            let run_md = fs::metadata(f.dst.join(base).join("pkg/bin/run")).unwrap();
            assert_eq!(run_md.mtime(), 1_500_000_000);
            assert_eq!(run_md.ino(), fs::metadata(f.dst.join(base).join("pkg/hard")).unwrap().ino());
        }
        assert_eq!(fs::read_to_string(f.dst.join("notes/notes.tar")).unwrap(), "not really a tar");

        // --chown applies to extracted entries; COPY (no extraction) copies the archive as a file.
        run(&f, &["plain.tar"], "/owned", &CopyOptions { chown: Some((5, 6)), ..add.clone() }).unwrap();
        assert_eq!(fs::metadata(f.dst.join("owned/pkg/bin/run")).unwrap().uid(), 5);
        run(&f, &["plain.tar"], "/copied.tar", &CopyOptions::default()).unwrap();
        assert!(f.dst.join("copied.tar").is_file());
    }

    #[test]
    fn add_extracts_xz_through_the_xz_program() {
        let f = fixture();
        let Ok(mut child) = Command::new("xz").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() else {
            eprintln!("xz not installed; skipping");
            return;
        };
        let data = sample_tar();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        fs::write(f.src.join("pkg.tar.xz"), out.stdout).unwrap();
        run(&f, &["pkg.tar.xz"], "/x", &CopyOptions { extract_archives: true, ..Default::default() }).unwrap();
        assert_eq!(fs::read_to_string(f.dst.join("x/pkg/bin/run")).unwrap(), "#!/bin/sh\n");
    }

    #[test]
    fn archive_breakouts_are_rejected_or_contained() {
        let f = fixture();
        // A member named ../../evil (written raw: the builder refuses such names).
        let evil = tar_bytes(|b| {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..11].copy_from_slice(b"../../evil\0");
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        fs::write(f.src.join("evil.tar"), evil).unwrap();
        let add = CopyOptions { extract_archives: true, ..Default::default() };
        let err = run(&f, &["evil.tar"], "/x", &add).unwrap_err();
        assert!(matches!(&err, CopyError::ArchiveBreakout { entry, .. } if entry == "../../evil"), "{err}");

        // A symlink to / followed by a member through it lands inside the root.
        let through = tar_bytes(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "l", "/").unwrap();
            add_file(b, "l/tmp/pwned", b"p", 0o644);
        });
        fs::write(f.src.join("through.tar"), through).unwrap();
        run(&f, &["through.tar"], "/y", &add).unwrap();
        assert_eq!(fs::read_to_string(f.dst.join("tmp/pwned")).unwrap(), "p");
        assert!(!Path::new("/tmp/pwned").exists());
    }

    #[test]
    fn tar_header_checksum_detection() {
        let t = sample_tar();
        let block: [u8; 512] = t[..512].try_into().unwrap();
        assert!(is_tar_header(&block));
        let mut bad = block;
        bad[0] ^= 1;
        assert!(!is_tar_header(&bad));
        assert!(!is_tar_header(&[0u8; 512]));
        assert_eq!(clean_archive_path(b"./a//b/../c"), Some(vec![OsString::from("a"), OsString::from("c")]));
        assert_eq!(clean_archive_path(b"a/../../b"), None);
    }
}
