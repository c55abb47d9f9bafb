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
//! - exclusions (`.dockerignore` and `COPY --exclude`) are an opaque callback on root-relative paths. Because
//!   Docker's patterns may re-include files below an excluded directory (`!dir/keep`), an excluded directory is still
//!   walked and kept only when something below it is selected.
//!
//! The digest covers path, type, permission and special mode bits, owner, symlink target, device numbers, xattrs and
//! file bytes — never timestamps — in a length-prefixed encoding, so that touching a file changes nothing and two
//! different trees cannot produce the same byte stream. File bytes are hashed separately (in parallel) and their
//! SHA-256 enters the stream; a persistent [`StatCache`] skips re-reading files whose stat is unchanged.

use rbuild_solver::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
    #[error("source {name:?} not found")]
    NotFound { name: String },
    /// The source exists but every path it names is excluded (`.dockerignore`, `--exclude`): reported apart from
    /// [`ContentHashError::NotFound`] so that the caller can say which patterns hid it.
    #[error("source {name:?} not found: it is excluded")]
    Excluded { name: String },
    #[error("no source files were specified: pattern {pattern:?} matched no files")]
    NoMatch { pattern: String },
    #[error("invalid wildcard pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: &'static str },
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
    /// The real path on disk, symlinks resolved inside the root.
    pub path: PathBuf,
    /// The source contained wildcards.
    pub wildcard: bool,
}

/// One entry below (or equal to) a selected source, in walk order (parents before children, siblings sorted).
#[derive(Debug)]
pub struct SelectedEntry {
    /// Relative to the selected source; empty for the source itself.
    pub rel: PathBuf,
    /// The path on disk.
    pub path: PathBuf,
    /// `lstat` of `path`.
    pub metadata: Metadata,
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
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ContentHashError::EscapesRoot { name: name.to_string() });
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.iter().collect())
}

/// Cleans a path lexically, clamping `..` at the root the way a path inside a container resolves (`/../x` is `/x`).
pub fn clean_clamped(path: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.iter().collect()
}

/// Resolves `rel` (a root-relative path) to a real path under `root`, following symlinks the way they would resolve
/// if `root` were `/`: an absolute target restarts at `root`, `..` never climbs above it. The final component is
/// followed only if `follow_final`. Components that do not exist are appended as they are, so the result can be
/// used to create them; every existing component of the result is a real directory (no symlinks), which is what
/// keeps writes below `root`.
pub fn resolve_in_root(root: &Path, rel: &Path, follow_final: bool) -> Result<PathBuf, ContentHashError> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => pending.push_back(n.to_os_string()),
            Component::ParentDir => pending.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut resolved: Vec<OsString> = Vec::new();
    // Index in `resolved` of the first component that does not exist on disk.
    let mut missing_from: Option<usize> = None;
    let mut links = 0usize;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            if missing_from.is_some_and(|m| resolved.len() <= m) {
                missing_from = None;
            }
            continue;
        }
        if missing_from.is_some() {
            resolved.push(name);
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                missing_from = Some(resolved.len());
                resolved.push(name);
            }
            Err(e) => return Err(io_err("stat", &candidate)(e)),
            Ok(md) if md.file_type().is_symlink() && (!is_last || follow_final) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ContentHashError::SymlinkLoop { path: root.join(rel) });
                }
                let target = fs::read_link(&candidate).map_err(io_err("read symlink", &candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(n.to_os_string()),
                        Component::ParentDir => pending.push_front(OsString::from("..")),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => resolved.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
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

/// Matches one path component against one pattern component with Go's `filepath.Match` rules.
pub fn match_component(pattern: &str, name: &str) -> Result<bool, &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> Result<bool, &'static str> {
    let (mut pi, mut ni) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern index after it, name index it currently absorbs up to).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                c => {
                    if ni < n.len() {
                        let (ok, width) = match c {
                            '?' => (n[ni] != '/', 1),
                            '[' => class_matches(&p[pi..], n[ni])?,
                            '\\' => {
                                let Some(&lit) = p.get(pi + 1) else { return Err("trailing backslash") };
                                (lit == n[ni], 2)
                            }
                            lit => (lit == n[ni], 1),
                        };
                        if ok {
                            pi += width;
                            ni += 1;
                            continue;
                        }
                    } else if c == '[' {
                        // Go reports a malformed class even when the name ran out.
                        class_matches(&p[pi..], '\0')?;
                    }
                }
            }
        } else if ni == n.len() {
            return Ok(true);
        }
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => {
                // Validate the rest of the pattern so a bad pattern is an error, not a silent non-match.
                validate_pattern(&p[pi.min(p.len())..])?;
                return Ok(false);
            }
        }
    }
}

fn validate_pattern(p: &[char]) -> Result<(), &'static str> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => i += class_matches(&p[i..], '\0')?.1,
            '\\' if i + 1 >= p.len() => return Err("trailing backslash"),
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Matches `c` against the class starting at `p[0] == '['`; returns whether it matched and the class's width.
fn class_matches(p: &[char], c: char) -> Result<(bool, usize), &'static str> {
    let mut i = 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let Some(&ch) = p.get(i) else { return Err("unterminated character class") };
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = read_class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            read_class_char(p, &mut i)?
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Ok((matched != negated && c != '/', i))
}

fn read_class_char(p: &[char], i: &mut usize) -> Result<char, &'static str> {
    match p.get(*i) {
        None => Err("unterminated character class"),
        Some('-') | Some(']') => Err("bad character range"),
        Some('\\') => {
            let c = *p.get(*i + 1).ok_or("trailing backslash")?;
            *i += 2;
            Ok(c)
        }
        Some(&c) => {
            *i += 1;
            Ok(c)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Selection

fn lstat_opt(path: &Path) -> Result<Option<Metadata>, ContentHashError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn rel_string(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// Resolves sources the way Dockerfile COPY/ADD do (final symlinks followed). See [`resolve_selection`].
pub fn resolve_sources(
    root: &Path,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<SelectedSource>, ContentHashError> {
    let sel = Selection { sources: sources.to_vec(), follow_symlinks: true };
    resolve_selection(root, &sel, excluded)
}

/// Resolves every source to the files or directories it names, in source order (wildcard matches sorted by name).
/// A selected path that is excluded is dropped when it is not a directory; an excluded directory is kept here and
/// dropped by [`walk_selection`] when nothing below it is selected.
pub fn resolve_selection(
    root: &Path,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<SelectedSource>, ContentHashError> {
    let mut out = Vec::new();
    for source in &sel.sources {
        let rel = clean_source(source)?;
        let wildcard = has_wildcards(source);
        let found = if wildcard {
            resolve_wildcard(root, source, &rel, sel.follow_symlinks)?
        } else {
            let path = resolve_in_root(root, &rel, sel.follow_symlinks)?;
            lstat_opt(&path)?.map(|md| vec![(rel.clone(), path, md)]).unwrap_or_default()
        };
        let before = out.len();
        let existed = !found.is_empty();
        for (rel, path, md) in found {
            if !rel.as_os_str().is_empty() && !md.is_dir() && excluded(&rel_string(&rel)) {
                continue;
            }
            out.push(SelectedSource { source: source.clone(), rel, path, wildcard });
        }
        if out.len() == before {
            return Err(if wildcard {
                ContentHashError::NoMatch { pattern: source.clone() }
            } else if existed {
                ContentHashError::Excluded { name: source.clone() }
            } else {
                ContentHashError::NotFound { name: source.clone() }
            });
        }
    }
    Ok(out)
}

fn sorted_dir(dir: &Path) -> Result<Vec<OsString>, ContentHashError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        names.push(entry.map_err(io_err("read directory", dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// A directory's entries with their `lstat`, sorted by name. The stat is taken relative to the open directory
/// (`DirEntry::metadata` is an `fstatat` on it), which spares the kernel resolving the full path of every file of
/// a large context again.
fn sorted_dir_with_metadata(dir: &Path) -> Result<Vec<(OsString, Metadata)>, ContentHashError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let md = entry.metadata().map_err(|e| io_err("stat", &entry.path())(e))?;
        out.push((entry.file_name(), md));
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Expands a wildcard source component by component. Returns (rel as matched, real path, lstat of real path).
fn resolve_wildcard(
    root: &Path,
    source: &str,
    rel: &Path,
    follow_final: bool,
) -> Result<Vec<(PathBuf, PathBuf, Metadata)>, ContentHashError> {
    let bad = |reason| ContentHashError::BadPattern { pattern: source.to_string(), reason };
    let comps: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    // Candidates: (rel as named, real path relative to root with every symlink resolved).
    let mut candidates: Vec<(PathBuf, PathBuf)> = vec![(PathBuf::new(), PathBuf::new())];
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for (named, real) in &candidates {
            let names: Vec<OsString> = if has_wildcards(comp) {
                let dir = root.join(real);
                if !lstat_opt(&dir)?.is_some_and(|m| m.is_dir()) {
                    continue;
                }
                let mut matched = Vec::new();
                for name in sorted_dir(&dir)? {
                    if match_component(comp, &name.to_string_lossy()).map_err(bad)? {
                        matched.push(name);
                    }
                }
                matched
            } else {
                vec![OsString::from(comp)]
            };
            for name in names {
                let path = resolve_in_root(root, &real.join(&name), !last || follow_final)?;
                if lstat_opt(&path)?.is_some() {
                    let real_rel = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_default();
                    next.push((named.join(&name), real_rel));
                }
            }
        }
        candidates = next;
    }
    let mut out = Vec::new();
    for (named, real) in candidates {
        let path = root.join(&real);
        if let Some(md) = lstat_opt(&path)? {
            out.push((named, path, md));
        }
    }
    Ok(out)
}

/// Resolves the selection and walks every selected directory: the exact list of entries a copy writes and the
/// digest covers.
pub fn walk_selection(
    root: &Path,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
) -> Result<Vec<SelectedTree>, ContentHashError> {
    let mut trees = Vec::new();
    let sources = resolve_selection(root, sel, excluded)?;
    let mut kept_per_source: HashMap<&str, usize> = HashMap::new();
    for source in &sources {
        let md = fs::symlink_metadata(&source.path).map_err(io_err("stat", &source.path))?;
        let mut entries = Vec::new();
        let keep = if md.is_dir() {
            let top_excluded = !source.rel.as_os_str().is_empty() && excluded(&rel_string(&source.rel));
            entries.push(SelectedEntry { rel: PathBuf::new(), path: source.path.clone(), metadata: md });
            let any = walk_dir(&source.path, &source.rel, Path::new(""), excluded, &mut entries)?;
            !top_excluded || any
        } else {
            entries.push(SelectedEntry { rel: PathBuf::new(), path: source.path.clone(), metadata: md });
            true
        };
        if keep {
            *kept_per_source.entry(source.source.as_str()).or_default() += 1;
            trees.push(SelectedTree { source: source.clone(), entries });
        }
    }
    for source in &sel.sources {
        if !kept_per_source.contains_key(source.as_str()) {
            // Resolved (so it exists) but nothing below it survived the exclusions.
            return Err(if has_wildcards(source) {
                ContentHashError::NoMatch { pattern: source.clone() }
            } else {
                ContentHashError::Excluded { name: source.clone() }
            });
        }
    }
    Ok(trees)
}

/// Appends the selected entries below `dir`; returns whether anything was selected.
fn walk_dir(
    dir: &Path,
    root_rel: &Path,
    rel: &Path,
    excluded: &dyn Fn(&str) -> bool,
    out: &mut Vec<SelectedEntry>,
) -> Result<bool, ContentHashError> {
    let mut any = false;
    for (name, md) in sorted_dir_with_metadata(dir)? {
        let path = dir.join(&name);
        let child_rel = rel.join(&name);
        let child_root_rel = root_rel.join(&name);
        let is_excluded = excluded(&rel_string(&child_root_rel));
        if md.is_dir() {
            let at = out.len();
            out.push(SelectedEntry { rel: child_rel.clone(), path: path.clone(), metadata: md });
            let below = walk_dir(&path, &child_root_rel, &child_rel, excluded, out)?;
            if is_excluded && !below {
                out.truncate(at);
            } else {
                any = true;
            }
        } else if !is_excluded {
            out.push(SelectedEntry { rel: child_rel, path, metadata: md });
            any = true;
        }
    }
    Ok(any)
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

fn kind_byte(md: &Metadata) -> u8 {
    let ft = md.file_type();
    if ft.is_dir() {
        b'd'
    } else if ft.is_file() {
        b'f'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

/// The xattrs of `path` (not following a symlink) that describe the file, sorted by name.
pub fn file_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, ContentHashError> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        if is_ignored_xattr(name.as_bytes()) {
            continue;
        }
        match xattr::get(path, &name) {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => {}
            Err(e) => return Err(io_err("read xattr of", path)(e)),
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Digest of exactly the selected files: for every selected path (recursively for directories, parents first,
/// siblings sorted by name) its path relative to the selection, type, mode (permission and special bits), uid, gid,
/// symlink target, device numbers, xattrs (sorted, storage-specific ones left out) and, for regular files, the
/// SHA-256 of their bytes. Timestamps never enter it.
pub fn content_digest(
    root: &Path,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<Digest, ContentHashError> {
    digest_selection(root, sel, excluded, cache, false).map(|(d, _)| d)
}

/// Like [`content_digest`], plus every selected path (relative to the root) with the digest of its own part of the
/// encoding (metadata and bytes), so that a changed content digest can be traced to the files that changed.
pub fn content_files(
    root: &Path,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
) -> Result<(Digest, Vec<(String, Digest)>), ContentHashError> {
    digest_selection(root, sel, excluded, cache, true)
}

fn digest_selection(
    root: &Path,
    sel: &Selection,
    excluded: &dyn Fn(&str) -> bool,
    cache: Option<&StatCache>,
    per_file: bool,
) -> Result<(Digest, Vec<(String, Digest)>), ContentHashError> {
    let mut files_out = Vec::new();
    let trees = walk_selection(root, sel, excluded)?;
    let files: Vec<&SelectedEntry> =
        trees.iter().flat_map(|t| t.entries.iter()).filter(|e| e.metadata.file_type().is_file()).collect();
    // In walk order: the n-th regular file met below is `file_digests[n]`.
    let file_digests = hash_files(&files, cache)?;
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
            let md = &e.metadata;
            if per_file {
                enc.entry = Some(Sha256::new());
            }
            enc.u8(TAG_ENTRY);
            enc.bytes(e.rel.as_os_str().as_bytes());
            enc.u8(kind_byte(md));
            enc.u64(u64::from(md.mode() & 0o7777));
            enc.u64(u64::from(md.uid()));
            enc.u64(u64::from(md.gid()));
            let ft = md.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&e.path).map_err(io_err("read symlink", &e.path))?;
                enc.bytes(target.as_os_str().as_bytes());
            } else {
                enc.bytes(b"");
            }
            enc.u64(if ft.is_char_device() || ft.is_block_device() { md.rdev() } else { 0 });
            let hashed = if ft.is_file() { next_file.next() } else { None };
            let listed;
            let xattrs = match hashed {
                Some(h) => &h.xattrs,
                None => {
                    listed = file_xattrs(&e.path)?;
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
    Ok((Digest::from_sha256(enc.main.finalize().into()), files_out))
}

/// Hashes file contents, in parallel on up to 4 threads (hashing is I/O- and SHA-bound; more threads only thrash).
/// A regular file's content digest and xattrs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hashed {
    digest: [u8; 32],
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn hash_files(files: &[&SelectedEntry], cache: Option<&StatCache>) -> Result<Vec<Hashed>, ContentHashError> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4).min(files.len());
    if workers <= 1 {
        return files.iter().map(|e| hash_one(&e.path, &e.metadata, cache)).collect();
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
                    let r = hash_one(&e.path, &e.metadata, cache);
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
            path: e.path.clone(),
            source: io::Error::other("hashing thread did not finish"),
        })?;
        out.push(r?);
    }
    Ok(out)
}

fn hash_one(path: &Path, md: &Metadata, cache: Option<&StatCache>) -> Result<Hashed, ContentHashError> {
    let key = StatKey::of(md);
    if let Some(h) = cache.and_then(|c| c.lookup(path, &key)) {
        return Ok(h);
    }
    let recorded_ns = now_ns();
    let xattrs = file_xattrs(path)?;
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        hasher.update(&buf[..n]);
    }
    let hashed = Hashed { digest: hasher.finalize().into(), xattrs };
    if let Some(c) = cache {
        c.files_read.fetch_add(1, Ordering::Relaxed);
        // Only remember the digest if the file did not change while it was read.
        if let Ok(after) = f.metadata()
            && StatKey::of(&after) == key
        {
            c.insert(path, key, recorded_ns, hashed.clone());
        }
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
    fn of(md: &Metadata) -> StatKey {
        StatKey {
            size: md.size(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
            ino: md.ino(),
            mode: md.mode(),
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
    use std::os::unix::fs::{PermissionsExt, symlink};

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

    fn digest(root: &Path, sources: &[&str]) -> Digest {
        content_digest(root, &sel(sources), &none, None).unwrap()
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
        let got = resolve_sources(root, &["abs/passwd".to_string()], &none).unwrap();
        assert_eq!(got[0].path, root.join("etc/passwd"));
        assert_eq!(got[0].rel, PathBuf::from("abs/passwd"));
        let err = resolve_sources(root, &["abs/shadow".to_string()], &none).unwrap_err();
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
        let got = resolve_sources(root, &["d*/f?.txt".to_string()], &none).unwrap();
        let rels: Vec<_> = got.iter().map(|s| s.rel.clone()).collect();
        assert_eq!(rels, vec![PathBuf::from("d1/f1.txt"), PathBuf::from("d2/f2.txt")]);
        assert!(got.iter().all(|s| s.wildcard));

        let err = resolve_sources(root, &["*.nope".to_string()], &none).unwrap_err();
        assert!(matches!(&err, ContentHashError::NoMatch { pattern } if pattern == "*.nope"));
        assert!(err.to_string().contains("no source files were specified"));
        let err = resolve_sources(root, &["missing.txt".to_string()], &none).unwrap_err();
        assert!(err.to_string().contains("missing.txt") && err.to_string().contains("not found"));
        let err = resolve_sources(root, &["[".to_string()], &none).unwrap_err();
        assert!(matches!(err, ContentHashError::BadPattern { .. }));
        // Everything the wildcard matched is excluded: same as matching nothing.
        let err = resolve_sources(root, &["d1/*.txt".to_string()], &|p: &str| p.ends_with(".txt")).unwrap_err();
        assert!(matches!(err, ContentHashError::NoMatch { .. }));
    }

    #[test]
    fn final_symlink_follows_only_when_asked() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "target.txt", "content");
        symlink("target.txt", root.join("link")).unwrap();
        let followed = resolve_selection(root, &sel(&["link"]), &none).unwrap();
        assert_eq!(followed[0].path, root.join("target.txt"));
        let kept = resolve_selection(root, &Selection { sources: vec!["link".into()], follow_symlinks: false }, &none)
            .unwrap();
        assert_eq!(kept[0].path, root.join("link"));
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
        let trees = walk_selection(root, &sel(&["."]), &excluded).unwrap();
        let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.rel)).collect();
        assert_eq!(rels, vec!["", "src", "src/a.rs", "vendor", "vendor/keep.txt"]);
        // Excluded paths are reported apart from missing ones, so a COPY can say what hid them.
        let err = walk_selection(root, &sel(&["secret.key"]), &excluded).unwrap_err();
        assert!(matches!(&err, ContentHashError::Excluded { name } if name == "secret.key"), "{err}");
        let err = walk_selection(root, &sel(&["node_modules"]), &excluded).unwrap_err();
        assert!(matches!(&err, ContentHashError::Excluded { name } if name == "node_modules"), "{err}");
        let err = walk_selection(root, &sel(&["missing.txt"]), &excluded).unwrap_err();
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
        let with_excl = content_digest(root, &sel(&["app"]), &excl, None).unwrap();
        fs::write(root.join("app/new.rs"), "changed").unwrap();
        assert_eq!(content_digest(root, &sel(&["app"]), &excl, None).unwrap(), with_excl);
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
        let d1 = content_digest(&root, &sel(&["."]), &none, Some(&cache)).unwrap();
        assert_eq!(cache.files_read(), 2);
        // `set_mtime` just moved the files' ctime to now; pretend they were hashed a few seconds later, as a next
        // build would, so the racy rule does not apply.
        for e in cache.inner.lock().unwrap().entries.values_mut() {
            e.recorded_ns += 3 * RACY_MARGIN_NS;
        }
        cache.save().unwrap();

        let cache = StatCache::load(&cache_path);
        assert_eq!(cache.len(), 2);
        let d2 = content_digest(&root, &sel(&["."]), &none, Some(&cache)).unwrap();
        assert_eq!(d2, d1);
        assert_eq!(cache.files_read(), 0, "unchanged old files must come from the cache");
        assert_eq!(d1, content_digest(&root, &sel(&["."]), &none, None).unwrap(), "cache must not alter the digest");

        // A real edit (mtime moves) is re-read.
        fs::write(root.join("a.txt"), "AAAA").unwrap();
        let d3 = content_digest(&root, &sel(&["."]), &none, Some(&cache)).unwrap();
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
        let d1 = content_digest(&root, &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
        cache.save().unwrap();

        fs::write(root.join("f.txt"), "after!").unwrap();
        set_mtime(&root.join("f.txt"), md.mtime(), md.mtime_nsec());
        let cache = StatCache::load(&cache_path);
        let d2 = content_digest(&root, &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
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
        let (d1, files1) = content_files(root, &sel(&["app"]), &none, None).unwrap();
        assert_eq!(d1, digest(root, &["app"]));
        let names: Vec<&str> = files1.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["app", "app/a.txt", "app/b.txt"]);
        fs::set_permissions(root.join("app/b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let (d2, files2) = content_files(root, &sel(&["app"]), &none, None).unwrap();
        assert_ne!(d1, d2);
        let changed: Vec<&str> =
            files1.iter().zip(&files2).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0.as_str()).collect();
        assert_eq!(changed, ["app/b.txt"]);
    }
}
