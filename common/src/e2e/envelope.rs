//! Message envelopes: the binary message bodies of end-to-end encrypted messages.
//!
//! Layout (version 1):
//!
//! ```text
//! direct: 0x01 0x01 len(key_id):u8 key_id   nonce(12) ciphertext tag(16)
//! group:  0x01 0x02 len(group):u8  group  epoch:u64be  nonce(12) ciphertext tag(16)
//! ```
//!
//! The header says which key to fetch; the AES-GCM associated data binds a domain tag, the
//! kind, the key (id, or group and epoch), the sender, the recipient of a direct message
//! and the message id, so a body replayed under another id, to another recipient or as if
//! from another sender does not open.

use super::aead::{open, seal_into, SEAL_OVERHEAD};
use super::keys::SymmetricKey;
use super::wire::{put_short_str, Reader, Transcript};
use super::E2eError;

const VERSION: u8 = 1;
const KIND_DIRECT: u8 = 1;
const KIND_GROUP: u8 = 2;
const AD_DOMAIN: &str = "fastchat-e2e/message/1";

/// Which key a message was sealed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// A direct message, under the conversation key with this id.
    Direct {
        /// The `key_id` of a [`super::ConversationKeyRecord`].
        key_id: String,
    },
    /// A group message, under the key of one epoch of the group.
    Group {
        /// The group's name.
        group: String,
        /// The epoch whose key sealed the message.
        epoch: u64,
    },
}

/// A parsed message body, not yet decrypted: read [`Envelope::kind`], fetch that key, then
/// call [`Envelope::open_direct`] or [`Envelope::open_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    kind: EnvelopeKind,
    sealed: &'a [u8],
}

fn direct_ad(key_id: &str, from: &str, to: &str, msg_id: &str) -> Vec<u8> {
    let mut transcript = Transcript::new(AD_DOMAIN);
    transcript.number(u64::from(KIND_DIRECT));
    for field in [key_id, from, to, msg_id] {
        transcript.field(field.as_bytes());
    }
    transcript.into_bytes()
}

fn group_ad(group: &str, epoch: u64, from: &str, msg_id: &str) -> Vec<u8> {
    let mut transcript = Transcript::new(AD_DOMAIN);
    transcript.number(u64::from(KIND_GROUP));
    transcript.field(group.as_bytes()).number(epoch);
    transcript.field(from.as_bytes()).field(msg_id.as_bytes());
    transcript.into_bytes()
}

/// Seals a direct message from `from` to `to` under the conversation key `key` (named
/// `key_id`). [`E2eError::Invalid`] only if `key_id` is over 255 bytes.
pub fn seal_direct(
    key: &SymmetricKey,
    key_id: &str,
    from: &str,
    to: &str,
    msg_id: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, E2eError> {
    // One allocation: the header, then the sealed message after it (and OpenSSL's
    // block of slack: it sizes its output for one more block than it writes).
    let mut body = Vec::with_capacity(3 + key_id.len() + SEAL_OVERHEAD + plaintext.len() + 16);
    body.extend_from_slice(&[VERSION, KIND_DIRECT]);
    put_short_str(&mut body, "key id", key_id)?;
    let ad = direct_ad(key_id, from, to, msg_id);
    seal_into(key, &ad, plaintext, &mut body);
    Ok(body)
}

/// Seals a message from `from` to `group` under the key of `epoch`. [`E2eError::Invalid`]
/// only if the group name is over 255 bytes.
pub fn seal_group(
    key: &SymmetricKey,
    group: &str,
    epoch: u64,
    from: &str,
    msg_id: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let mut body = Vec::with_capacity(11 + group.len() + SEAL_OVERHEAD + plaintext.len() + 16);
    body.extend_from_slice(&[VERSION, KIND_GROUP]);
    put_short_str(&mut body, "group name", group)?;
    body.extend_from_slice(&epoch.to_be_bytes());
    let ad = group_ad(group, epoch, from, msg_id);
    seal_into(key, &ad, plaintext, &mut body);
    Ok(body)
}

impl<'a> Envelope<'a> {
    /// Parses a message body; [`E2eError::Malformed`] if it is not a version 1 envelope
    /// or is too short to hold a sealed message.
    pub fn parse(body: &'a [u8]) -> Result<Envelope<'a>, E2eError> {
        let mut reader = Reader::new(body);
        if reader.u8()? != VERSION {
            return Err(E2eError::Malformed);
        }
        let kind = match reader.u8()? {
            KIND_DIRECT => EnvelopeKind::Direct {
                key_id: reader.short_str()?.to_string(),
            },
            KIND_GROUP => EnvelopeKind::Group {
                group: reader.short_str()?.to_string(),
                epoch: reader.u64()?,
            },
            _ => return Err(E2eError::Malformed),
        };
        let sealed = reader.rest();
        if sealed.len() < SEAL_OVERHEAD {
            return Err(E2eError::Malformed);
        }
        Ok(Envelope { kind, sealed })
    }

    /// Which key opens this message.
    pub fn kind(&self) -> &EnvelopeKind {
        &self.kind
    }

    /// Decrypts a direct message, given the conversation key named by the envelope and the
    /// sender, recipient and message id as the server delivered them. The caller should
    /// only have looked the key up if its record names both `from` and `to`.
    /// [`E2eError::Malformed`] if this is a group message; [`E2eError::Undecryptable`] if
    /// anything does not match.
    pub fn open_direct(
        &self,
        key: &SymmetricKey,
        from: &str,
        to: &str,
        msg_id: &str,
    ) -> Result<Vec<u8>, E2eError> {
        let EnvelopeKind::Direct { key_id } = &self.kind else {
            return Err(E2eError::Malformed);
        };
        open(key, &direct_ad(key_id, from, to, msg_id), self.sealed)
    }

    /// Decrypts a group message, given the key of the envelope's epoch and the group,
    /// sender and message id as the server delivered them (a message moved to another
    /// group does not open). [`E2eError::Malformed`] if this is a direct message;
    /// [`E2eError::Undecryptable`] if anything does not match.
    pub fn open_group(
        &self,
        key: &SymmetricKey,
        group: &str,
        from: &str,
        msg_id: &str,
    ) -> Result<Vec<u8>, E2eError> {
        let EnvelopeKind::Group {
            group: sealed_for,
            epoch,
        } = &self.kind
        else {
            return Err(E2eError::Malformed);
        };
        if sealed_for != group {
            return Err(E2eError::Undecryptable);
        }
        open(key, &group_ad(group, *epoch, from, msg_id), self.sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "00112233445566778899aabbccddeeff";

    fn open_direct(
        body: &[u8],
        key: &SymmetricKey,
        from: &str,
        to: &str,
        id: &str,
    ) -> Result<Vec<u8>, E2eError> {
        Envelope::parse(body)?.open_direct(key, from, to, id)
    }

    fn open_group(
        body: &[u8],
        key: &SymmetricKey,
        group: &str,
        from: &str,
        id: &str,
    ) -> Result<Vec<u8>, E2eError> {
        Envelope::parse(body)?.open_group(key, group, from, id)
    }

    #[test]
    fn direct_round_trip() {
        let key = SymmetricKey::generate();
        let body = seal_direct(&key, KEY_ID, "alice", "bob", "m1", b"hi bob").unwrap();
        assert_eq!(
            body.len(),
            2 + 1 + KEY_ID.len() + SEAL_OVERHEAD + 6,
            "compact"
        );
        let envelope = Envelope::parse(&body).unwrap();
        assert_eq!(
            envelope.kind(),
            &EnvelopeKind::Direct {
                key_id: KEY_ID.into()
            }
        );
        assert_eq!(
            envelope.open_direct(&key, "alice", "bob", "m1").unwrap(),
            b"hi bob"
        );
        assert_eq!(
            envelope.open_group(&key, "team", "alice", "m1"),
            Err(E2eError::Malformed)
        );
    }

    #[test]
    fn group_round_trip() {
        let key = SymmetricKey::generate();
        let body = seal_group(&key, "team", 7, "alice", "m1", b"hi team").unwrap();
        let envelope = Envelope::parse(&body).unwrap();
        assert_eq!(
            envelope.kind(),
            &EnvelopeKind::Group {
                group: "team".into(),
                epoch: 7
            }
        );
        assert_eq!(
            envelope.open_group(&key, "team", "alice", "m1").unwrap(),
            b"hi team"
        );
        assert_eq!(
            envelope.open_direct(&key, "alice", "team", "m1"),
            Err(E2eError::Malformed)
        );
    }

    #[test]
    fn replays_under_other_names_do_not_open() {
        let key = SymmetricKey::generate();
        let direct = seal_direct(&key, KEY_ID, "alice", "bob", "m1", b"x").unwrap();
        for (from, to, id) in [
            ("alice", "carol", "m1"),
            ("carol", "bob", "m1"),
            ("alice", "bob", "m2"),
            ("bob", "alice", "m1"),
        ] {
            assert_eq!(
                open_direct(&direct, &key, from, to, id),
                Err(E2eError::Undecryptable)
            );
        }
        let group = seal_group(&key, "team", 7, "alice", "m1", b"x").unwrap();
        for (group_name, from, id) in [
            ("other", "alice", "m1"),
            ("team", "carol", "m1"),
            ("team", "alice", "m2"),
        ] {
            assert_eq!(
                open_group(&group, &key, group_name, from, id),
                Err(E2eError::Undecryptable)
            );
        }
        let other_epoch = seal_group(&key, "team", 8, "alice", "m1", b"x").unwrap();
        let mut relabelled = group.clone();
        relabelled[2 + 1 + 4..2 + 1 + 4 + 8].copy_from_slice(&8u64.to_be_bytes());
        assert_ne!(relabelled, other_epoch);
        assert_eq!(
            open_group(&relabelled, &key, "team", "alice", "m1"),
            Err(E2eError::Undecryptable)
        );
        assert_eq!(
            open_direct(&direct, &SymmetricKey::generate(), "alice", "bob", "m1"),
            Err(E2eError::Undecryptable)
        );
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_an_error() {
        let key = SymmetricKey::generate();
        let direct = seal_direct(&key, KEY_ID, "alice", "bob", "m1", b"hello").unwrap();
        let group = seal_group(&key, "team", 1, "alice", "m1", b"hello").unwrap();
        for i in 0..direct.len() * 8 {
            let mut flipped = direct.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                open_direct(&flipped, &key, "alice", "bob", "m1").is_err(),
                "bit {i}"
            );
        }
        for i in 0..group.len() * 8 {
            let mut flipped = group.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                open_group(&flipped, &key, "team", "alice", "m1").is_err(),
                "bit {i}"
            );
        }
        for len in 0..direct.len() {
            assert!(open_direct(&direct[..len], &key, "alice", "bob", "m1").is_err());
        }
        for len in 0..group.len() {
            assert!(open_group(&group[..len], &key, "team", "alice", "m1").is_err());
        }
        let mut extended = direct.clone();
        extended.push(0);
        assert!(open_direct(&extended, &key, "alice", "bob", "m1").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let key = SymmetricKey::generate();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut tagged = garbage.clone();
            if tagged.len() >= 2 {
                tagged[0] = VERSION;
                tagged[1] = 1 + (len % 2) as u8;
            }
            for body in [&garbage, &tagged] {
                if let Ok(envelope) = Envelope::parse(body) {
                    assert!(envelope.open_direct(&key, "a", "b", "m").is_err());
                    assert!(envelope.open_group(&key, "g", "a", "m").is_err());
                }
            }
        }
        assert_eq!(Envelope::parse(&[2, 1, 0]), Err(E2eError::Malformed));
        assert_eq!(Envelope::parse(&[1, 3, 0]), Err(E2eError::Malformed));
        assert_eq!(
            Envelope::parse(&[1, 1, 255, b'x']),
            Err(E2eError::Malformed)
        );
    }

    #[test]
    fn names_too_long_for_the_header_are_refused() {
        let key = SymmetricKey::generate();
        let long = "x".repeat(256);
        assert!(matches!(
            seal_direct(&key, &long, "a", "b", "m", b""),
            Err(E2eError::Invalid(_))
        ));
        assert!(matches!(
            seal_group(&key, &long, 1, "a", "m", b""),
            Err(E2eError::Invalid(_))
        ));
        let longest = "x".repeat(255);
        let body = seal_direct(&key, &longest, "a", "b", "m", b"ok").unwrap();
        assert_eq!(open_direct(&body, &key, "a", "b", "m").unwrap(), b"ok");
    }
}
