//! Terminals. libcontainer creates a process's pty inside the container and sends the master
//! to a console socket; the agent keeps the master, relays the host's streams through it, and
//! resizes it on request.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
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

    /// The master libcontainer sent. Call after the create helper finished: the message is
    /// queued on the socket by then, so waiting would only mean it never came.
    pub fn receive(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept().map_err(|e| anyhow!("the container's terminal never arrived: {e}"))?;
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
        Ok(received.remove(0))
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
