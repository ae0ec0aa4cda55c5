//! End-to-end encryption primitives: user keys, key backups, wrapped conversation and
//! group keys, message envelopes and file chunks. OpenSSL does all the cryptography.
//!
//! Every key uses a standard format that the `openssl` command line can read: private
//! keys are unencrypted PKCS#8 PEM, public keys are SubjectPublicKeyInfo PEM (RSA, at
//! least 2048 bits). Symmetric encryption is AES-256-GCM with a random 96-bit nonce;
//! keys are wrapped with RSA-OAEP (SHA-256) and records are signed with RSA-PSS
//! (SHA-256).
//!
//! Everything that arrives from the network is treated as hostile: parsing returns
//! [`E2eError`] values and never panics. Deciding *whose* public key to trust (pinning a
//! [`PublicKey::fingerprint`] on first use) and *who* belongs to a group is the caller's
//! job; this module only proves that a record was signed by the key it is given.

mod aead;
mod backup;
mod envelope;
mod file;
mod keys;
mod records;
mod wire;

pub use aead::{open, seal, SEAL_OVERHEAD};
pub use backup::{open_key_backup, seal_key_backup};
pub use envelope::{seal_direct, seal_group, Envelope, EnvelopeKind};
pub use file::{
    chunk_payload, open_chunk, seal_chunk, ChunkPayload, FileKey, BINARY_PAYLOAD, FILE_CHUNK_BYTES,
};
pub use keys::{
    sign, unwrap_key, verify, wrap_key, PublicKey, SymmetricKey, UserKeys, RSA_BITS,
    SYMMETRIC_KEY_BYTES,
};
pub use records::{
    make_conversation_key, make_group_key, open_conversation_key, open_group_key,
    ConversationKeyRecord, GroupKeyRecord, WrappedFor,
};

use std::fmt;

/// Why an end-to-end operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eError {
    /// A key backup did not decrypt: the password is wrong (or the backup was altered).
    WrongPassword,
    /// Ciphertext did not authenticate under the key and associated data given.
    Undecryptable,
    /// Bytes or text that do not follow the expected format.
    Malformed,
    /// A signature does not verify, or was made by someone not entitled to make it.
    BadSignature,
    /// The record holds no copy of the key for this user.
    NotARecipient,
    /// An argument the caller passed cannot be used (the text says which).
    Invalid(String),
    /// A key could not be loaded, is unacceptable, or OpenSSL failed with it.
    Key(String),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::WrongPassword => f.write_str("wrong password for the key backup"),
            E2eError::Undecryptable => f.write_str("message cannot be decrypted"),
            E2eError::Malformed => f.write_str("malformed end-to-end data"),
            E2eError::BadSignature => f.write_str("signature does not verify"),
            E2eError::NotARecipient => f.write_str("no copy of the key for this user"),
            E2eError::Invalid(e) => write!(f, "invalid argument: {e}"),
            E2eError::Key(e) => write!(f, "key: {e}"),
        }
    }
}

impl std::error::Error for E2eError {}

fn key_err(e: openssl::error::ErrorStack) -> E2eError {
    E2eError::Key(e.to_string())
}

/// Keys shared by the tests of every submodule: RSA generation is slow, so it runs once.
#[cfg(test)]
pub(crate) mod test_keys {
    use super::UserKeys;
    use std::sync::OnceLock;

    /// Alice, Bob, Carol and Mallory, in that order.
    pub(crate) fn users() -> &'static [UserKeys; 4] {
        static KEYS: OnceLock<[UserKeys; 4]> = OnceLock::new();
        KEYS.get_or_init(|| std::array::from_fn(|_| UserKeys::generate().unwrap()))
    }
}
