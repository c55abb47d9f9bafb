//! Registry client: resolve, pull and push images over the OCI distribution API.
//!
//! `oci-client` speaks the protocol (token and basic auth, chunked uploads, digest headers); this module decides
//! what rbuild trusts. Image documents are handled as the exact bytes the registry served or the caller built,
//! never re-serialised, because a manifest's identity is the digest of its bytes: `oci-client`'s own typed
//! `push_manifest` would re-encode them canonically and store a different digest than the one rbuild computed.
//! Platform selection from an index is ours too (its resolvers ignore the variant), and every blob is verified
//! against its descriptor's digest *and* size, so a truncated or swapped download never reaches the store: the
//! size as the bytes arrive (a registry that sends more is cut off), the digest by `oci-client`'s verifying stream
//! (hashing it a second time here cost a fifth of a pull's CPU), whose verdict is turned into an error naming the
//! image and the blob.
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

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use rbuild_types::oci::{ImageConfig, Manifest};
use rbuild_types::{Digest, IoError, error_chain};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod blob;
mod conn;
mod manifest;
mod retry;

use blob::*;
use conn::*;
use manifest::*;
use retry::*;

/// How long to wait for a TCP (and TLS) connection before giving up on a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transfer may stall without receiving a byte (the default of [`Timeouts::idle`]).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Where Docker looks for per-registry CAs: `<dir>/<host[:port]>/*.crt`.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

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
    #[error(transparent)]
    Io(#[from] IoError),
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
}

#[cfg(test)]
mod tests;
