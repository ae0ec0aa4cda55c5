//! Length-prefixed frame codec: a 4-byte big-endian length, then that many body bytes.
//!
//! The codec works over any `Read`/`Write` and does no I/O of its own choosing: it is the
//! same for plain TCP, TLS, and in-memory buffers. The length is checked against the
//! caller's maximum before anything is allocated, so a hostile peer cannot make us
//! reserve a gigabyte by sending four bytes.

use std::fmt;
use std::io::{self, Read, Write};

/// Largest frame a client may send or receive (1 MiB): room for a 64 KiB message or a
/// file chunk in base64 plus its JSON envelope.
pub const MAX_CLIENT_FRAME: usize = 1024 * 1024;

/// Largest frame on a server-to-server link (a little more, for forwarding headers).
pub const MAX_PEER_FRAME: usize = 2 * 1024 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The announced length exceeds the maximum; nothing was allocated or consumed
    /// beyond the 4-byte header.
    TooLarge {
        /// The length the peer announced.
        len: usize,
        /// The maximum the reader accepts.
        max: usize,
    },
    /// The stream ended inside a frame (after some but not all of its bytes).
    Truncated,
    /// An I/O error from the underlying stream.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            FrameError::Truncated => write!(f, "stream ended in the middle of a frame"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Reads one frame body.
///
/// Returns `Ok(None)` on a clean end of stream (no byte of a new frame was read), and
/// `Err(FrameError::Truncated)` when the stream ends inside a frame.
pub fn read_frame(reader: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Appends one frame (header and body) to `out`; used to batch frames before a write.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("frame body larger than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Writes one frame. The caller flushes (so that several frames can share a flush).
pub fn write_frame(writer: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if u32::try_from(body.len()).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame body too large",
        ));
    }
    // One write: over TLS, two writes would be two records and two TCP segments, and
    // the second can wait on a delayed ACK.
    let mut frame = Vec::with_capacity(4 + body.len());
    encode_frame(body, &mut frame);
    writer.write_all(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clean_end() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        encode_frame(b"", &mut buf);
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let buf = u32::MAX.to_be_bytes();
        let err = read_frame(&mut &buf[..], 1024).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize));
    }

    #[test]
    fn end_inside_a_frame_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        buf.truncate(6);
        assert!(matches!(
            read_frame(&mut &buf[..], 100),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..], 100),
            Err(FrameError::Truncated)
        ));
    }
}
