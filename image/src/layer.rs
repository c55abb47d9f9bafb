//! Layer tars: a snapshot directory to a layer tar, and a layer tar back to a snapshot directory.
//!
//! Snapshots are kept in overlayfs upperdir format (a deleted path is a 0:0 character device, an opaque directory
//! carries `trusted.overlay.opaque=y`) so that a stack of them mounts directly as lowerdirs. Layer tars are in the
//! OCI/Docker format (`.wh.<name>` and `.wh..wh..opq` files). This module is the only place that translates
//! between the two, in both directions, so a round trip is byte-identical and the diff_id of a layer can be trusted
//! as a content identity.
//!
//! The tar bytes are ours, not the `tar` crate's: the walk is sorted (siblings by byte order, parents before
//! children, like BuildKit), names longer than a ustar field go into PAX records (what Go's `archive/tar`, and so
//! Docker and BuildKit, emit), and nothing that varies between machines (user names, atime, ctime) is written. The
//! `tar` crate only lays out header blocks and parses archives.
//!
//! Extraction treats the tar as hostile: names are cleaned lexically and must stay inside the destination, no
//! symlink inside the destination is ever followed (a parent component that is not a real directory is an error),
//! hardlinks may only point at entries of the same layer, and `trusted.overlay.*` xattrs in a tar are dropped
//! because they would change how overlayfs reads the snapshot.
//!
//! `ADD <archive>` uses the same extractor ([`extract_archive`] with [`ExtractMode::Add`]): one compression sniffer,
//! one name cleaner, one way to make nodes and set metadata. Only the rules that BuildKit's `ADD` really applies
//! differently are switched by the mode; they are listed on [`ExtractMode`].

mod decompress;
mod extract;
mod gzip;
#[cfg(test)]
mod tests;
mod write;

pub use decompress::is_tar_archive;
pub use extract::{ExtractMode, ExtractOptions};
use rbuild_cache::contenthash::ContentHashError;
use rbuild_types::{Digest, DigestWriter};
use sha2::{Digest as _, Sha256};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip at zlib level 0..=9.
    Gzip { level: u32 },
    /// zstd at level 1..=22 (the levels `zstd -N` accepts; 3 is its default).
    Zstd { level: i32 },
    /// A plain tar.
    None,
}

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn oci_media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => rbuild_types::oci::MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd { .. } => rbuild_types::oci::MEDIA_OCI_LAYER_ZSTD,
            Compression::None => rbuild_types::oci::MEDIA_OCI_LAYER_TAR,
        }
    }
}

/// Options that change the bytes of a layer tar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// `SOURCE_DATE_EPOCH`: an mtime later than this (seconds since the Unix epoch) is written as this.
    pub clamp_mtime: Option<i64>,
}

/// The identities of one written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub diff_size: u64,
}

/// Everything that can go wrong writing or extracting a layer; each variant names the path it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    #[error("cannot read {path} in the snapshot")]
    ReadSnapshot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} carries the overlayfs xattr {xattr}, so its content is not in the snapshot \
         (the overlay must be mounted with metacopy=off and redirect_dir=off)"
    )]
    OverlayFeature { path: PathBuf, xattr: String },
    #[error("{path} changed size while it was being archived (expected {expected} bytes)")]
    Changed { path: PathBuf, expected: u64 },
    #[error("cannot write the tar entry for {path}")]
    WriteTar {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("compression level {level} for the layer of {path} is out of range ({range})")]
    CompressionLevel { path: PathBuf, level: i64, range: &'static str },
    #[error("cannot read the archive being extracted into {dest}")]
    ReadLayer {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {entry:?} is rejected: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    #[error("archive entry {entry:?} is a hardlink to {target:?}, which is rejected: {reason}")]
    UnsafeLink { entry: String, target: String, reason: &'static str },
    #[error("cannot resolve where archive entry {entry:?} goes")]
    Resolve {
        entry: String,
        /// Boxed: the resolver's error is large and this one is rare.
        #[source]
        source: Box<ContentHashError>,
    },
    #[error("archive entry {entry:?} has unsupported tar type {kind:?}")]
    UnsupportedEntry { entry: String, kind: char },
    #[error("archive entry {entry:?} has an invalid {field}")]
    InvalidHeader { entry: String, field: &'static str },
    #[error("extracting an archive")]
    Extract(#[source] rbuild_types::IoError),
}

/// Writes the snapshot `dir` as an uncompressed layer tar to `out` and returns `out`.
pub fn write_layer_tar<W: Write>(dir: &Path, out: W, opts: &LayerOptions) -> Result<W, LayerError> {
    // A snapshot's files may belong to subordinate ids, and their owners go in the tar.
    rbuild_types::ids::wait();
    let buffered = BufWriter::with_capacity(write::BUFFER, out);
    let buffered = write::write_tar(dir, buffered, opts)?;
    buffered.into_inner().map_err(|e| LayerError::WriteTar { path: dir.to_path_buf(), source: e.into_error() })
}

/// The diff_id (sha256 of the uncompressed tar) of the snapshot `dir` and the tar's size, without keeping the tar.
pub fn diff_id(dir: &Path, opts: &LayerOptions) -> Result<(Digest, u64), LayerError> {
    let hashed = write_layer_tar(dir, DigestWriter::new(io::sink()), opts)?;
    let (digest, size, _) = hashed.finish();
    Ok((digest, size))
}

/// Writes the snapshot `dir` as a compressed layer blob to `out`.
pub fn write_compressed_layer<W: Write + Send>(
    dir: &Path,
    out: W,
    compression: Compression,
    opts: &LayerOptions,
) -> Result<LayerDigests, LayerError> {
    let finish_err = |source| LayerError::WriteTar { path: dir.to_path_buf(), source };
    let blob = DigestWriter::new(out);
    match compression {
        Compression::None => {
            let mut blob = write_layer_tar(dir, blob, opts)?;
            blob.flush().map_err(finish_err)?;
            let (digest, size, _) = blob.finish();
            Ok(LayerDigests { diff_id: digest.clone(), diff_size: size, digest, size })
        }
        Compression::Gzip { level } => {
            if level > 9 {
                return Err(LayerError::CompressionLevel {
                    path: dir.to_path_buf(),
                    level: level.into(),
                    range: "0..=9",
                });
            }
            // The tar is written on this thread while its blocks are deflated on all cores (gzip.rs).
            std::thread::scope(|scope| {
                let gz = gzip::ParGzip::new(blob, level, scope).map_err(finish_err)?;
                let tar = write_layer_tar(dir, DigestWriter::new(gz), opts)?;
                let (diff_id, diff_size, gz) = tar.finish();
                let mut blob = gz.finish().map_err(finish_err)?;
                blob.flush().map_err(finish_err)?;
                let (digest, size, _) = blob.finish();
                Ok(LayerDigests { digest, size, diff_id, diff_size })
            })
        }
        Compression::Zstd { level } => {
            if !(1..=22).contains(&level) {
                return Err(LayerError::CompressionLevel {
                    path: dir.to_path_buf(),
                    level: level.into(),
                    range: "1..=22",
                });
            }
            let zst = zstd::stream::write::Encoder::new(blob, level).map_err(finish_err)?;
            let tar = write_layer_tar(dir, DigestWriter::new(zst), opts)?;
            let (diff_id, diff_size, zst) = tar.finish();
            let mut blob = zst.finish().map_err(finish_err)?;
            blob.flush().map_err(finish_err)?;
            let (digest, size, _) = blob.finish();
            Ok(LayerDigests { digest, size, diff_id, diff_size })
        }
    }
}

/// Applies a layer tar (plain, gzip, bzip2, xz or zstd, detected by its magic bytes) into `dest`, an empty directory
/// that becomes a snapshot. Returns the diff_id of the uncompressed stream, to be checked against the image config.
pub fn extract_layer<R: io::Read>(reader: R, dest: &Path) -> Result<Digest, LayerError> {
    // Extracting chowns to the layer's ids.
    rbuild_types::ids::wait();
    let mut hasher = Sha256::new();
    extract::extract(reader, dest, &ExtractOptions::layer(), Some(&mut hasher))?;
    Ok(Digest::from_sha256(hasher.finalize().into()))
}

/// Extracts a tar archive (compressed or not, as [`extract_layer`]) into the directory `dest` with the rules of
/// `opts`; [`ExtractMode::Add`] is what `ADD <archive>` does.
pub fn extract_archive<R: io::Read>(reader: R, dest: &Path, opts: &ExtractOptions) -> Result<(), LayerError> {
    extract::extract(reader, dest, opts, None)
}
