//! Registry documents that are not images: fetching a manifest whatever its config type (a cache manifest), and a
//! small blob into memory. The remote cache reads its index with exactly these two requests.

use super::{Conn, Failure, RegistryClient, RegistryError, oci_ref, with_retries, within};
use crate::registry::ImageRef;
use rbuild_types::Digest;
use rbuild_types::oci::Descriptor;

/// The largest document or blob read into memory here (a cache index of ~100k entries).
pub const MAX_DOCUMENT_SIZE: u64 = 64 * 1024 * 1024;

impl RegistryClient {
    /// The manifest `r` names, exactly as served, with its digest; `None` when the registry has no such manifest
    /// (404), so a first export to a new cache ref is not an error.
    pub async fn fetch_document(&self, r: &ImageRef) -> Result<Option<(Digest, Vec<u8>)>, RegistryError> {
        let conn = self.conn(r).await.map_err(|e| self.auth_context(e))?;
        match self.fetch_manifest(&conn, r, oci_ref(r)).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(self.auth_context(e)),
        }
    }

    /// The tags of `r`'s repository, in one request (a registry that pages the list answers with its first page);
    /// none when the repository does not exist yet.
    pub async fn list_tags(&self, r: &ImageRef) -> Result<Vec<String>, RegistryError> {
        let conn = self.conn(r).await.map_err(|e| self.auth_context(e))?;
        let (target, conn) = (&oci_ref(r), &conn);
        let action = "listing the tags of".to_string();
        let request = with_retries(r, &action, || async move {
            conn.client.list_tags(target, &conn.auth, None, None).await.map_err(Failure::Oci)
        });
        match within(self.opts.timeouts, 0, r, &action, request).await {
            Ok(list) => Ok(list.tags),
            Err(e) if e.status() == Some(404) => Ok(Vec::new()),
            Err(e) => Err(self.auth_context(e)),
        }
    }

    /// A blob of `r`'s repository, verified against `desc` (digest and size), into memory.
    pub async fn fetch_small_blob(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > MAX_DOCUMENT_SIZE {
            return Err(RegistryError::TooLarge {
                image: r.to_string(),
                what: what.to_string(),
                size: desc.size,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        let conn: Conn = self.conn(r).await.map_err(|e| self.auth_context(e))?;
        self.fetch_blob_to_memory(&conn, r, desc, what).await.map_err(|e| self.auth_context(e))
    }
}

/// What [`RegistryClient::push_blobs`] did.
#[derive(Debug, Clone, Default)]
pub struct BlobsPushed {
    pub uploaded: Vec<Digest>,
    /// Mounted from another repository, or already there.
    pub reused: Vec<Digest>,
}

impl RegistryClient {
    /// Gets blobs into `r`'s repository without pushing a manifest: each is skipped when there, mounted from one of
    /// its `mount_from` repositories when possible, else uploaded from its file.
    pub async fn push_blobs(
        &self,
        r: &ImageRef,
        blobs: &[(Descriptor, std::path::PathBuf)],
        mount_from: &std::collections::BTreeMap<Digest, Vec<String>>,
    ) -> Result<BlobsPushed, RegistryError> {
        use futures::StreamExt as _;
        let conn = self.conn(r).await.map_err(|e| self.auth_context(e))?;
        let target = oci_ref(r);
        let none = Vec::new();
        let outcomes: Vec<Result<(Digest, super::Pushed), RegistryError>> = futures::stream::iter(blobs)
            .map(|(desc, path)| {
                let (conn, target) = (&conn, &target);
                let sources = mount_from.get(&desc.digest).unwrap_or(&none);
                async move { Ok((desc.digest.clone(), super::push_layer(conn, r, target, desc, path, sources).await?)) }
            })
            .buffer_unordered(super::blob::PARALLEL_UPLOADS)
            .collect()
            .await;
        let mut out = BlobsPushed::default();
        for o in outcomes {
            match o.map_err(|e| self.auth_context(e))? {
                (d, super::Pushed::Uploaded) => out.uploaded.push(d),
                (d, _) => out.reused.push(d),
            }
        }
        Ok(out)
    }
}
