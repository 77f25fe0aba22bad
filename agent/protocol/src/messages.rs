//! Control messages.

use serde::{Deserialize, Serialize};

/// Longest container or exec id either side accepts (runc allows any length; a VM boundary
/// does not).
pub const MAX_ID_LEN: usize = 128;

/// A request from the host. `id` is echoed in the [`Response`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", content = "args", rename_all = "snake_case")]
pub enum RequestBody {
    /// First call on a connection; the agent refuses every other call before it.
    Handshake {
        version: u32,
    },
    Ping,
    /// Configure the guest NICs and routes to mirror the container's network namespace.
    ConfigureNetwork {
        interfaces: Vec<crate::network::Interface>,
        routes: Vec<crate::network::Route>,
    },
    /// Create (but do not start) a container from an OCI spec already rewritten for guest
    /// paths: `spec.root.path` is absolute in the guest.
    CreateContainer {
        container_id: String,
        spec: serde_json::Value,
    },
    StartContainer {
        container_id: String,
    },
    /// Run an additional process in a running container (`runc exec`). `process` is an OCI
    /// `process` object; it starts at once.
    ExecProcess {
        container_id: String,
        exec_id: String,
        process: serde_json::Value,
    },
    /// Deliver `signal` to the container's init (every process with `all`), or to one exec.
    SignalProcess {
        container_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    RemoveContainer {
        container_id: String,
    },
    /// Forget a finished exec: its exit status, any output pipe the host never took, and its
    /// terminal. Refused while it runs. Without this a container with many execs (probes,
    /// health checks) would pin them all until it is removed, and an exec id could never be
    /// used again.
    RemoveProcess {
        container_id: String,
        exec_id: String,
    },
    /// Freeze / thaw every process of the container (cgroup freezer).
    PauseContainer {
        container_id: String,
    },
    ResumeContainer {
        container_id: String,
    },
    /// The container's processes (guest pids and command lines).
    ListProcesses {
        container_id: String,
    },
    /// Read the container's cgroup counters.
    ContainerStats {
        container_id: String,
    },
    /// Change the container's limits.
    UpdateResources {
        container_id: String,
        update: crate::ResourceUpdate,
    },
    /// Set the window size of a process's terminal (the init's without `exec_id`).
    ResizeTerminal {
        container_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        width: u16,
        height: u16,
    },
}

/// The agent's answer to one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(flatten)]
    pub result: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(AgentError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Empty,
    Handshake {
        version: u32,
        agent_version: String,
    },
    /// Guest pid of a container's init.
    Created {
        pid: i32,
    },
    Processes {
        processes: Vec<ProcessInfo>,
    },
    Stats {
        stats: crate::ContainerStats,
    },
}

/// Longest command line reported per process; the rest is cut.
pub const MAX_CMDLINE: usize = 4096;
/// Most processes reported by one `list_processes`.
pub const MAX_PROCESSES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub cmdline: String,
}

/// What kind of failure an [`AgentError`] is, so the host can answer its own callers in their
/// terms (containerd's NOT_FOUND for a kill of a process that already exited, runc's messages on
/// the CLI) without parsing the agent's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The container or process named does not exist, or has already exited.
    NotFound,
    /// The id is taken.
    AlreadyExists,
    /// A field of the request is malformed (spec, signal, id).
    InvalidArgument,
    /// The request is well-formed but the object is in the wrong state for it.
    FailedPrecondition,
    /// Anything else: the guest failed to do what was asked.
    #[default]
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// Absent on the wire means `internal`.
    #[serde(default)]
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// Something the agent tells the host without being asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A container's init (no `exec_id`) or an exec'd process ended. `status` follows the
    /// shell's convention: the exit code, or 128 + the signal number.
    ProcessExited {
        container_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        status: i32,
    },
    /// The kernel's OOM killer killed a process of the container (its memory limit was hit).
    /// Sent before the exit it caused.
    OomKilled { container_id: String },
}

/// Everything the agent writes on the control connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    Response(Response),
    Event(Event),
}

/// Check an id that names a container or process. Ids become path components on both sides,
/// so only a conservative alphabet is accepted (runc's own rule, plus a length cap).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is longer than {MAX_ID_LEN} bytes"));
    }
    if id == "." || id == ".." {
        return Err(format!("invalid id {id:?}"));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c))) {
        return Err(format!("invalid character {c:?} in id {id:?}: only [A-Za-z0-9_+.-] are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_is_stable() {
        let req = Request { id: 3, body: RequestBody::StartContainer { container_id: "c".into() } };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"id":3,"call":"start_container","args":{"container_id":"c"}}"#);
        let msg = AgentMessage::Response(Response { id: 3, result: Outcome::Ok(Reply::Empty) });
        assert_eq!(serde_json::to_string(&msg).unwrap(), r#"{"response":{"id":3,"ok":{"kind":"empty"}}}"#);
        let err = Outcome::Error(AgentError::new(ErrorKind::NotFound, "gone"));
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"error":{"kind":"not_found","message":"gone"}}"#);
        // An error without a kind (an older agent) is internal.
        let old: Outcome = serde_json::from_str(r#"{"error":{"message":"x"}}"#).unwrap();
        assert!(matches!(old, Outcome::Error(AgentError { kind: ErrorKind::Internal, .. })));
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
