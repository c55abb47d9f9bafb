//! Blob transfer: pushing images' blobs (existing, mounted or uploaded), streaming downloads, verifying digest and size.

use super::*;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::errors::{DigestError, OciDistributionError};
use rbuild_types::Digest;
use rbuild_types::oci::{Descriptor, MEDIA_OCI_MANIFEST, Manifest};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Size of the pieces a layer file is read in while it streams as one upload body.
const UPLOAD_CHUNK: usize = 1024 * 1024;
/// Layers uploaded at the same time.
pub(super) const PARALLEL_UPLOADS: usize = 3;

impl RegistryClient {
    /// Downloads one blob to `dest`, streaming, verifying digest and size; on any failure `dest` is removed.
    pub async fn pull_blob(&self, r: &ImageRef, desc: &Descriptor, dest: &Path) -> Result<(), RegistryError> {
        let conn = self.conn(r).await?;
        let target = oci_ref(r);
        let action = format!("pulling blob {} from", desc.digest);
        let transfer = with_retries(r, &action, || download_to_file(&conn, r, &target, desc, dest));
        let result = within(self.opts.timeouts, desc.size, r, &action, transfer).await;
        if result.is_err() {
            // Best effort: the file may not exist if the request failed before any byte arrived.
            let _ = tokio::fs::remove_file(dest).await;
        }
        result.map_err(|e| self.auth_context(e))
    }

    /// Downloads one blob and hands its bytes, as they arrive, to the channel `attempt` returns; each attempt (a
    /// transfer that breaks midway is retried from the start) asks for a fresh one. The size is bounded by the
    /// descriptor while the bytes flow and the digest is checked at the end (by `oci-client`'s verifying stream):
    /// what the receiver made of the bytes counts only once this returns `Ok`. A receiver that hung up costs the
    /// download nothing: its owner learns why from the receiver itself.
    pub async fn pull_blob_chunks<F>(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        mut attempt: F,
    ) -> Result<(), RegistryError>
    where
        F: FnMut() -> mpsc::Sender<Bytes>,
    {
        let conn = self.conn(r).await?;
        let target = oci_ref(r);
        let action = format!("pulling blob {} from", desc.digest);
        let (conn, target) = (&conn, &target);
        let transfer = with_retries(r, &action, || {
            let sink = attempt();
            async move {
                let mut stream =
                    conn.client.pull_blob_stream(target, desc.digest.as_str()).await.map_err(Failure::Oci)?;
                let mut check = BlobCheck::new(r, "blob", desc);
                while let Some(chunk) = check.next(&mut stream).await? {
                    // A closed receiver has failed on its own side and says so to its owner; the digest verdict
                    // still needs the whole blob.
                    let _ = sink.send(chunk).await;
                }
                check.finish()
            }
        });
        within(self.opts.timeouts, desc.size, r, &action, transfer).await.map_err(|e| self.auth_context(e))
    }

    /// Pushes an image: layers the registry lacks, then the config, then the manifest bytes as given, under the tag
    /// of `r` (or by digest when it has none). Returns the manifest digest.
    pub async fn push_image(
        &self,
        r: &ImageRef,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        layers: &[(Descriptor, PathBuf)],
    ) -> Result<Digest, RegistryError> {
        Ok(self.push_image_report(r, manifest_bytes, config_bytes, layers).await?.digest)
    }

    /// [`RegistryClient::push_image_report`] without mount candidates.
    pub async fn push_image_report(
        &self,
        r: &ImageRef,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        layers: &[(Descriptor, PathBuf)],
    ) -> Result<PushReport, RegistryError> {
        self.push_image_mounting(r, manifest_bytes, config_bytes, layers, &BTreeMap::new()).await
    }

    /// [`RegistryClient::push_image`], also telling which blobs were uploaded, mounted or already there.
    /// `mount_from` names, per blob, repositories of the same registry that have it: a blob the target lacks is
    /// mounted from the first that still has it rather than uploaded.
    pub async fn push_image_mounting(
        &self,
        r: &ImageRef,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        layers: &[(Descriptor, PathBuf)],
        mount_from: &BTreeMap<Digest, Vec<String>>,
    ) -> Result<PushReport, RegistryError> {
        self.push_inner(r, manifest_bytes, config_bytes, layers, mount_from).await.map_err(|e| self.auth_context(e))
    }

    pub(super) async fn push_inner(
        &self,
        r: &ImageRef,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        layers: &[(Descriptor, PathBuf)],
        mount_from: &BTreeMap<Digest, Vec<String>>,
    ) -> Result<PushReport, RegistryError> {
        let probe = probe_document(r, "manifest", manifest_bytes)?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|source| RegistryError::BadDocument { image: r.to_string(), what: "manifest".into(), source })?;
        let config_digest = Digest::of(config_bytes);
        check_blob(r, "image config", &manifest.config, &config_digest, config_bytes.len() as u64)?;
        let digest = Digest::of(manifest_bytes);
        if let Some(pinned) = &r.digest
            && *pinned != digest
        {
            return Err(RegistryError::DigestMismatch {
                image: r.to_string(),
                what: "manifest to push".into(),
                expected: pinned.to_string(),
                actual: digest.to_string(),
            });
        }
        let conn = self.conn(r).await?;
        let target = oci_ref(r);

        let mut seen = BTreeSet::new();
        let unique: Vec<&(Descriptor, PathBuf)> =
            layers.iter().filter(|(desc, _)| seen.insert(desc.digest.clone())).collect();
        let no_sources = Vec::new();
        let outcomes: Vec<Result<(Digest, Pushed), RegistryError>> = futures::stream::iter(unique)
            .map(|(desc, path)| {
                let (conn, target) = (&conn, &target);
                let sources = mount_from.get(&desc.digest).unwrap_or(&no_sources);
                async move {
                    let how = push_layer(conn, r, target, desc, path, sources).await?;
                    Ok((desc.digest.clone(), how))
                }
            })
            .buffered(PARALLEL_UPLOADS)
            .collect()
            .await;
        let (mut uploaded, mut skipped, mut mounted) = (Vec::new(), Vec::new(), Vec::new());
        for outcome in outcomes {
            match outcome? {
                (digest, Pushed::Uploaded) => uploaded.push(digest),
                (digest, Pushed::Existed) => skipped.push(digest),
                (digest, Pushed::Mounted) => mounted.push(digest),
            }
        }

        let config_sources = mount_from.get(&config_digest).map_or(&[][..], Vec::as_slice);
        if blob_exists(&conn, r, &target, &config_digest).await? {
            skipped.push(config_digest);
        } else if try_mount(&conn, r, &config_digest, config_sources).await {
            mounted.push(config_digest);
        } else {
            let action = format!("pushing config {config_digest} to");
            let (conn, target, digest) = (&conn, &target, &config_digest);
            with_retries(r, &action, || async move {
                conn.client
                    .push_blob(target, config_bytes.to_vec(), digest.as_str())
                    .await
                    .map(drop)
                    .map_err(Failure::Oci)
            })
            .await?;
            uploaded.push(config_digest);
        }

        let media_type = probe.media_type.unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
        self.push_manifest_with(&conn, r, manifest_bytes, &media_type, &digest).await?;
        Ok(PushReport { digest, uploaded, skipped, mounted })
    }

    pub(super) async fn fetch_blob_to_memory(
        &self,
        conn: &Conn,
        r: &ImageRef,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let target = oci_ref(r);
        let action = format!("pulling {what} {} from", desc.digest);
        let target = &target;
        let attempt = with_retries(r, &action, || async move {
            let mut stream = conn.client.pull_blob_stream(target, desc.digest.as_str()).await.map_err(Failure::Oci)?;
            let mut check = BlobCheck::new(r, what, desc);
            let mut out = Vec::new();
            while let Some(chunk) = check.next(&mut stream).await? {
                out.extend_from_slice(&chunk);
            }
            check.finish()?;
            Ok(out)
        });
        within(self.opts.timeouts, desc.size, r, &action, attempt).await
    }
}

pub(super) async fn blob_exists(
    conn: &Conn,
    r: &ImageRef,
    target: &Reference,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let action = format!("checking for blob {digest} in");
    with_retries(
        r,
        &action,
        || async move { conn.client.blob_exists(target, digest.as_str()).await.map_err(Failure::Oci) },
    )
    .await
}

/// Asks for `digest` to be mounted into `r`'s repository from each of `sources` in turn; true once one works.
pub(super) async fn try_mount(conn: &Conn, r: &ImageRef, digest: &Digest, sources: &[String]) -> bool {
    for from in sources.iter().filter(|s| **s != r.repository) {
        match conn.raw.mount(&r.repository, from, digest.as_str()).await {
            Ok(true) => return true,
            Ok(false) => {}
            // A failed mount costs nothing but the attempt: an upload is the fallback.
            Err(e) => tracing::warn!(image = %r, from, error = %e, "cross-repository mount failed"),
        }
    }
    false
}

/// How one blob got into the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    Existed,
    Mounted,
    Uploaded,
}

/// Gets one layer into the target repository: nothing if it is there, a mount from one of `sources` (other
/// repositories of the same registry) if one works, else an upload from its file.
pub(super) async fn push_layer(
    conn: &Conn,
    r: &ImageRef,
    target: &Reference,
    desc: &Descriptor,
    path: &Path,
    sources: &[String],
) -> Result<Pushed, RegistryError> {
    if blob_exists(conn, r, target, &desc.digest).await? {
        return Ok(Pushed::Existed);
    }
    if try_mount(conn, r, &desc.digest, sources).await {
        return Ok(Pushed::Mounted);
    }
    let io_err = |op, source| RegistryError::Io(IoError::new(op, path, source));
    let size = tokio::fs::metadata(path).await.map_err(|e| io_err("stat layer", e))?.len();
    if size != desc.size {
        return Err(RegistryError::SizeMismatch {
            image: r.to_string(),
            what: format!("layer file {}", path.display()),
            expected: desc.size,
            actual: size,
        });
    }
    let action = format!("pushing layer {} to", desc.digest);
    let io_err = &io_err;
    with_retries(r, &action, || async move {
        let file = tokio::fs::File::open(path).await.map_err(|e| Failure::Final(io_err("open layer", e)))?;
        let body = file_chunks(file).map_ok(Into::into).map_err(OciDistributionError::IoError);
        conn.client
            .push_blob_stream(target, body, desc.digest.as_str(), Some(desc.size))
            .await
            .map(drop)
            .map_err(Failure::Oci)
    })
    .await?;
    Ok(Pushed::Uploaded)
}

/// A file as a stream of [`UPLOAD_CHUNK`]-sized pieces (the last one shorter).
pub(super) fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some((buf, file)))
    })
}

pub(super) async fn download_to_file(
    conn: &Conn,
    r: &ImageRef,
    target: &Reference,
    desc: &Descriptor,
    dest: &Path,
) -> Result<(), Failure> {
    let io_err = |op, source| Failure::Final(RegistryError::Io(IoError::new(op, dest, source)));
    let mut stream = conn.client.pull_blob_stream(target, desc.digest.as_str()).await.map_err(Failure::Oci)?;
    let mut file = tokio::fs::File::create(dest).await.map_err(|e| io_err("create", e))?;
    let mut check = BlobCheck::new(r, "blob", desc);
    while let Some(chunk) = check.next(&mut stream).await? {
        file.write_all(&chunk).await.map_err(|e| io_err("write", e))?;
    }
    check.finish()?;
    file.flush().await.map_err(|e| io_err("write", e))?;
    file.sync_all().await.map_err(|e| io_err("fsync", e))?;
    Ok(())
}

/// Counts a blob as it arrives and stops it as soon as it outgrows its descriptor; turns `oci-client`'s digest
/// verdict (its verifying stream hashes every blob it serves and reports a mismatch as the last item) into an error
/// that names the image and the blob. The bytes are hashed there and nowhere else.
pub(super) struct BlobCheck<'a> {
    image: &'a ImageRef,
    what: &'a str,
    desc: &'a Descriptor,
    len: u64,
}

impl<'a> BlobCheck<'a> {
    pub(super) fn new(image: &'a ImageRef, what: &'a str, desc: &'a Descriptor) -> Self {
        BlobCheck { image, what, desc, len: 0 }
    }

    /// The next chunk of the download, or `None` at its verified end.
    pub(super) async fn next<S>(&mut self, stream: &mut S) -> Result<Option<Bytes>, Failure>
    where
        S: futures::Stream<Item = Result<Bytes, io::Error>> + Unpin,
    {
        match stream.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => {
                self.accept(chunk.len())?;
                Ok(Some(chunk))
            }
            Some(Err(e)) => Err(self.stream_error(e)),
        }
    }

    pub(super) fn accept(&mut self, len: usize) -> Result<(), Failure> {
        self.len += len as u64;
        if self.len > self.desc.size {
            return Err(self.size_mismatch());
        }
        Ok(())
    }

    /// A failed read, or the digest verdict at the end of the stream: a short blob is reported by its size (the
    /// clearer of the two), a full-length one by its digest.
    pub(super) fn stream_error(&self, e: io::Error) -> Failure {
        let Some(DigestError::VerificationError { expected, actual }) =
            e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>())
        else {
            return Failure::Oci(OciDistributionError::IoError(e));
        };
        if self.len != self.desc.size {
            return self.size_mismatch();
        }
        // oci-client checks the registry's Docker-Content-Digest header first when it names another digest.
        let what = if *expected == self.desc.digest.as_str() {
            format!("{} {}", self.what, self.desc.digest)
        } else {
            format!("{} {} (by the registry's Docker-Content-Digest header)", self.what, self.desc.digest)
        };
        Failure::Final(RegistryError::DigestMismatch {
            image: self.image.to_string(),
            what,
            expected: expected.clone(),
            actual: actual.clone(),
        })
    }

    /// The size check at the end of a stream whose digest `oci-client` accepted.
    pub(super) fn finish(self) -> Result<(), Failure> {
        if self.len != self.desc.size {
            return Err(self.size_mismatch());
        }
        Ok(())
    }

    pub(super) fn size_mismatch(&self) -> Failure {
        Failure::Final(RegistryError::SizeMismatch {
            image: self.image.to_string(),
            what: format!("{} {}", self.what, self.desc.digest),
            expected: self.desc.size,
            actual: self.len,
        })
    }
}

pub(super) fn check_blob(
    r: &ImageRef,
    what: &str,
    desc: &Descriptor,
    digest: &Digest,
    size: u64,
) -> Result<(), RegistryError> {
    if *digest != desc.digest {
        return Err(RegistryError::DigestMismatch {
            image: r.to_string(),
            what: what.to_string(),
            expected: desc.digest.to_string(),
            actual: digest.to_string(),
        });
    }
    if size != desc.size {
        return Err(RegistryError::SizeMismatch {
            image: r.to_string(),
            what: what.to_string(),
            expected: desc.size,
            actual: size,
        });
    }
    Ok(())
}
