//! Keeping mount points out of the layer diff.
//!
//! runc creates the destination of every mount (`/proc`, `/dev`, `/sys`, `/etc/hosts`, `/etc/resolv.conf`, the
//! targets of `RUN --mount`) in the rootfs when it is missing, and the rootfs is an overlay whose upper directory
//! becomes the image layer. Without cleanup, a `FROM scratch` image would gain an empty `/proc` directory and a
//! zero-byte `/etc/hosts` from every RUN step, which Docker does not do. So before the container starts we record
//! which destinations (and which of their parent directories) do not exist yet, and after runc has exited (all
//! its mounts are gone with its mount namespace) we remove exactly those that are still stubs: empty directories
//! and empty regular files. Anything the build step put there on purpose, such as a file in a new `/etc`, keeps
//! its directory. This is what BuildKit does too (`executor.MountStubsCleaner`, with the Dockerfile frontend's
//! recursive variant): BuildKit 0.13 leaves no created target or created parent of a cache, bind, tmpfs, secret or
//! ssh mount in the layer. Under load the reference now and then keeps one (an empty directory of a cache mount, no
//! warning logged); that is its flake, not a rule to copy.

use std::io;
use std::path::{Path, PathBuf};

use crate::user::resolve_in_root;

/// Paths in a rootfs that did not exist before a container ran, deepest last.
#[derive(Debug, Default)]
pub struct MountStubs {
    root: PathBuf,
    /// (path inside the container, host path it resolved to when recorded)
    missing: Vec<(PathBuf, PathBuf)>,
}

impl MountStubs {
    /// Records which of `destinations` (and their parents) are missing under `root`.
    pub fn record<'a>(root: &Path, destinations: impl IntoIterator<Item = &'a str>) -> io::Result<MountStubs> {
        let mut stubs = MountStubs { root: root.to_path_buf(), missing: Vec::new() };
        for destination in destinations {
            for container_path in missing_prefixes(root, Path::new(destination))? {
                let host = resolve_in_root(root, &container_path)?;
                if !stubs.missing.iter().any(|(_, h)| *h == host) {
                    stubs.missing.push((container_path, host));
                }
            }
        }
        Ok(stubs)
    }

    /// The recorded container paths, in recording order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.missing.iter().map(|(c, _)| c.as_path())
    }

    /// Removes every recorded path that is still an empty directory or an empty regular file, deepest first.
    /// A path is skipped if it now resolves elsewhere (the step replaced a parent with a symlink). Returns the
    /// container paths removed; failures are logged, since leaving a stub behind is harmless.
    pub fn remove(self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut entries = self.missing;
        entries.sort_by_key(|(c, _)| std::cmp::Reverse(c.components().count()));
        for (container_path, host) in entries {
            match resolve_in_root(&self.root, &container_path) {
                Ok(now) if now == host => {}
                _ => continue,
            }
            let Ok(meta) = std::fs::symlink_metadata(&host) else { continue };
            let result = if meta.is_dir() {
                match std::fs::read_dir(&host).map(|mut d| d.next().is_none()) {
                    Ok(true) => std::fs::remove_dir(&host).map(|()| true),
                    Ok(false) => Ok(false),
                    Err(err) => Err(err),
                }
            } else if meta.file_type().is_file() && meta.len() == 0 {
                std::fs::remove_file(&host).map(|()| true)
            } else {
                Ok(false)
            };
            match result {
                Ok(true) => removed.push(container_path),
                Ok(false) => {}
                Err(err) => tracing::warn!(path = %host.display(), error = %err, "could not remove mount stub"),
            }
        }
        removed
    }
}

/// The container paths from the first missing component of `path` down to `path` itself.
pub fn missing_prefixes(root: &Path, path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut prefix = PathBuf::from("/");
    let mut out = Vec::new();
    for component in path.components() {
        let std::path::Component::Normal(name) = component else { continue };
        prefix.push(name);
        if !out.is_empty() {
            out.push(prefix.clone());
            continue;
        }
        let host = resolve_in_root(root, &prefix)?;
        match std::fs::symlink_metadata(&host) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENOTDIR) => {
                out.push(prefix.clone());
            }
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_missing_paths_and_parents() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(root.path().join("etc/hosts"), "x").expect("write");
        let stubs = MountStubs::record(root.path(), ["/proc", "/etc/hosts", "/etc/resolv.conf", "/a/b/c", "/a/b"])
            .expect("record");
        let paths: Vec<&Path> = stubs.paths().collect();
        assert_eq!(
            paths,
            [
                Path::new("/proc"),
                Path::new("/etc/resolv.conf"),
                Path::new("/a"),
                Path::new("/a/b"),
                Path::new("/a/b/c")
            ]
        );
    }

    #[test]
    fn removes_only_what_is_still_empty() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).expect("mkdir");
        let stubs = MountStubs::record(
            r,
            ["/proc", "/etc/hosts", "/etc/resolv.conf", "/newetc/hosts", "/out/dir", "/kept/file", "/gone"],
        )
        .expect("record");
        // What runc would leave behind:
        std::fs::create_dir_all(r.join("proc")).expect("mkdir");
        std::fs::write(r.join("etc/hosts"), "").expect("write");
        std::fs::write(r.join("etc/resolv.conf"), "nameserver 1.1.1.1\n").expect("write"); // written by the step
        std::fs::create_dir_all(r.join("newetc")).expect("mkdir");
        std::fs::write(r.join("newetc/hosts"), "").expect("write");
        std::fs::create_dir_all(r.join("out/dir")).expect("mkdir");
        std::fs::create_dir_all(r.join("kept")).expect("mkdir");
        std::fs::write(r.join("kept/file"), "").expect("write");
        std::fs::write(r.join("kept/other"), "data").expect("write"); // the step's own file keeps /kept

        let mut removed = stubs.remove();
        removed.sort();
        let want: Vec<PathBuf> = ["/etc/hosts", "/kept/file", "/newetc", "/newetc/hosts", "/out", "/out/dir", "/proc"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(removed, want);
        assert!(r.join("etc").is_dir(), "existing /etc must stay");
        assert!(r.join("etc/resolv.conf").is_file(), "non-empty file must stay");
        assert!(r.join("kept/other").is_file());
        assert!(!r.join("proc").exists() && !r.join("newetc").exists() && !r.join("out").exists());
    }

    #[test]
    fn does_not_follow_a_parent_swapped_for_a_symlink() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(outside.path().join("victim")).expect("mkdir");
        let stubs = MountStubs::record(root.path(), ["/x/victim"]).expect("record");
        // The step makes /x a symlink; the resolved path no longer matches, so nothing is removed.
        std::os::unix::fs::symlink("/y", root.path().join("x")).expect("symlink");
        std::fs::create_dir_all(root.path().join("y/victim")).expect("mkdir");
        assert!(stubs.remove().is_empty());
        assert!(root.path().join("y/victim").is_dir());
        assert!(outside.path().join("victim").is_dir());
    }
}
