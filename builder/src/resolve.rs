//! Base images for FROM, `COPY --from` and `RUN --mount=from=`: resolved before conversion, so that the frontend
//! stays pure (no network, no store) and the pulls run concurrently.
//!
//! The frontend names the images a build needs ([`rbuild_frontend::image_references`]); they are looked up in the
//! local store first (as Docker does without `--pull`), then pulled, all at once. Conversion then reads the
//! answers from a table. A reference that only conversion can find (a mount source named by a stage variable, an
//! ONBUILD trigger of a base image) is recorded as missing; the builder resolves it and converts again.

use crate::error_chain;
use crate::report::Reporter;
use rbuild_cache::Store;
use rbuild_frontend::{ImageResolver, ResolvedImage};
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_solver::oci::{ImageConfig, Platform};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What each reference resolved to, or why it did not: the error is reported by conversion, at the line that
/// names the image (with a "did you mean" for a mistyped stage name).
#[derive(Default)]
pub(crate) struct Resolved {
    images: BTreeMap<String, Result<ResolvedImage, String>>,
    missing: RefCell<BTreeSet<String>>,
}

impl Resolved {
    /// Resolves every reference not resolved yet, concurrently.
    pub(crate) async fn resolve_all(
        &mut self,
        references: impl IntoIterator<Item = String>,
        from: &Source<'_>,
        platform: &Platform,
    ) {
        let wanted: BTreeSet<String> = references.into_iter().filter(|r| !self.images.contains_key(r)).collect();
        let lookups = wanted.into_iter().map(|reference| async move {
            let result = from.resolve(&reference, platform).await.map_err(|e| error_chain(e.as_ref()));
            (reference, result)
        });
        self.images.extend(futures::future::join_all(lookups).await);
    }

    /// The references conversion asked for that were not resolved; clears the record.
    pub(crate) fn take_missing(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.missing.borrow_mut())
    }
}

impl ImageResolver for Resolved {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, BoxError> {
        match self.images.get(reference) {
            Some(Ok(image)) => Ok(image.clone()),
            Some(Err(e)) => Err(e.clone().into()),
            None => {
                self.missing.borrow_mut().insert(reference.to_string());
                Err(format!("{reference} was not resolved before conversion").into())
            }
        }
    }
}

/// Where base images come from: the store, then the registry.
pub(crate) struct Source<'a> {
    pub store: &'a Store,
    pub client: &'a RegistryClient,
    /// `--pull`: always ask the registry what a tag points at now.
    pub pull: bool,
    pub reporter: &'a dyn Reporter,
}

impl Source<'_> {
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, BoxError> {
        let r = ImageRef::parse(reference)?;
        let name = r.to_string();
        let mut local_other = None;
        if !self.pull
            && let Some(rec) = self.store.tag(&name)?
            && self.store.has_blob(&rec.config)
        {
            let config: ImageConfig = serde_json::from_slice(&self.store.read_blob(&rec.config)?)?;
            // A tag holds one platform's image; one pulled for another platform is not the image asked for.
            let variant_ok = platform.variant.is_none() || config.variant == platform.variant;
            // An image pushed with layers a remote cache hit named (mounted, never downloaded) has no files here
            // yet: it is pulled like any image the store lacks.
            let layers_here = config.rootfs.diff_ids.iter().all(|d| {
                self.store.has_snapshot(d) || self.store.layer_blobs(d).iter().any(|b| self.store.has_blob(&b.digest))
            });
            let platform_ok = config.os == platform.os && config.architecture == platform.architecture && variant_ok;
            if platform_ok && layers_here {
                return Ok(ResolvedImage { reference: name, digest: rec.config, config });
            }
            local_other = (!platform_ok).then(|| match &config.variant {
                Some(v) => format!("{}/{}/{v}", config.os, config.architecture),
                None => format!("{}/{}", config.os, config.architecture),
            });
        }
        self.reporter.message(&format!("pulling {name}"));
        let pulled = match (rbuild_image::local::pull(self.client, self.store, &r, platform).await, local_other) {
            (Ok(p), _) => p,
            (Err(e), Some(local)) => {
                return Err(format!(
                    "the local image {name} is {local}, not the platform asked for, and pulling it failed: {}",
                    error_chain(&e)
                )
                .into());
            }
            (Err(e), None) => return Err(Box::new(e)),
        };
        Ok(ResolvedImage { reference: name, digest: pulled.record.config, config: pulled.config })
    }
}
