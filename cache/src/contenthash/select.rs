//! Selection: resolving sources (wildcards, exclusions) and walking the selected trees.

use super::*;
use crate::confined::{self, Root, Stat};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub(super) fn rel_string(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// Whether `real` (root-relative, existing, with stat `st`) is outside the selectable tree: excluded, and not a
/// directory that still holds something selectable (Docker's `!dir/keep` re-includes below an excluded `dir`).
/// This is the tree BuildKit transfers: a path through `kl -> keys` with `keys/` ignored finds nothing.
fn is_hidden(root: &Root, real: &Path, st: &Stat, excluded: &dyn Fn(&str) -> bool) -> Result<bool, ContentHashError> {
    if real.as_os_str().is_empty() || !excluded(&rel_string(real)) {
        return Ok(false);
    }
    if !st.is_dir() {
        return Ok(true);
    }
    let fd = root.open_dir(real).map_err(|e| changed_or_io(real, e))?;
    Ok(!any_selectable_below(root, &fd, real, excluded)?)
}

fn any_selectable_below(
    root: &Root,
    dir: &OwnedFd,
    real: &Path,
    excluded: &dyn Fn(&str) -> bool,
) -> Result<bool, ContentHashError> {
    for (name, st) in confined::list_dir(dir).map_err(io_err("read directory", &root.path().join(real)))? {
        let child = real.join(&name);
        if !excluded(&rel_string(&child)) {
            return Ok(true);
        }
        if st.is_dir() {
            let fd = confined::open_dir_for_listing_at(dir, &name).map_err(|e| changed_or_io(&child, e))?;
            if any_selectable_below(root, &fd, &child, excluded)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Resolves sources the way Dockerfile COPY/ADD do (final symlinks followed). See [`resolve_selection`].
pub fn resolve_sources(
    root: &Root,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<SelectedSource>, ContentHashError> {
    let sel = Selection { sources: sources.to_vec(), follow_symlinks: true };
    Ok(resolve_selection(root, &sel, excluded)?.into_iter().map(|(s, _)| s).collect())
}

/// Resolves every source to the files or directories it names, in source order (wildcard matches sorted by name),
/// with their stat. Exclusions apply both to the path as named and to every real path the resolution passes
/// through (see [`resolve`]). A selected path that is excluded is dropped when it is not a directory; an excluded
/// directory is kept here and dropped by [`walk_selection`] when nothing below it is selected. A wildcard that
/// matches nothing (or only excluded paths) selects nothing and is no error, as in BuildKit, where COPY and ADD
/// allow empty wildcards; a plain source that is missing or excluded is an error.
pub fn resolve_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<(SelectedSource, Stat)>, ContentHashError> {
    let hidden = |real: &Path, st: &Stat| is_hidden(root, real, st, excluded);
    let mut out = Vec::new();
    for source in &sel.sources {
        let rel = clean_source(source)?;
        let wildcard = has_wildcards(source);
        let mut directly_excluded = false;
        let found = if wildcard {
            resolve_wildcard(root, source, &rel, sel.follow_symlinks, &hidden)?
        } else {
            let r = resolve(root, &rel, sel.follow_symlinks, &hidden)?;
            // Named straight at (or below) an excluded path, not led there by a symlink: say it is excluded.
            directly_excluded = r.hidden.as_deref().is_some_and(|h| rel.starts_with(h));
            r.stat.map(|st| vec![(rel.clone(), r.real, st)]).unwrap_or_default()
        };
        let before = out.len();
        let existed = !found.is_empty();
        for (rel, real, st) in found {
            if !rel.as_os_str().is_empty() && !st.is_dir() && excluded(&rel_string(&rel)) {
                continue;
            }
            out.push((SelectedSource { source: source.clone(), rel, real, wildcard }, st));
        }
        // A wildcard that matches nothing selects nothing, as in BuildKit (`AllowEmptyWildcard`).
        if out.len() == before && !wildcard {
            return Err(if existed || directly_excluded {
                ContentHashError::Excluded { name: source.clone() }
            } else {
                ContentHashError::NotFound { name: source.clone() }
            });
        }
    }
    Ok(out)
}

/// Expands a wildcard source component by component. Returns (rel as matched, real path, lstat of real path).
fn resolve_wildcard(
    root: &Root,
    source: &str,
    rel: &Path,
    follow_final: bool,
    hidden: &dyn Fn(&Path, &Stat) -> Result<bool, ContentHashError>,
) -> Result<Vec<(PathBuf, PathBuf, Stat)>, ContentHashError> {
    let bad = |reason| ContentHashError::BadPattern { pattern: source.to_string(), reason };
    let comps: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    // Candidates: (rel as named, real path relative to root with every symlink resolved, its stat).
    let mut candidates: Vec<(PathBuf, PathBuf, Option<Stat>)> = vec![(PathBuf::new(), PathBuf::new(), None)];
    let mut before_wildcard = true;
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        before_wildcard &= !has_wildcards(comp);
        let mut next = Vec::new();
        for (named, real, st) in &candidates {
            let names: Vec<OsString> = if has_wildcards(comp) {
                if st.is_some_and(|s| !s.is_dir()) {
                    continue;
                }
                let fd = match root.open_dir(real) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                        continue;
                    }
                    Err(e) => return Err(changed_or_io(real, e)),
                };
                let mut matched = Vec::new();
                for (name, _) in confined::list_dir(&fd).map_err(io_err("read directory", &root.path().join(real)))? {
                    if match_component(comp, &name.to_string_lossy()).map_err(bad)? {
                        matched.push(name);
                    }
                }
                matched
            } else {
                vec![OsString::from(comp)]
            };
            for name in names {
                let r = resolve(root, &real.join(&name), !last || follow_final, hidden)?;
                if let Some(st) = r.stat {
                    next.push((named.join(&name), r.real, Some(st)));
                } else if before_wildcard {
                    // An empty wildcard is no error, but a missing directory to look in is (as in BuildKit).
                    let base = named.join(&name);
                    return Err(ContentHashError::WildcardBaseMissing { pattern: source.to_string(), base });
                }
            }
        }
        candidates = next;
    }
    Ok(candidates.into_iter().filter_map(|(named, real, st)| st.map(|st| (named, real, st))).collect())
}

/// Resolves the selection and walks every selected directory: the exact list of entries a copy writes and the
/// digest covers. Directories are listed through their own fds, opened one name at a time without following
/// symlinks, so a directory swapped for a symlink while the walk runs fails the walk instead of leading it out.
pub fn walk_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<SelectedTree>, ContentHashError> {
    let mut trees = Vec::new();
    let sources = resolve_selection(root, sel, excluded)?;
    let mut kept_per_source: HashMap<&str, usize> = HashMap::new();
    for (source, st) in &sources {
        let mut entries = Vec::new();
        let keep = if st.is_dir() {
            let fd = root.open_dir(&source.real).map_err(|e| changed_or_io(&source.real, e))?;
            let st = confined::fstat(&fd).map_err(io_err("stat", &root.path().join(&source.real)))?;
            let top_excluded = !source.rel.as_os_str().is_empty()
                && (excluded(&rel_string(&source.rel)) || excluded(&rel_string(&source.real)));
            entries.push(SelectedEntry { rel: PathBuf::new(), real: source.real.clone(), stat: st });
            let at = Walking { root, excluded, named: &source.rel };
            let any = at.walk_dir(&fd, &source.real, Path::new(""), &mut entries)?;
            !top_excluded || any
        } else {
            entries.push(SelectedEntry { rel: PathBuf::new(), real: source.real.clone(), stat: *st });
            true
        };
        if keep {
            *kept_per_source.entry(source.source.as_str()).or_default() += 1;
            trees.push(SelectedTree { source: source.clone(), entries });
        }
    }
    for source in &sel.sources {
        if !kept_per_source.contains_key(source.as_str()) && !has_wildcards(source) {
            // Resolved (so it exists) but nothing below it survived the exclusions.
            return Err(ContentHashError::Excluded { name: source.clone() });
        }
    }
    Ok(trees)
}

struct Walking<'a> {
    root: &'a Root,
    excluded: &'a dyn Fn(&str) -> bool,
    /// The selected source's root-relative path as named (exclusions see both names of an entry).
    named: &'a Path,
}

impl Walking<'_> {
    /// Appends the selected entries below the directory open as `dir` (at root-relative `real`, source-relative
    /// `rel`); returns whether anything was selected.
    fn walk_dir(
        &self,
        dir: &OwnedFd,
        real: &Path,
        rel: &Path,
        out: &mut Vec<SelectedEntry>,
    ) -> Result<bool, ContentHashError> {
        let mut any = false;
        let listed = confined::list_dir(dir).map_err(io_err("read directory", &self.root.path().join(real)))?;
        for (name, st) in listed {
            let child_real = real.join(&name);
            let child_rel = rel.join(&name);
            let named_child = self.named.join(&child_rel);
            let is_excluded = (self.excluded)(&rel_string(&child_real))
                || (named_child != child_real && (self.excluded)(&rel_string(&named_child)));
            if st.is_dir() {
                let fd = confined::open_dir_for_listing_at(dir, &name).map_err(|e| changed_or_io(&child_real, e))?;
                // The stat of what was opened, not of what was listed: they differ only if it was just swapped.
                let st = confined::fstat(&fd).map_err(io_err("stat", &self.root.path().join(&child_real)))?;
                let at = out.len();
                out.push(SelectedEntry { rel: child_rel.clone(), real: child_real.clone(), stat: st });
                let below = self.walk_dir(&fd, &child_real, &child_rel, out)?;
                if is_excluded && !below {
                    out.truncate(at);
                } else {
                    any = true;
                }
            } else if !is_excluded {
                out.push(SelectedEntry { rel: child_rel, real: child_real, stat: st });
                any = true;
            }
        }
        Ok(any)
    }
}
