//! The maintenance loop: heartbeat with load figures, dialing servers that joined,
//! noticing servers that died, and storing messages whose delivery timed out.

use crate::mesh::{dial_peer, link_down};
use crate::presence;
use crate::state::ServerState;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
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

/// How long (from when it was first seen late) a server whose heartbeat is late is
/// spared while this server's own ticks run slow. A machine with more runnable threads
/// than it can serve (an overload) leaves any one of them waiting seconds for a core:
/// this tick, and the link reader whose frames would have shown the peer alive. A peer
/// judged from such a tick was dropped though it was only as starved as we were, and
/// every message to its users went to the database, which made the overload worse. A
/// slow database makes the ticks slow too, and defers the judgement the same way: the
/// late heartbeats may be its doing.
const MAX_STARVED_GRACE: Duration = Duration::from_secs(30);

/// What to do about a server whose heartbeat is late.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Its link brought something lately: keep it.
    Busy,
    /// This tick itself ran slow: our view of its link is not to be trusted yet.
    Starved,
    /// Drop its link and mark its users offline.
    Gone,
}

/// Judges a server whose heartbeat has been late for `late_for`: `heard` is whether its
/// link brought something within [`STALE_AFTER`], `tick_took` how long this tick has
/// taken so far, from when it was due (a late wake-up and its database round trips).
fn judge(heard: bool, late_for: Duration, tick_took: Duration) -> Verdict {
    if heard && late_for < MAX_GRACE {
        Verdict::Busy
    } else if tick_took >= HEARTBEAT_INTERVAL && late_for < MAX_STARVED_GRACE {
        Verdict::Starved
    } else {
        Verdict::Gone
    }
}

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
    // Servers seen with a late heartbeat, since when (while they are not dropped yet).
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
        tick(due.min(started), &state, &dialing, &mut db, &mut late_since);
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

/// One round of maintenance; `due` is when it should have begun (a tick that woke late
/// counts as slow from then).
fn tick(
    due: Instant,
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
    let (clients, recent_tickets) = state.clients.snapshot(Instant::now());
    let beat = fastchat_sql::Beat {
        clients: i32::try_from(clients).unwrap_or(i32::MAX),
        peers: state.router.peers().len() as i32,
        load: clients as f32 + state.inflight.len() as f32 / 100.0,
        recent_tickets,
    };
    match fastchat_sql::heartbeat(db, state.name(), state.incarnation, &beat) {
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
            // How slow this tick is, from when it was due to the check, before the round
            // trips for the stale servers themselves.
            let tick_took = now.saturating_duration_since(due);
            late_since.retain(|name, _| stale.contains(name));
            for name in stale {
                if name == state.name() {
                    continue;
                }
                let since = *late_since.entry(name.clone()).or_insert(now);
                if let Some(link) = state.router.peer(&name) {
                    let heard = link.heard.within(STALE_AFTER);
                    match judge(heard, now.duration_since(since), tick_took) {
                        Verdict::Busy => {
                            log::warn!(
                                "{name}'s heartbeat is late, but its link is busy; keeping it"
                            );
                            continue;
                        }
                        Verdict::Starved => {
                            log::warn!(
                                "{name}'s heartbeat is late, but this tick took {} ms: \
                                 judging it later",
                                tick_took.as_millis()
                            );
                            continue;
                        }
                        Verdict::Gone => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(20);
    const SLOW: Duration = Duration::from_millis(1500);

    #[test]
    fn a_busy_link_keeps_a_late_server_for_a_while() {
        assert_eq!(judge(true, Duration::ZERO, QUICK), Verdict::Busy);
        assert_eq!(judge(true, MAX_GRACE - QUICK, QUICK), Verdict::Busy);
        assert_eq!(judge(true, MAX_GRACE, QUICK), Verdict::Gone);
    }

    #[test]
    fn a_silent_server_is_gone_when_this_tick_ran_on_time() {
        assert_eq!(judge(false, Duration::ZERO, QUICK), Verdict::Gone);
        assert_eq!(
            judge(false, Duration::ZERO, HEARTBEAT_INTERVAL - QUICK),
            Verdict::Gone
        );
    }

    #[test]
    fn a_slow_tick_judges_later_but_not_for_ever() {
        assert_eq!(judge(false, Duration::ZERO, SLOW), Verdict::Starved);
        assert_eq!(judge(true, MAX_GRACE, SLOW), Verdict::Starved);
        assert_eq!(
            judge(false, MAX_STARVED_GRACE - QUICK, SLOW),
            Verdict::Starved
        );
        assert_eq!(judge(false, MAX_STARVED_GRACE, SLOW), Verdict::Gone);
    }
}
