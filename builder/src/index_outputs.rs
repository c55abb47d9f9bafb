//! Where a multi-platform image goes: an index pushed with all its manifests, an OCI layout naming the index,
//! and filesystems in one directory per platform (`linux_amd64/`, `linux_arm_v7/`), as buildx writes them.

use crate::outputs::{Pushed, create_dest, write_metadata_document};
use crate::report::Reporter;
use crate::request::Output;
use anyhow::{Context as _, Result, bail};
use rbuild_cache::{ImageRecord, Store};
use rbuild_image::export::{self, ArchiveKind, ExportImage, ExportIndex};
use rbuild_image::index::{Attestation, IndexAnnotations, assemble_index, config_platform, push_index_with};
use rbuild_image::layer::Compression;
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_types::Digest;
use rbuild_types::oci::{ImageConfig, MEDIA_OCI_INDEX};
use std::io::Write;
use std::path::Path;

/// Refuses outputs that cannot hold `platforms` images before anything is built: a docker archive holds one
/// image per name, as `docker load` reads it.
pub(crate) fn check(outputs: &[Output], platforms: usize) -> Result<()> {
    if platforms < 2 {
        return Ok(());
    }
    for o in outputs {
        if let Output::Archive { kind: ArchiveKind::Docker, .. } = o {
            bail!(
                "-o type=docker cannot hold a multi-platform image ({platforms} platforms): use -o type=oci, \
                 --push, or build one --platform at a time"
            );
        }
    }
    Ok(())
}

/// The directory buildx names a platform's files by, in the normalized form: `linux/arm/v7` → `linux_arm_v7`,
/// `linux/arm64/v8` → `linux_arm64`.
fn platform_dir(store: &Store, config: &Digest) -> Result<String> {
    let p = config_platform(&store.read_blob(config)?, config)?;
    Ok(rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(&p)).replace('/', "_"))
}

/// Unpacks each platform's filesystem into `dest/<platform>/`.
fn unpack_all(store: &Store, configs: &[Digest], dest: &Path) -> Result<()> {
    for config in configs {
        let cfg: ImageConfig =
            serde_json::from_slice(&store.read_blob(config)?).with_context(|| format!("image config {config}"))?;
        let dir = dest.join(platform_dir(store, config)?);
        rbuild_image::rootfs::unpack(store, &cfg.rootfs.diff_ids, &dir)?;
    }
    Ok(())
}

/// What a build wants of its index besides the outputs.
pub struct Wanted<'a> {
    /// Write the digests here, in buildx's keys.
    pub metadata_file: Option<&'a Path>,
    /// The index digest, even if no output computes it.
    pub index_digest: bool,
    /// `--annotation`s on the index, its entries and the manifests.
    pub annotations: &'a IndexAnnotations,
}

/// What [`finish`] did.
pub struct Finished {
    pub pushed: Vec<Pushed>,
    /// The index digest, when an output or [`Wanted`] needed it.
    pub index: Option<Digest>,
}

/// Sends the multi-platform image (one config per platform) to every output, with `attestations` (by platform;
/// empty for none) in its index; writes the metadata file.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    store: &Store,
    client: &RegistryClient,
    configs: &[Digest],
    attestations: &[Vec<Attestation>],
    outputs: &[Output],
    wanted: Wanted<'_>,
    epoch: Option<i64>,
    reporter: &dyn Reporter,
) -> Result<Finished> {
    check(outputs, configs.len())?;
    let mut pushed = Vec::new();
    let mut index_desc: Option<(Digest, u64)> = None;
    let mut names = Vec::new();
    let mtime = epoch.map_or(0, |e| e.max(0) as u64);
    for output in outputs {
        match output {
            Output::Archive { dest, tar, names: archive_names, compression, .. } => {
                reporter.message(&format!("exporting to {} (Oci, {} platforms)", dest.display(), configs.len()));
                let assembled = assemble_index(store, configs, *compression, attestations, wanted.annotations)?;
                let bytes = &assembled.bytes;
                index_desc = Some((Digest::of(bytes), bytes.len() as u64));
                let parts: Vec<ExportImage> = assembled
                    .images
                    .iter()
                    .chain(&assembled.attestations)
                    .map(|a| ExportImage { image: a, names: vec![] })
                    .collect();
                let annotations = wanted.annotations.index_descriptor.clone();
                let index = ExportIndex { bytes, names: archive_names.clone(), annotations };
                if *tar {
                    let out = create_dest(dest)?;
                    let mut out = export::write_index_archive(out, &parts, &index, mtime)?;
                    out.flush().with_context(|| format!("writing {}", dest.display()))?;
                } else {
                    export::write_index_layout_dir(dest, &parts, &index)?;
                }
            }
            Output::Local { dest } => {
                reporter.message(&format!("exporting the filesystems to {}", dest.display()));
                unpack_all(store, configs, dest)?;
            }
            Output::Tar { dest } => {
                reporter.message(&format!("exporting the filesystems as a tar to {}", dest.display()));
                crate::outputs::write_rootfs_tar(store, dest, epoch, |dir| unpack_all(store, configs, dir))?;
            }
            Output::Image { names: image_names, push, compression } => {
                for name in image_names {
                    let r = ImageRef::parse(name)?;
                    let mut record = ImageRecord {
                        name: r.to_string(),
                        config: configs[0].clone(),
                        manifest: None,
                        // One platform (an index only for its attestations) is kept as a plain image.
                        platforms: if configs.len() > 1 { configs.to_vec() } else { Vec::new() },
                    };
                    store.set_tag(&record)?;
                    if !names.contains(&r.to_string()) {
                        names.push(r.to_string());
                    }
                    if !*push {
                        continue;
                    }
                    reporter.message(&format!("pushing {r} ({} platforms)", configs.len()));
                    let report =
                        push_index_with(client, store, configs, &r, *compression, attestations, wanted.annotations)
                            .await
                            .with_context(|| format!("pushing {r}"))?;
                    let count = |f: fn(&rbuild_image::registry::PushReport) -> usize| {
                        report.images.iter().map(f).sum::<usize>()
                    };
                    reporter.message(&format!(
                        "pushed {r}: an index of {} manifests, {} blobs uploaded, {} mounted, {} already there",
                        report.images.len(),
                        count(|p| p.uploaded.len()),
                        count(|p| p.mounted.len()),
                        count(|p| p.skipped.len()),
                    ));
                    let size = store.read_blob(&report.digest).map(|b| b.len() as u64).unwrap_or(0);
                    index_desc = Some((report.digest.clone(), size));
                    record.manifest = Some(report.digest.clone());
                    store.set_tag(&record)?;
                    pushed.push(Pushed { name: r.to_string(), digest: report.digest.clone() });
                }
            }
        }
    }
    if index_desc.is_none() && (wanted.metadata_file.is_some() || wanted.index_digest) {
        // The index as it would be pushed.
        let gzip = Compression::Gzip { level: 6 };
        let bytes = assemble_index(store, configs, gzip, attestations, wanted.annotations)?.bytes;
        index_desc = Some((Digest::of(&bytes), bytes.len() as u64));
    }
    if let (Some(path), Some((digest, size))) = (wanted.metadata_file, &index_desc) {
        write_metadata_document(path, &configs[0], digest, *size, MEDIA_OCI_INDEX, &names)?;
    }
    Ok(Finished { pushed, index: index_desc.map(|(d, _)| d) })
}
