//! Length-prefixed JSON frames.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame body either side accepts. A container spec is the largest message and is far
/// smaller; anything bigger is a bug or an attack.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed")]
    Closed,
}

/// Serialise `msg` into a complete frame (header and body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parse a frame body. Kept separate from I/O so fuzzers can drive it directly.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Validate a frame header, returning the body length.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Read one frame. A clean end of stream before the header is [`FrameError::Closed`].
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = body_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

/// Write one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Request, RequestBody};

    #[test]
    fn round_trip() {
        let req = Request { id: 7, body: RequestBody::Ping };
        let bytes = encode(&req).unwrap();
        let back: Request = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back.id, 7);
        assert!(matches!(back.body, RequestBody::Ping));
    }

    #[test]
    fn oversized_header_is_refused_before_allocation() {
        let bytes = (u32::MAX).to_be_bytes();
        let err = read_frame::<Request>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    }

    #[test]
    fn truncated_body_is_an_error_not_a_panic() {
        let mut bytes = encode(&Request { id: 1, body: RequestBody::Ping }).unwrap();
        bytes.truncate(bytes.len() - 2);
        assert!(read_frame::<Request>(&mut &bytes[..]).is_err());
    }

    #[test]
    fn eof_before_header_is_closed() {
        let err = read_frame::<Request>(&mut &[][..]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn garbage_body_is_a_json_error() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{{{");
        assert!(matches!(read_frame::<Request>(&mut &bytes[..]), Err(FrameError::Json(_))));
    }
}
