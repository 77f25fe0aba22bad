//! Port forwarding into the sandbox (CRI `PortForward`): for each TCP connection that
//! reaches the pod's loopback on the host, the host opens a connection to
//! [`FORWARD_PORT`](crate::FORWARD_PORT) and sends one [`ForwardRequest`] line; the agent
//! connects to that port on the loopback of the sandbox's network namespace and answers with
//! one [`ForwardReply`] line. After an `ok`, raw bytes flow both ways.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// Longest line either side accepts, newline included.
pub const MAX_LINE: usize = 160;

/// `tcp <port>\n`: connect to `<port>` on the sandbox's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardRequest {
    pub port: u16,
}

impl fmt::Display for ForwardRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tcp {}", self.port)
    }
}

impl FromStr for ForwardRequest {
    type Err = String;

    /// Parse a request line without its newline.
    fn from_str(line: &str) -> Result<Self, String> {
        let port = line.strip_prefix("tcp ").ok_or_else(|| format!("malformed forward request {line:?}"))?;
        // `u16::from_str` takes a leading `+`; the wire form is digits only.
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("malformed port in forward request {line:?}"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("port out of range in forward request {line:?}")),
            Ok(port) => Ok(ForwardRequest { port }),
        }
    }
}

/// The agent's answer: `ok\n`, or `refused <why>\n` (printable ASCII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardReply {
    Connected,
    Refused(String),
}

impl ForwardReply {
    /// A refusal whose reason fits on the wire: printable ASCII, cut to fit the line.
    pub fn refused(why: &str) -> ForwardReply {
        let clean: String = why.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
        ForwardReply::Refused(clean.chars().take(MAX_LINE - "refused \n".len()).collect())
    }
}

impl fmt::Display for ForwardReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardReply::Connected => writeln!(f, "ok"),
            ForwardReply::Refused(why) => writeln!(f, "refused {why}"),
        }
    }
}

impl FromStr for ForwardReply {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        if line == "ok" {
            return Ok(ForwardReply::Connected);
        }
        match line.strip_prefix("refused ") {
            Some(why) if why.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                Ok(ForwardReply::Refused(why.into()))
            }
            _ => Err(format!("malformed forward reply {:?}", line.chars().take(40).collect::<String>())),
        }
    }
}

/// Read one line of at most [`MAX_LINE`] bytes, a byte at a time so that nothing after the
/// newline is consumed. Returns it without the newline.
pub fn read_line(r: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a full line"));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let r = ForwardRequest { port: 8080 };
        assert_eq!(r.to_string(), "tcp 8080\n");
        assert_eq!("tcp 8080".parse::<ForwardRequest>(), Ok(r));
        assert_eq!("tcp 65535".parse::<ForwardRequest>().unwrap().port, 65535);
        for bad in ["", "tcp", "tcp ", "tcp 0", "tcp 65536", "tcp +80", "tcp -1", "tcp 80 ", "udp 80", "tcp 8a"] {
            assert!(bad.parse::<ForwardRequest>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn replies_round_trip_and_refusals_stay_printable_and_short() {
        assert_eq!("ok".parse::<ForwardReply>(), Ok(ForwardReply::Connected));
        let r = ForwardReply::refused("connection refused\n\x1b[2J");
        assert_eq!(r, ForwardReply::Refused("connection refused??[2J".into()));
        assert_eq!(r.to_string().trim_end().parse::<ForwardReply>(), Ok(r));
        let long = ForwardReply::refused(&"x".repeat(1000));
        let wire = long.to_string();
        assert_eq!(wire.len(), MAX_LINE, "the longest refusal fills the line");
        assert_eq!(read_line(&mut wire.as_bytes()).unwrap().parse::<ForwardReply>(), Ok(long));
        for bad in ["", "OK", "refused", "refused \x07", "okay"] {
            assert!(bad.parse::<ForwardReply>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_line_is_bounded_and_stops_at_its_newline() {
        let mut input: &[u8] = b"tcp 80\nrest";
        assert_eq!(read_line(&mut input).unwrap(), "tcp 80");
        assert_eq!(input, b"rest");
        let long = vec![b'a'; MAX_LINE + 10];
        assert_eq!(read_line(&mut long.as_slice()).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read_line(&mut &b"no newline"[..]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
