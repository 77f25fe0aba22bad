//! `hull ps ID`: the container's processes.

use anyhow::Result;
use hull::state::Status;

use crate::cli::{Cli, Format};
use crate::supervisor::control::{request_reply, ControlRequest};

/// Processes of a container, as guest pids (the only pids that mean anything for a VM).
pub fn run(cli: &Cli, id: &str, format: Format) -> Result<i32> {
    let (dir, _) =
        super::container(cli, id, "list the processes of", &[Status::Created, Status::Running, Status::Paused])?;
    let reply = request_reply(&dir.control_socket(), &ControlRequest::Ps, Some(super::CONTROL_TIMEOUT))?;
    let processes = reply.processes.unwrap_or_default();
    match format {
        Format::Json => super::emit(&serde_json::to_string(&processes.iter().map(|p| p.pid).collect::<Vec<_>>())?),
        Format::Table => {
            super::emit(&format!("{:<8} CMD", "PID"));
            for p in &processes {
                super::emit(&format!("{:<8} {}", p.pid, p.cmdline));
            }
        }
    }
    Ok(0)
}
