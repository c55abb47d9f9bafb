//! RUN steps: a process in a container on an overlay of the step's input, with its mounts, network and emulator.

use super::files::mkdir_in_root;
use super::{ExecError, LocalWorker};
use crate::emulation::Emulation;
use crate::mounts::prepare_with;
use crate::runtime::network::NetworkStack;
use crate::runtime::{NetworkMode, RunSpec};
use crate::user::resolve_user;
use rbuild_solver::{ExecOp, Network, Output};
use std::fs;
use std::sync::Arc;

impl LocalWorker {
    /// Runs a RUN step; a process that exits non-zero is [`ExecError::Exit`].
    pub(super) fn run(&self, op: &ExecOp, inputs: &[Output], log: &mut dyn FnMut(&str)) -> Result<Output, ExecError> {
        self.check_cancelled()?;
        self.materialize(inputs)?;
        if let Some(fetcher) = &self.fetcher {
            for m in &op.mounts {
                if let rbuild_solver::ExecMount::Cache { id, .. } = m {
                    fetcher
                        .restore_cache_mount(id)
                        .map_err(|source| ExecError::RestoreCacheMount { id: id.clone(), source: Box::new(source) })?;
                }
            }
        }
        let layers = inputs.first().map(|o| o.layers().to_vec()).unwrap_or_default();
        let emulation = self.emulation_for(op)?;
        self.on_overlay(&layers, "run", |merged| {
            let user =
                resolve_user(merged, &op.user).map_err(|source| ExecError::User { user: op.user.clone(), source })?;
            if fs::symlink_metadata(merged.join(op.cwd.trim_start_matches('/'))).is_err() {
                mkdir_in_root(merged, &op.cwd, 0o755, Some((user.uid, user.gid)))?;
            }
            let mounts = prepare_with(&self.store, &self.mount_sources, &op.mounts, inputs, self.snapshotter)
                .map_err(ExecError::Mounts)?;
            // Held until the container is gone, so a concurrent `finish` cannot pull the namespace from under it.
            let (network, stack) = match op.network {
                Network::Default => {
                    let stack = self.private_network()?;
                    (stack.mode(), Some(stack))
                }
                Network::Host => (NetworkMode::Host, None),
                Network::None => (NetworkMode::None, None),
            };
            let (args, mut binds) = (op.args.clone(), mounts.binds.clone());
            let args = match &emulation {
                Emulation::None => args,
                Emulation::Inject(emulator) => {
                    binds.push(crate::runtime::BindMount {
                        source: emulator.clone(),
                        destination: crate::emulation::EMULATOR_PATH.into(),
                        readonly: true,
                    });
                    crate::emulation::wrap_args(&args, &op.env, merged)
                }
            };
            let spec = RunSpec {
                rootfs: merged.to_path_buf(),
                args,
                env: op.env.iter().chain(&mounts.env).cloned().collect(),
                cwd: op.cwd.clone(),
                user,
                hostname: if op.hostname.is_empty() { "buildkitsandbox".into() } else { op.hostname.clone() },
                network,
                mounts: binds,
                tmpfs: mounts.tmpfs.clone(),
                bundle_dir: mounts.bundle_dir.clone(),
                options: self.container.clone(),
                privileged: op.insecure,
            };
            let result = self.runtime.run(&spec, log);
            drop(spec);
            drop(mounts);
            drop(stack);
            let result = result.map_err(|source| ExecError::Run { command: op.args.join(" "), source })?;
            self.check_cancelled()?;
            if result.exit_code != 0 {
                let mut tail = result.tail;
                if let (Emulation::Inject(emulator), Some(platform)) = (&emulation, &op.platform) {
                    tail.extend(crate::emulation::child_exec_hint(&tail, emulator, platform));
                }
                return Err(ExecError::Exit { command: op.args.join(" "), code: result.exit_code, tail });
            }
            Ok(())
        })
    }

    /// How a step for `op.platform` runs here (natively when it has none), decided once per platform.
    fn emulation_for(&self, op: &ExecOp) -> Result<Emulation, ExecError> {
        let Some(platform) = &op.platform else { return Ok(Emulation::None) };
        let key = format!("{}/{}/{}", platform.os, platform.architecture, platform.variant.as_deref().unwrap_or(""));
        let (host, decided) = &self.emulation;
        if let Some(e) = decided.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let e = host.emulation(platform).map_err(ExecError::Emulation)?;
        if let Emulation::Inject(emulator) = &e {
            tracing::debug!(platform = %key, emulator = %emulator.display(), "steps run under an injected emulator");
        }
        decided.lock().unwrap_or_else(|p| p.into_inner()).insert(key, e.clone());
        Ok(e)
    }

    /// The build's private network, started on first use; concurrent first uses start it once.
    fn private_network(&self) -> Result<Arc<NetworkStack>, ExecError> {
        // A step that panicked holding the lock left the slot as it was: still usable.
        let mut net = self.network.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stack) = net.as_ref() {
            return Ok(stack.clone());
        }
        let dir =
            self.store.tmp_dir("net").map_err(|source| ExecError::WorkDir { what: "the build's network", source })?;
        let stack = match NetworkStack::start(&dir) {
            Ok(stack) => Arc::new(stack),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(ExecError::Network(e));
            }
        };
        *net = Some(stack.clone());
        Ok(stack)
    }
}
