//! AES-256-GCM with a random nonce: `seal` gives `nonce || ciphertext || tag`.

use super::{E2eError, SymmetricKey};
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use std::sync::OnceLock;

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// How many bytes [`seal`] adds to a plaintext: a 12-byte nonce and a 16-byte tag.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;

/// AES-256-GCM, fetched from OpenSSL's provider once. `symm::Cipher::aes_256_gcm()`
/// makes OpenSSL 3 look the implementation up again on every use, which cost more than
/// sealing a short message.
fn aes_256_gcm() -> &'static CipherRef {
    static CIPHER: OnceLock<Cipher> = OnceLock::new();
    CIPHER.get_or_init(|| {
        Cipher::fetch(None, "AES-256-GCM", None).expect("OpenSSL provides AES-256-GCM")
    })
}

/// Encrypts and authenticates `plaintext`, and authenticates `aad` (which is not included
/// in the output: the opener must supply the same bytes). The nonce is 96 random bits, so
/// one key should seal no more than about 2^32 messages.
pub fn seal(key: &SymmetricKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    openssl::rand::rand_bytes(&mut nonce).expect("OpenSSL random generator failed");
    let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len() + 16);
    sealed.extend_from_slice(&nonce);
    let mut tag = [0u8; TAG_BYTES];
    CipherCtx::new()
        .and_then(|mut ctx| {
            ctx.encrypt_init(Some(aes_256_gcm()), Some(key.as_bytes()), Some(&nonce))?;
            ctx.cipher_update(aad, None)?;
            ctx.cipher_update_vec(plaintext, &mut sealed)?;
            ctx.cipher_final_vec(&mut sealed)?;
            ctx.tag(&mut tag)
        })
        .expect("AES-256-GCM with a 32-byte key and 12-byte nonce");
    sealed.extend_from_slice(&tag);
    sealed
}

/// Reverses [`seal`]; [`E2eError::Undecryptable`] when `sealed` is too short, was altered,
/// or was sealed under another key or other associated data.
pub fn open(key: &SymmetricKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, E2eError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(E2eError::Undecryptable);
    }
    let (nonce, rest) = sealed.split_at(NONCE_BYTES);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
    let mut plaintext = Vec::with_capacity(ciphertext.len() + 16);
    CipherCtx::new()
        .and_then(|mut ctx| {
            ctx.decrypt_init(Some(aes_256_gcm()), Some(key.as_bytes()), Some(nonce))?;
            ctx.cipher_update(aad, None)?;
            ctx.cipher_update_vec(ciphertext, &mut plaintext)?;
            ctx.set_tag(tag)?;
            ctx.cipher_final_vec(&mut plaintext)
        })
        .map_err(|_| E2eError::Undecryptable)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = SymmetricKey::generate();
        for plaintext in [&b""[..], b"x", &[7u8; 5000]] {
            let sealed = seal(&key, b"ad", plaintext);
            assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
            assert_eq!(open(&key, b"ad", &sealed).unwrap(), plaintext);
        }
        assert_ne!(
            seal(&key, b"", b"same"),
            seal(&key, b"", b"same"),
            "fresh nonces"
        );
    }

    #[test]
    fn any_change_is_detected() {
        let key = SymmetricKey::generate();
        let sealed = seal(&key, b"ad", b"attack at dawn");
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert_eq!(
                open(&key, b"ad", &flipped),
                Err(E2eError::Undecryptable),
                "byte {i}"
            );
        }
        for len in 0..sealed.len() {
            assert_eq!(
                open(&key, b"ad", &sealed[..len]),
                Err(E2eError::Undecryptable)
            );
        }
        assert_eq!(open(&key, b"AD", &sealed), Err(E2eError::Undecryptable));
        let other = SymmetricKey::generate();
        assert_eq!(open(&other, b"ad", &sealed), Err(E2eError::Undecryptable));
    }
}
