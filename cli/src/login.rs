//! `rbuild login` / `rbuild logout`, and the registry settings every command shares (credentials, CAs, mirrors).
//!
//! Credentials live in Docker's `config.json` in Docker's format, so a `docker login` done earlier works here and
//! an `rbuild login` works for docker, skopeo and buildah afterwards. Login checks the credentials against the
//! registry before writing anything: a typo must fail now, not at the end of a long build.

use anyhow::{Context as _, Result, bail};
use rbuild_image::auth::{self, DockerConfig};
use rbuild_image::registry::{Credentials, DEFAULT_CERTS_DIR, RegistryClient, RegistryOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Registry flags shared by every command.
#[derive(clap::Args, Clone, Debug)]
pub struct RegistryFlags {
    /// Directory of per-registry CA certificates, Docker's layout: DIR/HOST[:PORT]/*.crt
    #[arg(long = "registry-certs-dir", global = true, env = "RBUILD_REGISTRY_CERTS_DIR", value_name = "DIR",
          default_value = DEFAULT_CERTS_DIR)]
    pub certs_dir: PathBuf,
    /// A registry (host[:port]) to pull docker.io images from before Docker Hub; may be repeated
    #[arg(
        long = "registry-mirror",
        global = true,
        env = "RBUILD_REGISTRY_MIRROR",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub mirrors: Vec<String>,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// User name (asked for on a terminal when missing)
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// The password (insecure: it shows in the process list and shell history; prefer --password-stdin)
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input (one line)
    #[arg(long)]
    password_stdin: bool,
    /// The registry (host[:port]); Docker Hub when omitted
    registry: Option<String>,
}

/// Docker's config directory, from the environment (read here, once).
pub fn docker_config_dir() -> Option<PathBuf> {
    auth::config_dir(std::env::var_os("DOCKER_CONFIG").map(PathBuf::from), std::env::var_os("HOME").map(PathBuf::from))
}

/// The registry options for this run. A broken `config.json` is reported and ignored, as Docker does, so that
/// commands that never touch a registry still work.
pub fn registry_options(flags: &RegistryFlags, insecure_registries: Vec<String>) -> RegistryOptions {
    let docker_config = docker_config_dir().and_then(|dir| match DockerConfig::load(&dir) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            eprintln!("warning: {}", rbuild_builder::error_chain(&e));
            None
        }
    });
    RegistryOptions {
        insecure_registries,
        credentials: Default::default(),
        docker_config,
        certs_dir: Some(flags.certs_dir.clone()),
        mirrors: flags.mirrors.iter().map(|m| auth::normalize_key(m.trim())).filter(|m| !m.is_empty()).collect(),
        timeouts: registry_timeouts(),
    }
}

/// `RBUILD_REGISTRY_IDLE_TIMEOUT` and `RBUILD_REGISTRY_DEADLINE` (seconds) override how long a registry may stall
/// and the base deadline of a request; an unparsable value is reported and ignored.
fn registry_timeouts() -> rbuild_image::registry::Timeouts {
    let mut t = rbuild_image::registry::Timeouts::default();
    let secs = |name: &str| {
        let v = std::env::var(name).ok().filter(|v| !v.is_empty())?;
        match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Some(std::time::Duration::from_secs_f64(s)),
            _ => {
                eprintln!("warning: ignoring {name}={v:?}: expected a number of seconds");
                None
            }
        }
    };
    if let Some(d) = secs("RBUILD_REGISTRY_IDLE_TIMEOUT") {
        t.idle = d;
    }
    if let Some(d) = secs("RBUILD_REGISTRY_DEADLINE") {
        t.request = d;
    }
    t
}

fn registry_name(arg: Option<&str>) -> String {
    arg.map(auth::normalize_key).unwrap_or_else(|| rbuild_image::registry::DOCKER_HUB.to_string())
}

fn prompt(label: &str) -> Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn login(opts: &RegistryOptions, args: LoginArgs) -> Result<ExitCode> {
    let registry = registry_name(args.registry.as_deref());
    let dir = docker_config_dir().context("neither DOCKER_CONFIG nor HOME is set: nowhere to keep credentials")?;
    let username = match args.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() && !args.password_stdin => prompt("Username")?,
        None => bail!("--username is required when the password comes from standard input"),
    };
    let password = if let Some(p) = args.password {
        // docker's own words.
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if std::io::stdin().is_terminal() {
        eprintln!("warning: the password will be echoed; prefer --password-stdin");
        prompt("Password")?
    } else {
        bail!("no password: use --password-stdin")
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let creds = Credentials { username, password };
    let client = RegistryClient::new(opts.clone());
    client.verify_login(&registry, &creds).await?;
    let mut config = DockerConfig::load(&dir)?;
    config.store(&registry, &creds)?;
    config.save()?;
    eprintln!("Login Succeeded (credentials for {registry} saved in {})", config.path().display());
    Ok(ExitCode::SUCCESS)
}

pub fn logout(registry: Option<String>) -> Result<ExitCode> {
    let registry = registry_name(registry.as_deref());
    let dir = docker_config_dir().context("neither DOCKER_CONFIG nor HOME is set")?;
    let mut config = DockerConfig::load(&dir)?;
    if config.erase(&registry)? {
        config.save()?;
        eprintln!("Removing login credentials for {registry}");
    } else {
        eprintln!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}
