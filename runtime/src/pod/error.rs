//! What a pod operation can fail with, and the kind each failure is on every front end.

use hull_protocol::ErrorKind;

use super::state::{InvalidState, Op, ProcessState};
use crate::agent::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("process {exec_id} of container {id} does not exist")]
    NoProcess { id: String, exec_id: String },
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {exec_id} already exists in container {id}")]
    ExecExists { id: String, exec_id: String },
    #[error(transparent)]
    InvalidState(#[from] InvalidState),
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0} is being started; try again once its start has returned")]
    Busy(String),
    #[error("{0} has no terminal to resize")]
    NoTerminal(String),
    #[error("the sandbox VM failed: {0}")]
    SandboxFailed(String),
    #[error("the sandbox VM is stopping")]
    Stopping,
    /// The guest could not do what was asked, or did not answer.
    #[error("{what}: {source}")]
    Agent { what: &'static str, source: AgentError },
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error(transparent)]
    Stdio(#[from] crate::stdio::StdioError),
    #[error(transparent)]
    Assets(#[from] crate::assets::MissingAsset),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    /// A callback of the front end failed (see [`super::PodConfig::on_network`]).
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
}

impl PodError {
    /// The kind of failure, as the agent protocol names kinds: containerd's codes and the
    /// CLI's messages are derived from this one place.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PodError::NoContainer(_) | PodError::NoProcess { .. } => ErrorKind::NotFound,
            PodError::ContainerExists(_) | PodError::ExecExists { .. } => ErrorKind::AlreadyExists,
            // runc and containerd: a signal for a process that has finished finds nothing.
            PodError::InvalidState(InvalidState { op: Op::Signal, state: ProcessState::Stopped, .. }) => {
                ErrorKind::NotFound
            }
            PodError::InvalidState(_)
            | PodError::Busy(_)
            | PodError::NoTerminal(_)
            | PodError::SandboxFailed(_)
            | PodError::Stopping => ErrorKind::FailedPrecondition,
            PodError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            PodError::Agent { source, .. } => source.kind(),
            PodError::Sandbox(_)
            | PodError::Network(_)
            | PodError::Share(_)
            | PodError::Stdio(_)
            | PodError::Assets(_)
            | PodError::Process(_)
            | PodError::Cgroup(_)
            | PodError::Io { .. }
            | PodError::Caller(_) => ErrorKind::Internal,
        }
    }
}

/// Name the agent call an error came from.
pub(super) fn agent(what: &'static str) -> impl FnOnce(AgentError) -> PodError {
    move |source| PodError::Agent { what, source }
}
