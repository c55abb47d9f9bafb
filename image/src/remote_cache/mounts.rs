//! Cache mounts that travel (`--cache-to …,cache-mounts=true`): the contents of each `RUN --mount=type=cache`
//! directory as one layer blob in the cache, restored on another runner just before the first step that mounts
//! that id runs (a step that is a cache hit needs nothing restored).

use super::{CacheLocation, LazyLayers};
use crate::layer::{Compression, LayerOptions, extract_layer, write_compressed_layer};
use crate::local::ImageError;
use rbuild_cache::{LayerBlob, Store};
use rbuild_types::Digest;
use std::path::PathBuf;

/// The data directory of cache mount `id` in `store` (the executor's layout: `cachemounts/<sha256(id)>/data`).
pub fn cache_mount_data(store: &Store, id: &str) -> PathBuf {
    store.cache_mounts_dir().join(Digest::of(id.as_bytes()).hex()).join("data")
}

/// Packs the contents of cache mount `id` into a blob in the store; `None` when this store has no such cache or
/// its blob would be larger than `max_size` (a warning for the caller, not an error).
pub fn pack_cache_mount(
    store: &Store,
    id: &str,
    compression: Compression,
    max_size: u64,
) -> Result<Option<LayerBlob>, ImageError> {
    let data = cache_mount_data(store, id);
    if !data.is_dir() {
        return Ok(None);
    }
    let tmp = store.tmp_path("cache-mount");
    let file = std::fs::File::create(&tmp).map_err(ImageError::Tmp)?;
    let digests =
        write_compressed_layer(&data, std::io::BufWriter::new(file), compression, &LayerOptions::default()).map_err(
            |source| ImageError::Layer { image: format!("cache mount {id:?}"), digest: Digest::of(b""), source },
        )?;
    if digests.size > max_size {
        let _ = std::fs::remove_file(&tmp);
        return Ok(None);
    }
    store.import_blob(&tmp, &digests.digest)?;
    Ok(Some(LayerBlob { media_type: compression.oci_media_type().into(), digest: digests.digest, size: digests.size }))
}

impl LazyLayers {
    pub(super) fn note_mount(&self, id: &str, blob: &LayerBlob, location: &CacheLocation) {
        self.mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_insert_with(|| (blob.clone(), location.clone()));
    }

    /// Restores cache mount `id` from the cache that has it, unless this store already has that cache.
    pub async fn restore_mount_async(&self, id: &str) -> Result<(), ImageError> {
        let data = cache_mount_data(&self.store, id);
        if data.exists() {
            return Ok(());
        }
        let Some((blob, location)) = self.mounts.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned() else {
            return Ok(());
        };
        let _one_at_a_time = self.fetching.lock().await;
        if data.exists() {
            return Ok(());
        }
        if !self.store.has_blob(&blob.digest) {
            self.download_blob(&blob, &location, "cache-mount").await?;
        }
        let dest = self.store.tmp_dir("cache-mount")?;
        let blob_path = self.store.blob_path(&blob.digest);
        let file = std::fs::File::open(&blob_path).map_err(ImageError::Tmp)?;
        extract_layer(std::io::BufReader::new(file), &dest).map_err(|source| ImageError::Layer {
            image: location.to_string(),
            digest: blob.digest.clone(),
            source,
        })?;
        let entry = data.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&entry).map_err(ImageError::Tmp)?;
        let id_file = entry.join("id");
        if !id_file.exists() {
            std::fs::write(&id_file, id).map_err(ImageError::Tmp)?;
        }
        if std::fs::rename(&dest, &data).is_err() {
            // Made meanwhile by a step of another build: that one is kept.
            let _ = std::fs::remove_dir_all(&dest);
        }
        Ok(())
    }
}
