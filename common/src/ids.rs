//! Random identifiers (message ids, nonces) from OpenSSL's CSPRNG.

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL random generator failed");
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A fresh message id: 128 random bits in hex.
pub fn new_message_id() -> String {
    random_hex(16)
}
