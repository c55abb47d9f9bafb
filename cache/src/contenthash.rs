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

use crate::confined::Stat;
use rbuild_types::IoError;
use std::io;
use std::path::{Path, PathBuf};

mod digest;
mod glob;
mod paths;
mod select;
mod statcache;

pub use digest::*;
pub use glob::*;
pub use paths::*;
pub use select::*;
pub use statcache::*;

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
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentHashError + 'a {
    move |source| ContentHashError::Io(IoError::new(op, path, source))
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
    /// [`Root::open_beneath`](crate::confined::Root::open_beneath) opens without following anything.
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

#[cfg(test)]
mod tests;
