//! Connections: plain HTTP or TLS per registry, `certs.d` CAs, credentials and login checks.

use super::*;
use oci_client::Reference;
use oci_client::client::ClientConfig;
use oci_client::client::ClientProtocol;
use oci_client::secrets::RegistryAuth;
use std::io;
use std::path::PathBuf;

impl RegistryClient {
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

    pub(super) fn has_certs_dir(&self, registry: &str) -> bool {
        let host = reference::host_of(registry);
        self.opts.certs_dir.as_ref().is_some_and(|base| base.join(registry).is_dir() || base.join(host).is_dir())
    }

    /// Completes an authentication error with whether credentials were sent.
    pub(super) fn auth_context(&self, mut e: RegistryError) -> RegistryError {
        if let RegistryError::Unauthorized { registry, had_credentials, .. } = &mut e {
            let conns = self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *had_credentials = conns.get(registry.as_str()).is_some_and(|c| !matches!(c.auth, RegistryAuth::Anonymous));
        }
        e
    }

    /// The connection for `r`'s registry, created on first use.
    pub(super) async fn conn(&self, r: &ImageRef) -> Result<Conn, RegistryError> {
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
    pub(super) fn extra_roots(&self, registry: &str) -> Result<Vec<(PathBuf, Vec<u8>)>, RegistryError> {
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

    pub(super) fn new_conn(&self, registry: &str, creds: Option<Credentials>) -> Result<Conn, RegistryError> {
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
    pub(super) fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
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
}

/// The host `oci-client` really talks to for `registry` (Docker Hub's API is not at `docker.io`).
pub(super) fn registry_host(registry: &str) -> &str {
    if registry == DOCKER_HUB { "index.docker.io" } else { registry }
}

/// An `oci-client` reference for `r`: by digest when pinned, else by tag.
pub(super) fn oci_ref(r: &ImageRef) -> Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
        (None, Some(t)) => Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone()),
        (None, None) => Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into()),
    }
}
