//! Base images for FROM and `COPY --from`: the local store first (as Docker does without `--pull`), then the
//! registry, pulling into the store.

use rbuild_cache::Store;
use rbuild_frontend::{ImageResolver, ResolvedImage};
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_solver::oci::{ImageConfig, Platform};
use std::sync::Arc;

pub struct StoreResolver {
    pub store: Arc<Store>,
    pub client: Arc<RegistryClient>,
    pub handle: tokio::runtime::Handle,
    /// `--pull`: always ask the registry what a tag points at now.
    pub pull: bool,
    /// Where "pulling X" is said.
    pub progress: Arc<dyn crate::progress::Renderer>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ImageResolver for StoreResolver {
    /// The error carries its whole chain of causes in its message: the frontend shows one line per failed base
    /// image, and "layer X" without "digest mismatch" under it says nothing.
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, BoxError> {
        self.resolve_chained(reference, platform).map_err(|e| crate::login::error_chain(e.as_ref()).into())
    }
}

impl StoreResolver {
    fn resolve_chained(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, BoxError> {
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
        self.progress.status(&format!("pulling {name}"));
        let pulled = self.handle.block_on(rbuild_image::local::pull(&self.client, &self.store, &r, platform));
        self.progress.status_end();
        let pulled = match (pulled, local_other) {
            (Ok(p), _) => p,
            (Err(e), Some(local)) => {
                let e: BoxError = Box::new(e);
                return Err(format!(
                    "the local image {name} is {local}, not the platform asked for, and pulling it failed: {}",
                    crate::login::error_chain(e.as_ref())
                )
                .into());
            }
            (Err(e), None) => return Err(Box::new(e)),
        };
        Ok(ResolvedImage { reference: name, digest: pulled.record.config, config: pulled.config })
    }
}
