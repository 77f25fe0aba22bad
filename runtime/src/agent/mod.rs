//! The typed client of `hull-agent`: one method per call of the agent protocol, each returning
//! what that call answers, so no caller matches on a generic reply.
//!
//! The agent runs inside a guest that may be hostile: every call has a deadline, every frame
//! is capped, and an answer of the wrong shape is an error, never trusted.

mod connection;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hull_protocol::network::{Interface, Route};
use hull_protocol::{
    ContainerStats, ErrorKind, FrameError, ProcessInfo, Reply, RequestBody, ResourceUpdate, CONTROL_PORT,
    PROTOCOL_VERSION,
};

pub use connection::AgentNotice;
use connection::Connection;

/// How long one call may take. Container creation under TCG is the slowest legitimate call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// [`CALL_TIMEOUT`], or `HULL_CALL_TIMEOUT` (seconds) where guests are slower still: in the
/// nested rig's L1 (KVM under TCG, one vCPU), 20 containers created at once took past 60 s.
pub fn call_timeout() -> Duration {
    std::env::var("HULL_CALL_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s: &u64| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(CALL_TIMEOUT)
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error of its own.
    #[error("agent: {message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent connection lost")]
    Lost,
    #[error("sending to the agent: {0}")]
    Send(#[source] FrameError),
    #[error("agent answered {call} with {reply}")]
    UnexpectedReply { call: &'static str, reply: String },
    #[error("agent did not answer on vsock port {CONTROL_PORT}: {0}")]
    Unreachable(#[source] std::io::Error),
    /// A sandbox process died while waiting for the agent.
    #[error("{0}")]
    SandboxDied(String),
    #[error("agent protocol version {agent} (this runtime speaks {PROTOCOL_VERSION})")]
    Version { agent: u32 },
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
}

impl AgentError {
    /// The kind of failure, as the wire names it; failures of the connection are internal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Refused { kind, .. } => *kind,
            _ => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;

pub struct Agent {
    conn: Connection,
}

impl Agent {
    /// Connect through the hybrid vsock socket `uds`, retrying while the guest boots, then
    /// perform the version handshake. `died` is polled between attempts (it names a sandbox
    /// process that ended), so a VM that died is reported at once instead of at the deadline.
    pub fn connect(
        uds: &Path,
        deadline: Instant,
        mut died: impl FnMut() -> Option<String>,
    ) -> Result<(Agent, Receiver<AgentNotice>)> {
        let stream = loop {
            if let Some(why) = died() {
                return Err(AgentError::SandboxDied(why));
            }
            match crate::vsock::connect(uds, CONTROL_PORT, Duration::from_secs(5)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => return Err(AgentError::Unreachable(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (agent, notices) = Self::over(stream)?;
        agent.handshake()?;
        Ok((agent, notices))
    }

    /// Wrap an established connection (tests use a fake agent on a socketpair).
    pub fn over(stream: UnixStream) -> Result<(Agent, Receiver<AgentNotice>)> {
        let (conn, notices) = Connection::over(stream)?;
        Ok((Agent { conn }, notices))
    }

    fn call(&self, body: RequestBody) -> Result<Reply> {
        self.conn.call(body, call_timeout())
    }

    /// A call whose only answer is `empty`.
    fn command(&self, call: &'static str, body: RequestBody) -> Result<()> {
        match self.call(body)? {
            Reply::Empty => Ok(()),
            other => Err(unexpected(call, &other)),
        }
    }

    pub fn handshake(&self) -> Result<()> {
        match self.call(RequestBody::Handshake { version: PROTOCOL_VERSION })? {
            Reply::Handshake { version, agent_version } if version == PROTOCOL_VERSION => {
                tracing::debug!(version, agent_version, "agent handshake");
                Ok(())
            }
            Reply::Handshake { version, .. } => Err(AgentError::Version { agent: version }),
            other => Err(unexpected("handshake", &other)),
        }
    }

    pub fn ping(&self) -> Result<()> {
        self.command("ping", RequestBody::Ping)
    }

    pub fn configure_network(&self, interfaces: &[Interface], routes: &[Route]) -> Result<()> {
        let body = RequestBody::ConfigureNetwork { interfaces: interfaces.to_vec(), routes: routes.to_vec() };
        self.command("configure_network", body)
    }

    /// Create a container from a spec rewritten for the guest; returns its init's guest pid.
    pub fn create_container(&self, id: &str, spec: serde_json::Value) -> Result<i32> {
        match self.call(RequestBody::CreateContainer { container_id: id.into(), spec })? {
            Reply::Created { pid } => Ok(pid),
            other => Err(unexpected("create_container", &other)),
        }
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.command("start_container", RequestBody::StartContainer { container_id: id.into() })
    }

    /// Start an OCI `process` in container `id`; returns its guest pid.
    pub fn exec_process(&self, id: &str, exec_id: &str, process: serde_json::Value) -> Result<i32> {
        let body = RequestBody::ExecProcess { container_id: id.into(), exec_id: exec_id.into(), process };
        match self.call(body)? {
            Reply::Created { pid } => Ok(pid),
            other => Err(unexpected("exec_process", &other)),
        }
    }

    pub fn signal_process(&self, id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<()> {
        self.signal_process_within(id, exec_id, signal, all, call_timeout())
    }

    /// [`Agent::signal_process`] with a deadline of its own.
    pub fn signal_process_within(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
        timeout: Duration,
    ) -> Result<()> {
        let body =
            RequestBody::SignalProcess { container_id: id.into(), exec_id: exec_id.map(str::to_string), signal, all };
        match self.conn.call(body, timeout)? {
            Reply::Empty => Ok(()),
            other => Err(unexpected("signal_process", &other)),
        }
    }

    pub fn pause_container(&self, id: &str) -> Result<()> {
        self.command("pause_container", RequestBody::PauseContainer { container_id: id.into() })
    }

    pub fn resume_container(&self, id: &str) -> Result<()> {
        self.command("resume_container", RequestBody::ResumeContainer { container_id: id.into() })
    }

    pub fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        match self.call(RequestBody::ListProcesses { container_id: id.into() })? {
            Reply::Processes { processes } => Ok(processes),
            other => Err(unexpected("list_processes", &other)),
        }
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        match self.call(RequestBody::ContainerStats { container_id: id.into() })? {
            Reply::Stats { stats } => Ok(stats),
            other => Err(unexpected("container_stats", &other)),
        }
    }

    pub fn update_resources(&self, id: &str, update: ResourceUpdate) -> Result<()> {
        self.command("update_resources", RequestBody::UpdateResources { container_id: id.into(), update })
    }

    pub fn resize_terminal(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        let body = RequestBody::ResizeTerminal {
            container_id: id.into(),
            exec_id: exec_id.map(str::to_string),
            width,
            height,
        };
        self.command("resize_terminal", body)
    }

    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.command("remove_process", RequestBody::RemoveProcess { container_id: id.into(), exec_id: exec_id.into() })
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.command("remove_container", RequestBody::RemoveContainer { container_id: id.into() })
    }
}

/// An answer of the wrong shape; shown cut short, since the guest chose its contents.
fn unexpected(call: &'static str, reply: &Reply) -> AgentError {
    let mut shown = format!("{reply:?}");
    if shown.len() > 200 {
        let mut end = 200;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    AgentError::UnexpectedReply { call, reply: shown }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::{read_frame, write_frame, AgentMessage, Outcome, Request, Response};

    fn answer(guest: &mut UnixStream, result: Outcome) {
        let req: Request = read_frame(guest).unwrap();
        write_frame(guest, &AgentMessage::Response(Response { id: req.id, result })).unwrap();
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (agent, _notices) = Agent::over(host).unwrap();
        let fake = std::thread::spawn(move || {
            answer(&mut guest, Outcome::Ok(Reply::Empty));
            answer(&mut guest, Outcome::Ok(Reply::Created { pid: 7 }));
            guest
        });
        let err = agent.create_container("c", serde_json::json!({})).unwrap_err();
        assert!(matches!(err, AgentError::UnexpectedReply { call: "create_container", .. }), "{err}");
        let err = agent.start_container("c").unwrap_err();
        assert!(err.to_string().contains("start_container"), "{err}");
        drop(fake.join());
    }

    #[test]
    fn error_kinds_cross_the_wire() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (agent, _notices) = Agent::over(host).unwrap();
        let fake = std::thread::spawn(move || {
            let e = hull_protocol::AgentError::new(ErrorKind::NotFound, "exec x has already exited");
            answer(&mut guest, Outcome::Error(e));
            guest
        });
        let err = agent.signal_process("c", Some("x"), 9, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.to_string(), "agent: exec x has already exited");
        drop(fake.join());
    }
}
