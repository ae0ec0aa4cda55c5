//! Presence: which server each online user is on.

use crate::error::StoreError;

/// Records `user` as online on `server` (replacing any older record).
pub fn set_presence(
    client: &mut postgres::Client,
    user: &str,
    server: &str,
) -> Result<(), StoreError> {
    client.execute(
        "INSERT INTO presence (user_name, server) VALUES ($1, $2)
         ON CONFLICT (user_name) DO UPDATE SET server = EXCLUDED.server, since = now()",
        &[&user, &server],
    )?;
    Ok(())
}

/// Records `user` as offline, unless it has meanwhile come online on another server.
pub fn clear_presence(
    client: &mut postgres::Client,
    user: &str,
    server: &str,
) -> Result<(), StoreError> {
    client.execute(
        "DELETE FROM presence WHERE user_name = $1 AND server = $2",
        &[&user, &server],
    )?;
    Ok(())
}

/// Marks every user of `server` offline (it started afresh, stopped, or died);
/// returns how many there were.
pub fn clear_server_presence(
    client: &mut postgres::Client,
    server: &str,
) -> Result<u64, StoreError> {
    Ok(client.execute("DELETE FROM presence WHERE server = $1", &[&server])?)
}

/// Makes `server`'s presence rows say exactly that `users` are online there (after a
/// write that failed): rows of users not listed go, listed users without a row get one.
/// A listed user whose row names another server keeps it: the latest login wins.
/// Returns how many rows were removed and added.
pub fn reconcile_presence(
    client: &mut postgres::Client,
    server: &str,
    users: &[String],
) -> Result<(u64, u64), StoreError> {
    let mut tx = client.transaction()?;
    let removed = tx.execute(
        "DELETE FROM presence AS p WHERE p.server = $1
         AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS u WHERE u = p.user_name)",
        &[&server, &users],
    )?;
    let added = tx.execute(
        "INSERT INTO presence (user_name, server) SELECT u, $1 FROM unnest($2::text[]) AS u
         ON CONFLICT (user_name) DO NOTHING",
        &[&server, &users],
    )?;
    tx.commit()?;
    Ok((removed, added))
}
