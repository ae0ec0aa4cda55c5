//! The presence table's rows for this server, kept in line with who is logged in here.
//!
//! A login and a session's end write the user's row through the pool. When such a write
//! fails (the pool ran dry while a thousand clients logged out at once, say), the row
//! would stay wrong until the server stops: `/friends` would show a user online for
//! good. So a failure marks the rows stale, and the maintenance loop has them rebuilt
//! from the router's local users.

use crate::state::ServerState;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Whether this server's presence rows may be wrong, and the lock that orders a
/// rebuild against single writes.
#[derive(Default)]
pub struct PresenceRows {
    /// Set by a write that failed; cleared when a rebuild starts.
    stale: AtomicBool,
    /// Set while a rebuild runs (one at a time).
    rebuilding: AtomicBool,
    /// Single writes hold it shared, a rebuild exclusively: a rebuild reads the local
    /// users and writes the rows as one step, so a login or logout whose router change
    /// it missed writes its row after it, not before.
    order: RwLock<()>,
}

/// Records `user` as online (or offline) here; on failure, marks the rows stale.
/// Called after the router change.
pub fn record(state: &ServerState, user: &str, online: bool) {
    let rows = &state.presence;
    let _shared = rows.order.read();
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

/// Starts a rebuild of the rows on a thread of its own if a write failed (so that a
/// slow database does not hold up the maintenance loop's heartbeat).
pub fn rebuild_if_stale(state: &Arc<ServerState>) {
    let rows = &state.presence;
    if !rows.stale.load(Ordering::Acquire) || rows.rebuilding.swap(true, Ordering::AcqRel) {
        return;
    }
    let owned = state.clone();
    let spawned = thread::Builder::new()
        .name("presence-rebuild".into())
        .spawn(move || {
            rebuild(&owned);
            owned.presence.rebuilding.store(false, Ordering::Release);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the presence rebuild: {e}");
        rows.rebuilding.store(false, Ordering::Release);
    }
}

fn rebuild(state: &ServerState) {
    let rows = &state.presence;
    let _exclusive = rows.order.write();
    rows.stale.store(false, Ordering::Release);
    let (users, _) = state.router.local_users();
    let rebuilt = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut db| fastchat_sql::reconcile_presence(&mut db, state.name(), &users));
    match rebuilt {
        Ok((removed, added)) => log::info!(
            "presence rows rebuilt for {} local users: {removed} removed, {added} added",
            users.len()
        ),
        Err(e) => {
            log::warn!("presence rows not rebuilt ({e}); trying again");
            rows.stale.store(true, Ordering::Release);
        }
    }
}
