//! Which files a COPY/ADD source selects, and the content digest of exactly those files.
//!
//! The selection logic lives here, once, because two parties must agree on it byte for byte: the solver hashes what
//! a step selects to compute its cache key, and the executor copies what the step selects. If they disagreed, a
//! cache hit could reuse a layer built from different files.
//!
//! Semantics follow Docker/BuildKit:
//! - a source is relative to the source root (a leading `/` too); it is cleaned lexically and a `..` that would climb
//!   above the root is an error naming the source;
//! - wildcards (`*`, `?`, `[...]`, `\` escapes) follow Go's `filepath.Match`, one path component at a time, and a `*`
//!   matches leading dots;
//! - symlinks met while resolving a source path are followed, but resolved relative to the root (an absolute target
//!   or a `..` stops at the root), so a source can never reach outside it. With `follow_symlinks` (what the
//!   Dockerfile frontend always asks for) the final component is followed too: BuildKit copies the *target's*
//!   content for `COPY link /x` (moby/buildkit#1260), while symlinks *inside* a copied directory stay symlinks;
//! - exclusions (`.dockerignore` and `COPY --exclude`) are an opaque callback on root-relative paths, asked about
//!   both names of an entry: the path as the source spells it, and the real path it leads to. Resolution asks it
//!   about every entry a source passes through (symlinks included) and treats an excluded one as missing, which is
//!   what BuildKit's filtered context transfer amounts to: with `keys/` ignored and `kl -> keys`, `COPY kl/id_rsa`
//!   is `"/kl/id_rsa": not found`, through any chain of links, `..` or absolute targets. Because Docker's patterns
//!   may re-include files below an excluded directory (`!dir/keep`), an excluded directory is still walked and kept
//!   only when something below it is selected;
//! - every read is confined to the root by the kernel ([`crate::confined`]): resolution walks from directory fds
//!   without letting the kernel follow links, the walk lists directories through their fds, and files are opened
//!   beneath the root with no symlinks allowed and checked to be the file the walk listed. A writer swapping a
//!   directory for a symlink mid-build makes the build fail ([`ContentHashError::Changed`]), never read outside.
//!
//! The digest covers path, type, permission and special mode bits, owner, symlink target, device numbers, xattrs and
//! file bytes — never timestamps — in a length-prefixed encoding, so that touching a file changes nothing and two
//! different trees cannot produce the same byte stream. File bytes are hashed separately (in parallel) and their
//! SHA-256 enters the stream; a persistent [`StatCache`] skips re-reading files whose stat is unchanged.

use crate::confined::{self, Root, Stat};
use rbuild_types::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Symlinks followed while resolving one path before giving up (Linux stops at 40; BuildKit allows 255).
const MAX_SYMLINKS: usize = 255;

/// An entry is only trusted when its file's mtime is older than the moment it was hashed by at least this much, so
/// a same-size edit landing in the same (possibly coarse, e.g. 1 s or 2 s FAT) timestamp tick is still seen.
const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// Extended attributes that describe the storage, not the file: overlayfs bookkeeping and the host's SELinux label.
pub fn is_ignored_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") || name == b"security.selinux"
}

/// Errors while selecting or hashing source files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentHashError {
    #[error("source {name:?} is outside the source root (`..` climbs above it)")]
    EscapesRoot { name: String },
    /// BuildKit's wording: `"/kl/id_rsa": not found`.
    #[error("\"/{}\": not found", clean_clamped(name).display())]
    NotFound { name: String },
    /// The source exists but every path it names is excluded (`.dockerignore`, `--exclude`): reported apart from
    /// [`ContentHashError::NotFound`] so that the caller can say which patterns hid it.
    #[error("source {name:?} not found: it is excluded")]
    Excluded { name: String },
    /// The part of a wildcard source before its first wildcard names nothing. BuildKit's wording (it walks that
    /// directory): `lstat /nodir: no such file or directory`.
    #[error("lstat /{}: no such file or directory (the directory of wildcard source {pattern:?})", base.display())]
    WildcardBaseMissing { pattern: String, base: PathBuf },
    #[error("invalid wildcard pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: &'static str },
    /// A file or directory changed between being listed and being read (or between the hash and the copy).
    #[error("{path} changed while the build read it (is something writing to the build context?)")]
    Changed { path: PathBuf },
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: PathBuf },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentHashError + 'a {
    move |source| ContentHashError::Io { op, path: path.to_path_buf(), source }
}

/// What a step reads from one source root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Sources as written in the instruction (relative to the root, wildcards allowed).
    pub sources: Vec<String>,
    /// Follow a symlink in the final component of a source (Dockerfile COPY/ADD always do).
    pub follow_symlinks: bool,
}

/// One file or directory a source resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedSource {
    /// The source as written.
    pub source: String,
    /// The cleaned root-relative path under the name it was selected by (empty for the root itself). Its last
    /// component is the name a file lands under when copied into a directory.
    pub rel: PathBuf,
    /// Where it really is: root-relative, symlinks resolved inside the root, so a path of plain names that
    /// [`Root::open_beneath`] opens without following anything.
    pub real: PathBuf,
    /// The source contained wildcards.
    pub wildcard: bool,
}

/// One entry below (or equal to) a selected source, in walk order (parents before children, siblings sorted).
#[derive(Debug)]
pub struct SelectedEntry {
    /// Relative to the selected source; empty for the source itself.
    pub rel: PathBuf,
    /// Root-relative path of plain names (see [`SelectedSource::real`]).
    pub real: PathBuf,
    /// `lstat` of the entry when it was listed. Whoever reads the entry later checks that it is still this file
    /// ([`Stat::same_content`]), so what is hashed is what is copied.
    pub stat: Stat,
}

/// A selected source and everything below it that is not excluded.
#[derive(Debug)]
pub struct SelectedTree {
    pub source: SelectedSource,
    /// `entries[0]` is the source itself.
    pub entries: Vec<SelectedEntry>,
}

// ---------------------------------------------------------------------------------------------------------------
// Paths

/// Cleans a source path lexically: a leading `/` is relative to the root, `.` vanishes, `..` pops a component and
/// climbing above the root is an error naming `name`.
pub fn clean_source(name: &str) -> Result<PathBuf, ContentHashError> {
    let cleaned = rbuild_types::path::clean_in_root(name);
    if cleaned.climbed {
        return Err(ContentHashError::EscapesRoot { name: name.to_string() });
    }
    Ok(cleaned.parts.iter().collect())
}

/// Cleans a path lexically, clamping `..` at the root the way a path inside a container resolves (`/../x` is `/x`).
pub fn clean_clamped(path: &str) -> PathBuf {
    rbuild_types::path::clean_in_root(path).parts.iter().collect()
}

/// Resolves `rel` (a root-relative path) to a real path under `root`, following symlinks the way they would resolve
/// if `root` were `/`: an absolute target restarts at `root`, `..` never climbs above it. The final component is
/// followed only if `follow_final`. Components that do not exist are appended as they are, so the result can be
/// used to create them; every existing component of the result is a real directory (no symlinks), which is what
/// keeps writes below `root`. The walk itself is confined by the kernel (see [`resolve`]).
pub fn resolve_in_root(root: &Path, rel: &Path, follow_final: bool) -> Result<PathBuf, ContentHashError> {
    let root_fd = match Root::open(root) {
        Ok(r) => r,
        // Nothing exists yet: every component is missing, appended lexically as `resolve` would.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(root.join(clean_clamped(&rel.to_string_lossy()))),
        Err(e) => return Err(io_err("open", root)(e)),
    };
    let r = resolve(&root_fd, rel, follow_final, &|_, _| Ok(false))?;
    Ok(root.join(r.real))
}

/// Where [`resolve`] led.
#[derive(Debug)]
pub struct Resolved {
    /// Root-relative; every existing component a real directory (or, last, the entry itself).
    pub real: PathBuf,
    /// `lstat` of the entry `real` names; `None` when it does not exist (or is hidden).
    pub stat: Option<Stat>,
    /// The first path the `hidden` check hid, root-relative: the resolution treated it as missing.
    pub hidden: Option<PathBuf>,
}

/// Resolves `rel` inside `root` with chroot semantics, like [`resolve_in_root`], one component at a time from
/// directory file descriptors (`fstatat`, `readlinkat` and `openat` with `O_NOFOLLOW` on single names), so that a
/// component swapped for a symlink by a racing writer is read as a symlink and resolved inside the root too, never
/// followed by the kernel. `..` returns to the directory fd the walk came from, never to a parent found by name.
///
/// `hidden(real, stat)` is asked about every existing entry the path passes through, by its real root-relative
/// path: symlinks on the way, the directories they lead through and the final entry. A hidden entry is treated as
/// missing, which is how `.dockerignore` applies to where a path *leads* and not only to how it is spelled.
pub fn resolve(
    root: &Root,
    rel: &Path,
    follow_final: bool,
    hidden: &dyn Fn(&Path, &Stat) -> Result<bool, ContentHashError>,
) -> Result<Resolved, ContentHashError> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, rel);
    let mut resolved: Vec<OsString> = Vec::new();
    // fds[i] is the open directory resolved[..=i], for the existing prefix of `resolved`.
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Index in `resolved` of the first component that does not exist (or is not a directory but has more below).
    let mut missing_from: Option<usize> = None;
    let mut hidden_at: Option<PathBuf> = None;
    let mut last_stat: Option<Stat> = None;
    let mut links = 0usize;
    let here = |resolved: &[OsString]| root.path().join(resolved.iter().collect::<PathBuf>());
    while let Some(name) = pending.pop_front() {
        last_stat = None;
        if name == ".." {
            resolved.pop();
            fds.truncate(resolved.len());
            if missing_from.is_some_and(|m| resolved.len() <= m) {
                missing_from = None;
            }
            continue;
        }
        if missing_from.is_some() {
            resolved.push(name);
            continue;
        }
        let dir = fds.last().map_or(root.fd(), |f| f.as_fd());
        let st = match confined::stat_at(dir, &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                missing_from = Some(resolved.len());
                resolved.push(name);
                continue;
            }
            Err(e) => return Err(io_err("stat", &here(&resolved).join(&name))(e)),
        };
        let real: PathBuf = resolved.iter().chain(std::iter::once(&name)).collect();
        if hidden(&real, &st)? {
            hidden_at.get_or_insert(real);
            missing_from = Some(resolved.len());
            resolved.push(name);
            continue;
        }
        let is_last = pending.is_empty();
        if st.is_symlink() && (!is_last || follow_final) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ContentHashError::SymlinkLoop { path: root.path().join(rel) });
            }
            // EINVAL: no longer a symlink; swapped since the stat.
            let target = confined::read_link_at(dir, &name).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => ContentHashError::Changed { path: real.clone() },
                _ => changed_or_io(&real, e),
            })?;
            if target.is_absolute() {
                resolved.clear();
                fds.clear();
            }
            let mut rest = VecDeque::new();
            push_components(&mut rest, &target);
            rest.append(&mut pending);
            pending = rest;
            continue;
        }
        if is_last {
            resolved.push(name);
            last_stat = Some(st);
        } else if st.is_dir() {
            let fd = confined::open_dir_at(dir, &name).map_err(|e| changed_or_io(&real, e))?;
            fds.push(fd);
            resolved.push(name);
        } else {
            // Not a directory, yet something is looked up below it: that is missing.
            missing_from = Some(resolved.len());
            resolved.push(name);
        }
    }
    let stat = match (missing_from, last_stat) {
        (Some(_), _) => None,
        (None, Some(st)) => Some(st),
        (None, None) => Some(match resolved.split_last() {
            // The path ended in `..` or was empty: the directory the walk stands in.
            _ if fds.len() == resolved.len() => confined::fstat(fds.last().map_or(root.fd(), |f| f.as_fd()))
                .map_err(io_err("stat", &here(&resolved)))?,
            Some((last, _)) => {
                let parent = fds.get(resolved.len().wrapping_sub(2)).map_or(root.fd(), |f| f.as_fd());
                confined::stat_at(parent, last).map_err(io_err("stat", &here(&resolved)))?
            }
            None => confined::fstat(root.fd()).map_err(io_err("stat", root.path()))?,
        }),
    };
    Ok(Resolved { real: resolved.iter().collect(), stat, hidden: hidden_at })
}

fn push_components(to: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => to.push_back(n.to_os_string()),
            Component::ParentDir => to.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// An entry that was there a moment ago is gone or became something else: the tree is being changed.
fn changed_or_io(real: &Path, e: io::Error) -> ContentHashError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => ContentHashError::Changed { path: real.to_path_buf() },
        _ => ContentHashError::Io { op: "open", path: real.to_path_buf(), source: e },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Wildcards (Go's filepath.Match, per component)

/// Whether `s` contains an unescaped `*`, `?` or `[`.
pub fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Matches one path component against one pattern component with Go's `filepath.Match` rules (one copy, shared
/// with `.dockerignore` validation).
pub use rbuild_types::glob::match_component;

// ---------------------------------------------------------------------------------------------------------------
// Selection

fn rel_string(rel: &Path) -> String {
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

// ---------------------------------------------------------------------------------------------------------------
// Digest

/// Length-prefixed writer into the digest: no two different field sequences produce the same byte stream. While
/// `entry` is set, the same bytes also go to it (the digest of one entry, for [`content_files`]).
struct Encoder {
    main: Sha256,
    entry: Option<Sha256>,
}

impl Encoder {
    fn update(&mut self, b: &[u8]) {
        self.main.update(b);
        if let Some(e) = &mut self.entry {
            e.update(b);
        }
    }
    fn u8(&mut self, v: u8) {
        self.update(&[v]);
    }
    fn u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.update(b);
    }
}

const TAG_SOURCE: u8 = 1;
const TAG_MATCH: u8 = 2;
const TAG_ENTRY: u8 = 3;

fn kind_byte(st: &Stat) -> u8 {
    if st.is_dir() {
        b'd'
    } else if st.is_file() {
        b'f'
    } else if st.is_symlink() {
        b'l'
    } else if st.is_char_device() {
        b'c'
    } else if st.is_block_device() {
        b'b'
    } else if st.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

/// The xattrs of a selected entry that describe the file, sorted by name, read without following it.
pub fn entry_xattrs(root: &Root, e: &SelectedEntry) -> Result<Vec<(OsString, Vec<u8>)>, ContentHashError> {
    root.xattrs(&e.real, &e.stat, is_ignored_xattr).map_err(|err| changed_or_io(&e.real, err))
}

/// Opens a selected regular file for reading and checks that it is still the file that was listed.
pub fn open_entry(root: &Root, e: &SelectedEntry) -> Result<File, ContentHashError> {
    let f = root.open_file(&e.real).map_err(|err| changed_or_io(&e.real, err))?;
    check_unchanged(&f, e)?;
    Ok(f)
}

/// Fails with [`ContentHashError::Changed`] unless the open `f` still is `e` as listed (see [`Stat::same_content`]).
pub fn check_unchanged(f: &File, e: &SelectedEntry) -> Result<(), ContentHashError> {
    let now = confined::fstat(f).map_err(io_err("stat", &e.real))?;
    if now.same_content(&e.stat) { Ok(()) } else { Err(ContentHashError::Changed { path: e.real.clone() }) }
}

/// The target of a selected symlink, checked to be the link that was listed.
pub fn entry_link(root: &Root, e: &SelectedEntry) -> Result<PathBuf, ContentHashError> {
    let (target, st) = root.read_link(&e.real).map_err(|err| changed_or_io(&e.real, err))?;
    if (st.dev, st.ino) != (e.stat.dev, e.stat.ino) {
        return Err(ContentHashError::Changed { path: e.real.clone() });
    }
    Ok(target)
}

/// A digest of what identifies every walked entry (path, device, inode, type, mode, owner, size and, for
/// non-directories, times), with no content read. Two walks with the same fingerprint listed the same files in the
/// same state, so a copy that walks again can check it copies exactly what the cache key's digest covered.
pub fn fingerprint(trees: &[SelectedTree]) -> Digest {
    let mut enc = Encoder { main: Sha256::new(), entry: None };
    enc.bytes(b"rbuild-walk-v1");
    for tree in trees {
        enc.bytes(tree.source.source.as_bytes());
        enc.bytes(tree.source.rel.as_os_str().as_bytes());
        for e in &tree.entries {
            let st = &e.stat;
            enc.bytes(e.real.as_os_str().as_bytes());
            enc.bytes(e.rel.as_os_str().as_bytes());
            for v in [st.dev, st.ino, u64::from(st.mode), u64::from(st.uid), u64::from(st.gid)] {
                enc.u64(v);
            }
            // A directory's times move whenever anything in it changes, selected or not: its entries say enough.
            if !st.is_dir() {
                for v in [st.size as i64, st.mtime.0, st.mtime.1, st.ctime.0, st.ctime.1] {
                    enc.u64(v as u64);
                }
            }
        }
    }
    Digest::from_sha256(enc.main.finalize().into())
}

/// Digest of exactly the selected files: for every selected path (recursively for directories, parents first,
/// siblings sorted by name) its path relative to the selection, type, mode (permission and special bits), uid, gid,
/// symlink target, device numbers, xattrs (sorted, storage-specific ones left out) and, for regular files, the
/// SHA-256 of their bytes. Timestamps never enter it.
pub fn content_digest(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<Digest, ContentHashError> {
    digest_selection(root, sel, excluded, cache, false).map(|d| d.digest)
}

/// Like [`content_digest`], plus every selected path (relative to the root) with the digest of its own part of the
/// encoding (metadata and bytes), so that a changed content digest can be traced to the files that changed.
pub fn content_files(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<(Digest, Vec<(String, Digest)>), ContentHashError> {
    digest_selection(root, sel, excluded, cache, true).map(|d| (d.digest, d.files))
}

/// The content digest of a selection and the [`fingerprint`] of the walk it was computed from.
#[derive(Debug, Clone)]
pub struct HashedSelection {
    pub digest: Digest,
    pub fingerprint: Digest,
    /// Per-file digests, when asked for ([`content_files`]).
    pub files: Vec<(String, Digest)>,
}

/// [`content_digest`] and the fingerprint of the walk it hashed.
pub fn hash_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<HashedSelection, ContentHashError> {
    digest_selection(root, sel, excluded, cache, false)
}

fn digest_selection(
    root: &Root,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
    per_file: bool,
) -> Result<HashedSelection, ContentHashError> {
    let mut files_out = Vec::new();
    let trees = walk_selection(root, sel, excluded)?;
    let files: Vec<&SelectedEntry> = trees.iter().flat_map(|t| t.entries.iter()).filter(|e| e.stat.is_file()).collect();
    // In walk order: the n-th regular file met below is `file_digests[n]`.
    let file_digests = hash_files(root, &files, cache)?;
    let mut next_file = file_digests.iter();

    let mut enc = Encoder { main: Sha256::new(), entry: None };
    enc.bytes(b"rbuild-contenthash-v1");
    enc.u8(u8::from(sel.follow_symlinks));
    let mut last_source: Option<&str> = None;
    for tree in &trees {
        if last_source != Some(tree.source.source.as_str()) {
            enc.u8(TAG_SOURCE);
            enc.bytes(tree.source.source.as_bytes());
            last_source = Some(tree.source.source.as_str());
        }
        enc.u8(TAG_MATCH);
        enc.bytes(tree.source.rel.as_os_str().as_bytes());
        for e in &tree.entries {
            let st = &e.stat;
            if per_file {
                enc.entry = Some(Sha256::new());
            }
            enc.u8(TAG_ENTRY);
            enc.bytes(e.rel.as_os_str().as_bytes());
            enc.u8(kind_byte(st));
            enc.u64(u64::from(st.permissions()));
            enc.u64(u64::from(st.uid));
            enc.u64(u64::from(st.gid));
            if st.is_symlink() {
                let target = entry_link(root, e)?;
                enc.bytes(target.as_os_str().as_bytes());
            } else {
                enc.bytes(b"");
            }
            enc.u64(if st.is_char_device() || st.is_block_device() { st.rdev } else { 0 });
            let hashed = if st.is_file() { next_file.next() } else { None };
            let listed;
            let xattrs = match hashed {
                Some(h) => &h.xattrs,
                None => {
                    listed = entry_xattrs(root, e)?;
                    &listed
                }
            };
            enc.u64(xattrs.len() as u64);
            for (name, value) in xattrs {
                enc.bytes(name.as_bytes());
                enc.bytes(value);
            }
            match hashed {
                Some(h) => enc.bytes(&h.digest),
                None => enc.bytes(b""),
            }
            if let Some(entry) = enc.entry.take() {
                let rel =
                    if e.rel.as_os_str().is_empty() { tree.source.rel.clone() } else { tree.source.rel.join(&e.rel) };
                files_out.push((rel.to_string_lossy().into_owned(), Digest::from_sha256(entry.finalize().into())));
            }
        }
    }
    Ok(HashedSelection {
        digest: Digest::from_sha256(enc.main.finalize().into()),
        fingerprint: fingerprint(&trees),
        files: files_out,
    })
}

/// A regular file's content digest and xattrs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hashed {
    digest: [u8; 32],
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Hashes file contents, in parallel on up to 4 threads (hashing is I/O- and SHA-bound; more threads only thrash).
fn hash_files(
    root: &Root,
    files: &[&SelectedEntry],
    cache: Option<&StatCache>,
) -> Result<Vec<Hashed>, ContentHashError> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4).min(files.len());
    if workers <= 1 {
        return files.iter().map(|e| hash_one(root, e, cache)).collect();
    }
    let next = AtomicUsize::new(0);
    type Slot = Mutex<Option<Result<Hashed, ContentHashError>>>;
    let results: Vec<Slot> = files.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(e) = files.get(i) else { break };
                    let r = hash_one(root, e, cache);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(files.len());
    for (slot, e) in results.into_iter().zip(files) {
        let r = slot.into_inner().ok().flatten().ok_or_else(|| ContentHashError::Io {
            op: "hash",
            path: e.real.clone(),
            source: io::Error::other("hashing thread did not finish"),
        })?;
        out.push(r?);
    }
    Ok(out)
}

/// Hashes the bytes of the file that was listed as `e`: opened beneath the root, checked to be the listed file
/// before and after reading, so the digest belongs to the stat a later copy checks against.
fn hash_one(root: &Root, e: &SelectedEntry, cache: Option<&StatCache>) -> Result<Hashed, ContentHashError> {
    let key = StatKey::of(&e.stat);
    let path = root.path().join(&e.real);
    if let Some(h) = cache.and_then(|c| c.lookup(&path, &key)) {
        return Ok(h);
    }
    let recorded_ns = now_ns();
    let mut f = open_entry(root, e)?;
    let xattrs = confined::fd_xattrs(&f, is_ignored_xattr).map_err(io_err("read xattrs of", &path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_err("read", &path)(err)),
        };
        hasher.update(&buf[..n]);
    }
    // Written to while it was read: the bytes belong to no stat anyone can check later.
    check_unchanged(&f, e)?;
    let hashed = Hashed { digest: hasher.finalize().into(), xattrs };
    if let Some(c) = cache {
        c.files_read.fetch_add(1, Ordering::Relaxed);
        c.insert(&path, key, recorded_ns, hashed.clone());
    }
    Ok(hashed)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Stat cache

/// The stat fields that must all be unchanged for a cached file digest to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
}

impl StatKey {
    fn of(st: &Stat) -> StatKey {
        StatKey {
            size: st.size,
            mtime_ns: st.mtime.0.saturating_mul(1_000_000_000).saturating_add(st.mtime.1),
            ctime_ns: st.ctime.0.saturating_mul(1_000_000_000).saturating_add(st.ctime.1),
            ino: st.ino,
            mode: st.mode,
        }
    }
}

#[derive(Debug, Clone)]
struct CacheEntry {
    key: StatKey,
    /// When the file was hashed (wall clock, before reading it).
    recorded_ns: i64,
    /// Content digest and xattrs: an xattr change moves ctime, so an unchanged stat vouches for both, and a warm
    /// build needs no `llistxattr` per file.
    hashed: Hashed,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Keyed by the path's bytes: hashing a `Path` walks its components, which showed up in profiles.
    entries: HashMap<Vec<u8>, CacheEntry>,
    dirty: bool,
}

/// Persistent map from a file's stat to its content digest, so unchanged files of a large context are not re-read.
///
/// Stored as one binary file: magic, entry count, entries sorted by path, then a SHA-256 of everything before it.
/// A file that is missing, truncated or corrupt loads as an empty cache (a cache can always be rebuilt; a wrong
/// entry could not be detected).
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    inner: Mutex<CacheInner>,
    files_read: AtomicU64,
}

const CACHE_MAGIC: &[u8; 16] = b"rbuild-statcache";
const CACHE_VERSION: u32 = 2;

impl StatCache {
    /// Loads the cache stored at `path`; anything unreadable gives an empty cache that will be saved there.
    pub fn load(path: &Path) -> StatCache {
        let entries = fs::read(path).ok().and_then(|b| decode_cache(&b)).unwrap_or_default();
        StatCache {
            path: path.to_path_buf(),
            inner: Mutex::new(CacheInner { entries, dirty: false }),
            files_read: AtomicU64::new(0),
        }
    }

    /// How many files were actually read (not answered from the cache) through this cache since it was loaded.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the cache atomically (temp file in the same directory, fsync, rename, fsync the directory). A cache
    /// that was not changed since loading is not rewritten.
    pub fn save(&self) -> Result<(), ContentHashError> {
        let bytes = {
            let inner = self.inner.lock().map_err(|_| ContentHashError::Io {
                op: "lock",
                path: self.path.clone(),
                source: io::Error::other("stat cache lock poisoned"),
            })?;
            if !inner.dirty {
                return Ok(());
            }
            encode_cache(&inner.entries)
        };
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temporary file in", dir))?;
        tmp.write_all(&bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", &self.path))?;
        tmp.persist(&self.path).map_err(|e| ContentHashError::Io {
            op: "rename onto",
            path: self.path.clone(),
            source: e.error,
        })?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))?;
        if let Ok(mut inner) = self.inner.lock() {
            inner.dirty = false;
        }
        Ok(())
    }

    /// The cached digest and xattrs of `path`, if its stat is unchanged and the entry is not racy.
    fn lookup(&self, path: &Path, key: &StatKey) -> Option<Hashed> {
        let inner = self.inner.lock().ok()?;
        let e = inner.entries.get(path.as_os_str().as_bytes())?;
        // Racy-git rule: a file modified in the same timestamp tick as (or after) the moment it was hashed may
        // have been edited again without its mtime moving; only entries whose mtime is safely older are trusted.
        // ctime too, since it is what an xattr, mode or owner change moves.
        let safe = e.recorded_ns.saturating_sub(RACY_MARGIN_NS);
        (e.key == *key && key.mtime_ns < safe && key.ctime_ns < safe).then(|| e.hashed.clone())
    }

    fn insert(&self, path: &Path, key: StatKey, recorded_ns: i64, hashed: Hashed) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.insert(path.as_os_str().as_bytes().to_vec(), CacheEntry { key, recorded_ns, hashed });
            inner.dirty = true;
        }
    }
}

fn encode_cache(entries: &HashMap<Vec<u8>, CacheEntry>) -> Vec<u8> {
    let mut sorted: Vec<(&Vec<u8>, &CacheEntry)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(64 + sorted.len() * 128);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (path, e) in sorted {
        let p = path.as_slice();
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(&e.key.size.to_le_bytes());
        out.extend_from_slice(&e.key.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.key.ino.to_le_bytes());
        out.extend_from_slice(&e.key.mode.to_le_bytes());
        out.extend_from_slice(&e.recorded_ns.to_le_bytes());
        out.extend_from_slice(&e.hashed.digest);
        out.extend_from_slice(&(e.hashed.xattrs.len() as u32).to_le_bytes());
        for (name, value) in &e.hashed.xattrs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn decode_cache(bytes: &[u8]) -> Option<HashMap<Vec<u8>, CacheEntry>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    let expect: [u8; 32] = Sha256::digest(body).into();
    if expect.as_slice() != sum {
        return None;
    }
    let mut c = Cursor(body);
    if c.take(CACHE_MAGIC.len())? != CACHE_MAGIC || u32::from_le_bytes(c.array()?) != CACHE_VERSION {
        return None;
    }
    let count = u64::from_le_bytes(c.array()?);
    let mut entries = HashMap::new();
    for _ in 0..count {
        let plen = u32::from_le_bytes(c.array()?) as usize;
        let path = c.take(plen)?.to_vec();
        let key = StatKey {
            size: u64::from_le_bytes(c.array()?),
            mtime_ns: i64::from_le_bytes(c.array()?),
            ctime_ns: i64::from_le_bytes(c.array()?),
            ino: u64::from_le_bytes(c.array()?),
            mode: u32::from_le_bytes(c.array()?),
        };
        let recorded_ns = i64::from_le_bytes(c.array()?);
        let digest = c.array()?;
        let n = u32::from_le_bytes(c.array()?) as usize;
        let mut xattrs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let len = u32::from_le_bytes(c.array()?) as usize;
            let name = OsStr::from_bytes(c.take(len)?).to_os_string();
            let len = u32::from_le_bytes(c.array()?) as usize;
            xattrs.push((name, c.take(len)?.to_vec()));
        }
        entries.insert(path, CacheEntry { key, recorded_ns, hashed: Hashed { digest, xattrs } });
    }
    if !c.0.is_empty() {
        return None;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn set_mtime(path: &Path, secs: i64, nsec: i64) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let ts = [libc::timespec { tv_sec: secs, tv_nsec: nsec }, libc::timespec { tv_sec: secs, tv_nsec: nsec }];
        // SAFETY: valid path and two timespecs, as utimensat requires.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(rc, 0, "utimensat {}", path.display());
    }

    fn sel(sources: &[&str]) -> Selection {
        Selection { sources: sources.iter().map(|s| s.to_string()).collect(), follow_symlinks: true }
    }

    fn none(_: &str) -> bool {
        false
    }

    fn rt(path: &Path) -> Root {
        Root::open(path).unwrap()
    }

    fn digest(root: &Path, sources: &[&str]) -> Digest {
        content_digest(&rt(root), &sel(sources), &none, None).unwrap()
    }

    #[test]
    fn clean_source_stays_inside_root() {
        assert_eq!(clean_source("a/../b").unwrap(), PathBuf::from("b"));
        assert_eq!(clean_source("/a/./b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_source(".").unwrap(), PathBuf::new());
        for bad in ["../x", "a/../../x", "/.."] {
            let err = clean_source(bad).unwrap_err();
            assert!(matches!(&err, ContentHashError::EscapesRoot { name } if name == bad), "{bad}: {err}");
            assert!(err.to_string().contains(bad));
        }
        assert_eq!(clean_clamped("/../../x/./y/"), PathBuf::from("x/y"));
    }

    #[test]
    fn go_match_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.txt", "a.txt", true),
            ("*.txt", ".hidden.txt", true),
            ("*.txt", "a.txt.bak", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[^a-c]x", "dx", true),
            ("[^a-c]x", "ax", false),
            ("[\\]]", "]", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b", "acb_", false),
            ("*", "", true),
            ("", "a", false),
        ];
        for &(p, n, want) in cases {
            assert_eq!(match_component(p, n), Ok(want), "{p:?} vs {n:?}");
        }
        for bad in ["[", "[]a]", "[a-]", "a\\", "[^]"] {
            assert!(match_component(bad, "a").is_err(), "{bad:?} should be a bad pattern");
        }
        assert!(
            has_wildcards("a/*.txt") && has_wildcards("[ab]") && !has_wildcards("a\\*b") && !has_wildcards("plain")
        );
    }

    /// `keys/` ignored, and every kind of link into it: a source must find nothing wherever it is led from.
    #[test]
    fn dockerignore_applies_to_where_a_source_leads() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "keys/id_rsa", "secret");
        write(root, "sub/ok.txt", "ok");
        symlink("keys", root.join("kl")).unwrap();
        symlink("/keys", root.join("abs")).unwrap();
        symlink("sub/../keys", root.join("dotdot")).unwrap();
        symlink("../../../keys", root.join("sub/up")).unwrap();
        symlink("kl", root.join("chain")).unwrap();
        symlink("keys/id_rsa", root.join("idl")).unwrap();
        let keys = |p: &str| p == "keys" || p.starts_with("keys/");
        let r = rt(root);
        for source in ["kl/id_rsa", "abs/id_rsa", "dotdot/id_rsa", "sub/up/id_rsa", "chain/id_rsa", "idl", "kl", "kl/"]
        {
            let err = walk_selection(&r, &sel(&[source]), &keys).unwrap_err();
            assert!(matches!(&err, ContentHashError::NotFound { name } if name == source), "{source}: {err}");
            let shown = format!("\"/{}\": not found", clean_clamped(source).display());
            assert_eq!(err.to_string(), shown);
        }
        for pattern in ["k*/id_rsa", "*/id_rsa", "id*"] {
            let trees = walk_selection(&r, &sel(&[pattern]), &keys).unwrap();
            assert!(trees.is_empty(), "{pattern} selected {trees:?}");
        }
        // The directory a wildcard looks in leads into the ignored one: missing, as BuildKit's context lacks it.
        for pattern in ["kl/*", "chain/*"] {
            let err = walk_selection(&r, &sel(&[pattern]), &keys).unwrap_err();
            assert!(matches!(err, ContentHashError::WildcardBaseMissing { .. }), "{pattern}: {err}");
        }
        // Named straight at it: reported as excluded, so the caller can say by what.
        let err = walk_selection(&r, &sel(&["keys/id_rsa"]), &keys).unwrap_err();
        assert!(matches!(err, ContentHashError::Excluded { .. }), "{err}");
        // The whole root: the links are entries (copied as links), the ignored directory is not.
        let trees = walk_selection(&r, &sel(&["."]), &keys).unwrap();
        let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.rel)).collect();
        assert_eq!(rels, ["", "abs", "chain", "dotdot", "idl", "kl", "sub", "sub/ok.txt", "sub/up"]);
        // A re-included file below the ignored directory is reachable through the link, and only it.
        let reinclude = |p: &str| keys(p) && p != "keys/pub";
        write(root, "keys/pub", "public");
        let trees = walk_selection(&r, &sel(&["kl"]), &reinclude).unwrap();
        let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.real)).collect();
        assert_eq!(rels, ["keys", "keys/pub"]);
        assert!(walk_selection(&r, &sel(&["kl/id_rsa"]), &reinclude).is_err());
    }

    /// A racing writer swaps a directory for a symlink to a host directory after the walk opened it (here: from the
    /// exclusion callback, which the walk calls while listing). The files listed are then read beneath the root
    /// without following anything, so the hash fails instead of reading the host's files.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_walk_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        let host = t.path().join("host");
        write(&root, "d/f1", "context");
        write(&root, "d/f2", "context");
        write(&host, "f1", "CANARY");
        write(&host, "f2", "CANARY");
        let swapped = std::sync::atomic::AtomicBool::new(false);
        let swap = |p: &str| {
            if p == "d/f1" && !swapped.swap(true, Ordering::SeqCst) {
                fs::rename(root.join("d"), root.join("d.real")).unwrap();
                symlink(&host, root.join("d")).unwrap();
            }
            false
        };
        let err = content_digest(&rt(&root), &sel(&["d"]), &swap, None).unwrap_err();
        assert!(matches!(err, ContentHashError::Changed { .. }), "{err}");
        assert!(swapped.load(Ordering::SeqCst));
        // And from now on `d` resolves inside the root (to nothing): the host directory is never a source.
        let err = content_digest(&rt(&root), &sel(&["d/f1"]), &none, None).unwrap_err();
        assert!(matches!(err, ContentHashError::NotFound { .. }), "{err}");
    }

    #[test]
    fn walk_fingerprint_moves_with_any_selected_change() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "d/a", "a");
        write(root, "other", "o");
        let r = rt(root);
        let fp = || fingerprint(&walk_selection(&r, &sel(&["d"]), &none).unwrap());
        let hashed = hash_selection(&r, &sel(&["d"]), &none, None).unwrap();
        assert_eq!(hashed.fingerprint, fp());
        fs::write(root.join("other"), "unselected").unwrap();
        assert_eq!(fp(), hashed.fingerprint, "an unselected file does not count");
        fs::write(root.join("d/a"), "b").unwrap();
        assert_ne!(fp(), hashed.fingerprint, "same size, new bytes: mtime/ctime moved");
        let edited = fp();
        write(root, "d/new", "");
        assert_ne!(fp(), edited, "a new file counts");
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "etc/passwd", "inside");
        write(root, "real/file", "x");
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("abs/passwd"), true).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("up/etc/passwd"), true).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("rel/file"), true).unwrap(), root.join("real/file"));
        assert_eq!(resolve_in_root(root, Path::new("rel"), false).unwrap(), root.join("rel"));
        assert_eq!(resolve_in_root(root, Path::new("rel/new/deeper"), true).unwrap(), root.join("real/new/deeper"));
        assert!(matches!(resolve_in_root(root, Path::new("loop1/x"), true), Err(ContentHashError::SymlinkLoop { .. })));

        // A source through a symlink to /etc sees the root's etc, never the host's.
        let got = resolve_sources(&rt(root), &["abs/passwd".to_string()], &none).unwrap();
        assert_eq!(got[0].real, PathBuf::from("etc/passwd"));
        assert_eq!(got[0].rel, PathBuf::from("abs/passwd"));
        let err = resolve_sources(&rt(root), &["abs/shadow".to_string()], &none).unwrap_err();
        assert!(matches!(&err, ContentHashError::NotFound { name } if name == "abs/shadow"), "{err}");
    }

    #[test]
    fn wildcards_and_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "d1/f1.txt", "1");
        write(root, "d1/g.txt", "g");
        write(root, "d2/f2.txt", "2");
        write(root, "e/f3.txt", "3");
        let got = resolve_sources(&rt(root), &["d*/f?.txt".to_string()], &none).unwrap();
        let rels: Vec<_> = got.iter().map(|s| s.rel.clone()).collect();
        assert_eq!(rels, vec![PathBuf::from("d1/f1.txt"), PathBuf::from("d2/f2.txt")]);
        assert!(got.iter().all(|s| s.wildcard));

        // A wildcard matching nothing selects nothing, alone or next to a source that matches (BuildKit).
        assert!(resolve_sources(&rt(root), &["*.nope".to_string()], &none).unwrap().is_empty());
        assert!(resolve_sources(&rt(root), &["e/f3.txt/*".to_string()], &none).unwrap().is_empty());
        let err = resolve_sources(&rt(root), &["nodir/sub/*.txt".to_string()], &none).unwrap_err();
        assert!(err.to_string().starts_with("lstat /nodir: no such file or directory"), "{err}");
        let got = resolve_sources(&rt(root), &["e/f3.txt".to_string(), "*.nope".to_string()], &none).unwrap();
        assert_eq!(got.len(), 1);
        let err = resolve_sources(&rt(root), &["missing.txt".to_string()], &none).unwrap_err();
        assert!(err.to_string().contains("missing.txt") && err.to_string().contains("not found"));
        let err = resolve_sources(&rt(root), &["[".to_string()], &none).unwrap_err();
        assert!(matches!(err, ContentHashError::BadPattern { .. }));
        // Everything the wildcard matched is excluded: same as matching nothing.
        let got = resolve_sources(&rt(root), &["d1/*.txt".to_string()], &|p: &str| p.ends_with(".txt")).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn final_symlink_follows_only_when_asked() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "target.txt", "content");
        symlink("target.txt", root.join("link")).unwrap();
        let followed = resolve_selection(&rt(root), &sel(&["link"]), &none).unwrap();
        assert_eq!(followed[0].0.real, PathBuf::from("target.txt"));
        let kept =
            resolve_selection(&rt(root), &Selection { sources: vec!["link".into()], follow_symlinks: false }, &none)
                .unwrap();
        assert_eq!(kept[0].0.real, PathBuf::from("link"));
    }

    #[test]
    fn exclusions_keep_reincluded_files_below_excluded_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "src/a.rs", "a");
        write(root, "node_modules/x/y.js", "y");
        write(root, "vendor/keep.txt", "k");
        write(root, "vendor/drop.txt", "d");
        write(root, "secret.key", "s");
        let excluded = |p: &str| {
            (p == "node_modules" || p.starts_with("node_modules/") || p == "vendor" || p == "vendor/drop.txt")
                || p == "secret.key"
        };
        let trees = walk_selection(&rt(root), &sel(&["."]), &excluded).unwrap();
        let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.rel)).collect();
        assert_eq!(rels, vec!["", "src", "src/a.rs", "vendor", "vendor/keep.txt"]);
        // Excluded paths are reported apart from missing ones, so a COPY can say what hid them.
        let err = walk_selection(&rt(root), &sel(&["secret.key"]), &excluded).unwrap_err();
        assert!(matches!(&err, ContentHashError::Excluded { name } if name == "secret.key"), "{err}");
        let err = walk_selection(&rt(root), &sel(&["node_modules"]), &excluded).unwrap_err();
        assert!(matches!(&err, ContentHashError::Excluded { name } if name == "node_modules"), "{err}");
        let err = walk_selection(&rt(root), &sel(&["missing.txt"]), &excluded).unwrap_err();
        assert!(matches!(err, ContentHashError::NotFound { .. }), "{err}");
    }

    #[test]
    fn digest_tracks_content_mode_owner_and_membership_but_not_time() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "app/main.rs", "fn main() {}");
        write(root, "app/lib.rs", "pub fn f() {}");
        write(root, "other.txt", "unselected");
        let base = digest(root, &["app"]);
        assert_eq!(base, digest(root, &["app"]), "digest is deterministic");

        set_mtime(&root.join("app/main.rs"), 1_000_000, 5);
        set_mtime(&root.join("app"), 1_000_000, 5);
        assert_eq!(digest(root, &["app"]), base, "mtime must not count");

        fs::write(root.join("other.txt"), "changed").unwrap();
        assert_eq!(digest(root, &["app"]), base, "an unselected file must not count");

        fs::write(root.join("app/main.rs"), "fn main() {1}").unwrap();
        let edited = digest(root, &["app"]);
        assert_ne!(edited, base);
        fs::write(root.join("app/main.rs"), "fn main() {}").unwrap();
        assert_eq!(digest(root, &["app"]), base);

        fs::set_permissions(root.join("app/lib.rs"), fs::Permissions::from_mode(0o755)).unwrap();
        let chmodded = digest(root, &["app"]);
        assert_ne!(chmodded, base);
        fs::set_permissions(root.join("app/lib.rs"), fs::Permissions::from_mode(0o644)).unwrap();
        let restored = digest(root, &["app"]);

        std::os::unix::fs::lchown(root.join("app/lib.rs"), Some(1234), Some(5678)).unwrap();
        assert_ne!(digest(root, &["app"]), restored, "owner must count");
        std::os::unix::fs::lchown(root.join("app/lib.rs"), Some(0), Some(0)).unwrap();

        let before_new = digest(root, &["app"]);
        write(root, "app/new.rs", "");
        assert_ne!(digest(root, &["app"]), before_new, "a new empty file must count");

        // Excluded files do not count.
        let excl = |p: &str| p == "app/new.rs";
        let with_excl = content_digest(&rt(root), &sel(&["app"]), &excl, None).unwrap();
        fs::write(root.join("app/new.rs"), "changed").unwrap();
        assert_eq!(content_digest(&rt(root), &sel(&["app"]), &excl, None).unwrap(), with_excl);
    }

    #[test]
    fn digest_tracks_symlink_targets_xattrs_and_matched_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "d/a.txt", "same");
        symlink("a.txt", root.join("d/l")).unwrap();
        let base = digest(root, &["d"]);
        fs::remove_file(root.join("d/l")).unwrap();
        symlink("b.txt", root.join("d/l")).unwrap();
        assert_ne!(digest(root, &["d"]), base, "symlink target must count");

        let before = digest(root, &["d"]);
        if xattr::set(root.join("d/a.txt"), "user.test", b"v").is_ok() {
            assert_ne!(digest(root, &["d"]), before, "xattr must count");
        }

        // Renaming what a wildcard matched changes what gets copied, so it changes the digest.
        write(root, "w/x1.txt", "same");
        let w1 = digest(root, &["w/*.txt"]);
        fs::rename(root.join("w/x1.txt"), root.join("w/x2.txt")).unwrap();
        assert_ne!(digest(root, &["w/*.txt"]), w1);

        // Two files' bytes cannot be shifted across the boundary.
        write(root, "c1/a", "ab");
        write(root, "c1/b", "c");
        write(root, "c2/a", "a");
        write(root, "c2/b", "bc");
        assert_ne!(digest(root, &["c1"]), digest(root, &["c2"]));
    }

    #[test]
    fn stat_cache_hit_avoids_reading_and_survives_save() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        write(&root, "a.txt", "aaa");
        write(&root, "b.txt", "bbb");
        let old = now_ns() / 1_000_000_000 - 3600;
        set_mtime(&root.join("a.txt"), old, 0);
        set_mtime(&root.join("b.txt"), old, 0);
        let cache_path = t.path().join("state/statcache");

        let cache = StatCache::load(&cache_path);
        assert!(cache.is_empty());
        let d1 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
        assert_eq!(cache.files_read(), 2);
        // `set_mtime` just moved the files' ctime to now; pretend they were hashed a few seconds later, as a next
        // build would, so the racy rule does not apply.
        for e in cache.inner.lock().unwrap().entries.values_mut() {
            e.recorded_ns += 3 * RACY_MARGIN_NS;
        }
        cache.save().unwrap();

        let cache = StatCache::load(&cache_path);
        assert_eq!(cache.len(), 2);
        let d2 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
        assert_eq!(d2, d1);
        assert_eq!(cache.files_read(), 0, "unchanged old files must come from the cache");
        assert_eq!(
            d1,
            content_digest(&rt(&root), &sel(&["."]), &none, None).unwrap(),
            "cache must not alter the digest"
        );

        // A real edit (mtime moves) is re-read.
        fs::write(root.join("a.txt"), "AAAA").unwrap();
        let d3 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
        assert_ne!(d3, d1);
        assert_eq!(cache.files_read(), 1);
    }

    #[test]
    fn racy_same_size_edit_with_restored_mtime_is_seen() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        write(&root, "f.txt", "before");
        let md = fs::metadata(root.join("f.txt")).unwrap();
        let cache_path = t.path().join("statcache");
        let cache = StatCache::load(&cache_path);
        let d1 = content_digest(&rt(&root), &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
        cache.save().unwrap();

        fs::write(root.join("f.txt"), "after!").unwrap();
        set_mtime(&root.join("f.txt"), md.mtime(), md.mtime_nsec());
        let cache = StatCache::load(&cache_path);
        let d2 = content_digest(&rt(&root), &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
        assert_ne!(d2, d1);
        assert_eq!(cache.files_read(), 1);
    }

    #[test]
    fn racy_entries_are_not_trusted_even_when_the_whole_stat_matches() {
        // Simulates a filesystem with coarse timestamps, where an edit leaves every stat field unchanged.
        let cache = StatCache::load(Path::new("/nonexistent/statcache"));
        let key = StatKey { size: 3, mtime_ns: 10_000_000_000, ctime_ns: 10_000_000_000, ino: 7, mode: 0o100644 };
        let p = Path::new("/ctx/f");
        let h = |b: u8| Hashed { digest: [b; 32], xattrs: vec![("user.k".into(), vec![b])] };
        cache.insert(p, key, key.mtime_ns + 500_000_000, h(1));
        assert_eq!(cache.lookup(p, &key), None, "hashed in the same tick as the last write: racy");
        cache.insert(p, key, key.mtime_ns + RACY_MARGIN_NS + 1, h(2));
        assert_eq!(cache.lookup(p, &key), Some(h(2)));
        let moved = StatKey { ctime_ns: key.ctime_ns + 1, ..key };
        assert_eq!(cache.lookup(p, &moved), None);
        // A recent ctime (chmod, chown, setxattr right before hashing) is racy too, even with an old mtime.
        let recent_ctime = StatKey { ctime_ns: key.mtime_ns + RACY_MARGIN_NS, ..key };
        cache.insert(p, recent_ctime, key.mtime_ns + RACY_MARGIN_NS + 1, h(3));
        assert_eq!(cache.lookup(p, &recent_ctime), None);
    }

    #[test]
    fn corrupt_cache_file_loads_empty() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c");
        let cache = StatCache::load(&p);
        let key = StatKey { size: 1, mtime_ns: 1, ctime_ns: 1, ino: 1, mode: 1 };
        let hashed = Hashed { digest: [3; 32], xattrs: vec![("user.a".into(), b"1".to_vec())] };
        cache.insert(Path::new("/x"), key, 10_000_000_000, hashed.clone());
        cache.save().unwrap();
        let loaded = StatCache::load(&p);
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.inner.lock().unwrap().entries[b"/x".as_slice()].hashed, hashed, "xattrs survive a save");
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        assert!(StatCache::load(&p).is_empty());
        fs::write(&p, &bytes[..10]).unwrap();
        assert!(StatCache::load(&p).is_empty());
    }

    #[test]
    fn content_files_names_what_changed_and_agrees_with_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "app/a.txt", "a");
        write(root, "app/b.txt", "b");
        let (d1, files1) = content_files(&rt(root), &sel(&["app"]), &none, None).unwrap();
        assert_eq!(d1, digest(root, &["app"]));
        let names: Vec<&str> = files1.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["app", "app/a.txt", "app/b.txt"]);
        fs::set_permissions(root.join("app/b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let (d2, files2) = content_files(&rt(root), &sel(&["app"]), &none, None).unwrap();
        assert_ne!(d1, d2);
        let changed: Vec<&str> =
            files1.iter().zip(&files2).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0.as_str()).collect();
        assert_eq!(changed, ["app/b.txt"]);
    }
}
