//! Terminals. libcontainer creates a process's pty inside the container and sends the master
//! to a console socket; the agent keeps the master, relays the host's streams through it, and
//! resizes it on request.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Short paths: a unix socket path must fit in 108 bytes, and ids may be 128 long each.
const SOCKET_DIR: &str = "/run/hull/tty";

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind() -> Result<ConsoleSocket> {
        std::fs::create_dir_all(SOCKET_DIR)?;
        let path = Path::new(SOCKET_DIR).join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master libcontainer sends, taken as soon as it comes, while the create helper runs
    /// (`helper_done` turns true once it has exited: whatever it sent is queued by then, so
    /// nothing more can come). With `size` (the process's `consoleSize`, as (columns, rows))
    /// the terminal gets it at once: an exec'd process starts right after its terminal is
    /// sent, and a size set after the helper exits can come after the process read its
    /// terminal's (0x0) size. runc sets it before the process starts; libcontainer 0.7 does
    /// not set it at all.
    pub fn receive(&self, helper_done: &AtomicBool, size: Option<(u16, u16)>) -> Result<OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.set_nonblocking(true)?;
        let conn = loop {
            // Read before trying: a false seen here means the try below still sees all it sent.
            let done = helper_done.load(Ordering::Acquire);
            match self.listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !done => {
                    let mut fds = [nix::poll::PollFd::new(self.listener.as_fd(), nix::poll::PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16));
                }
                Err(e) => bail!("the container's terminal never arrived: {e}"),
            }
        };
        conn.set_nonblocking(false)?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: the kernel just installed these fds in our table for us.
                received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if received.len() != 1 {
            bail!("expected one terminal fd on the console socket, got {}", received.len());
        }
        let master = received.remove(0);
        if let Some((width, height)) = size.filter(|(w, h)| *w > 0 && *h > 0) {
            resize(&master, width, height)?;
        }
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn resize(master: &OwnedFd, width: u16, height: u16) -> Result<()> {
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error()).context("resizing the terminal");
    }
    Ok(())
}
