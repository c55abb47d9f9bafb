//! File ops: COPY and ADD into the step's root filesystem, WORKDIR's directories, and files written whole.

use super::select::Exclusions;
use super::{ExecError, LocalWorker, PathError};
use crate::copy::{CopyOptions, copy_from};
use crate::user::resolve_user;
use rbuild_solver::{CopyAction, FileAction, FileOp, Output};
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

impl LocalWorker {
    /// Applies `op`'s actions, in order, on an overlay of its destination input.
    pub(super) fn apply_file_actions(&self, op: &FileOp, inputs: &[Output]) -> Result<Output, ExecError> {
        self.check_cancelled()?;
        self.materialize(inputs)?;
        let layers = op.dest.and_then(|i| inputs.get(i)).map(|o| o.layers().to_vec()).unwrap_or_default();
        self.on_overlay(&layers, "file", |merged| {
            for action in &op.actions {
                match action {
                    FileAction::Copy(c) => {
                        let src = inputs.get(c.src).ok_or(ExecError::MissingInput { input: c.src })?;
                        self.copy_into(merged, c, src)?;
                    }
                    FileAction::Mkdir { path, mode, owner } => {
                        let owner = match owner {
                            Some(spec) => {
                                let u = resolve_user(merged, spec).map_err(|source| ExecError::WorkdirOwner {
                                    path: path.clone(),
                                    spec: spec.clone(),
                                    source,
                                })?;
                                Some((u.uid, u.gid))
                            }
                            None => None,
                        };
                        mkdir_in_root(merged, path, *mode, owner)?;
                    }
                    FileAction::MkFile { path, data, mode, owner } => {
                        let owner = match owner {
                            Some(spec) => Some(chown_ids(merged, spec)?),
                            None => None,
                        };
                        mkfile_in_root(merged, path, data.as_bytes(), *mode, owner)
                            .map_err(|source| ExecError::WriteFile { path: path.clone(), source })?;
                    }
                }
            }
            Ok(())
        })
    }

    fn copy_into(&self, merged: &Path, action: &CopyAction, src: &Output) -> Result<(), ExecError> {
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let chown = match &action.chown {
            Some(spec) => Some(chown_ids(merged, spec)?),
            None => None,
        };
        let opts = CopyOptions {
            chown,
            chmod: action.chmod,
            extract_archives: action.extract_archives,
            keep_owner: action.keep_owner,
        };
        self.with_view(src, |src_root| {
            let fail = |e: crate::copy::CopyError| exclusions.explain(action, e);
            let mut owned = None;
            let root = self.open_dir_input(src_root, action, &mut owned)?;
            if !action.parents {
                let expect = match src {
                    Output::Dir(_) => self.hashed_walk(src_root, action),
                    Output::RootFs(_) => None,
                };
                return copy_from(root, &action.sources, &excluded, merged, &action.dest, &opts, expect.as_ref())
                    .map_err(fail);
            }
            // --parents: each match lands under dest at its own directory path. (Each file is still read beneath
            // the root and checked against the walk that copies it; the matches are not compared with the hash's.)
            let found = rbuild_cache::contenthash::resolve_sources(root, &action.sources, &excluded)
                .map_err(|e| fail(e.into()))?;
            let dest = action.dest.trim_end_matches('/');
            for s in found {
                let rel = parents_rel(&s.source, &s.rel);
                let parent = rel.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let into = if parent.is_empty() { format!("{dest}/") } else { format!("{dest}/{parent}/") };
                let one = [s.rel.to_string_lossy().into_owned()];
                copy_from(root, &one, &excluded, merged, &into, &opts, None).map_err(fail)?;
            }
            Ok(())
        })
    }
}

/// The uid and gid `--chown=spec` names in the root filesystem at `merged`.
fn chown_ids(merged: &Path, spec: &str) -> Result<(u32, u32), ExecError> {
    let u = resolve_user(merged, spec).map_err(|source| ExecError::Chown { spec: spec.to_string(), source })?;
    Ok((u.uid, u.gid))
}

/// Creates `path` (and missing parents) in `root` without following symlinks out of it.
pub(super) fn mkdir_in_root(root: &Path, path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), ExecError> {
    mkdir_all(root, path, mode, owner).map_err(|source| ExecError::Mkdir { path: path.to_string(), source })
}

fn mkdir_all(root: &Path, path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), PathError> {
    let mut cur = root.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(PathError::ClimbsAbove);
        }
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                let resolved =
                    rbuild_cache::contenthash::resolve_in_root(root, cur.strip_prefix(root).unwrap_or(&cur), true)?;
                if resolved.is_dir() {
                    cur = resolved;
                    continue;
                }
                return Err(PathError::SymlinkNotADirectory { path: cur });
            }
            Ok(_) => return Err(PathError::NotADirectory { part: part.to_string() }),
            Err(_) => {
                fs::create_dir(&cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(mode))?;
                if let Some((uid, gid)) = owner {
                    chown(&cur, Some(uid), Some(gid))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a file at `path` in `root` (parents created 0755 and owned by `owner`), replacing a non-directory.
fn mkfile_in_root(root: &Path, path: &str, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), PathError> {
    let (parent, name) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, n)) if !n.is_empty() && n != "." && n != ".." => (p, n),
        _ => return Err(PathError::NoFileName),
    };
    mkdir_all(root, if parent.is_empty() { "/" } else { parent }, 0o755, owner)?;
    let dir = rbuild_cache::contenthash::resolve_in_root(root, Path::new(parent.trim_start_matches('/')), true)?;
    let target = dir.join(name);
    if let Ok(m) = fs::symlink_metadata(&target) {
        if m.is_dir() {
            return Err(PathError::DirectoryInTheWay);
        }
        fs::remove_file(&target)?;
    }
    fs::write(&target, data)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    chown(&target, Some(uid), Some(gid))?;
    Ok(())
}

/// For `COPY --parents`: the part of a matched path that is kept. A `/./` in the source marks where the kept part
/// starts (`src/./a/b` keeps `a/b`); otherwise the whole path is kept.
fn parents_rel(source: &str, matched: &Path) -> PathBuf {
    let Some(i) = source.find("/./") else { return matched.to_path_buf() };
    let pivot = rbuild_cache::contenthash::clean_clamped(&source[..i]);
    matched.strip_prefix(&pivot).map(Path::to_path_buf).unwrap_or_else(|_| matched.to_path_buf())
}
