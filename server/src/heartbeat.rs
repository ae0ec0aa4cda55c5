//! The maintenance loop: heartbeat with load figures, dialing servers that joined,
//! noticing servers that died, and storing messages whose delivery timed out.

use crate::mesh::{dial_peer, link_down};
use crate::presence;
use crate::state::ServerState;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the loop runs.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// A server is presumed dead when its heartbeat is this old and its link brought
/// nothing for as long.
const STALE_AFTER: Duration = Duration::from_millis(fastchat_sql::HEARTBEAT_TIMEOUT_MS as u64);

/// How long a busy link keeps a server whose heartbeat is late: past this, its
/// maintenance has stopped (a hung database connection, say) even if its links still
/// answer, and it is dropped like a dead one.
const MAX_GRACE: Duration = Duration::from_millis(3 * fastchat_sql::HEARTBEAT_TIMEOUT_MS as u64);

/// The maintenance loop's own database connection, outside the pool. Through the pool,
/// a heartbeat could wait up to 5 s behind client requests (a burst of key lookups, say)
/// while the other servers call a server dead after 3 s: they dropped their links to it
/// and stored every message for its users, and the extra work made the next heartbeat
/// later still.
struct OwnConnection {
    url: String,
    client: Option<postgres::Client>,
}

impl OwnConnection {
    /// The connection, made again if it is closed.
    fn get(&mut self) -> Result<&mut postgres::Client, fastchat_sql::StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.client = Some(fastchat_sql::connect_for_maintenance(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// Runs until the server stops, on a database connection of its own.
pub fn run_maintenance(state: Arc<ServerState>) {
    let dialing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut db = OwnConnection {
        url: state.config.database_url.clone(),
        client: None,
    };
    // Servers seen with a late heartbeat, since when (kept while their links are busy).
    let mut late_since: HashMap<String, Instant> = HashMap::new();
    // Other servers call this one dead after 3 s without a heartbeat: say when a tick
    // starts late or runs long, so that an overloaded machine shows in the log.
    let mut due = Instant::now();
    while !state.is_stopping() {
        let started = Instant::now();
        let late = started.saturating_duration_since(due);
        if late >= HEARTBEAT_INTERVAL {
            log::warn!("maintenance woke {} ms late", late.as_millis());
        }
        tick(&state, &dialing, &mut db, &mut late_since);
        let spent = started.elapsed();
        if spent >= HEARTBEAT_INTERVAL {
            log::warn!("maintenance took {} ms", spent.as_millis());
        }
        due = started + HEARTBEAT_INTERVAL.max(spent);
        if spent < HEARTBEAT_INTERVAL {
            thread::sleep(HEARTBEAT_INTERVAL - spent);
        }
    }
}

fn tick(
    state: &Arc<ServerState>,
    dialing: &Arc<Mutex<HashSet<String>>>,
    own: &mut OwnConnection,
    late_since: &mut HashMap<String, Instant>,
) {
    let expired = state
        .inflight
        .store_expired(Instant::now(), state.store_queue());
    if expired > 0 {
        log::info!("{expired} deliveries timed out (or followed one that did); storing them");
    }
    presence::repair_if_needed(state);

    let db = match own.get() {
        Ok(db) => db,
        Err(e) => {
            log::warn!("heartbeat: database unavailable: {e}");
            return;
        }
    };
    let clients = state.clients.load(Ordering::Relaxed) as i32;
    let load = clients as f32 + state.inflight.len() as f32 / 100.0;
    let peers = state.router.peers().len() as i32;
    match fastchat_sql::heartbeat(db, state.name(), state.incarnation, clients, peers, load) {
        Ok(true) => {}
        Ok(false) => log::warn!("heartbeat: our servers row was taken over by another start"),
        Err(e) => {
            log::warn!("heartbeat failed: {e}");
            return;
        }
    }

    match fastchat_sql::live_servers(db) {
        Ok(servers) => {
            *state.live_servers.write() = servers
                .iter()
                .filter(|row| row.name != state.name())
                .map(|row| row.name.clone())
                .collect();
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

    match fastchat_sql::stale_servers(db) {
        Ok(stale) => {
            let now = Instant::now();
            late_since.retain(|name, _| stale.contains(name));
            for name in stale {
                if name == state.name() {
                    continue;
                }
                let since = *late_since.entry(name.clone()).or_insert(now);
                if let Some(link) = state.router.peer(&name) {
                    if link.heard.within(STALE_AFTER) && now.duration_since(since) < MAX_GRACE {
                        log::warn!("{name}'s heartbeat is late, but its link is busy; keeping it");
                        continue;
                    }
                    log::warn!("{name} missed its heartbeats; dropping its link");
                    if state.router.remove_peer(&name, link.link_id) {
                        let _ = link.out.try_send(crate::conn::Outgoing::Close);
                        link_down(state, &name, link.link_id);
                    }
                }
                match fastchat_sql::clear_server_presence(db, &name) {
                    Ok(0) => {}
                    Ok(n) => log::info!("{name} is gone: {n} of its users marked offline"),
                    Err(e) => log::warn!("cannot clear presence of {name}: {e}"),
                }
            }
        }
        Err(e) => log::warn!("cannot list stale servers: {e}"),
    }
}
