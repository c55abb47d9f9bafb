//! Resolving a container path to a host path without ever leaving the container's root.
//!
//! A base image is untrusted input: its `/etc` may be a symlink to `/` of the *host* once read naively, or
//! `/etc/passwd` may point at `../../../../etc/shadow`. Every path the executor reads or creates inside a
//! rootfs therefore goes through [`resolve_in_root`], which follows symlinks the way the kernel would inside a
//! `chroot` (absolute targets restart at the rootfs, `..` stops at the rootfs), like `filepath-securejoin` does
//! for runc. It works on path strings in userspace so it runs on any kernel; the result is only as stable as the
//! rootfs itself, which is fine here because nothing else writes to a snapshot while a step is being prepared.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before it is declared a loop (Linux's own limit is 40).
const MAX_SYMLINKS: usize = 255;

/// Returns the host path of `path` interpreted inside `root`, following symlinks without escaping `root`.
///
/// Components that do not exist (or whose parent is not a directory) are appended lexically, so the result can
/// name a path that is about to be created. Errors are I/O errors other than "not found", and symlink loops.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_front_components(&mut pending, path);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut followed = 0usize;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_front_components(&mut pending, &target);
            }
            Ok(_) => resolved.push(name),
            Err(err) if is_absent(&err) => resolved.push(name),
            Err(err) => return Err(err),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Whether an error from `lstat` means "this component does not exist (yet)".
fn is_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENOTDIR)
}

/// Puts the normal and `..` components of `path` in front of `pending`, keeping their order.
fn push_front_components(pending: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        pending.push_front(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn plain_paths_and_dotdot_stay_inside() {
        let r = root();
        std::fs::create_dir_all(r.path().join("etc")).expect("mkdir");
        assert_eq!(resolve_in_root(r.path(), Path::new("/etc/passwd")).expect("ok"), r.path().join("etc/passwd"));
        assert_eq!(resolve_in_root(r.path(), Path::new("/../../etc/./x")).expect("ok"), r.path().join("etc/x"));
        assert_eq!(resolve_in_root(r.path(), Path::new("/")).expect("ok"), r.path());
    }

    #[test]
    fn absolute_symlink_restarts_at_root() {
        let r = root();
        std::fs::create_dir_all(r.path().join("real/etc")).expect("mkdir");
        symlink("/real/etc", r.path().join("etc")).expect("symlink");
        assert_eq!(resolve_in_root(r.path(), Path::new("/etc/passwd")).expect("ok"), r.path().join("real/etc/passwd"));
    }

    #[test]
    fn relative_symlink_cannot_climb_out() {
        let r = root();
        std::fs::create_dir_all(r.path().join("etc")).expect("mkdir");
        symlink("../../../../../../etc/shadow", r.path().join("etc/passwd")).expect("symlink");
        assert_eq!(resolve_in_root(r.path(), Path::new("/etc/passwd")).expect("ok"), r.path().join("etc/shadow"));
    }

    #[test]
    fn dangling_symlink_resolves_to_its_target() {
        let r = root();
        std::fs::create_dir_all(r.path().join("etc")).expect("mkdir");
        symlink("../run/resolv.conf", r.path().join("etc/resolv.conf")).expect("symlink");
        assert_eq!(
            resolve_in_root(r.path(), Path::new("/etc/resolv.conf")).expect("ok"),
            r.path().join("run/resolv.conf")
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let r = root();
        symlink("/b", r.path().join("a")).expect("symlink");
        symlink("/a", r.path().join("b")).expect("symlink");
        let err = resolve_in_root(r.path(), Path::new("/a/x")).expect_err("loop");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
