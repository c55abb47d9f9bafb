//! The few registry requests `oci-client` cannot make correctly: checking a login, and mounting a blob.
//!
//! `oci-client` asks a token server for one repository's scope per request, and takes `Basic` challenges on trust
//! without ever checking the password. A cross-repository mount needs one token carrying two scopes
//! (`repository:<target>:pull,push` and `repository:<source>:pull`, or the registry silently starts a normal upload
//! instead), and `rbuild login` must find out whether the credentials work before writing them down. Both are a
//! handful of plain HTTP requests, made here with the same TLS roots and timeouts as the `oci-client` connection.

use super::{CONNECT_TIMEOUT, Credentials, READ_TIMEOUT};
use reqwest::StatusCode;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};

/// Why a plain request failed. The caller adds the image or registry context.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{what}: {cause}")]
    Transport {
        what: String,
        cause: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: HTTP {status}{body}")]
    Status { what: String, status: u16, body: String },
    #[error("the token server {realm} answered with something that is not a token")]
    BadToken { realm: String },
}

impl HttpError {
    /// The status code, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport { source, .. } => source.status().map(|s| s.as_u16()),
            HttpError::BadToken { .. } => None,
        }
    }
}

/// How a registry wants to be authenticated, from the `WWW-Authenticate` header of `GET /v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `/v2/` answered 200: no authentication.
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="..."` / `Basic realm="..."`. Unknown schemes are treated as basic.
pub fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Basic;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after.trim_start_matches(',').trim_start();
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::Basic,
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A plain HTTP client for one registry.
#[derive(Clone)]
pub struct Raw {
    http: reqwest::Client,
    /// `https://host:port` or `http://host:port`.
    base: String,
    creds: Option<Credentials>,
}

/// The reqwest client both `oci-client` (through its config) and [`Raw`] use: timeouts and extra roots.
pub fn build_client(extra_roots: &[Vec<u8>]) -> Result<reqwest::Client, reqwest::Error> {
    let mut certs = Vec::new();
    for pem in extra_roots {
        certs.push(reqwest::Certificate::from_pem(pem)?);
    }
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(certs)
        .build()
}

fn transport(what: &str, source: reqwest::Error) -> HttpError {
    let mut cause = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&source);
    while let Some(e) = current {
        let text = e.to_string();
        if !cause.iter().any(|c: &String| c.contains(&text)) {
            cause.push(text);
        }
        current = e.source();
    }
    HttpError::Transport { what: what.to_string(), cause: cause.join(": "), source }
}

async fn status_error(what: &str, res: reqwest::Response) -> HttpError {
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    let body = body.trim();
    let body =
        if body.is_empty() { String::new() } else { format!(": {}", body.chars().take(300).collect::<String>()) };
    HttpError::Status { what: what.to_string(), status, body }
}

impl Raw {
    pub fn new(http: reqwest::Client, base: String, creds: Option<Credentials>) -> Raw {
        Raw { http, base, creds }
    }

    /// The registry's challenge for an unauthenticated `GET /v2/`.
    pub async fn challenge(&self) -> Result<Challenge, HttpError> {
        let what = format!("GET {}/v2/", self.base);
        let res = self.http.get(format!("{}/v2/", self.base)).send().await.map_err(|e| transport(&what, e))?;
        if res.status().is_success() {
            return Ok(Challenge::None);
        }
        if res.status() != StatusCode::UNAUTHORIZED {
            return Err(status_error(&what, res).await);
        }
        let header = res.headers().get(WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()).unwrap_or("Basic");
        Ok(parse_challenge(header))
    }

    fn basic(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.creds {
            Some(c) => req.basic_auth(&c.username, Some(&c.password)),
            None => req,
        }
    }

    /// A bearer token for `scopes` from the challenge's realm, sending the credentials (if any) as basic auth.
    async fn token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String, HttpError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let what = format!("GET {realm}");
        let res = self.basic(self.http.get(realm).query(&query)).send().await.map_err(|e| transport(&what, e))?;
        if !res.status().is_success() {
            return Err(status_error(&what, res).await);
        }
        let bytes = res.bytes().await.map_err(|e| transport(&what, e))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|_| HttpError::BadToken { realm: realm.into() })?;
        body.token.or(body.access_token).filter(|t| !t.is_empty()).ok_or(HttpError::BadToken { realm: realm.into() })
    }

    /// The `Authorization` header for a request needing `scopes`, or `None` when the registry is open.
    pub async fn authorization(&self, scopes: &[String]) -> Result<Option<HeaderValue>, HttpError> {
        let value = match self.challenge().await? {
            Challenge::None => return Ok(None),
            Challenge::Basic => match &self.creds {
                Some(c) => {
                    format!("Basic {}", crate::auth::base64_encode(format!("{}:{}", c.username, c.password).as_bytes()))
                }
                None => return Ok(None),
            },
            Challenge::Bearer { realm, service } => {
                format!("Bearer {}", self.token(&realm, service.as_deref(), scopes).await?)
            }
        };
        Ok(HeaderValue::from_str(&value).ok())
    }

    /// Checks that the credentials are accepted: `GET /v2/` with basic auth, or a token from the realm.
    pub async fn verify_login(&self) -> Result<(), HttpError> {
        match self.challenge().await? {
            Challenge::None => Ok(()),
            Challenge::Basic => {
                let what = format!("GET {}/v2/", self.base);
                let res = self
                    .basic(self.http.get(format!("{}/v2/", self.base)))
                    .send()
                    .await
                    .map_err(|e| transport(&what, e))?;
                if res.status().is_success() { Ok(()) } else { Err(status_error(&what, res).await) }
            }
            Challenge::Bearer { realm, service } => self.token(&realm, service.as_deref(), &[]).await.map(drop),
        }
    }

    /// Asks the registry to mount `digest` from repository `from` into `repository`. Returns true when it did
    /// (201); false when it started an ordinary upload instead (202, which is cancelled here).
    pub async fn mount(&self, repository: &str, from: &str, digest: &str) -> Result<bool, HttpError> {
        let scopes = [format!("repository:{repository}:pull,push"), format!("repository:{from}:pull")];
        let auth = self.authorization(&scopes).await?;
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let what = format!("POST {url}?mount={digest}&from={from}");
        let mut req = self.http.post(&url).query(&[("mount", digest), ("from", from)]).header("Content-Length", "0");
        if let Some(a) = &auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        let res = req.send().await.map_err(|e| transport(&what, e))?;
        match res.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry would not mount (no access to the source, or the blob is gone): it opened an upload
                // session, which is dropped so it does not linger until the registry's purge.
                if let Some(location) = res.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()) {
                    let location = if location.starts_with('/') {
                        format!("{}{location}", self.base)
                    } else {
                        location.to_string()
                    };
                    let mut del = self.http.delete(location);
                    if let Some(a) = &auth {
                        del = del.header(reqwest::header::AUTHORIZATION, a.clone());
                    }
                    let _ = del.send().await;
                }
                Ok(false)
            }
            _ => Err(status_error(&what, res).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_like_docker() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="x""#),
            Challenge::Bearer { realm: "https://auth.example/token".into(), service: Some("registry.example".into()) }
        );
        assert_eq!(
            parse_challenge(r#"bearer service=reg, realm="http://127.0.0.1:1/t?a=b,c""#),
            Challenge::Bearer { realm: "http://127.0.0.1:1/t?a=b,c".into(), service: Some("reg".into()) }
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Challenge::Basic);
        assert_eq!(parse_challenge("Bearer"), Challenge::Basic, "no realm: nothing to ask for a token");
    }
}
