//! The remote cache in a build (`--cache-from`, `--cache-to`): which sources the solver consults after the local
//! store, which results a build exports, and when lazily hit layers must be fetched.
//!
//! Sources are searched in the order given: for each step, the local store first, then the first source, then the
//! second, and so on; the first that has the step's key answers. An unreadable source is a warning and the build
//! goes on without it; a failed export fails the build unless the target says `ignore-error=true`.

use crate::report::Reporter;
use crate::request::Output;
use rbuild_cache::Store;
use rbuild_cache::remote::{CacheIndex, INLINE_CONFIG_FIELD, IndexEntry, Limits};
use rbuild_image::layer::Compression;
use rbuild_image::local::layer_blob;
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_image::remote_cache::{CacheLocation, ExportEntry, LayeredCache, LazyLayers, LoadedSource};
use rbuild_solver::{Graph, Op, Solved, VertexId};
use rbuild_types::oci::ImageConfig;
use std::sync::Arc;

/// `--cache-from`: a cache to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSource {
    pub location: CacheLocation,
}

/// Which results an export holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps of the final image only.
    #[default]
    Min,
    /// Every step of every stage that ran.
    Max,
}

/// `--cache-to`: where to write the build's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTarget {
    /// A registry ref or a directory; `None` for `type=inline` (the index goes into the image config).
    pub location: Option<CacheLocation>,
    pub mode: CacheMode,
    /// A failed export is a warning instead of an error.
    pub ignore_error: bool,
    pub limits: Limits,
    pub compression: Compression,
    /// `cache-mounts=true`: also export `RUN --mount=type=cache` contents, each up to this many bytes compressed.
    pub cache_mounts: Option<u64>,
}

/// The caches of one build: the solver's layered lookup and the layers it may have to fetch.
pub(crate) struct Remote {
    /// How many sources were given.
    pub sources: usize,
    pub lazy: Arc<LazyLayers>,
    pub cache: Arc<LayeredCache>,
}

/// Reads every source's index (concurrently; they are searched in the order given).
pub(crate) async fn open(
    store: &Arc<Store>,
    client: &Arc<RegistryClient>,
    sources: &[CacheSource],
    reporter: &dyn Reporter,
) -> Remote {
    let loads = sources.iter().map(|s| rbuild_image::remote_cache::load(client, &s.location));
    let mut loaded: Vec<LoadedSource> = Vec::new();
    for (source, result) in sources.iter().zip(futures::future::join_all(loads).await) {
        match result {
            Ok(l) => {
                reporter.message(&format!(
                    "importing cache from {}: {} entries",
                    source.location,
                    l.index.entries.len()
                ));
                loaded.push(l);
            }
            Err(e) => reporter.warning(&format!(
                "warning: cache source {} cannot be read, building without it: {}",
                source.location,
                crate::error_chain(&e)
            )),
        }
    }
    let lazy = Arc::new(LazyLayers::new(store.clone(), client.clone()));
    let cache = Arc::new(LayeredCache::new(store.clone(), loaded, lazy.clone()));
    Remote { sources: sources.len(), lazy, cache }
}

/// The results `mode` exports: the steps whose layers make up the final images (`Min`; one root per platform), or
/// every step that was solved (`Max`).
pub(crate) fn entries(
    graph: &Graph,
    solved: &[Option<Solved>],
    roots: &[VertexId],
    mode: CacheMode,
) -> Vec<ExportEntry> {
    let wanted: Vec<VertexId> = match mode {
        CacheMode::Max => (0..graph.vertices.len()).collect(),
        CacheMode::Min => {
            // Down the chain of root filesystems each target is built on.
            let mut chain = Vec::new();
            for &root in roots {
                let mut v = Some(root);
                while let Some(id) = v {
                    if chain.contains(&id) {
                        break;
                    }
                    chain.push(id);
                    let vertex = &graph.vertices[id];
                    v = match &vertex.op {
                        Op::Exec(_) => vertex.inputs.first().copied(),
                        Op::File(f) => f.dest.and_then(|d| vertex.inputs.get(d).copied()),
                        _ => None,
                    };
                }
            }
            chain
        }
    };
    wanted
        .into_iter()
        .filter(|&v| matches!(graph.vertices[v].op, Op::Exec(_) | Op::File(_)))
        .filter_map(|v| solved.get(v)?.as_ref())
        .flat_map(|s| {
            let entry = |key: &rbuild_types::Digest, step| ExportEntry {
                key: key.clone(),
                layers: s.output.layers().to_vec(),
                created: s.created,
                step,
            };
            std::iter::once(entry(&s.key, s.record.clone())).chain(s.selection_key.as_ref().map(|k| entry(k, None)))
        })
        .collect()
}

/// `type=inline`: the final image's own entries, with its own layers as their blobs, in its config.
pub(crate) fn inline(
    config: &mut ImageConfig,
    store: &Store,
    entries: &[ExportEntry],
    compression: Compression,
    now: i64,
) -> anyhow::Result<()> {
    let mut index = CacheIndex::new();
    for e in entries {
        for l in &e.layers {
            if !index.blobs.contains_key(l) {
                index.blobs.insert(l.clone(), layer_blob(store, l, compression)?);
            }
        }
        index.entries.insert(e.key.clone(), IndexEntry { layers: e.layers.clone(), created: e.created, exported: now });
    }
    config.extra.insert(INLINE_CONFIG_FIELD.into(), serde_json::to_value(&index)?);
    Ok(())
}

/// Fetches the lazily hit layers of the final image that an output needs the bytes of. A push to the registry a
/// layer's cache is on needs none (the blob is mounted); the store on its own, an archive or a filesystem do.
pub(crate) async fn prepare_outputs(
    remote: &Remote,
    store: &Store,
    layers: &[rbuild_types::Digest],
    outputs: &[Output],
) -> anyhow::Result<()> {
    for l in layers {
        let Some((blob, from)) = remote.lazy.pending(l) else { continue };
        let mountable = |names: &[String]| {
            names.iter().all(|n| match (ImageRef::parse(n), &from) {
                (Ok(r), CacheLocation::Registry(c)) => r.registry == c.registry,
                _ => false,
            })
        };
        let only_pushes = !outputs.is_empty()
            && outputs.iter().all(|o| {
                matches!(o, Output::Image { names, push: true, compression: Compression::Gzip { .. } } if mountable(names))
            });
        if only_pushes {
            // Known, not here: the push finds the blob's descriptor and mounts it from the cache's repository.
            store.add_layer_blob(l, blob)?;
        } else {
            remote.lazy.fetch_async(l).await?;
        }
    }
    Ok(())
}

/// Writes every `--cache-to` that has a location (inline caches were written with the image).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn export_all(
    remote: &Remote,
    store: &Store,
    client: &RegistryClient,
    targets: &[CacheTarget],
    graph: &Graph,
    solved: &[Option<Solved>],
    roots: &[VertexId],
    reporter: &dyn Reporter,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    for t in targets {
        let Some(location) = &t.location else { continue };
        let entries = entries(graph, solved, roots, t.mode);
        let started = std::time::Instant::now();
        let mounts = match t.cache_mounts {
            Some(max) => pack_mounts(store, graph, t.compression, max, reporter)?,
            None => Default::default(),
        };
        let result = rbuild_image::remote_cache::export(
            client,
            store,
            &remote.lazy,
            location,
            &entries,
            &mounts,
            t.compression,
            t.limits,
            now,
        )
        .await;
        match result {
            Ok(r) => reporter.message(&format!(
                "exported cache to {location}: {} entries ({} now), {} cache mounts, {} layers uploaded ({} bytes), {} \
                 reused, in {:.2}s",
                r.exported,
                r.entries,
                mounts.len(),
                r.uploaded,
                r.uploaded_bytes,
                r.reused,
                started.elapsed().as_secs_f64()
            )),
            Err(e) if t.ignore_error => reporter.warning(&format!(
                "warning: exporting the cache to {location} failed (ignore-error=true): {}",
                crate::error_chain(&e)
            )),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("exporting the cache to {location}"))),
        }
    }
    let (bytes, layers) = remote.lazy.downloaded();
    if remote.sources == 0 {
        return Ok(());
    }
    reporter.message(&format!(
        "remote cache: {} hits, {layers} layers ({bytes} bytes) downloaded",
        remote.cache.remote_hits()
    ));
    Ok(())
}

/// The contents of every cache mount the build's steps use, packed as blobs (those over `max` bytes are left out
/// with a warning).
fn pack_mounts(
    store: &Store,
    graph: &Graph,
    compression: Compression,
    max: u64,
    reporter: &dyn Reporter,
) -> anyhow::Result<std::collections::BTreeMap<String, rbuild_cache::LayerBlob>> {
    let ids: std::collections::BTreeSet<&str> = graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(e.mounts.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|m| match m {
            rbuild_solver::ExecMount::Cache { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for id in ids {
        match rbuild_image::remote_cache::pack_cache_mount(store, id, compression, max)? {
            Some(blob) => {
                out.insert(id.to_string(), blob);
            }
            None if rbuild_image::remote_cache::cache_mount_data(store, id).is_dir() => reporter.warning(&format!(
                "warning: cache mount {id:?} is larger than cache-mounts-max-size={max} when packed: not exported"
            )),
            None => {}
        }
    }
    Ok(out)
}
