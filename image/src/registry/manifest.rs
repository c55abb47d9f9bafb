//! Manifests and indexes: resolving, fetching and pushing documents as exact bytes, and platform selection.

use super::*;
use oci_client::Reference;
use rbuild_types::Digest;
use rbuild_types::oci::{
    Descriptor, ImageConfig, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest,
    Platform,
};
use serde::Deserialize;

/// Configs are read into memory; anything bigger than this is not an image config.
const MAX_CONFIG_SIZE: u64 = 64 * 1024 * 1024;
const MANIFEST_MEDIA_TYPES: &[&str] = &[MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST];

impl RegistryClient {
    /// Resolves the reference to a single-platform manifest (picking `platform` from an index) and its config.
    /// Docker Hub images are looked for on the configured mirrors first; a mirror that fails is skipped.
    pub async fn resolve(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, RegistryError> {
        if r.registry == DOCKER_HUB {
            for mirror in &self.opts.mirrors {
                let on_mirror = ImageRef { registry: mirror.clone(), ..r.clone() };
                match self.resolve_at(&on_mirror, platform).await {
                    Ok(resolved) => return Ok(resolved),
                    Err(e) => tracing::warn!(image = %r, mirror, error = %e, "mirror failed, trying the next source"),
                }
            }
        }
        self.resolve_at(r, platform).await
    }

    pub(super) async fn resolve_at(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, RegistryError> {
        self.resolve_at_inner(r, platform).await.map_err(|e| self.auth_context(e))
    }

    pub(super) async fn resolve_at_inner(
        &self,
        r: &ImageRef,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let conn = self.conn(r).await?;
        let (top_digest, top_bytes) = self.fetch_manifest(&conn, r, oci_ref(r)).await?;
        if let Some(pinned) = &r.digest
            && *pinned != top_digest
        {
            return Err(RegistryError::DigestMismatch {
                image: r.to_string(),
                what: "manifest".into(),
                expected: pinned.to_string(),
                actual: top_digest.to_string(),
            });
        }
        let mut from_index = false;
        let (digest, manifest_bytes, manifest) = match parse_document(r, "manifest", &top_bytes)? {
            Document::Manifest(m) => (top_digest, top_bytes, m),
            Document::Index(index) => {
                from_index = true;
                let entry = select_platform(r, &index.manifests, platform)?;
                if !is_manifest_type(&entry.media_type) {
                    return Err(RegistryError::UnsupportedMediaType {
                        image: r.to_string(),
                        what: format!("index entry {}", entry.digest),
                        media_type: entry.media_type.clone(),
                        expected: "image manifest",
                    });
                }
                let by_digest = r.with_digest(entry.digest.clone());
                let (digest, bytes) = self.fetch_manifest(&conn, &by_digest, oci_ref(&by_digest)).await?;
                check_blob(&by_digest, "platform manifest", entry, &digest, bytes.len() as u64)?;
                match parse_document(&by_digest, "platform manifest", &bytes)? {
                    Document::Manifest(m) => (digest, bytes, m),
                    Document::Index(_) => {
                        return Err(RegistryError::UnsupportedMediaType {
                            image: by_digest.to_string(),
                            what: "index entry".into(),
                            media_type: MEDIA_OCI_INDEX.into(),
                            expected: "image manifest",
                        });
                    }
                }
            }
        };
        if manifest.config.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::TooLarge {
                image: r.to_string(),
                what: "image config".into(),
                size: manifest.config.size,
                limit: MAX_CONFIG_SIZE,
            });
        }
        let config_bytes = self.fetch_blob_to_memory(&conn, r, &manifest.config, "image config").await?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| RegistryError::BadDocument {
                image: r.to_string(),
                what: format!("image config {}", manifest.config.digest),
                source,
            })?;
        // A plain manifest (no index) is one platform's image: the one asked for, or an error naming what it is. An
        // entry picked from an index is the image the index names for the platform, whatever its config says (as
        // BuildKit takes it; the frontend's InvalidBaseImagePlatform check warns about the mismatch).
        let has = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        let unnamed = has.os.is_empty() || has.architecture.is_empty();
        if !from_index && !unnamed && !platform_matches(platform, &has) {
            return Err(RegistryError::NoMatchingPlatform {
                image: r.to_string(),
                wanted: platform_string(platform),
                available: platform_string(&has),
            });
        }
        Ok(ResolvedImage { source: r.clone(), digest, manifest_bytes, manifest, config_bytes, config })
    }

    /// Pushes a manifest or index document, byte for byte, under the tag of `r` (or by digest when it has none).
    /// The blobs it refers to must already be in the repository. Returns the document's digest.
    pub async fn push_manifest(&self, r: &ImageRef, bytes: &[u8], media_type: &str) -> Result<Digest, RegistryError> {
        let conn = self.conn(r).await?;
        let digest = Digest::of(bytes);
        self.push_manifest_with(&conn, r, bytes, media_type, &digest).await.map_err(|e| self.auth_context(e))?;
        Ok(digest)
    }

    pub(super) async fn push_manifest_with(
        &self,
        conn: &Conn,
        r: &ImageRef,
        bytes: &[u8],
        media_type: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        // Untagged pushes go by digest. The digest is passed as the "tag" because the URL is the same
        // (`/manifests/<digest>`), and `oci-client`'s fallback for registries that omit `Location` needs a tag.
        let tag = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let target = Reference::with_tag(r.registry.clone(), r.repository.clone(), tag);
        let action = "pushing manifest to".to_string();
        let content_type = media_type.parse().map_err(|_| RegistryError::UnsupportedMediaType {
            image: r.to_string(),
            what: "manifest to push".into(),
            media_type: media_type.to_string(),
            expected: "manifest or index",
        })?;
        let (target, content_type) = (&target, &content_type);
        let location = with_retries(r, &action, || async move {
            conn.client
                .push_manifest_raw(target, bytes.to_vec(), Clone::clone(content_type))
                .await
                .map_err(Failure::Oci)
        })
        .await?;
        // The registry names what it stored in `Location`; a different digest would mean it rewrote the bytes.
        if let Some((_, stored)) = location.rsplit_once("/manifests/")
            && stored.starts_with("sha256:")
            && stored != digest.as_str()
        {
            return Err(RegistryError::DigestMismatch {
                image: r.to_string(),
                what: "stored manifest".into(),
                expected: digest.to_string(),
                actual: stored.to_string(),
            });
        }
        Ok(())
    }

    /// GETs a manifest or index; returns the digest of its bytes.
    pub(super) async fn fetch_manifest(
        &self,
        conn: &Conn,
        r: &ImageRef,
        target: Reference,
    ) -> Result<(Digest, Vec<u8>), RegistryError> {
        let action = "fetching manifest of".to_string();
        let target = &target;
        let (bytes, _) = within(
            self.opts.timeouts,
            0,
            r,
            &action,
            with_retries(r, &action, || async move {
                conn.client.pull_manifest_raw(target, &conn.auth, MANIFEST_MEDIA_TYPES).await.map_err(Failure::Oci)
            }),
        )
        .await?;
        Ok((Digest::of(&bytes), bytes.to_vec()))
    }
}

/// The fields that tell a manifest from an index (the `mediaType` field is optional in OCI documents).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Probe {
    pub(super) schema_version: Option<u32>,
    pub(super) media_type: Option<String>,
    pub(super) manifests: Option<serde_json::Value>,
    pub(super) config: Option<serde_json::Value>,
}

pub(super) enum Document {
    Manifest(Manifest),
    Index(rbuild_types::oci::Index),
}

pub(super) fn is_manifest_type(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

pub(super) fn is_index_type(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

pub(super) fn probe_document(r: &ImageRef, what: &str, bytes: &[u8]) -> Result<Probe, RegistryError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| RegistryError::BadDocument {
        image: r.to_string(),
        what: what.to_string(),
        source,
    })?;
    let unsupported = |media_type: String| RegistryError::UnsupportedMediaType {
        image: r.to_string(),
        what: what.to_string(),
        media_type,
        expected: "manifest or index",
    };
    if probe.schema_version != Some(2) {
        let version = probe.schema_version.map_or("none".to_string(), |v| v.to_string());
        return Err(unsupported(format!("schemaVersion {version}")));
    }
    match &probe.media_type {
        Some(m) if !is_manifest_type(m) && !is_index_type(m) => Err(unsupported(m.clone())),
        _ => Ok(probe),
    }
}

/// Parses a manifest or index, telling them apart by `mediaType` or, when it is absent, by their fields.
pub(super) fn parse_document(r: &ImageRef, what: &str, bytes: &[u8]) -> Result<Document, RegistryError> {
    let probe = probe_document(r, what, bytes)?;
    let bad = |source| RegistryError::BadDocument { image: r.to_string(), what: what.to_string(), source };
    let is_index = match &probe.media_type {
        Some(m) => is_index_type(m),
        None => probe.manifests.is_some() && probe.config.is_none(),
    };
    if is_index {
        serde_json::from_slice(bytes).map(Document::Index).map_err(bad)
    } else {
        serde_json::from_slice(bytes).map(Document::Manifest).map_err(bad)
    }
}

/// The variant an index entry without one is taken to have (containerd's defaults).
pub(super) fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

pub(super) fn platform_matches(want: &Platform, have: &Platform) -> bool {
    if want.os != have.os || want.architecture != have.architecture {
        return false;
    }
    match (&want.variant, &have.variant) {
        (None, _) => true,
        (Some(w), Some(h)) => w == h,
        (Some(w), None) => default_variant(&want.architecture) == Some(w.as_str()),
    }
}

pub(super) fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// The index entry for `want`: the first whose os/architecture match and whose variant matches if one is asked for.
pub(super) fn select_platform<'a>(
    r: &ImageRef,
    entries: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    entries.iter().find(|e| e.platform.as_ref().is_some_and(|p| platform_matches(want, p))).ok_or_else(|| {
        let available: Vec<String> = entries.iter().filter_map(|e| e.platform.as_ref()).map(platform_string).collect();
        RegistryError::NoMatchingPlatform {
            image: r.to_string(),
            wanted: platform_string(want),
            available: if available.is_empty() { "no platforms".into() } else { available.join(", ") },
        }
    })
}
