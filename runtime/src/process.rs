//! Helper processes a sandbox owns (the VMM, virtiofsd, the vsock backend).
//!
//! Each is started with `PR_SET_PDEATHSIG = SIGKILL`, so a supervisor that dies, however it
//! dies, takes its VM with it instead of leaving it running.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub struct ChildProc {
    pub name: &'static str,
    child: Child,
}

impl ChildProc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<ChildProc> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("supervisor exited during spawn"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(ChildProc { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A pidfd that becomes readable when the process ends.
    pub fn pidfd(&self) -> Result<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.child.id() as libc::pid_t, 0) };
        if fd < 0 {
            bail!("pidfd_open({}): {}", self.name, std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `Err` describing how the process ended, if it has.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!("{} exited ({})", self.name, describe(status))),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        self.reap_by(Instant::now() + grace);
    }

    /// Send `sig` unless the process was already reaped.
    pub fn signal(&mut self, sig: i32) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child, which we have not reaped, so the pid is still ours.
            unsafe { libc::kill(self.child.id() as i32, sig) };
        }
    }

    /// Wait for the process to end until `deadline`, then SIGKILL it; always reaps.
    pub fn reap_by(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

pub fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// Wait until `path` exists (a daemon's listening socket), or fail early if `proc` dies.
pub fn wait_for_path(path: &Path, proc: &mut ChildProc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!("{} did not create {} within {:?}", proc.name, path.display(), timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
