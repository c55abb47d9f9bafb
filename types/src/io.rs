//! The one I/O error with its context: what was being done, to which path, and the OS error.
//!
//! Crates wrap it in their own error enums (`Io(#[from] IoError)`, shown transparently), so every "cannot open
//! /x: No such file or directory" reads the same and carries the `io::Error` as its source.

use std::io;
use std::path::PathBuf;

/// An I/O operation that failed on a path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    /// What was being done, as a verb phrase that reads before the path: `open`, `create directory`, `lock`.
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IoError { op, path: path.into(), source }
    }
}
