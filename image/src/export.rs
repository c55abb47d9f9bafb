//! Images out of the store as files other tools read, and back in.
//!
//! One writer makes both archive kinds, because Docker (since 25) and BuildKit write one format that is both: an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`) plus Docker's `manifest.json` naming the config
//! and layer blobs by path. `skopeo`/`umoci` read the first, `docker load` the second. The archive's own tar
//! headers are fixed (root-owned, fixed modes, one mtime), so the same image always gives the same archive bytes.
//! Blobs are streamed from the store, never held in memory.
//!
//! Loading accepts either kind (and Docker's older `<id>/layer.tar` archives, since `manifest.json` names paths):
//! every file is streamed into the store under its digest (verified when its name claims one), then the
//! manifests are followed, layers unpacked to snapshots and checked against the config's diff_ids.

use crate::local::Assembled;
use crate::rootfs::RootfsError;
use rbuild_cache::{ImageRecord, LayerBlob, Store, StoreError};
use rbuild_types::oci::{
    Descriptor, ImageConfig, Index, MEDIA_DOCKER_LAYER_GZIP, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST, Manifest, Platform, to_canonical_json,
};
use rbuild_types::{Digest, DigestWriter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Annotation with the full image name (containerd, BuildKit, Docker).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's reference annotation: the tag, which `umoci --image dir:TAG` and `skopeo oci:dir:TAG` select by.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Metadata files of an archive are small; anything bigger is not one.
const MAX_METADATA: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Io(#[from] rbuild_types::IoError),
    #[error("writing the archive")]
    Write(#[source] io::Error),
    #[error("reading the archive {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is neither an OCI layout nor a docker archive (no index.json or manifest.json)", path.display())]
    NotAnArchive { path: PathBuf },
    #[error("{name} in the archive is not valid")]
    BadDocument {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{name} in the archive has digest {actual}")]
    DigestMismatch { name: String, actual: Digest },
    #[error("the archive refers to {name}, which it does not contain")]
    MissingEntry { name: String },
    #[error("{name} in the archive is {size} bytes, more than the {MAX_METADATA} allowed for it")]
    TooLarge { name: String, size: u64 },
    #[error("image {image}: {layers} layers but {diff_ids} diff_ids in its config")]
    LayerCount { image: String, layers: usize, diff_ids: usize },
    #[error("the archive has no image for platform {wanted}")]
    NoPlatform { wanted: String },
    #[error("layer {path} of the archive")]
    Layer {
        path: String,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("layer {path} of the archive has diff_id {actual}, but its image config says {expected}")]
    DiffIdMismatch { path: String, expected: Digest, actual: Digest },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io(rbuild_types::IoError::new(op, path, source))
}

/// Which archive flavour to write. Both contain the OCI layout; `Docker` adds `manifest.json` and names images
/// the way `docker load` expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Oci,
    Docker,
}

/// One image to put in an archive: its assembled documents and the names it goes by (full references).
pub struct ExportImage<'a> {
    pub image: &'a Assembled,
    pub names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The tag of a full reference (`reg/repo:tag` → `tag`), if it has one.
fn tag_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split('@').next().unwrap_or(last);
    last.split_once(':').map(|(_, t)| t)
}

/// Docker's short form of a name: `docker.io/library/x:t` → `x:t`, `docker.io/u/x:t` → `u/x:t`.
pub fn familiar_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("docker.io/") {
        return rest.strip_prefix("library/").filter(|r| !r.contains('/')).unwrap_or(rest).to_string();
    }
    name.to_string()
}

/// A multi-platform image for an OCI layout: the image index of its platforms' manifests, and its names.
/// `index.json` then names the index (as buildx writes it), and the index lists the platforms' manifests.
pub struct ExportIndex<'a> {
    pub bytes: &'a [u8],
    pub names: Vec<String>,
    /// On the index's entry in `index.json` (buildx's `index-descriptor:` annotations).
    pub annotations: BTreeMap<String, String>,
}

fn index_for(images: &[ExportImage], kind: ArchiveKind, top: Option<&ExportIndex>) -> Vec<u8> {
    // What `index.json` lists: each image's manifest under its names, or (a multi-platform image) the index.
    let entries: Vec<(Descriptor, &[String])> = match top {
        Some(t) => {
            let desc = Descriptor {
                media_type: MEDIA_OCI_INDEX.into(),
                digest: Digest::of(t.bytes),
                size: t.bytes.len() as u64,
                platform: None,
                annotations: (!t.annotations.is_empty()).then(|| t.annotations.clone()),
            };
            vec![(desc, t.names.as_slice())]
        }
        None => images
            .iter()
            .map(|img| {
                let desc = Descriptor {
                    media_type: MEDIA_OCI_MANIFEST.into(),
                    digest: img.image.manifest_digest.clone(),
                    size: img.image.manifest_bytes.len() as u64,
                    platform: None,
                    annotations: None,
                };
                (desc, img.names.as_slice())
            })
            .collect(),
    };
    let mut manifests = Vec::new();
    for (desc, names) in entries {
        if names.is_empty() {
            manifests.push(desc.clone());
        }
        for name in names {
            let mut a = desc.annotations.clone().unwrap_or_default();
            a.insert(ANNOTATION_IMAGE_NAME.to_string(), name.clone());
            let ref_name = match kind {
                ArchiveKind::Oci => tag_of(name).unwrap_or(name).to_string(),
                ArchiveKind::Docker => name.clone(),
            };
            a.insert(ANNOTATION_REF_NAME.to_string(), ref_name);
            manifests.push(Descriptor { annotations: Some(a), ..desc.clone() });
        }
    }
    let index = Index { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.into()), manifests, annotations: None };
    to_canonical_json(&index)
}

fn docker_manifest(images: &[ExportImage]) -> Vec<u8> {
    let entries: Vec<DockerManifestEntry> = images
        .iter()
        .map(|img| {
            let tags: Vec<String> = img
                .names
                .iter()
                .filter(|n| tag_of(n).is_some() && !n.contains('@'))
                .map(|n| familiar_name(n))
                .collect();
            DockerManifestEntry {
                config: blob_name(&rbuild_types::Digest::of(&img.image.config_bytes)),
                repo_tags: if tags.is_empty() { None } else { Some(tags) },
                layers: img.image.layers.iter().map(|(d, _)| blob_name(&d.digest)).collect(),
            }
        })
        .collect();
    serde_json::to_vec(&entries).unwrap_or_default()
}

/// The files of the layout, in the order they are written: metadata, then each blob once.
enum Item<'a> {
    Bytes(String, Vec<u8>),
    Borrowed(String, &'a [u8]),
    File(String, &'a Path),
}

fn items<'a>(images: &'a [ExportImage<'a>], kind: ArchiveKind, top: Option<&'a ExportIndex<'a>>) -> Vec<Item<'a>> {
    let mut out = vec![Item::Bytes("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
    out.push(Item::Bytes("index.json".into(), index_for(images, kind, top)));
    if kind == ArchiveKind::Docker {
        out.push(Item::Bytes("manifest.json".into(), docker_manifest(images)));
    }
    let mut seen = BTreeSet::new();
    if let Some(t) = top {
        seen.insert(Digest::of(t.bytes));
        out.push(Item::Borrowed(blob_name(&Digest::of(t.bytes)), t.bytes));
    }
    for img in images {
        let a = img.image;
        if seen.insert(a.manifest_digest.clone()) {
            out.push(Item::Borrowed(blob_name(&a.manifest_digest), &a.manifest_bytes));
        }
        let config = Digest::of(&a.config_bytes);
        if seen.insert(config.clone()) {
            out.push(Item::Borrowed(blob_name(&config), &a.config_bytes));
        }
        for (desc, path) in &a.layers {
            if seen.insert(desc.digest.clone()) {
                out.push(Item::File(blob_name(&desc.digest), path));
            }
        }
    }
    out
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes the images as a tar archive (`kind` decides whether `manifest.json` is included). `mtime` is the time
/// stamped on every entry (`SOURCE_DATE_EPOCH`, or 0).
pub fn write_archive<W: Write>(
    out: W,
    images: &[ExportImage],
    kind: ArchiveKind,
    mtime: u64,
) -> Result<W, ExportError> {
    write_archive_with(out, images, kind, None, mtime)
}

/// Writes a multi-platform image (`images` are its platforms', unnamed; `index` names it) as an OCI layout tar.
pub fn write_index_archive<W: Write>(
    out: W,
    images: &[ExportImage],
    index: &ExportIndex,
    mtime: u64,
) -> Result<W, ExportError> {
    write_archive_with(out, images, ArchiveKind::Oci, Some(index), mtime)
}

/// Writes a multi-platform image as an OCI layout directory; see [`write_index_archive`].
pub fn write_index_layout_dir(dir: &Path, images: &[ExportImage], index: &ExportIndex) -> Result<(), ExportError> {
    write_layout_dir_with(dir, images, ArchiveKind::Oci, Some(index))
}

fn write_archive_with<W: Write>(
    out: W,
    images: &[ExportImage],
    kind: ArchiveKind,
    top: Option<&ExportIndex>,
    mtime: u64,
) -> Result<W, ExportError> {
    let mut tar = tar::Builder::new(out);
    let w = ExportError::Write;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
        tar.append_data(&mut h, dir, io::empty()).map_err(w)?;
    }
    for item in items(images, kind, top) {
        match item {
            Item::Bytes(name, bytes) => {
                let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, mtime);
                tar.append_data(&mut h, &name, bytes.as_slice()).map_err(w)?;
            }
            Item::Borrowed(name, bytes) => {
                let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, mtime);
                tar.append_data(&mut h, &name, bytes).map_err(w)?;
            }
            Item::File(name, path) => {
                let file = fs::File::open(path).map_err(io_err("open", path))?;
                let size = file.metadata().map_err(io_err("stat", path))?.len();
                let mut h = header(tar::EntryType::Regular, 0o644, size, mtime);
                tar.append_data(&mut h, &name, io::BufReader::with_capacity(1 << 20, file)).map_err(w)?;
            }
        }
    }
    tar.into_inner().map_err(w)
}

/// Writes the images as an OCI layout directory (`tar=false`); existing blobs in `dir` are kept.
pub fn write_layout_dir(dir: &Path, images: &[ExportImage], kind: ArchiveKind) -> Result<(), ExportError> {
    write_layout_dir_with(dir, images, kind, None)
}

fn write_layout_dir_with(
    dir: &Path,
    images: &[ExportImage],
    kind: ArchiveKind,
    top: Option<&ExportIndex>,
) -> Result<(), ExportError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    for item in items(images, kind, top) {
        let (name, path_to_copy, bytes) = match &item {
            Item::Bytes(n, b) => (n, None, Some(b.as_slice())),
            Item::Borrowed(n, b) => (n, None, Some(*b)),
            Item::File(n, p) => (n, Some(*p), None),
        };
        let dest = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        match (path_to_copy, bytes) {
            (Some(p), _) => {
                if dest.exists() {
                    continue;
                }
                fs::copy(p, &tmp).map_err(io_err("copy", p))?;
            }
            (None, Some(b)) => fs::write(&tmp, b).map_err(io_err("write", &tmp))?,
            (None, None) => continue,
        }
        fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
    }
    Ok(())
}

/// An image loaded into the store.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Digest,
    pub manifest: Option<Digest>,
    pub names: Vec<String>,
}

/// Loads an OCI archive or docker archive from `reader` into the store and tags its named images. `platform`
/// picks from a multi-platform index.
pub fn load<R: Read>(store: &Store, reader: R, what: &Path, platform: &Platform) -> Result<Vec<Loaded>, ExportError> {
    let read_err = |source| ExportError::Read { path: what.to_path_buf(), source };
    let mut archive = tar::Archive::new(reader);
    // Path in the archive → digest of its content (every regular file goes to the store).
    let mut files: BTreeMap<String, Digest> = BTreeMap::new();
    let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(read_err)?.to_string_lossy().trim_start_matches("./").to_string();
        if matches!(name.as_str(), "index.json" | "manifest.json" | "oci-layout" | "repositories") {
            let size = entry.header().size().map_err(read_err)?;
            if size > MAX_METADATA {
                return Err(ExportError::TooLarge { name, size });
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(read_err)?;
            metadata.insert(name, bytes);
            continue;
        }
        let tmp = store.tmp_path("load");
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut w = DigestWriter::new(io::BufWriter::new(file));
        let copied = io::copy(&mut entry, &mut w).map_err(read_err).and_then(|_| w.flush().map_err(read_err));
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let (digest, _, _) = w.finish();
        if let Some(claimed) = name.strip_prefix("blobs/sha256/")
            && claimed != digest.hex()
        {
            let _ = fs::remove_file(&tmp);
            return Err(ExportError::DigestMismatch { name, actual: digest });
        }
        if store.has_blob(&digest) {
            let _ = fs::remove_file(&tmp);
        } else {
            store.import_blob(&tmp, &digest)?;
        }
        files.insert(name, digest);
    }
    let doc = |name: &str| -> Result<Option<serde_json::Value>, ExportError> {
        metadata
            .get(name)
            .map(|b| serde_json::from_slice(b).map_err(|source| ExportError::BadDocument { name: name.into(), source }))
            .transpose()
    };
    let by_path = |name: &str| -> Result<Digest, ExportError> {
        files.get(name).cloned().ok_or_else(|| ExportError::MissingEntry { name: name.into() })
    };
    let mut loaded = Vec::new();
    if let Some(manifest) = doc("manifest.json")? {
        let entries: Vec<DockerManifestEntry> = serde_json::from_value(manifest)
            .map_err(|source| ExportError::BadDocument { name: "manifest.json".into(), source })?;
        for e in entries {
            let config = by_path(&e.config)?;
            let layers =
                e.layers.iter().map(|l| Ok((l.clone(), by_path(l)?, None))).collect::<Result<Vec<_>, ExportError>>()?;
            let names = e.repo_tags.unwrap_or_default();
            let names = names
                .iter()
                .filter_map(|n| crate::registry::ImageRef::parse(n).ok().map(|r| r.to_string()))
                .collect::<Vec<_>>();
            finish_image(store, &config, &layers)?;
            loaded.push(Loaded { config, manifest: None, names });
        }
    } else if let Some(index) = doc("index.json")? {
        let index: Index = serde_json::from_value(index)
            .map_err(|source| ExportError::BadDocument { name: "index.json".into(), source })?;
        for desc in &index.manifests {
            let name = desc.annotations.as_ref().and_then(|a| a.get(ANNOTATION_IMAGE_NAME)).cloned();
            let manifest_digest = pick_manifest(store, desc, platform)?;
            let manifest_bytes = store.read_blob(&manifest_digest)?;
            let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
                .map_err(|source| ExportError::BadDocument { name: blob_name(&manifest_digest), source })?;
            let layers = manifest
                .layers
                .iter()
                .map(|l| Ok((blob_name(&l.digest), by_path(&blob_name(&l.digest))?, Some(l.media_type.clone()))))
                .collect::<Result<Vec<_>, ExportError>>()?;
            by_path(&blob_name(&manifest.config.digest))?;
            finish_image(store, &manifest.config.digest, &layers)?;
            let names = name.and_then(|n| crate::registry::ImageRef::parse(&n).ok()).map(|r| vec![r.to_string()]);
            loaded.push(Loaded {
                config: manifest.config.digest.clone(),
                manifest: Some(manifest_digest),
                names: names.unwrap_or_default(),
            });
        }
    } else {
        return Err(ExportError::NotAnArchive { path: what.to_path_buf() });
    }
    for l in &loaded {
        for name in &l.names {
            store.set_tag(&ImageRecord {
                name: name.clone(),
                config: l.config.clone(),
                manifest: l.manifest.clone(),
                platforms: Vec::new(),
            })?;
        }
    }
    Ok(loaded)
}

/// The single-platform manifest an index entry stands for (following nested indexes).
fn pick_manifest(store: &Store, desc: &Descriptor, platform: &Platform) -> Result<Digest, ExportError> {
    let bytes = store.read_blob(&desc.digest)?;
    let probe: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|source| ExportError::BadDocument { name: blob_name(&desc.digest), source })?;
    if probe.get("manifests").is_none() {
        return Ok(desc.digest.clone());
    }
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|source| ExportError::BadDocument { name: blob_name(&desc.digest), source })?;
    let entry = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_none_or(|p| p.os == platform.os && p.architecture == platform.architecture))
        .ok_or_else(|| ExportError::NoPlatform { wanted: format!("{}/{}", platform.os, platform.architecture) })?;
    pick_manifest(store, entry, platform)
}

/// The media type of a layer blob, from its first bytes.
fn sniff_media_type(store: &Store, digest: &Digest) -> Result<&'static str, ExportError> {
    let path = store.blob_path(digest);
    let mut head = [0u8; 4];
    let mut f = fs::File::open(&path).map_err(io_err("open", &path))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(io_err("read", &path))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        MEDIA_OCI_LAYER_GZIP
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        MEDIA_OCI_LAYER_ZSTD
    } else {
        MEDIA_OCI_LAYER_TAR
    })
}

/// Records the layer blobs of a loaded image and makes sure each has a snapshot with the config's diff_id.
fn finish_image(
    store: &Store,
    config_digest: &Digest,
    layers: &[(String, Digest, Option<String>)],
) -> Result<(), ExportError> {
    let bytes = store.read_blob(config_digest)?;
    let config: ImageConfig = serde_json::from_slice(&bytes)
        .map_err(|source| ExportError::BadDocument { name: blob_name(config_digest), source })?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ExportError::LayerCount {
            image: config_digest.to_string(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for ((path, digest, media_type), diff_id) in layers.iter().zip(diff_ids) {
        let media_type = match media_type {
            Some(m) if m != MEDIA_DOCKER_LAYER_GZIP => m.clone(),
            _ => sniff_media_type(store, digest)?.to_string(),
        };
        let size = fs::metadata(store.blob_path(digest)).map_err(io_err("stat", &store.blob_path(digest)))?.len();
        if !store.has_snapshot(diff_id) {
            let dest = store.tmp_dir("extract")?;
            let blob = store.blob_path(digest);
            let file = fs::File::open(&blob).map_err(io_err("open", &blob))?;
            let actual = crate::layer::extract_layer(io::BufReader::new(file), &dest)
                .map_err(|source| ExportError::Layer { path: path.clone(), source })?;
            if &actual != diff_id {
                let _ = fs::remove_dir_all(&dest);
                return Err(ExportError::DiffIdMismatch { path: path.clone(), expected: diff_id.clone(), actual });
            }
            store.mark_unpacked(diff_id)?;
            store.commit_snapshot(&dest, diff_id)?;
        }
        store.add_layer_blob(diff_id, LayerBlob { media_type, digest: digest.clone(), size })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert_eq!(familiar_name("docker.io/library/busybox:latest"), "busybox:latest");
        assert_eq!(familiar_name("docker.io/user/app:1"), "user/app:1");
        assert_eq!(familiar_name("127.0.0.1:5000/a/b:2"), "127.0.0.1:5000/a/b:2");
        assert_eq!(tag_of("127.0.0.1:5000/a/b:2"), Some("2"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b"), None);
        assert_eq!(tag_of("reg/a@sha256:abc"), None);
    }
}
