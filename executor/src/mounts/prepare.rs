//! Preparing a step's mounts: each `ExecMount` becomes binds, tmpfs mounts and environment entries.

use std::fs;
use std::path::{Path, PathBuf};

use rbuild_cache::Store;
use rbuild_solver::{ExecMount, Output};

use super::cache::create_owned_dirs;
use super::secret::write_secret;
use super::ssh::SshProxy;
use super::{MountError, MountSources, PreparedMounts, io_err};
use crate::runtime::{BindMount, TmpfsMount};
use crate::snapshotter::{Rootfs, Snapshotter};
use crate::user::resolve_in_root;

/// Prepares `mounts` of a step whose inputs are `inputs` (input 0 is its rootfs), on overlayfs.
pub fn prepare(
    store: &Store,
    sources: &MountSources,
    mounts: &[ExecMount],
    inputs: &[Output],
) -> Result<PreparedMounts, MountError> {
    prepare_with(store, sources, mounts, inputs, Snapshotter::Overlayfs)
}

/// [`prepare`], with bind mounts of multi-layer inputs assembled by `snapshotter`.
pub fn prepare_with(
    store: &Store,
    sources: &MountSources,
    mounts: &[ExecMount],
    inputs: &[Output],
    snapshotter: Snapshotter,
) -> Result<PreparedMounts, MountError> {
    let mut p = PreparedMounts::default();
    p.snapshotter = snapshotter;
    for mount in mounts {
        match mount {
            ExecMount::Bind { target, input, source, readonly } => {
                let output = inputs.get(*input).ok_or(MountError::NoInput { input: *input })?;
                let root = p.view(store, output, !*readonly)?;
                let host = resolve_in_root(&root, Path::new(source)).map_err(io_err("resolve", &root))?;
                if fs::symlink_metadata(&host).is_err() {
                    return Err(MountError::NoSource { source_path: source.clone() });
                }
                p.binds.push(BindMount { source: host, destination: target.clone(), readonly: *readonly });
            }
            ExecMount::Cache { target, id, sharing, from, source, mode, uid, gid, readonly } => {
                let seed = match from {
                    Some(i) => {
                        let output = inputs.get(*i).ok_or(MountError::NoInput { input: *i })?;
                        Some(p.view(store, output, false)?)
                    }
                    None => None,
                };
                let owner = (*mode, *uid, *gid);
                let data = p.cache(store, id, *sharing, seed.as_deref().map(|r| (r, source.as_str())), owner)?;
                let host = if from.is_some() {
                    data
                } else {
                    let host = resolve_in_root(&data, Path::new(source)).map_err(io_err("resolve", &data))?;
                    if !host.exists() {
                        create_owned_dirs(&host, owner)?;
                    }
                    host
                };
                p.binds.push(BindMount { source: host, destination: target.clone(), readonly: *readonly });
            }
            ExecMount::Tmpfs { target, size } => {
                p.tmpfs.push(TmpfsMount { destination: target.clone(), size: *size });
            }
            ExecMount::Secret { id, target, env, required, mode, uid, gid } => {
                let Some(value) = sources.secrets.get(id) else {
                    if *required {
                        return Err(MountError::MissingSecret { id: id.clone() });
                    }
                    continue;
                };
                if let Some(name) = env {
                    p.env.push(format!("{name}={}", String::from_utf8_lossy(value.bytes())));
                }
                let secret_dir = p.secret_fs(store, sources)?;
                if let Some(target) = target {
                    let file = secret_dir.join(format!("secret-{}", p.binds.len()));
                    write_secret(&file, value.bytes(), *mode, *uid, *gid)?;
                    p.binds.push(BindMount { source: file, destination: target.clone(), readonly: true });
                }
            }
            ExecMount::Ssh { id, target, required, mode, uid, gid } => {
                let Some(agent) = sources.ssh.get(id) else {
                    if *required {
                        return Err(MountError::MissingSsh { id: id.clone() });
                    }
                    continue;
                };
                let dir = store.tmp_dir("ssh")?;
                p.dirs.push(dir.clone());
                let socket = dir.join("agent.sock");
                p.proxies.push(SshProxy::start(agent.clone(), &socket, *mode, *uid, *gid)?);
                p.binds.push(BindMount { source: socket, destination: target.clone(), readonly: false });
            }
        }
    }
    Ok(p)
}

impl PreparedMounts {
    /// A directory showing `output`; writable views get a throwaway upper layer.
    fn view(&mut self, store: &Store, output: &Output, writable: bool) -> Result<PathBuf, MountError> {
        let layers = match output {
            Output::Dir(dir) if !writable => return Ok(dir.clone()),
            Output::Dir(dir) => vec![dir.clone()],
            Output::RootFs(layers) => {
                let mut lowers = Vec::new();
                for layer in layers.iter().rev() {
                    let path = store.snapshot_path(layer);
                    if !path.is_dir() {
                        return Err(MountError::MissingLayer { layer: layer.clone() });
                    }
                    lowers.push(path);
                }
                lowers
            }
        };
        if !writable && layers.len() == 1 {
            return Ok(layers[0].clone());
        }
        let dir = store.tmp_dir("mount")?;
        self.dirs.push(dir.clone());
        let mount = Rootfs::view(self.snapshotter, &layers, &dir)?;
        let merged = mount.target().to_path_buf();
        self.overlays.push(mount);
        Ok(merged)
    }
}
