//! Signed records that hand a fresh symmetric key to the people who may read with it:
//! one per two-person conversation, and one per group epoch (a new epoch, with a new key,
//! whenever the membership changes, so that removed members cannot read what follows).
//!
//! The server stores and relays these records; it cannot read the keys, and cannot alter
//! a record without breaking the maker's signature. Which public key belongs to the maker,
//! and whether the maker was allowed to make the record (a member of the group at that
//! point), are for the caller to decide.

use super::keys::{sign, unwrap_key, verify, wrap_key, PublicKey, SymmetricKey, UserKeys};
use super::wire::Transcript;
use super::E2eError;
use crate::ids::random_hex;
use crate::Blob;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const CONVERSATION_DOMAIN: &str = "fastchat-e2e/conversation-key/1";
const GROUP_DOMAIN: &str = "fastchat-e2e/group-key/1";
/// Random bytes in a conversation key id (it is written as twice as many hex digits).
const KEY_ID_BYTES: usize = 16;

/// The key of a conversation between `user_a` and `user_b`, wrapped for each of them and
/// signed by `maker` (one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationKeyRecord {
    /// Random hex naming this key; direct messages sealed under it carry it.
    pub key_id: String,
    /// Who made and signed the record: `user_a` or `user_b`.
    pub maker: String,
    /// The lesser of the two names (`user_a <= user_b`; equal when a user talks to
    /// themself).
    pub user_a: String,
    /// The greater of the two names.
    pub user_b: String,
    /// The key, RSA-OAEP-wrapped for `user_a`.
    pub wrapped_a: Blob,
    /// The key, RSA-OAEP-wrapped for `user_b`.
    pub wrapped_b: Blob,
    /// The maker's RSA-PSS signature over every other field.
    pub signature: Blob,
}

/// What the maker of a conversation key signs.
fn conversation_signed_bytes(
    key_id: &str,
    maker: &str,
    user_a: &str,
    user_b: &str,
    wrapped_a: &[u8],
    wrapped_b: &[u8],
) -> Vec<u8> {
    let mut transcript = Transcript::new(CONVERSATION_DOMAIN);
    for field in [
        key_id.as_bytes(),
        maker.as_bytes(),
        user_a.as_bytes(),
        user_b.as_bytes(),
    ] {
        transcript.field(field);
    }
    transcript.field(wrapped_a).field(wrapped_b);
    transcript.into_bytes()
}

fn decode(blob: &Blob) -> Result<Vec<u8>, E2eError> {
    blob.to_bytes().ok_or(E2eError::Malformed)
}

/// Makes a fresh key for the conversation between `me` and `peer`, wrapped for both and
/// signed with `my_keys`. Fails only if `peer_public` cannot be encrypted to.
pub fn make_conversation_key(
    me: &str,
    my_keys: &UserKeys,
    peer: &str,
    peer_public: &PublicKey,
) -> Result<(SymmetricKey, ConversationKeyRecord), E2eError> {
    let key = SymmetricKey::generate();
    let key_id = random_hex(KEY_ID_BYTES);
    let my_public = my_keys.public();
    let public_of = |user: &str| if user == me { &my_public } else { peer_public };
    let (user_a, user_b) = if me <= peer { (me, peer) } else { (peer, me) };
    let wrapped_a = wrap_key(public_of(user_a), &key)?;
    let wrapped_b = wrap_key(public_of(user_b), &key)?;
    let signed = conversation_signed_bytes(&key_id, me, user_a, user_b, &wrapped_a, &wrapped_b);
    let record = ConversationKeyRecord {
        key_id,
        maker: me.to_string(),
        user_a: user_a.to_string(),
        user_b: user_b.to_string(),
        wrapped_a: Blob::from_bytes(&wrapped_a),
        wrapped_b: Blob::from_bytes(&wrapped_b),
        signature: Blob::from_bytes(&sign(my_keys, &signed)),
    };
    Ok((key, record))
}

/// Opens `me`'s copy of a conversation key, after checking that `me` is one of the two
/// users ([`E2eError::NotARecipient`]), that the maker is the other or `me`, and that
/// `maker_public` signed the record ([`E2eError::BadSignature`]). The caller supplies the
/// key it trusts for `record.maker`.
pub fn open_conversation_key(
    record: &ConversationKeyRecord,
    me: &str,
    my_keys: &UserKeys,
    maker_public: &PublicKey,
) -> Result<SymmetricKey, E2eError> {
    let ConversationKeyRecord {
        key_id,
        maker,
        user_a,
        user_b,
        ..
    } = record;
    if user_a > user_b {
        return Err(E2eError::Malformed);
    }
    if me != user_a && me != user_b {
        return Err(E2eError::NotARecipient);
    }
    if maker != user_a && maker != user_b {
        return Err(E2eError::BadSignature);
    }
    let wrapped_a = decode(&record.wrapped_a)?;
    let wrapped_b = decode(&record.wrapped_b)?;
    let signature = decode(&record.signature)?;
    let signed = conversation_signed_bytes(key_id, maker, user_a, user_b, &wrapped_a, &wrapped_b);
    if !verify(maker_public, &signed, &signature) {
        return Err(E2eError::BadSignature);
    }
    let mine = if me == user_a { &wrapped_a } else { &wrapped_b };
    unwrap_key(my_keys, mine)
}

/// One member's copy of a group epoch key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedFor {
    /// The member.
    pub user: String,
    /// The key, RSA-OAEP-wrapped for the member.
    pub key: Blob,
}

/// The key of one epoch of a group, wrapped for every member of that epoch and signed by
/// `maker` (one of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKeyRecord {
    /// The group's name.
    pub group: String,
    /// The epoch: it grows by one each time the membership changes.
    pub epoch: u64,
    /// Who made and signed the record; always among the recipients.
    pub maker: String,
    /// One copy per member, sorted by user name.
    pub wrapped: Vec<WrappedFor>,
    /// The maker's RSA-PSS signature over every other field.
    pub signature: Blob,
}

/// What the maker of a group key signs; `copies` maps each user to their wrapped key, so
/// the encoding is in user order whatever order the record lists them in.
fn group_signed_bytes(
    group: &str,
    epoch: u64,
    maker: &str,
    copies: &BTreeMap<&str, Vec<u8>>,
) -> Vec<u8> {
    let mut transcript = Transcript::new(GROUP_DOMAIN);
    transcript
        .field(group.as_bytes())
        .number(epoch)
        .field(maker.as_bytes());
    transcript.number(copies.len() as u64);
    for (user, wrapped) in copies {
        transcript.field(user.as_bytes()).field(wrapped);
    }
    transcript.into_bytes()
}

/// Makes a fresh key for `epoch` of `group`, wrapped for every member listed (which must
/// include `me`, once each) and signed with `my_keys`.
pub fn make_group_key(
    me: &str,
    my_keys: &UserKeys,
    group: &str,
    epoch: u64,
    members: &[(String, PublicKey)],
) -> Result<(SymmetricKey, GroupKeyRecord), E2eError> {
    if !members.iter().any(|(user, _)| user == me) {
        return Err(E2eError::Invalid(
            "the maker must be one of the members".into(),
        ));
    }
    let key = SymmetricKey::generate();
    let mut copies = BTreeMap::new();
    for (user, public) in members {
        let wrapped = wrap_key(public, &key)?;
        if copies.insert(user.as_str(), wrapped).is_some() {
            return Err(E2eError::Invalid(format!("member {user} is listed twice")));
        }
    }
    let signed = group_signed_bytes(group, epoch, me, &copies);
    let record = GroupKeyRecord {
        group: group.to_string(),
        epoch,
        maker: me.to_string(),
        wrapped: copies
            .iter()
            .map(|(user, wrapped)| WrappedFor {
                user: user.to_string(),
                key: Blob::from_bytes(wrapped),
            })
            .collect(),
        signature: Blob::from_bytes(&sign(my_keys, &signed)),
    };
    Ok((key, record))
}

/// Opens `me`'s copy of a group epoch key: [`E2eError::NotARecipient`] if the record has
/// none, [`E2eError::BadSignature`] unless `maker_public` signed it and the maker is a
/// recipient, [`E2eError::Malformed`] if a user appears twice. The caller supplies the key
/// it trusts for `record.maker`, and checks that the maker was a member at that epoch.
pub fn open_group_key(
    record: &GroupKeyRecord,
    me: &str,
    my_keys: &UserKeys,
    maker_public: &PublicKey,
) -> Result<SymmetricKey, E2eError> {
    let mut copies = BTreeMap::new();
    for WrappedFor { user, key } in &record.wrapped {
        if copies.insert(user.as_str(), decode(key)?).is_some() {
            return Err(E2eError::Malformed);
        }
    }
    let mine = copies.get(me).ok_or(E2eError::NotARecipient)?;
    if !copies.contains_key(record.maker.as_str()) {
        return Err(E2eError::BadSignature);
    }
    let signature = decode(&record.signature)?;
    let signed = group_signed_bytes(&record.group, record.epoch, &record.maker, &copies);
    if !verify(maker_public, &signed, &signature) {
        return Err(E2eError::BadSignature);
    }
    unwrap_key(my_keys, mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::test_keys::users;
    use crate::e2e::{open, seal};

    #[test]
    fn conversation_key_opens_for_both_users_only() {
        let [alice, bob, carol, _] = users();
        let (key, record) = make_conversation_key("bob", bob, "alice", &alice.public()).unwrap();
        assert_eq!(
            (record.user_a.as_str(), record.user_b.as_str()),
            ("alice", "bob")
        );
        assert_eq!(record.maker, "bob");
        assert_eq!(record.key_id.len(), 32);

        let json = serde_json::to_string(&record).unwrap();
        let record: ConversationKeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(
            open_conversation_key(&record, "alice", alice, &bob.public()).unwrap(),
            key
        );
        assert_eq!(
            open_conversation_key(&record, "bob", bob, &bob.public()).unwrap(),
            key
        );

        assert_eq!(
            open_conversation_key(&record, "carol", carol, &bob.public()),
            Err(E2eError::NotARecipient)
        );
        // Carol claiming to be Alice still cannot unwrap Alice's copy.
        assert_eq!(
            open_conversation_key(&record, "alice", carol, &bob.public()),
            Err(E2eError::Undecryptable)
        );
    }

    #[test]
    fn conversation_key_with_bad_signature_is_refused() {
        let [alice, bob, carol, mallory] = users();
        let (_, record) = make_conversation_key("alice", alice, "bob", &bob.public()).unwrap();
        // Signed by someone else than the key the caller trusts for the maker.
        assert_eq!(
            open_conversation_key(&record, "bob", bob, &mallory.public()),
            Err(E2eError::BadSignature)
        );
        // A swapped copy, key id or maker breaks the signature.
        let mut swapped = record.clone();
        let carols = wrap_key(&carol.public(), &SymmetricKey::generate()).unwrap();
        swapped.wrapped_b = Blob::from_bytes(&carols);
        let mut renamed = record.clone();
        renamed.key_id = "0".repeat(32);
        let mut claimed = record.clone();
        claimed.maker = "bob".into();
        for forged in [swapped, renamed, claimed] {
            assert_eq!(
                open_conversation_key(&forged, "bob", bob, &alice.public()),
                Err(E2eError::BadSignature)
            );
        }
        // A maker outside the conversation, and unsorted or undecodable fields.
        let mut outsider = record.clone();
        outsider.maker = "mallory".into();
        assert_eq!(
            open_conversation_key(&outsider, "bob", bob, &mallory.public()),
            Err(E2eError::BadSignature)
        );
        let mut unsorted = record.clone();
        std::mem::swap(&mut unsorted.user_a, &mut unsorted.user_b);
        assert_eq!(
            open_conversation_key(&unsorted, "bob", bob, &alice.public()),
            Err(E2eError::Malformed)
        );
        let mut garbled = record.clone();
        garbled.signature = Blob::from_base64("%%%".into());
        assert_eq!(
            open_conversation_key(&garbled, "bob", bob, &alice.public()),
            Err(E2eError::Malformed)
        );
    }

    #[test]
    fn conversation_with_oneself() {
        let alice = &users()[0];
        let (key, record) =
            make_conversation_key("alice", alice, "alice", &alice.public()).unwrap();
        assert_eq!(record.user_a, record.user_b);
        assert_eq!(
            open_conversation_key(&record, "alice", alice, &alice.public()).unwrap(),
            key
        );
    }

    fn members(names: &[&str]) -> Vec<(String, PublicKey)> {
        let all = ["alice", "bob", "carol", "mallory"];
        names
            .iter()
            .map(|name| {
                let index = all.iter().position(|n| n == name).unwrap();
                (name.to_string(), users()[index].public())
            })
            .collect()
    }

    #[test]
    fn group_key_opens_for_every_member() {
        let [alice, bob, carol, mallory] = users();
        let (key, record) =
            make_group_key("bob", bob, "team", 1, &members(&["carol", "alice", "bob"])).unwrap();
        let listed: Vec<&str> = record.wrapped.iter().map(|w| w.user.as_str()).collect();
        assert_eq!(listed, ["alice", "bob", "carol"]);
        for (name, keys) in [("alice", alice), ("bob", bob), ("carol", carol)] {
            assert_eq!(
                open_group_key(&record, name, keys, &bob.public()).unwrap(),
                key
            );
        }
        assert_eq!(
            open_group_key(&record, "mallory", mallory, &bob.public()),
            Err(E2eError::NotARecipient)
        );

        // The order of the copies in the record does not matter to the signature...
        let mut reordered = record.clone();
        reordered.wrapped.reverse();
        assert_eq!(
            open_group_key(&reordered, "alice", alice, &bob.public()).unwrap(),
            key
        );
        // ...but every field does.
        let mut later = record.clone();
        later.epoch = 2;
        let mut elsewhere = record.clone();
        elsewhere.group = "other".into();
        let mut dropped = record.clone();
        dropped.wrapped.retain(|w| w.user != "carol");
        let mut added = record.clone();
        let extra = wrap_key(&mallory.public(), &key).unwrap();
        added.wrapped.push(WrappedFor {
            user: "mallory".into(),
            key: Blob::from_bytes(&extra),
        });
        for forged in [later, elsewhere, dropped, added] {
            assert_eq!(
                open_group_key(&forged, "alice", alice, &bob.public()),
                Err(E2eError::BadSignature)
            );
        }
        assert_eq!(
            open_group_key(&record, "alice", alice, &mallory.public()),
            Err(E2eError::BadSignature)
        );
        let mut twice = record.clone();
        twice.wrapped.push(record.wrapped[0].clone());
        assert_eq!(
            open_group_key(&twice, "alice", alice, &bob.public()),
            Err(E2eError::Malformed)
        );
    }

    #[test]
    fn make_group_key_checks_its_member_list() {
        let [alice, ..] = users();
        assert!(matches!(
            make_group_key("alice", alice, "team", 1, &members(&["bob"])),
            Err(E2eError::Invalid(_))
        ));
        assert!(matches!(
            make_group_key(
                "alice",
                alice,
                "team",
                1,
                &members(&["alice", "bob", "bob"])
            ),
            Err(E2eError::Invalid(_))
        ));
    }

    #[test]
    fn removed_member_cannot_read_the_next_epoch() {
        let [alice, bob, carol, _] = users();
        let (epoch1, record1) = make_group_key(
            "alice",
            alice,
            "team",
            1,
            &members(&["alice", "bob", "carol"]),
        )
        .unwrap();
        assert_eq!(
            open_group_key(&record1, "carol", carol, &alice.public()).unwrap(),
            epoch1
        );

        // Carol is removed: Alice makes epoch 2 for the remaining members.
        let (epoch2, record2) =
            make_group_key("alice", alice, "team", 2, &members(&["alice", "bob"])).unwrap();
        assert!(record2.wrapped.iter().all(|w| w.user != "carol"));
        let sealed = seal(&epoch2, b"team/2", b"after carol left");
        assert_eq!(
            open_group_key(&record2, "bob", bob, &alice.public()).unwrap(),
            epoch2
        );
        assert_eq!(
            open_group_key(&record2, "carol", carol, &alice.public()),
            Err(E2eError::NotARecipient)
        );
        for copy in &record2.wrapped {
            let wrapped = copy.key.to_bytes().unwrap();
            assert_eq!(unwrap_key(carol, &wrapped), Err(E2eError::Undecryptable));
        }
        // And the key she still holds is not the new one.
        assert_ne!(epoch1, epoch2);
        assert_eq!(
            open(&epoch1, b"team/2", &sealed),
            Err(E2eError::Undecryptable)
        );
    }
}
