//! Where a built image goes besides the store: archives, filesystems, registries, and the metadata file.
//!
//! The work itself is the image crate's; this module maps each [`Output`] to it and reports what happened.

use crate::report::Reporter;
use crate::request::Output;
use anyhow::{Context as _, Result};
use rbuild_cache::{ImageRecord, Store};
use rbuild_image::export::{self, ArchiveKind, ExportImage};
use rbuild_image::layer::{Compression, LayerOptions};
use rbuild_image::local::assemble;
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_types::Digest;
use rbuild_types::oci::{ImageConfig, MEDIA_OCI_MANIFEST};
use std::io::Write;
use std::path::Path;

/// A name the image was pushed under, with the digest of the manifest the registry now holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub name: String,
    pub digest: Digest,
}

/// What `--metadata-file` records, in buildx's keys.
#[derive(Default)]
struct Metadata {
    manifest: Option<(Digest, u64)>,
    names: Vec<String>,
}

fn write_metadata(path: &Path, config: &Digest, m: &Metadata, store: &Store) -> Result<()> {
    let (digest, size) = match &m.manifest {
        Some(d) => d.clone(),
        None => {
            let a = assemble(store, config, Compression::Gzip { level: 6 })?;
            let size = a.manifest_bytes.len() as u64;
            (a.manifest_digest, size)
        }
    };
    write_metadata_document(path, config, &digest, size, MEDIA_OCI_MANIFEST, &m.names)
}

/// The metadata file: the config digest, and the digest of what names the image (a manifest, or an index).
pub(crate) fn write_metadata_document(
    path: &Path,
    config: &Digest,
    digest: &Digest,
    size: u64,
    media_type: &str,
    names: &[String],
) -> Result<()> {
    let mut doc = serde_json::json!({
        "containerimage.config.digest": config.to_string(),
        "containerimage.digest": digest.to_string(),
        "containerimage.descriptor": {
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
        },
    });
    if !names.is_empty() {
        doc["image.name"] = serde_json::Value::String(names.join(","));
    }
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing the metadata file {}", path.display()))
}

/// A file to write to, or stdout for `-` (never a terminal: an archive there is garbage on the screen).
pub(crate) fn create_dest(dest: &Path) -> Result<Box<dyn Write>> {
    if dest == Path::new("-") {
        use std::io::IsTerminal as _;
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!("refusing to write an archive to a terminal: redirect stdout to a file or a pipe");
        }
        return Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, stdout.lock())));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let f = std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
}

pub fn write_archive_to(dest: &Path, tar: bool, images: &[ExportImage], kind: ArchiveKind, mtime: u64) -> Result<()> {
    if !tar {
        return Ok(export::write_layout_dir(dest, images, kind)?);
    }
    let out = create_dest(dest)?;
    let mut out = export::write_archive(out, images, kind, mtime)?;
    out.flush().with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

fn image_config(store: &Store, config: &Digest) -> Result<ImageConfig> {
    serde_json::from_slice(&store.read_blob(config)?).with_context(|| format!("image config {config}"))
}

/// Writes a root filesystem as one tar at `dest` (`type=tar`): `unpack` fills a scratch directory of the store,
/// which is removed afterwards whatever happened; entry times are clamped to `epoch`.
pub(crate) fn write_rootfs_tar(
    store: &Store,
    dest: &Path,
    epoch: Option<i64>,
    unpack: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = store.tmp_dir("rootfs")?;
    let result = (|| -> Result<()> {
        unpack(&dir)?;
        let out = create_dest(dest)?;
        let opts = LayerOptions { clamp_mtime: epoch };
        let mut out = rbuild_image::layer::write_layer_tar(&dir, out, &opts)?;
        out.flush().with_context(|| format!("writing {}", dest.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Sends the built image (config `config`) to every output; writes the metadata file. `epoch` is
/// `SOURCE_DATE_EPOCH`, which also dates archive entries.
pub async fn finish(
    store: &Store,
    client: &RegistryClient,
    config: &Digest,
    outputs: &[Output],
    metadata_file: Option<&Path>,
    epoch: Option<i64>,
    reporter: &dyn Reporter,
) -> Result<Vec<Pushed>> {
    let none = std::collections::BTreeMap::new();
    finish_annotated(store, client, config, outputs, metadata_file, epoch, &none, reporter).await
}

/// [`finish`], with `annotations` (`--annotation`) on the manifests pushed and exported.
#[allow(clippy::too_many_arguments)] // finish's, plus the annotations
pub async fn finish_annotated(
    store: &Store,
    client: &RegistryClient,
    config: &Digest,
    outputs: &[Output],
    metadata_file: Option<&Path>,
    epoch: Option<i64>,
    annotations: &std::collections::BTreeMap<String, String>,
    reporter: &dyn Reporter,
) -> Result<Vec<Pushed>> {
    let mut pushed = Vec::new();
    let mut meta = Metadata::default();
    let mtime = epoch.map_or(0, |e| e.max(0) as u64);
    for output in outputs {
        match output {
            Output::Archive { kind, dest, tar, names, compression } => {
                reporter.message(&format!("exporting to {} ({kind:?})", dest.display()));
                let a = rbuild_image::local::assemble_annotated(store, config, *compression, annotations)?;
                meta.manifest = Some((a.manifest_digest.clone(), a.manifest_bytes.len() as u64));
                let images = [ExportImage { image: &a, names: names.clone() }];
                write_archive_to(dest, *tar, &images, *kind, mtime)?;
            }
            Output::Local { dest } => {
                reporter.message(&format!("exporting the filesystem to {}", dest.display()));
                let cfg = image_config(store, config)?;
                rbuild_image::rootfs::unpack(store, &cfg.rootfs.diff_ids, dest)?;
            }
            Output::Tar { dest } => {
                reporter.message(&format!("exporting the filesystem as a tar to {}", dest.display()));
                let cfg = image_config(store, config)?;
                write_rootfs_tar(store, dest, epoch, |dir| {
                    Ok(rbuild_image::rootfs::unpack(store, &cfg.rootfs.diff_ids, dir)?)
                })?;
            }
            Output::Image { names, push, compression } => {
                for name in names {
                    let r = ImageRef::parse(name)?;
                    store.set_tag(&ImageRecord {
                        name: r.to_string(),
                        config: config.clone(),
                        manifest: None,
                        platforms: Vec::new(),
                    })?;
                    if !meta.names.contains(&r.to_string()) {
                        meta.names.push(r.to_string());
                    }
                    if *push {
                        reporter.message(&format!("pushing {r}"));
                        let report =
                            rbuild_image::local::push_annotated(client, store, config, &r, *compression, annotations)
                                .await
                                .with_context(|| format!("pushing {r}"))?;
                        reporter.message(&format!(
                            "pushed {r}: {} uploaded, {} mounted, {} already there",
                            report.uploaded.len(),
                            report.mounted.len(),
                            report.skipped.len()
                        ));
                        let size = store.read_blob(&report.digest).map(|b| b.len() as u64).unwrap_or(0);
                        meta.manifest = Some((report.digest.clone(), size));
                        store.set_tag(&ImageRecord {
                            name: r.to_string(),
                            config: config.clone(),
                            manifest: Some(report.digest.clone()),
                            platforms: Vec::new(),
                        })?;
                        pushed.push(Pushed { name: r.to_string(), digest: report.digest.clone() });
                    }
                }
            }
        }
    }
    if let Some(path) = metadata_file {
        write_metadata(path, config, &meta, store)?;
    }
    Ok(pushed)
}
