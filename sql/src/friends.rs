//! Friends: who follows whose presence.

use crate::error::StoreError;

/// Adds `friend` to `user`'s list (no change if it is there); `NotFound` for an unknown
/// friend.
pub fn add_friend(
    client: &mut postgres::Client,
    user: &str,
    friend: &str,
) -> Result<(), StoreError> {
    let n = client.execute(
        "INSERT INTO friends (user_name, friend)
         SELECT $1, name FROM users WHERE name = $2
         ON CONFLICT DO NOTHING",
        &[&user, &friend],
    )?;
    if n == 0 && !crate::user_exists(client, friend)? {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Removes `friend` from `user`'s list; `false` if it was not there.
pub fn remove_friend(
    client: &mut postgres::Client,
    user: &str,
    friend: &str,
) -> Result<bool, StoreError> {
    Ok(client.execute(
        "DELETE FROM friends WHERE user_name = $1 AND friend = $2",
        &[&user, &friend],
    )? > 0)
}

/// `user`'s friends with whether each is online now, by name.
pub fn friends_of(
    client: &mut postgres::Client,
    user: &str,
) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(client
        .query(
            "SELECT f.friend, p.user_name IS NOT NULL FROM friends f
             LEFT JOIN presence p ON p.user_name = f.friend
             WHERE f.user_name = $1 ORDER BY f.friend",
            &[&user],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The users who have `user` as a friend (to tell them of its presence).
pub fn followers_of(client: &mut postgres::Client, user: &str) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query("SELECT user_name FROM friends WHERE friend = $1", &[&user])?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
