//! `hull delete [--force] ID`: remove a container and everything it left on the host.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hull::state::{State, StateDir, Status};

use crate::cli::Cli;
use crate::supervisor::control::{self, ControlRequest};

pub fn run(cli: &Cli, id: &str, force: bool) -> Result<i32> {
    let dir = StateDir::new(&cli.root, id)?;
    let _lock = dir.lock_existing()?;
    let state = dir.read()?;
    match state.effective_status() {
        // Stopped, but its supervisor may still be tearing the VM down: wait for that.
        Status::Stopped if state.supervisor_alive() => destroy(&dir, &state)?,
        Status::Stopped => {}
        Status::Creating => bail!("container {id} is still being created; try again once `create` has returned"),
        Status::Created => destroy(&dir, &state)?,
        _ if force => destroy(&dir, &state)?,
        status => bail!("cannot delete container {id} that is {}; stop it first or use --force", status.as_str()),
    }
    // A supervisor that died without recording the exit could not undo its network set-up,
    // nor remove its host cgroup (its VM died with it).
    if state.status != Status::Stopped {
        if let Some(record) = &state.network {
            if let Err(e) = hull::network::clean_up(record) {
                tracing::warn!("cleaning up the network of {id}: {e}");
            }
        }
        if let Some(cgroup) = &state.cgroup {
            hull::cgroup::remove_path(cgroup);
        }
    }
    run_poststop(&state);
    dir.remove()?;
    Ok(0)
}

/// poststop hooks, from the bundle's config (failures are logged: runtime-spec).
pub fn run_poststop(state: &State) {
    let config = state.bundle.join("config.json");
    let hooks = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<oci_spec::runtime::Spec>(&b).ok())
        .and_then(|s| s.hooks().clone());
    let mut stopped = state.clone();
    stopped.status = Status::Stopped;
    hull::hooks::run_warning(hooks.as_ref(), hull::hooks::Point::Poststop, &stopped);
}

/// Tell the supervisor to stop the container and its VM, and wait for it to be gone.
pub fn destroy(dir: &StateDir, state: &State) -> Result<()> {
    if let Err(e) = control::request(&dir.control_socket(), &ControlRequest::Destroy, super::CONTROL_TIMEOUT) {
        tracing::warn!("asking the supervisor to stop: {e:#}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    while state.supervisor_alive() {
        if Instant::now() > deadline && !killed {
            if let Some(pid) = state.pid {
                // SAFETY: kill(2) of the pid whose start time matches our supervisor's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            killed = true;
        }
        if Instant::now() > deadline + Duration::from_secs(5) {
            bail!("container supervisor did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
