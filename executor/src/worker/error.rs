//! The local worker's failures, one variant per thing that can go wrong in a step, each with its typed cause.
//!
//! A variant's message says what was being done (BuildKit-like: `copying a.txt to /app/`, `running "make"`) and its
//! `#[source]` says why, so the CLI's chain of messages reads `copying a.txt to /app/: cannot copy to non-directory:
//! ...`. A cause that is only a fact (a missing snapshot, a path that climbs above `/`) is part of the variant's
//! message instead of a string source. [`ExecError::kind`] sorts the variants into the solver's
//! [`FailureKind`]s, and the conversion into [`WorkerError`] keeps the whole typed error as the failure's source.

use crate::cancel::Cancelled;
use crate::copy::CopyError;
use crate::emulation::EmulationError;
use crate::mounts::MountError;
use crate::remote::RemoteError;
use crate::runtime::RuntimeError;
use crate::runtime::network::NetworkError;
use crate::snapshotter::SnapshotError;
use crate::user::UserError;
use rbuild_cache::StoreError;
use rbuild_cache::contenthash::ContentHashError;
use rbuild_image::layer::LayerError;
use rbuild_image::local::ImageError;
use rbuild_image::rootfs::RootfsError;
use rbuild_solver::{FailureKind, WorkerError};
use rbuild_types::Digest;
use rbuild_types::patterns::PatternError;
use std::io;
use std::path::PathBuf;

/// Why the local worker could not do a step. (The image crate's errors are boxed: they are large, and every
/// result of the worker carries this type.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The RUN step's process ran and exited non-zero (128 + the signal when it was killed); `tail` holds its last
    /// output lines. Becomes [`WorkerError::ExitCode`].
    #[error("process {command:?} did not complete successfully: exit code: {code}")]
    Exit { command: String, code: i32, tail: Vec<String> },

    // The container runtime.
    #[error("preparing the container runtime")]
    Runtime(#[source] RuntimeError),
    #[error("running {command:?}")]
    Run {
        command: String,
        #[source]
        source: RuntimeError,
    },
    #[error("emulating another platform")]
    Emulation(#[source] EmulationError),
    #[error("USER {user}")]
    User {
        user: String,
        #[source]
        source: UserError,
    },

    // Root filesystems and mounts.
    #[error("layer {layer}: its snapshot is missing from the store")]
    MissingSnapshot { layer: Digest },
    #[error("mounting the step's root filesystem")]
    MountRootfs(#[source] SnapshotError),
    #[error("unmounting the step's root filesystem")]
    UnmountRootfs(#[source] SnapshotError),
    #[error("mounting a stage's filesystem to copy from")]
    MountView(#[source] SnapshotError),
    #[error("preparing the step's mounts")]
    Mounts(#[source] MountError),

    // The store.
    /// A step's scratch directory (`what` names its use, e.g. `run`, `view`, `bundles`).
    #[error("creating a work directory for {what}")]
    WorkDir {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("clamping mtimes to SOURCE_DATE_EPOCH")]
    ClampMtimes(#[source] Box<RootfsError>),
    #[error("computing the layer digest")]
    LayerDigest(#[source] LayerError),
    #[error("saving the layer")]
    SaveLayer(#[source] StoreError),

    // Sources.
    #[error("reading image config {config}")]
    ReadImageConfig {
        config: Digest,
        #[source]
        source: StoreError,
    },
    #[error("parsing image config {config}")]
    ParseImageConfig {
        config: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {layer} of image {config}")]
    ImageLayer {
        layer: Digest,
        config: Digest,
        #[source]
        source: Box<RootfsError>,
    },
    #[error("fetching cached layer {layer}")]
    FetchLayer {
        layer: Digest,
        #[source]
        source: Box<ImageError>,
    },
    #[error("restoring cache mount {id:?}")]
    RestoreCacheMount {
        id: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("loading the build context {name:?}: no --build-context of that name was given")]
    UnknownContext { name: String },
    /// `ADD <url>` or `ADD <git repository>`.
    #[error("ADD {url}")]
    Remote {
        url: String,
        #[source]
        source: RemoteError,
    },
    #[error("not a source op")]
    NotASource,

    // Selecting and copying files.
    #[error("invalid .dockerignore pattern")]
    DockerignorePattern(#[source] PatternError),
    #[error("invalid exclude pattern")]
    ExcludePattern(#[source] PatternError),
    #[error("opening a stage's files to hash")]
    OpenStage(#[source] io::Error),
    #[error("copying {} to {dest}", .sources.join(" "))]
    OpenCopySource {
        sources: Vec<String>,
        dest: String,
        #[source]
        source: io::Error,
    },
    #[error("copying {} to {dest}", .sources.join(" "))]
    Copy {
        sources: Vec<String>,
        dest: String,
        #[source]
        source: CopyError,
    },
    /// A source the context has but `.dockerignore` or `--exclude` hides.
    #[error("copying {} to {dest}: source {name:?} not found: it was excluded by {by}", .sources.join(" "))]
    Excluded { sources: Vec<String>, dest: String, name: String, by: Exclusion },
    #[error("copy: source input {input} is missing")]
    MissingInput { input: usize },

    // File actions.
    #[error("creating {path}")]
    Mkdir {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("writing {path}")]
    WriteFile {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("--chown={spec}")]
    Chown {
        spec: String,
        #[source]
        source: UserError,
    },
    #[error("WORKDIR {path}: USER {spec}")]
    WorkdirOwner {
        path: String,
        spec: String,
        #[source]
        source: UserError,
    },

    // The build's network.
    #[error("starting the build's network")]
    Network(#[source] NetworkError),

    #[error("stopping")]
    Cancelled(#[source] Cancelled),
}

/// Which exclusion hid a COPY source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Dockerignore,
    Exclude,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exclusion::Dockerignore => ".dockerignore",
            Exclusion::Exclude => "--exclude",
        })
    }
}

/// Why a directory or file could not be made at a path of the step's root filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path climbs above /")]
    ClimbsAbove,
    /// A symlink on the way resolves to something that is not a directory.
    #[error("{} is not a directory", path.display())]
    SymlinkNotADirectory { path: PathBuf },
    #[error("{part} exists and is not a directory")]
    NotADirectory { part: String },
    #[error("the path names no file")]
    NoFileName,
    #[error("a directory is in the way")]
    DirectoryInTheWay,
    #[error(transparent)]
    Resolve(#[from] ContentHashError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ExecError {
    /// The class of this failure, as the solver and the builder see it.
    pub fn kind(&self) -> FailureKind {
        use ExecError::*;
        match self {
            Exit { .. } => FailureKind::Exit,
            Runtime(_) | Run { .. } | Emulation(_) | User { .. } => FailureKind::Runtime,
            MissingSnapshot { .. } | MountRootfs(_) | UnmountRootfs(_) | MountView(_) | Mounts(_) => FailureKind::Mount,
            WorkDir { .. } | ClampMtimes(_) | LayerDigest(_) | SaveLayer(_) => FailureKind::Store,
            ReadImageConfig { .. }
            | ParseImageConfig { .. }
            | ImageLayer { .. }
            | FetchLayer { .. }
            | RestoreCacheMount { .. }
            | UnknownContext { .. }
            | Remote { .. } => FailureKind::Source,
            DockerignorePattern(_) | ExcludePattern(_) | OpenStage(_) | OpenCopySource { .. } | Excluded { .. } => {
                FailureKind::Context
            }
            // A source that is not there is the context's fault; anything else went wrong writing the step's files.
            Copy { source: CopyError::Select(_), .. } => FailureKind::Context,
            Copy { .. } | Mkdir { .. } | WriteFile { .. } | Chown { .. } | WorkdirOwner { .. } => FailureKind::Files,
            Network(_) => FailureKind::Network,
            Cancelled(_) => FailureKind::Canceled,
            NotASource | MissingInput { .. } => FailureKind::Internal,
        }
    }
}

impl From<Cancelled> for ExecError {
    fn from(e: Cancelled) -> Self {
        ExecError::Cancelled(e)
    }
}

impl From<ExecError> for WorkerError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Exit { command, code, tail } => WorkerError::ExitCode { command, code, tail },
            e => WorkerError::new(e.kind(), e),
        }
    }
}
