//! One file per verb; [`run`] dispatches. Verbs that act on a running container send the
//! pod operation to its supervisor's control socket.

mod checkpoint;
mod create;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod supervise;
mod unpack;
mod update;

use std::time::Duration;

use anyhow::{bail, Result};
use hull::sandbox::SandboxConfig;
use hull::state::{State, StateDir, Status};

use crate::cli::{Cli, Command};
use crate::supervisor::control::{self, ControlRequest};

/// How long a verb waits for the supervisor to answer (container creation under TCG is slow).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run(cli: &Cli) -> Result<i32> {
    if cli.rootless == "true" {
        bail!("--rootless true: hull needs root (KVM, tap devices and mounts)");
    }
    let config = SandboxConfig { backend: cli.backend, ..SandboxConfig::default() };
    match &cli.command {
        Command::Run { detach: false, bundle, pid_file, console_socket, keep, compat, id, .. } => {
            compat.check()?;
            run::foreground(cli, &config, bundle, pid_file.as_deref(), console_socket.as_deref(), id, *keep)
        }
        Command::Run { detach: true, bundle, pid_file, console_socket, compat, id, .. } => {
            compat.check()?;
            create::detached(cli, bundle, pid_file.as_deref(), console_socket.as_deref(), id, true).map(|()| 0)
        }
        Command::Create { bundle, pid_file, console_socket, compat, id } => {
            compat.check()?;
            create::detached(cli, bundle, pid_file.as_deref(), console_socket.as_deref(), id, false).map(|()| 0)
        }
        Command::Start { id } => start::run(cli, id),
        Command::State { id } => state::run(cli, id),
        Command::Kill { all, id, signal } => kill::run(cli, id, signal, *all),
        Command::Delete { force, id } => delete::run(cli, id, *force),
        Command::Exec(args) => exec::run(cli, args),
        Command::Pause { id } => pause::run(cli, id),
        Command::Resume { id } => resume::run(cli, id),
        Command::Ps { format, id } => ps::run(cli, id, *format),
        Command::List { format, quiet } => list::run(cli, *format, *quiet),
        Command::Events { stats, interval, id } => events::run(cli, id, *stats, *interval),
        Command::Update(args) => update::run(cli, args),
        Command::Features => features::run(cli),
        Command::Spec { bundle } => spec::run(bundle),
        Command::Unpack { image, platform, max_size, bundle, args } => {
            unpack::run(image, platform, *max_size, bundle, args)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => checkpoint::refuse(),
        Command::Supervise { bundle, ready_fd, console_socket, id } => {
            Ok(supervise::run(cli, &config, bundle, *ready_fd, console_socket.as_deref(), id))
        }
    }
}

/// The state of container `id`, which must be in one of `allowed` for `verb`.
fn container(cli: &Cli, id: &str, verb: &str, allowed: &[Status]) -> Result<(StateDir, State)> {
    let dir = StateDir::new(&cli.root, id)?;
    let state = dir.read()?;
    let status = state.effective_status();
    if !allowed.contains(&status) {
        bail!("cannot {verb} container {id} that is {}", status.as_str());
    }
    Ok((dir, state))
}

/// Send `req` to the supervisor of `dir`.
fn request(dir: &StateDir, req: &ControlRequest) -> Result<()> {
    control::request(&dir.control_socket(), req, CONTROL_TIMEOUT)
}

/// Print `text` and a newline on stdout. A reader that went away (`hull list | head`) is not
/// an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n"));
}
