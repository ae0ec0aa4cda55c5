//! AES-256-GCM with a random nonce: `seal` gives `nonce || ciphertext || tag`.

use super::{E2eError, SymmetricKey};
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};
use openssl::error::ErrorStack;
use std::cell::RefCell;
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

/// How many nonces one draw from OpenSSL's generator yields.
const NONCES_PER_DRAW: usize = 256;

thread_local! {
    /// Random bytes for this thread's next nonces. `RAND_bytes` has a fixed cost (locks,
    /// a fork check, the generator's own rekeying) that was most of sealing a short
    /// message when paid per nonce; drawn 3 KiB at a time, each nonce is still 96 bits
    /// from OpenSSL's CSPRNG, used once. A process that forks must not seal in both
    /// halves with what the parent drew (no FastChat program forks).
    static NONCES: RefCell<NonceStock> = const {
        RefCell::new(NonceStock { bytes: [0; NONCE_BYTES * NONCES_PER_DRAW], next: NONCES_PER_DRAW })
    };
    /// This thread's AES-256-GCM contexts, one for sealing and one for opening: each
    /// message re-keys one instead of allocating and fetching a new one.
    static SEALER: RefCell<Option<CipherCtx>> = const { RefCell::new(None) };
    static OPENER: RefCell<Option<CipherCtx>> = const { RefCell::new(None) };
}

struct NonceStock {
    bytes: [u8; NONCE_BYTES * NONCES_PER_DRAW],
    /// The index of the next unused nonce; `NONCES_PER_DRAW` when all are used.
    next: usize,
}

/// A fresh 96-bit nonce from OpenSSL's CSPRNG, never handed out twice.
fn fresh_nonce() -> [u8; NONCE_BYTES] {
    NONCES.with(|stock| {
        let mut stock = stock.borrow_mut();
        if stock.next == NONCES_PER_DRAW {
            openssl::rand::rand_bytes(&mut stock.bytes).expect("OpenSSL random generator failed");
            stock.next = 0;
        }
        let start = stock.next * NONCE_BYTES;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&stock.bytes[start..start + NONCE_BYTES]);
        stock.next += 1;
        nonce
    })
}

/// Runs `work` on this thread's context in `slot`, made on first use. A context whose
/// work failed is dropped rather than kept, so no failure leaves state for the next.
fn with_context<T>(
    slot: &'static std::thread::LocalKey<RefCell<Option<CipherCtx>>>,
    work: impl FnOnce(&mut CipherCtxRef) -> Result<T, ErrorStack>,
) -> Result<T, ErrorStack> {
    slot.with(|slot| {
        let mut slot = slot.borrow_mut();
        let mut ctx = match slot.take() {
            Some(ctx) => ctx,
            None => {
                let mut ctx = CipherCtx::new()?;
                // Only the cipher here: each use sets its own key and nonce.
                ctx.encrypt_init(Some(aes_256_gcm()), None, None)?;
                ctx
            }
        };
        let done = work(&mut ctx)?;
        *slot = Some(ctx);
        Ok(done)
    })
}

/// Encrypts and authenticates `plaintext`, and authenticates `aad` (which is not included
/// in the output: the opener must supply the same bytes). The nonce is 96 random bits, so
/// one key should seal no more than about 2^32 messages.
pub fn seal(key: &SymmetricKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len() + 16);
    seal_into(key, aad, plaintext, &mut sealed);
    sealed
}

/// [`seal`], appending `nonce || ciphertext || tag` to `out` (a header already in it
/// stays in front; with room for [`SEAL_OVERHEAD`] and the plaintext, it does not grow).
pub fn seal_into(key: &SymmetricKey, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    let nonce = fresh_nonce();
    out.extend_from_slice(&nonce);
    let mut tag = [0u8; TAG_BYTES];
    with_context(&SEALER, |ctx| {
        ctx.encrypt_init(None, Some(key.as_bytes()), Some(&nonce))?;
        ctx.cipher_update(aad, None)?;
        ctx.cipher_update_vec(plaintext, out)?;
        ctx.cipher_final_vec(out)?;
        ctx.tag(&mut tag)
    })
    .expect("AES-256-GCM with a 32-byte key and 12-byte nonce");
    out.extend_from_slice(&tag);
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
    with_context(&OPENER, |ctx| {
        ctx.decrypt_init(None, Some(key.as_bytes()), Some(nonce))?;
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
    fn nonces_are_not_repeated_across_draws() {
        let key = SymmetricKey::generate();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * NONCES_PER_DRAW + 5 {
            let sealed = seal(&key, b"", b"x");
            assert!(
                seen.insert(sealed[..NONCE_BYTES].to_vec()),
                "nonce repeated"
            );
        }
    }

    #[test]
    fn a_thread_seals_and_opens_under_keys_in_turn_and_after_a_failure() {
        let keys = [SymmetricKey::generate(), SymmetricKey::generate()];
        let sealed: Vec<Vec<u8>> = (0..6)
            .map(|i| seal(&keys[i % 2], &[i as u8], format!("message {i}").as_bytes()))
            .collect();
        for (i, s) in sealed.iter().enumerate() {
            assert_eq!(
                open(&keys[(i + 1) % 2], &[i as u8], s),
                Err(E2eError::Undecryptable)
            );
            assert_eq!(
                open(&keys[i % 2], &[i as u8], s).unwrap(),
                format!("message {i}").as_bytes()
            );
        }
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
