//! Byte encodings: an unambiguous one for what gets signed or authenticated, and a
//! bounds-checked reader for what arrives from the network.

use super::E2eError;

/// Builds the bytes that a signature or AEAD tag covers: a domain tag, then fields that
/// are each prefixed with their length (u64, big-endian), so that no two different field
/// lists encode to the same bytes and no signature made for one purpose fits another.
pub(crate) struct Transcript(Vec<u8>);

impl Transcript {
    /// Starts a transcript for one purpose, named by `domain` (e.g. `fastchat-e2e/…/1`).
    pub(crate) fn new(domain: &str) -> Transcript {
        let mut transcript = Transcript(Vec::with_capacity(256));
        transcript.field(domain.as_bytes());
        transcript
    }

    /// Appends a variable-length field.
    pub(crate) fn field(&mut self, bytes: &[u8]) -> &mut Transcript {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a fixed-width number.
    pub(crate) fn number(&mut self, value: u64) -> &mut Transcript {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// The encoded bytes.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a byte slice front to back; every read that would run past the end is
/// [`E2eError::Malformed`].
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], E2eError> {
        if n > self.rest.len() {
            return Err(E2eError::Malformed);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, E2eError> {
        match self.take(1)? {
            [byte] => Ok(*byte),
            _ => Err(E2eError::Malformed),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64, E2eError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| E2eError::Malformed)?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// A UTF-8 string of at most 255 bytes, prefixed by its length in one byte.
    pub(crate) fn short_str(&mut self) -> Result<&'a str, E2eError> {
        let len = self.u8()?;
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| E2eError::Malformed)
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// Appends `text` prefixed by its length in one byte; refuses text over 255 bytes.
pub(crate) fn put_short_str(out: &mut Vec<u8>, what: &str, text: &str) -> Result<(), E2eError> {
    let len = u8::try_from(text.len())
        .map_err(|_| E2eError::Invalid(format!("{what} is longer than 255 bytes")))?;
    out.push(len);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

pub(crate) use crate::ids::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_is_unambiguous() {
        let encode = |a: &str, b: &str| {
            let mut t = Transcript::new("test");
            t.field(a.as_bytes()).field(b.as_bytes());
            t.into_bytes()
        };
        assert_ne!(encode("ab", "c"), encode("a", "bc"));
        assert_ne!(encode("", "abc"), encode("abc", ""));
    }

    #[test]
    fn reader_refuses_to_run_past_the_end() {
        let mut reader = Reader::new(&[3, b'a', b'b']);
        assert_eq!(reader.short_str(), Err(E2eError::Malformed));
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(reader.u64(), Err(E2eError::Malformed));
        assert_eq!(Reader::new(&[]).u8(), Err(E2eError::Malformed));
        let mut reader = Reader::new(&[2, b'h', b'i', 9]);
        assert_eq!(reader.short_str(), Ok("hi"));
        assert_eq!(reader.rest(), &[9]);
    }
}
