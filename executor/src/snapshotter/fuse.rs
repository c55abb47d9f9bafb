//! Bringing fuse-overlayfs' upper directory to the form the kernel's overlayfs leaves, so that a build has the same
//! layers on either.
//!
//! fuse-overlayfs (1.10, unprivileged) marks every directory it creates opaque with its own markers, a
//! `.wh..wh..opq` file and a `.wh..opq` 0:0 device inside it (as root: the opaque xattr), and leaves a whiteout for every entry it removes, even
//! one that no lower layer has (runc's mount-point stubs). overlayfs marks a directory opaque only where it
//! replaces one below and writes whiteouts only for what is below. So after the unmount: markers become the opaque
//! xattr where a lower layer has that directory and disappear elsewhere, and whiteouts of nothing disappear.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{SnapshotError, io_err};

const MARKERS: [&str; 2] = [".wh..wh..opq", ".wh..opq"];
const OWN_XATTR_PREFIX: &[u8] = b"user.fuseoverlayfs.";

/// Rewrites `upper` (over `lowers`) as described in the module docs.
pub fn normalize(upper: &Path, lowers: &[PathBuf]) -> Result<(), SnapshotError> {
    walk(upper, Path::new(""), lowers)
}

fn below(lowers: &[PathBuf], rel: &Path) -> Option<fs::Metadata> {
    lowers.iter().find_map(|l| fs::symlink_metadata(l.join(rel)).ok())
}

/// Removes fuse-overlayfs' own `user.fuseoverlayfs.*` xattrs from `path`; true if one marked it opaque.
fn strip_own_xattrs(path: &Path) -> Result<bool, SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let mut opaque = false;
    let Ok(names) = xattr::list(path) else { return Ok(false) };
    for name in names {
        if !name.as_bytes().starts_with(OWN_XATTR_PREFIX) {
            continue;
        }
        if name.as_bytes() == b"user.fuseoverlayfs.opaque" {
            opaque |= matches!(xattr::get(path, &name), Ok(Some(v)) if v == b"y");
        }
        xattr::remove(path, &name).map_err(io_err("removing fuse-overlayfs' xattr from", path))?;
    }
    Ok(opaque)
}

fn walk(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> Result<(), SnapshotError> {
    let dir = upper.join(rel);
    let mut opaque = false;
    for name in MARKERS {
        let marker = dir.join(name);
        if fs::symlink_metadata(&marker).is_ok() {
            fs::remove_file(&marker).map_err(io_err("removing", &marker))?;
            opaque = true;
        }
    }
    // As root it marks them with overlayfs' opaque xattr itself, unprivileged also with `user.fuseoverlayfs.opaque`.
    opaque |= rbuild_cache::overlay_xattr::is_opaque(&dir);
    opaque |= strip_own_xattrs(&dir)?;
    if opaque && !rel.as_os_str().is_empty() && below(lowers, rel).is_some_and(|m| m.is_dir()) {
        xattr::set(&dir, rbuild_cache::overlay_xattr::opaque_name(), b"y").map_err(io_err("marking opaque", &dir))?;
    } else if opaque {
        for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            // Only the ones present: in a user namespace `trusted.*` can be neither seen nor removed.
            if matches!(xattr::get(&dir, name), Ok(Some(_))) {
                xattr::remove(&dir, name).map_err(io_err("unmarking opaque", &dir))?;
            }
        }
    }
    for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
        let entry = entry.map_err(io_err("reading", &dir))?;
        let rel = rel.join(entry.file_name());
        let path = upper.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        if !meta.is_dir() && !meta.file_type().is_symlink() {
            strip_own_xattrs(&path)?;
        }
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            if below(lowers, &rel).is_none() {
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
        } else if meta.is_dir() {
            walk(upper, &rel, lowers)?;
        }
    }
    Ok(())
}
