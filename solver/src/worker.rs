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
///
/// The solver knows no worker's types, so a failure carries a [`FailureKind`] it and its callers can match on, and
/// the worker's own typed error as the source (a caller that knows the worker gets it back with
/// [`WorkerError::downcast_ref`]). The non-zero exit of a RUN is a variant of its own: the builder shows its tail.
#[derive(Debug)]
pub enum WorkerError {
    /// A RUN step's process exited non-zero.
    ExitCode { command: String, code: i32, tail: Vec<String> },
    /// The worker (or the solver around it) could not do the step. Shows as its source does: the source's
    /// message is the whole message.
    Failed { kind: FailureKind, source: Box<dyn std::error::Error + Send + Sync> },
}

/// What class of failure stopped a step, for callers that react to kinds without knowing the worker's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The step's process ran and exited non-zero ([`WorkerError::ExitCode`]).
    Exit,
    /// A source could not be made available: an image's config or layers, an HTTP or Git source, a layer a remote
    /// cache named, a named context that was not given.
    Source,
    /// Files could not be selected from the build context or a stage: a missing or excluded source, an invalid
    /// pattern, a directory that cannot be opened.
    Context,
    /// A root filesystem or a `RUN --mount` could not be assembled (snapshots, overlay mounts, secrets, cache
    /// mounts).
    Mount,
    /// The container runtime could not start or run the process, or run it for another platform.
    Runtime,
    /// A change to the step's files failed: COPY, ADD, WORKDIR, a file written, an owner that does not exist.
    Files,
    /// The build's private network could not be started.
    Network,
    /// The store could not make a work directory, save a layer or record a result.
    Store,
    /// The step was stopped: the build was cancelled, or another step failed.
    Canceled,
    /// A broken promise between the solver and the worker: a missing input, a worker thread that panicked.
    Internal,
}

impl WorkerError {
    /// A failure of `kind`; `source` is the typed error, and its message is the step's error message.
    pub fn new(kind: FailureKind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        WorkerError::Failed { kind, source: source.into() }
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            WorkerError::ExitCode { .. } => FailureKind::Exit,
            WorkerError::Failed { kind, .. } => *kind,
        }
    }

    /// The worker's own error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            WorkerError::ExitCode { .. } => None,
            WorkerError::Failed { source, .. } => source.downcast_ref(),
        }
    }
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::ExitCode { command, code, .. } => {
                write!(f, "process {command:?} did not complete successfully: exit code: {code}")
            }
            WorkerError::Failed { source, .. } => source.fmt(f),
        }
    }
}

/// Transparent: a failure's causes are its source's causes, so a chain of messages names each cause once.
impl std::error::Error for WorkerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WorkerError::ExitCode { .. } => None,
            WorkerError::Failed { source, .. } => source.source(),
        }
    }
}

/// The solver's own reasons to fail a step (the worker's are its own types).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SolverFailure {
    /// Not started, because another step had failed already.
    #[error("canceled: another step failed")]
    Canceled,
    #[error("recording the result in the cache")]
    RecordResult(#[source] CacheError),
    #[error("recording the step's inputs")]
    RecordInputs(#[source] CacheError),
    #[error("a build step's worker thread panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

impl From<SolverFailure> for WorkerError {
    fn from(e: SolverFailure) -> Self {
        let kind = match &e {
            SolverFailure::Canceled => FailureKind::Canceled,
            SolverFailure::RecordResult(_) | SolverFailure::RecordInputs(_) => FailureKind::Store,
            SolverFailure::Panicked(_) => FailureKind::Internal,
        };
        WorkerError::new(kind, e)
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
    /// A result recorded for `key`, only if everything it refers to still exists. No entry, or one whose snapshots
    /// were collected, is a plain miss (`Ok(None)`); an entry that cannot be read or parsed is an error naming it,
    /// which the solver reports as a [`Event::Warning`] before running the step (whose result replaces the entry).
    fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, CacheError>;
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
    /// Something about a step that does not fail it but that the user must see: a cache entry that could not be
    /// read (the step runs again, and its result replaces the entry).
    Warning {
        vertex: VertexId,
        message: String,
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
