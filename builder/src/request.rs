//! What a build is asked to do: the typed form of `rbuild build`'s flags, independent of how they were spelled.
//!
//! Everything here is plain data. Parsing the command line into it is the CLI's job; reading files the request
//! names (the Dockerfile, `.dockerignore`) and talking to registries is the builder's.

use rbuild_executor::mounts::MountSources;
use rbuild_executor::runtime::options::ContainerOptions;
use rbuild_frontend::NoCache;
use rbuild_image::export::ArchiveKind;
use rbuild_image::layer::Compression;
use rbuild_image::registry::ImageRef;
use rbuild_types::oci::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest Dockerfile (and `.dockerignore`) a build reads: 10 MiB, like BuildKit's limit on a Dockerfile.
/// Both come from the build's input, so `-f /dev/zero` or a huge file must be an error, not unbounded memory.
pub const MAX_INPUT_FILE: u64 = 10 << 20;

/// One build: a Dockerfile and its context in, an image and its outputs out.
#[derive(Debug)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    pub dockerfile: Dockerfile,
    /// `--build-arg`s, already taken from the environment where the flag named only a key.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (the last one if `None`).
    pub target: Option<String>,
    /// The platforms to build for and to pick base images by (this machine's if empty). Several make a
    /// multi-platform image: one build per platform, solved together, and an index.
    pub platforms: Vec<Platform>,
    pub no_cache: NoCache,
    /// Ask the registry for base images even when the store has the tag.
    pub pull: bool,
    /// How many steps may run at once (the solver's default if `None`).
    pub jobs: Option<usize>,
    /// `--secret` and `--ssh` values, by id; never part of the graph, a key or a log.
    pub mount_sources: MountSources,
    /// The network of RUN steps that do not choose one.
    pub network: NetworkMode,
    pub entitlements: Entitlements,
    /// Resource limits and settings of RUN containers.
    pub container: ContainerOptions,
    /// `--label`s: they win over a Dockerfile `LABEL` of the same key.
    pub labels: BTreeMap<String, String>,
    /// `-t` names: the image is tagged with each in the store.
    pub tags: Vec<ImageRef>,
    /// Where the image goes besides the store (`--output`, `--push`).
    pub outputs: Vec<Output>,
    /// Write the image's digests here, in buildx's keys.
    pub metadata_file: Option<PathBuf>,
    /// Compute a multi-platform image's index digest even when no output needs it (`--iidfile` names it, as
    /// buildx's does).
    pub index_digest: bool,
    /// `--annotation`s of a multi-platform image (its index, the index's entries, each platform's manifest).
    pub index_annotations: rbuild_image::index::IndexAnnotations,
    /// Say, for every step that runs, why it missed the cache.
    pub explain_cache: bool,
    /// `--provenance`: a SLSA provenance attestation per platform in the image's index.
    pub provenance: Provenance,
    /// `--sbom`: an SPDX SBOM of each platform's filesystem in the image's index.
    pub sbom: bool,
    /// `SOURCE_DATE_EPOCH`: clamps file times in layers and dates the image.
    pub source_date_epoch: Option<i64>,
    /// `--build-context NAME=DIR` (or a fetched URL): directories `COPY --from=NAME` reads.
    pub named_contexts: BTreeMap<String, PathBuf>,
    /// `--build-context NAME=docker-image://REF`: NAME means the image REF in `FROM` and `COPY --from`.
    pub image_contexts: BTreeMap<String, String>,
    /// `--annotation`s on the image manifest (pushed, exported).
    pub manifest_annotations: BTreeMap<String, String>,
    /// The context is a temporary directory (from stdin or a URL): its stat cache is not kept.
    pub temporary_context: bool,
    /// `--cache-from`: caches searched after the local store, in this order.
    pub cache_from: Vec<crate::cache::CacheSource>,
    /// `--cache-to`: where the build's cache is exported.
    pub cache_to: Vec<crate::cache::CacheTarget>,
}

/// The Dockerfile of a build: its text, the name it is shown under, and where it was read from (if anywhere: `-f -`
/// reads it from standard input).
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The name in messages (`Dockerfile:3`).
    pub name: String,
    /// The file it came from; its `NAME.dockerignore` sibling wins over the context's `.dockerignore`.
    pub path: Option<PathBuf>,
    pub text: String,
}

impl Dockerfile {
    /// Reads a Dockerfile of at most [`MAX_INPUT_FILE`] bytes.
    pub fn read(path: &Path) -> std::io::Result<Dockerfile> {
        let text = read_limited(path, "the Dockerfile")?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Dockerfile { name, path: Some(path.to_path_buf()), text })
    }

    /// The Dockerfile `-f` names, or the context's: `Dockerfile`, else `dockerfile` (as `docker build` looks).
    pub fn default_path(context: &Path) -> PathBuf {
        let upper = context.join("Dockerfile");
        let lower = context.join("dockerfile");
        if !upper.exists() && lower.exists() { lower } else { upper }
    }
}

/// Reads a text file of at most [`MAX_INPUT_FILE`] bytes.
pub(crate) fn read_limited(path: &Path, what: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_INPUT_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_INPUT_FILE {
        return Err(std::io::Error::other(format!("{what} is larger than the limit of {} MiB", MAX_INPUT_FILE >> 20)));
    }
    Ok(text)
}

/// `--network`: the network RUN steps get unless they say otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A private namespace with outbound access (slirp4netns).
    #[default]
    Default,
    /// Only loopback.
    None,
    /// The host's; needs [`Entitlements::network_host`].
    Host,
}

/// What `--allow` granted (buildx's entitlements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub network_host: bool,
    /// `RUN --security=insecure` may run privileged (refused at its line otherwise).
    pub security_insecure: bool,
}

/// One destination of the built image besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI layout (`Oci`) or docker archive (`Docker`), as a tar file (`-` is stdout) or a directory.
    Archive { kind: ArchiveKind, dest: PathBuf, tar: bool, names: Vec<String>, compression: Compression },
    /// The image's filesystem in a directory.
    Local { dest: PathBuf },
    /// The image's filesystem as one tar file (`-` is stdout).
    Tar { dest: PathBuf },
    /// Named in the store, and pushed when `push`.
    Image { names: Vec<String>, push: bool, compression: Compression },
}

impl Output {
    /// Whether this output writes to standard output.
    pub fn to_stdout(&self) -> bool {
        matches!(self, Output::Archive { dest, .. } | Output::Tar { dest } if dest.as_os_str() == "-")
    }
}

/// Whether the image gets provenance attestations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Provenance {
    /// `mode=min` for multi-platform images (they are an index anyway, as buildx attaches it); none for one
    /// platform, which stays a plain manifest.
    #[default]
    Default,
    /// `--provenance=false`.
    Off,
    /// `--provenance=true|mode=min|mode=max`: attached even to a single-platform image (which then is an index).
    On(crate::provenance::ProvenanceMode),
}
