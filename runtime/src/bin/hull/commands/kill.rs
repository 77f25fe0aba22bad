//! `hull kill ID [SIGNAL]`: signal a container's init (`--all`: every process).

use anyhow::Result;
use hull::state::Status;

use crate::cli::Cli;
use crate::supervisor::control::ControlRequest;

pub fn run(cli: &Cli, id: &str, signal: &str, all: bool) -> Result<i32> {
    let signal = crate::signal::parse(signal)?;
    let (dir, _) = super::container(cli, id, "kill", &[Status::Created, Status::Running, Status::Paused])?;
    super::request(&dir, &ControlRequest::Kill { signal, all, exec_id: None })?;
    Ok(0)
}
