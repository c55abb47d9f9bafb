//! Registry credentials the way Docker keeps them, so `docker login`, `rbuild login` and CI secrets are one thing.
//!
//! Docker's `config.json` holds three kinds of entries: inline `auths` (base64 `user:password`), per-registry
//! `credHelpers`, and one default `credsStore`. A helper is a program `docker-credential-<name>` that answers
//! `get`/`store`/`erase` over stdin/stdout; that protocol is small and stable, so it is spoken here directly rather
//! than through a crate that would read the environment itself (the CLI reads `$DOCKER_CONFIG` once and passes the
//! directory down). Helpers are asked lazily, for the one registry a build talks to, because asking a keychain
//! about every configured registry would prompt or stall for nothing.
//!
//! Writing keeps every field rbuild does not know (`proxies`, `psFormat`, ...) as it was, and replaces the file
//! atomically with mode 0600 — it holds secrets.

use crate::registry::{Credentials, DOCKER_HUB};
use serde_json::{Map, Value};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The key Docker uses for Docker Hub in `auths` and when talking to helpers.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the Docker config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Docker config {} is not valid JSON", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Docker config {} has a {field} that is not a JSON object", path.display())]
    Shape { path: PathBuf, field: &'static str },
    #[error("the `auth` entry for {registry} in {} is not base64 of user:password", path.display())]
    BadAuthEntry { path: PathBuf, registry: String },
    #[error("cannot write the Docker config {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run the credential helper {program} ({action} for {registry})")]
    HelperSpawn {
        program: String,
        action: &'static str,
        registry: String,
        #[source]
        source: io::Error,
    },
    #[error("the credential helper {program} failed to {action} credentials for {registry}: {message}")]
    HelperFailed { program: String, action: &'static str, registry: String, message: String },
    #[error("the credential helper {program} answered {registry} with something that is not its JSON format")]
    HelperOutput {
        program: String,
        registry: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A loaded `config.json` (or an empty one when the file does not exist yet).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    doc: Map<String, Value>,
    /// `PATH` for finding helpers, when not the inherited one (tests put fake helpers first).
    helper_path: Option<std::ffi::OsString>,
}

/// The config directory: `$DOCKER_CONFIG`, else `$HOME/.docker`. The caller passes the two variables.
pub fn config_dir(docker_config: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    docker_config.filter(|d| !d.as_os_str().is_empty()).or_else(|| home.map(|h| h.join(".docker")))
}

/// The names a registry may be filed under: `host`, `https://host`, `http://host/v1/`, and Docker Hub's aliases.
/// Returns the bare host (with port) that a key stands for.
pub fn normalize_key(key: &str) -> String {
    let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// The key Docker writes for `registry` (Docker Hub has its historic URL, everything else the bare host).
pub fn write_key(registry: &str) -> String {
    if normalize_key(registry) == DOCKER_HUB { DOCKER_HUB_AUTH_KEY.to_string() } else { normalize_key(registry) }
}

impl DockerConfig {
    /// Loads `<dir>/config.json`; a missing file is an empty config.
    pub fn load(dir: &Path) -> Result<DockerConfig, AuthError> {
        let path = dir.join("config.json");
        let doc = match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(AuthError::Shape { path, field: "top level" }),
                Err(source) => return Err(AuthError::Parse { path, source }),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Map::new(),
            Err(source) => return Err(AuthError::Read { path, source }),
        };
        let config = DockerConfig { path, doc, helper_path: None };
        for field in ["auths", "credHelpers"] {
            if config.doc.get(field).is_some_and(|v| !v.is_object()) {
                return Err(AuthError::Shape { path: config.path.clone(), field });
            }
        }
        Ok(config)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks credential helpers up in `path` (a `PATH`-style list) instead of the inherited `PATH`.
    pub fn with_helper_path(mut self, path: std::ffi::OsString) -> DockerConfig {
        self.helper_path = Some(path);
        self
    }

    fn object(&self, field: &str) -> Option<&Map<String, Value>> {
        self.doc.get(field).and_then(Value::as_object)
    }

    /// The helper responsible for `registry`: its `credHelpers` entry, else `credsStore`.
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let host = normalize_key(registry);
        let specific = self
            .object("credHelpers")
            .and_then(|helpers| helpers.iter().find(|(k, _)| normalize_key(k) == host).and_then(|(_, v)| v.as_str()));
        specific.or_else(|| self.doc.get("credsStore").and_then(Value::as_str)).map(str::to_string)
    }

    /// Credentials for `registry` (a host with optional port): the helper's answer if a helper is configured and
    /// knows the registry, else the inline `auths` entry. `Ok(None)` means anonymous.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        if let Some(helper) = self.helper_for(registry)
            && let Some(c) = helper_get(self.helper_path.as_deref(), &helper, &write_key(registry))?
        {
            return Ok(Some(c));
        }
        self.inline_credentials(registry)
    }

    /// The `auths` entry for `registry`, decoded.
    pub fn inline_credentials(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        let host = normalize_key(registry);
        let Some(auths) = self.object("auths") else { return Ok(None) };
        for (key, entry) in auths {
            if normalize_key(key) != host {
                continue;
            }
            let bad = || AuthError::BadAuthEntry { path: self.path.clone(), registry: key.clone() };
            if let Some(token) = entry.get("registrytoken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                return Ok(Some(Credentials { username: String::new(), password: token.to_string() }));
            }
            let (user, secret) = match entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                Some(auth) => {
                    let decoded = base64_decode(auth).ok_or_else(bad)?;
                    let text = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (u, p) = text.split_once(':').ok_or_else(bad)?;
                    (u.to_string(), p.to_string())
                }
                None => {
                    match (entry.get("username").and_then(Value::as_str), entry.get("password").and_then(Value::as_str))
                    {
                        (Some(u), Some(p)) => (u.to_string(), p.to_string()),
                        _ => continue,
                    }
                }
            };
            return Ok(Some(Credentials { username: user, password: secret }));
        }
        Ok(None)
    }

    /// Records credentials for `registry`: in its helper when one is configured (as Docker does), else inline.
    /// Call [`DockerConfig::save`] afterwards.
    pub fn store(&mut self, registry: &str, creds: &Credentials) -> Result<(), AuthError> {
        let key = write_key(registry);
        let auths = self.auths_mut()?;
        // One entry per registry: drop other spellings of the same host.
        auths.retain(|k, _| normalize_key(k) != normalize_key(&key));
        if let Some(helper) = self.helper_for(registry) {
            helper_store(self.helper_path.as_deref(), &helper, &key, creds)?;
            // Docker leaves an empty entry so `docker info`-style listings still show the login.
            self.auths_mut()?.insert(key, Value::Object(Map::new()));
        } else {
            let auth = base64_encode(format!("{}:{}", creds.username, creds.password).as_bytes());
            let mut entry = Map::new();
            entry.insert("auth".into(), Value::String(auth));
            self.auths_mut()?.insert(key, Value::Object(entry));
        }
        Ok(())
    }

    /// Forgets `registry`: removes its inline entries and asks its helper to erase it. Returns whether anything
    /// was known about it.
    pub fn erase(&mut self, registry: &str) -> Result<bool, AuthError> {
        let host = normalize_key(registry);
        let auths = self.auths_mut()?;
        let before = auths.len();
        auths.retain(|k, _| normalize_key(k) != host);
        let mut removed = auths.len() != before;
        if let Some(helper) = self.helper_for(registry) {
            removed |= helper_erase(self.helper_path.as_deref(), &helper, &write_key(registry))?;
        }
        Ok(removed)
    }

    fn auths_mut(&mut self) -> Result<&mut Map<String, Value>, AuthError> {
        let path = self.path.clone();
        self.doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or(AuthError::Shape { path, field: "auths" })
    }

    /// Writes the config back: pretty JSON with tabs like Docker's, to a temporary file that replaces the old one.
    pub fn save(&self) -> Result<(), AuthError> {
        let write_err = |source| AuthError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let mut bytes = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        serde::Serialize::serialize(&self.doc, &mut ser).map_err(|e| write_err(io::Error::other(e)))?;
        let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}

/// What helpers exchange on stdin/stdout.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperCredentials {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    username: String,
    secret: String,
}

/// The message helpers print (on stdout) when they know nothing about a server.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

fn helper_program(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

/// Runs `docker-credential-<helper> <action>` with `input` on stdin; returns (success, stdout).
fn run_helper(
    path: Option<&std::ffi::OsStr>,
    helper: &str,
    action: &'static str,
    registry: &str,
    input: &[u8],
) -> Result<(bool, String), AuthError> {
    let program = helper_program(helper);
    let spawn_err =
        |source| AuthError::HelperSpawn { program: program.clone(), action, registry: registry.into(), source };
    // The helper sees the ids of the namespace (some compare a file's owner with their own).
    rbuild_types::ids::wait();
    let mut command = Command::new(&program);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE; its exit status tells the real story.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() && !stdout.contains(HELPER_NOT_FOUND) {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let message = [stdout.as_str(), stderr.as_str()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
        let message = if message.is_empty() { out.status.to_string() } else { message.join(": ") };
        return Err(AuthError::HelperFailed { program, action, registry: registry.into(), message });
    }
    Ok((out.status.success(), stdout))
}

type HelperPath<'a> = Option<&'a std::ffi::OsStr>;

fn helper_get(path: HelperPath, helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
    let (ok, stdout) = run_helper(path, helper, "get", server, server.as_bytes())?;
    if !ok {
        return Ok(None);
    }
    let answer: HelperCredentials = serde_json::from_str(&stdout).map_err(|source| AuthError::HelperOutput {
        program: helper_program(helper),
        registry: server.into(),
        source,
    })?;
    // `<token>` as the user name marks an identity token; registries take it as the password of any user.
    let username = if answer.username == "<token>" { String::new() } else { answer.username };
    Ok(Some(Credentials { username, password: answer.secret }))
}

fn helper_store(path: HelperPath, helper: &str, server: &str, creds: &Credentials) -> Result<(), AuthError> {
    let input = HelperCredentials {
        server_url: server.into(),
        username: creds.username.clone(),
        secret: creds.password.clone(),
    };
    let bytes = serde_json::to_vec(&input).map_err(|source| AuthError::HelperOutput {
        program: helper_program(helper),
        registry: server.into(),
        source,
    })?;
    let (ok, stdout) = run_helper(path, helper, "store", server, &bytes)?;
    if !ok {
        return Err(AuthError::HelperFailed {
            program: helper_program(helper),
            action: "store",
            registry: server.into(),
            message: stdout,
        });
    }
    Ok(())
}

fn helper_erase(path: HelperPath, helper: &str, server: &str) -> Result<bool, AuthError> {
    Ok(run_helper(path, helper, "erase", server, server.as_bytes())?.0)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what `config.json` uses).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard or URL-safe base64, padded or not; `None` on any other character or a dangling bit group.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut bits, mut n) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    (n < 6).then_some(out)
}

#[cfg(test)]
mod tests;
