//! Resumption tokens, stored as hashes: issued at login, exchanged once for a session
//! and a new token, revoked at logout.

use crate::error::StoreError;

fn insert(
    tx: &mut postgres::Transaction<'_>,
    user: &str,
    token_hash: &str,
    lifetime_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO resume_tokens (token_hash, user_name, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3::bigint / 1000.0))",
        &[&token_hash, &user, &lifetime_ms],
    )?;
    Ok(())
}

/// Stores a new token hash for `user`, valid for `lifetime_ms`, and drops the user's
/// expired ones.
pub fn issue_resume_token(
    client: &mut postgres::Client,
    user: &str,
    token_hash: &str,
    lifetime_ms: i64,
) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute(
        "DELETE FROM resume_tokens WHERE user_name = $1 AND expires_at < now()",
        &[&user],
    )?;
    insert(&mut tx, user, token_hash, lifetime_ms)?;
    tx.commit()?;
    Ok(())
}

/// Exchanges a token: if `token_hash` is a live token of `user`, deletes it, stores
/// `next_hash` in its place (same lifetime rules), and returns `true`.
pub fn redeem_resume_token(
    client: &mut postgres::Client,
    user: &str,
    token_hash: &str,
    next_hash: &str,
    lifetime_ms: i64,
) -> Result<bool, StoreError> {
    let mut tx = client.transaction()?;
    let used = tx.execute(
        "DELETE FROM resume_tokens
         WHERE token_hash = $1 AND user_name = $2 AND expires_at > now()",
        &[&token_hash, &user],
    )?;
    if used == 0 {
        return Ok(false);
    }
    insert(&mut tx, user, next_hash, lifetime_ms)?;
    tx.commit()?;
    Ok(true)
}

/// Revokes one token (at logout).
pub fn revoke_resume_token(
    client: &mut postgres::Client,
    token_hash: &str,
) -> Result<(), StoreError> {
    client.execute(
        "DELETE FROM resume_tokens WHERE token_hash = $1",
        &[&token_hash],
    )?;
    Ok(())
}
