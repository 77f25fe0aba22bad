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

use nix::pty::openpty;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("--console-socket needs a terminal, but process.terminal is false")]
    SocketWithoutTerminal,
    #[error("process.terminal is true: a detached container needs --console-socket to hand the terminal to")]
    TerminalWithoutSocket,
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: nix::Error },
    #[error("--console-socket {}: {what}: {source}", path.display())]
    Socket { path: std::path::PathBuf, what: &'static str, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
}

type Result<T> = std::result::Result<T, TerminalError>;

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> TerminalError {
    move |source| TerminalError::Sys { what, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TerminalError {
    move |source| TerminalError::Io { what, source }
}

/// Make a pty, send its master to `console_socket`, and return the slave (in raw mode).
pub fn send_pty_master(console_socket: &Path) -> Result<OwnedFd> {
    let pty = openpty(None, None).map_err(sys("allocating a terminal"))?;
    // Hooks and helpers we start later must not hold the terminal open.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(sys("setting close-on-exec"))?;
    }
    set_raw(pty.slave.as_fd())?;
    let socket_error = |what, source| TerminalError::Socket { path: console_socket.to_path_buf(), what, source };
    let conn = UnixStream::connect(console_socket).map_err(|e| socket_error("connecting", e))?;
    let name = nix::unistd::ttyname(&pty.slave).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| socket_error("sending the terminal", e.into()))?;
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
    let saved = tcgetattr(tty).map_err(sys("reading terminal attributes"))?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(tty, SetArg::TCSANOW, &raw).map_err(sys("setting the terminal raw"))?;
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
        let fd = fd.try_clone_to_owned().map_err(io("duplicating the terminal"))?;
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

/// The host ends of a process's streams: its terminal when `terminal` (a pty sent to the
/// console socket, or the caller's own terminal in raw mode), else this process's own stdio.
/// The [`Tty`] is the terminal whose size the guest's mirrors.
pub fn endpoints(terminal: bool, console: &Console) -> Result<([crate::stdio::Endpoint; 3], Option<Tty>)> {
    use crate::stdio::Endpoint;
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(io("duplicating a standard stream"));
    let own = || -> Result<[Endpoint; 3]> {
        Ok([
            Endpoint::Fd(dup(std::io::stdin().as_fd())?),
            Endpoint::Fd(dup(std::io::stdout().as_fd())?),
            Endpoint::Fd(dup(std::io::stderr().as_fd())?),
        ])
    };
    Ok(match (terminal, console) {
        (false, Console::Socket(_)) => return Err(TerminalError::SocketWithoutTerminal),
        (false, _) => (own()?, None),
        (true, Console::None) => return Err(TerminalError::TerminalWithoutSocket),
        (true, Console::Socket(path)) => {
            let slave = send_pty_master(path)?;
            make_controlling(slave.as_fd());
            let copy = || slave.try_clone().map_err(io("duplicating the terminal"));
            let ends = [Endpoint::Fd(copy()?), Endpoint::Fd(copy()?), Endpoint::Null];
            (ends, Some(Tty { fd: slave, _raw: None }))
        }
        (true, Console::Own) => {
            let raw = RawMode::enter(std::io::stdin().as_fd())?;
            let ends = [
                Endpoint::Fd(dup(std::io::stdin().as_fd())?),
                Endpoint::Fd(dup(std::io::stdout().as_fd())?),
                Endpoint::Null,
            ];
            (ends, Some(Tty { fd: dup(std::io::stdin().as_fd())?, _raw: raw }))
        }
    })
}
