//! The caller's side of `--console-socket`: receive the terminal master hull sends (as
//! conmon does), then talk to the container through it.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

pub struct ConsoleSocket {
    pub path: PathBuf,
    master: mpsc::Receiver<OwnedFd>,
}

impl ConsoleSocket {
    pub fn listen(path: &Path) -> ConsoleSocket {
        let listener = UnixListener::bind(path).unwrap();
        let (tx, master) = mpsc::channel();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut name = [0u8; 128];
            let mut iov = [IoSliceMut::new(&mut name)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
            for cmsg in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    // SAFETY: the kernel just gave us this fd.
                    let _ = tx.send(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                }
            }
        });
        ConsoleSocket { path: path.to_path_buf(), master }
    }

    /// The master, once hull sent it.
    pub fn master(&self) -> Terminal {
        Terminal {
            master: std::fs::File::from(
                self.master.recv_timeout(Duration::from_secs(60)).expect("no terminal was sent"),
            ),
        }
    }
}

pub struct Terminal {
    pub master: std::fs::File,
}

impl Terminal {
    /// Read until the output contains `needle` (or panic after a while); returns all of it.
    pub fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let fd = self.master.as_raw_fd();
        while !String::from_utf8_lossy(&seen).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "terminal never showed {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            );
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one pollfd we own, for 100 ms.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from a pointer that outlives the call.
        assert_eq!(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
    }
}
