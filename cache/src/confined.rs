//! Reading a directory tree that someone else may be changing (the build context) without ever leaving it.
//!
//! rbuild runs as root and reads build contexts that anyone can put in a pull request, possibly while a process of
//! theirs keeps changing the files. Resolving a path string and then opening it by that string is a race: in
//! between, a directory can be swapped for a symlink to `/etc`, and root follows it. So every access here starts at
//! a file descriptor of the tree's root ([`Root`]) and the kernel is told not to leave it:
//!
//! - a path that was already resolved (no symlinks in it, as a walk lists them) is opened with `openat2` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: a component swapped for a symlink makes the
//!   open fail instead of being followed. Where `openat2` is missing (old kernels, some seccomp filters) the same
//!   is done one component at a time with `O_NOFOLLOW` from directory fds;
//! - directories are listed through their fd and their entries `fstatat`ed relative to it;
//! - a file is read through the fd that is `fstat`ed, so the caller can check that what it reads is the file it
//!   listed ([`Stat::same_content`]); regular files are opened `O_NONBLOCK`, so one swapped for a FIFO cannot hang
//!   the build (it fails the identity check instead).
//!
//! Resolving paths that may contain symlinks (chroot semantics, and the `.dockerignore` check on every component a
//! path passes through) is `contenthash::resolve`, built on these primitives.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// `openat2` answered ENOSYS once: use the component walk from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The `lstat` of an entry, taken through a file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// (seconds, nanoseconds)
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    // The field types of `struct stat` differ between architectures; the casts are lossless on each.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_raw(s: &rustix::fs::Stat) -> Stat {
        Stat {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            size: s.st_size as u64,
            atime: (s.st_atime as i64, s.st_atime_nsec as i64),
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as i64),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as i64),
        }
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
    pub fn is_char_device(&self) -> bool {
        self.kind() == libc::S_IFCHR
    }
    pub fn is_block_device(&self) -> bool {
        self.kind() == libc::S_IFBLK
    }
    pub fn is_fifo(&self) -> bool {
        self.kind() == libc::S_IFIFO
    }
    /// Permission and special (set-id, sticky) bits.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Whether `other` is the same file with the same content and metadata as far as the stat can tell: same
    /// device and inode, type and mode, owner, size, and modification and change times (a write moves both times,
    /// a chmod, chown or xattr change moves the change time, which no user can set).
    pub fn same_content(&self, other: &Stat) -> bool {
        self.dev == other.dev
            && self.ino == other.ino
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.size == other.size
            && self.mtime == other.mtime
            && self.ctime == other.ctime
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `fstat`.
pub fn fstat(fd: impl AsFd) -> io::Result<Stat> {
    rustix::fs::fstat(fd).map(|s| Stat::from_raw(&s)).map_err(errno)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `name` must be a single component.
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| Stat::from_raw(&s)).map_err(errno)
}

/// The target of the symlink `name` in `dir`.
pub fn read_link_at(dir: impl AsFd, name: &OsStr) -> io::Result<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(errno)?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// Opens the directory `name` in `dir` as a path-only fd (for further `*at` calls), never following a symlink.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno)
}

/// Opens the directory `name` in `dir` for listing, never following a symlink.
pub fn open_dir_for_listing_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// The entries of the directory open as `dir` (not `.` and `..`) with their `lstat`, sorted by name.
pub fn list_dir(dir: impl AsFd) -> io::Result<Vec<(OsString, Stat)>> {
    let dir = dir.as_fd();
    let mut reader = rustix::fs::Dir::read_from(dir).map_err(errno)?;
    let mut out = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        match stat_at(dir, &name) {
            Ok(st) => out.push((name, st)),
            // Removed since it was listed: as if it had not been there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// The xattrs of an open file or directory, sorted by name, minus those `skip` names. A filesystem without xattr
/// support has none.
pub fn fd_xattrs(file: &File, skip: impl Fn(&[u8]) -> bool) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    use xattr::FileExt;
    let names = match file.list_xattr() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if skip(name.as_bytes()) {
            continue;
        }
        if let Some(v) = file.get_xattr(&name)? {
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// The xattrs of `name` in the directory open as `dir`, without opening `name` itself (a symlink, FIFO or device
/// node must not be opened): through `/proc/self/fd/<dir>/<name>`, which the kernel resolves to that very directory
/// and then does not follow `name`. Without `/proc` such entries have no xattrs.
pub fn name_xattrs(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    skip: impl Fn(&[u8]) -> bool,
) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    let names = match xattr::list(&path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) || e.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for n in names {
        if skip(n.as_bytes()) {
            continue;
        }
        if let Some(v) = xattr::get(&path, &n)? {
            out.push((n, v));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// An open directory that reads below it stay in.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path` (which is trusted: symlinks in it are followed) as the root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd =
            rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(errno)?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    /// The root's path on the host, for messages and for keys that name files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `rel`, a root-relative path of plain names (what a walk lists), with `flags`. A symlink anywhere in it,
    /// the last component included, is not followed: the open fails (`ELOOP`), except with `O_PATH`, which opens a
    /// final symlink itself.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                Component::CurDir => {}
                _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        let Some((last, parents)) = names.split_last() else {
            return rustix::fs::openat(&self.fd, c".", flags, Mode::empty()).map_err(errno);
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            let mut tries = 0;
            loop {
                match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                    Ok(fd) => return Ok(fd),
                    // A rename elsewhere on the filesystem raced the lookup; the kernel asks for a retry.
                    Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
                    Err(rustix::io::Errno::NOSYS) => {
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(errno(e)),
                }
            }
        }
        let mut dir: Option<OwnedFd> = None;
        for name in parents {
            let next = open_dir_at(dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd()), name)?;
            dir = Some(next);
        }
        rustix::fs::openat(dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd()), *last, flags, Mode::empty())
            .map_err(errno)
    }

    /// `lstat` of `rel` (plain names, see [`Root::open_beneath`]); `None` if it does not exist.
    pub fn lstat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        match self.open_beneath(rel, OFlags::PATH) {
            Ok(fd) => fstat(&fd).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the regular file `rel` for reading; the caller compares [`fstat`] of it with what it expects.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK).map(File::from)
    }

    /// Opens the directory `rel` for listing.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The target of the symlink `rel`, and the stat of the link it was read from.
    pub fn read_link(&self, rel: &Path) -> io::Result<(PathBuf, Stat)> {
        let fd = self.open_beneath(rel, OFlags::PATH)?;
        let st = fstat(&fd)?;
        if !st.is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok((read_link_at(&fd, OsStr::new(""))?, st))
    }

    /// The xattrs of `rel` (whose stat is `st`), read without following it or opening a special file.
    pub fn xattrs(&self, rel: &Path, st: &Stat, skip: impl Fn(&[u8]) -> bool) -> io::Result<Vec<(OsString, Vec<u8>)>> {
        if st.is_dir() {
            return fd_xattrs(&File::from(self.open_dir(rel)?), skip);
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Some(name) = rel.file_name() else { return Ok(Vec::new()) };
        let dir = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        name_xattrs(dir.as_fd(), name, skip)
    }

    /// The bytes of the file `rel`, symlinks followed inside the root only (see [`Root::open_in_root`]).
    pub fn read_in_root(&self, rel: &Path) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_in_root(rel, OFlags::RDONLY | OFlags::NONBLOCK)?;
        if !fstat(&f)?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens `rel` following symlinks as if the root were `/` (`RESOLVE_IN_ROOT`: an absolute target or `..` stops
    /// at the root), for files such as `.dockerignore` that may be links within the context.
    pub fn open_in_root(&self, rel: &Path, flags: OFlags) -> io::Result<File> {
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.fd, rel, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Ok(fd) => Ok(File::from(fd)),
            Err(rustix::io::Errno::NOSYS) => {
                // No openat2: do not follow anything (a symlinked file is then an error, never an escape).
                self.open_beneath(rel, flags).map(File::from)
            }
            Err(e) => Err(errno(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_beneath_refuses_symlinks_anywhere() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "inside").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), "canary").unwrap();
        symlink(&outside, root.join("l")).unwrap();
        symlink("d/f", root.join("fl")).unwrap();
        let r = Root::open(&root).unwrap();
        let mut s = String::new();
        r.open_file(Path::new("d/f")).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "inside");
        for rel in ["l/f", "fl", "../outside/f"] {
            assert!(r.open_file(Path::new(rel)).is_err(), "{rel} must not open");
        }
        // The walk fallback behaves the same.
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let fallback: Vec<bool> = ["d/f", "l/f", "fl"].iter().map(|p| r.open_file(Path::new(p)).is_ok()).collect();
        NO_OPENAT2.store(false, Ordering::Relaxed);
        assert_eq!(fallback, [true, false, false]);
        assert!(r.lstat(Path::new("fl")).unwrap().unwrap().is_symlink());
        assert_eq!(r.read_link(Path::new("fl")).unwrap().0, PathBuf::from("d/f"));
        assert_eq!(r.lstat(Path::new("nope")).unwrap(), None);
    }

    #[test]
    fn open_in_root_follows_links_inside_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/ignore"), "inside").unwrap();
        std::fs::write(t.path().join("ignore"), "canary").unwrap();
        symlink("/etc/ignore", root.join("abs")).unwrap();
        symlink("../../ignore", root.join("up")).unwrap();
        let r = Root::open(&root).unwrap();
        let mut s = String::new();
        r.open_in_root(Path::new("abs"), OFlags::RDONLY).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "inside");
        assert!(r.open_in_root(Path::new("up"), OFlags::RDONLY).is_err(), "../../ignore stops at the root");
    }
}
