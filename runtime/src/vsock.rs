//! Host side of "hybrid" vsock: a unix socket on which the host asks for a guest port with
//! `CONNECT <port>\n` and gets `OK <host-port>\n` back (Firecracker's protocol, also spoken by
//! vhost-device-vsock).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest acknowledgement accepted; the backend is trusted less than it looks.
const MAX_ACK: usize = 64;

pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut ack = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("guest port {port} refused the connection"),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        ack.push(byte[0]);
        if ack.len() > MAX_ACK {
            return Err(io::Error::other("vsock backend sent an oversized acknowledgement"));
        }
    }
    if !ack.starts_with(b"OK ") {
        return Err(io::Error::other(format!("vsock backend answered {:?}", String::from_utf8_lossy(&ack))));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}
