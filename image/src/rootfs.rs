//! Whole filesystem trees: an image's layers flattened into one directory, and mtimes clamped for reproducibility.
//!
//! Snapshots are overlayfs upperdirs, so flattening is what overlayfs does at lookup time, done once on disk: a
//! 0:0 character device deletes the path below it, an opaque directory hides everything below it, anything else
//! replaces what was there. Hardlinks inside one layer stay hardlinks. Ownership, modes, xattrs (minus overlayfs'
//! own) and mtimes are kept, so the tree equals what `umoci unpack` or `docker export` gives for the same image.
//!
//! Clamping is applied to a layer's directory *before* its diff_id is computed, so the snapshot on disk, its tar
//! and every blob compressed from it later agree; clamping only the tar would leave a snapshot whose own tar has a
//! different diff_id than the image config records.

use rbuild_cache::overlay_xattr;
use rbuild_cache::{Store, StoreError};
use rbuild_types::Digest;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Io(#[from] rbuild_types::IoError),
    #[error("layer {diff_id}: neither a snapshot nor a stored blob exists for it")]
    MissingLayer { diff_id: Digest },
    #[error("layer {diff_id}: extracting its blob")]
    Extract {
        diff_id: Digest,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("layer {diff_id}: its blob {blob} unpacks to diff_id {actual}")]
    DiffIdMismatch { diff_id: Digest, blob: Digest, actual: Digest },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot {diff_id}: hashing its content")]
    Hash {
        diff_id: Digest,
        #[source]
        source: crate::layer::LayerError,
    },
}

/// What [`verify_snapshot`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotCheck {
    /// The snapshot's content is what its name says.
    Intact,
    /// The content changed since the snapshot was committed: its tree digest is `actual`.
    Modified { actual: Digest },
    /// A snapshot unpacked from another builder's layer, whose blob is no longer stored: nothing to compare with.
    Unverifiable,
}

/// Re-computes a snapshot's content digest (`rbuild check --deep`). A snapshot rbuild made is named by the digest
/// of its own tar, so recomputing that is enough; one unpacked from another builder's layer (whose tar rbuild
/// would write differently) is compared with a fresh unpacking of its stored blob.
pub fn verify_snapshot(store: &Store, diff_id: &Digest) -> Result<SnapshotCheck, RootfsError> {
    let hash = |dir: &Path| {
        crate::layer::diff_id(dir, &crate::layer::LayerOptions::default())
            .map(|(d, _)| d)
            .map_err(|source| RootfsError::Hash { diff_id: diff_id.clone(), source })
    };
    let path = store.snapshot_path(diff_id);
    let actual = hash(&path)?;
    if &actual == diff_id {
        return Ok(SnapshotCheck::Intact);
    }
    let Some(blob) = store.layer_blobs(diff_id).into_iter().find(|b| store.has_blob(&b.digest)) else {
        // No blob: a snapshot rbuild made must hash to its name; an unpacked one has nothing to compare with.
        return Ok(if store.is_unpacked(diff_id) {
            SnapshotCheck::Unverifiable
        } else {
            SnapshotCheck::Modified { actual }
        });
    };
    let fresh = store.tmp_dir("verify")?;
    let blob_path = store.blob_path(&blob.digest);
    let result = fs::File::open(&blob_path).map_err(io_err("open", &blob_path)).and_then(|file| {
        crate::layer::extract_layer(io::BufReader::new(file), &fresh)
            .map_err(|source| RootfsError::Extract { diff_id: diff_id.clone(), source })?;
        hash(&fresh)
    });
    let _ = fs::remove_dir_all(&fresh);
    let expected = result?;
    Ok(if expected == actual { SnapshotCheck::Intact } else { SnapshotCheck::Modified { actual } })
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io(rbuild_types::IoError::new(op, path, source))
}

/// Sets every mtime under `dir` (and of `dir` itself) that is later than `epoch` to `epoch`; symlinks themselves,
/// never their targets.
pub fn clamp_mtimes(dir: &Path, epoch: i64) -> Result<(), RootfsError> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_err("read directory", &path))? {
                pending.push(entry.map_err(io_err("read directory", &path))?.path());
            }
        }
        if meta.mtime() > epoch {
            // Setting a child's times does not touch its parent's mtime, so the order does not matter.
            set_times(&path, epoch, 0).map_err(io_err("set the mtime of", &path))?;
        }
    }
    Ok(())
}

fn set_times(path: &Path, secs: i64, nsec: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let t = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nsec as _ };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` points at two timespecs, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        // Without root the tree is still right in content; ownership is what an unprivileged user cannot give.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !is_root() => Ok(()),
        other => other,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure the snapshot of `diff_id` exists, extracting it from a stored blob if needed.
pub fn ensure_snapshot(store: &Store, diff_id: &Digest) -> Result<PathBuf, RootfsError> {
    let path = store.snapshot_path(diff_id);
    if path.is_dir() {
        return Ok(path);
    }
    let blob = store
        .layer_blobs(diff_id)
        .into_iter()
        .find(|b| store.has_blob(&b.digest))
        .ok_or_else(|| RootfsError::MissingLayer { diff_id: diff_id.clone() })?;
    let dest = store.tmp_dir("extract")?;
    let blob_path = store.blob_path(&blob.digest);
    let file = fs::File::open(&blob_path).map_err(io_err("open", &blob_path))?;
    let actual = crate::layer::extract_layer(io::BufReader::new(file), &dest)
        .map_err(|source| RootfsError::Extract { diff_id: diff_id.clone(), source })?;
    if &actual != diff_id {
        let _ = fs::remove_dir_all(&dest);
        return Err(RootfsError::DiffIdMismatch { diff_id: diff_id.clone(), blob: blob.digest, actual });
    }
    store.mark_unpacked(diff_id)?;
    store.commit_snapshot(&dest, diff_id)?;
    Ok(path)
}

/// Flattens the layers `diff_ids` (bottom first) into `dest`, which is created if missing.
pub fn unpack(store: &Store, diff_ids: &[Digest], dest: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(dest).map_err(io_err("create", dest))?;
    for diff_id in diff_ids {
        let snapshot = ensure_snapshot(store, diff_id)?;
        apply_snapshot(&snapshot, dest)?;
    }
    Ok(())
}

/// Applies one overlayfs-format snapshot on top of the tree at `dest`.
pub fn apply_snapshot(snapshot: &Path, dest: &Path) -> Result<(), RootfsError> {
    rbuild_types::ids::wait();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directory metadata is set after their contents are written, deepest first, so mtimes stick.
    let mut dirs: Vec<(PathBuf, fs::Metadata, PathBuf)> = Vec::new();
    let root_meta = fs::symlink_metadata(snapshot).map_err(io_err("stat", snapshot))?;
    dirs.push((dest.to_path_buf(), root_meta, snapshot.to_path_buf()));
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let src_dir = snapshot.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&src_dir)
            .map_err(io_err("read directory", &src_dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read directory", &src_dir))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let src = snapshot.join(&rel);
            let dst = dest.join(&rel);
            let meta = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                remove_any(&dst)?;
                continue;
            }
            if ft.is_dir() {
                let existing = fs::symlink_metadata(&dst).ok();
                match existing {
                    Some(m) if m.is_dir() => {
                        if overlay_xattr::is_opaque(&src) {
                            for child in fs::read_dir(&dst).map_err(io_err("read directory", &dst))? {
                                remove_any(&child.map_err(io_err("read directory", &dst))?.path())?;
                            }
                        }
                    }
                    Some(_) => {
                        remove_any(&dst)?;
                        fs::create_dir(&dst).map_err(io_err("create", &dst))?;
                    }
                    None => fs::create_dir(&dst).map_err(io_err("create", &dst))?,
                }
                dirs.push((dst, meta, src));
                pending.push(rel);
                continue;
            }
            remove_any(&dst)?;
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && !ft.is_dir()
                && let Some(first) = links.get(&key)
            {
                fs::hard_link(first, &dst).map_err(io_err("hardlink", &dst))?;
                continue;
            }
            if ft.is_file() {
                fs::copy(&src, &dst).map_err(io_err("copy", &src))?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&src).map_err(io_err("read link", &src))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(io_err("symlink", &dst))?;
            } else {
                let c = CString::new(dst.as_os_str().as_bytes()).map_err(|_| {
                    RootfsError::Io(rbuild_types::IoError::new("name", dst.clone(), io::ErrorKind::InvalidInput.into()))
                })?;
                // SAFETY: a valid path; mode and rdev come from the snapshot's own entry.
                let rc = unsafe { libc::mknod(c.as_ptr(), meta.mode() as libc::mode_t, meta.rdev() as libc::dev_t) };
                if rc != 0 {
                    return Err(RootfsError::Io(rbuild_types::IoError::new("mknod", dst, io::Error::last_os_error())));
                }
            }
            copy_meta(&src, &dst, &meta)?;
            if meta.nlink() > 1 {
                links.insert(key, dst);
            }
        }
    }
    for (dst, meta, src) in dirs.into_iter().rev() {
        copy_meta(&src, &dst, &meta)?;
    }
    Ok(())
}

/// Owner, mode, xattrs and times of `src` onto `dst` (not following symlinks).
fn copy_meta(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), RootfsError> {
    lchown(dst, meta.uid(), meta.gid()).map_err(io_err("chown", dst))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io_err("chmod", dst))?;
        if let Ok(names) = xattr::list(src) {
            for name in names {
                if overlay_xattr::strip_overlay_prefix(name.as_bytes()).is_some() {
                    continue;
                }
                if let Ok(Some(value)) = xattr::get(src, &name) {
                    xattr::set(dst, &name, &value).map_err(io_err("set an xattr on", dst))?;
                }
            }
        }
    }
    set_times(dst, meta.mtime(), meta.mtime_nsec()).map_err(io_err("set the mtime of", dst))
}

fn remove_any(path: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RootfsError::Io(rbuild_types::IoError::new("stat", path.to_path_buf(), e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn whiteout(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path; a 0:0 character device is overlayfs' whiteout.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0, "mknod needs root");
    }

    #[test]
    fn layers_flatten_with_whiteouts_opaque_dirs_and_hardlinks() {
        // Whiteouts need mknod.
        if !rbuild_test_support::require(&[]) {
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc/sub")).unwrap();
        fs::write(lower.path().join("etc/gone"), "x").unwrap();
        fs::write(lower.path().join("etc/sub/old"), "x").unwrap();
        fs::write(lower.path().join("keep"), "lower").unwrap();
        fs::create_dir(upper.path().join("etc")).unwrap();
        whiteout(&upper.path().join("etc/gone"));
        fs::create_dir(upper.path().join("etc/sub")).unwrap();
        xattr::set(upper.path().join("etc/sub"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(upper.path().join("etc/sub/new"), "n").unwrap();
        fs::write(upper.path().join("a"), "linked").unwrap();
        fs::hard_link(upper.path().join("a"), upper.path().join("b")).unwrap();
        std::os::unix::fs::symlink("keep", upper.path().join("ln")).unwrap();
        std::os::unix::fs::lchown(upper.path().join("a"), Some(7), Some(8)).unwrap();

        apply_snapshot(lower.path(), dest.path()).unwrap();
        apply_snapshot(upper.path(), dest.path()).unwrap();
        let d = dest.path();
        assert!(!d.join("etc/gone").exists(), "whiteout removes");
        assert!(!d.join("etc/sub/old").exists(), "opaque dir hides the lower content");
        assert_eq!(fs::read_to_string(d.join("etc/sub/new")).unwrap(), "n");
        assert!(
            xattr::get(d.join("etc/sub"), "trusted.overlay.opaque").unwrap().is_none(),
            "overlay xattrs stay behind"
        );
        assert_eq!(fs::read_to_string(d.join("keep")).unwrap(), "lower");
        let (a, b) = (fs::metadata(d.join("a")).unwrap(), fs::metadata(d.join("b")).unwrap());
        assert_eq!((a.ino(), a.uid(), a.gid()), (b.ino(), 7, 8), "hardlink kept, owner kept");
        assert_eq!(fs::read_link(d.join("ln")).unwrap(), Path::new("keep"));
    }

    #[test]
    fn clamping_lowers_only_later_mtimes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/new"), "n").unwrap();
        fs::write(dir.path().join("old"), "o").unwrap();
        set_times(&dir.path().join("old"), 1000, 0).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling")).unwrap();
        clamp_mtimes(dir.path(), 5000).unwrap();
        let mtime = |p: &str| fs::symlink_metadata(dir.path().join(p)).unwrap().mtime();
        assert_eq!(mtime("d/new"), 5000);
        assert_eq!(mtime("d"), 5000);
        assert_eq!(mtime("dangling"), 5000, "the link itself, not its target");
        assert_eq!(mtime("old"), 1000, "earlier times are kept");
        assert_eq!(fs::metadata(dir.path()).unwrap().mtime(), 5000);
    }
}
