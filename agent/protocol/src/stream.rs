//! Stdio stream connections: one header line, then raw bytes.

use std::fmt;
use std::str::FromStr;

use crate::messages::validate_id;

/// Longest header line accepted, newline included.
pub const MAX_HEADER: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StreamKind {
    pub const ALL: [StreamKind; 3] = [StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// First line of a stdio connection: `<container-id>[:<exec-id>] <stream>\n` (`:` is not
/// in the id alphabet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub container_id: String,
    pub exec_id: Option<String>,
    pub kind: StreamKind,
}

impl fmt::Display for StreamHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exec_id {
            Some(exec) => writeln!(f, "{}:{} {}", self.container_id, exec, self.kind.as_str()),
            None => writeln!(f, "{} {}", self.container_id, self.kind.as_str()),
        }
    }
}

impl FromStr for StreamHeader {
    type Err = String;

    /// Parse a header line without its newline.
    fn from_str(line: &str) -> Result<Self, String> {
        let mut parts = line.split(' ');
        let (Some(id), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("malformed stream header {line:?}"));
        };
        let (id, exec_id) = match id.split_once(':') {
            Some((id, exec)) => {
                validate_id(exec)?;
                (id, Some(exec.to_string()))
            }
            None => (id, None),
        };
        validate_id(id)?;
        let kind = match kind {
            "stdin" => StreamKind::Stdin,
            "stdout" => StreamKind::Stdout,
            "stderr" => StreamKind::Stderr,
            other => return Err(format!("unknown stream {other:?}")),
        };
        Ok(StreamHeader { container_id: id.to_string(), exec_id, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = StreamHeader { container_id: "web".into(), exec_id: None, kind: StreamKind::Stderr };
        let line = h.to_string();
        assert_eq!(line, "web stderr\n");
        assert_eq!(line.trim_end().parse::<StreamHeader>().unwrap(), h);
        let h = StreamHeader { container_id: "web".into(), exec_id: Some("e1".into()), kind: StreamKind::Stdin };
        assert_eq!(h.to_string(), "web:e1 stdin\n");
        assert_eq!(h.to_string().trim_end().parse::<StreamHeader>().unwrap(), h);
    }

    #[test]
    fn bad_headers() {
        for bad in
            ["", "web", "web stdout extra", "../x stdout", "web tty", "web:../e stdout", "web: stdout", "a:b:c stdout"]
        {
            assert!(bad.parse::<StreamHeader>().is_err(), "{bad:?} accepted");
        }
    }
}
