//! The build graph, its content-addressed cache keys and the scheduler that runs it.
//!
//! The solver knows ops (image/context sources, exec, file), not Dockerfiles: the frontend emits a [`graph::Graph`],
//! and a [`worker::Worker`] (implemented by the executor over the cache and image crates) does the actual work. This
//! crate therefore depends on neither `frontend` nor `executor`; it defines the traits they meet at.

pub mod explain;
pub mod graph;
pub mod key;
pub mod solve;
pub mod worker;

pub use graph::{
    CacheSharing, CopyAction, ExecMount, ExecOp, FileAction, FileOp, Graph, Network, Op, Vertex, VertexId,
};
pub use key::cache_key;
pub use solve::{SolveError, SolveOptions, Solved, solve};
pub use worker::{
    CacheError, CacheRecord, CacheStore, Event, FailureKind, NoProgress, Output, Progress, SolverFailure, Worker,
    WorkerError,
};
