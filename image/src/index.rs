//! Multi-platform images: an OCI image index over one image per platform.
//!
//! The store keeps a multi-platform image as the list of its platforms' configs (see `ImageRecord::platforms`);
//! the index itself is made when the image leaves the store, from the manifests
//! [`assemble`](crate::local::assemble) makes with the compression of that output, because the manifests' digests
//! depend on it. Each entry carries the platform its config names, as BuildKit writes them.

use crate::local::{Assembled, ImageError};
use crate::registry::{ImageRef, PushReport, RegistryClient};
use rbuild_cache::Store;
use rbuild_types::Digest;
use rbuild_types::oci::{
    Descriptor, ImageConfig, Index, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Platform, to_canonical_json,
};
use std::collections::BTreeMap;

/// The platform an image config names.
pub fn config_platform(config_bytes: &[u8], digest: &Digest) -> Result<Platform, ImageError> {
    let config: ImageConfig = serde_json::from_slice(config_bytes)
        .map_err(|source| ImageError::BadConfig { digest: digest.clone(), source })?;
    Ok(Platform { architecture: config.architecture, os: config.os, variant: config.variant })
}

/// The OCI index of the assembled images, in their order, each entry with its platform.
pub fn index_document(images: &[Assembled]) -> Result<Vec<u8>, ImageError> {
    Ok(to_canonical_json(&index_of(images)?))
}

fn index_of(images: &[Assembled]) -> Result<Index, ImageError> {
    index_annotated(images, &IndexAnnotations::default())
}

fn index_annotated(images: &[Assembled], annotations: &IndexAnnotations) -> Result<Index, ImageError> {
    let mut manifests = Vec::with_capacity(images.len());
    for a in images {
        let config = Digest::of(&a.config_bytes);
        let platform = config_platform(&a.config_bytes, &config)?;
        let on_descriptor = IndexAnnotations::of(&annotations.manifest_descriptor, &platform);
        manifests.push(Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: a.manifest_digest.clone(),
            size: a.manifest_bytes.len() as u64,
            platform: Some(platform),
            annotations: (!on_descriptor.is_empty()).then_some(on_descriptor),
        });
    }
    let on_index = (!annotations.index.is_empty()).then(|| annotations.index.clone());
    Ok(Index { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.into()), manifests, annotations: on_index })
}

/// The manifest annotations `annotations` gives each of `configs`' images.
fn manifest_annotations(
    store: &Store,
    configs: &[Digest],
    annotations: &IndexAnnotations,
) -> Result<Vec<BTreeMap<String, String>>, ImageError> {
    configs
        .iter()
        .map(|c| Ok(IndexAnnotations::of(&annotations.manifest, &config_platform(&store.read_blob(c)?, c)?)))
        .collect()
}

/// The annotations of a multi-platform image, by where buildx's `--annotation` types put them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexAnnotations {
    /// On the index itself (`index:`).
    pub index: BTreeMap<String, String>,
    /// On the index's entry in an OCI layout's `index.json` (`index-descriptor:`).
    pub index_descriptor: BTreeMap<String, String>,
    /// On the platforms' manifests (`manifest:`, `manifest[os/arch]:`): `None` is every platform.
    pub manifest: Vec<(Option<Platform>, String, String)>,
    /// On the platforms' entries in the index (`manifest-descriptor:`).
    pub manifest_descriptor: Vec<(Option<Platform>, String, String)>,
}

impl IndexAnnotations {
    /// The annotations of `list` for the image of `platform`: those for every platform and those naming its OS
    /// and architecture (and variant, when they name one; arm64's `v8` is arm64's only one).
    fn of(list: &[(Option<Platform>, String, String)], platform: &Platform) -> BTreeMap<String, String> {
        let variant = |p: &Platform| p.variant.clone().filter(|v| !(p.architecture == "arm64" && v == "v8"));
        let matches = |p: &Platform| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (variant(p).is_none() || variant(p) == variant(platform))
        };
        list.iter().filter(|(p, _, _)| p.as_ref().is_none_or(matches)).map(|(_, k, v)| (k.clone(), v.clone())).collect()
    }
}

/// An in-toto predicate to attach to one platform's image (a SLSA provenance, an SPDX document).
#[derive(Debug, Clone)]
pub struct Attestation {
    pub predicate_type: String,
    pub predicate: serde_json::Value,
}

pub const MEDIA_IN_TOTO: &str = "application/vnd.in-toto+json";
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// A multi-platform image ready to push or export: each platform's image, the attestation manifests (one per
/// platform that has attestations, stored as BuildKit stores them), and the index listing both.
pub struct AssembledIndex {
    pub images: Vec<Assembled>,
    pub attestations: Vec<Assembled>,
    pub bytes: Vec<u8>,
}

/// BuildKit's attestation manifest for the image `subject`: each statement an `application/vnd.in-toto+json`
/// layer annotated with its predicate type, under a config of platform `unknown/unknown`.
fn attestation_manifest(store: &Store, subject: &Assembled, list: &[Attestation]) -> Result<Assembled, ImageError> {
    let mut layers = Vec::with_capacity(list.len());
    for a in list {
        let statement = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": a.predicate_type,
            "subject": [{"name": "_", "digest": {"sha256": subject.manifest_digest.hex()}}],
            "predicate": a.predicate,
        });
        let bytes = serde_json::to_vec(&statement).unwrap_or_default();
        let digest = store.write_blob(&bytes)?;
        let annotations = [(ANNOTATION_PREDICATE_TYPE.to_string(), a.predicate_type.clone())].into();
        let desc = Descriptor {
            media_type: MEDIA_IN_TOTO.into(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            platform: None,
            annotations: Some(annotations),
        };
        layers.push((desc, store.blob_path(&digest)));
    }
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| d.digest.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
    let config_digest = store.write_blob(&config_bytes)?;
    let manifest = rbuild_types::oci::Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: rbuild_types::oci::MEDIA_OCI_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        annotations: None,
    };
    let manifest_bytes = to_canonical_json(&manifest);
    let manifest_digest = store.write_blob(&manifest_bytes)?;
    Ok(Assembled { manifest_digest, manifest_bytes, config_bytes, layers })
}

/// Assembles every platform's image, the attestation manifests of `attestations` (by platform, in the order of
/// `configs`; empty for none) and their index; all are written to the store.
pub fn assemble_index(
    store: &Store,
    configs: &[Digest],
    compression: crate::layer::Compression,
    attestations: &[Vec<Attestation>],
    annotations: &IndexAnnotations,
) -> Result<AssembledIndex, ImageError> {
    let on_manifests = manifest_annotations(store, configs, annotations)?;
    let images = configs
        .iter()
        .zip(&on_manifests)
        .map(|(c, a)| crate::local::assemble_annotated(store, c, compression, a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut doc = index_annotated(&images, annotations)?;
    let mut attached = Vec::new();
    for (image, list) in images.iter().zip(attestations) {
        if list.is_empty() {
            continue;
        }
        let a = attestation_manifest(store, image, list)?;
        let annotations = [
            (ANNOTATION_REFERENCE_DIGEST.to_string(), image.manifest_digest.to_string()),
            (ANNOTATION_REFERENCE_TYPE.to_string(), "attestation-manifest".to_string()),
        ];
        doc.manifests.push(Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: a.manifest_digest.clone(),
            size: a.manifest_bytes.len() as u64,
            platform: Some(Platform { architecture: "unknown".into(), os: "unknown".into(), variant: None }),
            annotations: Some(annotations.into()),
        });
        attached.push(a);
    }
    let bytes = to_canonical_json(&doc);
    store.write_blob(&bytes)?;
    Ok(AssembledIndex { images, attestations: attached, bytes })
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
    push_index_with(client, store, configs, r, compression, &[], &IndexAnnotations::default()).await
}

/// [`push_index`] with attestations attached (see [`assemble_index`]).
pub async fn push_index_with(
    client: &RegistryClient,
    store: &Store,
    configs: &[Digest],
    r: &ImageRef,
    compression: crate::layer::Compression,
    attestations: &[Vec<Attestation>],
    annotations: &IndexAnnotations,
) -> Result<IndexPushReport, ImageError> {
    let index = assemble_index(store, configs, compression, attestations, annotations)?;
    let on_manifests = manifest_annotations(store, configs, annotations)?;
    let pushes = configs.iter().zip(&index.images).zip(&on_manifests).map(|((config, a), on_manifest)| {
        let by_digest = r.with_digest(a.manifest_digest.clone());
        async move { crate::local::push_annotated(client, store, config, &by_digest, compression, on_manifest).await }
    });
    let mut reports = futures::future::try_join_all(pushes).await?;
    for a in &index.attestations {
        let by_digest = r.with_digest(a.manifest_digest.clone());
        reports.push(client.push_image_report(&by_digest, &a.manifest_bytes, &a.config_bytes, &a.layers).await?);
    }
    let digest = client.push_manifest(r, &index.bytes, MEDIA_OCI_INDEX).await?;
    Ok(IndexPushReport { digest, images: reports })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform { os: "linux".into(), architecture: arch.into(), variant: variant.map(String::from) }
    }

    #[test]
    fn annotations_select_their_platforms() {
        let entry = |p: Option<Platform>, k: &str| (p, k.to_string(), "v".to_string());
        let list = [
            entry(None, "all"),
            entry(Some(platform("arm64", Some("v8"))), "arm64"),
            entry(Some(platform("arm", Some("v7"))), "armv7"),
            entry(Some(platform("amd64", None)), "amd64"),
        ];
        let keys = |p: Platform| IndexAnnotations::of(&list, &p).into_keys().collect::<Vec<_>>();
        assert_eq!(keys(platform("arm64", None)), ["all", "arm64"]);
        assert_eq!(keys(platform("arm64", Some("v8"))), ["all", "arm64"]);
        assert_eq!(keys(platform("arm", Some("v6"))), ["all"]);
        assert_eq!(keys(platform("arm", Some("v7"))), ["all", "armv7"]);
        assert_eq!(keys(platform("amd64", Some("v3"))), ["all", "amd64"]);
    }
}
