//! The host side of container terminals.
//!
//! The real terminal is a pty in the guest; the host only carries bytes and window sizes.
//! A caller that passes `--console-socket` (podman's conmon) gets the master of a host pty,
//! sent the way runc sends it, and hull relays the slave end, in raw mode so the host adds no
//! line discipline of its own. Window size changes reach hull as SIGWINCH: the supervisor, a
//! session leader, makes that slave its controlling terminal.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};
use nix::pty::openpty;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Make a pty, send its master to `console_socket`, and return the slave (in raw mode).
pub fn send_pty_master(console_socket: &Path) -> Result<OwnedFd> {
    let pty = openpty(None, None).context("allocating a terminal")?;
    // Hooks and helpers we start later must not hold the terminal open.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    set_raw(pty.slave.as_fd())?;
    let conn = UnixStream::connect(console_socket)
        .with_context(|| format!("--console-socket {}: connecting", console_socket.display()))?;
    let name = nix::unistd::ttyname(&pty.slave).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(conn.as_raw_fd(), &[IoSlice::new(name.as_bytes())], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .with_context(|| format!("--console-socket {}: sending the terminal", console_socket.display()))?;
    Ok(pty.slave)
}

/// Make `tty` the controlling terminal of this process's session, so its size changes
/// arrive as SIGWINCH. Only a session leader without one can; failing is not fatal.
pub fn make_controlling(tty: BorrowedFd<'_>) {
    // SAFETY: TIOCSCTTY takes an int argument and changes only this process's session.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        tracing::debug!("TIOCSCTTY: {}", std::io::Error::last_os_error());
    }
}

/// `(columns, rows)` of a terminal.
pub fn size(tty: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which outlives the call.
    let ok = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

fn set_raw(tty: BorrowedFd<'_>) -> Result<Termios> {
    let saved = tcgetattr(tty).context("reading terminal attributes")?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(tty, SetArg::TCSANOW, &raw).context("setting the terminal raw")?;
    Ok(saved)
}

/// The caller's own terminal in raw mode (`run`/`exec -t` in the foreground), restored on drop.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// `None` when `fd` is not a terminal.
    pub fn enter(fd: BorrowedFd<'_>) -> Result<Option<RawMode>> {
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return Ok(None);
        }
        let fd = fd.try_clone_to_owned()?;
        let saved = set_raw(fd.as_fd())?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Where a process's terminal, if it has one, is shown.
#[derive(Debug, Clone)]
pub enum Console {
    /// A detached container without `--console-socket`: a terminal is an error.
    None,
    /// Send a pty master to this socket (`--console-socket`).
    Socket(std::path::PathBuf),
    /// This process's own stdio (`run` and `exec -t` in the foreground).
    Own,
}

/// The host terminal whose size the guest's mirrors.
pub struct Tty {
    fd: OwnedFd,
    _raw: Option<RawMode>,
}

impl Tty {
    pub fn size(&self) -> Option<(u16, u16)> {
        size(self.fd.as_fd())
    }

    /// Another handle to the terminal, for a thread that reads its size.
    pub fn watcher(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// Connect a process's streams: to its terminal when `terminal`, else to this process's stdio.
pub fn attach(
    vsock_socket: &Path,
    container_id: &str,
    exec_id: Option<&str>,
    terminal: bool,
    console: &Console,
) -> Result<(crate::stdio::Relays, Option<Tty>)> {
    use crate::stdio::{self, Endpoint};
    let own = || std::io::stdin().as_fd().try_clone_to_owned();
    let (ends, tty) = match (terminal, console) {
        (false, Console::Socket(_)) => anyhow::bail!("--console-socket needs a terminal, but process.terminal is false"),
        (false, _) => return Ok((stdio::attach_own(vsock_socket, container_id, exec_id)?, None)),
        (true, Console::None) => {
            anyhow::bail!("process.terminal is true: a detached container needs --console-socket to hand the terminal to")
        }
        (true, Console::Socket(path)) => {
            let slave = send_pty_master(path)?;
            make_controlling(slave.as_fd());
            let ends = [Endpoint::Fd(slave.try_clone()?), Endpoint::Fd(slave.try_clone()?), Endpoint::Null];
            (ends, Tty { fd: slave, _raw: None })
        }
        (true, Console::Own) => {
            let raw = RawMode::enter(std::io::stdin().as_fd())?;
            let ends = [Endpoint::Fd(own()?), Endpoint::Fd(std::io::stdout().as_fd().try_clone_to_owned()?), Endpoint::Null];
            (ends, Tty { fd: own()?, _raw: raw })
        }
    };
    Ok((stdio::attach(vsock_socket, container_id, exec_id, ends)?, Some(tty)))
}
