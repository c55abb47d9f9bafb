//! `--load`: hand the built image to the local Docker daemon, as `docker load` does (`POST /images/load` with a
//! docker archive), over `$DOCKER_HOST` (a `unix://` socket, default `/var/run/docker.sock`, or `tcp://`).
//!
//! The request is made by `curl` (already what rbuild uses for `ADD <url>`), which streams the archive from a
//! temporary file and speaks HTTP over a unix socket; rbuild links no HTTP client of its own for this one call.
//! The daemon is looked for before the build starts, so a missing daemon costs no build.

use anyhow::{Context as _, Result, bail};
use rbuild_cache::Store;
use rbuild_image::export::{ArchiveKind, ExportImage};
use rbuild_image::layer::Compression;
use rbuild_types::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where the Docker daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    Unix(PathBuf),
    Tcp(String),
}

impl Daemon {
    /// From `DOCKER_HOST` (read once by the caller), checked to accept connections.
    pub fn find(docker_host: Option<&str>) -> Result<Daemon> {
        let host = docker_host.filter(|h| !h.is_empty()).unwrap_or("unix:///var/run/docker.sock");
        let daemon = if let Some(path) = host.strip_prefix("unix://") {
            Daemon::Unix(PathBuf::from(path))
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            Daemon::Tcp(addr.trim_end_matches('/').to_string())
        } else {
            bail!("--load: DOCKER_HOST={host:?} is not supported (unix:///PATH or tcp://HOST:PORT)");
        };
        let reachable = match &daemon {
            Daemon::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            Daemon::Tcp(a) => std::net::TcpStream::connect(a).is_ok(),
        };
        if !reachable {
            bail!(
                "--load: no Docker daemon answers at {host}; start one or set DOCKER_HOST, or write an archive \
                 with -o type=docker,dest=image.tar and load it with docker load -i image.tar"
            );
        }
        Ok(daemon)
    }

    fn curl_args(&self) -> (Vec<String>, String) {
        match self {
            Daemon::Unix(p) => (vec!["--unix-socket".into(), p.display().to_string()], "http://localhost".into()),
            Daemon::Tcp(a) => (Vec::new(), format!("http://{a}")),
        }
    }
}

/// Writes the image (config `config`, named `names`) as a docker archive and loads it into `daemon`. Prints what
/// the daemon says it loaded.
pub fn load(
    daemon: &Daemon,
    store: &Store,
    config: &Digest,
    names: &[String],
    annotations: &BTreeMap<String, String>,
) -> Result<()> {
    let assembled =
        rbuild_image::local::assemble_annotated(store, config, Compression::Gzip { level: 6 }, annotations)?;
    let dir = store.tmp_dir("docker-load")?;
    let archive = dir.join("image.tar");
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&archive).with_context(|| format!("creating {}", archive.display()))?;
        let images = [ExportImage { image: &assembled, names: names.to_vec() }];
        let out = rbuild_image::export::write_archive(std::io::BufWriter::new(f), &images, ArchiveKind::Docker, 0)?;
        out.into_inner().map_err(|e| e.into_error()).context("writing the archive for --load")?.sync_all()?;
        post(daemon, &archive)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn post(daemon: &Daemon, archive: &std::path::Path) -> Result<()> {
    let (mut args, base) = daemon.curl_args();
    args.extend([
        "--silent".into(),
        "--show-error".into(),
        "--fail-with-body".into(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/x-tar".into(),
        // -T streams the file instead of reading it into memory.
        "-T".into(),
        archive.display().to_string(),
        format!("{base}/images/load?quiet=1"),
    ]);
    let out = Command::new("curl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .context("--load: running curl to reach the Docker daemon")?;
    let body = String::from_utf8_lossy(&out.stdout);
    // The daemon answers with JSON messages: {"stream": "Loaded image: x\n"} or {"errorDetail": ...}.
    let mut loaded = false;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(e) = msg.get("error").and_then(|e| e.as_str()).or_else(|| msg["message"].as_str()) {
            bail!("--load: the Docker daemon refused the image: {e}");
        }
        if let Some(s) = msg["stream"].as_str() {
            eprint!("{s}");
            loaded = true;
        }
    }
    if !out.status.success() {
        bail!(
            "--load: loading into the Docker daemon failed: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            body.trim()
        );
    }
    if !loaded {
        eprintln!("loaded the image into the Docker daemon");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = format!("unix://{}/none.sock", dir.path().display());
        let err = Daemon::find(Some(&sock)).expect_err("no daemon");
        assert!(err.to_string().contains("no Docker daemon answers at"), "{err}");
        assert!(Daemon::find(Some("ssh://host")).is_err());
    }
}
