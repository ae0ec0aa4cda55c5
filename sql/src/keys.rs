//! Conversation key records: stored and handed out, never opened (the server has no
//! private key to open them with).

use crate::error::StoreError;

/// A conversation key record as stored; the fields mirror
/// `fastchat_common::e2e::ConversationKeyRecord` (wrapped keys and signature in base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationKeyRow {
    /// The lesser user name.
    pub user_a: String,
    /// The greater user name.
    pub user_b: String,
    /// Random hex naming the key.
    pub key_id: String,
    /// Who made and signed it.
    pub maker: String,
    /// The key wrapped for `user_a`.
    pub wrapped_a: String,
    /// The key wrapped for `user_b`.
    pub wrapped_b: String,
    /// The maker's signature.
    pub signature: String,
}

const COLUMNS: &str = "user_a, user_b, key_id, maker, wrapped_a, wrapped_b, signature";

fn from_row(r: &postgres::Row) -> ConversationKeyRow {
    ConversationKeyRow {
        user_a: r.get(0),
        user_b: r.get(1),
        key_id: r.get(2),
        maker: r.get(3),
        wrapped_a: r.get(4),
        wrapped_b: r.get(5),
        signature: r.get(6),
    }
}

/// The record of the conversation between `user_a <= user_b` named `key_id`, or the
/// conversation's current (first) one when `key_id` is `None`.
pub fn conversation_key(
    client: &mut impl postgres::GenericClient,
    user_a: &str,
    user_b: &str,
    key_id: Option<&str>,
) -> Result<Option<ConversationKeyRow>, StoreError> {
    let row = match key_id {
        Some(id) => client.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM conversation_keys \
                 WHERE user_a = $1 AND user_b = $2 AND key_id = $3"
            ),
            &[&user_a, &user_b, &id],
        )?,
        None => client.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM conversation_keys \
                 WHERE user_a = $1 AND user_b = $2 ORDER BY created_at, key_id LIMIT 1"
            ),
            &[&user_a, &user_b],
        )?,
    };
    Ok(row.as_ref().map(from_row))
}

/// Stores `offer` unless its conversation has a key already; returns the conversation's
/// current record (the offer, or the one that was there first). Two offers racing for
/// one conversation are serialized by an advisory lock on the pair.
pub fn offer_conversation_key(
    client: &mut postgres::Client,
    offer: &ConversationKeyRow,
) -> Result<ConversationKeyRow, StoreError> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))",
        &[&offer.user_a, &offer.user_b],
    )?;
    if let Some(existing) = conversation_key(&mut tx, &offer.user_a, &offer.user_b, None)? {
        tx.commit()?;
        return Ok(existing);
    }
    tx.execute(
        &format!("INSERT INTO conversation_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
        &[
            &offer.user_a,
            &offer.user_b,
            &offer.key_id,
            &offer.maker,
            &offer.wrapped_a,
            &offer.wrapped_b,
            &offer.signature,
        ],
    )?;
    tx.commit()?;
    Ok(offer.clone())
}
