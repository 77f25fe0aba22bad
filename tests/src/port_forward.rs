//! The kubelet's side of a CRI port-forward, as `kubectl port-forward` reaches it: a
//! WebSocket to the URL containerd's streaming server returned, speaking the binary
//! `v4.channel.k8s.io` protocol (every message starts with its channel: 0 carries the port's
//! data, 1 its errors; the server's first message on each is the port, little-endian).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What came back through one forwarded connection.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub data: Vec<u8>,
    pub error: Vec<u8>,
}

/// Open a port-forward stream for `port` at `url` (`http://host:port/path`), send `request`
/// on the data channel and collect both channels until the server closes the stream.
pub fn exchange(url: &str, port: u16, request: &[u8]) -> std::io::Result<Forwarded> {
    let rest = url.strip_prefix("http://").ok_or_else(|| std::io::Error::other(format!("not an http URL: {url}")))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut tcp = TcpStream::connect(authority)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    write!(
        tcp,
        "GET {path}{sep}port={port} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: aHVsbC1wb3J0LWZvcndhcmQ=\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )?;
    let head = read_head(&mut tcp).map_err(|e| std::io::Error::new(e.kind(), format!("awaiting the upgrade: {e}")))?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!("no WebSocket upgrade: {head}")));
    }
    let mut out = Forwarded::default();
    // The server announces the port on both channels before any data.
    let mut announced = [false; 2];
    let mut sent = false;
    loop {
        let frame = read_frame(&mut tcp).map_err(|e| {
            let so_far = format!("announced {announced:?}, sent {sent}, {} data bytes", out.data.len());
            std::io::Error::new(e.kind(), format!("reading a message ({so_far}): {e}"))
        })?;
        let Some((opcode, payload)) = frame else { break };
        match opcode {
            0x8 => break,
            0x9 => write_frame(&mut tcp, 0xA, &payload)?,
            0x1 | 0x2 if !payload.is_empty() => {
                let channel = payload[0] as usize;
                let body = &payload[1..];
                match channel {
                    0 | 1 if !announced[channel] => {
                        announced[channel] = true;
                        if body != port.to_le_bytes() {
                            return Err(std::io::Error::other(format!("channel {channel} announced {body:?}")));
                        }
                    }
                    0 => out.data.extend_from_slice(body),
                    1 => out.error.extend_from_slice(body),
                    _ => return Err(std::io::Error::other(format!("message on unknown channel {channel}"))),
                }
                if announced == [true, true] && !sent {
                    sent = true;
                    let mut message = vec![0u8];
                    message.extend_from_slice(request);
                    write_frame(&mut tcp, 0x2, &message)?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One server frame (unmasked, unfragmented, as the streaming server sends them), or `None`
/// at the end of the connection.
fn read_frame(tcp: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 2];
    match tcp.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    // The streaming server sends whole messages; a fragment would be misread below.
    if head[0] & 0x80 == 0 || head[0] & 0x0f == 0 {
        return Err(std::io::Error::other(format!("fragmented WebSocket message (first byte {:#x})", head[0])));
    }
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload)?;
    Ok(Some((head[0] & 0x0f, payload)))
}

/// A client frame: final, masked (RFC 6455 requires it of clients).
fn write_frame(tcp: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mask = [0x68, 0x75, 0x6c, 0x6c];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame)
}
