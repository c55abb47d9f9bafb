//! Multi-platform images: an OCI image index over one image per platform.
//!
//! The store keeps a multi-platform image as the list of its platforms' configs (see `ImageRecord::platforms`);
//! the index itself is made when the image leaves the store, from the manifests [`assemble`] makes with the
//! compression of that output, because the manifests' digests depend on it. Each entry carries the platform its
//! config names, as BuildKit writes them.

use crate::local::{Assembled, ImageError, assemble, push_with};
use crate::registry::{ImageRef, PushReport, RegistryClient};
use rbuild_cache::Store;
use rbuild_solver::Digest;
use rbuild_solver::oci::{
    Descriptor, ImageConfig, Index, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Platform, to_canonical_json,
};

/// The platform an image config names.
pub fn config_platform(config_bytes: &[u8], digest: &Digest) -> Result<Platform, ImageError> {
    let config: ImageConfig = serde_json::from_slice(config_bytes)
        .map_err(|source| ImageError::BadConfig { digest: digest.clone(), source })?;
    Ok(Platform { architecture: config.architecture, os: config.os, variant: config.variant })
}

/// The OCI index of the assembled images, in their order, each entry with its platform.
pub fn index_document(images: &[Assembled]) -> Result<Vec<u8>, ImageError> {
    let mut manifests = Vec::with_capacity(images.len());
    for a in images {
        let config = Digest::of(&a.config_bytes);
        manifests.push(Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: a.manifest_digest.clone(),
            size: a.manifest_bytes.len() as u64,
            platform: Some(config_platform(&a.config_bytes, &config)?),
            annotations: None,
        });
    }
    let index = Index { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.into()), manifests, annotations: None };
    Ok(to_canonical_json(&index))
}

/// Assembles every platform's image and their index; the index is written to the store too.
pub fn assemble_index(
    store: &Store,
    configs: &[Digest],
    compression: crate::layer::Compression,
) -> Result<(Vec<Assembled>, Vec<u8>), ImageError> {
    let images = configs.iter().map(|c| assemble(store, c, compression)).collect::<Result<Vec<_>, _>>()?;
    let bytes = index_document(&images)?;
    store.write_blob(&bytes)?;
    Ok((images, bytes))
}

/// What pushing a multi-platform image did.
#[derive(Debug, Clone)]
pub struct IndexPushReport {
    /// The digest of the index now tagged.
    pub digest: Digest,
    /// Each platform's manifest push, in the order of the configs.
    pub images: Vec<PushReport>,
}

/// Pushes every platform's image by digest, concurrently, then the index under `r`'s tag.
pub async fn push_index(
    client: &RegistryClient,
    store: &Store,
    configs: &[Digest],
    r: &ImageRef,
    compression: crate::layer::Compression,
) -> Result<IndexPushReport, ImageError> {
    let (images, bytes) = assemble_index(store, configs, compression)?;
    let pushes = configs.iter().zip(&images).map(|(config, a)| {
        let by_digest = r.with_digest(a.manifest_digest.clone());
        async move { push_with(client, store, config, &by_digest, compression).await }
    });
    let reports = futures::future::try_join_all(pushes).await?;
    let digest = client.push_manifest(r, &bytes, MEDIA_OCI_INDEX).await?;
    Ok(IndexPushReport { digest, images: reports })
}
