//! The maintenance loop: heartbeat with load figures, dialing servers that joined,
//! noticing servers that died, and storing messages whose delivery timed out.

use crate::mesh::{dial_peer, link_down};
use crate::state::ServerState;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the loop runs.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until the server stops.
pub fn run_maintenance(state: Arc<ServerState>) {
    let dialing: Arc<Mutex<HashSet<String>>> = Arc::default();
    while !state.is_stopping() {
        let started = Instant::now();
        tick(&state, &dialing);
        let spent = started.elapsed();
        if spent < HEARTBEAT_INTERVAL {
            thread::sleep(HEARTBEAT_INTERVAL - spent);
        }
    }
}

fn tick(state: &Arc<ServerState>, dialing: &Arc<Mutex<HashSet<String>>>) {
    for entry in state.inflight.take_expired(Instant::now()) {
        log::info!(
            "delivery of {} to {} timed out; storing it",
            entry.message.msg_id,
            entry.message.recipient
        );
        state.store_entry(entry);
    }

    let mut db = match state.pool.get() {
        Ok(db) => db,
        Err(e) => {
            log::warn!("heartbeat: database unavailable: {e}");
            return;
        }
    };
    let clients = state.clients.load(Ordering::Relaxed) as i32;
    let load = clients as f32 + state.inflight.len() as f32 / 100.0;
    let peers = state.router.peers().len() as i32;
    match fastchat_sql::heartbeat(
        &mut db,
        state.name(),
        state.incarnation,
        clients,
        peers,
        load,
    ) {
        Ok(true) => {}
        Ok(false) => log::warn!("heartbeat: our servers row was taken over by another start"),
        Err(e) => {
            log::warn!("heartbeat failed: {e}");
            return;
        }
    }

    match fastchat_sql::live_servers(&mut db) {
        Ok(servers) => {
            for row in servers {
                if row.name == state.name()
                    || row.incarnation >= state.incarnation
                    || row.draining
                    || state.router.peer(&row.name).is_some()
                {
                    continue;
                }
                if !dialing.lock().insert(row.name.clone()) {
                    continue;
                }
                let state = state.clone();
                let dialing = dialing.clone();
                let name = row.name.clone();
                let spawned =
                    thread::Builder::new()
                        .name(format!("dial-{name}"))
                        .spawn(move || {
                            dial_peer(state, row);
                            dialing.lock().remove(&name);
                        });
                if let Err(e) = spawned {
                    log::error!("cannot start a dialer: {e}");
                }
            }
        }
        Err(e) => log::warn!("cannot list servers: {e}"),
    }

    match fastchat_sql::stale_servers(&mut db) {
        Ok(stale) => {
            for name in stale {
                if name == state.name() {
                    continue;
                }
                if let Some(link) = state.router.peer(&name) {
                    log::warn!("{name} missed its heartbeats; dropping its link");
                    if state.router.remove_peer(&name, link.link_id) {
                        let _ = link.out.try_send(crate::conn::Outgoing::Close);
                        link_down(state, &name);
                    }
                }
                match fastchat_sql::clear_server_presence(&mut db, &name) {
                    Ok(0) => {}
                    Ok(n) => log::info!("{name} is gone: {n} of its users marked offline"),
                    Err(e) => log::warn!("cannot clear presence of {name}: {e}"),
                }
            }
        }
        Err(e) => log::warn!("cannot list stale servers: {e}"),
    }
}
