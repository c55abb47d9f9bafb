//! What a COPY selects: its exclusions, the content digest of the selection (for the cache key), and the
//! fingerprint of the walk that digest came from, which the copy on a cache miss checks.

use super::{Exclusion, ExecError, LocalWorker};
use crate::copy::CopyError;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{ContentHashError, Selection};
use rbuild_solver::{CopyAction, Output};
use rbuild_types::Digest;
use rbuild_types::patterns::PatternMatcher;
use std::path::Path;

impl LocalWorker {
    /// The content digest of what `action` selects from `input`.
    pub(super) fn hash_selection(&self, input: &Output, action: &CopyAction) -> Result<Digest, ExecError> {
        self.materialize(std::slice::from_ref(input))?;
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let sel = Selection { sources: action.sources.clone(), follow_symlinks: true };
        let Output::Dir(root) = input else {
            // A stage's files (COPY --from, RUN --mount=from= after that stage re-ran): hashed in a view of its
            // merged tree, with no stat cache (that one is the build context's).
            return self.with_view(input, |view| {
                let root = Root::open(view).map_err(ExecError::OpenStage)?;
                rbuild_cache::contenthash::content_digest(&root, &sel, &excluded, None)
                    .map_err(|e| exclusions.explain(action, e.into()))
            });
        };
        let mut owned = None;
        let src = self.open_dir_input(root, action, &mut owned)?;
        let hashed = rbuild_cache::contenthash::hash_selection(src, &sel, &excluded, Some(&self.stat_cache))
            .map_err(|e| exclusions.explain(action, e.into()))?;
        if let Ok(mut walks) = self.walks.lock() {
            walks.insert(walk_key(root, action), hashed.fingerprint);
        }
        Ok(hashed.digest)
    }

    /// Every file `action` selects from a directory input, with its digest (none for a stage's files).
    pub(super) fn list_selection(
        &self,
        input: &Output,
        action: &CopyAction,
    ) -> Result<Vec<(String, Digest)>, ExecError> {
        let Output::Dir(root) = input else { return Ok(Vec::new()) };
        let exclusions = Exclusions::new(action)?;
        let excluded = |p: &str| exclusions.excluded(p);
        let sel = Selection { sources: action.sources.clone(), follow_symlinks: true };
        let mut owned = None;
        let src = self.open_dir_input(root, action, &mut owned)?;
        rbuild_cache::contenthash::content_files(src, &sel, &excluded, Some(&self.stat_cache))
            .map(|(_, files)| files)
            .map_err(|e| exclusions.explain(action, e.into()))
    }

    /// The open root of a directory input: the context's own fd, or `dir` opened now.
    pub(super) fn open_dir_input<'a>(
        &'a self,
        dir: &Path,
        action: &CopyAction,
        owned: &'a mut Option<Root>,
    ) -> Result<&'a Root, ExecError> {
        if let Some(root) = self.context_root.as_ref().filter(|_| dir == self.context) {
            return Ok(root);
        }
        let root = Root::open(dir).map_err(|source| ExecError::OpenCopySource {
            sources: action.sources.clone(),
            dest: action.dest.clone(),
            source,
        })?;
        Ok(owned.insert(root))
    }

    /// The fingerprint of the walk the digest of `action`'s selection in `root` came from, if it was hashed.
    pub(super) fn hashed_walk(&self, root: &Path, action: &CopyAction) -> Option<Digest> {
        self.walks.lock().ok().and_then(|w| w.get(&walk_key(root, action)).cloned())
    }
}

/// A COPY's exclusions: the context's `.dockerignore` and the instruction's `--exclude`, kept apart so that an
/// error can say which one hid a source.
pub(super) struct Exclusions {
    dockerignore: PatternMatcher,
    exclude: PatternMatcher,
}

impl Exclusions {
    pub(super) fn new(action: &CopyAction) -> Result<Exclusions, ExecError> {
        let dockerignore = PatternMatcher::new(&action.dockerignore).map_err(ExecError::DockerignorePattern)?;
        let exclude = PatternMatcher::new(&action.excludes).map_err(ExecError::ExcludePattern)?;
        Ok(Exclusions { dockerignore, exclude })
    }

    pub(super) fn excluded(&self, p: &str) -> bool {
        self.dockerignore.matches_or_parent_matches(p).unwrap_or(false)
            || self.exclude.matches_or_parent_matches(p).unwrap_or(false)
    }

    /// The error for a failed copy; a source hidden by exclusions says by which.
    pub(super) fn explain(&self, action: &CopyAction, e: CopyError) -> ExecError {
        let (sources, dest) = (action.sources.clone(), action.dest.clone());
        if let CopyError::Select(ContentHashError::Excluded { name }) = &e {
            let rel = rbuild_cache::contenthash::clean_clamped(name).to_string_lossy().into_owned();
            let by = if self.dockerignore.matches_or_parent_matches(&rel).unwrap_or(false) {
                Exclusion::Dockerignore
            } else {
                Exclusion::Exclude
            };
            return ExecError::Excluded { sources, dest, name: name.clone(), by };
        }
        ExecError::Copy { sources, dest, source: e }
    }
}

/// What identifies a context copy's selection: the same key for the hash and for the copy of one step.
fn walk_key(root: &Path, a: &CopyAction) -> String {
    let mut key = root.to_string_lossy().into_owned();
    for part in [&a.sources, &a.excludes, &a.dockerignore] {
        key.push('\0');
        key.push_str(&part.join("\n"));
    }
    key
}
