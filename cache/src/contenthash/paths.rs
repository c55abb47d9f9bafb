//! Source path cleaning and chroot-style resolution inside a source root, one component at a time from directory fds.

use super::*;
use crate::confined::{self, Root, Stat};
use rbuild_types::IoError;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before giving up (Linux stops at 40; BuildKit allows 255).
const MAX_SYMLINKS: usize = 255;

/// Cleans a source path lexically: a leading `/` is relative to the root, `.` vanishes, `..` pops a component and
/// climbing above the root is an error naming `name`.
pub fn clean_source(name: &str) -> Result<PathBuf, ContentHashError> {
    let cleaned = rbuild_types::path::clean_in_root(name);
    if cleaned.climbed {
        return Err(ContentHashError::EscapesRoot { name: name.to_string() });
    }
    Ok(cleaned.parts.iter().collect())
}

/// Cleans a path lexically, clamping `..` at the root the way a path inside a container resolves (`/../x` is `/x`).
pub fn clean_clamped(path: &str) -> PathBuf {
    rbuild_types::path::clean_in_root(path).parts.iter().collect()
}

/// Resolves `rel` (a root-relative path) to a real path under `root`, following symlinks the way they would resolve
/// if `root` were `/`: an absolute target restarts at `root`, `..` never climbs above it. The final component is
/// followed only if `follow_final`. Components that do not exist are appended as they are, so the result can be
/// used to create them; every existing component of the result is a real directory (no symlinks), which is what
/// keeps writes below `root`. The walk itself is confined by the kernel (see [`resolve`]).
pub fn resolve_in_root(root: &Path, rel: &Path, follow_final: bool) -> Result<PathBuf, ContentHashError> {
    let root_fd = match Root::open(root) {
        Ok(r) => r,
        // Nothing exists yet: every component is missing, appended lexically as `resolve` would.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(root.join(clean_clamped(&rel.to_string_lossy()))),
        Err(e) => return Err(io_err("open", root)(e)),
    };
    let r = resolve(&root_fd, rel, follow_final, &|_, _| Ok(false))?;
    Ok(root.join(r.real))
}

/// Where [`resolve`] led.
#[derive(Debug)]
pub struct Resolved {
    /// Root-relative; every existing component a real directory (or, last, the entry itself).
    pub real: PathBuf,
    /// `lstat` of the entry `real` names; `None` when it does not exist (or is hidden).
    pub stat: Option<Stat>,
    /// The first path the `hidden` check hid, root-relative: the resolution treated it as missing.
    pub hidden: Option<PathBuf>,
}

/// Resolves `rel` inside `root` with chroot semantics, like [`resolve_in_root`], one component at a time from
/// directory file descriptors (`fstatat`, `readlinkat` and `openat` with `O_NOFOLLOW` on single names), so that a
/// component swapped for a symlink by a racing writer is read as a symlink and resolved inside the root too, never
/// followed by the kernel. `..` returns to the directory fd the walk came from, never to a parent found by name.
///
/// `hidden(real, stat)` is asked about every existing entry the path passes through, by its real root-relative
/// path: symlinks on the way, the directories they lead through and the final entry. A hidden entry is treated as
/// missing, which is how `.dockerignore` applies to where a path *leads* and not only to how it is spelled.
pub fn resolve(
    root: &Root,
    rel: &Path,
    follow_final: bool,
    hidden: &dyn Fn(&Path, &Stat) -> Result<bool, ContentHashError>,
) -> Result<Resolved, ContentHashError> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, rel);
    let mut resolved: Vec<OsString> = Vec::new();
    // fds[i] is the open directory resolved[..=i], for the existing prefix of `resolved`.
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Index in `resolved` of the first component that does not exist (or is not a directory but has more below).
    let mut missing_from: Option<usize> = None;
    let mut hidden_at: Option<PathBuf> = None;
    let mut last_stat: Option<Stat> = None;
    let mut links = 0usize;
    let here = |resolved: &[OsString]| root.path().join(resolved.iter().collect::<PathBuf>());
    while let Some(name) = pending.pop_front() {
        last_stat = None;
        if name == ".." {
            resolved.pop();
            fds.truncate(resolved.len());
            if missing_from.is_some_and(|m| resolved.len() <= m) {
                missing_from = None;
            }
            continue;
        }
        if missing_from.is_some() {
            resolved.push(name);
            continue;
        }
        let dir = fds.last().map_or(root.fd(), |f| f.as_fd());
        let st = match confined::stat_at(dir, &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                missing_from = Some(resolved.len());
                resolved.push(name);
                continue;
            }
            Err(e) => return Err(io_err("stat", &here(&resolved).join(&name))(e)),
        };
        let real: PathBuf = resolved.iter().chain(std::iter::once(&name)).collect();
        if hidden(&real, &st)? {
            hidden_at.get_or_insert(real);
            missing_from = Some(resolved.len());
            resolved.push(name);
            continue;
        }
        let is_last = pending.is_empty();
        if st.is_symlink() && (!is_last || follow_final) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ContentHashError::SymlinkLoop { path: root.path().join(rel) });
            }
            // EINVAL: no longer a symlink; swapped since the stat.
            let target = confined::read_link_at(dir, &name).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => ContentHashError::Changed { path: real.clone() },
                _ => changed_or_io(&real, e),
            })?;
            if target.is_absolute() {
                resolved.clear();
                fds.clear();
            }
            let mut rest = VecDeque::new();
            push_components(&mut rest, &target);
            rest.append(&mut pending);
            pending = rest;
            continue;
        }
        if is_last {
            resolved.push(name);
            last_stat = Some(st);
        } else if st.is_dir() {
            let fd = confined::open_dir_at(dir, &name).map_err(|e| changed_or_io(&real, e))?;
            fds.push(fd);
            resolved.push(name);
        } else {
            // Not a directory, yet something is looked up below it: that is missing.
            missing_from = Some(resolved.len());
            resolved.push(name);
        }
    }
    let stat = match (missing_from, last_stat) {
        (Some(_), _) => None,
        (None, Some(st)) => Some(st),
        (None, None) => Some(match resolved.split_last() {
            // The path ended in `..` or was empty: the directory the walk stands in.
            _ if fds.len() == resolved.len() => confined::fstat(fds.last().map_or(root.fd(), |f| f.as_fd()))
                .map_err(io_err("stat", &here(&resolved)))?,
            Some((last, _)) => {
                let parent = fds.get(resolved.len().wrapping_sub(2)).map_or(root.fd(), |f| f.as_fd());
                confined::stat_at(parent, last).map_err(io_err("stat", &here(&resolved)))?
            }
            None => confined::fstat(root.fd()).map_err(io_err("stat", root.path()))?,
        }),
    };
    Ok(Resolved { real: resolved.iter().collect(), stat, hidden: hidden_at })
}

fn push_components(to: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => to.push_back(n.to_os_string()),
            Component::ParentDir => to.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// An entry that was there a moment ago is gone or became something else: the tree is being changed.
pub(super) fn changed_or_io(real: &Path, e: io::Error) -> ContentHashError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => ContentHashError::Changed { path: real.to_path_buf() },
        _ => ContentHashError::Io(IoError::new("open", real.to_path_buf(), e)),
    }
}
