//! Resolving a container path to a host path without ever leaving the container's root.
//!
//! A base image is untrusted input: its `/etc` may be a symlink to `/` of the *host* once read naively, or
//! `/etc/passwd` may point at `../../../../etc/shadow`. Every path the executor reads or creates inside a
//! rootfs therefore goes through [`resolve_in_root`], which follows symlinks the way the kernel would inside a
//! `chroot` (absolute targets restart at the rootfs, `..` stops at the rootfs), like `filepath-securejoin` does
//! for runc. The walk itself goes from directory fds one name at a time (`O_NOFOLLOW`), so it cannot be led out
//! of the root while it runs; the *result* is a path string, only as stable as the rootfs itself, which is fine
//! here because nothing else writes to a snapshot while a step is being prepared. (Build-context reads, where a
//! writer may race, never go through a path string: see `rbuild_cache::confined`.)

use rbuild_cache::contenthash::ContentHashError;
use std::io;
use std::path::{Path, PathBuf};

/// Returns the host path of `path` interpreted inside `root`, following symlinks without escaping `root`.
///
/// Components that do not exist (or whose parent is not a directory) are appended lexically, so the result can
/// name a path that is about to be created. Errors are I/O errors other than "not found", and symlink loops.
/// The resolution itself is the one COPY sources use (`rbuild_cache::contenthash::resolve_in_root`), so the
/// executor and the content hasher can never disagree about where a path leads.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    rbuild_cache::contenthash::resolve_in_root(root, path, true).map_err(|e| match e {
        ContentHashError::SymlinkLoop { .. } => io::Error::from_raw_os_error(libc::ELOOP),
        ContentHashError::Io(e) => e.source,
        other => io::Error::other(other),
    })
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
