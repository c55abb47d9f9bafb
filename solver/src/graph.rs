//! The build graph: a DAG of ops whose edges are inputs.
//!
//! Vertices are appended in dependency order (an input is always an earlier vertex), so a graph is acyclic by
//! construction and its index order is a valid topological order; the frontend rejects cycles between stages
//! before it ever gets here. Everything an op does is data in these types, because the cache key is computed
//! from exactly this data (see [`crate::key`]).

use crate::Digest;
use serde::Serialize;

/// Index of a vertex in its [`Graph`].
pub type VertexId = usize;

/// One op and its inputs.
#[derive(Debug, Clone)]
pub struct Vertex {
    pub op: Op,
    /// Outputs of earlier vertices this op reads; ops refer to them by position in this list.
    pub inputs: Vec<VertexId>,
    /// What progress output calls this step (e.g. `[stage-1 3/5] RUN make`). Not part of the cache key.
    pub name: String,
    /// Run even if a cached result exists (`--no-cache`, `--no-cache-filter`).
    pub ignore_cache: bool,
}

/// What a vertex does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// An empty root filesystem.
    Scratch,
    /// A base image, already resolved to its manifest digest.
    Image {
        reference: String,
        digest: Digest,
    },
    /// The local build context. Its key is its name only: steps that read it add the content digest of exactly
    /// the files they select.
    Context {
        name: String,
    },
    Exec(ExecOp),
    File(FileOp),
}

/// A RUN step: input 0 is the root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    /// `KEY=value` in the order the process sees them.
    pub env: Vec<String>,
    pub cwd: String,
    /// As written in USER (`name`, `uid`, `name:group`), resolved against the root filesystem at run time.
    pub user: String,
    pub network: Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Host,
    None,
}

/// File actions applied on top of a root filesystem (`dest`: an input index, or `None` for an empty one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileOp {
    pub dest: Option<usize>,
    pub actions: Vec<FileAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Copy(CopyAction),
    /// WORKDIR: create a directory (and its parents) if missing.
    Mkdir {
        path: String,
        mode: u32,
        owner: Option<String>,
    },
}

/// COPY/ADD: copy `sources` from input `src` into the destination root at `dest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyAction {
    pub src: usize,
    pub sources: Vec<String>,
    /// Absolute destination (already joined with WORKDIR); a trailing `/` means "into this directory".
    pub dest: String,
    /// `--chown` as written, resolved against the destination's `/etc/passwd` and `/etc/group`.
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    /// ADD: extract local tar archives.
    pub extract_archives: bool,
    /// Keep owners of the source files (COPY --from); context files become root-owned.
    pub keep_owner: bool,
    /// Patterns of source paths not to copy (`.dockerignore`, `--exclude`), moby pattern syntax.
    pub excludes: Vec<String>,
}

/// A build graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub vertices: Vec<Vertex>,
}

impl Graph {
    /// Appends a vertex. Its inputs must already be in the graph.
    pub fn add(&mut self, vertex: Vertex) -> VertexId {
        debug_assert!(vertex.inputs.iter().all(|&i| i < self.vertices.len()));
        self.vertices.push(vertex);
        self.vertices.len() - 1
    }

    /// The vertices `targets` depend on (themselves included), in index (= dependency) order.
    pub fn needed(&self, targets: &[VertexId]) -> Vec<VertexId> {
        let mut need = vec![false; self.vertices.len()];
        let mut stack: Vec<VertexId> = targets.to_vec();
        while let Some(v) = stack.pop() {
            if v < need.len() && !need[v] {
                need[v] = true;
                stack.extend(&self.vertices[v].inputs);
            }
        }
        (0..need.len()).filter(|&v| need[v]).collect()
    }
}
