//! The remote cache: build results shared between machines through a registry or an OCI layout directory.
//!
//! A cache is one manifest whose config is the [`CacheIndex`] (every key → the diff_ids of its result, and every
//! layer's compressed blob) and whose layers are those blobs, so a registry keeps them alive and a reader finds all
//! of a build's hits with two requests (the manifest, then the index). An inline cache is the same index inside the
//! pushed image's config, its blobs being the image's own layers.
//!
//! Hits are lazy: [`LayeredCache`] answers the solver from the local store first, then from each source in the
//! order given, and a remote hit only records where its layers can be fetched ([`LazyLayers`]). Nothing is
//! downloaded until a step has to run on top of the result, something copies from it, or an output needs its
//! bytes; a push to the same registry mounts the blobs instead (zero bytes down, zero up).

mod export;
mod mounts;

pub use export::{ExportEntry, ExportReport, export};
pub use mounts::{cache_mount_data, pack_cache_mount};

use crate::local::{ImageError, record_source};
use crate::registry::{ImageRef, MAX_DOCUMENT_SIZE, RegistryClient, RegistryError};
use rbuild_cache::remote::{CacheIndex, INLINE_CONFIG_FIELD, MEDIA_CACHE_INDEX};
use rbuild_cache::{LayerBlob, Store};
use rbuild_solver::explain::StepInputs;
use rbuild_solver::{CacheError, CacheRecord, CacheStore, Output};
use rbuild_types::oci::{Descriptor, ImageConfig, Index, Manifest};
use rbuild_types::{Digest, IoError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// A manifest in a registry: a cache manifest, or an image with an inline cache in its config.
    Registry(ImageRef),
    /// An OCI image layout directory (`index.json`, `blobs/sha256/`).
    Layout(PathBuf),
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "{r}"),
            CacheLocation::Layout(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A cache that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteCacheError {
    #[error("cache {location}")]
    Registry {
        location: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("cache {location}")]
    Io {
        location: String,
        #[source]
        source: IoError,
    },
    #[error("cache {location}: {what} is not valid")]
    BadDocument { location: String, what: String },
    #[error("cache {location}")]
    Image {
        location: String,
        #[source]
        source: Box<ImageError>,
    },
}

/// A cache source read at the start of a build.
#[derive(Debug, Clone)]
pub struct LoadedSource {
    pub location: CacheLocation,
    pub index: CacheIndex,
}

/// Reads the index of the cache at `location`. A location with nothing there yet gives an empty index.
pub async fn load(client: &RegistryClient, location: &CacheLocation) -> Result<LoadedSource, RemoteCacheError> {
    let index = match location {
        CacheLocation::Registry(r) => load_with_journals(client, r).await?,
        CacheLocation::Layout(dir) => load_layout(dir)?,
    };
    Ok(LoadedSource { location: location.clone(), index: index.unwrap_or_else(CacheIndex::new) })
}

fn bad(location: &impl std::fmt::Display, what: impl Into<String>) -> RemoteCacheError {
    RemoteCacheError::BadDocument { location: location.to_string(), what: what.into() }
}

/// The index a registry manifest carries (a cache manifest's config, or an image config's inline field), with the
/// manifest's digest.
async fn load_registry(
    client: &RegistryClient,
    r: &ImageRef,
) -> Result<Option<(Digest, CacheIndex)>, RemoteCacheError> {
    let reg = |source| RemoteCacheError::Registry { location: r.to_string(), source: Box::new(source) };
    let Some((digest, bytes)) = client.fetch_document(r).await.map_err(reg)? else { return Ok(None) };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|_| bad(r, "its manifest"))?;
    let config = client.fetch_small_blob(r, &manifest.config, "cache index").await.map_err(reg)?;
    Ok(Some((digest, index_of(r, &manifest, &config)?)))
}

/// The tag prefix of the journals of the cache at `r`: every export to a registry also pushes its own entries
/// under a tag of its own (`<tag>-rbuild-journal-<time>-<id>`), which no other writer ever replaces.
pub(crate) fn journal_prefix(r: &ImageRef) -> Option<String> {
    if r.digest.is_some() {
        return None;
    }
    let tag = r.tag.as_deref().unwrap_or("latest");
    // A tag has at most 128 characters; the time and id take 33 of them.
    let base: String = tag.chars().take(80).collect();
    Some(format!("{base}-rbuild-journal-"))
}

/// The index at `r` with every journal it does not list merged in: what all writers exported, even one whose
/// write of the main tag another writer replaced (see [`export`]). Costs one more request (the tag list), and two
/// per journal not merged yet (only those of exports racing each other, until the next export merges them).
pub(crate) async fn load_with_journals(
    client: &RegistryClient,
    r: &ImageRef,
) -> Result<Option<CacheIndex>, RemoteCacheError> {
    let main = load_registry(client, r).await?.map(|(_, i)| i);
    // A digest-pinned cache has no journals (an image with an inline cache has none either; its tag list just
    // holds no journal tag).
    let Some(prefix) = journal_prefix(r) else { return Ok(main) };
    let tags = match client.list_tags(r).await {
        Ok(tags) => tags,
        Err(e) => {
            tracing::warn!(cache = %r, error = %e, "cannot list the cache's journal tags; reading its index only");
            return Ok(main);
        }
    };
    let listed = main.as_ref().map(|m| m.journals.clone()).unwrap_or_default();
    let unmerged: Vec<String> = tags.into_iter().filter(|t| t.starts_with(&prefix) && !listed.contains(t)).collect();
    if unmerged.is_empty() {
        return Ok(main);
    }
    let reads = unmerged.iter().map(|tag| {
        let journal = ImageRef { tag: Some(tag.clone()), digest: None, ..r.clone() };
        async move { (tag, load_registry(client, &journal).await) }
    });
    let mut index = main.unwrap_or_default();
    for (tag, read) in futures::future::join_all(reads).await {
        match read {
            Ok(Some((_, journal))) => {
                index.merge(journal);
                index.journals.insert(tag.clone());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(cache = %r, journal = %tag, error = %e, "skipping an unreadable cache journal"),
        }
    }
    Ok(Some(index))
}

/// The index in a manifest's config blob `config`.
fn index_of(
    location: &impl std::fmt::Display,
    manifest: &Manifest,
    config: &[u8],
) -> Result<CacheIndex, RemoteCacheError> {
    if manifest.config.media_type == MEDIA_CACHE_INDEX {
        return CacheIndex::parse(config).ok_or_else(|| bad(location, "its cache index (written by another version?)"));
    }
    // An image: its inline cache, if it has one.
    let image: ImageConfig = serde_json::from_slice(config).map_err(|_| bad(location, "its image config"))?;
    match image.extra.get(INLINE_CONFIG_FIELD) {
        Some(value) => serde_json::from_value::<CacheIndex>(value.clone())
            .ok()
            .filter(|i| i.version == rbuild_cache::remote::INDEX_VERSION)
            .ok_or_else(|| bad(location, "its inline cache")),
        None => Ok(CacheIndex::new()),
    }
}

/// The index of an OCI layout cache directory, if one was written there.
pub(crate) fn load_layout(dir: &Path) -> Result<Option<CacheIndex>, RemoteCacheError> {
    let location = dir.display();
    let read = |path: PathBuf| -> Result<Option<Vec<u8>>, RemoteCacheError> {
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_DOCUMENT_SIZE => Err(bad(&location, format!("{} is too large", path.display()))),
            Ok(_) => std::fs::read(&path).map(Some).map_err(|source| RemoteCacheError::Io {
                location: location.to_string(),
                source: IoError::new("read", path, source),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => {
                Err(RemoteCacheError::Io { location: location.to_string(), source: IoError::new("stat", path, source) })
            }
        }
    };
    let Some(index_bytes) = read(dir.join("index.json"))? else { return Ok(None) };
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|_| bad(&location, "index.json"))?;
    let Some(desc) = index.manifests.first() else { return Ok(None) };
    let blob = |d: &Descriptor, what: &str| -> Result<Vec<u8>, RemoteCacheError> {
        let bytes = read(dir.join("blobs/sha256").join(d.digest.hex()))?
            .ok_or_else(|| bad(&location, format!("{what} {} is missing", d.digest)))?;
        if Digest::of(&bytes) != d.digest {
            return Err(bad(&location, format!("{what} {} does not match its digest", d.digest)));
        }
        Ok(bytes)
    };
    let manifest: Manifest =
        serde_json::from_slice(&blob(desc, "manifest")?).map_err(|_| bad(&location, "its manifest"))?;
    let config = blob(&manifest.config, "cache index")?;
    index_of(&location, &manifest, &config).map(Some)
}

/// Fetches layers that a remote hit named, the first time something needs their files.
pub trait LayerFetcher: Send + Sync {
    /// Makes the snapshot of `diff_id` exist, downloading and unpacking its blob if a remote hit named it.
    /// Does nothing for a layer it does not know.
    fn fetch(&self, diff_id: &Digest) -> Result<(), ImageError>;
    /// Restores the contents of cache mount `id` from a cache source, if one has it and this store does not.
    fn restore_cache_mount(&self, id: &str) -> Result<(), ImageError> {
        let _ = id;
        Ok(())
    }
}

/// The layers remote hits named and where each one's blob is.
pub struct LazyLayers {
    store: Arc<Store>,
    client: Arc<RegistryClient>,
    runtime: tokio::runtime::Handle,
    pending: Mutex<BTreeMap<Digest, (LayerBlob, CacheLocation)>>,
    /// Cache mount contents by id, from the first source that has each.
    mounts: Mutex<BTreeMap<String, (LayerBlob, CacheLocation)>>,
    /// Held while a layer is fetched, so two steps needing it download it once.
    fetching: tokio::sync::Mutex<()>,
    bytes: AtomicU64,
    fetched: AtomicUsize,
}

impl LazyLayers {
    /// Must be made inside a tokio runtime (it keeps a handle to run downloads from the worker's threads).
    pub fn new(store: Arc<Store>, client: Arc<RegistryClient>) -> LazyLayers {
        LazyLayers {
            store,
            client,
            runtime: tokio::runtime::Handle::current(),
            pending: Mutex::new(BTreeMap::new()),
            mounts: Mutex::new(BTreeMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            bytes: AtomicU64::new(0),
            fetched: AtomicUsize::new(0),
        }
    }

    fn note(&self, diff_id: &Digest, blob: &LayerBlob, location: &CacheLocation) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(diff_id.clone())
            .or_insert_with(|| (blob.clone(), location.clone()));
    }

    /// Where the blob of a lazily hit layer is, if it was not fetched.
    /// Downloads `blob` from `location` into the store (verified against its digest).
    pub(crate) async fn download_blob(
        &self,
        blob: &LayerBlob,
        location: &CacheLocation,
        what: &str,
    ) -> Result<(), ImageError> {
        let desc = Descriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            platform: None,
            annotations: None,
        };
        let tmp = self.store.tmp_path(what);
        match location {
            CacheLocation::Registry(r) => self.client.pull_blob(r, &desc, &tmp).await?,
            CacheLocation::Layout(dir) => {
                copy_verified(&dir.join("blobs/sha256").join(blob.digest.hex()), &tmp, &desc)?
            }
        }
        self.store.import_blob(&tmp, &blob.digest)?;
        Ok(())
    }

    pub fn pending(&self, diff_id: &Digest) -> Option<(LayerBlob, CacheLocation)> {
        if self.store.has_snapshot(diff_id) {
            return None;
        }
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(diff_id).cloned()
    }

    /// Layer bytes downloaded from cache sources so far, and how many layers.
    pub fn downloaded(&self) -> (u64, usize) {
        (self.bytes.load(Ordering::Relaxed), self.fetched.load(Ordering::Relaxed))
    }

    /// Makes the blob (and the snapshot) of `diff_id` local, if a remote hit named it and it is not yet.
    pub async fn fetch_async(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let Some((blob, location)) = self.pending(diff_id) else { return Ok(()) };
        let _one_at_a_time = self.fetching.lock().await;
        if self.store.has_snapshot(diff_id) {
            return Ok(());
        }
        if !self.store.has_blob(&blob.digest) {
            self.download_blob(&blob, &location, "cache-layer").await?;
            self.bytes.fetch_add(blob.size, Ordering::Relaxed);
            self.fetched.fetch_add(1, Ordering::Relaxed);
        }
        self.store.add_layer_blob(diff_id, blob.clone())?;
        crate::rootfs::ensure_snapshot(&self.store, diff_id).map_err(|source| ImageError::Unpack {
            image: location.to_string(),
            digest: blob.digest.clone(),
            source: Box::new(source),
        })?;
        Ok(())
    }
}

impl LayerFetcher for LazyLayers {
    fn fetch(&self, diff_id: &Digest) -> Result<(), ImageError> {
        // Called on the worker's blocking threads, never on a runtime thread.
        self.runtime.block_on(self.fetch_async(diff_id))
    }

    fn restore_cache_mount(&self, id: &str) -> Result<(), ImageError> {
        self.runtime.block_on(self.restore_mount_async(id))
    }
}

/// Copies a layout blob into the store's tmp, checking its size and digest.
pub(crate) fn copy_verified(from: &Path, to: &Path, desc: &Descriptor) -> Result<(), ImageError> {
    let mut src = std::fs::File::open(from).map_err(ImageError::Tmp)?;
    let dest = std::fs::File::create(to).map_err(ImageError::Tmp)?;
    let mut writer = rbuild_types::DigestWriter::new(std::io::BufWriter::new(dest));
    std::io::copy(&mut src, &mut writer).map_err(ImageError::Tmp)?;
    let (actual, len, mut out) = writer.finish();
    std::io::Write::flush(&mut out).map_err(ImageError::Tmp)?;
    if len != desc.size || actual != desc.digest {
        let _ = std::fs::remove_file(to);
        return Err(ImageError::DiffIdMismatch {
            image: from.display().to_string(),
            digest: desc.digest.clone(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The solver's cache: the local store, then each remote source in order.
pub struct LayeredCache {
    local: Arc<Store>,
    sources: Vec<LoadedSource>,
    lazy: Arc<LazyLayers>,
    hits: AtomicUsize,
}

impl LayeredCache {
    pub fn new(local: Arc<Store>, sources: Vec<LoadedSource>, lazy: Arc<LazyLayers>) -> LayeredCache {
        for s in &sources {
            for (id, blob) in &s.index.mounts {
                lazy.note_mount(id, blob, &s.location);
            }
        }
        LayeredCache { local, sources, lazy, hits: AtomicUsize::new(0) }
    }

    /// How many lookups the remote sources answered.
    pub fn remote_hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn remote_get(&self, key: &Digest) -> Option<CacheRecord> {
        for source in &self.sources {
            let Some(entry) = source.index.entries.get(key) else { continue };
            let blobs: Option<Vec<&LayerBlob>> = entry.layers.iter().map(|l| source.index.blobs.get(l)).collect();
            let Some(blobs) = blobs else { continue };
            for (diff_id, blob) in entry.layers.iter().zip(blobs) {
                if self.local.has_snapshot(diff_id) {
                    continue;
                }
                self.lazy.note(diff_id, blob, &source.location);
                if let CacheLocation::Registry(r) = &source.location {
                    // A later push to this registry mounts the blob from the cache's repository.
                    record_source(&self.local, &blob.digest, r);
                }
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(CacheRecord { output: Output::RootFs(entry.layers.clone()), created: entry.created });
        }
        None
    }
}

impl CacheStore for LayeredCache {
    fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, CacheError> {
        match self.local.get(key)? {
            Some(record) => Ok(Some(record)),
            None => Ok(self.remote_get(key)),
        }
    }

    fn put(&self, key: &Digest, output: &Output) -> Result<CacheRecord, CacheError> {
        self.local.put(key, output)
    }

    fn previous_step(&self, identity: &str) -> Option<StepInputs> {
        self.local.previous_step(identity)
    }

    fn record_step(&self, identity: &str, inputs: &StepInputs) -> Result<(), CacheError> {
        self.local.record_step(identity, inputs)
    }

    fn source_records(&self, identity: &str) -> Option<Vec<(String, StepInputs)>> {
        if self.sources.is_empty() {
            return None;
        }
        Some(
            self.sources
                .iter()
                .filter_map(|s| Some((s.location.to_string(), s.index.steps.get(identity)?.clone())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryOptions;
    use rbuild_cache::remote::IndexEntry;

    fn source(name: &str, key: &Digest, layer: &Digest) -> LoadedSource {
        let mut index = CacheIndex::new();
        index.entries.insert(key.clone(), IndexEntry { layers: vec![layer.clone()], created: 7, exported: 7 });
        let blob = LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(name.as_bytes()),
            size: 1,
        };
        index.blobs.insert(layer.clone(), blob);
        LoadedSource { location: CacheLocation::Layout(PathBuf::from(name)), index }
    }

    /// Sources are searched in the order given, after the local store; a hit downloads nothing.
    #[tokio::test]
    async fn sources_answer_in_the_order_given_and_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let client = Arc::new(RegistryClient::new(RegistryOptions::default()));
        let lazy = Arc::new(LazyLayers::new(store.clone(), client));
        let (key, other_key) = (Digest::of(b"key"), Digest::of(b"other"));
        let (first, second) = (Digest::of(b"first layer"), Digest::of(b"second layer"));
        let sources =
            vec![source("first", &key, &first), source("second", &key, &second), source("second", &other_key, &second)];
        let cache = LayeredCache::new(store.clone(), sources, lazy.clone());
        let hit = cache.get(&key).unwrap().expect("a remote hit");
        assert_eq!(hit.output, Output::RootFs(vec![first.clone()]), "the first source given wins");
        assert_eq!(hit.created, 7, "the original time is kept");
        assert!(cache.get(&other_key).unwrap().is_some(), "a later source answers what earlier ones lack");
        assert!(cache.get(&Digest::of(b"nobody")).unwrap().is_none());
        assert_eq!(cache.remote_hits(), 2);
        assert_eq!(lazy.downloaded(), (0, 0), "nothing is fetched by a lookup");
        assert_eq!(lazy.pending(&first).map(|(_, l)| l), Some(CacheLocation::Layout("first".into())));
    }
}
