//! Binary frames: a frame whose message body follows its JSON as raw bytes.
//!
//! `send`, `group_send`, `message` and `deliver` carry an opaque body (sealed end to
//! end). In a JSON frame it is base64 text, which makes it a third longer on every link
//! and costs an encoding, a decoding and a scan of every byte by each JSON reader and
//! writer on the way. A binary frame carries the same JSON without its `body` field and
//! the body after it:
//!
//! ```text
//! 0x00 | JSON length (u32, big-endian) | JSON without "body" | body bytes (to the frame's end)
//! ```
//!
//! A JSON frame begins with `{`, so the first byte tells the two apart. Every reader
//! accepts both; a writer sends a binary frame only to a reader that said it reads them
//! (`binary_bodies` in the hellos) and only for a body it holds raw, so that no body is
//! ever encoded or decoded on the way just to change its form.

/// The first byte of a binary frame.
pub const BINARY_FRAME: u8 = 0;

/// Bytes before a binary frame's JSON: the marker and the JSON's length.
const HEADER: usize = 5;

/// A frame split into its JSON and, for a binary frame, its body.
pub(crate) struct Split<'a> {
    /// The frame's JSON (without `body` in a binary frame).
    pub json: &'a [u8],
    /// A binary frame's body.
    pub body: Option<&'a [u8]>,
}

/// Splits a frame; `None` for a binary frame whose announced JSON length overruns it.
pub(crate) fn split(frame: &[u8]) -> Option<Split<'_>> {
    if frame.first() != Some(&BINARY_FRAME) {
        return Some(Split {
            json: frame,
            body: None,
        });
    }
    let len = u32::from_be_bytes(frame.get(1..HEADER)?.try_into().ok()?) as usize;
    let json = frame.get(HEADER..HEADER.checked_add(len)?)?;
    Some(Split {
        json,
        body: Some(&frame[HEADER + len..]),
    })
}

/// Writes a binary frame: `json` appends the JSON without the body (opening and
/// closing braces included), then the body follows.
pub(crate) fn write(capacity: usize, json: impl FnOnce(&mut Vec<u8>), body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + capacity + body.len());
    out.push(BINARY_FRAME);
    out.extend_from_slice(&[0; 4]);
    json(&mut out);
    let len = u32::try_from(out.len() - HEADER).expect("a frame's JSON is under 4 GiB");
    out[1..HEADER].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The error for a binary frame that cannot be read: a malformed header, or a kind or
/// shape that has no binary form.
pub(crate) fn unreadable() -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(
        "a binary frame must be a send, group_send, message or deliver with all of its \
         fields, and without a body in its JSON",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_frame_splits_back() {
        let frame = write(8, |out| out.extend_from_slice(b"{\"a\":1}"), b"\0raw{");
        let split = split(&frame).unwrap();
        assert_eq!(split.json, b"{\"a\":1}");
        assert_eq!(split.body, Some(&b"\0raw{"[..]));
        let split = super::split(b"{\"b\":2}").unwrap();
        assert_eq!(split.json, b"{\"b\":2}");
        assert_eq!(split.body, None);
    }

    #[test]
    fn a_header_that_overruns_the_frame_is_refused() {
        assert!(split(&[BINARY_FRAME]).is_none());
        assert!(split(&[BINARY_FRAME, 0, 0, 0]).is_none());
        assert!(split(&[BINARY_FRAME, 0, 0, 0, 3, b'{', b'}']).is_none());
        assert!(split(&[BINARY_FRAME, 0xff, 0xff, 0xff, 0xff]).is_none());
        let empty = split(&[BINARY_FRAME, 0, 0, 0, 2, b'{', b'}']).unwrap();
        assert_eq!(empty.body, Some(&[][..]));
    }
}
