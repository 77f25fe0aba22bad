//! The single-threaded helper that creates one container with libcontainer.
//!
//! `hull-agent create-helper ID BUNDLE STATE_ROOT ERROR_FILE`, with the container's stdin,
//! stdout and stderr on fds 3, 4 and 5. It exits 0 once the container is in the `created`
//! state (its init waiting for `start`), or writes the reason to ERROR_FILE and exits 1.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;

pub const ARG: &str = "create-helper";
pub const FIRST_STDIO_FD: i32 = 3;

pub fn main(args: &[String]) -> i32 {
    let [id, bundle, state_root, error_file] = args else {
        eprintln!("usage: hull-agent {ARG} ID BUNDLE STATE_ROOT ERROR_FILE");
        return 2;
    };
    match create(id, bundle.into(), state_root.into()) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::write(error_file, format!("{e:#}"));
            1
        }
    }
}

fn create(id: &str, bundle: PathBuf, state_root: PathBuf) -> anyhow::Result<()> {
    // SAFETY: the agent placed three open fds at 3..=5 for us (see Registry::create_in) and
    // nothing else in this process owns them.
    let [stdin, stdout, stderr] =
        [0, 1, 2].map(|i| unsafe { OwnedFd::from_raw_fd(FIRST_STDIO_FD + i) });
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(state_root)?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    Ok(())
}
