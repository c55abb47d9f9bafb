//! The copying snapshotter: a step runs on a plain directory holding a copy of its layers, and its layer is found
//! afterwards by comparing that directory with what was copied in.
//!
//! The comparison must give the layer overlayfs would have given, so that a build has the same digests on every
//! snapshotter. overlayfs copies an entry up when anything touches it (a write, a `chmod` to the same mode, a
//! `touch`), which always moves the inode's ctime; so the copy records each entry's inode number and ctime right
//! after copying, and afterwards an entry is
//! - new (not recorded) or replaced (another inode): copied to the upper dir whole, a replaced directory marked
//!   opaque, as overlayfs marks a directory that was removed and made again;
//! - changed (same inode, other ctime): copied (a directory without its contents, which are compared one by one);
//! - gone: a whiteout (a 0:0 character device) where it was, unless its parent is gone too.
//!
//! Directories are created in the upper dir as the walk passes them; the worker's pruning of copied-up directories
//! then removes the ones that hold nothing and did not change, as it does for overlayfs' upper dirs.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{SnapshotError, io_err};

/// What the tree held right after it was assembled: relative path → (inode, ctime seconds, ctime nanoseconds).
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<PathBuf, (u64, i64, i64)>,
}

/// Copies `lowers` (top-most first) into `target` (created), applying each layer's whiteouts, and records the
/// result.
pub fn assemble(lowers: &[PathBuf], target: &Path) -> Result<Index, SnapshotError> {
    fs::create_dir_all(target).map_err(io_err("creating", target))?;
    for lower in lowers.iter().rev() {
        rbuild_image::rootfs::apply_snapshot(lower, target).map_err(|e| SnapshotError::Io {
            op: "copying a layer into",
            path: target.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    let mut index = Index::default();
    record(target, PathBuf::new(), &mut index)?;
    Ok(index)
}

fn record(root: &Path, rel: PathBuf, index: &mut Index) -> Result<(), SnapshotError> {
    let path = root.join(&rel);
    let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
    index.entries.insert(rel.clone(), (meta.ino(), meta.ctime(), meta.ctime_nsec()));
    if meta.is_dir() {
        for entry in fs::read_dir(&path).map_err(io_err("reading", &path))? {
            let entry = entry.map_err(io_err("reading", &path))?;
            record(root, rel.join(entry.file_name()), index)?;
        }
    }
    Ok(())
}

/// Writes the changes of `tree` since `before` into `upper`, in overlayfs format.
pub fn diff(tree: &Path, before: &Index, upper: &Path) -> Result<(), SnapshotError> {
    let mut seen = HashSet::new();
    let mut kept_dirs = HashSet::new();
    kept_dirs.insert(PathBuf::new());
    walk(tree, upper, PathBuf::new(), before, &mut seen, &mut kept_dirs, false)?;
    let mut gone: Vec<&PathBuf> = before
        .entries
        .keys()
        .filter(|p| !seen.contains(*p) && p.parent().is_some_and(|parent| kept_dirs.contains(parent)))
        .collect();
    gone.sort();
    for rel in gone {
        whiteout(&upper.join(rel))?;
    }
    Ok(())
}

fn walk(
    tree: &Path,
    upper: &Path,
    rel: PathBuf,
    before: &Index,
    seen: &mut HashSet<PathBuf>,
    kept_dirs: &mut HashSet<PathBuf>,
    copy_all: bool,
) -> Result<(), SnapshotError> {
    let dir = tree.join(&rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("reading", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", &dir))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let src = tree.join(&rel);
        let dst = upper.join(&rel);
        let meta = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
        seen.insert(rel.clone());
        let state = if copy_all { None } else { before.entries.get(&rel).copied() };
        let same_inode = state.is_some_and(|(ino, _, _)| ino == meta.ino());
        let unchanged = state == Some((meta.ino(), meta.ctime(), meta.ctime_nsec()));
        if meta.is_dir() {
            fs::create_dir_all(&dst).map_err(io_err("creating", &dst))?;
            copy_meta(&src, &dst, &meta)?;
            let replaced = state.is_some() && !same_inode;
            if replaced {
                xattr::set(&dst, rbuild_cache::overlay_xattr::opaque_name(), b"y")
                    .map_err(io_err("marking opaque", &dst))?;
            }
            let fresh = copy_all || state.is_none() || replaced;
            if !fresh {
                kept_dirs.insert(rel.clone());
            }
            walk(tree, upper, rel, before, seen, kept_dirs, fresh)?;
            // Writing children moved the directory's times; set them again.
            copy_meta(&src, &dst, &meta)?;
        } else if !unchanged {
            copy_entry(&src, &dst, &meta)?;
        }
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, SnapshotError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SnapshotError::Io {
        op: "naming",
        path: path.to_path_buf(),
        source: io::ErrorKind::InvalidInput.into(),
    })
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), SnapshotError> {
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path; mode and device numbers are plain integers.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(SnapshotError::Io { op: "mknod", path: path.to_path_buf(), source: io::Error::last_os_error() });
    }
    Ok(())
}

fn whiteout(path: &Path) -> Result<(), SnapshotError> {
    mknod(path, libc::S_IFCHR, 0)
}

fn copy_entry(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
    let ft = meta.file_type();
    if ft.is_file() {
        fs::copy(src, dst).map_err(io_err("copying", src))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("reading the link", src))?;
        std::os::unix::fs::symlink(target, dst).map_err(io_err("creating the link", dst))?;
    } else {
        mknod(dst, meta.mode() as libc::mode_t, meta.rdev() as libc::dev_t)?;
    }
    copy_meta(src, dst, meta)
}

/// Owner, mode, xattrs (but overlayfs' own) and times of `src` onto `dst`, not following symlinks.
fn copy_meta(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io_err("chown", dst))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io_err("chmod", dst))?;
        if let Ok(names) = xattr::list(src) {
            for name in names {
                if rbuild_cache::overlay_xattr::strip_overlay_prefix(name.as_bytes()).is_some() {
                    continue;
                }
                if let Ok(Some(value)) = xattr::get(src, &name) {
                    xattr::set(dst, &name, &value).map_err(io_err("setting an xattr on", dst))?;
                }
            }
        }
    }
    let c = c_path(dst)?;
    let times = [
        libc::timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() },
        libc::timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() },
    ];
    // SAFETY: a NUL-terminated path and two valid timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(SnapshotError::Io {
            op: "setting times of",
            path: dst.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modified_a_new_and_a_deleted_file_are_the_diff() {
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("SKIPPED: whiteouts need mknod (root)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let lower = dir.path().join("lower");
        fs::create_dir_all(lower.join("etc/keep")).expect("mkdir");
        fs::write(lower.join("etc/motd"), "hi").expect("write");
        fs::write(lower.join("etc/conf"), "a").expect("write");
        fs::write(lower.join("etc/keep/same"), "s").expect("write");
        let tree = dir.path().join("tree");
        let before = assemble(std::slice::from_ref(&lower), &tree).expect("assemble");
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::remove_file(tree.join("etc/motd")).expect("rm");
        fs::write(tree.join("etc/conf"), "b").expect("write");
        fs::write(tree.join("new"), "n").expect("write");
        let upper = dir.path().join("upper");
        fs::create_dir_all(&upper).expect("mkdir");
        diff(&tree, &before, &upper).expect("diff");
        let motd = fs::symlink_metadata(upper.join("etc/motd")).expect("whiteout");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&motd.file_type()) && motd.rdev() == 0);
        assert_eq!(fs::read_to_string(upper.join("etc/conf")).expect("conf"), "b");
        assert_eq!(fs::read_to_string(upper.join("new")).expect("new"), "n");
        assert!(!upper.join("etc/keep/same").exists(), "an untouched file is not in the diff");
    }
}
