//! Images in the local store: pulling into it, assembling manifests from it, pushing from it.
//!
//! A built image is kept as its config blob plus one snapshot per layer; the compressed blob of a layer is made
//! only when a push or export first needs it (DESIGN.md: lazy compression), then kept and reused, keyed by
//! diff_id and media type. Pulled layers arrive compressed, so their blobs are recorded as they are and a later
//! push of an image built on them uploads nothing new for them (same digests, the registry answers HEAD).
//!
//! The store also remembers which repositories each blob was pulled from or pushed to
//! (`index/blob-sources/<hex>.json`), so a push to another repository of the same registry can ask for a mount
//! instead of sending the bytes again.

use crate::layer::{Compression, LayerOptions, write_compressed_layer};
use crate::registry::{ImageRef, RegistryClient, RegistryError};
use futures::StreamExt;
use rbuild_cache::{ImageRecord, LayerBlob, Store, StoreError};
use rbuild_types::Digest;
use rbuild_types::oci::{
    Descriptor, ImageConfig, MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST, Manifest, Platform, to_canonical_json,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

mod tee;

/// Layers downloaded at the same time.
const PARALLEL_DOWNLOADS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {digest} of {image}")]
    Layer {
        image: String,
        digest: Digest,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("layer {digest} of {image}")]
    Unpack {
        image: String,
        digest: Digest,
        #[source]
        source: Box<crate::rootfs::RootfsError>,
    },
    #[error("layer {digest} of {image} has diff_id {actual}, but the image config says {expected}")]
    DiffIdMismatch { image: String, digest: Digest, expected: Digest, actual: Digest },
    #[error("image {image}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount { image: String, layers: usize, diff_ids: usize },
    #[error("image config {digest} is not valid JSON")]
    BadConfig {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {diff_id}: neither a snapshot nor a stored blob exists for it")]
    MissingLayer { diff_id: Digest },
    #[error("creating a temporary file in the store")]
    Tmp(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] rbuild_types::IoError),
    #[error("layer {digest} of {image}: the thread unpacking it failed")]
    UnpackThread {
        image: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
}

fn unpack_thread(image: &str, desc: &Descriptor, source: std::io::Error) -> ImageError {
    ImageError::UnpackThread { image: image.to_string(), digest: desc.digest.clone(), source }
}

/// An image pulled into the store.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub record: ImageRecord,
    pub config: ImageConfig,
}

/// Pulls `r` for `platform` into the store: layer blobs (each verified), their snapshots, the config and manifest;
/// tags it under its full name. Layers already present are not downloaded again.
pub async fn pull(
    client: &RegistryClient,
    store: &Store,
    r: &ImageRef,
    platform: &Platform,
) -> Result<Pulled, ImageError> {
    let resolved = client.resolve(r, platform).await?;
    let image = r.to_string();
    let diff_ids = &resolved.config.rootfs.diff_ids;
    if diff_ids.len() != resolved.manifest.layers.len() {
        return Err(ImageError::LayerCount { image, layers: resolved.manifest.layers.len(), diff_ids: diff_ids.len() });
    }
    let pinned = resolved.source.with_digest(resolved.digest.clone());
    // Downloads run concurrently, and each layer is unpacked while it downloads (see `pull_layer`).
    let missing: Vec<(&Descriptor, &Digest)> = {
        let mut seen = std::collections::BTreeSet::new();
        resolved
            .manifest
            .layers
            .iter()
            .zip(diff_ids)
            .filter(|(d, _)| !store.has_blob(&d.digest) && seen.insert(&d.digest))
            .collect()
    };
    // Every layer runs to its end even when another fails: the verified ones are kept for the next try, and a pull
    // that returns has left nothing half-done behind.
    let outcomes: Vec<Result<(), ImageError>> = futures::stream::iter(missing)
        .map(|(desc, diff_id)| pull_layer(client, store, &pinned, &image, desc, diff_id))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
    for (desc, diff_id) in resolved.manifest.layers.iter().zip(diff_ids) {
        record_source(store, &desc.digest, &resolved.source);
        store.add_layer_blob(
            diff_id,
            LayerBlob { media_type: desc.media_type.clone(), digest: desc.digest.clone(), size: desc.size },
        )?;
        crate::rootfs::ensure_snapshot(store, diff_id).map_err(|source| ImageError::Unpack {
            image: image.clone(),
            digest: desc.digest.clone(),
            source: Box::new(source),
        })?;
    }
    let config = store.write_blob(&resolved.config_bytes)?;
    let manifest = store.write_blob(&resolved.manifest_bytes)?;
    let record = ImageRecord { name: r.to_string(), config, manifest: Some(manifest), platforms: Vec::new() };
    store.set_tag(&record)?;
    Ok(Pulled { record, config: resolved.config })
}

/// Downloads one layer blob and, unless its snapshot exists already, unpacks it as the bytes arrive: the download
/// feeds a channel, and a blocking thread writes each chunk to the blob's temporary file and on into the extractor
/// (which hashes the uncompressed stream for the diff_id). The blob and the snapshot enter the store only after
/// the blob's digest (checked by the download) and the diff_id (checked here against the image config) are both
/// right; otherwise both temporary paths are removed. A retried download starts a fresh thread with fresh paths.
async fn pull_layer(
    client: &RegistryClient,
    store: &Store,
    pinned: &ImageRef,
    image: &str,
    desc: &Descriptor,
    diff_id: &Digest,
) -> Result<(), ImageError> {
    let unpack = !store.has_snapshot(diff_id);
    let mut attempts = Vec::new();
    let downloaded = client
        .pull_blob_chunks(pinned, desc, || {
            let (tx, rx) = tokio::sync::mpsc::channel(tee::CHUNKS_IN_FLIGHT);
            let paths = tee::TmpPaths { blob: store.tmp_path("pull"), dir: unpack.then(|| store.tmp_path("unpack")) };
            attempts.push(tokio::task::spawn_blocking(move || tee::run(rx, paths)));
            tx
        })
        .await;
    // Only the last attempt counts; the earlier ones' threads end as their channels close, and their paths go
    // with them.
    let last = attempts.pop();
    for earlier in attempts {
        let _ = earlier.await;
    }
    let teed = match last {
        Some(thread) => Some(thread.await.map_err(|e| unpack_thread(image, desc, std::io::Error::other(e)))),
        None => None,
    };
    // Whatever the thread made of a download that failed is dropped here, its paths with it.
    downloaded?;
    let teed =
        teed.unwrap_or_else(|| Err(unpack_thread(image, desc, std::io::Error::other("no download was made"))))?;
    teed.written?;
    if let Some(unpacked) = teed.unpacked {
        let unpack_err = |source| ImageError::Unpack {
            image: image.to_string(),
            digest: desc.digest.clone(),
            source: Box::new(source),
        };
        let actual = unpacked
            .map_err(|source| unpack_err(crate::rootfs::RootfsError::Extract { diff_id: diff_id.clone(), source }))?;
        if &actual != diff_id {
            return Err(unpack_err(crate::rootfs::RootfsError::DiffIdMismatch {
                diff_id: diff_id.clone(),
                blob: desc.digest.clone(),
                actual,
            }));
        }
    }
    store.import_blob(&teed.paths.blob, &desc.digest)?;
    if let Some(dir) = &teed.paths.dir {
        store.mark_unpacked(diff_id)?;
        store.commit_snapshot(dir, diff_id)?;
    }
    Ok(())
}

/// The blob of a layer in the wanted compression, making it from the snapshot if it does not exist yet.
pub fn layer_blob(store: &Store, diff_id: &Digest, compression: Compression) -> Result<LayerBlob, ImageError> {
    let media = compression.oci_media_type();
    let existing = store.layer_blobs(diff_id);
    // Any gzip blob will do for a gzip request (pulled Docker-typed layers are gzip too).
    let acceptable = |b: &LayerBlob| match compression {
        Compression::Gzip { .. } => b.media_type.ends_with("gzip"),
        Compression::Zstd { .. } => b.media_type.ends_with("zstd"),
        Compression::None => b.media_type.ends_with(".tar") || b.media_type.ends_with(".tar.diff"),
    };
    if let Some(b) = existing.into_iter().find(|b| acceptable(b) && store.has_blob(&b.digest)) {
        return Ok(b);
    }
    let snapshot = store.snapshot_path(diff_id);
    if !snapshot.is_dir() {
        // A layer a remote cache hit named and nothing fetched: its blob is known but not here. A push to the
        // cache's registry mounts it; anything else finds the file missing.
        return store
            .layer_blobs(diff_id)
            .into_iter()
            .find(acceptable)
            .ok_or_else(|| ImageError::MissingLayer { diff_id: diff_id.clone() });
    }
    let tmp = store.tmp_path("layer");
    let file = fs::File::create(&tmp).map_err(ImageError::Tmp)?;
    let digests =
        write_compressed_layer(&snapshot, std::io::BufWriter::new(file), compression, &LayerOptions::default())
            .map_err(|source| ImageError::Layer { image: "local build".into(), digest: diff_id.clone(), source })?;
    if &digests.diff_id != diff_id {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::DiffIdMismatch {
            image: "local build".into(),
            digest: digests.digest,
            expected: diff_id.clone(),
            actual: digests.diff_id,
        });
    }
    store.import_blob(&tmp, &digests.digest)?;
    let blob = LayerBlob { media_type: media.to_string(), digest: digests.digest, size: digests.size };
    store.add_layer_blob(diff_id, blob.clone())?;
    Ok(blob)
}

/// An image ready to push or export: manifest bytes, config bytes and layer blobs on disk.
pub struct Assembled {
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<(Descriptor, PathBuf)>,
}

/// Builds the OCI manifest of the image whose config is `config_digest`.
pub fn assemble(store: &Store, config_digest: &Digest, compression: Compression) -> Result<Assembled, ImageError> {
    assemble_annotated(store, config_digest, compression, &BTreeMap::new())
}

/// [`assemble`] with `annotations` on the manifest (`--annotation`; none leaves the field out, so an image
/// without annotations keeps its manifest digest).
pub fn assemble_annotated(
    store: &Store,
    config_digest: &Digest,
    compression: Compression,
    annotations: &BTreeMap<String, String>,
) -> Result<Assembled, ImageError> {
    let config_bytes = store.read_blob(config_digest)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|source| ImageError::BadConfig { digest: config_digest.clone(), source })?;
    let mut layers = Vec::new();
    for diff_id in &config.rootfs.diff_ids {
        let blob = layer_blob(store, diff_id, compression)?;
        let path = store.blob_path(&blob.digest);
        layers.push((
            Descriptor {
                media_type: blob.media_type,
                digest: blob.digest,
                size: blob.size,
                platform: None,
                annotations: None,
            },
            path,
        ));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_OCI_CONFIG.into(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        annotations: Some(annotations.clone()).filter(|a| !a.is_empty()),
    };
    let manifest_bytes = to_canonical_json(&manifest);
    let manifest_digest = store.write_blob(&manifest_bytes)?;
    Ok(Assembled { manifest_digest, manifest_bytes, config_bytes, layers })
}

/// Pushes the image whose config is `config_digest` to `r` with gzip layers; returns the manifest digest.
pub async fn push(
    client: &RegistryClient,
    store: &Store,
    config_digest: &Digest,
    r: &ImageRef,
) -> Result<Digest, ImageError> {
    Ok(push_with(client, store, config_digest, r, Compression::Gzip { level: 6 }).await?.digest)
}

/// Pushes with the given layer compression; blobs the store knows to be in another repository of the same
/// registry are mounted from there. Records the target as a source of every blob it now holds.
pub async fn push_with(
    client: &RegistryClient,
    store: &Store,
    config_digest: &Digest,
    r: &ImageRef,
    compression: Compression,
) -> Result<crate::registry::PushReport, ImageError> {
    push_annotated(client, store, config_digest, r, compression, &BTreeMap::new()).await
}

/// [`push_with`], with `annotations` on the manifest.
pub async fn push_annotated(
    client: &RegistryClient,
    store: &Store,
    config_digest: &Digest,
    r: &ImageRef,
    compression: Compression,
    annotations: &BTreeMap<String, String>,
) -> Result<crate::registry::PushReport, ImageError> {
    let a = assemble_annotated(store, config_digest, compression, annotations)?;
    let blobs: Vec<&Digest> = a.layers.iter().map(|(d, _)| &d.digest).chain([config_digest]).collect();
    let mut mounts = BTreeMap::new();
    for digest in &blobs {
        let from = source_repositories(store, digest, &r.registry);
        if !from.is_empty() {
            mounts.insert((*digest).clone(), from);
        }
    }
    let report = client.push_image_mounting(r, &a.manifest_bytes, &a.config_bytes, &a.layers, &mounts).await?;
    for digest in blobs {
        record_source(store, digest, r);
    }
    Ok(report)
}

/// Where the store keeps the repositories known to hold a blob.
fn sources_path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join("index/blob-sources").join(format!("{}.json", digest.hex()))
}

fn read_sources(path: &Path) -> Vec<String> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Notes that `r`'s repository holds `digest`. Best effort: a lost note only costs a mount later.
pub fn record_source(store: &Store, digest: &Digest, r: &ImageRef) {
    let path = sources_path(store, digest);
    let entry = format!("{}/{}", r.registry, r.repository);
    let mut sources = read_sources(&path);
    if sources.contains(&entry) {
        return;
    }
    sources.push(entry);
    if let Err(e) = store.write_json(&path, &sources) {
        tracing::warn!(digest = %digest, error = %e, "could not record the blob's repository");
    }
}

/// Repositories on `registry` known to hold `digest`, most recent first.
pub fn source_repositories(store: &Store, digest: &Digest, registry: &str) -> Vec<String> {
    let prefix = format!("{registry}/");
    let mut out: Vec<String> = read_sources(&sources_path(store, digest))
        .into_iter()
        .filter_map(|s| s.strip_prefix(&prefix).map(str::to_string))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
pub(crate) mod tests;
