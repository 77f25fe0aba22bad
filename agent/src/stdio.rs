//! Stdio streams: the host opens one vsock connection per stream, names it in a header line,
//! and then bytes flow between it and the container's pipe.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use hull_protocol::stream::MAX_HEADER;
use hull_protocol::{StreamHeader, StreamKind, STDIO_PORT};

use crate::containers::Registry;
use crate::log;
use crate::vsock::{Listener, Stream};

pub fn serve(registry: Arc<Registry>) -> io::Result<()> {
    let listener = Listener::bind(STDIO_PORT)?;
    std::thread::Builder::new().name("stdio-accept".into()).spawn(move || loop {
        match listener.accept() {
            Ok(conn) => {
                let registry = registry.clone();
                let _ = std::thread::Builder::new().name("stdio".into()).spawn(move || {
                    if let Err(e) = relay(&registry, conn) {
                        log::error(&format!("stdio stream: {e}"));
                    }
                });
            }
            Err(e) => {
                log::error(&format!("stdio accept: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })?;
    Ok(())
}

fn relay(registry: &Registry, mut conn: Stream) -> io::Result<()> {
    let line = read_header(&mut conn)?;
    let header: StreamHeader = line.parse().map_err(io::Error::other)?;
    let Some(pipe) = registry.take_stream(&header.container_id, header.exec_id.as_deref(), header.kind) else {
        return Err(io::Error::other(format!("no pending {} for {:?}", header.kind.as_str(), header.container_id)));
    };
    let mut pipe = File::from(pipe);
    match header.kind {
        StreamKind::Stdin => {
            // EOF from the host closes the container's stdin (the pipe drops here).
            let _ = io::copy(&mut conn, &mut pipe);
        }
        StreamKind::Stdout | StreamKind::Stderr => {
            let _ = io::copy(&mut pipe, &mut conn);
            conn.shutdown_write();
        }
    }
    Ok(())
}

/// Read the header line one byte at a time, so no stream payload is consumed with it.
fn read_header(conn: &mut Stream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if conn.read(&mut byte)? == 0 {
            return Err(io::Error::other("stream closed before its header"));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() >= MAX_HEADER {
            return Err(io::Error::other("stream header too long"));
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::other("stream header is not UTF-8"))
}
