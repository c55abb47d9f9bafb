//! The local worker: the solver's [`Worker`] over this machine's store, overlayfs and runc.
//!
//! Every step that changes files runs on an overlay mount of its input's snapshots with a fresh upper directory;
//! the upper directory *is* the step's layer (in overlayfs format), so committing a layer is a rename, and its
//! diff_id is the digest of the tar it would become. A step that changed nothing adds an empty layer, as in
//! BuildKit's images.

use crate::cancel::Canceller;
use crate::copy::{CopyOptions, copy_from};
use crate::emulation::Emulation;
use crate::mounts::{MountSources, prepare_with};
use crate::runtime::network::NetworkStack;
use crate::runtime::{ContainerOptions, NetworkMode, RunSpec, Runtime, RuntimeKind};
use crate::snapshotter::{Rootfs, Snapshotter};
use crate::user::resolve_user;
use rbuild_cache::Store;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{Selection, StatCache};
use rbuild_image::layer::{LayerOptions, diff_id};
use rbuild_solver::{CopyAction, ExecOp, FileAction, FileOp, Network, Op, Output, Worker, WorkerError};
use rbuild_types::Digest;
use rbuild_types::oci::ImageConfig;
use rbuild_types::patterns::PatternMatcher;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
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
    pub fn new(store: Arc<Store>, context: PathBuf, clamp_mtime: Option<i64>) -> Result<LocalWorker, WorkerError> {
        let runc_state = store.root().join("runc");
        let bundles = store.tmp_dir("bundles").map_err(|e| WorkerError::failed("preparing the runtime", e))?;
        let runtime = Runtime::new(runc_state, bundles.clone())
            .map_err(|e| WorkerError::failed("preparing the container runtime", e))?;
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

    /// How a step for `op.platform` runs here (natively when it has none), decided once per platform.
    fn emulation_for(&self, op: &ExecOp) -> Result<Emulation, WorkerError> {
        let Some(platform) = &op.platform else { return Ok(Emulation::None) };
        let key = format!("{}/{}/{}", platform.os, platform.architecture, platform.variant.as_deref().unwrap_or(""));
        let (host, decided) = &self.emulation;
        if let Some(e) = decided.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let e = host.emulation(platform).map_err(|e| WorkerError::failed("emulating another platform", e))?;
        if let Emulation::Inject(emulator) = &e {
            tracing::debug!(platform = %key, emulator = %emulator.display(), "steps run under an injected emulator");
        }
        decided.lock().unwrap_or_else(|p| p.into_inner()).insert(key, e.clone());
        Ok(e)
    }

    /// Runs RUN steps with `kind` (runc, or crun), its state kept in the store's `<name>/` directory.
    pub fn with_runtime(mut self, kind: RuntimeKind) -> Result<LocalWorker, WorkerError> {
        let runtime = Runtime::with_kind(kind, self.store.root().join(kind.name()), self.bundles.clone())
            .map_err(|e| WorkerError::failed("preparing the container runtime", e))?;
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

    /// Makes the snapshots of every layer of `inputs` exist (a remote cache hit's layers are fetched now).
    fn materialize(&self, inputs: &[Output]) -> Result<(), WorkerError> {
        let Some(fetcher) = &self.fetcher else { return Ok(()) };
        for l in inputs.iter().flat_map(|o| o.layers()) {
            if !self.store.has_snapshot(l) {
                fetcher.fetch(l).map_err(|e| WorkerError::failed(format!("fetching cached layer {l}"), e))?;
            }
        }
        Ok(())
    }

    fn check_cancelled(&self) -> Result<(), WorkerError> {
        self.canceller.check().map_err(|e| WorkerError::failed("stopping", e))
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

    /// The build's private network, started on first use; concurrent first uses start it once.
    fn private_network(&self) -> Result<Arc<NetworkStack>, WorkerError> {
        let mut net = self.network.lock().map_err(|_| WorkerError::failed("network", "a RUN step panicked"))?;
        if let Some(stack) = net.as_ref() {
            return Ok(stack.clone());
        }
        let dir = self.store.tmp_dir("net").map_err(|e| WorkerError::failed("preparing the build's network", e))?;
        let stack = match NetworkStack::start(&dir) {
            Ok(stack) => Arc::new(stack),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(WorkerError::failed("starting the build's network", e));
            }
        };
        *net = Some(stack.clone());
        Ok(stack)
    }

    /// Snapshot directories of a root filesystem, top-most first (overlayfs lowerdir order).
    fn lowers(&self, layers: &[Digest]) -> Result<Vec<PathBuf>, WorkerError> {
        layers
            .iter()
            .rev()
            .map(|l| {
                let p = self.store.snapshot_path(l);
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(WorkerError::failed(format!("layer {l}"), "its snapshot is missing from the store"))
                }
            })
            .collect()
    }

    /// Mounts `layers` with a fresh upper dir, runs `f` on the merged root, unmounts, and commits the upper dir as a
    /// new layer if anything changed.
    fn on_overlay(
        &self,
        layers: &[Digest],
        what: &str,
        f: impl FnOnce(&Path) -> Result<(), WorkerError>,
    ) -> Result<Output, WorkerError> {
        let lowers = self.lowers(layers)?;
        let dir = self.store.tmp_dir(what).map_err(|e| WorkerError::failed("creating a work directory", e))?;
        let result = (|| {
            let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
            let mount = Rootfs::mount(self.snapshotter, &lowers, &upper, &work, &merged)
                .map_err(|e| WorkerError::failed("mounting the step's root filesystem", e))?;
            // A failed step's changes are not wanted: dropping the mount skips the native snapshotter's diff.
            f(&merged)?;
            mount.finish().map_err(|e| WorkerError::failed("unmounting the step's root filesystem", e))?;
            self.commit(layers, &upper)
        })();
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Turns an upper directory into the next layer. A step that changed nothing still adds one, an empty layer,
    /// as BuildKit's images have (a RUN, or a WORKDIR of a directory that exists, is a layer there either way).
    fn commit(&self, layers: &[Digest], upper: &Path) -> Result<Output, WorkerError> {
        let lowers = self.lowers(layers)?;
        prune_copied_up_dirs(upper, upper, &lowers);
        // SOURCE_DATE_EPOCH: clamp the snapshot itself, so its tar (made again at push or export) keeps this diff_id.
        if let Some(epoch) = self.layer_opts.clamp_mtime {
            rbuild_image::rootfs::clamp_mtimes(upper, epoch)
                .map_err(|e| WorkerError::failed("clamping mtimes to SOURCE_DATE_EPOCH", e))?;
        }
        let (id, _) =
            diff_id(upper, &self.layer_opts).map_err(|e| WorkerError::failed("computing the layer digest", e))?;
        self.store.commit_snapshot(upper, &id).map_err(|e| WorkerError::failed("saving the layer", e))?;
        let mut out = layers.to_vec();
        out.push(id);
        Ok(Output::RootFs(out))
    }

    /// Makes an image's layers available as snapshots (extracting stored blobs where a snapshot is missing).
    fn image_rootfs(&self, config_digest: &Digest) -> Result<Output, WorkerError> {
        let bytes = self
            .store
            .read_blob(config_digest)
            .map_err(|e| WorkerError::failed(format!("reading image config {config_digest}"), e))?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| WorkerError::failed(format!("parsing image config {config_digest}"), e))?;
        for id in &config.rootfs.diff_ids {
            rbuild_image::rootfs::ensure_snapshot(&self.store, id)
                .map_err(|e| WorkerError::failed(format!("layer {id} of image {config_digest}"), e))?;
        }
        Ok(Output::RootFs(config.rootfs.diff_ids))
    }

    /// A read-only view of a root filesystem's merged tree, for copying from it.
    fn with_view<T>(&self, input: &Output, f: impl FnOnce(&Path) -> Result<T, WorkerError>) -> Result<T, WorkerError> {
        match input {
            Output::Dir(d) => f(d),
            Output::RootFs(layers) if layers.is_empty() => {
                let d = self.store.tmp_dir("empty").map_err(|e| WorkerError::failed("creating a work directory", e))?;
                let r = f(&d);
                let _ = fs::remove_dir_all(&d);
                r
            }
            Output::RootFs(layers) if layers.len() == 1 => f(&self.store.snapshot_path(&layers[0])),
            Output::RootFs(layers) => {
                let lowers = self.lowers(layers)?;
                let dir =
                    self.store.tmp_dir("view").map_err(|e| WorkerError::failed("creating a work directory", e))?;
                let r = (|| {
                    let mount = Rootfs::view(self.snapshotter, &lowers, &dir)
                        .map_err(|e| WorkerError::failed("mounting a stage's filesystem to copy from", e))?;
                    let r = f(mount.target());
                    drop(mount);
                    r
                })();
                let _ = fs::remove_dir_all(&dir);
                r
            }
        }
    }

    /// The open root of a directory input: the context's own fd, or `dir` opened now.
    fn open_dir_input<'a>(
        &'a self,
        dir: &Path,
        action: &CopyAction,
        owned: &'a mut Option<Root>,
    ) -> Result<&'a Root, WorkerError> {
        if let Some(root) = self.context_root.as_ref().filter(|_| dir == self.context) {
            return Ok(root);
        }
        let root = Root::open(dir).map_err(|e| WorkerError::failed(copy_context(action), e))?;
        Ok(owned.insert(root))
    }

    fn copy_into(&self, merged: &Path, action: &CopyAction, src: &Output) -> Result<(), WorkerError> {
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let chown = match &action.chown {
            Some(spec) => {
                let u = resolve_user(merged, spec).map_err(|e| WorkerError::failed(format!("--chown={spec}"), e))?;
                Some((u.uid, u.gid))
            }
            None => None,
        };
        let opts = CopyOptions {
            chown,
            chmod: action.chmod,
            extract_archives: action.extract_archives,
            keep_owner: action.keep_owner,
        };
        self.with_view(src, |src_root| {
            let fail = |e: crate::copy::CopyError| exclusions.explain(action, e);
            let mut owned = None;
            let root = self.open_dir_input(src_root, action, &mut owned)?;
            if !action.parents {
                let expect = match src {
                    Output::Dir(_) => self.walks.lock().ok().and_then(|w| w.get(&walk_key(src_root, action)).cloned()),
                    Output::RootFs(_) => None,
                };
                return copy_from(root, &action.sources, &excluded, merged, &action.dest, &opts, expect.as_ref())
                    .map_err(fail);
            }
            // --parents: each match lands under dest at its own directory path. (Each file is still read beneath
            // the root and checked against the walk that copies it; the matches are not compared with the hash's.)
            let found = rbuild_cache::contenthash::resolve_sources(root, &action.sources, &excluded)
                .map_err(|e| fail(e.into()))?;
            let dest = action.dest.trim_end_matches('/');
            for s in found {
                let rel = parents_rel(&s.source, &s.rel);
                let parent = rel.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let into = if parent.is_empty() { format!("{dest}/") } else { format!("{dest}/{parent}/") };
                let one = [s.rel.to_string_lossy().into_owned()];
                copy_from(root, &one, &excluded, merged, &into, &opts, None).map_err(fail)?;
            }
            Ok(())
        })
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir(&self.bundles) {
            tracing::debug!(path = %self.bundles.display(), error = %err, "removing the bundle directory");
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

/// A COPY's exclusions: the context's `.dockerignore` and the instruction's `--exclude`, kept apart so that an
/// error can say which one hid a source.
struct Exclusions {
    dockerignore: PatternMatcher,
    exclude: PatternMatcher,
}

impl Exclusions {
    fn new(action: &CopyAction) -> Result<Exclusions, WorkerError> {
        let dockerignore = PatternMatcher::new(&action.dockerignore)
            .map_err(|e| WorkerError::failed("invalid .dockerignore pattern", e))?;
        let exclude =
            PatternMatcher::new(&action.excludes).map_err(|e| WorkerError::failed("invalid exclude pattern", e))?;
        Ok(Exclusions { dockerignore, exclude })
    }

    fn excluded(&self, p: &str) -> bool {
        self.dockerignore.matches_or_parent_matches(p).unwrap_or(false)
            || self.exclude.matches_or_parent_matches(p).unwrap_or(false)
    }

    /// The error for a failed copy; a source hidden by exclusions says by which.
    fn explain(&self, action: &CopyAction, e: crate::copy::CopyError) -> WorkerError {
        use rbuild_cache::contenthash::ContentHashError;
        if let crate::copy::CopyError::Select(ContentHashError::Excluded { name }) = &e {
            let rel = rbuild_cache::contenthash::clean_clamped(name).to_string_lossy().into_owned();
            let by = if self.dockerignore.matches_or_parent_matches(&rel).unwrap_or(false) {
                ".dockerignore"
            } else {
                "--exclude"
            };
            return WorkerError::failed(
                copy_context(action),
                format!("source {name:?} not found: it was excluded by {by}"),
            );
        }
        WorkerError::failed(copy_context(action), e)
    }
}

/// For `COPY --parents`: the part of a matched path that is kept. A `/./` in the source marks where the kept part
/// starts (`src/./a/b` keeps `a/b`); otherwise the whole path is kept.
fn parents_rel(source: &str, matched: &Path) -> PathBuf {
    let Some(i) = source.find("/./") else { return matched.to_path_buf() };
    let pivot = rbuild_cache::contenthash::clean_clamped(&source[..i]);
    matched.strip_prefix(&pivot).map(Path::to_path_buf).unwrap_or_else(|_| matched.to_path_buf())
}

/// What identifies a context copy's selection: the same key for the hash and for the copy of one step.
fn walk_key(root: &Path, a: &CopyAction) -> String {
    let mut key = root.to_string_lossy().into_owned();
    for part in [&a.sources, &a.excludes, &a.dockerignore] {
        key.push('\0');
        key.push_str(&part.join("\n"));
    }
    key
}

fn copy_context(a: &CopyAction) -> String {
    format!("copying {} to {}", a.sources.join(" "), a.dest)
}

/// Creates `path` (and missing parents) in `root` without following symlinks out of it.
fn mkdir_in_root(root: &Path, path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), WorkerError> {
    let mut cur = root.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(WorkerError::failed(format!("creating {path}"), "the path climbs above /"));
        }
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                let resolved =
                    rbuild_cache::contenthash::resolve_in_root(root, cur.strip_prefix(root).unwrap_or(&cur), true)
                        .map_err(|e| WorkerError::failed(format!("creating {path}"), e))?;
                if resolved.is_dir() {
                    cur = resolved;
                    continue;
                }
                return Err(WorkerError::failed(
                    format!("creating {path}"),
                    format!("{} is not a directory", cur.display()),
                ));
            }
            Ok(_) => {
                return Err(WorkerError::failed(
                    format!("creating {path}"),
                    format!("{part} exists and is not a directory"),
                ));
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(|e| WorkerError::failed(format!("creating {path}"), e))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(mode))
                    .map_err(|e| WorkerError::failed(format!("creating {path}"), e))?;
                if let Some((uid, gid)) = owner {
                    chown(&cur, Some(uid), Some(gid))
                        .map_err(|e| WorkerError::failed(format!("creating {path}"), e))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a file at `path` in `root` (parents created 0755 and owned by `owner`), replacing a non-directory.
fn mkfile_in_root(
    root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), WorkerError> {
    let what = || format!("writing {path}");
    let (parent, name) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, n)) if !n.is_empty() && n != "." && n != ".." => (p, n),
        _ => return Err(WorkerError::failed(what(), "the path names no file")),
    };
    mkdir_in_root(root, if parent.is_empty() { "/" } else { parent }, 0o755, owner)?;
    let dir = rbuild_cache::contenthash::resolve_in_root(root, Path::new(parent.trim_start_matches('/')), true)
        .map_err(|e| WorkerError::failed(what(), e))?;
    let target = dir.join(name);
    if let Ok(m) = fs::symlink_metadata(&target) {
        if m.is_dir() {
            return Err(WorkerError::failed(what(), "a directory is in the way"));
        }
        fs::remove_file(&target).map_err(|e| WorkerError::failed(what(), e))?;
    }
    fs::write(&target, data).map_err(|e| WorkerError::failed(what(), e))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(|e| WorkerError::failed(what(), e))?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    chown(&target, Some(uid), Some(gid)).map_err(|e| WorkerError::failed(what(), e))?;
    Ok(())
}

impl Worker for LocalWorker {
    fn cancel(&self) {
        let left = self.canceller.cancel(CANCEL_TIMEOUT);
        if left > 0 {
            tracing::warn!(left, "containers still running after cancelling the build");
        }
    }

    fn source(&self, op: &Op) -> Result<Output, WorkerError> {
        match op {
            Op::Scratch => Ok(Output::RootFs(vec![])),
            Op::Context { name } if name == "context" => Ok(Output::Dir(self.context.clone())),
            Op::Context { name } => match self.named_contexts.get(name) {
                Some(dir) => Ok(Output::Dir(dir.clone())),
                None => Err(WorkerError::failed(
                    format!("loading the build context {name:?}"),
                    std::io::Error::other("no --build-context of that name was given"),
                )),
            },
            Op::Image { digest, .. } => self.image_rootfs(digest),
            Op::Http { url, checksum, filename } => {
                let dir =
                    self.store.tmp_dir("http").map_err(|e| WorkerError::failed("creating a work directory", e))?;
                crate::remote::fetch_http(url, checksum.as_deref(), filename, &dir)
                    .map_err(|e| WorkerError::failed(format!("ADD {url}"), e))?;
                Ok(Output::Dir(dir))
            }
            Op::Git { remote, reference, keep_git_dir } => {
                let dir = self.store.tmp_dir("git").map_err(|e| WorkerError::failed("creating a work directory", e))?;
                crate::remote::clone_git(remote, reference, *keep_git_dir, &dir.join("repo"))
                    .map_err(|e| WorkerError::failed(format!("ADD {remote}"), e))?;
                Ok(Output::Dir(dir.join("repo")))
            }
            Op::Exec(_) | Op::File(_) => Err(WorkerError::failed("source", "not a source op")),
        }
    }

    fn content_digest(&self, input: &Output, action: &CopyAction) -> Result<Digest, WorkerError> {
        self.materialize(std::slice::from_ref(input))?;
        let Output::Dir(root) = input else {
            // A stage's files (COPY --from, RUN --mount=from= after that stage re-ran): hashed in a view of its
            // merged tree, with no stat cache (that one is the build context's).
            let exclusions = Exclusions::new(action)?;
            let excluded = |p: &str| exclusions.excluded(p);
            let sel = Selection { sources: action.sources.clone(), follow_symlinks: true };
            return self.with_view(input, |view| {
                let root = Root::open(view).map_err(|e| WorkerError::failed("opening a stage's files to hash", e))?;
                rbuild_cache::contenthash::content_digest(&root, &sel, &excluded, None)
                    .map_err(|e| exclusions.explain(action, e.into()))
            });
        };
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let sel = Selection { sources: action.sources.clone(), follow_symlinks: true };
        let mut owned = None;
        let src = self.open_dir_input(root, action, &mut owned)?;
        let hashed = rbuild_cache::contenthash::hash_selection(src, &sel, &excluded, Some(&self.stat_cache))
            .map_err(|e| exclusions.explain(action, e.into()))?;
        if let Ok(mut walks) = self.walks.lock() {
            walks.insert(walk_key(root, action), hashed.fingerprint);
        }
        Ok(hashed.digest)
    }

    fn content_files(&self, input: &Output, action: &CopyAction) -> Result<Vec<(String, Digest)>, WorkerError> {
        let Output::Dir(root) = input else { return Ok(Vec::new()) };
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let sel = Selection { sources: action.sources.clone(), follow_symlinks: true };
        let mut owned = None;
        let src = self.open_dir_input(root, action, &mut owned)?;
        rbuild_cache::contenthash::content_files(src, &sel, &excluded, Some(&self.stat_cache))
            .map(|(_, files)| files)
            .map_err(|e| exclusions.explain(action, e.into()))
    }

    fn exec(&self, op: &ExecOp, inputs: &[Output], log: &mut dyn FnMut(&str)) -> Result<Output, WorkerError> {
        self.check_cancelled()?;
        self.materialize(inputs)?;
        if let Some(fetcher) = &self.fetcher {
            for m in &op.mounts {
                if let rbuild_solver::ExecMount::Cache { id, .. } = m {
                    fetcher
                        .restore_cache_mount(id)
                        .map_err(|e| WorkerError::failed(format!("restoring cache mount {id:?}"), e))?;
                }
            }
        }
        let layers = inputs.first().map(|o| o.layers().to_vec()).unwrap_or_default();
        let command = op.args.join(" ");
        let emulation = self.emulation_for(op)?;
        let mut exit = None;
        let out = self.on_overlay(&layers, "run", |merged| {
            let user =
                resolve_user(merged, &op.user).map_err(|e| WorkerError::failed(format!("USER {}", op.user), e))?;
            if fs::symlink_metadata(merged.join(op.cwd.trim_start_matches('/'))).is_err() {
                mkdir_in_root(merged, &op.cwd, 0o755, Some((user.uid, user.gid)))?;
            }
            let mounts = prepare_with(&self.store, &self.mount_sources, &op.mounts, inputs, self.snapshotter)
                .map_err(|e| WorkerError::failed("preparing the step's mounts", e))?;
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
            let result =
                self.runtime.run(&spec, log).map_err(|e| WorkerError::failed(format!("running {command:?}"), e));
            drop(spec);
            drop(mounts);
            drop(stack);
            let result = result?;
            self.check_cancelled()?;
            if result.exit_code != 0 {
                let mut tail = result.tail;
                if let (Emulation::Inject(emulator), Some(platform)) = (&emulation, &op.platform) {
                    tail.extend(crate::emulation::child_exec_hint(&tail, emulator, platform));
                }
                exit = Some((result.exit_code, tail));
                return Err(WorkerError::failed("run", "non-zero exit"));
            }
            Ok(())
        });
        match (out, exit) {
            (_, Some((code, tail))) => Err(WorkerError::ExitCode { command, code, tail }),
            (r, None) => r,
        }
    }

    fn file(&self, op: &FileOp, inputs: &[Output]) -> Result<Output, WorkerError> {
        self.check_cancelled()?;
        self.materialize(inputs)?;
        let layers = op.dest.and_then(|i| inputs.get(i)).map(|o| o.layers().to_vec()).unwrap_or_default();
        self.on_overlay(&layers, "file", |merged| {
            for action in &op.actions {
                match action {
                    FileAction::Copy(c) => {
                        let src =
                            inputs.get(c.src).ok_or_else(|| WorkerError::failed("copy", "missing source input"))?;
                        self.copy_into(merged, c, src)?;
                    }
                    FileAction::Mkdir { path, mode, owner } => {
                        let owner = match owner {
                            Some(spec) => {
                                let u = resolve_user(merged, spec)
                                    .map_err(|e| WorkerError::failed(format!("WORKDIR {path}: USER {spec}"), e))?;
                                Some((u.uid, u.gid))
                            }
                            None => None,
                        };
                        mkdir_in_root(merged, path, *mode, owner)?;
                    }
                    FileAction::MkFile { path, data, mode, owner } => {
                        let owner = match owner {
                            Some(spec) => {
                                let u = resolve_user(merged, spec)
                                    .map_err(|e| WorkerError::failed(format!("--chown={spec}"), e))?;
                                Some((u.uid, u.gid))
                            }
                            None => None,
                        };
                        mkfile_in_root(merged, path, data.as_bytes(), *mode, owner)?;
                    }
                }
            }
            Ok(())
        })
    }
}
