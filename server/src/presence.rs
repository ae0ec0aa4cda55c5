//! The presence table's rows for this server, kept in line with who is logged in here.
//!
//! A login and a session's end write the user's row through the pool. When such a write
//! fails (the pool ran dry while a thousand clients logged out at once, say), the row
//! would stay wrong until the server stops: `/friends` would show a user online for
//! good. So a failure marks the rows stale, and the maintenance loop has them rebuilt
//! from the router's local users.
//!
//! The same holds for telling a user's followers that it came or went: when the
//! followers lookup fails, the user is kept, and the maintenance loop announces its
//! state as of then (online if the router has it anywhere) once the database answers.

use crate::state::ServerState;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// Whether this server's presence rows may be wrong.
#[derive(Default)]
pub struct PresenceRows {
    /// Set by a write that failed, and by a rebuild that failed or overlapped a write;
    /// cleared when a rebuild starts.
    stale: AtomicBool,
    /// Set while a repair (a rebuild, late announcements) runs (one at a time).
    repairing: AtomicBool,
    /// Single writes begun. A write whose router change a rebuild's snapshot missed
    /// may land before the rebuild's own, and be undone by it: a rebuild that saw this
    /// move runs again (no lock is held across the database calls).
    writes: AtomicU64,
    /// Users whose followers were not told of their last login or logout.
    unannounced: Mutex<HashSet<String>>,
}

/// Keeps `user` to announce again: its followers could not be looked up. `false` if it
/// was kept already.
pub fn announce_later(state: &ServerState, user: &str) -> bool {
    state.presence.unannounced.lock().insert(user.to_string())
}

/// `user`'s followers were told of its presence: nothing is left to announce for it.
pub fn announced(state: &ServerState, user: &str) {
    state.presence.unannounced.lock().remove(user);
}

/// Records `user` as online (or offline) here; on failure, marks the rows stale.
/// Called after the router change.
pub fn record(state: &ServerState, user: &str, online: bool) {
    let rows = &state.presence;
    rows.writes.fetch_add(1, Ordering::AcqRel);
    let written = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut db| {
            if online {
                fastchat_sql::set_presence(&mut db, user, state.name())
            } else {
                fastchat_sql::clear_presence(&mut db, user, state.name())
            }
        });
    if let Err(e) = written {
        let what = if online { "recorded" } else { "cleared" };
        log::warn!("{user}: presence not {what} ({e}); the rows will be rebuilt");
        rows.stale.store(true, Ordering::Release);
    }
}

/// Starts a repair on a thread of its own (so that a slow database does not hold up the
/// maintenance loop's heartbeat) if the rows are stale or some followers were not told.
pub fn repair_if_needed(state: &Arc<ServerState>) {
    let rows = &state.presence;
    let needed = rows.stale.load(Ordering::Acquire) || !rows.unannounced.lock().is_empty();
    if !needed || rows.repairing.swap(true, Ordering::AcqRel) {
        return;
    }
    let owned = state.clone();
    let spawned = thread::Builder::new()
        .name("presence-repair".into())
        .spawn(move || {
            if owned.presence.stale.load(Ordering::Acquire) {
                rebuild(&owned);
            }
            announce_again(&owned);
            owned.presence.repairing.store(false, Ordering::Release);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the presence repair: {e}");
        rows.repairing.store(false, Ordering::Release);
    }
}

fn rebuild(state: &ServerState) {
    let rows = &state.presence;
    rows.stale.store(false, Ordering::Release);
    let writes_before = rows.writes.load(Ordering::Acquire);
    let (users, _) = state.router.local_users();
    let rebuilt = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut db| fastchat_sql::reconcile_presence(&mut db, state.name(), &users));
    match rebuilt {
        Ok((removed, added)) => {
            log::info!(
                "presence rows rebuilt for {} local users: {removed} removed, {added} added",
                users.len()
            );
            if rows.writes.load(Ordering::Acquire) != writes_before {
                // A login or logout ran meanwhile: its row may have been undone.
                rows.stale.store(true, Ordering::Release);
            }
        }
        Err(e) => {
            log::warn!("presence rows not rebuilt ({e}); trying again");
            rows.stale.store(true, Ordering::Release);
        }
    }
}

/// Tells the followers of each user kept by [`announce_later`] whether it is online now
/// (anywhere in the mesh, as the router knows). The state is read after the lookup, just
/// before the push, and again after it: if it changed meanwhile (a login or logout whose
/// own announcement may have gone out first), the user is kept to be announced again.
/// A lookup that fails again keeps the user for the next tick.
fn announce_again(state: &ServerState) {
    let users = std::mem::take(&mut *state.presence.unannounced.lock());
    for user in users {
        let followers = match crate::friends::followers(state, &user) {
            Ok(followers) => followers,
            Err(e) => {
                log::debug!("{user}: friends still not told ({e})");
                announce_later(state, &user);
                continue;
            }
        };
        let online = state.router.locate(&user).is_some();
        crate::friends::tell(state, &followers, &user, online);
        if state.router.locate(&user).is_some() != online {
            announce_later(state, &user);
            continue;
        }
        log::info!(
            "{user}: friends told late that it is {}",
            if online { "online" } else { "offline" }
        );
    }
}
