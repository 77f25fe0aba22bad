//! Relaying a container process's stdin/stdout/stderr between host endpoints and its streams
//! in the guest.
//!
//! Each stream is its own hybrid-vsock connection to the agent's stdio port, so bytes move
//! without framing or JSON. stdout/stderr are drained to EOF even when the host side stops
//! accepting them, so a closed terminal or FIFO never blocks the container.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hull_protocol::{StreamHeader, StreamKind, STDIO_PORT};

use crate::vsock;

/// How long giving a process EOF on stdin waits for the relay to forward what the host's end
/// still holds (see [`StdinCloser::close`]).
const STDIN_DRAIN: Duration = Duration::from_millis(500);

/// Where one stream goes on the host.
pub enum Endpoint {
    /// An open file descriptor (the CLI's own stdio).
    Fd(OwnedFd),
    /// A FIFO containerd created. Opened by the relay thread, since opening a FIFO blocks
    /// until its other end is opened.
    Fifo(PathBuf),
    /// Nothing: stdin reads as empty, output is discarded.
    Null,
}

impl Endpoint {
    /// A FIFO path as containerd sends it; empty means none.
    pub fn fifo(path: &str) -> Endpoint {
        if path.is_empty() {
            Endpoint::Null
        } else {
            Endpoint::Fifo(path.into())
        }
    }

    fn open(self, write: bool) -> io::Result<Option<File>> {
        match self {
            Endpoint::Fd(fd) => Ok(Some(File::from(fd))),
            Endpoint::Fifo(path) => OpenOptions::new().read(!write).write(write).open(path).map(Some),
            Endpoint::Null => Ok(None),
        }
    }
}

/// A stream of a container process that could not be connected.
#[derive(Debug, thiserror::Error)]
#[error("connecting the container's {stream}: {source}")]
pub struct StdioError {
    pub stream: &'static str,
    pub source: io::Error,
}

type Result<T> = std::result::Result<T, StdioError>;

/// Output relays that are still running; [`Relays::finish`] waits for their EOFs.
pub struct Relays {
    done: Receiver<()>,
    pending: usize,
    /// The guest side of stdin, kept to close it on request (`CloseIO`).
    stdin: Option<StdinCloser>,
}

/// What gives a process EOF on stdin on request (containerd's `CloseIO`).
pub struct StdinCloser {
    conn: UnixStream,
    /// Signalled when the relay has forwarded everything up to the host end's own EOF.
    relayed: Receiver<()>,
}

impl StdinCloser {
    /// EOF for the process, after the bytes the host's end already holds. A FIFO's writer
    /// asks for this as its input ends and closes the FIFO right after (ctr does), with its
    /// last bytes still in the FIFO: cutting the connection at once lost them. So the relay
    /// gets [`STDIN_DRAIN`] to forward them and end on its own; only a writer that keeps the
    /// FIFO open past that is cut off.
    pub fn close(self) {
        let _ = self.relayed.recv_timeout(STDIN_DRAIN);
        let _ = self.conn.shutdown(Shutdown::Write);
    }
}

/// Connect the three streams of a container's init (or of one of its execs) to the guest.
fn connect(vsock_socket: &Path, container_id: &str, exec_id: Option<&str>, kind: StreamKind) -> Result<UnixStream> {
    let failed = |source| StdioError { stream: kind.as_str(), source };
    let mut conn = vsock::connect(vsock_socket, STDIO_PORT, Duration::from_secs(10)).map_err(failed)?;
    let header = StreamHeader { container_id: container_id.into(), exec_id: exec_id.map(str::to_string), kind };
    conn.write_all(header.to_string().as_bytes()).map_err(failed)?;
    Ok(conn)
}

/// Start relaying `[stdin, stdout, stderr]`.
pub fn attach(vsock_socket: &Path, container_id: &str, exec_id: Option<&str>, ends: [Endpoint; 3]) -> Result<Relays> {
    let stdin = connect(vsock_socket, container_id, exec_id, StreamKind::Stdin)?;
    let stdout = connect(vsock_socket, container_id, exec_id, StreamKind::Stdout)?;
    let stderr = connect(vsock_socket, container_id, exec_id, StreamKind::Stderr)?;
    let [local_in, local_out, local_err] = ends;

    let relay_error = |source| StdioError { stream: "relays", source };
    let stdin_handle = stdin.try_clone().map_err(relay_error)?;
    let (relayed_tx, relayed) = mpsc::channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut conn = stdin;
            if let Ok(Some(mut local)) = local_in.open(false) {
                let _ = io::copy(&mut local, &mut conn);
            }
            // EOF from the host is the container's EOF on stdin.
            let _ = conn.shutdown(Shutdown::Write);
            let _ = relayed_tx.send(());
        })
        .map_err(relay_error)?;

    let (tx, done) = mpsc::channel();
    for (conn, local) in [(stdout, local_out), (stderr, local_err)] {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let out = local.open(true).ok().flatten();
                drain(conn, out);
                let _ = tx.send(());
            })
            .map_err(relay_error)?;
    }
    Ok(Relays { done, pending: 2, stdin: Some(StdinCloser { conn: stdin_handle, relayed }) })
}

impl Relays {
    /// The means to give the process EOF on stdin, once: [`StdinCloser::close`] may wait, so
    /// callers take it out of any lock first.
    pub fn take_stdin(&mut self) -> Option<StdinCloser> {
        self.stdin.take()
    }

    /// Wait until both output streams reached EOF, or `timeout` passed.
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(_) => self.pending -= 1,
                Err(_) => {
                    tracing::warn!(pending = self.pending, "container output did not reach EOF in time");
                    return;
                }
            }
        }
    }
}

/// Copy `conn` into `out` until EOF; without `out`, or once it fails, keep reading and discard.
fn drain(mut conn: UnixStream, mut out: Option<File>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.as_mut().is_some_and(|o| o.write_all(&buf[..n]).is_err()) {
                    out = None;
                }
            }
        }
    }
}
