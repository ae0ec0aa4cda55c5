//! `Blob`: opaque bytes, held either as their base64 text (as JSON frames and the
//! database carry them) or raw (as binary frames carry them), and shared, not copied.
//!
//! Servers never decode a blob: they check its size and pass it on in the form it came
//! in. A body that arrived raw in a binary frame goes out raw to whoever reads binary
//! frames, and one that arrived as base64 text goes out as that text, so relaying a
//! message costs no base64 work in either case. Only a raw body written into JSON (for a
//! reader of JSON frames only, or for storage) is encoded, once, at that point.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Opaque bytes; cloning shares them. Serialized as base64 text (standard alphabet,
/// padded). Two blobs are equal when they hold the same bytes, whatever their form.
#[derive(Clone)]
pub struct Blob(Repr);

#[derive(Clone)]
enum Repr {
    /// Base64 text, not validated until decoded (moved in, not copied).
    Base64(Arc<String>),
    /// The bytes themselves.
    Raw(Arc<RawBytes>),
}

/// Raw bytes, and their base64 text once something asked for it: every clone (each
/// member's copy of a group message, say) then shares one encoding.
struct RawBytes {
    bytes: Box<[u8]>,
    text: OnceLock<Box<str>>,
}

impl RawBytes {
    fn new(bytes: Box<[u8]>) -> Arc<RawBytes> {
        Arc::new(RawBytes {
            bytes,
            text: OnceLock::new(),
        })
    }
}

impl Blob {
    /// Holds raw bytes (no encoding now; JSON writes them as base64 when it needs to).
    pub fn from_bytes(bytes: &[u8]) -> Blob {
        Blob(Repr::Raw(RawBytes::new(bytes.into())))
    }

    /// Holds raw bytes, taking them.
    pub fn from_vec(bytes: Vec<u8>) -> Blob {
        Blob(Repr::Raw(RawBytes::new(bytes.into_boxed_slice())))
    }

    /// Wraps text that is already base64 (as stored in the database); not validated.
    pub fn from_base64(text: String) -> Blob {
        Blob(Repr::Base64(Arc::new(text)))
    }

    /// The raw bytes when the blob holds them, else `None` (nothing is decoded).
    pub fn raw(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Raw(raw) => Some(&raw.bytes),
            Repr::Base64(_) => None,
        }
    }

    /// The bytes, borrowed when raw and decoded when base64; `None` when the text is
    /// not valid base64.
    pub fn bytes(&self) -> Option<Cow<'_, [u8]>> {
        match &self.0 {
            Repr::Raw(raw) => Some(Cow::Borrowed(&raw.bytes)),
            Repr::Base64(text) => STANDARD.decode(text.as_bytes()).ok().map(Cow::Owned),
        }
    }

    /// The bytes as an owned vector; `None` when the text is not valid base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        self.bytes().map(Cow::into_owned)
    }

    /// The base64 text: held, or encoded from raw bytes the first time it is asked
    /// for (and kept for every clone).
    pub fn as_base64(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Base64(text) => Cow::Borrowed(text),
            Repr::Raw(raw) => Cow::Borrowed(
                raw.text
                    .get_or_init(|| STANDARD.encode(&raw.bytes).into_boxed_str()),
            ),
        }
    }

    /// The base64 text, owned.
    pub fn into_base64(self) -> String {
        self.as_base64().into_owned()
    }

    /// Whether the blob is raw, or its text has only characters of the standard base64
    /// alphabet and `=`: what a server checks (a scan, not a decoding) before relaying
    /// or storing a body that came as JSON text, which could otherwise hold anything,
    /// a NUL byte that PostgreSQL refuses in text included.
    pub fn is_base64_alphabet(&self) -> bool {
        match &self.0 {
            Repr::Raw(_) => true,
            Repr::Base64(text) => text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')),
        }
    }

    /// The number of raw bytes this blob holds or decodes to (an upper bound for
    /// invalid text), computed without decoding.
    pub fn decoded_len(&self) -> usize {
        let text = match &self.0 {
            Repr::Raw(raw) => return raw.bytes.len(),
            Repr::Base64(text) => text.as_bytes(),
        };
        let padding = text.iter().rev().take_while(|&&b| b == b'=').count().min(2);
        (text.len() / 4 * 3 + (text.len() % 4) * 3 / 4).saturating_sub(padding)
    }
}

impl Default for Blob {
    fn default() -> Blob {
        Blob::from_bytes(&[])
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        match (&self.0, &other.0) {
            (Repr::Base64(a), Repr::Base64(b)) => a == b,
            (Repr::Raw(a), Repr::Raw(b)) => a.bytes == b.bytes,
            _ => self.bytes() == other.bytes(),
        }
    }
}

impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Base64(text) => write!(f, "Blob({text:?})"),
            Repr::Raw(raw) => write!(f, "Blob(raw {} bytes)", raw.bytes.len()),
        }
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_base64())
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        String::deserialize(d).map(Blob::from_base64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_matches_real_decoding() {
        for n in 0..40 {
            let bytes: Vec<u8> = (0..n as u8).collect();
            let text = Blob::from_base64(Blob::from_bytes(&bytes).into_base64());
            assert_eq!(text.decoded_len(), n, "length {n}");
            assert_eq!(text.to_bytes().unwrap(), bytes);
            assert_eq!(Blob::from_vec(bytes.clone()).decoded_len(), n);
        }
    }

    #[test]
    fn only_the_base64_alphabet_passes_for_text() {
        assert!(Blob::from_bytes(b"\0 anything raw").is_base64_alphabet());
        assert!(Blob::from_base64("".into()).is_base64_alphabet());
        let every = Blob::from_bytes(&(0..=255).collect::<Vec<u8>>());
        assert!(Blob::from_base64(every.into_base64()).is_base64_alphabet());
        for bad in ["aGk\0", "aGk=\n", "a b=", "aGk\u{e9}", "%%%"] {
            assert!(
                !Blob::from_base64(bad.into()).is_base64_alphabet(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn both_forms_of_the_same_bytes_are_equal_and_serialize_alike() {
        let raw = Blob::from_bytes(b"sealed bytes");
        let text = Blob::from_base64("c2VhbGVkIGJ5dGVz".into());
        assert_eq!(raw, text);
        assert_ne!(raw, Blob::from_bytes(b"other"));
        assert_ne!(text, Blob::from_base64("%%%".into()));
        assert_eq!(
            serde_json::to_string(&raw).unwrap(),
            serde_json::to_string(&text).unwrap()
        );
        let back: Blob = serde_json::from_str(&serde_json::to_string(&raw).unwrap()).unwrap();
        assert!(back.raw().is_none());
        assert_eq!(back, raw);
        assert_eq!(raw.raw(), Some(&b"sealed bytes"[..]));
        assert_eq!(text.raw(), None);
        // Encoded once, and the encoding shared by clones.
        let copy = raw.clone();
        assert!(std::ptr::eq(
            raw.as_base64().as_ptr(),
            copy.as_base64().as_ptr()
        ));
        assert_eq!(copy.as_base64(), "c2VhbGVkIGJ5dGVz");
    }
}
