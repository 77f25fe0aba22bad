//! The single-threaded helper that creates one container, or one exec'd process, with
//! libcontainer.
//!
//! `hull-agent create-helper init ID BUNDLE STATE_ROOT ERROR_FILE [CONSOLE_SOCKET]` leaves the
//! container in the `created` state (its init waiting for `start`); `… exec ID PROCESS_JSON
//! STATE_ROOT ERROR_FILE [CONSOLE_SOCKET]` starts a process in a running container and writes
//! its pid to [`PID_FILE`] beside PROCESS_JSON. The process's stdin, stdout and stderr are on
//! fds 3, 4 and 5, unless it has a terminal: then libcontainer sends the terminal's master to
//! CONSOLE_SOCKET. On failure the reason goes to ERROR_FILE and the exit status is 1.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::exec_seccomp;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;

pub const ARG: &str = "create-helper";
pub const INIT: &str = "init";
pub const EXEC: &str = "exec";
pub const PID_FILE: &str = "pid";
pub const FIRST_STDIO_FD: i32 = 3;

pub fn main(args: &[String]) -> i32 {
    let (mode, id, path, state_root, error_file, console) = match args {
        [m, i, p, s, e] => (m, i, p, s, e, None),
        [m, i, p, s, e, c] => (m, i, p, s, e, Some(PathBuf::from(c))),
        _ => {
            eprintln!("usage: hull-agent {ARG} init|exec ID PATH STATE_ROOT ERROR_FILE [CONSOLE_SOCKET]");
            return 2;
        }
    };
    match run(mode, id, Path::new(path), state_root.into(), console) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::write(error_file, format!("{e:#}"));
            1
        }
    }
}

fn run(mode: &str, id: &str, path: &Path, state_root: PathBuf, console: Option<PathBuf>) -> Result<()> {
    // SAFETY: the agent placed three open fds at 3..=5 for us (see Registry::run_helper) and
    // nothing else in this process owns them.
    let [stdin, stdout, stderr] = [0, 1, 2].map(|i| unsafe { OwnedFd::from_raw_fd(FIRST_STDIO_FD + i) });
    // An exec gets its container's seccomp filter from its own executor (exec_seccomp.rs).
    let exec_seccomp = match mode {
        EXEC => {
            let dir = path.parent().ok_or_else(|| anyhow!("process file has no directory"))?;
            let config = dir.parent().ok_or_else(|| anyhow!("process file has no bundle"))?.join("config.json");
            exec_seccomp::prepare(path, &config)?
        }
        _ => None,
    };
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default());
    let builder = match exec_seccomp {
        Some(executor) => builder.with_executor(executor),
        None => builder.with_executor(DefaultExecutor {}),
    };
    let builder = builder
        .with_root_path(state_root)?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .with_console_socket(console);
    match mode {
        INIT => {
            builder.as_init(path).with_systemd(false).with_detach(true).build()?;
        }
        EXEC => {
            let pid = builder.as_tenant().with_process(Some(path)).with_detach(true).build()?;
            let dir = path.parent().ok_or_else(|| anyhow!("process file has no directory"))?;
            std::fs::write(dir.join(PID_FILE), pid.as_raw().to_string())?;
        }
        other => return Err(anyhow!("unknown helper mode {other:?}")),
    }
    Ok(())
}
