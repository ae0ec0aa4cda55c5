//! Files: each file gets its own key and random id, and is sealed in chunks whose
//! associated data binds the file id, the chunk's index and whether it is the last one.
//!
//! A receiver opens chunks in order 0, 1, 2, … and treats the file as complete only when
//! a chunk opens with `last = true`; then reordered chunks, chunks from another file, and
//! a transfer cut short (or extended past its end) are all detected.
//!
//! A sealed chunk travels as the plaintext of an ordinary message, in a binary framing
//! of its own ([`chunk_payload`]) rather than as base64 inside a JSON payload: base64
//! made every chunk a third longer at every later step (the message's own seal, its
//! base64 on the wire, TLS, each relay) and cost an encoding and a decoding of its own.

use super::aead::{open, seal};
use super::keys::SymmetricKey;
use super::wire::{put_short_str, Reader, Transcript};
use super::E2eError;
use crate::ids::random_hex;

/// Plaintext bytes per chunk (every chunk but the last is this long): 65,472.
///
/// Sealing adds 28 bytes (12-byte nonce, 16-byte tag) and [`chunk_payload`] at most
/// 267 more (a marker and kind byte, the file id, a u64 index, a flag); the message
/// envelope around it adds at most 95, so a chunk's message body stays under the
/// server's `MAX_BODY_BYTES` (68 KiB).
pub const FILE_CHUNK_BYTES: usize = 64 * 1024 - 64;

/// The first byte of a binary message payload. A JSON payload starts with `{`.
pub const BINARY_PAYLOAD: u8 = 0;
/// The kind byte of a file chunk in a binary payload.
const KIND_FILE_CHUNK: u8 = 1;

/// A sealed chunk as a message payload carries it, borrowed from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPayload<'a> {
    /// The file's id.
    pub file_id: &'a str,
    /// The chunk's position, from 0.
    pub index: u64,
    /// Whether it is the file's last chunk.
    pub last: bool,
    /// [`seal_chunk`]'s output.
    pub sealed: &'a [u8],
}

/// Frames a sealed chunk as a message payload:
///
/// ```text
/// 0x00 0x01 len(file_id):u8 file_id index:u64be last:u8 sealed
/// ```
///
/// [`E2eError::Invalid`] only if the file id is over 255 bytes.
pub fn chunk_payload(
    file_id: &str,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let mut out = Vec::with_capacity(2 + 1 + file_id.len() + 8 + 1 + sealed.len());
    out.extend_from_slice(&[BINARY_PAYLOAD, KIND_FILE_CHUNK]);
    put_short_str(&mut out, "file id", file_id)?;
    out.extend_from_slice(&index.to_be_bytes());
    out.push(u8::from(last));
    out.extend_from_slice(sealed);
    Ok(out)
}

impl<'a> ChunkPayload<'a> {
    /// Parses what [`chunk_payload`] wrote; [`E2eError::Malformed`] for anything else.
    pub fn parse(payload: &'a [u8]) -> Result<ChunkPayload<'a>, E2eError> {
        let mut reader = Reader::new(payload);
        if reader.u8()? != BINARY_PAYLOAD || reader.u8()? != KIND_FILE_CHUNK {
            return Err(E2eError::Malformed);
        }
        let file_id = reader.short_str()?;
        let index = reader.u64()?;
        let last = match reader.u8()? {
            0 => false,
            1 => true,
            _ => return Err(E2eError::Malformed),
        };
        Ok(ChunkPayload {
            file_id,
            index,
            last,
            sealed: reader.rest(),
        })
    }
}

const CHUNK_DOMAIN: &str = "fastchat-e2e/file-chunk/1";
/// Random bytes in a file id (written as twice as many hex digits).
const FILE_ID_BYTES: usize = 16;

/// The key and id of one file. The sender puts both inside an end-to-end encrypted
/// message (see [`SymmetricKey::as_bytes`]); the chunks travel separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    /// A key used for this file only.
    pub key: SymmetricKey,
    /// Random hex naming the file.
    pub file_id: String,
}

impl FileKey {
    /// A fresh key and id.
    pub fn generate() -> FileKey {
        FileKey {
            key: SymmetricKey::generate(),
            file_id: random_hex(FILE_ID_BYTES),
        }
    }
}

fn chunk_ad(file_id: &str, index: u64, last: bool) -> Vec<u8> {
    let mut transcript = Transcript::new(CHUNK_DOMAIN);
    transcript
        .field(file_id.as_bytes())
        .number(index)
        .number(u64::from(last));
    transcript.into_bytes()
}

/// Seals chunk number `index` (from 0) of the file; `last` is true for the final chunk
/// only (a file of zero bytes is one empty last chunk). `chunk` should be
/// [`FILE_CHUNK_BYTES`] long except for the last.
pub fn seal_chunk(
    key: &SymmetricKey,
    file_id: &str,
    index: u64,
    last: bool,
    chunk: &[u8],
) -> Vec<u8> {
    seal(key, &chunk_ad(file_id, index, last), chunk)
}

/// Opens a chunk sealed by [`seal_chunk`] with the same file id, index and last flag;
/// [`E2eError::Undecryptable`] otherwise.
pub fn open_chunk(
    key: &SymmetricKey,
    file_id: &str,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, E2eError> {
    open(key, &chunk_ad(file_id, index, last), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seals `data` as a sender would.
    fn seal_file(file: &FileKey, data: &[u8]) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(FILE_CHUNK_BYTES).collect()
        };
        let count = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| seal_chunk(&file.key, &file.file_id, i as u64, i + 1 == count, chunk))
            .collect()
    }

    /// Opens chunks in order as a receiver would, insisting on a last chunk.
    fn open_file(file: &FileKey, sealed: &[Vec<u8>]) -> Result<Vec<u8>, E2eError> {
        let mut data = Vec::new();
        for (i, chunk) in sealed.iter().enumerate() {
            let last = i + 1 == sealed.len();
            data.extend(open_chunk(&file.key, &file.file_id, i as u64, last, chunk)?);
        }
        if sealed.is_empty() {
            return Err(E2eError::Undecryptable);
        }
        Ok(data)
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trip() {
        let file = FileKey::generate();
        assert_eq!(file.file_id.len(), 32);
        for len in [0, 1, FILE_CHUNK_BYTES, 2 * FILE_CHUNK_BYTES + 5] {
            let data = sample(len);
            let sealed = seal_file(&file, &data);
            assert_eq!(open_file(&file, &sealed).unwrap(), data, "length {len}");
        }
        let full = seal_chunk(
            &file.key,
            &file.file_id,
            0,
            false,
            &sample(FILE_CHUNK_BYTES),
        );
        let payload = chunk_payload(&file.file_id, 7, true, &full).unwrap();
        assert!(payload.len() + 95 <= crate::protocol::MAX_BODY_BYTES);
        assert_eq!(
            ChunkPayload::parse(&payload).unwrap(),
            ChunkPayload {
                file_id: &file.file_id,
                index: 7,
                last: true,
                sealed: &full,
            }
        );
    }

    #[test]
    fn a_chunk_payload_that_is_not_one_is_malformed() {
        let good = chunk_payload("abc", 1, false, b"sealed").unwrap();
        assert_eq!(ChunkPayload::parse(&good).unwrap().sealed, b"sealed");
        let mut bad_flag = good.clone();
        bad_flag[2 + 1 + 3 + 8] = 2;
        let mut other_kind = good.clone();
        other_kind[1] = 9;
        for bad in [
            &b"{\"t\":\"text\"}"[..],
            &b""[..],
            &good[..5],
            &bad_flag[..],
            &other_kind[..],
        ] {
            assert_eq!(
                ChunkPayload::parse(bad),
                Err(E2eError::Malformed),
                "{bad:?}"
            );
        }
        assert!(chunk_payload(&"x".repeat(256), 0, true, b"").is_err());
    }

    #[test]
    fn reordering_swapping_and_truncation_are_detected() {
        let file = FileKey::generate();
        let data = sample(3 * FILE_CHUNK_BYTES - 100);
        let sealed = seal_file(&file, &data);
        assert_eq!(sealed.len(), 3);

        let mut reordered = sealed.clone();
        reordered.swap(0, 1);
        assert_eq!(open_file(&file, &reordered), Err(E2eError::Undecryptable));

        // The receiver only sees two chunks: the second is not marked last.
        assert_eq!(open_file(&file, &sealed[..2]), Err(E2eError::Undecryptable));
        // Nothing can follow the last chunk.
        let mut extended = sealed.clone();
        extended.push(sealed[2].clone());
        assert_eq!(open_file(&file, &extended), Err(E2eError::Undecryptable));

        // A chunk of another file under the same key, or with another key, does not fit.
        let other = FileKey {
            key: file.key.clone(),
            file_id: random_hex(16),
        };
        let foreign = seal_file(&other, &data);
        let mut swapped = sealed.clone();
        swapped[1] = foreign[1].clone();
        assert_eq!(open_file(&file, &swapped), Err(E2eError::Undecryptable));
        let stranger = FileKey {
            key: SymmetricKey::generate(),
            file_id: file.file_id.clone(),
        };
        assert_eq!(open_file(&stranger, &sealed), Err(E2eError::Undecryptable));

        let mut flipped = sealed.clone();
        flipped[2][40] ^= 1;
        assert_eq!(open_file(&file, &flipped), Err(E2eError::Undecryptable));
        assert_eq!(
            open_chunk(&file.key, &file.file_id, 0, false, &[1, 2, 3]),
            Err(E2eError::Undecryptable)
        );
    }
}
