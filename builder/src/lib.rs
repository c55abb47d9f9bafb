//! The build library: a [`BuildRequest`] in, an image in the store and its outputs out, progress to a
//! [`Reporter`].
//!
//! This is the one place that knows the order of a build: read the Dockerfile and `.dockerignore`, resolve base
//! images (concurrently, before conversion, so that the frontend stays pure), convert, apply the request's
//! network and container settings to the plan, solve, write the image config, tag, send it to its outputs, and
//! collect the store when it grew past its limit. The CLI maps flags to a request and renders what comes back;
//! remote cache, multi-platform builds and rootless operation extend the request, not the CLI.
//!
//! Arrows: this crate uses every pipeline crate (frontend, solver, executor, cache, image); only the CLI uses it.

pub mod cache;
pub mod error;
pub mod index_outputs;
pub mod outputs;
mod platforms;
pub mod provenance;
pub mod report;
pub mod request;
mod resolve;
pub mod sbom;
mod security;

pub use cache::{CacheMode, CacheSource, CacheTarget};
pub use error::{BuildError, StepFailure};
pub use outputs::Pushed;
pub use report::{Reporter, Silent};
pub use request::{BuildRequest, Dockerfile, Entitlements, MAX_INPUT_FILE, NetworkMode, Output, Provenance};
// What a caller needs to fill a request in, without depending on the executor itself.
pub use rbuild_executor::cancel::Canceller;
pub use rbuild_executor::mounts::{MountSources, SecretValue};
/// `git` and http fetches with their checks, for contexts that come from a URL.
pub use rbuild_executor::remote;
pub use rbuild_executor::runtime::RuntimeKind;
pub use rbuild_executor::runtime::options as container;
pub use rbuild_executor::snapshotter::Snapshotter;

use anyhow::Context as _;
use rbuild_cache::{ImageRecord, LockMode, Store};
use rbuild_executor::worker::LocalWorker;
use rbuild_frontend::{BuildPlan, ConvertError, ConvertOptions, ErrorKind, convert};
use rbuild_image::export::ArchiveKind;
use rbuild_image::registry::{RegistryClient, RegistryOptions};
use rbuild_solver::{Network, Op, SolveOptions, WorkerError, solve};
use rbuild_types::Digest;
use rbuild_types::oci::{Platform, to_canonical_json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builds images into one store, with one registry configuration.
#[derive(Debug, Clone)]
pub struct Builder {
    /// The store directory (absolute: overlay mounts and runc bundles need absolute paths into it).
    pub root: PathBuf,
    pub registry: RegistryOptions,
    /// Collect the store after a build that ran steps when it grows past this many bytes.
    pub gc_keep_storage: Option<u64>,
    /// How root filesystems are assembled; `None` is auto (the store's recorded or detected choice).
    pub snapshotter: Option<Snapshotter>,
    /// The OCI runtime RUN steps run in (runc or crun).
    pub runtime: RuntimeKind,
}

/// What a successful build made.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The image ID: the digest of its config (of the first platform's image, in a multi-platform build).
    pub image: Digest,
    /// A multi-platform build's images (their config digests), one per platform in the order asked; empty for
    /// one platform.
    pub images: Vec<Digest>,
    /// A multi-platform build's index digest, when an output or the request's `index_digest` needed it.
    pub index: Option<Digest>,
    /// The names it was pushed under, with their manifest digests.
    pub pushed: Vec<Pushed>,
    /// Whether any step ran (rather than every one coming from the cache).
    pub ran_steps: bool,
}

/// How many times conversion may ask for base images that could not be known before it (see [`resolve`]).
const MAX_RESOLVE_ROUNDS: usize = 8;

const NETWORK_HOST_HINT: &str = "pass --allow network.host to rbuild build to let steps use the host's network";

impl Builder {
    /// Runs one build. `canceller` stops it: no new step starts and running containers are killed (the caller
    /// cancels it on Ctrl-C).
    pub async fn build(
        &self,
        req: BuildRequest,
        reporter: Arc<dyn Reporter>,
        canceller: Canceller,
    ) -> Result<BuildResult, BuildError> {
        let context = &req.context;
        if !context.is_dir() {
            return Err(anyhow::anyhow!("build context {} is not a directory", context.display()).into());
        }
        let dockerfile = &req.dockerfile;
        let ast = rbuild_frontend::parser::parse(&dockerfile.text)
            .map_err(|error| BuildError::Parse { dockerfile: dockerfile.clone(), error })?;
        for w in &ast.warnings {
            reporter.warning(&format!("warning: {}:{}: {}", dockerfile.name, w.line, w.message));
        }
        if req.network == NetworkMode::Host && !req.entitlements.network_host {
            return Err(
                anyhow::anyhow!("--network host needs the network.host entitlement; {NETWORK_HOST_HINT}").into()
            );
        }

        let started = chrono::Utc::now();
        let platforms = if req.platforms.is_empty() { vec![Platform::host()] } else { req.platforms.clone() };
        index_outputs::check(&req.outputs, platforms.len())?;
        let store = Arc::new(self.open_store(reporter.as_ref())?);
        let client = Arc::new(RegistryClient::new(self.registry.clone()));
        let excludes = ignore_patterns(context, dockerfile.path.as_deref())?;
        let remote = cache::open(&store, &client, &req.cache_from, reporter.as_ref()).await;
        let source = resolve::Source { store: &store, client: &client, pull: req.pull, reporter: reporter.as_ref() };
        let convert_error = |error: ConvertError| BuildError::Convert { dockerfile: dockerfile.clone(), error };
        // One plan per target platform; base images are resolved once per platform that uses them.
        let mut resolved = resolve::Resolved::with_names(named_contexts(&req));
        let mut plans = Vec::with_capacity(platforms.len());
        let mut warned = std::collections::BTreeSet::new();
        let options: Vec<ConvertOptions> = platforms
            .iter()
            .map(|platform| ConvertOptions {
                build_args: req.build_args.clone(),
                target: req.target.clone(),
                platform: platform.clone(),
                build_platform: Platform::host(),
                no_cache: req.no_cache.clone(),
                context_excludes: excludes.clone(),
                named_contexts: req.named_contexts.keys().cloned().collect(),
            })
            .collect();
        // Every platform's base images at once (the plans below find any the frontend could not name up front).
        let wanted = options.iter().flat_map(|o| {
            rbuild_frontend::image_references(&ast, o, false).into_iter().map(|r| (r, o.platform.clone()))
        });
        resolved.resolve_all(wanted.collect::<Vec<_>>(), &source).await;
        for opts in &options {
            let mut plan = plan(&ast, opts, &source, &mut resolved).await.map_err(convert_error)?;
            let findings =
                rbuild_frontend::lint::report::findings_text(&dockerfile.name, &dockerfile.text, &plan.checks);
            for w in plan.warnings.iter().chain(Some(&findings).filter(|f| !f.is_empty())) {
                if warned.insert(w.clone()) {
                    reporter.warning(w);
                }
            }
            apply_network(&mut plan, req.network, &req.entitlements).map_err(convert_error)?;
            security::check_security(&plan, &req.entitlements).map_err(convert_error)?;
            // `--add-host`, `--ulimit` and `--shm-size` change what a RUN can produce: they are part of its key.
            let settings = req.container.key_settings();
            for vertex in &mut plan.graph.vertices {
                if let Op::Exec(exec) = &mut vertex.op {
                    exec.settings.clone_from(&settings);
                }
            }
            plans.push(plan);
        }

        let context_abs = std::fs::canonicalize(context).with_context(|| format!("resolving {}", context.display()))?;
        let epoch = req.source_date_epoch;
        let snapshotter = choose_snapshotter(&store, self.snapshotter)?;
        let worker = Arc::new(
            LocalWorker::new(store.clone(), context_abs, epoch)
                .map_err(anyhow::Error::from)?
                .with_runtime(self.runtime)
                .map_err(anyhow::Error::from)?
                .with_snapshotter(snapshotter)
                .with_mount_sources(req.mount_sources)
                .with_container_options(req.container.clone())
                .with_canceller(canceller.clone())
                .with_named_contexts(req.named_contexts.clone())
                .with_stat_cache_saved(!req.temporary_context)
                .with_layer_fetcher(remote.lazy.clone()),
        );
        let merged = platforms::merge(&mut plans, &platforms);
        let graph = Arc::new(merged.graph);
        let mut solve_opts = SolveOptions::default();
        if let Some(j) = req.jobs {
            solve_opts.jobs = j.max(1);
        }
        // Steps are remembered per Dockerfile and target, so --explain-cache compares a step with its own last run.
        let shown = match &dockerfile.path {
            Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string(),
            None => format!("{}/{}", context.display(), dockerfile.name),
        };
        solve_opts.record_scope = Some(format!("{shown}\n{}", req.target.as_deref().unwrap_or_default()));
        solve_opts.explain = req.explain_cache;
        reporter.plan(&graph, &merged.targets);
        let progress: Arc<dyn rbuild_solver::Progress> = reporter.clone();
        let result =
            solve(graph.clone(), &merged.targets, worker.clone(), remote.cache.clone(), progress, solve_opts).await;
        reporter.finish();
        worker.finish();
        let solved = result.map_err(|e| {
            let tail = match e.source.as_ref() {
                WorkerError::ExitCode { tail, .. } => tail.clone(),
                _ => Vec::new(),
            };
            BuildError::Step(Box::new(StepFailure {
                dockerfile: dockerfile.clone(),
                location: merged.locations.get(&e.vertex).cloned(),
                name: e.name,
                tail,
                error: e.source,
                interrupted: canceller.is_cancelled(),
            }))
        })?;
        if canceller.is_cancelled() {
            return Err(BuildError::Interrupted);
        }

        let now = chrono::Utc::now().timestamp();
        let mut images = Vec::with_capacity(plans.len());
        for (i, (plan, map)) in plans.iter().zip(&merged.maps).enumerate() {
            let own = platforms::split(&solved, map);
            let mut config = rbuild_frontend::history::image_config(plan, &own, now, epoch);
            if !req.labels.is_empty() {
                config.config.labels.get_or_insert_with(Default::default).extend(req.labels.clone());
            }
            cache::prepare_outputs(&remote, &store, &config.rootfs.diff_ids, &req.outputs).await?;
            if let Some(t) = req.cache_to.iter().find(|t| t.location.is_none()) {
                let entries = cache::entries(&graph, &solved, &[merged.targets[i]], t.mode);
                cache::inline(&mut config, &store, &entries, t.compression, now)?;
            }
            let image = store.write_blob(&to_canonical_json(&config)).map_err(anyhow::Error::from)?;
            reporter.message(&format!("writing image {image}"));
            images.push(image);
        }
        let image = images[0].clone();
        let multi = if images.len() > 1 { images.clone() } else { Vec::new() };
        let attest = match req.provenance {
            request::Provenance::Off => None,
            request::Provenance::Default => (!multi.is_empty()).then_some(provenance::ProvenanceMode::Min),
            request::Provenance::On(mode) => Some(mode),
        };
        let docker_archive = req.outputs.iter().any(|o| matches!(o, Output::Archive { kind: ArchiveKind::Docker, .. }));
        let attest = match attest {
            Some(_) if multi.is_empty() && docker_archive => {
                reporter
                    .warning("warning: a docker archive holds no attestations; building without provenance or SBOM");
                None
            }
            other => other,
        };
        let finished = chrono::Utc::now();
        let invocation =
            Digest::of(format!("{}-{}-{}", std::process::id(), started, finished).as_bytes()).hex()[..26].to_string();
        let manifest_of = |config: &Digest| resolved.manifest_of(config).cloned();
        let mut attestations: Vec<Vec<rbuild_image::index::Attestation>> = vec![Vec::new(); plans.len()];
        if let Some(mode) = attest {
            for (i, list) in attestations.iter_mut().enumerate() {
                let vertices = graph.needed(&[merged.targets[i]]);
                list.push(provenance::provenance(&provenance::Facts {
                    mode,
                    dockerfile: &dockerfile.name,
                    target: req.target.as_deref(),
                    platform: &platforms[i],
                    build_args: &req.build_args,
                    graph: &graph,
                    vertices: &vertices,
                    manifest_of: &manifest_of,
                    started,
                    finished,
                    invocation: &invocation,
                }));
            }
        }
        if req.sbom && !(multi.is_empty() && docker_archive) {
            for (list, config) in attestations.iter_mut().zip(&images) {
                list.push(sbom::of_image(&store, config, finished)?);
            }
        }
        if attestations.iter().all(Vec::is_empty) {
            attestations.clear();
        }
        for t in &req.tags {
            let record =
                ImageRecord { name: t.to_string(), config: image.clone(), manifest: None, platforms: multi.clone() };
            store.set_tag(&record).map_err(anyhow::Error::from)?;
            reporter.message(&format!("naming to {t}"));
        }
        let (pushed, index) = if multi.is_empty() && attestations.is_empty() {
            let pushed = outputs::finish_annotated(
                &store,
                &client,
                &image,
                &req.outputs,
                req.metadata_file.as_deref(),
                epoch,
                &req.manifest_annotations,
                reporter.as_ref(),
            )
            .await?;
            (pushed, None)
        } else {
            let finished = index_outputs::finish(
                &store,
                &client,
                &images,
                &attestations,
                &req.outputs,
                index_outputs::Wanted {
                    metadata_file: req.metadata_file.as_deref(),
                    index_digest: req.index_digest,
                    annotations: &req.index_annotations,
                },
                epoch,
                reporter.as_ref(),
            )
            .await?;
            // One platform with attestations is an index too, but its image ID is the config's, as buildx's.
            (finished.pushed, finished.index.filter(|_| !multi.is_empty()))
        };
        let exported = cache::export_all(
            &remote,
            &store,
            &client,
            &req.cache_to,
            &graph,
            &solved,
            &merged.targets,
            reporter.as_ref(),
        );
        exported.await?;
        let ran_steps = solved
            .iter()
            .zip(&graph.vertices)
            .any(|(s, v)| s.as_ref().is_some_and(|s| !s.cached) && matches!(v.op, Op::Exec(_) | Op::File(_)));
        if ran_steps {
            // The store must be released first: collection needs it to itself.
            drop(worker);
            drop(remote);
            drop(store);
            self.auto_gc(reporter.as_ref());
        }
        Ok(BuildResult { image, images: multi, index, pushed, ran_steps })
    }

    /// Runs the build checks on every stage (or the target's) without building (`--call check`), for the first
    /// platform asked for: base images are resolved, since the checks read their configs; an error that stops
    /// conversion is in the report, next to the findings made before it.
    pub async fn check(
        &self,
        req: &BuildRequest,
        reporter: Arc<dyn Reporter>,
    ) -> Result<rbuild_frontend::CheckReport, BuildError> {
        let dockerfile = &req.dockerfile;
        let ast = rbuild_frontend::parser::parse(&dockerfile.text)
            .map_err(|error| BuildError::Parse { dockerfile: dockerfile.clone(), error })?;
        let store = self.open_store(reporter.as_ref())?;
        let client = RegistryClient::new(self.registry.clone());
        let opts = ConvertOptions {
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            platform: req.platforms.first().cloned().unwrap_or_else(Platform::host),
            build_platform: Platform::host(),
            no_cache: req.no_cache.clone(),
            context_excludes: ignore_patterns(&req.context, dockerfile.path.as_deref())?,
            named_contexts: req.named_contexts.keys().cloned().collect(),
        };
        let source = resolve::Source { store: &store, client: &client, pull: req.pull, reporter: reporter.as_ref() };
        let mut resolved = resolve::Resolved::with_names(named_contexts(req));
        let mut wanted: Vec<(String, Platform)> = rbuild_frontend::image_references(&ast, &opts, true)
            .into_iter()
            .map(|r| (r, opts.platform.clone()))
            .collect();
        for _ in 0..MAX_RESOLVE_ROUNDS {
            resolved.resolve_all(wanted, &source).await;
            let report = rbuild_frontend::check(&ast, &opts, &resolved);
            wanted = resolved.take_missing();
            if wanted.is_empty() {
                return Ok(report);
            }
        }
        Ok(rbuild_frontend::check(&ast, &opts, &resolved))
    }

    /// Opens the store for a build, reporting containers that dead rbuild processes left running.
    fn open_store(&self, reporter: &dyn Reporter) -> anyhow::Result<Store> {
        let store = open_store(&self.root, LockMode::Shared)?
            .with_context(|| format!("opening the store at {}", self.root.display()))?;
        for r in store.reaped() {
            reporter.warning(&format!("warning: stopped a container left running by a dead rbuild process: {r}"));
        }
        Ok(store)
    }

    /// Collects the store when it is over [`Builder::gc_keep_storage`] and no other process uses it.
    fn auto_gc(&self, reporter: &dyn Reporter) {
        let Some(limit) = self.gc_keep_storage else { return };
        match rbuild_cache::gc::auto_gc(&self.root, limit) {
            Ok(Some(r)) if r.freed > 0 => reporter.message(&format!(
                "gc: store was over {}, reclaimed {}",
                human_size(limit),
                human_size(r.freed)
            )),
            Ok(_) => {}
            Err(e) => reporter.warning(&format!("warning: automatic gc failed: {e:#}")),
        }
    }
}

/// Resolves the base images the build needs, then converts; see [`resolve`] for the rounds.
async fn plan(
    ast: &rbuild_frontend::parser::Ast,
    opts: &ConvertOptions,
    source: &resolve::Source<'_>,
    resolved: &mut resolve::Resolved,
) -> Result<BuildPlan, ConvertError> {
    // Stages with `FROM --platform` ask for their own platform's images; conversion finds those.
    let mut wanted: Vec<(String, Platform)> =
        rbuild_frontend::image_references(ast, opts, false).into_iter().map(|r| (r, opts.platform.clone())).collect();
    for _ in 0..MAX_RESOLVE_ROUNDS {
        resolved.resolve_all(wanted, source).await;
        match convert(ast, opts, resolved) {
            Ok(plan) => return Ok(plan),
            Err(e) => {
                let missing = resolved.take_missing();
                if missing.is_empty() {
                    return Err(e);
                }
                wanted = missing;
            }
        }
    }
    convert(ast, opts, resolved)
}

/// Opens the store at `root` locked as `mode`, first stopping containers that dead rbuild processes left running
/// (`kill -9` during a RUN), so that their mounts can be collected. `None` when `mode` is a try and the store is
/// busy.
pub fn open_store(root: &Path, mode: LockMode) -> anyhow::Result<Option<Store>> {
    // Each runtime keeps its containers in its own state directory in the store (`runc/`, `crun/`).
    let reaper = |dead: &[PathBuf]| {
        let runtimes = RuntimeKind::ALL.into_iter();
        runtimes
            .filter_map(|kind| Some((kind.find().ok()?, root.join(kind.name()))))
            .flat_map(|(program, state)| rbuild_executor::reap::reap_containers(&program, &state, dead))
            .collect()
    };
    Store::open_reaping(root, mode, &reaper).with_context(|| format!("opening the store at {}", root.display()))
}

/// Gives every RUN step that did not choose a network the build's (`--network`), and refuses host networking
/// that the `network.host` entitlement does not allow, naming the first step that asks for it.
pub fn apply_network(plan: &mut BuildPlan, mode: NetworkMode, allowed: &Entitlements) -> Result<(), ConvertError> {
    let build_default = match mode {
        NetworkMode::Default => Network::Default,
        NetworkMode::None => Network::None,
        NetworkMode::Host => Network::Host,
    };
    for (id, vertex) in plan.graph.vertices.iter_mut().enumerate() {
        let Op::Exec(exec) = &mut vertex.op else { continue };
        if exec.network == Network::Default {
            exec.network = build_default;
        } else if exec.network == Network::Host && !allowed.network_host {
            return Err(ConvertError::new(
                ErrorKind::Entitlement,
                "RUN --network=host needs the network.host entitlement",
            )
            .hint(NETWORK_HOST_HINT)
            .located(plan.locations.get(&id).cloned()));
        }
    }
    Ok(())
}

/// The snapshotter builds in this store use: `requested`, else the one recorded for the store, else the first that
/// works here (probed once, in a scratch directory of the store).
pub fn choose_snapshotter(store: &Store, requested: Option<Snapshotter>) -> anyhow::Result<Snapshotter> {
    let scratch = store.tmp_dir("probe").context("creating a directory to probe snapshotters in")?;
    let chosen = rbuild_executor::snapshotter::choose(store.root(), &scratch, requested);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(chosen?)
}

/// How the request's `--build-context` names resolve.
fn named_contexts(req: &BuildRequest) -> resolve::Named {
    resolve::Named { images: req.image_contexts.clone(), dirs: req.named_contexts.keys().cloned().collect() }
}

/// `.dockerignore` patterns: `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's. A file in
/// the context is context content, read beneath it (a `.dockerignore` linking to `/etc/shadow` reads the context's
/// own `etc/shadow`, if any); one outside it was named by whoever ran the build and is read as named.
fn ignore_patterns(context: &Path, dockerfile: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let root = rbuild_cache::confined::Root::open(context)
        .with_context(|| format!("opening the build context {}", context.display()))?;
    let beside = dockerfile.map(|d| PathBuf::from(format!("{}.dockerignore", d.display())));
    for candidate in beside.into_iter().chain([context.join(".dockerignore")]) {
        let read = match candidate.strip_prefix(context) {
            Ok(rel) => root.read_in_root(rel).and_then(|bytes| {
                if bytes.len() as u64 > MAX_INPUT_FILE {
                    Err(std::io::Error::other(format!(
                        ".dockerignore is larger than the limit of {} MiB",
                        MAX_INPUT_FILE >> 20
                    )))
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            }),
            Err(_) => request::read_limited(&candidate, ".dockerignore"),
        };
        match read {
            Ok(text) => return Ok(rbuild_types::patterns::read_ignore_file(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", candidate.display())),
        }
    }
    Ok(Vec::new())
}

/// An error with its causes, one after another: `pulling x: layer y: digest mismatch`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// Sizes as `docker` prints them: decimal units, one decimal.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{n}B") } else { format!("{v:.1}{}", units[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_frontend::instructions::Location;
    use rbuild_solver::{ExecOp, Graph, Vertex};
    use std::collections::BTreeMap;

    fn plan(networks: &[Network]) -> BuildPlan {
        let mut graph = Graph::default();
        let mut locations = BTreeMap::new();
        let base = graph.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
        for (i, network) in networks.iter().enumerate() {
            let exec = ExecOp {
                args: vec!["true".into()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
                network: *network,
                mounts: vec![],
                settings: Vec::new(),
                platform: None,
                hostname: String::new(),
                insecure: false,
            };
            let v = graph.add(Vertex {
                op: Op::Exec(exec),
                inputs: vec![base],
                name: format!("RUN {i}"),
                ignore_cache: false,
            });
            locations.insert(v, Location { start_line: i + 2, end_line: i + 2 });
        }
        BuildPlan {
            graph,
            target: base,
            config: Default::default(),
            history: vec![],
            warnings: vec![],
            checks: vec![],
            locations,
        }
    }

    fn networks(plan: &BuildPlan) -> Vec<Network> {
        plan.graph
            .vertices
            .iter()
            .filter_map(|v| match &v.op {
                Op::Exec(e) => Some(e.network),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn network_mode_fills_in_steps_that_did_not_choose() {
        let granted = Entitlements { network_host: true, ..Entitlements::default() };
        for (mode, want) in [
            (NetworkMode::Default, Network::Default),
            (NetworkMode::None, Network::None),
            (NetworkMode::Host, Network::Host),
        ] {
            let mut p = plan(&[Network::Default, Network::None, Network::Host]);
            apply_network(&mut p, mode, &granted).expect("allowed");
            assert_eq!(networks(&p), [want, Network::None, Network::Host], "{mode:?}");
        }
    }

    #[test]
    fn run_network_host_without_the_entitlement_names_its_line() {
        let mut p = plan(&[Network::Default, Network::Host]);
        let err = apply_network(&mut p, NetworkMode::Default, &Entitlements::default()).expect_err("refused");
        assert_eq!(err.message, "RUN --network=host needs the network.host entitlement");
        assert_eq!(err.location, Some(Location { start_line: 3, end_line: 3 }));
        assert!(err.hint.as_deref().is_some_and(|h| h.contains("--allow network.host")), "{err:?}");
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        let inner = std::io::Error::other("digest mismatch");
        let outer = anyhow::Error::new(inner).context("layer sha256:ab");
        let e: &(dyn std::error::Error + 'static) = outer.as_ref();
        assert_eq!(error_chain(e), "layer sha256:ab: digest mismatch");
    }
}
