//! Requests about end-to-end keys and passwords. The server stores public keys, sealed
//! backups and wrapped conversation keys, checks their shape and size, and opens none
//! of them: it holds no key that could.

use crate::passwords;
use crate::session::{refuse, store_refusal, Refusal, MAX_PASSWORD};
use crate::state::ServerState;
use fastchat_common::e2e::{ConversationKeyRecord, PublicKey};
use fastchat_common::names::is_valid_name;
use fastchat_common::protocol::client::OkResult;
use fastchat_common::{Blob, ErrorCode};
use fastchat_sql::{ConversationKeyRow, Credentials, StoreError};

/// Longest key backup accepted (a sealed PKCS#8 RSA key is about 1.7 KiB of base64).
const MAX_BACKUP: usize = 16 * 1024;
/// Longest public key PEM accepted.
const MAX_PUBLIC_KEY: usize = 8 * 1024;
/// Longest wrapped key or signature accepted, in base64 characters.
const MAX_RECORD_FIELD: usize = 4 * 1024;
/// Longest key id accepted.
const MAX_KEY_ID: usize = 64;

/// Checks a signup's public key: a PEM RSA key of at least 2048 bits.
pub fn check_public_key(pem: &str) -> Result<(), Refusal> {
    if pem.len() > MAX_PUBLIC_KEY {
        return refuse(ErrorCode::BadRequest, "public_key is too long");
    }
    PublicKey::from_pem(pem)
        .map(|_| ())
        .map_err(|e| (ErrorCode::BadRequest, format!("public_key: {e}")))
}

/// Checks the shape of a sealed key backup (its contents are opaque to us).
pub fn check_backup(backup: &str) -> Result<(), Refusal> {
    if backup.len() > MAX_BACKUP || !backup.starts_with("fcbackup1$") {
        return refuse(
            ErrorCode::BadRequest,
            "key_backup must be a fcbackup1 text of at most 16 KiB",
        );
    }
    Ok(())
}

/// `passwd`: checks the old password, then stores the new hash and the re-sealed backup
/// together, so the old password opens nothing afterwards.
pub fn change_password(
    state: &ServerState,
    user: &str,
    old: &str,
    new: &str,
    key_backup: &str,
) -> Result<(), Refusal> {
    if new.is_empty() || new.len() > MAX_PASSWORD {
        return refuse(ErrorCode::BadPassword, "a password is 1-1024 bytes");
    }
    check_backup(key_backup)?;
    let current = {
        let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
        fastchat_sql::account(&mut db, user)
            .map_err(store_refusal)?
            .ok_or((ErrorCode::UnknownUser, "the account is gone".to_string()))?
            .credentials
    };
    // The two scrypts run (or wait their turn) holding no database connection.
    if old.len() > MAX_PASSWORD || !passwords::verify(old, &current.password_hash)? {
        return refuse(ErrorCode::BadPassword, "the old password is wrong");
    }
    let new = Credentials {
        password_hash: passwords::hash(new)?,
        key_backup: key_backup.to_string(),
    };
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    match fastchat_sql::change_password(&mut db, user, &current.password_hash, &new) {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => refuse(
            ErrorCode::BadPassword,
            "the password was changed meanwhile; try again",
        ),
        Err(e) => Err(store_refusal(e)),
    }
}

/// `public_key`: a user's public key.
pub fn public_key(state: &ServerState, user: &str) -> Result<OkResult, Refusal> {
    if !is_valid_name(user) {
        return refuse(ErrorCode::UnknownUser, format!("no user {user:?}"));
    }
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    match fastchat_sql::public_key(&mut db, user).map_err(store_refusal)? {
        Some(pem) if !pem.is_empty() => Ok(OkResult::PublicKey {
            user: user.to_string(),
            public_key: pem,
        }),
        _ => refuse(ErrorCode::UnknownUser, format!("no user {user:?}")),
    }
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn to_row(record: &ConversationKeyRecord) -> ConversationKeyRow {
    ConversationKeyRow {
        user_a: record.user_a.clone(),
        user_b: record.user_b.clone(),
        key_id: record.key_id.clone(),
        maker: record.maker.clone(),
        wrapped_a: record.wrapped_a.as_base64().to_string(),
        wrapped_b: record.wrapped_b.as_base64().to_string(),
        signature: record.signature.as_base64().to_string(),
    }
}

fn from_row(row: ConversationKeyRow) -> ConversationKeyRecord {
    ConversationKeyRecord {
        key_id: row.key_id,
        maker: row.maker,
        user_a: row.user_a,
        user_b: row.user_b,
        wrapped_a: Blob::from_base64(row.wrapped_a),
        wrapped_b: Blob::from_base64(row.wrapped_b),
        signature: Blob::from_base64(row.signature),
    }
}

/// Checks that an offer is `me`'s, for the pair (me, peer), with fields of sane size.
/// The signature and the wrapped keys are the recipients' to check.
fn check_offer(me: &str, peer: &str, offer: &ConversationKeyRecord) -> Result<(), Refusal> {
    let (a, b) = ordered(me, peer);
    let bad = |why: &str| refuse(ErrorCode::BadRequest, format!("offer: {why}"));
    if offer.user_a != a || offer.user_b != b {
        return bad("user_a and user_b must be the two users, in order");
    }
    if offer.maker != me {
        return bad("the maker must be the user offering it");
    }
    if offer.key_id.is_empty()
        || offer.key_id.len() > MAX_KEY_ID
        || !offer.key_id.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return bad("key_id must be 1-64 hex digits");
    }
    for field in [&offer.wrapped_a, &offer.wrapped_b, &offer.signature] {
        if field.as_base64().is_empty() || field.as_base64().len() > MAX_RECORD_FIELD {
            return bad("wrapped keys and signature must be 1-4096 base64 characters");
        }
    }
    Ok(())
}

/// `conversation_key`: the record shared by `me` and `peer` (a given one, or the
/// current one), storing `offer` first when the conversation has none.
pub fn conversation_key(
    state: &ServerState,
    me: &str,
    peer: &str,
    key_id: Option<&str>,
    offer: Option<&ConversationKeyRecord>,
) -> Result<OkResult, Refusal> {
    if !is_valid_name(peer) {
        return refuse(ErrorCode::UnknownUser, format!("no user {peer:?}"));
    }
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    if !fastchat_sql::user_exists(&mut db, peer).map_err(store_refusal)? {
        return refuse(ErrorCode::UnknownUser, format!("no user {peer:?}"));
    }
    let (a, b) = ordered(me, peer);
    let row = match offer {
        Some(offer) => {
            check_offer(me, peer, offer)?;
            Some(
                fastchat_sql::offer_conversation_key(&mut db, &to_row(offer))
                    .map_err(store_refusal)?,
            )
        }
        None => fastchat_sql::conversation_key(&mut *db, a, b, key_id).map_err(store_refusal)?,
    };
    match row {
        Some(row) => Ok(OkResult::ConversationKey {
            record: from_row(row),
        }),
        None => refuse(
            ErrorCode::UnknownKey,
            format!("no conversation key with {peer} yet"),
        ),
    }
}
