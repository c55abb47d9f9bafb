//! The local worker: the solver's [`Worker`] over this machine's store, overlayfs and runc.
//!
//! Every step that changes files runs on an overlay mount of its input's snapshots with a fresh upper directory;
//! the upper directory *is* the step's layer (in overlayfs format), so committing a layer is a rename, and its
//! diff_id is the digest of the tar it would become. A step that changed nothing adds an empty layer, as in
//! BuildKit's images.

//!
//! The work is split by op: `source` makes sources available, `run` runs RUN steps, `files` applies file actions,
//! `select` hashes what a COPY selects, and `layers` mounts root filesystems and commits layers. Each returns the
//! typed [`ExecError`]; the [`Worker`] methods below only convert it at the boundary.

mod error;
mod files;
mod layers;
mod run;
mod select;
mod source;

pub use error::{Exclusion, ExecError, PathError};

use crate::cancel::Canceller;
use crate::emulation::Emulation;
use crate::mounts::MountSources;
use crate::runtime::network::NetworkStack;
use crate::runtime::{ContainerOptions, Runtime, RuntimeKind};
use crate::snapshotter::Snapshotter;
use rbuild_cache::Store;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::StatCache;
use rbuild_image::layer::LayerOptions;
use rbuild_solver::{CopyAction, ExecOp, FileOp, Op, Output, Worker, WorkerError};
use rbuild_types::Digest;
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How long cancelling waits for killed containers to go away.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the worker works and with what.
pub struct LocalWorker {
    store: Arc<Store>,
    runtime: Runtime,
    context: PathBuf,
    /// The context directory, opened once: every context read of the build starts from this fd, so even a swap of
    /// the context directory itself cannot change what the build reads from.
    context_root: Option<Root>,
    stat_cache: StatCache,
    layer_opts: LayerOptions,
    mount_sources: MountSources,
    canceller: Canceller,
    bundles: PathBuf,
    /// The build's private network, started by the first RUN with the default network (see
    /// [`crate::runtime::network`]) and stopped by [`LocalWorker::finish`] or drop.
    network: Mutex<Option<Arc<NetworkStack>>>,
    /// Fingerprints of the walks context digests were computed from, by [`walk_key`]: the copy that runs on a
    /// cache miss checks it copies exactly those files, unchanged.
    walks: Mutex<HashMap<String, Digest>>,
    /// Limits and settings of every RUN container (`--memory`, `--add-host`, ...).
    container: ContainerOptions,
    /// Whether [`LocalWorker::finish`] saves the stat cache: not for a context unpacked into a temporary directory
    /// (stdin, a URL), whose path is never seen again.
    save_stat_cache: bool,
    /// Local directories named by `--build-context NAME=DIR`, read by `Op::Context { name: NAME }`.
    named_contexts: std::collections::BTreeMap<String, PathBuf>,
    /// How steps for other platforms run, decided once per platform.
    emulation: (crate::emulation::Host, Mutex<HashMap<String, Emulation>>),
    /// How root filesystems are assembled (see [`crate::snapshotter`]).
    snapshotter: Snapshotter,
    /// Fetches layers that remote cache hits named, the first time a step needs their files.
    fetcher: Option<Arc<dyn rbuild_image::remote_cache::LayerFetcher>>,
}

impl LocalWorker {
    /// `context` is the build context directory; `clamp_mtime` is `SOURCE_DATE_EPOCH`, if set.
    pub fn new(store: Arc<Store>, context: PathBuf, clamp_mtime: Option<i64>) -> Result<LocalWorker, ExecError> {
        // Every op reads owners, chowns, mounts or runs runc.
        rbuild_types::ids::wait();
        let runc_state = store.root().join("runc");
        let bundles =
            store.tmp_dir("bundles").map_err(|source| ExecError::WorkDir { what: "runtime bundles", source })?;
        let runtime = Runtime::new(runc_state, bundles.clone()).map_err(ExecError::Runtime)?;
        let key = Digest::of(context.as_os_str().as_encoded_bytes());
        let stat_cache = StatCache::load(&store.root().join("index").join(format!("statcache-{}", &key.hex()[..16])));
        let context_root = match Root::open(&context) {
            Ok(root) => Some(root),
            Err(e) => {
                tracing::debug!(path = %context.display(), error = %e, "the build context cannot be opened now");
                None
            }
        };
        Ok(LocalWorker {
            store,
            runtime,
            context,
            context_root,
            stat_cache,
            layer_opts: LayerOptions { clamp_mtime },
            mount_sources: MountSources::default(),
            canceller: Canceller::new(),
            bundles: bundles.clone(),
            network: Mutex::new(None),
            walks: Mutex::new(HashMap::new()),
            container: ContainerOptions::default(),
            named_contexts: Default::default(),
            save_stat_cache: true,
            emulation: (crate::emulation::Host::new(bundles.clone()), Mutex::new(HashMap::new())),
            snapshotter: Snapshotter::default(),
            fetcher: None,
        })
    }

    /// Whether the context's stat cache is kept for the next build (default: yes). A temporary context's would
    /// only pile up in the store's index.
    pub fn with_stat_cache_saved(mut self, save: bool) -> LocalWorker {
        self.save_stat_cache = save;
        self
    }

    /// The directories of named local contexts (`--build-context NAME=DIR`), by name.
    pub fn with_named_contexts(mut self, contexts: std::collections::BTreeMap<String, PathBuf>) -> LocalWorker {
        self.named_contexts = contexts;
        self
    }

    /// Runs RUN steps with `kind` (runc, or crun), its state kept in the store's `<name>/` directory.
    pub fn with_runtime(mut self, kind: RuntimeKind) -> Result<LocalWorker, ExecError> {
        let runtime = Runtime::with_kind(kind, self.store.root().join(kind.name()), self.bundles.clone())
            .map_err(ExecError::Runtime)?;
        self.runtime = runtime.with_canceller(self.canceller.clone());
        Ok(self)
    }

    /// The secrets and SSH agents `RUN --mount=type=secret|ssh` steps may use.
    pub fn with_mount_sources(mut self, sources: MountSources) -> LocalWorker {
        self.mount_sources = sources;
        self
    }

    /// The limits and settings RUN containers get (the build's `--memory`, `--add-host`, `--ulimit`, ...).
    pub fn with_container_options(mut self, options: ContainerOptions) -> LocalWorker {
        self.container = options;
        self
    }

    /// Assembles root filesystems with `snapshotter` (overlayfs by default).
    pub fn with_snapshotter(mut self, snapshotter: Snapshotter) -> LocalWorker {
        self.snapshotter = snapshotter;
        self
    }

    /// Steps stop (and containers are killed) when `canceller` is cancelled.
    pub fn with_canceller(mut self, canceller: Canceller) -> LocalWorker {
        self.runtime = self.runtime.clone().with_canceller(canceller.clone());
        self.canceller = canceller;
        self
    }

    /// Where layers named by remote cache hits come from (they are fetched only when a step reads them).
    pub fn with_layer_fetcher(mut self, fetcher: Arc<dyn rbuild_image::remote_cache::LayerFetcher>) -> LocalWorker {
        self.fetcher = Some(fetcher);
        self
    }

    fn check_cancelled(&self) -> Result<(), ExecError> {
        Ok(self.canceller.check()?)
    }

    /// Persists what was learned about the context (file digests), for the next build, and stops the build's
    /// network stack (RUN steps still holding it keep it until they end).
    pub fn finish(&self) {
        if self.save_stat_cache
            && let Err(e) = self.stat_cache.save()
        {
            tracing::warn!(error = %e, "could not save the context stat cache");
        }
        if let Ok(mut net) = self.network.lock() {
            net.take();
        }
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir(&self.bundles) {
            tracing::debug!(path = %self.bundles.display(), error = %err, "removing the bundle directory");
        }
    }
}

/// The solver's side: each op's work returns an [`ExecError`], converted here (a non-zero exit becomes
/// [`WorkerError::ExitCode`]).
impl Worker for LocalWorker {
    fn cancel(&self) {
        let left = self.canceller.cancel(CANCEL_TIMEOUT);
        if left > 0 {
            tracing::warn!(left, "containers still running after cancelling the build");
        }
    }

    fn source(&self, op: &Op) -> Result<Output, WorkerError> {
        Ok(self.make_source(op)?)
    }

    fn content_digest(&self, input: &Output, action: &CopyAction) -> Result<Digest, WorkerError> {
        Ok(self.hash_selection(input, action)?)
    }

    fn content_files(&self, input: &Output, action: &CopyAction) -> Result<Vec<(String, Digest)>, WorkerError> {
        Ok(self.list_selection(input, action)?)
    }

    fn exec(&self, op: &ExecOp, inputs: &[Output], log: &mut dyn FnMut(&str)) -> Result<Output, WorkerError> {
        Ok(self.run(op, inputs, log)?)
    }

    fn file(&self, op: &FileOp, inputs: &[Output]) -> Result<Output, WorkerError> {
        Ok(self.apply_file_actions(op, inputs)?)
    }
}
