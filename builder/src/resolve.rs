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
use rbuild_types::oci::{ImageConfig, Platform};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What each reference resolved to, or why it did not: the error is reported by conversion, at the line that
/// names the image (with a "did you mean" for a mistyped stage name).
#[derive(Default)]
pub(crate) struct Resolved {
    images: BTreeMap<String, Result<ResolvedImage, String>>,
    missing: RefCell<BTreeSet<String>>,
    named: Named,
}

/// `--build-context` names: an image context makes its name resolve as another reference; a directory context's
/// name is not an image at all (`COPY --from=NAME` reads the directory; `FROM NAME` is refused clearly).
#[derive(Debug, Default)]
pub(crate) struct Named {
    pub images: BTreeMap<String, String>,
    pub dirs: BTreeSet<String>,
}

/// Whether `reference` (as written in the Dockerfile) is `name`: the same text, or the same image once both are
/// normalised (`alpine` is `docker.io/library/alpine:latest`).
fn same_name(name: &str, reference: &str) -> bool {
    name == reference
        || matches!((ImageRef::parse(name), ImageRef::parse(reference)), (Ok(a), Ok(b)) if a.to_string() == b.to_string())
}

impl Named {
    /// What to resolve for `reference`: its image context's reference, or itself; an error for a directory.
    fn target(&self, reference: &str) -> Result<String, String> {
        if let Some((_, to)) = self.images.iter().find(|(name, _)| same_name(name, reference)) {
            return Ok(to.clone());
        }
        if let Some(name) = self.dirs.iter().find(|name| same_name(name, reference)) {
            return Err(format!(
                "the build context {name:?} is a local directory: FROM a directory context is not supported yet \
                 (COPY --from={name} is)"
            ));
        }
        Ok(reference.to_string())
    }
}

impl Resolved {
    /// An empty table that resolves `--build-context` names as `named` says.
    pub(crate) fn with_names(named: Named) -> Resolved {
        Resolved { named, ..Resolved::default() }
    }

    /// Resolves every reference not resolved yet, concurrently.
    pub(crate) async fn resolve_all(
        &mut self,
        references: impl IntoIterator<Item = String>,
        from: &Source<'_>,
        platform: &Platform,
    ) {
        let wanted: BTreeSet<String> = references.into_iter().filter(|r| !self.images.contains_key(r)).collect();
        let targets: Vec<(String, Result<String, String>)> =
            wanted.into_iter().map(|r| (r.clone(), self.named.target(&r))).collect();
        let lookups = targets.into_iter().map(|(reference, target)| async move {
            let result = match target {
                Ok(target) => from.resolve(&target, platform).await.map_err(|e| error_chain(e.as_ref())),
                Err(e) => Err(e),
            };
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
            if config.os == platform.os && config.architecture == platform.architecture && variant_ok {
                return Ok(ResolvedImage { reference: name, digest: rec.config, config });
            }
            local_other = Some(match &config.variant {
                Some(v) => format!("{}/{}/{v}", config.os, config.architecture),
                None => format!("{}/{}", config.os, config.architecture),
            });
        }
        let status = format!("pulling {name}");
        self.reporter.status(&status);
        let pulled = rbuild_image::local::pull(self.client, self.store, &r, platform).await;
        self.reporter.status_end(&status);
        let pulled = match (pulled, local_other) {
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
