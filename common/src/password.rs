//! Password hashing: salted scrypt through OpenSSL, stored as a self-describing string.
//!
//! Format: `scrypt$LOG2N$R$P$SALT_B64$HASH_B64`, so that parameters can be raised later
//! without invalidating existing hashes.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// log2 of scrypt's cost N for new hashes (N = 16384: 16 MiB of memory per hash).
pub const LOG2_N: u8 = 14;
pub(crate) const R: u32 = 8;
pub(crate) const P: u32 = 1;
const HASH_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// scrypt into 32 bytes; `None` for parameters outside sane bounds (a stored string may be
/// hostile) or if OpenSSL fails. Also derives the key of an end-to-end key backup.
pub(crate) fn scrypt(password: &str, salt: &[u8], log2n: u8, r: u32, p: u32) -> Option<Vec<u8>> {
    if !(10..=20).contains(&log2n) || !(1..=32).contains(&r) || !(1..=16).contains(&p) {
        return None;
    }
    let n = 1u64 << log2n;
    let maxmem = 128 * n * u64::from(r) * u64::from(p) + 1024 * 1024;
    let mut out = vec![0u8; HASH_LEN];
    openssl::pkcs5::scrypt(
        password.as_bytes(),
        salt,
        n,
        u64::from(r),
        u64::from(p),
        maxmem,
        &mut out,
    )
    .ok()?;
    Some(out)
}

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    openssl::rand::rand_bytes(&mut salt).expect("OpenSSL random generator failed");
    let hash = scrypt(password, &salt, LOG2_N, R, P).expect("scrypt with fixed parameters");
    format!(
        "scrypt${LOG2_N}${R}${P}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    )
}

/// What a client sends the server instead of the password: scrypt(password) salted with
/// the user name, base64. The server hashes it again (salted scrypt) to store it. The
/// server never learns the password, so it cannot derive the key that seals the user's
/// private key backup, which comes from the password under another salt.
pub fn login_secret(user: &str, password: &str) -> String {
    let salt = format!("fastchat-login/1\n{user}");
    let secret =
        scrypt(password, salt.as_bytes(), LOG2_N, R, P).expect("scrypt with fixed parameters");
    STANDARD_NO_PAD.encode(secret)
}

/// Checks a password against a stored hash, in constant time over the hash bytes.
/// A malformed stored string never verifies.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, log2n, r, p, salt, hash] = parts.as_slice() else {
        return false;
    };
    if *scheme != "scrypt" {
        return false;
    }
    let (Ok(log2n), Ok(r), Ok(p)) = (log2n.parse(), r.parse(), p.parse()) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash))
    else {
        return false;
    };
    match scrypt(password, &salt, log2n, r, p) {
        Some(actual) if actual.len() == expected.len() => openssl::memcmp::eq(&actual, &expected),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_secrets_hide_the_password_and_depend_on_the_user() {
        let a = login_secret("alice", "correct horse");
        assert_eq!(a, login_secret("alice", "correct horse"));
        assert_ne!(a, login_secret("bob", "correct horse"));
        assert_ne!(a, login_secret("alice", "correct horsf"));
        assert!(!a.contains("correct"));
    }

    #[test]
    fn hash_and_verify() {
        let stored = hash_password("correct horse");
        assert!(stored.starts_with("scrypt$14$8$1$"));
        assert!(!stored.contains("correct horse"));
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("wrong", &stored));
        assert_ne!(hash_password("correct horse"), stored, "salts differ");
        assert!(!verify_password("x", "garbage"));
        assert!(!verify_password("x", "scrypt$99$8$1$AAAA$AAAA"));
    }
}
