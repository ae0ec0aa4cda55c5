//! `Blob`: opaque bytes carried base64-encoded inside JSON frames.
//!
//! Servers never decode a blob: they check its size and pass the text on, so relaying a
//! message costs no base64 work and no second copy of the bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Opaque bytes, held in their base64 text form (standard alphabet, padded).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Blob(String);

impl Blob {
    /// Encodes raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Blob {
        Blob(STANDARD.encode(bytes))
    }

    /// Wraps text that is already base64 (as stored in the database); not validated.
    pub fn from_base64(text: String) -> Blob {
        Blob(text)
    }

    /// Decodes to raw bytes; `None` when the text is not valid base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        STANDARD.decode(self.0.as_bytes()).ok()
    }

    /// The base64 text.
    pub fn as_base64(&self) -> &str {
        &self.0
    }

    /// Consumes the blob, returning its base64 text.
    pub fn into_base64(self) -> String {
        self.0
    }

    /// The number of raw bytes this blob decodes to (an upper bound for invalid text),
    /// computed without decoding.
    pub fn decoded_len(&self) -> usize {
        let padding = self
            .0
            .bytes()
            .rev()
            .take_while(|&b| b == b'=')
            .count()
            .min(2);
        (self.0.len() / 4 * 3 + (self.0.len() % 4) * 3 / 4).saturating_sub(padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_matches_real_decoding() {
        for n in 0..40 {
            let bytes: Vec<u8> = (0..n as u8).collect();
            let blob = Blob::from_bytes(&bytes);
            assert_eq!(blob.decoded_len(), n, "length {n}");
            assert_eq!(blob.to_bytes().unwrap(), bytes);
        }
    }
}
