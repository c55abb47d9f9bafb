//! The copier: where each selected entry lands in the destination root and with what metadata.

use super::*;
use rbuild_cache::confined::{self, Root};
use rbuild_cache::contenthash::{self, SelectedEntry};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// At most this many threads write the files of one copy.
const COPY_THREADS: usize = 4;
/// Below twice this many files, a copy stays on one thread.
const PLAIN_FILES_PER_THREAD: usize = 64;

/// Timestamps as (seconds, nanoseconds): access, modification.
pub(super) type Times = [(i64, i64); 2];

/// Metadata to give one written entry.
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// None for symlinks (their mode cannot be set on Linux).
    pub(super) mode: Option<u32>,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
    pub(super) times: Times,
}

pub(super) struct Copier<'a> {
    pub(super) src: &'a Root,
    pub(super) dest_root: &'a Path,
    pub(super) opts: &'a CopyOptions,
    /// (dev, ino) of a copied multiply-linked source file → where it was written.
    pub(super) hardlinks: HashMap<(u64, u64), PathBuf>,
    /// Directories whose times are set once everything below them is written.
    pub(super) dir_times: Vec<(PathBuf, Times)>,
}

pub(super) fn lstat_opt(path: &Path) -> Result<Option<Metadata>, CopyError> {
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

pub(super) fn mknod(path: &Path, kind: libc::mode_t, rdev: libc::dev_t) -> Result<(), CopyError> {
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

    pub(super) fn is_dir_in_root(&self, rel: &Path) -> Result<bool, CopyError> {
        let real = contenthash::resolve_in_root(self.dest_root, rel, true)?;
        Ok(lstat_opt(&real)?.is_some_and(|m| m.is_dir()))
    }

    /// Creates `rel` and its missing parents (0755, default owner) inside the root; returns the real directory.
    pub(super) fn mkdir_all(&mut self, rel: &Path) -> Result<PathBuf, CopyError> {
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
    /// parent (0755, the `--chown` owner or root), not with the source directory's mode, owner or `--chmod`; an
    /// existing directory keeps its own mode and owner (`COPY . /` must not chmod `/`). Either way it takes the
    /// times of `top` (the source directory, None for a source root), once its contents are written. All of this is what BuildKit 0.13 does (checked
    /// by the differential suite, `copy-dir-times`).
    pub(super) fn top_dir(&mut self, dest_rel: &Path, top: Option<&SelectedEntry>) -> Result<PathBuf, CopyError> {
        let real = contenthash::resolve_in_root(self.dest_root, dest_rel, true)?;
        let dir = match lstat_opt(&real)? {
            Some(md) if md.is_dir() => real,
            Some(_) => return Err(CopyError::NotADirectory { path: real }),
            None => self.mkdir_all(dest_rel)?,
        };
        if let Some(top) = top {
            self.dir_times.push((dir.clone(), times_of(&top.stat)));
        }
        Ok(dir)
    }

    /// Creates or merges into a directory at `target`; returns the real directory (a symlink to a directory inside
    /// the root is followed, relative to the root).
    pub(super) fn dir_entry(&mut self, e: &SelectedEntry, target: &Path) -> Result<PathBuf, CopyError> {
        let xattrs = contenthash::entry_xattrs(self.src, e)?;
        let meta = self.meta_from(e, xattrs);
        self.make_dir(target, &meta)
    }

    /// Subdirectories take the source's metadata even when they exist, as extracting a tar over them would.
    pub(super) fn make_dir(&mut self, target: &Path, meta: &Meta) -> Result<PathBuf, CopyError> {
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
    pub(super) fn clear_target(&self, target: &Path) -> Result<(), CopyError> {
        match lstat_opt(target)? {
            Some(md) if md.is_dir() => Err(CopyError::IsADirectory { path: target.to_path_buf() }),
            Some(_) => fs::remove_file(target).map_err(io_err("replace", target)),
            None => Ok(()),
        }
    }

    pub(super) fn non_dir_entry(&mut self, e: &SelectedEntry, target: &Path) -> Result<(), CopyError> {
        self.clear_target(target)?;
        let st = &e.stat;
        let xattrs = if st.is_file() {
            if st.nlink > 1
                && let Some(first) = self.hardlinks.get(&(st.dev, st.ino))
            {
                return fs::hard_link(first, target).map_err(io_err("hard link", target));
            }
            let xattrs = self.write_file(e, target)?;
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
            // A socket: BuildKit's context transfer turns it into an empty regular file with the socket's mode
            // bits (issue 11 item 9), and a copy from a stage does the same.
            create_file(target)?;
            contenthash::entry_xattrs(self.src, e)?
        };
        let meta = self.meta_from(e, xattrs);
        self.apply(target, &meta, false)
    }

    /// Writes the regular file `e` to the new file `target`; returns the source's xattrs. The file is read beneath
    /// the source root and checked to be the listed file before and after the bytes move.
    fn write_file(&self, e: &SelectedEntry, target: &Path) -> Result<Vec<(OsString, Vec<u8>)>, CopyError> {
        let mut src = contenthash::open_entry(self.src, e)?;
        let xattrs = confined::fd_xattrs(&src, contenthash::is_ignored_xattr)
            .map_err(io_err("read xattrs of", &self.src.path().join(&e.real)))?;
        let mut dst = create_file(target)?;
        io::copy(&mut src, &mut dst).map_err(io_err("write", target))?;
        contenthash::check_unchanged(&src, e)?;
        Ok(xattrs)
    }

    /// Writes regular files of one link to targets that do not exist yet (their directories do), on up to
    /// [`COPY_THREADS`] threads: creating, filling and chowning 20,000 small files is kernel work that a second
    /// core halves. Each file ends as [`Copier::non_dir_entry`] would leave it.
    pub(super) fn write_plain_files(&self, files: &[(&SelectedEntry, PathBuf)]) -> Result<(), CopyError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(COPY_THREADS);
        if threads < 2 || files.len() < 2 * PLAIN_FILES_PER_THREAD {
            return files.iter().try_for_each(|(e, target)| self.plain_file(e, target));
        }
        let share = files.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let running: Vec<_> = files
                .chunks(share)
                .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|(e, target)| self.plain_file(e, target))))
                .collect();
            // Every thread is joined before the first error is returned.
            let results: Vec<Result<(), CopyError>> = running
                .into_iter()
                .map(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(CopyError::Io {
                            op: "copy",
                            path: self.dest_root.to_path_buf(),
                            source: io::Error::other("a copying thread panicked"),
                        })
                    })
                })
                .collect();
            results.into_iter().collect()
        })
    }

    fn plain_file(&self, e: &SelectedEntry, target: &Path) -> Result<(), CopyError> {
        let xattrs = self.write_file(e, target)?;
        let meta = self.meta_from(e, xattrs);
        self.set_meta(target, &meta)?;
        set_times(target, &meta.times)
    }

    /// Owner first (chown clears set-id bits), then mode, xattrs (after chown, which drops file capabilities),
    /// then times (directories: at the end).
    pub(super) fn apply(&mut self, path: &Path, meta: &Meta, is_dir: bool) -> Result<(), CopyError> {
        self.set_meta(path, meta)?;
        if is_dir {
            self.dir_times.push((path.to_path_buf(), meta.times));
            Ok(())
        } else {
            set_times(path, &meta.times)
        }
    }

    /// Owner, mode and xattrs of [`Copier::apply`].
    fn set_meta(&self, path: &Path, meta: &Meta) -> Result<(), CopyError> {
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
        Ok(())
    }

    /// Sets the times of the directories written so far, children before parents.
    pub(super) fn set_dir_times(&mut self) -> Result<(), CopyError> {
        for (path, times) in self.dir_times.drain(..).rev() {
            set_times(&path, &times)?;
        }
        Ok(())
    }
}

pub(super) fn create_file(target: &Path) -> Result<File, CopyError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(target)
        .map_err(io_err("create", target))
}
