//! Helper processes a sandbox owns (the VMM, virtiofsd, the vsock backend).
//!
//! Each is started with `PR_SET_PDEATHSIG = SIGKILL`, so a supervisor that dies, however it
//! dies, takes its VM with it instead of leaving it running.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({program}): {source}")]
    Spawn { name: &'static str, program: String, source: std::io::Error },
    #[error("pidfd_open({name}): {source}")]
    PidFd { name: &'static str, source: std::io::Error },
    #[error("{name} exited ({how})")]
    Exited { name: &'static str, how: String },
    #[error("{name} did not create {} within {timeout:?}", path.display())]
    NoSocket { name: &'static str, path: PathBuf, timeout: Duration },
    #[error("waiting for {name}: {source}")]
    Wait { name: &'static str, source: std::io::Error },
}

type Result<T> = std::result::Result<T, ProcessError>;

pub struct ChildProc {
    pub name: &'static str,
    child: Child,
}

impl ChildProc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<ChildProc> {
        let parent = std::process::id() as libc::pid_t;
        // A group of its own, so that what it forks (virtiofsd's sandbox runs in a child of
        // its own) is signalled with it, and nothing outlives a stop.
        cmd.process_group(0);
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
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name,
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
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
            return Err(ProcessError::PidFd { name: self.name, source: std::io::Error::last_os_error() });
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `Err` describing how the process ended, if it has.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait().map_err(|source| ProcessError::Wait { name: self.name, source })? {
            None => Ok(()),
            Some(status) => Err(ProcessError::Exited { name: self.name, how: describe(status) }),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        self.reap_by(Instant::now() + grace);
    }

    /// Send `sig` to the process and its group, unless it was already reaped.
    pub fn signal(&mut self, sig: i32) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of the group our unreaped child leads: while we have not reaped
            // it, its pid, and so the group id, is still ours.
            unsafe { libc::kill(-(self.child.id() as i32), sig) };
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
        self.signal(libc::SIGKILL);
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

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which tells
/// a process from a later one that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` has died and waits to be reaped (a dead supervisor whose parent has not
/// collected it yet is dead all the same).
pub fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()), Some("Z" | "X"))
}

/// Wait until `path` exists (a daemon's listening socket), or fail early if `proc` dies.
pub fn wait_for_path(path: &Path, proc: &mut ChildProc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(ProcessError::NoSocket { name: proc.name, path: path.to_path_buf(), timeout });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Place open fds at fixed numbers in the child `cmd` starts (`(source, target)` pairs), and
/// nowhere else. The one place hull does this, in two phases: every source is first copied
/// above all targets (close-on-exec, so the copies vanish at exec), then each copy goes onto its
/// target. A source that already sits on another pair's target is therefore never clobbered,
/// and `dup2` of a copy clears close-on-exec on the target, which `dup2(fd, fd)` would not.
/// The sources must stay open in the parent until `cmd` has been spawned.
pub fn inherit_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    if fds.is_empty() {
        return;
    }
    let floor = fds.iter().map(|(_, target)| *target).max().unwrap_or(2).max(2) + 1;
    // SAFETY: between fork and exec the closure only calls fcntl and dup2, which are
    // async-signal-safe, on fds that the parent keeps open until spawn returns; the only
    // memory it touches is the vector moved into it, allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut copies = [0; 16];
            if fds.len() > copies.len() {
                return Err(std::io::Error::other("too many inherited fds"));
            }
            for (copy, (source, _)) in copies.iter_mut().zip(&fds) {
                *copy = libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, floor);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (copy, (_, target)) in copies.iter().zip(&fds) {
                if libc::dup2(*copy, *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Start `cmd` in a session of its own: a detached process must not get the caller's
/// terminal signals, nor die with the caller's session.
pub fn new_session(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Two fds swapped into each other's places: a one-phase dup2 would clobber one of them.
    #[test]
    fn inherited_fds_may_sit_on_each_others_targets() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/dev/zero").unwrap();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("readlink /proc/self/fd/{fa} /proc/self/fd/{fb}")]);
        inherit_fds(&mut cmd, vec![(fa, fb), (fb, fa)]);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().collect::<Vec<_>>(), ["/dev/zero", "/dev/null"], "{text}");
    }

    /// A source already on its own target keeps it, open across exec.
    #[test]
    fn an_fd_on_its_own_target_survives_exec() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let fa = a.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("readlink /proc/self/fd/{fa}")]);
        inherit_fds(&mut cmd, vec![(fa, fa)]);
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/dev/null");
    }
}
