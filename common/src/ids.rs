//! Random identifiers (message ids, nonces) from OpenSSL's CSPRNG.

/// Bytes as lowercase hex (twice as many characters).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL random generator failed");
    hex(&buf)
}

/// A fresh message id: 128 random bits in hex.
pub fn new_message_id() -> String {
    random_hex(16)
}
