//! (hidden) `hull supervise`: the detached supervisor `create` starts. It reports creation on
//! its readiness fd, then serves until the container exits, and exits with its status.

use std::io::Write;
use std::path::Path;

use hull::bundle::Bundle;
use hull::sandbox::SandboxConfig;
use hull::state::StateDir;
use hull::terminal::Console;

use crate::cli::Cli;
use crate::supervisor::{self, Supervisor};

pub fn run(
    cli: &Cli,
    config: &SandboxConfig,
    bundle: &Path,
    ready_fd: i32,
    console_socket: Option<&Path>,
    id: &str,
) -> i32 {
    let mut ready = crate::detach::take_ready_fd(ready_fd);
    let dir = match StateDir::new(&cli.root, id) {
        Ok(d) => d,
        Err(e) => {
            let _ = write!(ready, "{e}");
            return 1;
        }
    };
    let console = console_socket.map(|p| Console::Socket(p.to_path_buf())).unwrap_or(Console::None);
    let created = supervisor::block_forwarded_signals()
        .and_then(|signals| Supervisor::create(dir, &Bundle::load(bundle)?, config, &console, signals));
    match created {
        Ok(sup) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            sup.serve()
        }
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = write!(ready, "{e:#}");
            1
        }
    }
}
