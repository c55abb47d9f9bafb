//! Registry client: resolve, pull and push images over the OCI distribution API.
//!
//! `oci-client` speaks the protocol (token and basic auth, chunked uploads, digest headers); this module decides
//! what rbuild trusts. Image documents are handled as the exact bytes the registry served or the caller built,
//! never re-serialised, because a manifest's identity is the digest of its bytes: `oci-client`'s own typed
//! `push_manifest` would re-encode them canonically and store a different digest than the one rbuild computed.
//! Platform selection from an index is ours too (its resolvers ignore the variant), and every blob is verified
//! against its descriptor's digest *and* size, so a truncated or swapped download never reaches the store.
//!
//! Plain HTTP is used only for loopback registries and the ones the caller lists as insecure. The connect timeout is
//! short so that a registry that is down fails a build quickly; transfers that break midway are retried a few times
//! from the start, since uploads stream from files on disk and downloads go to a file that is rewritten.

mod documents;
mod http;
mod reference;

pub use documents::{BlobsPushed, MAX_DOCUMENT_SIZE};
pub use http::{Challenge, HttpError};
pub use reference::{DOCKER_HUB, ImageRef};

use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::client::ClientConfig;
use oci_client::client::ClientProtocol;
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use rbuild_types::Digest;
use rbuild_types::oci::{
    Descriptor, ImageConfig, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest,
    Platform,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait for a TCP (and TLS) connection before giving up on a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transfer may stall without receiving a byte (the default of [`Timeouts::idle`]).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts for one blob transfer or manifest request; only transient failures are retried.
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles for each further one (0.25 s, 0.5 s, 1 s, 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Where Docker looks for per-registry CAs: `<dir>/<host[:port]>/*.crt`.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";
/// Size of the pieces a layer file is read in while it streams as one upload body.
const UPLOAD_CHUNK: usize = 1024 * 1024;
/// Layers uploaded at the same time.
const PARALLEL_UPLOADS: usize = 3;
/// Configs are read into memory; anything bigger than this is not an image config.
const MAX_CONFIG_SIZE: u64 = 64 * 1024 * 1024;

const MANIFEST_MEDIA_TYPES: &[&str] = &[MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST];

/// Failures talking to a registry or checking what it sent. Every variant names the image (registry/repository).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// An HTTP exchange failed: connection, TLS, authentication or an error status from the registry.
    #[error("{action} {image}: {cause}")]
    Request {
        action: String,
        image: String,
        /// The HTTP status, when the registry answered.
        status: Option<u16>,
        /// The whole chain of causes as one line (the `source` itself often hides the innermost one).
        cause: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("{image}: no manifest for platform {wanted} in the image index (it has: {available})")]
    NoMatchingPlatform { image: String, wanted: String, available: String },
    #[error(
        "{image}: {what} has unsupported media type {media_type:?} (expected an OCI or Docker schema 2 {expected})"
    )]
    UnsupportedMediaType { image: String, what: String, media_type: String, expected: &'static str },
    #[error("{image}: {what} is not a valid document")]
    BadDocument {
        image: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{image}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch { image: String, what: String, expected: String, actual: String },
    #[error("{image}: {what} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch { image: String, what: String, expected: u64, actual: u64 },
    #[error("{image}: {what} is {size} bytes, more than the {limit} allowed")]
    TooLarge { image: String, what: String, size: u64, limit: u64 },
    /// The registry answered 401/403: the credentials are wrong or missing, or do not allow the operation.
    #[error("{action} {image}: the registry {registry} refused {}: {cause}", if *.had_credentials {
        "the credentials configured for it (check them, or run `rbuild login` again)"
    } else {
        "anonymous access (run `rbuild login` for it first)"
    })]
    Unauthorized { action: String, image: String, registry: String, had_credentials: bool, cause: String },
    #[error("{action} {registry}: {source}")]
    Http {
        action: String,
        registry: String,
        #[source]
        source: HttpError,
    },
    #[error("the CA certificate {} for registry {registry} cannot be used", path.display())]
    Certificate {
        registry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up an HTTP client for registry {registry}: {cause}")]
    Client { registry: String, cause: String },
    #[error("looking up the credentials for registry {registry}")]
    Credentials {
        registry: String,
        #[source]
        source: crate::auth::AuthError,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A registry that stalls or trickles: the request did not finish within its deadline.
    #[error(
        "{action} {image}: the registry did not finish within {}s (it stalled or sent too slowly; the deadline \
         allows {}s plus 1s per {} KiB)",
        limit.as_secs(),
        base.as_secs(),
        min_rate / 1024
    )]
    Deadline { action: String, image: String, limit: Duration, base: Duration, min_rate: u64 },
}

impl RegistryError {
    /// The HTTP status the registry answered with, if the failure was an error response.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Request { status, .. } => *status,
            RegistryError::Unauthorized { .. } => Some(401),
            RegistryError::Http { source, .. } => source.status(),
            _ => None,
        }
    }
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// What the caller (the CLI, from flags and `config.json`) tells the client.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host:port` or `host`) allowed over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials by registry host, as given by the caller; these win over `docker_config`.
    pub credentials: BTreeMap<String, Credentials>,
    /// Docker's `config.json`, asked (helpers included) the first time a registry is used.
    pub docker_config: Option<Arc<crate::auth::DockerConfig>>,
    /// Docker's `certs.d` layout: `<dir>/<host[:port]>/*.crt` are extra CAs for that registry.
    pub certs_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) to try, in order, before Docker Hub for `docker.io` images.
    pub mirrors: Vec<String>,
    pub timeouts: Timeouts,
}

/// Limits that keep a stalled or trickling registry from holding a build forever.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A transfer that receives nothing for this long fails (and is retried).
    pub idle: Duration,
    /// Every request must finish within this, plus one second per `min_rate` bytes of its expected size: a
    /// registry sending a byte a minute never trips `idle`, but does trip this.
    pub request: Duration,
    /// Bytes per second, the slowest transfer rate the deadline allows for.
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { idle: READ_TIMEOUT, request: Duration::from_secs(120), min_rate: 32 * 1024 }
    }
}

impl Timeouts {
    /// The deadline for a request that transfers `size` bytes.
    pub fn deadline(&self, size: u64) -> Duration {
        self.request + Duration::from_secs(size / self.min_rate.max(1))
    }
}

/// A single-platform image as the registry serves it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Where the image was found: the reference itself, or the same repository on a mirror.
    pub source: ImageRef,
    /// Digest of `manifest_bytes`.
    pub digest: Digest,
    /// The manifest exactly as served.
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// The config blob, verified against `manifest.config`.
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
}

/// What a push did, for progress output and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Digest of the pushed manifest.
    pub digest: Digest,
    /// Blobs (layers, then the config) that were uploaded.
    pub uploaded: Vec<Digest>,
    /// Blobs the registry already had.
    pub skipped: Vec<Digest>,
    /// Blobs mounted from another repository of the same registry instead of uploaded.
    pub mounted: Vec<Digest>,
}

/// A registry client; cheap to share (`&self` everywhere), one connection pool and token cache per registry.
pub struct RegistryClient {
    opts: RegistryOptions,
    conns: Mutex<HashMap<String, Conn>>,
}

/// One registry's `oci-client` handle (clones share its pool, auth store and token cache).
#[derive(Clone)]
struct Conn {
    client: oci_client::Client,
    auth: RegistryAuth,
    raw: http::Raw,
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Self {
        RegistryClient { opts, conns: Mutex::new(HashMap::new()) }
    }

    /// Whether `registry` is spoken to over plain HTTP: hosts on the insecure list, and loopback hosts unless a CA
    /// is configured for them in the `certs.d` directory (a CA for a host says it speaks TLS).
    pub fn is_plain_http(&self, registry: &str) -> bool {
        let host = reference::host_of(registry);
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let listed = self
            .opts
            .insecure_registries
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(registry) || allowed.eq_ignore_ascii_case(host));
        listed || (loopback && !self.has_certs_dir(registry))
    }

    fn has_certs_dir(&self, registry: &str) -> bool {
        let host = reference::host_of(registry);
        self.opts.certs_dir.as_ref().is_some_and(|base| base.join(registry).is_dir() || base.join(host).is_dir())
    }

    /// Resolves the reference to a single-platform manifest (picking `platform` from an index) and its config.
    /// Docker Hub images are looked for on the configured mirrors first; a mirror that fails is skipped.
    pub async fn resolve(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, RegistryError> {
        if r.registry == DOCKER_HUB {
            for mirror in &self.opts.mirrors {
                let on_mirror = ImageRef { registry: mirror.clone(), ..r.clone() };
                match self.resolve_at(&on_mirror, platform).await {
                    Ok(resolved) => return Ok(resolved),
                    Err(e) => tracing::warn!(image = %r, mirror, error = %e, "mirror failed, trying the next source"),
                }
            }
        }
        self.resolve_at(r, platform).await
    }

    /// Completes an authentication error with whether credentials were sent.
    fn auth_context(&self, mut e: RegistryError) -> RegistryError {
        if let RegistryError::Unauthorized { registry, had_credentials, .. } = &mut e {
            let conns = self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *had_credentials = conns.get(registry.as_str()).is_some_and(|c| !matches!(c.auth, RegistryAuth::Anonymous));
        }
        e
    }

    async fn resolve_at(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, RegistryError> {
        self.resolve_at_inner(r, platform).await.map_err(|e| self.auth_context(e))
    }

    async fn resolve_at_inner(&self, r: &ImageRef, platform: &Platform) -> Result<ResolvedImage, RegistryError> {
        let conn = self.conn(r).await?;
        let (top_digest, top_bytes) = self.fetch_manifest(&conn, r, oci_ref(r)).await?;
        if let Some(pinned) = &r.digest
            && *pinned != top_digest
        {
            return Err(RegistryError::DigestMismatch {
                image: r.to_string(),
                what: "manifest".into(),
                expected: pinned.to_string(),
                actual: top_digest.to_string(),
            });
        }
        let (digest, manifest_bytes, manifest) = match parse_document(r, "manifest", &top_bytes)? {
            Document::Manifest(m) => (top_digest, top_bytes, m),
            Document::Index(index) => {
                let entry = select_platform(r, &index.manifests, platform)?;
                if !is_manifest_type(&entry.media_type) {
                    return Err(RegistryError::UnsupportedMediaType {
                        image: r.to_string(),
                        what: format!("index entry {}", entry.digest),
                        media_type: entry.media_type.clone(),
                        expected: "image manifest",
                    });
                }
                let by_digest = r.with_digest(entry.digest.clone());
                let (digest, bytes) = self.fetch_manifest(&conn, &by_digest, oci_ref(&by_digest)).await?;
                check_blob(&by_digest, "platform manifest", entry, &digest, bytes.len() as u64)?;
                match parse_document(&by_digest, "platform manifest", &bytes)? {
                    Document::Manifest(m) => (digest, bytes, m),
                    Document::Index(_) => {
                        return Err(RegistryError::UnsupportedMediaType {
                            image: by_digest.to_string(),
                            what: "index entry".into(),
                            media_type: MEDIA_OCI_INDEX.into(),
                            expected: "image manifest",
                        });
                    }
                }
            }
        };
        if manifest.config.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::TooLarge {
                image: r.to_string(),
                what: "image config".into(),
                size: manifest.config.size,
                limit: MAX_CONFIG_SIZE,
            });
        }
        let config_bytes = self.fetch_blob_to_memory(&conn, r, &manifest.config, "image config").await?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| RegistryError::BadDocument {
                image: r.to_string(),
                what: format!("image config {}", manifest.config.digest),
                source,
            })?;
        // A plain manifest (no index) is one platform's image: the one asked for, or an error naming what it is.
        let has = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        let unnamed = has.os.is_empty() || has.architecture.is_empty();
        if !unnamed && !platform_matches(platform, &has) {
            return Err(RegistryError::NoMatchingPlatform {
                image: r.to_string(),
                wanted: platform_string(platform),
                available: platform_string(&has),
            });
        }
        Ok(ResolvedImage { source: r.clone(), digest, manifest_bytes, manifest, config_bytes, config })
    }

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

    async fn push_inner(
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

    /// Pushes a manifest or index document, byte for byte, under the tag of `r` (or by digest when it has none).
    /// The blobs it refers to must already be in the repository. Returns the document's digest.
    pub async fn push_manifest(&self, r: &ImageRef, bytes: &[u8], media_type: &str) -> Result<Digest, RegistryError> {
        let conn = self.conn(r).await?;
        let digest = Digest::of(bytes);
        self.push_manifest_with(&conn, r, bytes, media_type, &digest).await.map_err(|e| self.auth_context(e))?;
        Ok(digest)
    }

    async fn push_manifest_with(
        &self,
        conn: &Conn,
        r: &ImageRef,
        bytes: &[u8],
        media_type: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        // Untagged pushes go by digest. The digest is passed as the "tag" because the URL is the same
        // (`/manifests/<digest>`), and `oci-client`'s fallback for registries that omit `Location` needs a tag.
        let tag = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let target = Reference::with_tag(r.registry.clone(), r.repository.clone(), tag);
        let action = "pushing manifest to".to_string();
        let content_type = media_type.parse().map_err(|_| RegistryError::UnsupportedMediaType {
            image: r.to_string(),
            what: "manifest to push".into(),
            media_type: media_type.to_string(),
            expected: "manifest or index",
        })?;
        let (target, content_type) = (&target, &content_type);
        let location = with_retries(r, &action, || async move {
            conn.client
                .push_manifest_raw(target, bytes.to_vec(), Clone::clone(content_type))
                .await
                .map_err(Failure::Oci)
        })
        .await?;
        // The registry names what it stored in `Location`; a different digest would mean it rewrote the bytes.
        if let Some((_, stored)) = location.rsplit_once("/manifests/")
            && stored.starts_with("sha256:")
            && stored != digest.as_str()
        {
            return Err(RegistryError::DigestMismatch {
                image: r.to_string(),
                what: "stored manifest".into(),
                expected: digest.to_string(),
                actual: stored.to_string(),
            });
        }
        Ok(())
    }

    /// The connection for `r`'s registry, created on first use.
    async fn conn(&self, r: &ImageRef) -> Result<Conn, RegistryError> {
        let existing = self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&r.registry).cloned();
        let conn = match existing {
            Some(c) => c,
            None => {
                // Built outside the lock: a credential helper may take a while. A racing twin is harmless.
                let creds = self.credentials_for(&r.registry)?;
                let conn = self.new_conn(&r.registry, creds)?;
                let mut conns = self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                conns.entry(r.registry.clone()).or_insert(conn).clone()
            }
        };
        // `oci-client` looks credentials up by the registry it resolves (docker.io → index.docker.io).
        let key = oci_ref(r);
        conn.client.store_auth_if_needed(key.resolve_registry(), &conn.auth).await;
        Ok(conn)
    }

    /// The PEM CA certificates for `registry` from the `certs.d` directory (`<host:port>/` first, then `<host>/`).
    fn extra_roots(&self, registry: &str) -> Result<Vec<(PathBuf, Vec<u8>)>, RegistryError> {
        let Some(base) = &self.opts.certs_dir else { return Ok(Vec::new()) };
        let host = reference::host_of(registry);
        for name in [registry, host] {
            let dir = base.join(name);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RegistryError::Certificate { registry: registry.into(), path: dir, source }),
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            paths.sort();
            let mut out = Vec::new();
            for path in paths {
                let pem = std::fs::read(&path).map_err(|source| RegistryError::Certificate {
                    registry: registry.into(),
                    path: path.clone(),
                    source,
                })?;
                if reqwest::Certificate::from_pem(&pem).is_err() {
                    return Err(RegistryError::Certificate {
                        registry: registry.into(),
                        path,
                        source: io::Error::new(io::ErrorKind::InvalidData, "not a PEM certificate"),
                    });
                }
                out.push((path, pem));
            }
            return Ok(out);
        }
        Ok(Vec::new())
    }

    fn new_conn(&self, registry: &str, creds: Option<Credentials>) -> Result<Conn, RegistryError> {
        let plain_http = self.is_plain_http(registry);
        let roots = self.extra_roots(registry)?;
        let client_err = |cause: String| RegistryError::Client { registry: registry.to_string(), cause };
        let config = ClientConfig {
            protocol: if plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(self.opts.timeouts.idle),
            // Platform selection is done here, with variants; an index must never be resolved behind our back.
            platform_resolver: None,
            user_agent: concat!("rbuild/", env!("CARGO_PKG_VERSION")),
            // One streaming PUT per blob (what containerd does), not a PATCH per 4 MiB that waits for its answer
            // before the next: a 500 MB layer uploads ~25% faster to a local registry.
            use_monolithic_push: true,
            extra_root_certificates: roots
                .iter()
                .map(|(_, pem)| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default client (wrong protocol, no CA) on error; never that.
        let client = oci_client::Client::try_from(config).map_err(|e| client_err(cause_chain(&e)))?;
        let pems: Vec<Vec<u8>> = roots.into_iter().map(|(_, pem)| pem).collect();
        let http = http::build_client(&pems).map_err(|e| client_err(error_chain(&e)))?;
        let scheme = if plain_http { "http" } else { "https" };
        let raw = http::Raw::new(http, format!("{scheme}://{}", registry_host(registry)), creds.clone());
        let auth = match creds {
            Some(c) if c.username.is_empty() => RegistryAuth::Bearer(c.password),
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Conn { client, auth, raw })
    }

    /// Credentials for `registry`: the caller's (under any of the names `config.json` files use for it), else
    /// whatever Docker's config and its helpers say.
    fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        let host = crate::auth::normalize_key(registry);
        if let Some(c) =
            self.opts.credentials.iter().find(|(k, _)| crate::auth::normalize_key(k) == host).map(|(_, c)| c)
        {
            return Ok(Some(c.clone()));
        }
        match &self.opts.docker_config {
            Some(config) => config
                .credentials(registry)
                .map_err(|source| RegistryError::Credentials { registry: registry.to_string(), source }),
            None => Ok(None),
        }
    }

    /// Checks credentials against `registry` (its `/v2/` endpoint, or its token server) before they are saved.
    pub async fn verify_login(&self, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
        let conn = self.new_conn(registry, Some(creds.clone()))?;
        conn.raw.verify_login().await.map_err(|source| match source.status() {
            Some(401) | Some(403) => RegistryError::Unauthorized {
                action: "logging in to".into(),
                image: registry.to_string(),
                registry: registry.to_string(),
                had_credentials: true,
                cause: source.to_string(),
            },
            _ => RegistryError::Http { action: "logging in to".into(), registry: registry.to_string(), source },
        })
    }

    /// GETs a manifest or index; returns the digest of its bytes.
    async fn fetch_manifest(
        &self,
        conn: &Conn,
        r: &ImageRef,
        target: Reference,
    ) -> Result<(Digest, Vec<u8>), RegistryError> {
        let action = "fetching manifest of".to_string();
        let target = &target;
        let (bytes, _) = within(
            self.opts.timeouts,
            0,
            r,
            &action,
            with_retries(r, &action, || async move {
                conn.client.pull_manifest_raw(target, &conn.auth, MANIFEST_MEDIA_TYPES).await.map_err(Failure::Oci)
            }),
        )
        .await?;
        Ok((Digest::of(&bytes), bytes.to_vec()))
    }

    async fn fetch_blob_to_memory(
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
            while let Some(chunk) = next_chunk(&mut stream).await? {
                check.accept(&chunk)?;
                out.extend_from_slice(&chunk);
            }
            check.finish()?;
            Ok(out)
        });
        within(self.opts.timeouts, desc.size, r, &action, attempt).await
    }
}

/// Runs a registry request under its deadline ([`Timeouts::deadline`] of `size`).
async fn within<T>(
    timeouts: Timeouts,
    size: u64,
    r: &ImageRef,
    action: &str,
    request: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let limit = timeouts.deadline(size);
    tokio::time::timeout(limit, request).await.unwrap_or_else(|_| {
        Err(RegistryError::Deadline {
            action: action.to_string(),
            image: r.to_string(),
            limit,
            base: timeouts.request,
            min_rate: timeouts.min_rate,
        })
    })
}

/// The host `oci-client` really talks to for `registry` (Docker Hub's API is not at `docker.io`).
fn registry_host(registry: &str) -> &str {
    if registry == DOCKER_HUB { "index.docker.io" } else { registry }
}

/// An `oci-client` reference for `r`: by digest when pinned, else by tag.
fn oci_ref(r: &ImageRef) -> Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
        (None, Some(t)) => Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone()),
        (None, None) => Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into()),
    }
}

/// Why one attempt failed: a protocol error (maybe transient) or a verdict that retrying cannot change.
enum Failure {
    Oci(OciDistributionError),
    Final(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Final(e)
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times while it fails transiently; maps the last failure to a `RegistryError`.
async fn with_retries<T, F, Fut>(r: &ImageRef, action: &str, mut attempt: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Oci(e)) if tries < ATTEMPTS && is_transient(&e) => {
                tracing::warn!(image = %r, action, error = %cause_chain(&e), attempt = tries, "retrying");
                tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(tries - 1)).await;
            }
            Err(Failure::Oci(e)) => return Err(request_error(r, action, e)),
        }
    }
}

fn request_error(r: &ImageRef, action: &str, source: OciDistributionError) -> RegistryError {
    let status = status_of(&source);
    let auth_failure = matches!(source, OciDistributionError::AuthenticationFailure(_));
    if matches!(status, Some(401) | Some(403)) || auth_failure {
        return RegistryError::Unauthorized {
            action: action.to_string(),
            image: r.to_string(),
            registry: r.registry.clone(),
            // Filled in by the client, which knows whether it sent any.
            had_credentials: false,
            cause: cause_chain(&source),
        };
    }
    RegistryError::Request {
        action: action.to_string(),
        image: r.to_string(),
        status: status_of(&source),
        cause: cause_chain(&source),
        source: Box::new(source),
    }
}

fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        // `oci-client` drops the status of a 4xx that came with an error body; the distribution spec fixes the
        // status of each error code, so it is recovered from the first one.
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.first().and_then(|e| spec_status(&e.code))
        }
        _ => None,
    }
}

/// The HTTP status the distribution spec gives each error code.
fn spec_status(code: &OciErrorCode) -> Option<u16> {
    Some(match code {
        OciErrorCode::BlobUnknown
        | OciErrorCode::BlobUploadUnknown
        | OciErrorCode::ManifestUnknown
        | OciErrorCode::NameUnknown
        | OciErrorCode::NotFound => 404,
        OciErrorCode::BlobUploadInvalid
        | OciErrorCode::DigestInvalid
        | OciErrorCode::ManifestBlobUnknown
        | OciErrorCode::ManifestInvalid
        | OciErrorCode::ManifestUnverified
        | OciErrorCode::NameInvalid
        | OciErrorCode::SizeInvalid
        | OciErrorCode::TagInvalid => 400,
        OciErrorCode::Unauthorized => 401,
        OciErrorCode::Denied => 403,
        OciErrorCode::Unsupported => 405,
        OciErrorCode::Toomanyrequests => 429,
        OciErrorCode::Other(_) => return None,
    })
}

/// Connection failures are final (the registry is down or the name is wrong: fail fast); broken transfers, timeouts
/// mid-way, 5xx and 429 are worth another try.
fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(e) => !e.is_connect() && (e.is_timeout() || e.is_body() || e.is_request()),
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { .. } => status_of(e) == Some(429),
        OciDistributionError::IoError(e) => !is_digest_error(e),
        _ => false,
    }
}

fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DigestError>())
}

/// The error and all its sources on one line, without repeats (reqwest's own message hides "connection refused").
fn cause_chain(e: &OciDistributionError) -> String {
    if let OciDistributionError::RegistryError { envelope, url } = e {
        // The envelope's own message wraps each error twice ("OCI API errors: [OCI API error: ...]").
        let errors: Vec<String> = envelope.errors.iter().map(|e| format!("{} ({:?})", e.message, e.code)).collect();
        let status = status_of(e).map_or(String::new(), |s| format!("HTTP {s}: "));
        return format!("{status}{} at {url}", errors.join("; "));
    }
    error_chain(e)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

async fn blob_exists(conn: &Conn, r: &ImageRef, target: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
    let action = format!("checking for blob {digest} in");
    with_retries(
        r,
        &action,
        || async move { conn.client.blob_exists(target, digest.as_str()).await.map_err(Failure::Oci) },
    )
    .await
}

/// Asks for `digest` to be mounted into `r`'s repository from each of `sources` in turn; true once one works.
async fn try_mount(conn: &Conn, r: &ImageRef, digest: &Digest, sources: &[String]) -> bool {
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
enum Pushed {
    Existed,
    Mounted,
    Uploaded,
}

/// Gets one layer into the target repository: nothing if it is there, a mount from one of `sources` (other
/// repositories of the same registry) if one works, else an upload from its file.
async fn push_layer(
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
    let io_err = |action, source| RegistryError::Io { action, path: path.to_path_buf(), source };
    let size = tokio::fs::metadata(path).await.map_err(|e| io_err("reading layer", e))?.len();
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
        let file = tokio::fs::File::open(path).await.map_err(|e| Failure::Final(io_err("opening layer", e)))?;
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
fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
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

async fn download_to_file(
    conn: &Conn,
    r: &ImageRef,
    target: &Reference,
    desc: &Descriptor,
    dest: &Path,
) -> Result<(), Failure> {
    let io_err = |action, source| Failure::Final(RegistryError::Io { action, path: dest.to_path_buf(), source });
    let mut stream = conn.client.pull_blob_stream(target, desc.digest.as_str()).await.map_err(Failure::Oci)?;
    let mut file = tokio::fs::File::create(dest).await.map_err(|e| io_err("creating", e))?;
    let mut check = BlobCheck::new(r, "blob", desc);
    while let Some(chunk) = next_chunk(&mut stream).await? {
        check.accept(&chunk)?;
        file.write_all(&chunk).await.map_err(|e| io_err("writing", e))?;
    }
    check.finish()?;
    file.flush().await.map_err(|e| io_err("writing", e))?;
    file.sync_all().await.map_err(|e| io_err("syncing", e))?;
    Ok(())
}

/// The next chunk of a blob download. `oci-client` checks the digest too and reports a mismatch as the stream's
/// last item; [`BlobCheck::finish`] gives the better message, so that item just ends the stream here.
async fn next_chunk<S, B>(stream: &mut S) -> Result<Option<B>, Failure>
where
    S: futures::Stream<Item = Result<B, io::Error>> + Unpin,
{
    match stream.next().await {
        None => Ok(None),
        Some(Ok(chunk)) => Ok(Some(chunk)),
        Some(Err(e)) if is_digest_error(&e) => Ok(None),
        Some(Err(e)) => Err(Failure::Oci(OciDistributionError::IoError(e))),
    }
}

/// Counts and hashes a blob as it arrives, stops as soon as it outgrows its descriptor, and checks it at the end.
struct BlobCheck<'a> {
    image: &'a ImageRef,
    what: &'a str,
    desc: &'a Descriptor,
    hasher: Sha256,
    len: u64,
}

impl<'a> BlobCheck<'a> {
    fn new(image: &'a ImageRef, what: &'a str, desc: &'a Descriptor) -> Self {
        BlobCheck { image, what, desc, hasher: Sha256::new(), len: 0 }
    }

    fn accept(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        self.len += chunk.len() as u64;
        if self.len > self.desc.size {
            return Err(self.size_mismatch());
        }
        self.hasher.update(chunk);
        Ok(())
    }

    fn finish(self) -> Result<(), Failure> {
        if self.len != self.desc.size {
            return Err(self.size_mismatch());
        }
        let actual = Digest::from_sha256(self.hasher.finalize().into());
        if actual != self.desc.digest {
            return Err(Failure::Final(RegistryError::DigestMismatch {
                image: self.image.to_string(),
                what: format!("{} {}", self.what, self.desc.digest),
                expected: self.desc.digest.to_string(),
                actual: actual.to_string(),
            }));
        }
        Ok(())
    }

    fn size_mismatch(&self) -> Failure {
        Failure::Final(RegistryError::SizeMismatch {
            image: self.image.to_string(),
            what: format!("{} {}", self.what, self.desc.digest),
            expected: self.desc.size,
            actual: self.len,
        })
    }
}

fn check_blob(r: &ImageRef, what: &str, desc: &Descriptor, digest: &Digest, size: u64) -> Result<(), RegistryError> {
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

/// The fields that tell a manifest from an index (the `mediaType` field is optional in OCI documents).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

enum Document {
    Manifest(Manifest),
    Index(rbuild_types::oci::Index),
}

fn is_manifest_type(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

fn is_index_type(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn probe_document(r: &ImageRef, what: &str, bytes: &[u8]) -> Result<Probe, RegistryError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| RegistryError::BadDocument {
        image: r.to_string(),
        what: what.to_string(),
        source,
    })?;
    let unsupported = |media_type: String| RegistryError::UnsupportedMediaType {
        image: r.to_string(),
        what: what.to_string(),
        media_type,
        expected: "manifest or index",
    };
    if probe.schema_version != Some(2) {
        let version = probe.schema_version.map_or("none".to_string(), |v| v.to_string());
        return Err(unsupported(format!("schemaVersion {version}")));
    }
    match &probe.media_type {
        Some(m) if !is_manifest_type(m) && !is_index_type(m) => Err(unsupported(m.clone())),
        _ => Ok(probe),
    }
}

/// Parses a manifest or index, telling them apart by `mediaType` or, when it is absent, by their fields.
fn parse_document(r: &ImageRef, what: &str, bytes: &[u8]) -> Result<Document, RegistryError> {
    let probe = probe_document(r, what, bytes)?;
    let bad = |source| RegistryError::BadDocument { image: r.to_string(), what: what.to_string(), source };
    let is_index = match &probe.media_type {
        Some(m) => is_index_type(m),
        None => probe.manifests.is_some() && probe.config.is_none(),
    };
    if is_index {
        serde_json::from_slice(bytes).map(Document::Index).map_err(bad)
    } else {
        serde_json::from_slice(bytes).map(Document::Manifest).map_err(bad)
    }
}

/// The variant an index entry without one is taken to have (containerd's defaults).
fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

fn platform_matches(want: &Platform, have: &Platform) -> bool {
    if want.os != have.os || want.architecture != have.architecture {
        return false;
    }
    match (&want.variant, &have.variant) {
        (None, _) => true,
        (Some(w), Some(h)) => w == h,
        (Some(w), None) => default_variant(&want.architecture) == Some(w.as_str()),
    }
}

fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// The index entry for `want`: the first whose os/architecture match and whose variant matches if one is asked for.
fn select_platform<'a>(
    r: &ImageRef,
    entries: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    entries.iter().find(|e| e.platform.as_ref().is_some_and(|p| platform_matches(want, p))).ok_or_else(|| {
        let available: Vec<String> = entries.iter().filter_map(|e| e.platform.as_ref()).map(platform_string).collect();
        RegistryError::NoMatchingPlatform {
            image: r.to_string(),
            wanted: platform_string(want),
            available: if available.is_empty() { "no platforms".into() } else { available.join(", ") },
        }
    })
}

#[cfg(test)]
mod tests;
