//! The build graph: a DAG of ops whose edges are inputs.
//!
//! Vertices are appended in dependency order (an input is always an earlier vertex), so a graph is acyclic by
//! construction and its index order is a valid topological order; the frontend rejects cycles between stages
//! before it ever gets here. Everything an op does is data in these types, because the cache key is computed
//! from exactly this data (see [`crate::key`]).

use rbuild_types::Digest;
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// `ADD https://...`: one file downloaded into an empty directory under `filename`, verified against
    /// `checksum` (`sha256:...`) when given. Its key is the URL; steps that copy from it add the content digest.
    Http {
        url: String,
        checksum: Option<String>,
        filename: String,
    },
    /// `ADD git@...`/`ADD https://...git#ref`: a clone of `remote` at `reference` (default branch if empty).
    Git {
        remote: String,
        reference: String,
        keep_git_dir: bool,
    },
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
    /// `RUN --mount`s in the order written. Left out of the encoding when empty, so the keys of steps without
    /// mounts are what they were before mounts existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ExecMount>,
    /// Container settings that change what a step can produce, which BuildKit keeps in the exec op's metadata:
    /// `--add-host` entries, `--ulimit`s, a `/dev/shm` size other than the default, as `name=value` lines. Left
    /// out of the encoding when empty, so the keys of steps built with the defaults do not change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// The container's hostname, from the `BUILDKIT_SANDBOX_HOSTNAME` build arg; empty for BuildKit's default
    /// (`buildkitsandbox`), and then left out of the encoding so default keys do not change.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The platform the step runs as when it is not the build machine's (`FROM --platform`, `--platform`): the
    /// executor emulates it. `None` for the machine's own, and then left out of the encoding, so the keys of
    /// native steps are what they were before multi-platform builds and the same in single- and multi-platform
    /// builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<rbuild_types::oci::Platform>,
    /// `RUN --security=insecure`: the step runs privileged (needs the `security.insecure` entitlement). Left out
    /// of the encoding when false, so the keys of sandboxed steps do not change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// Something mounted at a path while a RUN step runs; none of it ends up in the step's layer.
///
/// Only definitions are here, never content: a secret or an SSH agent is named by its id, and its value reaches
/// the executor out of band, so it cannot leak into a cache key, the cache index or the graph. Inputs are
/// positions in the vertex's input list (0 is the root filesystem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecMount {
    /// `type=bind`: `source` of input `input` (a stage, an image, or a copy of context files), read-only unless
    /// `readonly` is false, in which case writes go to a throwaway layer.
    Bind { target: String, input: usize, source: String, readonly: bool },
    /// `type=cache`: a directory kept in the store across builds under `id`; `from`/`source` seed it when new.
    Cache {
        target: String,
        id: String,
        sharing: CacheSharing,
        from: Option<usize>,
        source: String,
        mode: u32,
        uid: u32,
        gid: u32,
        readonly: bool,
    },
    /// `type=tmpfs`: an empty in-memory filesystem of at most `size` bytes.
    Tmpfs { target: String, size: Option<u64> },
    /// `type=secret`: the secret `id` as a file at `target` and/or in the variable `env`.
    Secret { id: String, target: Option<String>, env: Option<String>, required: bool, mode: u32, uid: u32, gid: u32 },
    /// `type=ssh`: a socket at `target` forwarding to the SSH agent `id`.
    Ssh { id: String, target: String, required: bool, mode: u32, uid: u32, gid: u32 },
}

/// How concurrent steps share one cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Everyone writes at once.
    Shared,
    /// A step that finds the cache in use gets its own copy, which is thrown away.
    Private,
    /// Steps wait for each other.
    Locked,
}

/// The network namespace a RUN step runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// The build's default: a private namespace with outbound connectivity through a user-mode network stack.
    Default,
    /// The host's namespace (`RUN --network=host`); needs the `network.host` entitlement.
    Host,
    /// A private namespace with only a loopback interface.
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
    /// `COPY <<EOF /dest`: write a file with this content (missing parents are created 0755).
    MkFile {
        path: String,
        data: String,
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
    /// Patterns of source paths not to copy (`--exclude`, and `.dockerignore` for graphs made before
    /// `dockerignore` existed), moby pattern syntax.
    pub excludes: Vec<String>,
    /// `.dockerignore` patterns of the build context, kept apart from `excludes` so that a COPY of an ignored
    /// path can say why it found nothing. Empty (and so absent from the key) for other sources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dockerignore: Vec<String>,
    /// `COPY --parents`: each source keeps its path (below the source root, up to its first wildcard-free
    /// directory) under `dest`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
}

/// A build graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub vertices: Vec<Vertex>,
    /// The stage each step belongs to, as the frontend names it (a stage name or `stage-N`): with the step's depth
    /// in its chain, the step's identity across builds (see [`crate::explain::step_identity`]). Sources have none.
    /// Not part of any cache key.
    pub stages: BTreeMap<VertexId, String>,
}

impl Graph {
    /// Records that step `v` belongs to stage `label`.
    pub fn set_stage(&mut self, v: VertexId, label: String) {
        self.stages.insert(v, label);
    }

    /// The stage step `v` belongs to ("" for a source or a graph made without stages).
    pub fn stage(&self, v: VertexId) -> &str {
        self.stages.get(&v).map_or("", String::as_str)
    }

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
