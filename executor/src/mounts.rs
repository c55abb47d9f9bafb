//! `RUN --mount` on the host side: what each mount type becomes before runc starts, and how it is undone.
//!
//! Every mount is a bind of a host path (or a fresh tmpfs) into the container, never a write into the step's
//! rootfs, so nothing but runc's mount-point stubs can reach the layer, and those are removed by
//! [`crate::runtime::stubs`]. Per type:
//!
//! - **bind**: the input's layers are overlaid with a throwaway upper directory (or a single snapshot is bound
//!   read-only as is); `rw` writes land in that upper and are discarded with it.
//! - **cache**: `<store>/cachemounts/<sha256(id)>/data`, kept across builds. Sharing is a file lock on the entry:
//!   `shared` holds it shared, `locked` exclusively (steps wait for each other), `private` tries it exclusively and,
//!   when someone else holds it, works on a copy that is thrown away. `rbuild prune` takes the lock exclusively
//!   too, so a cache in use is never removed from under a step. The sizes and removal are exposed here
//!   ([`list_cache_mounts`], [`remove_cache_mounts`]) for `du` and `prune`.
//! - **secret**: written to a private tmpfs mounted for this step only (and the runtime bundle goes there too,
//!   because an `env=` secret is part of `config.json`), bound read-only; the tmpfs is unmounted afterwards, so a
//!   secret value never touches a disk, the graph, a cache key or the index.
//! - **ssh**: a socket owned by the step's `uid`/`gid` with its `mode`, whose connections are forwarded to the
//!   agent socket given on the command line, so a non-root step can use an agent the host user owns.
//! - **tmpfs**: mounted by runc itself.

mod cache;
mod prepare;
mod secret;
mod ssh;
#[cfg(test)]
mod tests;

pub use cache::{
    CACHE_MOUNTS_DIR, CacheMountUsage, PrunedCacheMounts, cache_mounts_dir, cache_mounts_size, list_cache_mounts,
    remove_cache_mounts,
};
pub use prepare::{prepare, prepare_with};
pub use secret::SecretValue;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;
use rbuild_types::Digest;

use crate::runtime::{BindMount, TmpfsMount};
use crate::snapshotter::{Rootfs, Snapshotter};
use ssh::SshProxy;

/// What `--secret` and `--ssh` gave the build: values by id, never part of the graph.
#[derive(Debug, Default)]
pub struct MountSources {
    pub secrets: BTreeMap<String, SecretValue>,
    /// SSH agent sockets by id.
    pub ssh: BTreeMap<String, PathBuf>,
}

/// Errors of preparing mounts and of managing cache mounts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("secret {id:?} is required but was not given")]
    MissingSecret { id: String },
    #[error("SSH agent {id:?} is required but was not given")]
    MissingSsh { id: String },
    #[error("mount input {input} does not exist")]
    NoInput { input: usize },
    #[error("mount source {source_path:?} does not exist in the mounted filesystem")]
    NoSource { source_path: String },
    #[error("layer {layer} of a mounted filesystem is missing from the store")]
    MissingLayer { layer: Digest },
    #[error(transparent)]
    Io(#[from] rbuild_types::IoError),
    #[error("mounting the filesystem of a bind or cache mount")]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error("assembling the filesystem of a bind mount")]
    Snapshot(#[from] crate::snapshotter::SnapshotError),
    #[error("seeding cache mount {id:?}")]
    Seed {
        id: String,
        #[source]
        source: crate::copy::CopyError,
    },
    #[error("making a temporary directory")]
    Tmp(#[from] rbuild_cache::StoreError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Io(rbuild_types::IoError::new(op, path, source))
}

/// The host side of a step's mounts; everything is undone when dropped.
#[derive(Debug, Default)]
pub struct PreparedMounts {
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    /// `NAME=value` entries for `env=` secrets. Never log these.
    pub env: Vec<String>,
    /// A tmpfs for the runtime bundle, when a secret is in play.
    pub bundle_dir: Option<PathBuf>,
    proxies: Vec<SshProxy>,
    secret_fs: Option<PathBuf>,
    overlays: Vec<Rootfs>,
    snapshotter: Snapshotter,
    locks: Vec<File>,
    dirs: Vec<PathBuf>,
}

impl Drop for PreparedMounts {
    fn drop(&mut self) {
        self.proxies.clear();
        if let Some(fs) = self.secret_fs.take()
            && let Err(err) = nix::mount::umount2(&fs, MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %fs.display(), error = %err, "unmounting the secrets tmpfs");
        }
        for overlay in self.overlays.drain(..).rev() {
            if let Err(err) = overlay.finish() {
                tracing::warn!(error = %err, "unmounting a mount's overlay");
            }
        }
        // Closing the files releases the cache locks.
        self.locks.clear();
        for dir in self.dirs.drain(..).rev() {
            if let Err(err) = fs::remove_dir_all(&dir)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %dir.display(), error = %err, "removing a mount's work directory");
            }
        }
    }
}
