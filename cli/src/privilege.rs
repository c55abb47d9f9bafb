//! What `rbuild build` needs from the user running it. Today: root, for runc containers, overlayfs mounts and
//! unpacking base-image layers with their owners and device nodes. Without it a build used to fail deep inside
//! ("failed to resolve base image … layer …"); this check says what is missing before anything starts. When
//! rootless builds (a user namespace from /etc/subuid) land, this is where they are chosen instead.

use anyhow::{Result, bail};

pub fn check_build() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "rbuild build needs root (running as uid {euid}): RUN steps run in runc containers on overlayfs mounts, \
             and base-image layers are unpacked with their owners and device nodes. Run it as root (e.g. `sudo \
             rbuild build ...`); rootless builds are not available yet"
        );
    }
    Ok(())
}
