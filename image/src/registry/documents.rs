//! Registry documents that are not images: fetching a manifest whatever its config type (a cache manifest), and a
//! small blob into memory. The remote cache reads its index with exactly these two requests.

use super::{Conn, RegistryClient, RegistryError, oci_ref};
use crate::registry::ImageRef;
use crate::oci::Descriptor;
use rbuild_solver::Digest;

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

    /// A blob of `r`'s repository, verified against `desc` (digest and size), into memory.
    pub async fn fetch_small_blob(&self, r: &ImageRef, desc: &Descriptor, what: &str) -> Result<Vec<u8>, RegistryError> {
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
