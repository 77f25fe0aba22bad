//! `hull kill ID [SIGNAL]`: signal a container's init (`--all`: every process).

use anyhow::{bail, Result};
use hull::state::{StateDir, Status};

use crate::cli::Cli;
use crate::supervisor::control::ControlRequest;

pub fn run(cli: &Cli, id: &str, signal: &str, all: bool) -> Result<i32> {
    let signal = crate::signal::parse(signal)?;
    let dir = StateDir::new(&cli.root, id)?;
    let state = dir.read()?;
    // runc's answers, which containerd's and podman's callers match: a stopped container is
    // "not running" (runtime-spec: kill MUST generate an error), except for `--all`, which
    // has nothing left to signal and succeeds.
    match state.effective_status() {
        Status::Stopped if all => return Ok(0),
        Status::Stopped => bail!("container not running"),
        Status::Creating => bail!("cannot kill container {id} that is creating"),
        _ => {}
    }
    match super::request(&dir, &ControlRequest::Kill { signal, all, exec_id: None }) {
        Ok(()) => Ok(0),
        // It exited between the read above and the signal.
        Err(_) if dir.read().map(|s| s.effective_status() == Status::Stopped).unwrap_or(false) => {
            if all {
                Ok(0)
            } else {
                bail!("container not running")
            }
        }
        Err(e) => Err(e),
    }
}
