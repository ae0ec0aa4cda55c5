//! Users' RSA key pairs and public keys, symmetric keys, and the RSA operations on them:
//! wrapping a symmetric key for a user (RSA-OAEP) and signing (RSA-PSS).

use super::wire::hex;
use super::{key_err, E2eError};
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use std::fmt;

/// Size of new user keys, and the smallest accepted from anyone.
pub const RSA_BITS: u32 = 2048;
/// Largest RSA modulus accepted (OpenSSL's own limit for public-key operations).
const MAX_RSA_BITS: u32 = 16384;
/// Largest public exponent accepted; real keys use 65537 (17 bits).
const MAX_EXPONENT_BITS: i32 = 64;

/// Checks that a key is RSA of an acceptable size with a sane public exponent, so that
/// OpenSSL will not refuse to encrypt to it or verify with it later.
fn check_rsa_key<T: openssl::pkey::HasPublic>(key: &PKey<T>) -> Result<(), E2eError> {
    if key.id() != Id::RSA {
        return Err(E2eError::Key("not an RSA key".into()));
    }
    let bits = key.bits();
    if !(RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(E2eError::Key(format!(
            "RSA key of {bits} bits; {RSA_BITS} to {MAX_RSA_BITS} are accepted"
        )));
    }
    let rsa = key.rsa().map_err(key_err)?;
    let e = rsa.e();
    if !e.is_odd() || e.num_bits() < 2 || e.num_bits() > MAX_EXPONENT_BITS {
        return Err(E2eError::Key("unacceptable RSA public exponent".into()));
    }
    Ok(())
}

/// A user's RSA key pair. The private half never leaves the user's devices except inside
/// a password-sealed backup (see [`super::seal_key_backup`]).
#[derive(Clone)]
pub struct UserKeys {
    key: PKey<Private>,
}

impl UserKeys {
    /// Generates a new 2048-bit RSA key pair.
    pub fn generate() -> Result<UserKeys, E2eError> {
        let rsa = Rsa::generate(RSA_BITS).map_err(key_err)?;
        Ok(UserKeys {
            key: PKey::from_rsa(rsa).map_err(key_err)?,
        })
    }

    /// Loads an unencrypted private key from PEM (PKCS#8, or the older PKCS#1 `RSA PRIVATE
    /// KEY`). Encrypted PEM is refused rather than prompting for a passphrase.
    pub fn from_private_pem(pem: &str) -> Result<UserKeys, E2eError> {
        let no_passphrase = |_: &mut [u8]| Ok(0);
        let key =
            PKey::private_key_from_pem_callback(pem.as_bytes(), no_passphrase).map_err(key_err)?;
        UserKeys::from_pkey(key)
    }

    /// Loads an unencrypted PKCS#8 private key from DER.
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<UserKeys, E2eError> {
        UserKeys::from_pkey(PKey::private_key_from_pkcs8(der).map_err(key_err)?)
    }

    fn from_pkey(key: PKey<Private>) -> Result<UserKeys, E2eError> {
        check_rsa_key(&key)?;
        let consistent = key.rsa().and_then(|rsa| rsa.check_key()).unwrap_or(false);
        if !consistent {
            return Err(E2eError::Key("inconsistent RSA private key".into()));
        }
        Ok(UserKeys { key })
    }

    /// The private key as unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn private_pem(&self) -> String {
        let pem = self
            .key
            .private_key_to_pem_pkcs8()
            .expect("OpenSSL failed to encode a private key it holds");
        String::from_utf8_lossy(&pem).into_owned()
    }

    /// The private key as unencrypted PKCS#8 DER.
    pub(crate) fn private_pkcs8_der(&self) -> Vec<u8> {
        self.key
            .private_key_to_pkcs8()
            .expect("OpenSSL failed to encode a private key it holds")
    }

    /// The public key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_pem(&self) -> String {
        self.public().to_pem()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let der = self
            .key
            .public_key_to_der()
            .expect("OpenSSL failed to encode a public key it holds");
        let key = PKey::public_key_from_der(&der).expect("OpenSSL re-reads its own encoding");
        PublicKey { key }
    }
}

/// Shows only the public key's fingerprint.
impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys")
            .field("public", &self.public().fingerprint())
            .finish_non_exhaustive()
    }
}

/// Someone's RSA public key (at least 2048 bits).
#[derive(Clone)]
pub struct PublicKey {
    key: PKey<Public>,
}

impl PublicKey {
    /// Loads a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`); refuses keys that
    /// are not RSA or are under 2048 bits.
    pub fn from_pem(pem: &str) -> Result<PublicKey, E2eError> {
        let key = PKey::public_key_from_pem(pem.as_bytes()).map_err(key_err)?;
        check_rsa_key(&key)?;
        Ok(PublicKey { key })
    }

    /// The key as SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> String {
        let pem = self
            .key
            .public_key_to_pem()
            .expect("OpenSSL failed to encode a public key it holds");
        String::from_utf8_lossy(&pem).into_owned()
    }

    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo, for pinning a key on first
    /// use and for comparing keys out of band.
    /// Same as `openssl pkey -pubin -outform DER | openssl dgst -sha256`.
    pub fn fingerprint(&self) -> String {
        let der = self
            .key
            .public_key_to_der()
            .expect("OpenSSL failed to encode a public key it holds");
        hex(&openssl::sha::sha256(&der))
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.key.public_eq(&other.key)
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// Length of a [`SymmetricKey`] in bytes (AES-256).
pub const SYMMETRIC_KEY_BYTES: usize = 32;

/// A 256-bit AES key. Its `Debug` output does not show the key.
#[derive(Clone)]
pub struct SymmetricKey([u8; SYMMETRIC_KEY_BYTES]);

impl SymmetricKey {
    /// A fresh random key from OpenSSL's CSPRNG.
    pub fn generate() -> SymmetricKey {
        let mut bytes = [0u8; SYMMETRIC_KEY_BYTES];
        openssl::rand::rand_bytes(&mut bytes).expect("OpenSSL random generator failed");
        SymmetricKey(bytes)
    }

    /// A key from its 32 raw bytes (e.g. a file key received inside a message);
    /// [`E2eError::Malformed`] for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Result<SymmetricKey, E2eError> {
        let bytes = bytes.try_into().map_err(|_| E2eError::Malformed)?;
        Ok(SymmetricKey(bytes))
    }

    /// The raw key bytes, for sending the key inside an encrypted message.
    pub fn as_bytes(&self) -> &[u8; SYMMETRIC_KEY_BYTES] {
        &self.0
    }
}

/// Compares in constant time.
impl PartialEq for SymmetricKey {
    fn eq(&self, other: &SymmetricKey) -> bool {
        openssl::memcmp::eq(&self.0, &other.0)
    }
}

impl Eq for SymmetricKey {}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

/// Encrypts `key` to `recipient` with RSA-OAEP (SHA-256 for the OAEP digest and MGF1).
pub fn wrap_key(recipient: &PublicKey, key: &SymmetricKey) -> Result<Vec<u8>, E2eError> {
    let mut encrypter = Encrypter::new(&recipient.key).map_err(key_err)?;
    encrypter
        .set_rsa_padding(Padding::PKCS1_OAEP)
        .and_then(|()| encrypter.set_rsa_oaep_md(MessageDigest::sha256()))
        .and_then(|()| encrypter.set_rsa_mgf1_md(MessageDigest::sha256()))
        .map_err(key_err)?;
    let mut wrapped = vec![0u8; encrypter.encrypt_len(&key.0).map_err(key_err)?];
    let len = encrypter.encrypt(&key.0, &mut wrapped).map_err(key_err)?;
    wrapped.truncate(len);
    Ok(wrapped)
}

/// Decrypts a key wrapped by [`wrap_key`]; [`E2eError::Undecryptable`] if it was not
/// wrapped for `keys` or is not a 32-byte key.
pub fn unwrap_key(keys: &UserKeys, wrapped: &[u8]) -> Result<SymmetricKey, E2eError> {
    let mut decrypter = Decrypter::new(&keys.key).map_err(key_err)?;
    decrypter
        .set_rsa_padding(Padding::PKCS1_OAEP)
        .and_then(|()| decrypter.set_rsa_oaep_md(MessageDigest::sha256()))
        .and_then(|()| decrypter.set_rsa_mgf1_md(MessageDigest::sha256()))
        .map_err(key_err)?;
    let mut plain = vec![0u8; decrypter.decrypt_len(wrapped).map_err(key_err)?];
    let len = decrypter
        .decrypt(wrapped, &mut plain)
        .map_err(|_| E2eError::Undecryptable)?;
    let key = plain
        .get(..len)
        .ok_or(E2eError::Undecryptable)
        .and_then(|bytes| SymmetricKey::from_bytes(bytes).map_err(|_| E2eError::Undecryptable));
    plain.fill(0);
    key
}

fn pss_signer(keys: &UserKeys) -> Result<Signer<'_>, openssl::error::ErrorStack> {
    let mut signer = Signer::new(MessageDigest::sha256(), &keys.key)?;
    signer.set_rsa_padding(Padding::PKCS1_PSS)?;
    signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
    signer.set_rsa_mgf1_md(MessageDigest::sha256())?;
    Ok(signer)
}

fn pss_verifier(key: &PublicKey) -> Result<Verifier<'_>, openssl::error::ErrorStack> {
    let mut verifier = Verifier::new(MessageDigest::sha256(), &key.key)?;
    verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
    verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
    verifier.set_rsa_mgf1_md(MessageDigest::sha256())?;
    Ok(verifier)
}

/// Signs `msg` with RSA-PSS (SHA-256, MGF1-SHA-256, salt as long as the digest).
pub fn sign(keys: &UserKeys, msg: &[u8]) -> Vec<u8> {
    pss_signer(keys)
        .and_then(|mut signer| signer.sign_oneshot_to_vec(msg))
        .expect("OpenSSL failed to sign with a validated RSA key")
}

/// Whether `sig` is a valid [`sign`] signature of `msg` under `key`. Never panics.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    pss_verifier(key)
        .and_then(|mut verifier| verifier.verify_oneshot(sig, msg))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::test_keys::users;

    #[test]
    fn pem_round_trip_with_standard_headers() {
        let alice = &users()[0];
        let private = alice.private_pem();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(private.trim_end().ends_with("-----END PRIVATE KEY-----"));
        let public = alice.public_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(public.trim_end().ends_with("-----END PUBLIC KEY-----"));

        let reloaded = UserKeys::from_private_pem(&private).unwrap();
        assert_eq!(reloaded.public(), alice.public());
        assert_eq!(reloaded.private_pem(), private);
        let public_key = PublicKey::from_pem(&public).unwrap();
        assert_eq!(public_key, alice.public());
        assert_eq!(public_key.to_pem(), public);
        assert_ne!(public_key, users()[1].public());
    }

    #[test]
    fn fingerprint_is_sha256_of_the_spki_der() {
        let public = users()[0].public();
        let fingerprint = public.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        let der = public.key.public_key_to_der().unwrap();
        assert_eq!(fingerprint, hex(&openssl::sha::sha256(&der)));
        assert_ne!(fingerprint, users()[1].public().fingerprint());
    }

    #[test]
    fn refuses_small_non_rsa_and_garbage_keys() {
        let small = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let small_public = String::from_utf8(small.public_key_to_pem().unwrap()).unwrap();
        assert!(matches!(
            PublicKey::from_pem(&small_public),
            Err(E2eError::Key(_))
        ));
        let small_private = String::from_utf8(small.private_key_to_pem_pkcs8().unwrap()).unwrap();
        assert!(matches!(
            UserKeys::from_private_pem(&small_private),
            Err(E2eError::Key(_))
        ));

        let ed = PKey::generate_ed25519().unwrap();
        let ed_public = String::from_utf8(ed.public_key_to_pem().unwrap()).unwrap();
        assert!(matches!(
            PublicKey::from_pem(&ed_public),
            Err(E2eError::Key(_))
        ));
        let ed_private = String::from_utf8(ed.private_key_to_pem_pkcs8().unwrap()).unwrap();
        assert!(matches!(
            UserKeys::from_private_pem(&ed_private),
            Err(E2eError::Key(_))
        ));

        for garbage in [
            "",
            "garbage",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(PublicKey::from_pem(garbage).is_err());
            assert!(UserKeys::from_private_pem(garbage).is_err());
        }
        // A public key is not a private key, and vice versa.
        assert!(UserKeys::from_private_pem(&users()[0].public_pem()).is_err());
    }

    #[test]
    fn encrypted_private_pem_is_refused_without_prompting() {
        let encrypted = users()[0]
            .key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
            .unwrap();
        let encrypted = String::from_utf8(encrypted).unwrap();
        assert!(encrypted.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(matches!(
            UserKeys::from_private_pem(&encrypted),
            Err(E2eError::Key(_))
        ));
    }

    #[test]
    fn wrap_and_unwrap() {
        let [alice, bob, ..] = users();
        let key = SymmetricKey::generate();
        let wrapped = wrap_key(&bob.public(), &key).unwrap();
        assert_eq!(wrapped.len(), 256);
        assert_eq!(unwrap_key(bob, &wrapped).unwrap(), key);
        assert_eq!(unwrap_key(alice, &wrapped), Err(E2eError::Undecryptable));
        let mut flipped = wrapped.clone();
        flipped[100] ^= 1;
        assert_eq!(unwrap_key(bob, &flipped), Err(E2eError::Undecryptable));
        assert!(unwrap_key(bob, &wrapped[..255]).is_err());
        assert!(unwrap_key(bob, &[]).is_err());
        assert!(unwrap_key(bob, &[0u8; 1000]).is_err());
    }

    #[test]
    fn sign_and_verify() {
        let [alice, bob, ..] = users();
        let sig = sign(alice, b"hello");
        assert!(verify(&alice.public(), b"hello", &sig));
        assert!(!verify(&alice.public(), b"hellO", &sig));
        assert!(!verify(&bob.public(), b"hello", &sig));
        let mut flipped = sig.clone();
        flipped[0] ^= 0x80;
        assert!(!verify(&alice.public(), b"hello", &flipped));
        assert!(!verify(&alice.public(), b"hello", &sig[..100]));
        assert!(!verify(&alice.public(), b"hello", &[]));
        assert_ne!(sign(alice, b"hello"), sig, "PSS signatures are randomized");
    }

    #[test]
    fn symmetric_key_debug_is_redacted() {
        let key = SymmetricKey::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert_eq!(SymmetricKey::from_bytes(&[0; 31]), Err(E2eError::Malformed));
        assert_ne!(SymmetricKey::generate(), SymmetricKey::generate());
    }
}
