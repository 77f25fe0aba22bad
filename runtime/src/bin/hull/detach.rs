//! Detached `hull` processes: the supervisor `create` starts, and the copy `exec -d` starts.
//! Each reports back on a readiness pipe at its fd 3: "ok\n", or why it failed.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::{Cli, LogFormat};

/// The fd a detached process finds its readiness pipe on.
pub const READY_FD: i32 = 3;

/// `hull` itself, with this invocation's global flags.
pub fn hull_command(cli: &Cli) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("locating the hull binary")?);
    cmd.arg("--root").arg(&cli.root);
    if let Some(log) = &cli.log {
        cmd.arg("--log").arg(log);
    }
    if cli.log_format == LogFormat::Json {
        cmd.args(["--log-format", "json"]);
    }
    if cli.debug {
        cmd.arg("--debug");
    }
    cmd.arg("--backend").arg(cli.backend.as_str());
    Ok(cmd)
}

/// Start `cmd` in a new session with a readiness pipe on its fd 3, and wait until it writes
/// "ok\n" (returns its pid) or an error (returned as ours) and closes the pipe.
pub fn spawn(mut cmd: Command, log_hint: PathBuf) -> Result<u32> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    hull::process::inherit_fds(&mut cmd, vec![(ready_w.as_raw_fd(), READY_FD)]);
    hull::process::new_session(&mut cmd);
    let child = cmd.spawn().context("starting a detached hull process")?;
    drop(ready_w);
    let mut report = String::new();
    File::from(ready_r).take(64 * 1024).read_to_string(&mut report)?;
    if report == "ok\n" {
        return Ok(child.id());
    }
    // The process failed; it cleaned up before exiting. Reap it.
    let mut child = child;
    let _ = child.wait();
    if report.is_empty() {
        bail!("detached hull process exited before reporting (see {})", log_hint.display());
    }
    Err(anyhow!(report.trim_end().to_string()))
}

/// Take the readiness pipe this detached process was given (see [`spawn`]).
pub fn take_ready_fd(fd: i32) -> File {
    // SAFETY: our parent placed the write end of its pipe at this fd for us alone.
    let ready = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Processes we start must not inherit it, or our parent would never see EOF.
    let _ = nix::fcntl::fcntl(&ready, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    ready
}
