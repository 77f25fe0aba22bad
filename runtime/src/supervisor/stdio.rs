//! Relaying the supervisor's own stdin/stdout/stderr to the container's streams in the guest.
//!
//! Each stream is its own hybrid-vsock connection to the agent's stdio port, so bytes move
//! without framing or JSON. stdout/stderr are drained to EOF even when the local side stops
//! accepting them, so a closed terminal never blocks the container.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hull_protocol::{StreamHeader, StreamKind, STDIO_PORT};

use crate::vsock;

/// Output relays that are still running; [`Relays::finish`] waits for their EOFs.
pub struct Relays {
    done: Receiver<()>,
    pending: usize,
}

/// Connect the three streams of a container's init (or of one of its execs) and start
/// relaying them to/from this process's fds 0, 1 and 2.
pub fn attach(vsock_socket: &Path, container_id: &str, exec_id: Option<&str>) -> Result<Relays> {
    let connect = |kind: StreamKind| -> Result<UnixStream> {
        let mut conn = vsock::connect(vsock_socket, STDIO_PORT, Duration::from_secs(10))
            .with_context(|| format!("connecting the container's {}", kind.as_str()))?;
        conn.write_all(StreamHeader { container_id: container_id.into(), exec_id: exec_id.map(str::to_string), kind }.to_string().as_bytes())?;
        Ok(conn)
    };
    let stdin = connect(StreamKind::Stdin)?;
    let stdout = connect(StreamKind::Stdout)?;
    let stderr = connect(StreamKind::Stderr)?;

    let local_in = dup_std(io::stdin().as_fd())?;
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut conn = stdin;
        let _ = io::copy(&mut File::from(local_in), &mut conn);
        // Dropping the connection is the container's EOF on stdin.
    })?;

    let (tx, done) = mpsc::channel();
    for (conn, local) in [(stdout, dup_std(io::stdout().as_fd())?), (stderr, dup_std(io::stderr().as_fd())?)] {
        let tx = tx.clone();
        std::thread::Builder::new().name("output".into()).spawn(move || {
            drain(conn, File::from(local));
            let _ = tx.send(());
        })?;
    }
    Ok(Relays { done, pending: 2 })
}

impl Relays {
    /// Wait until both output streams reached EOF, or `timeout` passed.
    pub fn finish(mut self, timeout: Duration) {
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

/// Copy `conn` into `out` until EOF; if `out` fails, keep reading and discard.
fn drain(mut conn: UnixStream, mut out: File) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out_ok = true;
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out_ok && out.write_all(&buf[..n]).is_err() {
                    out_ok = false;
                }
            }
        }
    }
}

fn dup_std(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    Ok(fd.try_clone_to_owned()?)
}
