//! Retries, deadlines and the mapping of protocol failures to [`RegistryError`].

use super::*;
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use std::future::Future;
use std::io;

/// Attempts for one blob transfer or manifest request; only transient failures are retried.
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles for each further one (0.25 s, 0.5 s, 1 s, 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Runs a registry request under its deadline ([`Timeouts::deadline`] of `size`).
pub(super) async fn within<T>(
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

/// Why one attempt failed: a protocol error (maybe transient) or a verdict that retrying cannot change.
pub(super) enum Failure {
    Oci(OciDistributionError),
    Final(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Final(e)
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times while it fails transiently; maps the last failure to a `RegistryError`.
pub(super) async fn with_retries<T, F, Fut>(r: &ImageRef, action: &str, mut attempt: F) -> Result<T, RegistryError>
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

pub(super) fn request_error(r: &ImageRef, action: &str, source: OciDistributionError) -> RegistryError {
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

pub(super) fn status_of(e: &OciDistributionError) -> Option<u16> {
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
pub(super) fn spec_status(code: &OciErrorCode) -> Option<u16> {
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
pub(super) fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(e) => !e.is_connect() && (e.is_timeout() || e.is_body() || e.is_request()),
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { .. } => status_of(e) == Some(429),
        OciDistributionError::IoError(e) => !is_digest_error(e),
        _ => false,
    }
}

pub(super) fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DigestError>())
}

/// The error and all its sources on one line, without repeats (reqwest's own message hides "connection refused").
pub(super) fn cause_chain(e: &OciDistributionError) -> String {
    if let OciDistributionError::RegistryError { envelope, url } = e {
        // The envelope's own message wraps each error twice ("OCI API errors: [OCI API error: ...]").
        let errors: Vec<String> = envelope.errors.iter().map(|e| format!("{} ({:?})", e.message, e.code)).collect();
        let status = status_of(e).map_or(String::new(), |s| format!("HTTP {s}: "));
        return format!("{status}{} at {url}", errors.join("; "));
    }
    error_chain(e)
}
