//! COPY and ADD into a root filesystem, with Docker's rules.
//!
//! Which files a source selects is decided by `rbuild_cache::contenthash::walk_selection`, the same code the
//! cache key is computed from, so a copy can never write files the digest did not cover. Sources are read only
//! through `rbuild_cache::confined` (beneath the source root, checked against the stat the walk listed), and
//! [`copy_checked`] also checks the walk is the one the key was hashed from. This module only decides where they
//! land and with what metadata:
//!
//! - a directory source copies its *contents*; a file lands *at* `dest`, or *inside* it when `dest` ends with `/`
//!   or is an existing directory. Several selected sources (arguments or wildcard matches) are copied one after
//!   the other, each to `dest` as it then is, as BuildKit does: no "must end with /" rule (Docker's classic
//!   builder had one), so `COPY a b /x` leaves `/x` holding `b`, and `COPY dir/ f /x` puts `f` inside `/x`. A
//!   wildcard that matches nothing copies nothing (selection, in `contenthash`);
//! - every path in the destination is resolved with symlinks relative to the destination root (`/bin -> usr/bin`
//!   is merged into, `-> /` cannot escape), and an existing non-directory in the way is replaced rather than
//!   written through, so a copy never writes outside `dest_root`;
//! - ownership: `--chown` if given, else the source's owner for `COPY --from` (`keep_owner`), else 0:0 (build
//!   context files belong to root in the image). `--chmod` applies to every copied file and directory. Missing
//!   parents of `dest` are created 0755, owned by the `--chown` owner or root;
//! - mode bits, xattrs (minus overlayfs and SELinux ones) and timestamps are copied; directory times are set last,
//!   after their children were written; hard links between copied files stay hard links;
//! - ADD extracts a local tar archive (plain, gzip, bzip2, xz or zstd, all in process) into `dest` as a directory,
//!   recognised by content like Docker, keeping the archive's owners unless `--chown` is given (BuildKit ≥ 0.23
//!   applies `--chown` to extracted entries). The extractor is the one layers use, in its `ADD` mode: names and
//!   symlinks resolve as in a chroot at `dest`, `.wh.` names are plain files. A file that only looks like an archive
//!   is copied as a file.

use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{self, ContentHashError, SelectedEntry, Selection};
use rbuild_types::Digest;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

mod archive;
mod copier;

use archive::*;
use copier::*;

/// How a COPY/ADD writes what it selected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `--chown`, already resolved to numeric ids.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`, permission and special bits.
    pub chmod: Option<u32>,
    /// ADD: extract local tar archives into `dest`.
    pub extract_archives: bool,
    /// `COPY --from`: keep the source's uid/gid (otherwise files become 0:0).
    pub keep_owner: bool,
}

/// Errors while copying or extracting into a root filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    #[error(transparent)]
    Select(#[from] ContentHashError),
    /// BuildKit's wording.
    #[error("cannot copy to non-directory: {path}")]
    NotADirectory { path: PathBuf },
    #[error("cannot replace directory {path} with a non-directory")]
    IsADirectory { path: PathBuf },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot extract archive {archive}")]
    Archive {
        archive: PathBuf,
        /// Boxed: the extractor's error is large and this one is rare.
        #[source]
        source: Box<rbuild_image::layer::LayerError>,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io { op, path: path.to_path_buf(), source }
}

/// Copies the selected sources from `src_root` into `dest_root` at `dest` (absolute inside `dest_root`, already
/// joined with WORKDIR). See the module documentation for the rules.
pub fn copy(
    src_root: &Path,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    copy_checked(src_root, sources, excluded, dest_root, dest, opts, None)
}

/// [`copy`], failing with [`ContentHashError::Changed`] unless the walk of the sources has the fingerprint
/// `expect_walk` ([`contenthash::fingerprint`]): the one the step's cache key was hashed from. Every file is read
/// beneath `src_root` and checked to be the file that walk listed, so a layer holds what its key says.
pub fn copy_checked(
    src_root: &Path,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    expect_walk: Option<&Digest>,
) -> Result<(), CopyError> {
    let src = Root::open(src_root).map_err(io_err("open", src_root))?;
    copy_from(&src, sources, excluded, dest_root, dest, opts, expect_walk)
}

/// [`copy_checked`] from a source root that is already open (the build context, opened once per build).
pub fn copy_from(
    src: &Root,
    sources: &[String],
    excluded: &dyn Fn(&str) -> bool,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    expect_walk: Option<&Digest>,
) -> Result<(), CopyError> {
    let sel = Selection { sources: sources.to_vec(), follow_symlinks: true };
    let trees = contenthash::walk_selection(src, &sel, excluded)?;
    if let Some(want) = expect_walk
        && contenthash::fingerprint(&trees) != *want
    {
        return Err(ContentHashError::Changed { path: src.path().to_path_buf() }.into());
    }
    let dest_rel = contenthash::clean_clamped(dest);
    let dir_syntax = dest.ends_with('/') || dest.ends_with("/.") || dest_rel.as_os_str().is_empty();
    let mut c = Copier { src, dest_root, opts, hardlinks: HashMap::new(), dir_times: Vec::new() };
    for tree in &trees {
        let top = &tree.entries[0];
        if top.stat.is_dir() {
            // The source root itself (`COPY . /x/`) lends no times: BuildKit's transferred context root is new.
            let times_from = (!tree.source.rel.as_os_str().is_empty()).then_some(top);
            let target = c.top_dir(&dest_rel, times_from)?;
            let mut dirs: HashMap<&Path, PathBuf> = HashMap::new();
            dirs.insert(Path::new(""), target);
            // Plain files (one link, nothing to replace) are written side by side once their directories exist.
            let mut plain: Vec<(&SelectedEntry, PathBuf)> = Vec::new();
            for e in &tree.entries[1..] {
                let parent = e.rel.parent().unwrap_or(Path::new(""));
                let (Some(pdir), Some(name)) = (dirs.get(parent), e.rel.file_name()) else {
                    // walk_selection lists parents before children; anything else is a bug in the walk.
                    return Err(CopyError::Io {
                        op: "place",
                        path: e.real.clone(),
                        source: io::Error::other("entry listed before its parent directory"),
                    });
                };
                let target = pdir.join(name);
                if e.stat.is_dir() {
                    let real = c.dir_entry(e, &target)?;
                    dirs.insert(e.rel.as_path(), real);
                } else if e.stat.is_file() && e.stat.nlink == 1 && copier::lstat_opt(&target)?.is_none() {
                    plain.push((e, target));
                } else {
                    c.non_dir_entry(e, &target)?;
                }
            }
            c.write_plain_files(&plain)?;
        } else if opts.extract_archives && top.stat.is_file() && is_archive(src, top)? {
            let dir = c.mkdir_all(&dest_rel)?;
            c.extract(top, &dir)?;
        } else {
            let target = if dir_syntax || c.is_dir_in_root(&dest_rel)? {
                let name = tree.source.rel.file_name().or(top.real.file_name()).unwrap_or(OsStr::new("file"));
                c.mkdir_all(&dest_rel)?.join(name)
            } else {
                // `COPY f /x` where /x is a symlink writes to its target, like cp; resolved inside dest_root.
                let real = contenthash::resolve_in_root(dest_root, &dest_rel, true)?;
                let parent_rel = real.parent().and_then(|p| p.strip_prefix(dest_root).ok()).unwrap_or(Path::new(""));
                let parent = c.mkdir_all(parent_rel)?;
                parent.join(real.file_name().unwrap_or(OsStr::new("file")))
            };
            c.non_dir_entry(top, &target)?;
        }
        // Each source is finished before the next, as BuildKit copies them: the last source's times win.
        c.set_dir_times()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
