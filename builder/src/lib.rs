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
mod ignore;
pub mod index_outputs;
mod network;
pub mod outputs;
mod platforms;
pub mod provenance;
pub mod report;
pub mod request;
mod resolve;
pub mod sbom;
mod security;
mod store;
mod text;

pub use cache::{CacheMode, CacheSource, CacheTarget};
pub use error::{BuildError, StepFailure};
pub use network::apply_network;
pub use outputs::Pushed;
pub use rbuild_types::error_chain;
pub use report::{Reporter, Silent};
pub use request::{BuildRequest, Dockerfile, Entitlements, MAX_INPUT_FILE, NetworkMode, Output, Provenance};
pub use store::{choose_snapshotter, open_store};
pub use text::human_size;
// What a caller needs to fill a request in, without depending on the executor itself.
pub use rbuild_executor::cancel::Canceller;
pub use rbuild_executor::mounts::{MountSources, SecretValue};
/// `git` and http fetches with their checks, for contexts that come from a URL.
pub use rbuild_executor::remote;
pub use rbuild_executor::runtime::RuntimeKind;
pub use rbuild_executor::runtime::options as container;
pub use rbuild_executor::snapshotter::Snapshotter;
/// A step's failure, typed: its kind, and the executor's error behind it (see [`StepFailure`]).
pub use rbuild_executor::worker::ExecError;
pub use rbuild_solver::FailureKind;

use anyhow::Context as _;
use rbuild_cache::{ImageRecord, LockMode, Store};
use rbuild_executor::worker::LocalWorker;
use rbuild_frontend::{ConvertError, ConvertOptions};
use rbuild_image::export::ArchiveKind;
use rbuild_image::registry::{RegistryClient, RegistryOptions};
use rbuild_solver::{Op, SolveOptions, WorkerError, solve};
use rbuild_types::Digest;
use rbuild_types::oci::{Platform, to_canonical_json};
use std::path::PathBuf;
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
            return Err(anyhow::anyhow!(
                "--network host needs the network.host entitlement; {}",
                network::NETWORK_HOST_HINT
            )
            .into());
        }

        let started = chrono::Utc::now();
        let platforms = if req.platforms.is_empty() { vec![Platform::host()] } else { req.platforms.clone() };
        index_outputs::check(&req.outputs, platforms.len())?;
        let store = Arc::new(self.open_store(reporter.as_ref())?);
        let client = Arc::new(RegistryClient::new(self.registry.clone()));
        let excludes = ignore::ignore_patterns(context, dockerfile.path.as_deref())?;
        let remote = cache::open(&store, &client, &req.cache_from, reporter.as_ref()).await;
        let source = resolve::Source { store: &store, client: &client, pull: req.pull, reporter: reporter.as_ref() };
        let convert_error = |error: ConvertError| BuildError::Convert { dockerfile: dockerfile.clone(), error };
        // One plan per target platform; base images are resolved once per platform that uses them.
        let mut resolved = resolve::Resolved::with_names(resolve::named_contexts(&req));
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
            let mut plan = resolve::plan(&ast, opts, &source, &mut resolved).await.map_err(convert_error)?;
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
        // Remote caches know steps by what any machine calls them: the Dockerfile's name (not its path), the target.
        if req.explain_cache || !req.cache_to.is_empty() {
            solve_opts.source_scope =
                Some(format!("{}\n{}", dockerfile.name, req.target.as_deref().unwrap_or_default()));
        }
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
            context_excludes: ignore::ignore_patterns(&req.context, dockerfile.path.as_deref())?,
            named_contexts: req.named_contexts.keys().cloned().collect(),
        };
        let source = resolve::Source { store: &store, client: &client, pull: req.pull, reporter: reporter.as_ref() };
        let mut resolved = resolve::Resolved::with_names(resolve::named_contexts(req));
        let mut wanted: Vec<(String, Platform)> = rbuild_frontend::image_references(&ast, &opts, true)
            .into_iter()
            .map(|r| (r, opts.platform.clone()))
            .collect();
        for _ in 0..resolve::MAX_RESOLVE_ROUNDS {
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
