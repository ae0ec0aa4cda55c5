//! Identifiers: random ones (nonces, tokens, key ids) from OpenSSL's CSPRNG, and message
//! ids, which only have to be unique per sender.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bytes as lowercase hex (twice as many characters).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL random generator failed");
    hex(&buf)
}

/// A fresh message id: 128 bits in hex. Receivers drop repeats by (sender, id), so ids
/// must never repeat; and since recipients see them, they must not tell anything either
/// (a plain counter would show a recipient how many messages its sender wrote to others
/// in between). Each id is a counter encrypted with AES-256 under a key drawn once per
/// process: a permutation, so distinct counters give distinct ids, and unpredictable
/// without the key. A random draw from OpenSSL per message, with its formatting, was 4%
/// of a sending client's CPU; this is one cipher block.
pub fn new_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut block = [0u8; 16];
    block[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    ID_CIPHER.with(|cipher| {
        let mut cipher = cipher.borrow_mut();
        let ctx = cipher.get_or_insert_with(id_cipher);
        // ECB over exactly one block, padding off: the output is that one block.
        let mut out = [0u8; 32];
        let n = ctx
            .cipher_update(&block, Some(&mut out))
            .expect("AES-256-ECB over one block");
        hex(&out[..n])
    })
}

thread_local! {
    /// Each thread's cipher context for message ids, keyed with the process's id key.
    static ID_CIPHER: RefCell<Option<CipherCtx>> = const { RefCell::new(None) };
}

fn id_cipher() -> CipherCtx {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).expect("OpenSSL random generator failed");
        key
    });
    let cipher = Cipher::fetch(None, "AES-256-ECB", None).expect("OpenSSL provides AES-256-ECB");
    let mut ctx = CipherCtx::new().expect("a cipher context");
    ctx.encrypt_init(Some(&cipher), Some(key), None)
        .expect("AES-256-ECB with a 32-byte key");
    ctx.set_padding(false);
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
        assert_eq!(random_hex(16).len(), 32);
    }

    #[test]
    fn message_ids_are_128_bits_and_never_repeat_across_threads() {
        let ids: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).map(|_| new_message_id()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }
}
