//! Build script: records the commit rbuild is built from (`rbuild version`, `rbuild --version`). `RBUILD_COMMIT`
//! overrides it (a build from a source tarball has no git); without either it is `unknown`.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RBUILD_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from).unwrap_or_default();
    let commit = std::env::var("RBUILD_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, the branch it points at, and packed refs.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watch.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
        for p in watch {
            if let Some(path) = git(&dir, &["rev-parse", "--path-format=absolute", "--git-path", &p])
                && Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        git(&dir, &["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=RBUILD_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
