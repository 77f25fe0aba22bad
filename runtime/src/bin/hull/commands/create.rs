//! `hull create` (and `run -d`): start a detached supervisor and wait until it reports the
//! container created, or why not.

use std::path::Path;

use anyhow::{bail, Result};
use hull::bundle::Bundle;
use hull::state::StateDir;

use crate::cli::Cli;
use crate::supervisor::control::ControlRequest;

pub fn detached(
    cli: &Cli,
    bundle_path: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    id: &str,
    start: bool,
) -> Result<()> {
    let bundle = Bundle::load(bundle_path)?;
    if start {
        bundle.require_process()?;
    }
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    match (terminal, console_socket) {
        (true, None) => {
            bail!("process.terminal is true: a detached container needs --console-socket to hand the terminal to")
        }
        (false, Some(_)) => bail!("--console-socket needs a terminal, but process.terminal is false"),
        _ => {}
    }
    let dir = StateDir::new(&cli.root, id)?;
    dir.create()?;
    let pid = match spawn_supervisor(cli, &bundle, &dir, console_socket) {
        Ok(pid) => pid,
        Err(e) => {
            dir.remove()?;
            return Err(e);
        }
    };
    let finish = || -> Result<()> {
        if let Some(path) = pid_file {
            crate::pid_file::write(path, pid)?;
        }
        if start {
            super::request(&dir, &ControlRequest::Start)?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        // Leave nothing running behind a failed verb, as runc does.
        if let Ok(state) = dir.read() {
            let _ = super::delete::destroy(&dir, &state);
        }
        dir.remove()?;
        return Err(e);
    }
    Ok(())
}

fn spawn_supervisor(cli: &Cli, bundle: &Bundle, dir: &StateDir, console_socket: Option<&Path>) -> Result<u32> {
    let mut cmd = crate::detach::hull_command(cli)?;
    cmd.arg("supervise").arg("--bundle").arg(&bundle.dir).arg("--ready-fd").arg(crate::detach::READY_FD.to_string());
    if let Some(socket) = console_socket {
        cmd.arg("--console-socket").arg(socket);
    }
    cmd.arg(dir.id());
    crate::detach::spawn(cmd, dir.dir.join("supervisor.log"))
}
