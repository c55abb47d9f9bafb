//! The traits the solver drives: a [`Worker`] that does the work, a [`CacheStore`] that remembers results, and a
//! [`Progress`] sink. The executor, cache and image crates implement them; tests implement them with toys.
//!
//! Worker methods are synchronous on purpose: they block on child processes and disk, so the scheduler runs each
//! one on tokio's blocking pool, which is what gives parallelism without an async filesystem layer.

use crate::explain::{MissReason, StepInputs};
use crate::graph::{CopyAction, ExecOp, FileOp, Op, VertexId};
use rbuild_types::Digest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// What an op produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A root filesystem: the diff_ids of its layers, bottom first. Every layer has a snapshot in the store.
    RootFs(Vec<Digest>),
    /// A directory on the host (the build context), read in place.
    Dir(PathBuf),
}

impl Output {
    /// The layers of a root filesystem (none for a directory).
    pub fn layers(&self) -> &[Digest] {
        match self {
            Output::RootFs(l) => l,
            Output::Dir(_) => &[],
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A RUN step's process exited non-zero.
    #[error("process {command:?} did not complete successfully: exit code: {code}")]
    ExitCode { command: String, code: i32, tail: Vec<String> },
    /// Anything else, with what was being done and the cause.
    #[error("{context}")]
    Failed {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl WorkerError {
    pub fn failed(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        WorkerError::Failed { context: context.into(), source: source.into() }
    }
}

/// Does the work of ops.
pub trait Worker: Send + Sync + 'static {
    /// Makes a source available: `Scratch`, `Image` (pulled into snapshots if needed) or `Context`.
    fn source(&self, op: &Op) -> Result<Output, WorkerError>;
    /// The content digest of exactly the files `copy` selects from `input` (see DESIGN.md, cache keys).
    fn content_digest(&self, input: &Output, copy: &CopyAction) -> Result<Digest, WorkerError>;
    /// Runs a RUN step on `inputs[0]`; output lines go to `log`.
    fn exec(&self, op: &ExecOp, inputs: &[Output], log: &mut dyn FnMut(&str)) -> Result<Output, WorkerError>;
    /// Applies file actions.
    fn file(&self, op: &FileOp, inputs: &[Output]) -> Result<Output, WorkerError>;
    /// Every path `copy` selects from `input` with the digest of its entry, for explaining cache misses. Only
    /// asked for steps that run; a worker that cannot tell returns nothing, and explanations then name no files.
    fn content_files(&self, input: &Output, copy: &CopyAction) -> Result<Vec<(String, Digest)>, WorkerError> {
        let _ = (input, copy);
        Ok(Vec::new())
    }
    /// Stops every running step at once and refuses new ones: another step failed. Running steps then end with an
    /// error (the solver reports them as canceled). Blocks until they are stopped; called on a blocking thread.
    fn cancel(&self) {}
}

/// A failure to read or write the cache index.
#[derive(Debug, thiserror::Error)]
#[error("cache index: {context}")]
pub struct CacheError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

/// A result remembered under a cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub output: Output,
    /// When the result was first made (unix seconds): a cached step keeps its original time in the image history,
    /// so an unchanged rebuild gives the same image digest.
    pub created: i64,
}

/// Remembers results by cache key.
pub trait CacheStore: Send + Sync + 'static {
    /// A result recorded for `key`, only if everything it refers to still exists.
    fn get(&self, key: &Digest) -> Option<CacheRecord>;
    /// Records `output` as made now; returns the record as stored.
    fn put(&self, key: &Digest, output: &Output) -> Result<CacheRecord, CacheError>;
    /// What went into the key of the step with this identity when it last ran (see [`crate::explain`]).
    fn previous_step(&self, identity: &str) -> Option<StepInputs> {
        let _ = identity;
        None
    }
    /// What the remote cache sources know about the step with this portable identity, for explaining a miss:
    /// each source (by name) that holds a record of it, in the order searched. `None` when there are no sources.
    fn source_records(&self, identity: &str) -> Option<Vec<(String, StepInputs)>> {
        let _ = identity;
        None
    }
    /// Remembers what went into a step's key, for explaining its next miss.
    fn record_step(&self, identity: &str, inputs: &StepInputs) -> Result<(), CacheError> {
        let _ = (identity, inputs);
        Ok(())
    }
}

/// What progress output shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        vertex: VertexId,
        name: String,
    },
    Cached {
        vertex: VertexId,
        name: String,
    },
    Done {
        vertex: VertexId,
        name: String,
        elapsed: Duration,
    },
    Failed {
        vertex: VertexId,
        name: String,
        elapsed: Duration,
        /// The step's error, as one line.
        error: String,
    },
    /// A step that was running when another one failed, and was stopped.
    Canceled {
        vertex: VertexId,
        name: String,
        elapsed: Duration,
    },
    Log {
        vertex: VertexId,
        line: String,
    },
    /// Why a step that is about to run missed the cache (only with [`crate::SolveOptions::explain`]).
    Explained {
        vertex: VertexId,
        reasons: Vec<MissReason>,
    },
}

pub trait Progress: Send + Sync + 'static {
    fn event(&self, event: Event);
}

/// A progress sink that drops everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: Event) {}
}
