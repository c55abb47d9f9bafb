//! Base images for FROM, `COPY --from` and `RUN --mount=from=`: resolved before conversion, so that the frontend
//! stays pure (no network, no store) and the pulls run concurrently.
//!
//! The frontend names the images a build needs ([`rbuild_frontend::image_references`]); they are looked up in the
//! local store first (as Docker does without `--pull`), then pulled, all at once. Conversion then reads the
//! answers from a table. A reference that only conversion can find (a mount source named by a stage variable, an
//! ONBUILD trigger of a base image) is recorded as missing; the builder resolves it and converts again.

use crate::error_chain;
use crate::report::Reporter;
use crate::request::BuildRequest;
use rbuild_cache::Store;
use rbuild_frontend::{BuildPlan, ConvertError, ConvertOptions, convert};
use rbuild_frontend::{ImageResolver, ResolvedImage};
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_types::Digest;
use rbuild_types::oci::{ImageConfig, Platform};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What each reference resolved to, or why it did not: the error is reported by conversion, at the line that
/// names the image (with a "did you mean" for a mistyped stage name).
/// Images are looked up by reference and platform (`os/arch[/variant]`): a multi-platform build resolves each base
/// once per platform that uses it.
#[derive(Default)]
pub(crate) struct Resolved {
    images: BTreeMap<(String, String), Result<ResolvedImage, String>>,
    missing: RefCell<BTreeMap<(String, String), Platform>>,
    /// The manifest digest of each resolved image, by config digest, where one is known (for provenance).
    manifests: BTreeMap<Digest, Digest>,
    named: Named,
}

/// `--build-context` names: an image context makes its name resolve as another reference; a directory context's
/// name is not an image at all (`COPY --from=NAME` and `FROM NAME` read the directory without resolving it; any
/// other use that reaches the resolver is refused clearly).
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
                "the build context {name:?} is a local directory, not an image (FROM {name} and COPY --from={name} \
                 read it; this use cannot)"
            ));
        }
        Ok(reference.to_string())
    }
}

/// The table key of a reference for a platform.
fn key(reference: &str, platform: &Platform) -> (String, String) {
    (reference.to_string(), rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(platform)))
}

impl Resolved {
    /// An empty table that resolves `--build-context` names as `named` says.
    pub(crate) fn with_names(named: Named) -> Resolved {
        Resolved { named, ..Resolved::default() }
    }

    /// Resolves every reference not resolved yet for its platform, concurrently.
    pub(crate) async fn resolve_all(
        &mut self,
        references: impl IntoIterator<Item = (String, Platform)>,
        from: &Source<'_>,
    ) {
        let mut wanted = BTreeMap::new();
        for (reference, platform) in references {
            let k = key(&reference, &platform);
            if !self.images.contains_key(&k) {
                wanted.insert(k, (reference, platform));
            }
        }
        let named = &self.named;
        let lookups = wanted.into_iter().map(|(k, (reference, platform))| async move {
            let result = match named.target(&reference) {
                Ok(target) => from.resolve(&target, &platform).await.map_err(|e| error_chain(e.as_ref())),
                Err(e) => Err(e),
            };
            (k, result)
        });
        let mut pulled: BTreeMap<String, Vec<Digest>> = BTreeMap::new();
        for (k, result) in futures::future::join_all(lookups).await {
            let result = result.map(|(image, manifest, fresh)| {
                if let Some(m) = manifest {
                    self.manifests.insert(image.digest.clone(), m);
                }
                if fresh {
                    pulled.entry(image.reference.clone()).or_default().push(image.digest.clone());
                }
                image
            });
            self.images.insert(k, result);
        }
        for name in pulled.into_keys() {
            // Every platform of this name the build resolved, not only this round's.
            let configs: Vec<Digest> = self
                .images
                .values()
                .filter_map(|r| r.as_ref().ok())
                .filter(|i| i.reference == name)
                .map(|i| i.digest.clone())
                .collect();
            if let Err(e) = keep_platforms(from.store, &name, &configs) {
                tracing::debug!(image = %name, error = %e, "could not record the pulled platforms under the tag");
            }
        }
    }

    /// The manifest digest of the image whose config is `config`, if it was resolved from one.
    pub(crate) fn manifest_of(&self, config: &Digest) -> Option<&Digest> {
        self.manifests.get(config)
    }

    /// The references (with their platforms) conversion asked for that were not resolved; clears the record.
    pub(crate) fn take_missing(&self) -> Vec<(String, Platform)> {
        std::mem::take(&mut *self.missing.borrow_mut()).into_iter().map(|((r, _), p)| (r, p)).collect()
    }
}

impl ImageResolver for Resolved {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, BoxError> {
        let k = key(reference, platform);
        match self.images.get(&k) {
            Some(Ok(image)) => Ok(image.clone()),
            Some(Err(e)) => Err(e.clone().into()),
            None => {
                self.missing.borrow_mut().insert(k, platform.clone());
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
    /// The image for `platform`, with its manifest digest where one is known and whether it was pulled now.
    async fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(ResolvedImage, Option<Digest>, bool), BoxError> {
        let r = ImageRef::parse(reference)?;
        let name = r.to_string();
        let mut local_other = None;
        if !self.pull
            && let Some(rec) = self.store.tag(&name)?
            && self.store.has_blob(&rec.config)
        {
            // A tag holds one platform's image, or several (a multi-platform build's); one pulled for another
            // platform is not the image asked for.
            let mut candidates = rec.platforms.clone();
            if candidates.is_empty() {
                candidates.push(rec.config.clone());
            }
            let mut has = Vec::new();
            for digest in candidates {
                let config: ImageConfig = serde_json::from_slice(&self.store.read_blob(&digest)?)?;
                let variant_ok = platform.variant.is_none() || config.variant == platform.variant;
                if config.os == platform.os && config.architecture == platform.architecture && variant_ok {
                    // An image pushed with layers a remote cache hit named (mounted, never downloaded) has no
                    // files here yet: it is pulled like any image the store lacks.
                    let layers_here = config.rootfs.diff_ids.iter().all(|d| {
                        self.store.has_snapshot(d)
                            || self.store.layer_blobs(d).iter().any(|b| self.store.has_blob(&b.digest))
                    });
                    if !layers_here {
                        break;
                    }
                    let manifest = if rec.platforms.is_empty() { rec.manifest.clone() } else { None };
                    return Ok((ResolvedImage { reference: name, digest, config }, manifest, false));
                }
                has.push(match &config.variant {
                    Some(v) => format!("{}/{}/{v}", config.os, config.architecture),
                    None => format!("{}/{}", config.os, config.architecture),
                });
            }
            local_other = (!has.is_empty()).then(|| has.join(", "));
        }
        let status = format!("pulling {name} for {}", rbuild_frontend::platform::format(platform));
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
        let manifest = pulled.record.manifest.clone();
        Ok((ResolvedImage { reference: name, digest: pulled.record.config, config: pulled.config }, manifest, true))
    }
}

/// A pull tags the name with the one platform it pulled, so a multi-platform build that pulls a base for several
/// platforms would leave only the last under the tag and pull the others again next time. Keeps them all (and
/// the tag's images of other platforms), as a multi-platform tag (`ImageRecord::platforms`), one per platform.
fn keep_platforms(store: &Store, name: &str, pulled: &[Digest]) -> Result<(), BoxError> {
    let Some(rec) = store.tag(name)? else { return Ok(()) };
    let platform_of = |config: &Digest| -> Result<String, BoxError> {
        let c: ImageConfig = serde_json::from_slice(&store.read_blob(config)?)?;
        let p = Platform { os: c.os, architecture: c.architecture, variant: c.variant };
        Ok(rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(&p)))
    };
    let mut by_platform: BTreeMap<String, Digest> = BTreeMap::new();
    let known = if rec.platforms.is_empty() { vec![rec.config.clone()] } else { rec.platforms.clone() };
    for config in known.iter().chain(pulled) {
        if store.has_blob(config) {
            by_platform.insert(platform_of(config)?, config.clone());
        }
    }
    let platforms: Vec<Digest> = by_platform.into_values().collect();
    if platforms.len() < 2 || platforms == rec.platforms {
        return Ok(());
    }
    store.set_tag(&rbuild_cache::ImageRecord { platforms, ..rec })?;
    Ok(())
}

/// How many times conversion may ask for base images that could not be known before it (see the module docs).
pub(crate) const MAX_RESOLVE_ROUNDS: usize = 8;

/// Resolves the base images the build needs, then converts; the module docs say why in rounds.
pub(crate) async fn plan(
    ast: &rbuild_frontend::parser::Ast,
    opts: &ConvertOptions,
    source: &Source<'_>,
    resolved: &mut Resolved,
) -> Result<BuildPlan, ConvertError> {
    // Stages with `FROM --platform` ask for their own platform's images; conversion finds those.
    let mut wanted: Vec<(String, Platform)> =
        rbuild_frontend::image_references(ast, opts, false).into_iter().map(|r| (r, opts.platform.clone())).collect();
    for _ in 0..MAX_RESOLVE_ROUNDS {
        resolved.resolve_all(wanted, source).await;
        match convert(ast, opts, resolved) {
            Ok(plan) => return Ok(plan),
            Err(e) => {
                let missing = resolved.take_missing();
                if missing.is_empty() {
                    return Err(e);
                }
                wanted = missing;
            }
        }
    }
    convert(ast, opts, resolved)
}

/// How the request's `--build-context` names resolve.
pub(crate) fn named_contexts(req: &BuildRequest) -> Named {
    Named { images: req.image_contexts.clone(), dirs: req.named_contexts.keys().cloned().collect() }
}
