//! How a build fails: typed, so that the CLI can show the Dockerfile line, the step's last output lines and the
//! exit code each kind deserves, and a library user can tell them apart.

use crate::request::Dockerfile;
use rbuild_executor::worker::ExecError;
use rbuild_frontend::ConvertError;
use rbuild_frontend::instructions::Location;
use rbuild_frontend::parser::ParseError;
use rbuild_solver::{FailureKind, WorkerError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error("{}: {error}", dockerfile.name)]
    Parse { dockerfile: Dockerfile, error: ParseError },
    /// The Dockerfile parses but cannot be built as written (an unknown stage, a base image that cannot be
    /// resolved, a refused entitlement), at a line.
    #[error("{}: {error}", dockerfile.name)]
    Convert { dockerfile: Dockerfile, error: ConvertError },
    /// A step failed while the build ran.
    #[error("failed to solve: {0}")]
    Step(Box<StepFailure>),
    /// A signal stopped the build (the caller cancelled it).
    #[error("the build was interrupted")]
    Interrupted,
    /// Anything else: the store, the context, an output.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A failed step: its progress name, where it is in the Dockerfile, and what its process said last.
#[derive(Debug)]
pub struct StepFailure {
    pub dockerfile: Dockerfile,
    /// The step's progress title, e.g. `[build 3/4] RUN make`.
    pub name: String,
    pub location: Option<Location>,
    /// The last lines the step printed (for a RUN that exited non-zero).
    pub tail: Vec<String>,
    pub error: Arc<WorkerError>,
    /// The build was interrupted while the step ran; its failure is the interruption's consequence.
    pub interrupted: bool,
}

impl StepFailure {
    /// What class of failure it was (a process that exited non-zero, a mount, a copy, a cancelled build, ...).
    pub fn kind(&self) -> FailureKind {
        self.error.kind()
    }

    /// The executor's own error, for a caller that wants more than the kind (`None` for a non-zero exit, whose
    /// code and tail are in [`WorkerError::ExitCode`], and for the solver's own failures).
    pub fn exec_error(&self) -> Option<&ExecError> {
        self.error.downcast_ref()
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}
