//! Which xattr namespace marks overlayfs' own metadata (opaque directories) in this process's snapshots.
//!
//! As root, overlayfs keeps it in `trusted.overlay.*`. In a user namespace `trusted.*` is out of reach, so rbuild
//! mounts with `userxattr` (Linux 5.11+) and overlayfs uses `user.overlay.*` instead. The choice is the kernel's,
//! made by the privilege of the whole process, so it is one process-wide setting, set once by the binary at
//! start-up ([`set_user_namespace`]). Readers accept both namespaces (a layer's opaque marker is an opaque marker,
//! whoever wrote it); writers use the current one.

use std::sync::atomic::{AtomicBool, Ordering};

static USER_XATTRS: AtomicBool = AtomicBool::new(false);

/// The prefix of overlayfs' xattrs as root.
pub const TRUSTED_PREFIX: &[u8] = b"trusted.overlay.";
/// The prefix of overlayfs' xattrs with `userxattr` (in a user namespace).
pub const USER_PREFIX: &[u8] = b"user.overlay.";

/// Records that this process runs in a user namespace: snapshots are written with `user.overlay.*`.
pub fn set_user_namespace(on: bool) {
    USER_XATTRS.store(on, Ordering::SeqCst);
}

/// True when snapshots are written with `user.overlay.*` (and overlays mounted with `userxattr`).
pub fn user_xattrs() -> bool {
    USER_XATTRS.load(Ordering::SeqCst)
}

/// The xattr that marks an opaque directory in snapshots this process writes.
pub fn opaque_name() -> &'static str {
    if user_xattrs() { "user.overlay.opaque" } else { "trusted.overlay.opaque" }
}

/// The part after the overlay prefix, if `name` is one of overlayfs' xattrs (in either namespace).
pub fn strip_overlay_prefix(name: &[u8]) -> Option<&[u8]> {
    name.strip_prefix(TRUSTED_PREFIX).or_else(|| name.strip_prefix(USER_PREFIX))
}

/// True if `path` is marked opaque in either namespace.
pub fn is_opaque(path: &std::path::Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| matches!(xattr::get(path, name), Ok(Some(v)) if v == b"y"))
}
