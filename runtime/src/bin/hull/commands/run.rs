//! `hull run` in the foreground: this process is the supervisor, relaying its own stdio (or
//! terminal), and exits with the container's status.

use std::path::Path;

use anyhow::Result;
use hull::bundle::Bundle;
use hull::sandbox::SandboxConfig;
use hull::state::StateDir;
use hull::terminal::Console;

use crate::cli::Cli;
use crate::supervisor::{self, Supervisor};

pub fn foreground(
    cli: &Cli,
    config: &SandboxConfig,
    bundle: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    id: &str,
    keep: bool,
) -> Result<i32> {
    let console = console_socket.map(|p| Console::Socket(p.to_path_buf())).unwrap_or(Console::Own);
    let bundle = Bundle::load(bundle)?;
    bundle.require_process()?;
    let dir = StateDir::new(&cli.root, id)?;
    dir.create()?;
    let result = (|| {
        let signals = supervisor::block_forwarded_signals()?;
        let sup = Supervisor::create(dir.clone(), &bundle, config, &console, signals)?;
        if let Some(path) = pid_file {
            crate::pid_file::write(path, std::process::id())?;
        }
        if let Err(e) = sup.start() {
            sup.stop();
            return Err(e);
        }
        Ok(sup.serve())
    })();
    // runc's `run` removes the container once it has exited, unless asked to keep it.
    if keep {
        return result;
    }
    if let Ok(state) = dir.read() {
        super::delete::run_poststop(&state);
    }
    dir.remove()?;
    result
}
