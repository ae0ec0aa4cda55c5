//! Resumption tokens: 256 random bits given to a client at each login, so that after
//! its server goes away it can log back in without the password. Only their SHA-256 is
//! stored; each is used once and lasts a day.

use crate::session::{refuse, store_refusal, Refusal};
use crate::state::ServerState;
use fastchat_common::ids::{hex, random_hex};
use fastchat_common::ErrorCode;

/// How long a token stays valid.
const LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    hex(&openssl::sha::sha256(token.as_bytes()))
}

fn new_token() -> String {
    random_hex(32)
}

/// Issues a token for `user`; `None` (logged) when it cannot be stored: the login
/// still succeeds, the client just cannot resume it.
pub fn issue(state: &ServerState, user: &str) -> Option<(String, String)> {
    let token = new_token();
    let hash = token_hash(&token);
    let stored = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut db| fastchat_sql::issue_resume_token(&mut db, user, &hash, LIFETIME_MS));
    match stored {
        Ok(()) => Some((token, hash)),
        Err(e) => {
            log::warn!("{user}: no resumption token: {e}");
            None
        }
    }
}

/// Exchanges `token` of `user` for a new one: (token, hash), or `resume_refused`.
pub fn redeem(state: &ServerState, user: &str, token: &str) -> Result<(String, String), Refusal> {
    let next = new_token();
    let next_hash = token_hash(&next);
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let ok = fastchat_sql::redeem_resume_token(
        &mut db,
        user,
        &token_hash(token),
        &next_hash,
        LIFETIME_MS,
    )
    .map_err(store_refusal)?;
    if !ok {
        return refuse(
            ErrorCode::ResumeRefused,
            "unknown, used or expired resumption token; log in with the password",
        );
    }
    Ok((next, next_hash))
}

/// Revokes the token with this hash (logout); failures are only logged.
pub fn revoke(state: &ServerState, hash: &str) {
    let result = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut db| fastchat_sql::revoke_resume_token(&mut db, hash));
    if let Err(e) = result {
        log::warn!("resumption token not revoked: {e}");
    }
}
