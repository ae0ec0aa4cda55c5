//! Password-sealed backups of a user's private key, so a user can log in from a new device
//! while the server only ever stores ciphertext.
//!
//! Format: `fcbackup1$LOG2N$R$P$SALT$NONCE$CIPHERTEXT_AND_TAG` (base64 without padding).
//! The AES-256-GCM key is scrypt(password, SALT) with the parameters written in the
//! string, so they can be raised later; the plaintext is the PKCS#8 DER private key; the
//! text up to and including SALT is the associated data, so the header cannot be altered.

use super::aead::{open, seal};
use super::keys::{SymmetricKey, UserKeys};
use super::E2eError;
use crate::password::{scrypt, LOG2_N, P, R};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

const SCHEME: &str = "fcbackup1";
/// Highest scrypt cost a backup may name (4x what `seal_key_backup` uses today, room for
/// one raise of the parameters).
const MAX_LOG2_N: u8 = LOG2_N + 2;
const SALT_BYTES: usize = 16;
const NONCE_BYTES: usize = 12;

/// The part of a backup that is authenticated but not encrypted.
fn header(log2n: u8, r: u32, p: u32, salt: &[u8]) -> String {
    let salt = STANDARD_NO_PAD.encode(salt);
    format!("{SCHEME}${log2n}${r}${p}${salt}")
}

/// The AES key for a backup; `None` when the parameters are outside password.rs's bounds.
fn backup_key(password: &str, salt: &[u8], log2n: u8, r: u32, p: u32) -> Option<SymmetricKey> {
    let bytes = scrypt(password, salt, log2n, r, p)?;
    SymmetricKey::from_bytes(&bytes).ok()
}

/// Encrypts `keys`' private key under `password` (scrypt N=2^14, r=8, p=1, fresh salt).
pub fn seal_key_backup(keys: &UserKeys, password: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    openssl::rand::rand_bytes(&mut salt).expect("OpenSSL random generator failed");
    let key = backup_key(password, &salt, LOG2_N, R, P).expect("scrypt with fixed parameters");
    let header = header(LOG2_N, R, P, &salt);
    let mut der = keys.private_pkcs8_der();
    let sealed = seal(&key, header.as_bytes(), &der);
    der.fill(0);
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    format!(
        "{header}${}${}",
        STANDARD_NO_PAD.encode(nonce),
        STANDARD_NO_PAD.encode(ciphertext)
    )
}

/// Decrypts a backup made by [`seal_key_backup`]. [`E2eError::WrongPassword`] when it does
/// not authenticate (a wrong password, or an altered backup: the two look the same);
/// [`E2eError::Malformed`] when it does not follow the format or names absurd parameters.
pub fn open_key_backup(backup: &str, password: &str) -> Result<UserKeys, E2eError> {
    let parts: Vec<&str> = backup.trim().split('$').collect();
    let [scheme, log2n, r, p, salt, nonce, ciphertext] = parts.as_slice() else {
        return Err(E2eError::Malformed);
    };
    if *scheme != SCHEME {
        return Err(E2eError::Malformed);
    }
    let (Ok(log2n), Ok(r), Ok(p)) = (log2n.parse::<u8>(), r.parse::<u32>(), p.parse::<u32>())
    else {
        return Err(E2eError::Malformed);
    };
    // The backup comes from the server: refuse a cost far above what we seal with, or a
    // hostile server could make the client spend gigabytes and minutes on one login.
    if log2n > MAX_LOG2_N || r > R || p > P {
        return Err(E2eError::Malformed);
    }
    let decode = |text: &str| {
        STANDARD_NO_PAD
            .decode(text)
            .map_err(|_| E2eError::Malformed)
    };
    let (salt, nonce, ciphertext) = (decode(salt)?, decode(nonce)?, decode(ciphertext)?);
    if salt.len() != SALT_BYTES || nonce.len() != NONCE_BYTES {
        return Err(E2eError::Malformed);
    }
    let key = backup_key(password, &salt, log2n, r, p).ok_or(E2eError::Malformed)?;
    let sealed = [nonce, ciphertext].concat();
    let mut der = open(&key, header(log2n, r, p, &salt).as_bytes(), &sealed)
        .map_err(|_| E2eError::WrongPassword)?;
    let keys = UserKeys::from_pkcs8_der(&der);
    der.fill(0);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::test_keys::users;

    #[test]
    fn right_password_restores_the_key_wrong_one_fails() {
        let alice = &users()[0];
        let backup = seal_key_backup(alice, "correct horse");
        assert!(backup.starts_with("fcbackup1$14$8$1$"), "{backup}");
        assert!(!backup.contains("correct horse"));
        let restored = open_key_backup(&backup, "correct horse").unwrap();
        assert_eq!(restored.private_pem(), alice.private_pem());
        assert_eq!(
            open_key_backup(&backup, "wrong horse").unwrap_err(),
            E2eError::WrongPassword
        );
        assert_ne!(
            seal_key_backup(alice, "correct horse"),
            backup,
            "fresh salt"
        );
    }

    #[test]
    fn altered_or_malformed_backups_are_refused() {
        let backup = seal_key_backup(&users()[0], "pw");
        let parts: Vec<&str> = backup.split('$').collect();
        let with = |i: usize, value: &str| {
            let mut altered = parts.clone();
            altered[i] = value;
            altered.join("$")
        };
        // Lowering the cost does not give the same key, and the header is authenticated.
        assert_eq!(
            open_key_backup(&with(1, "13"), "pw").unwrap_err(),
            E2eError::WrongPassword
        );
        let other_salt = STANDARD_NO_PAD.encode([0u8; SALT_BYTES]);
        assert_eq!(
            open_key_backup(&with(4, &other_salt), "pw").unwrap_err(),
            E2eError::WrongPassword
        );
        for malformed in [
            String::new(),
            "garbage".into(),
            with(0, "fcbackup2"),
            with(1, "99"),
            with(1, "x"),
            with(2, "1000000"),
            with(4, "AAAA"),
            with(5, "!!"),
            with(6, "not base64!"),
            format!("{backup}$extra"),
            parts[..6].join("$"),
        ] {
            assert_eq!(
                open_key_backup(&malformed, "pw").unwrap_err(),
                E2eError::Malformed,
                "{malformed}"
            );
        }
        let truncated = &backup[..backup.len() - 10];
        assert!(open_key_backup(truncated, "pw").is_err());
    }
}
