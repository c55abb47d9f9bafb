//! The reference BuildKits that differential tests compare against, started by the shared scripts beside the
//! repository (`shared/tools/buildkit-up.sh`: Docker 26.1 / BuildKit 0.13; `buildkit-newest-up.sh`: Docker 28.5 /
//! BuildKit 0.25). A script prints `export K=V ...` as its last line: the environment the `docker` CLI needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Docker 26.1 with BuildKit 0.13.
    Docker26,
    /// Docker 28.5 with BuildKit 0.25 and buildx 0.29.
    Newest,
}

impl Reference {
    fn script(self) -> &'static str {
        match self {
            Reference::Docker26 => "buildkit-up.sh",
            Reference::Newest => "buildkit-newest-up.sh",
        }
    }

    /// Serialises runs of the script between tests (its first run on a machine downloads and unpacks dockerd).
    fn lock(self) -> &'static str {
        match self {
            Reference::Docker26 => "/tmp/rbuild-buildkit-up.lock",
            Reference::Newest => "/tmp/rbuild-buildkit-newest.lock",
        }
    }

    /// Starts the reference (or finds it running); its `docker` environment, or why it cannot be used.
    pub fn start(self) -> Result<Vec<(String, String)>, String> {
        // shared/ sits beside the repository (CI clones it there too).
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools").join(self.script());
        let script = if beside.is_file() { beside } else { PathBuf::from("/work/shared/tools").join(self.script()) };
        if !script.is_file() {
            return Err(format!("{} is missing", script.display()));
        }
        let out = Command::new("flock")
            .arg("-o") // the lock must not be inherited by the dockerd the script starts
            .arg(self.lock())
            .arg("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let Some(exports) = last.strip_prefix("export ").filter(|_| out.status.success()) else {
            return Err(format!("{} failed: {}", self.script(), String::from_utf8_lossy(&out.stderr)));
        };
        let path = std::env::var("PATH").unwrap_or_default();
        Ok(exports
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("$PATH", &path)))
            .collect())
    }

    /// [`Reference::start`], through the shared gate: `None` (after a visible SKIPPED, or a failure under `CI=true`)
    /// when it cannot start.
    pub fn require(self) -> Option<Vec<(String, String)>> {
        self.start().map_err(|e| crate::skip(&format!("the reference BuildKit could not start: {e}"))).ok()
    }
}
