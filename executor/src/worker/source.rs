//! Source ops: scratch, the build context and named contexts, images (their layers as snapshots), and files
//! fetched over HTTP or Git for ADD.

use super::{ExecError, LocalWorker};
use rbuild_solver::{Op, Output};

impl LocalWorker {
    pub(super) fn make_source(&self, op: &Op) -> Result<Output, ExecError> {
        match op {
            Op::Scratch => Ok(Output::RootFs(vec![])),
            Op::Context { name } if name == "context" => Ok(Output::Dir(self.context.clone())),
            Op::Context { name } => match self.named_contexts.get(name) {
                Some(dir) => Ok(Output::Dir(dir.clone())),
                None => Err(ExecError::UnknownContext { name: name.clone() }),
            },
            Op::Image { digest, .. } => self.image_rootfs(digest),
            Op::Http { url, checksum, filename } => {
                let dir = self
                    .store
                    .tmp_dir("http")
                    .map_err(|source| ExecError::WorkDir { what: "an HTTP source", source })?;
                crate::remote::fetch_http(url, checksum.as_deref(), filename, &dir)
                    .map_err(|source| ExecError::Remote { url: url.clone(), source })?;
                Ok(Output::Dir(dir))
            }
            Op::Git { remote, reference, keep_git_dir } => {
                let dir =
                    self.store.tmp_dir("git").map_err(|source| ExecError::WorkDir { what: "a Git source", source })?;
                crate::remote::clone_git(remote, reference, *keep_git_dir, &dir.join("repo"))
                    .map_err(|source| ExecError::Remote { url: remote.clone(), source })?;
                Ok(Output::Dir(dir.join("repo")))
            }
            Op::Exec(_) | Op::File(_) => Err(ExecError::NotASource),
        }
    }
}
