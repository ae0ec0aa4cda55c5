//! Friends: the list each user keeps, with presence, and presence events to the users
//! who have someone as a friend when it logs in or out.

use crate::notify::notify;
use crate::session::{refuse, store_refusal, Refusal};
use crate::state::ServerState;
use fastchat_common::names::is_valid_name;
use fastchat_common::protocol::client::{FriendStatus, OkResult, ServerFrame};
use fastchat_common::ErrorCode;
use fastchat_sql::StoreError;

fn unknown(user: &str) -> Refusal {
    (ErrorCode::UnknownUser, format!("no user {user:?}"))
}

/// `friend_add` (adding one twice is not an error).
pub fn add(state: &ServerState, me: &str, user: &str) -> Result<(), Refusal> {
    if !is_valid_name(user) {
        return Err(unknown(user));
    }
    if user == me {
        return refuse(ErrorCode::BadRequest, "you cannot be your own friend");
    }
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    match fastchat_sql::add_friend(&mut db, me, user) {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => Err(unknown(user)),
        Err(e) => Err(store_refusal(e)),
    }
}

/// `friend_remove`: `not_member` when `user` is not a friend.
pub fn remove(state: &ServerState, me: &str, user: &str) -> Result<(), Refusal> {
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    if fastchat_sql::remove_friend(&mut db, me, user).map_err(store_refusal)? {
        Ok(())
    } else {
        refuse(
            ErrorCode::NotMember,
            format!("{user} is not one of your friends"),
        )
    }
}

/// `friends`.
pub fn list(state: &ServerState, me: &str) -> Result<OkResult, Refusal> {
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let friends = fastchat_sql::friends_of(&mut db, me).map_err(store_refusal)?;
    Ok(OkResult::Friends {
        friends: friends
            .into_iter()
            .map(|(user, online)| FriendStatus { user, online })
            .collect(),
    })
}

/// Tells the users who have `user` as a friend that it came online or went offline.
/// When they cannot be looked up, `user` is kept for the maintenance loop to announce
/// later ([`crate::presence::announce_later`]).
pub fn announce_presence(state: &ServerState, user: &str, online: bool) {
    match followers(state, user) {
        Ok(followers) => {
            tell(state, &followers, user, online);
            // This announcement supersedes one that failed before.
            crate::presence::announced(state, user);
        }
        Err(e) => {
            if crate::presence::announce_later(state, user) {
                log::warn!("{user}: friends not told of its presence ({e}); telling them later");
            }
        }
    }
}

/// The users who have `user` as a friend.
pub fn followers(state: &ServerState, user: &str) -> Result<Vec<String>, fastchat_sql::StoreError> {
    let mut db = state.pool.get()?;
    fastchat_sql::followers_of(&mut db, user)
}

/// Pushes `user`'s presence to `followers` wherever they are logged in.
pub fn tell(state: &ServerState, followers: &[String], user: &str, online: bool) {
    if followers.is_empty() {
        return;
    }
    let frame = ServerFrame::Presence {
        user: user.to_string(),
        online,
    };
    notify(state, followers, &frame);
}
