//! Root filesystems: the snapshots under a step, the overlay it runs on, the layer it commits, and read-only views
//! of a stage's files.

use super::{ExecError, LocalWorker};
use crate::snapshotter::Rootfs;
use rbuild_image::layer::diff_id;
use rbuild_solver::Output;
use rbuild_types::Digest;
use rbuild_types::oci::ImageConfig;
use std::fs;
use std::path::{Path, PathBuf};

impl LocalWorker {
    /// Makes the snapshots of every layer of `inputs` exist (a remote cache hit's layers are fetched now).
    pub(super) fn materialize(&self, inputs: &[Output]) -> Result<(), ExecError> {
        let Some(fetcher) = &self.fetcher else { return Ok(()) };
        for l in inputs.iter().flat_map(|o| o.layers()) {
            if !self.store.has_snapshot(l) {
                fetcher
                    .fetch(l)
                    .map_err(|source| ExecError::FetchLayer { layer: l.clone(), source: Box::new(source) })?;
            }
        }
        Ok(())
    }

    /// Snapshot directories of a root filesystem, top-most first (overlayfs lowerdir order).
    pub(super) fn lowers(&self, layers: &[Digest]) -> Result<Vec<PathBuf>, ExecError> {
        layers
            .iter()
            .rev()
            .map(|l| {
                let p = self.store.snapshot_path(l);
                if p.is_dir() { Ok(p) } else { Err(ExecError::MissingSnapshot { layer: l.clone() }) }
            })
            .collect()
    }

    /// Mounts `layers` with a fresh upper dir, runs `f` on the merged root, unmounts, and commits the upper dir as a
    /// new layer if anything changed.
    pub(super) fn on_overlay(
        &self,
        layers: &[Digest],
        what: &'static str,
        f: impl FnOnce(&Path) -> Result<(), ExecError>,
    ) -> Result<Output, ExecError> {
        let lowers = self.lowers(layers)?;
        let dir = self.store.tmp_dir(what).map_err(|source| ExecError::WorkDir { what: "the step", source })?;
        let result = (|| {
            let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
            let mount =
                Rootfs::mount(self.snapshotter, &lowers, &upper, &work, &merged).map_err(ExecError::MountRootfs)?;
            // A failed step's changes are not wanted: dropping the mount skips the native snapshotter's diff.
            f(&merged)?;
            mount.finish().map_err(ExecError::UnmountRootfs)?;
            self.commit(layers, &upper)
        })();
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Turns an upper directory into the next layer. A step that changed nothing still adds one, an empty layer,
    /// as BuildKit's images have (a RUN, or a WORKDIR of a directory that exists, is a layer there either way).
    fn commit(&self, layers: &[Digest], upper: &Path) -> Result<Output, ExecError> {
        let lowers = self.lowers(layers)?;
        prune_copied_up_dirs(upper, upper, &lowers);
        // SOURCE_DATE_EPOCH: clamp the snapshot itself, so its tar (made again at push or export) keeps this diff_id.
        if let Some(epoch) = self.layer_opts.clamp_mtime {
            rbuild_image::rootfs::clamp_mtimes(upper, epoch).map_err(|e| ExecError::ClampMtimes(Box::new(e)))?;
        }
        let (id, _) = diff_id(upper, &self.layer_opts).map_err(ExecError::LayerDigest)?;
        self.store.commit_snapshot(upper, &id).map_err(ExecError::SaveLayer)?;
        let mut out = layers.to_vec();
        out.push(id);
        Ok(Output::RootFs(out))
    }

    /// Makes an image's layers available as snapshots (extracting stored blobs where a snapshot is missing).
    pub(super) fn image_rootfs(&self, config_digest: &Digest) -> Result<Output, ExecError> {
        let config = config_digest.clone();
        let bytes = self
            .store
            .read_blob(config_digest)
            .map_err(|source| ExecError::ReadImageConfig { config: config.clone(), source })?;
        let image: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|source| ExecError::ParseImageConfig { config: config.clone(), source })?;
        for id in &image.rootfs.diff_ids {
            rbuild_image::rootfs::ensure_snapshot(&self.store, id).map_err(|source| ExecError::ImageLayer {
                layer: id.clone(),
                config: config.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(Output::RootFs(image.rootfs.diff_ids))
    }

    /// A read-only view of a root filesystem's merged tree, for copying from it.
    pub(super) fn with_view<T>(
        &self,
        input: &Output,
        f: impl FnOnce(&Path) -> Result<T, ExecError>,
    ) -> Result<T, ExecError> {
        match input {
            Output::Dir(d) => f(d),
            Output::RootFs(layers) if layers.is_empty() => {
                let d = self
                    .store
                    .tmp_dir("empty")
                    .map_err(|source| ExecError::WorkDir { what: "an empty filesystem", source })?;
                let r = f(&d);
                let _ = fs::remove_dir_all(&d);
                r
            }
            Output::RootFs(layers) if layers.len() == 1 => f(&self.store.snapshot_path(&layers[0])),
            Output::RootFs(layers) => {
                let lowers = self.lowers(layers)?;
                let dir = self
                    .store
                    .tmp_dir("view")
                    .map_err(|source| ExecError::WorkDir { what: "a view of a stage's files", source })?;
                let r = (|| {
                    let mount = Rootfs::view(self.snapshotter, &lowers, &dir).map_err(ExecError::MountView)?;
                    let r = f(mount.target());
                    drop(mount);
                    r
                })();
                let _ = fs::remove_dir_all(&dir);
                r
            }
        }
    }
}

/// Removes directories that overlayfs copied up without anything in them changing: empty in the upper dir, not
/// opaque, and with the same mode and owner as in the layers below. They appear when a mount point is created
/// inside an existing directory (runc's `/etc/hosts` stub) or when a file is created and deleted again; keeping
/// them would make a step that changed nothing produce a layer.
fn prune_copied_up_dirs(upper_root: &Path, dir: &Path, lowers: &[PathBuf]) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() {
            continue;
        }
        prune_copied_up_dirs(upper_root, &path, lowers);
        let is_empty = fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
        let opaque = rbuild_cache::overlay_xattr::is_opaque(&path);
        if !is_empty || opaque {
            continue;
        }
        let Ok(rel) = path.strip_prefix(upper_root) else { continue };
        let below = lowers.iter().map(|l| l.join(rel)).find_map(|p| fs::symlink_metadata(p).ok());
        if let Some(lower) = below
            && lower.is_dir()
            && lower.mode() == meta.mode()
            && lower.uid() == meta.uid()
            && lower.gid() == meta.gid()
        {
            let _ = fs::remove_dir(&path);
        }
    }
}
