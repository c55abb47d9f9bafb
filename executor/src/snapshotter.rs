//! Snapshotters: how a step's root filesystem is assembled from its layers' snapshots, and how its changes become
//! the next snapshot (an upper directory in overlayfs format, whatever the snapshotter).
//!
//! - `overlayfs`: the kernel's overlay (see [`crate::overlay`]); in a user namespace with `userxattr` (5.11+).
//! - `fuse-overlayfs`: Debian's `fuse-overlayfs`, for kernels whose overlayfs refuses a user namespace. It reads
//!   and writes the same upper format (whiteout devices, opaque xattrs).
//! - `native`: copies the layers into a plain directory and, after the step, diffs it against what was copied (see
//!   [`native`]); needs nothing from the kernel, at the cost of a copy per step. BuildKit's and the seeds' `vfs`.
//!
//! `auto` probes them in that order, once per store, and records the answer in `<store>/snapshotter`, so every
//! later build of the store uses the same one without probing again (and `rbuild info` reports it).

mod fuse;
pub mod native;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::overlay::{OverlayError, OverlayMount, mount_overlay};

/// The file in a store that records the detected snapshotter.
pub const RECORD_FILE: &str = "snapshotter";

/// A way to assemble root filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snapshotter {
    #[default]
    Overlayfs,
    FuseOverlayfs,
    Native,
}

impl Snapshotter {
    pub const ALL: [Snapshotter; 3] = [Snapshotter::Overlayfs, Snapshotter::FuseOverlayfs, Snapshotter::Native];

    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::FuseOverlayfs => "fuse-overlayfs",
            Snapshotter::Native => "native",
        }
    }

    /// `auto` is `None`.
    pub fn parse(s: &str) -> Result<Option<Snapshotter>, SnapshotError> {
        match s {
            "auto" => Ok(None),
            _ => Snapshotter::ALL
                .into_iter()
                .find(|k| k.name() == s)
                .map(Some)
                .ok_or_else(|| SnapshotError::Unknown { name: s.to_string() }),
        }
    }
}

/// Failures to choose, mount or finish a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("unknown snapshotter {name:?} (auto, overlayfs, fuse-overlayfs or native)")]
    Unknown { name: String },
    #[error("the {name} snapshotter does not work here: {why}")]
    Unavailable { name: &'static str, why: String },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("fuse-overlayfs at {target}: {message}")]
    Fuse { target: PathBuf, message: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { op, path: path.to_path_buf(), source }
}

/// The snapshotter of the store at `root`: `requested` if given (checked to work), else the recorded one, else the
/// first that works here, recorded. `scratch` is an empty directory of the store to probe in.
pub fn choose(root: &Path, scratch: &Path, requested: Option<Snapshotter>) -> Result<Snapshotter, SnapshotError> {
    // Probes mount and chown.
    rbuild_types::ids::wait();
    if let Some(kind) = requested {
        probe(kind, scratch).map_err(|why| SnapshotError::Unavailable { name: kind.name(), why })?;
        return Ok(kind);
    }
    let record = root.join(RECORD_FILE);
    if let Ok(text) = std::fs::read_to_string(&record)
        && let Ok(Some(kind)) = Snapshotter::parse(text.trim())
    {
        return Ok(kind);
    }
    let mut why_not = Vec::new();
    for kind in Snapshotter::ALL {
        match probe(kind, scratch) {
            Ok(()) => {
                let tmp = root.join(format!(".{RECORD_FILE}.{}", std::process::id()));
                std::fs::write(&tmp, format!("{}\n", kind.name())).map_err(io_err("writing", &tmp))?;
                std::fs::rename(&tmp, &record).map_err(io_err("writing", &record))?;
                return Ok(kind);
            }
            Err(why) => {
                tracing::info!(snapshotter = kind.name(), %why, "snapshotter unavailable");
                why_not.push(format!("{}: {why}", kind.name()));
            }
        }
    }
    Err(SnapshotError::Unavailable { name: "native", why: why_not.join("; ") })
}

/// Checks that `kind` can mount and write here, in the empty directory `scratch`.
pub fn probe(kind: Snapshotter, scratch: &Path) -> Result<(), String> {
    rbuild_types::ids::wait();
    let dir = scratch.join(format!("probe-{}", kind.name()));
    let (lower, upper, work, merged) = (dir.join("lower"), dir.join("upper"), dir.join("work"), dir.join("merged"));
    let result = (|| {
        std::fs::create_dir_all(&lower).map_err(|e| e.to_string())?;
        std::fs::write(lower.join("f"), b"x").map_err(|e| e.to_string())?;
        let fs =
            Rootfs::mount(kind, std::slice::from_ref(&lower), &upper, &work, &merged).map_err(|e| e.to_string())?;
        let wrote = std::fs::write(fs.target().join("f"), b"y").map_err(|e| format!("writing through it: {e}"));
        fs.finish().map_err(|e| e.to_string())?;
        wrote?;
        match std::fs::read(upper.join("f")) {
            Ok(b) if b == b"y" => Ok(()),
            _ => Err("a change did not reach the upper directory".to_string()),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A root filesystem assembled for a step; [`Rootfs::finish`] (or drop) takes it apart.
#[derive(Debug)]
pub struct Rootfs {
    target: PathBuf,
    kind: Mounted,
}

#[derive(Debug)]
enum Mounted {
    Overlay(OverlayMount),
    Fuse { mounted: bool, upper: PathBuf, lowers: Vec<PathBuf> },
    Native { upper: PathBuf, before: Option<native::Index> },
}

impl Rootfs {
    /// Assembles `lowers` (top-most first) at `target`; changes land in `upper` (in overlayfs format) by the time
    /// [`Rootfs::finish`] returns. `work` is scratch space next to `upper`.
    pub fn mount(
        kind: Snapshotter,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<Rootfs, SnapshotError> {
        let mounted = match kind {
            Snapshotter::Overlayfs => Mounted::Overlay(mount_overlay(lowers, upper, work, target)?),
            Snapshotter::FuseOverlayfs => {
                mount_fuse(lowers, upper, work, target)?;
                Mounted::Fuse { mounted: true, upper: upper.to_path_buf(), lowers: lowers.to_vec() }
            }
            Snapshotter::Native => {
                std::fs::create_dir_all(upper).map_err(io_err("creating", upper))?;
                let before = native::assemble(lowers, target)?;
                Mounted::Native { upper: upper.to_path_buf(), before: Some(before) }
            }
        };
        Ok(Rootfs { target: target.to_path_buf(), kind: mounted })
    }

    /// A view of `lowers` to read (or write and forget) at `dir/merged`.
    pub fn view(kind: Snapshotter, lowers: &[PathBuf], dir: &Path) -> Result<Rootfs, SnapshotError> {
        let mut fs = Rootfs::mount(kind, lowers, &dir.join("upper"), &dir.join("work"), &dir.join("merged"))?;
        if let Mounted::Native { before, .. } = &mut fs.kind {
            before.take();
        }
        Ok(fs)
    }

    /// The assembled tree.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts (overlays) or writes the diff into the upper directory (native).
    pub fn finish(mut self) -> Result<(), SnapshotError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<(), SnapshotError> {
        match &mut self.kind {
            Mounted::Overlay(_) => {
                let done = Mounted::Native { upper: PathBuf::new(), before: None };
                if let Mounted::Overlay(m) = std::mem::replace(&mut self.kind, done) {
                    m.unmount()?;
                }
                Ok(())
            }
            Mounted::Fuse { mounted, upper, lowers } => {
                if *mounted {
                    *mounted = false;
                    unmount_fuse(&self.target)?;
                    fuse::normalize(upper, lowers)?;
                }
                Ok(())
            }
            Mounted::Native { upper, before } => match before.take() {
                Some(index) => native::diff(&self.target, &index, upper),
                None => Ok(()),
            },
        }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Mounted::Native { before, .. } = &mut self.kind {
            // An unfinished native rootfs has no diff to write; the caller removes its directories.
            before.take();
        }
        if let Err(e) = self.finish_inner() {
            tracing::warn!(target = %self.target.display(), error = %e, "taking a root filesystem apart");
        }
    }
}

fn mount_fuse(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), SnapshotError> {
    let fuse = crate::runtime::find_executable("fuse-overlayfs").map_err(|path| SnapshotError::Unavailable {
        name: "fuse-overlayfs",
        why: format!("not found on PATH ({path}; Debian: apt-get install fuse-overlayfs)"),
    })?;
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let empty;
    let lowers: Vec<PathBuf> = if lowers.is_empty() {
        empty = work.with_file_name(".rbuild-empty-lower");
        std::fs::create_dir_all(&empty).map_err(io_err("creating", &empty))?;
        vec![empty.clone()]
    } else {
        lowers.to_vec()
    };
    let escape = |p: &Path| p.to_string_lossy().replace('\\', "\\\\").replace(',', "\\,").replace(':', "\\:");
    let lowerdir = lowers.iter().map(|l| escape(l)).collect::<Vec<_>>().join(":");
    let options = format!("lowerdir={lowerdir},upperdir={},workdir={}", escape(upper), escape(work));
    let out = Command::new(&fuse)
        .arg("-o")
        .arg(options)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SnapshotError::Fuse { target: target.to_path_buf(), message: e.to_string() })?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SnapshotError::Fuse { target: target.to_path_buf(), message });
    }
    Ok(())
}

fn unmount_fuse(target: &Path) -> Result<(), SnapshotError> {
    use nix::mount::{MntFlags, umount2};
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| SnapshotError::Fuse { target: target.to_path_buf(), message: format!("unmounting: {e}") }),
        Err(e) => Err(SnapshotError::Fuse { target: target.to_path_buf(), message: format!("unmounting: {e}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_is_none() {
        for kind in Snapshotter::ALL {
            assert_eq!(Snapshotter::parse(kind.name()).expect("known"), Some(kind));
        }
        assert_eq!(Snapshotter::parse("auto").expect("auto"), None);
        assert!(matches!(Snapshotter::parse("vfs"), Err(SnapshotError::Unknown { .. })));
    }

    #[test]
    fn native_is_chosen_when_requested_and_recorded_choice_is_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let scratch = root.path().join("tmp");
        std::fs::create_dir_all(&scratch).expect("mkdir");
        assert_eq!(choose(root.path(), &scratch, Some(Snapshotter::Native)).expect("native"), Snapshotter::Native);
        std::fs::write(root.path().join(RECORD_FILE), "native\n").expect("write");
        assert_eq!(choose(root.path(), &scratch, None).expect("recorded"), Snapshotter::Native);
    }
}
