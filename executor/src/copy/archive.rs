//! ADD archive extraction: a local file that is a tar archive by content is extracted by the image crate's
//! extractor, the one layers go through ([`rbuild_image::layer::extract_archive`] with `ExtractMode::Add`, which
//! lists the rules BuildKit's ADD applies).

use super::*;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{self, SelectedEntry};
use rbuild_image::layer::{self, ExtractMode, ExtractOptions};
use std::path::Path;

impl Copier<'_> {
    /// Extracts the archive `e` into `dir`, a directory of the destination root.
    pub(super) fn extract(&mut self, e: &SelectedEntry, dir: &Path) -> Result<(), CopyError> {
        let archive = self.src.path().join(&e.real);
        let file = contenthash::open_entry(self.src, e)?;
        let check = file.try_clone().map_err(io_err("read", &archive))?;
        let opts = ExtractOptions { mode: ExtractMode::Add, owner: self.opts.chown };
        layer::extract_archive(file, dir, &opts)
            .map_err(|source| CopyError::Archive { archive, source: Box::new(source) })?;
        contenthash::check_unchanged(&check, e)?;
        Ok(())
    }
}

/// Whether the selected file `e` is a tar archive (possibly compressed), judged by content as Docker does.
pub(super) fn is_archive(src: &Root, e: &SelectedEntry) -> Result<bool, CopyError> {
    Ok(layer::is_tar_archive(contenthash::open_entry(src, e)?))
}
