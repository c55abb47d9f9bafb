//! Writing a cache: the entries of this build merged into what the location already holds.
//!
//! Registries have no compare-and-swap, so two writers that read the index at the same time and each write back
//! the union with their own entries would drop one another's (the last writer wins, as with BuildKit). An export
//! to a registry therefore first pushes its own entries under a tag no other writer uses, its *journal*
//! (`<tag>-rbuild-journal-<time>-<id>`), and only then merges into the main tag: it reads the index there and every
//! journal that index does not list, writes the union (listing the journals it merged), reads it back and merges
//! again if another writer replaced it in between. A reader reads the main tag and the journals it does not list.
//! So an entry, once its export returned, is either in the main index or in a journal a reader merges: no
//! interleaving of writers loses it, whatever the timing. Journals stay (the distribution API has no portable
//! way to delete a tag); once merged they cost a reader nothing but a line of the tag list.
//!
//! The manifest is pushed only after every blob it lists is in the repository, so a reader never sees a cache that
//! promises what it cannot deliver. A directory export does the same under an exclusive file lock, and renames
//! `index.json` into place last.

use super::{
    CacheLocation, LazyLayers, RemoteCacheError, bad, journal_prefix, load_layout, load_registry, load_with_journals,
};
use crate::layer::Compression;
use crate::local::{ImageError, layer_blob, record_source, source_repositories};
use crate::registry::{ImageRef, RegistryClient};
use rbuild_cache::remote::{CacheIndex, IndexEntry, Limits, MEDIA_CACHE_INDEX};
use rbuild_cache::{LayerBlob, Store};
use rbuild_solver::explain::StepInputs;
use rbuild_types::oci::{Descriptor, Index, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest, to_canonical_json};
use rbuild_types::{Digest, IoError};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// How often an export re-merges when other writers keep replacing the index.
const ATTEMPTS: u32 = 8;

/// A result to export.
#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub key: Digest,
    pub layers: Vec<Digest>,
    pub created: i64,
    /// What went into the key, by the step's portable identity, when known (for another machine's
    /// `--explain-cache`).
    pub step: Option<(String, std::sync::Arc<StepInputs>)>,
}

/// Copies from a directory that select more files than this are recorded without their per-file digests (an
/// explanation then says that the selected files changed, not which), so the index stays small.
const MAX_EXPLAINED_FILES: usize = 200;

/// What an export did.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// Entries the cache holds now, and how many of them this export wrote.
    pub entries: usize,
    pub exported: usize,
    /// Layer blobs uploaded (or copied into the directory), and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Layer blobs mounted from another repository or already there.
    pub reused: usize,
    /// How many times the index was written (more than one when another writer raced this one).
    pub writes: u32,
}

#[allow(clippy::too_many_arguments)]
/// Exports `entries` to `target`, merged with what it holds and pruned to `limits`; `now` dates the entries.
pub async fn export(
    client: &RegistryClient,
    store: &Store,
    lazy: &LazyLayers,
    target: &CacheLocation,
    entries: &[ExportEntry],
    mounts: &BTreeMap<String, LayerBlob>,
    compression: Compression,
    limits: Limits,
    now: i64,
) -> Result<ExportReport, RemoteCacheError> {
    let mut own = CacheIndex::new();
    own.mounts = mounts.clone();
    for e in entries {
        for l in &e.layers {
            if !own.blobs.contains_key(l) {
                let blob = blob_for(store, lazy, target, l, compression).await?;
                own.blobs.insert(l.clone(), blob);
            }
        }
        own.entries.insert(e.key.clone(), IndexEntry { layers: e.layers.clone(), created: e.created, exported: now });
        if let Some((identity, record)) = &e.step {
            let mut record = StepInputs::clone(record);
            for files in &mut record.files {
                if files.len() > MAX_EXPLAINED_FILES {
                    files.clear();
                }
            }
            own.steps.insert(identity.clone(), record);
        }
    }
    match target {
        CacheLocation::Registry(r) => to_registry(client, store, r, own, limits, now).await,
        CacheLocation::Layout(dir) => {
            let (store, dir, target) = (store.root().to_path_buf(), dir.clone(), target.to_string());
            let store_blobs = store.join("blobs/sha256");
            tokio::task::spawn_blocking(move || to_layout(&store_blobs, &dir, own, limits, now))
                .await
                .map_err(|e| RemoteCacheError::BadDocument { location: target, what: format!("export thread: {e}") })?
        }
    }
}

/// The blob of layer `diff_id` for the cache: the store's (compressed now if needed), or, for a layer a remote hit
/// named and nobody fetched, the remote blob itself when `target` is on the same registry (it is mounted there).
async fn blob_for(
    store: &Store,
    lazy: &LazyLayers,
    target: &CacheLocation,
    diff_id: &Digest,
    compression: Compression,
) -> Result<LayerBlob, RemoteCacheError> {
    let image_err = |e: ImageError| RemoteCacheError::Image { location: target.to_string(), source: Box::new(e) };
    if let Some((blob, from)) = lazy.pending(diff_id) {
        let same_registry = matches!((&from, target),
            (CacheLocation::Registry(a), CacheLocation::Registry(b)) if a.registry == b.registry);
        if same_registry || store.has_blob(&blob.digest) {
            return Ok(blob);
        }
        lazy.fetch_async(diff_id).await.map_err(image_err)?;
    }
    layer_blob(store, diff_id, compression).map_err(image_err)
}

fn descriptor(b: &LayerBlob) -> Descriptor {
    Descriptor {
        media_type: b.media_type.clone(),
        digest: b.digest.clone(),
        size: b.size,
        platform: None,
        annotations: None,
    }
}

/// The cache manifest for `index`, and the index's bytes (its config).
fn cache_manifest(index: &CacheIndex) -> (Vec<u8>, Vec<u8>) {
    let config = index.to_bytes();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_CACHE_INDEX.into(),
            digest: Digest::of(&config),
            size: config.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: index.blob_list().iter().map(descriptor).collect(),
        annotations: None,
    };
    (to_canonical_json(&manifest), config)
}

/// The entries of `own` that survived pruning (a size limit may drop some of this export's own entries).
fn kept(own: &CacheIndex, merged: &CacheIndex) -> CacheIndex {
    let mut k = CacheIndex::new();
    k.entries = own
        .entries
        .iter()
        .filter(|(key, _)| merged.entries.contains_key(*key))
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    k
}

async fn to_registry(
    client: &RegistryClient,
    store: &Store,
    r: &ImageRef,
    own: CacheIndex,
    limits: Limits,
    now: i64,
) -> Result<ExportReport, RemoteCacheError> {
    let reg = |source| RemoteCacheError::Registry { location: r.to_string(), source: Box::new(source) };
    let mut report = ExportReport::default();
    let mounts_for = |blobs: &[LayerBlob]| {
        let mut mounts = BTreeMap::new();
        for b in blobs {
            let from = source_repositories(store, &b.digest, &r.registry);
            if !from.is_empty() {
                mounts.insert(b.digest.clone(), from);
            }
        }
        mounts
    };
    // First the slow part, this export's own blobs, with no manifest yet: the read-merge-write below then takes
    // a few requests, which keeps the window in which two writers can interleave small.
    let own_blobs = own.blob_list();
    let files: Vec<(Descriptor, std::path::PathBuf)> =
        own_blobs.iter().map(|b| (descriptor(b), store.blob_path(&b.digest))).collect();
    let pushed = client.push_blobs(r, &files, &mounts_for(&own_blobs)).await.map_err(reg)?;
    let sizes: BTreeMap<&Digest, u64> = own_blobs.iter().map(|b| (&b.digest, b.size)).collect();
    report.uploaded = pushed.uploaded.len();
    report.uploaded_bytes = pushed.uploaded.iter().filter_map(|d| sizes.get(d)).sum();
    report.reused = pushed.reused.len();
    for b in &own_blobs {
        record_source(store, &b.digest, r);
    }
    // The journal: this export's entries, under a tag of its own, before anything else can race it.
    let journal_tag = journal_prefix(r).map(|prefix| format!("{prefix}{now:010}-{}", writer_id()));
    if let Some(tag) = &journal_tag {
        let journal = ImageRef { tag: Some(tag.clone()), digest: None, ..r.clone() };
        let (manifest, config) = cache_manifest(&own);
        client.push_image_mounting(&journal, &manifest, &config, &[], &BTreeMap::new()).await.map_err(reg)?;
    }
    for attempt in 1..=ATTEMPTS {
        let mut merged = match load_with_journals(client, r).await {
            Ok(Some(index)) => index,
            Ok(None) => CacheIndex::new(),
            // Something that is not a cache of this version: replaced, as buildx replaces what is at the ref.
            Err(RemoteCacheError::BadDocument { .. }) => CacheIndex::new(),
            Err(e) => return Err(e),
        };
        merged.merge(own.clone());
        merged.journals.extend(journal_tag.clone());
        merged.prune(limits, now);
        if !merged.is_complete() {
            return Err(bad(r, "the merged index names a layer without a blob"));
        }
        let mine = kept(&own, &merged);
        let (manifest, config) = cache_manifest(&merged);
        // Every blob is in the repository by now (this export's above, the others' with the index they came in),
        // so only the index and the manifest are sent: the registry checks on the manifest PUT that the blobs it
        // lists are there.
        client.push_image_mounting(r, &manifest, &config, &[], &BTreeMap::new()).await.map_err(reg)?;
        report.writes = attempt;
        report.entries = merged.entries.len();
        report.exported = mine.entries.len();
        // Read back: a writer that read the index before this write and wrote after it replaced these entries in
        // the main tag (they are still in the journal); merging again puts them back, so readers need not read
        // the journal for long.
        let there = match load_registry(client, r).await? {
            Some((_, index)) => index,
            None => CacheIndex::new(),
        };
        let listed = journal_tag.as_ref().is_none_or(|t| there.journals.contains(t));
        if there.contains_all(&mine) && listed {
            report.entries = there.entries.len();
            return Ok(report);
        }
        tracing::debug!(cache = %r, attempt, "another writer replaced the cache index; merging again");
        // Out of step with the other writer (pid-dependent), so the next merge does not collide again.
        let jitter = u64::from(std::process::id() % 17) + u64::from(attempt) * 10;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    // Still not in the main tag after every attempt: the journal holds the entries, and readers merge it.
    if journal_tag.is_some() {
        return Ok(report);
    }
    Err(bad(r, "another writer kept replacing the cache index"))
}

/// An id for this export's journal tag that no other writer picks: the process, the host and the time.
fn writer_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let seed = format!("{}:{host}:{nanos}", std::process::id());
    Digest::of(seed.as_bytes()).hex()[..12].to_string()
}

/// Exports into an OCI layout directory, under its lock.
fn to_layout(
    store_blobs: &Path,
    dir: &Path,
    own: CacheIndex,
    limits: Limits,
    now: i64,
) -> Result<ExportReport, RemoteCacheError> {
    let location = dir.display().to_string();
    let io = |op: &'static str, path: &Path| {
        let (location, path) = (location.clone(), path.to_path_buf());
        move |source| RemoteCacheError::Io { location, source: IoError::new(op, path, source) }
    };
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).map_err(io("create directory", &blobs_dir))?;
    let lock_path = dir.join(".rbuild-cache.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    let mut merged = load_layout(dir).ok().flatten().unwrap_or_default();
    merged.merge(own.clone());
    merged.prune(limits, now);
    let mut report = ExportReport::default();
    let write_file = |name: &Path, bytes: &[u8]| -> Result<(), RemoteCacheError> {
        let tmp = name.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, name).map_err(io("rename onto", name))
    };
    for b in merged.blob_list() {
        let dest = blobs_dir.join(b.digest.hex());
        if dest.exists() {
            report.reused += 1;
            continue;
        }
        let src = store_blobs.join(b.digest.hex());
        let tmp = blobs_dir.join(format!("{}.tmp", b.digest.hex()));
        // A hard link when the directory is on the store's filesystem (blobs are immutable), else a copy.
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp).map_err(io("copy", &src))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io("rename onto", &dest))?;
        report.uploaded += 1;
        report.uploaded_bytes += b.size;
    }
    let (manifest, config) = cache_manifest(&merged);
    write_file(&blobs_dir.join(Digest::of(&config).hex()), &config)?;
    let manifest_digest = Digest::of(&manifest);
    write_file(&blobs_dir.join(manifest_digest.hex()), &manifest)?;
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.into()),
        manifests: vec![Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: manifest_digest,
            size: manifest.len() as u64,
            platform: None,
            annotations: Some(BTreeMap::from([("org.opencontainers.image.ref.name".into(), "latest".into())])),
        }],
        annotations: None,
    };
    write_file(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_file(&dir.join("index.json"), &to_canonical_json(&index))?;
    report.writes = 1;
    report.entries = merged.entries.len();
    report.exported = kept(&own, &merged).entries.len();
    Ok(report)
}
