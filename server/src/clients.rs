//! The clients this server has greeted: how many are connected, and the tickets the
//! latest of them came with. A heartbeat reports both as they were at one instant, so
//! the balancer can count every client it sent here exactly once: in the count when its
//! ticket is listed, on top of it when not (not arrived yet).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a ticket stays listed after its hello: longer than the balancer keeps an
/// assignment (5 s), plus a heartbeat's interval and the balancer's refresh.
const TICKET_MEMORY: Duration = Duration::from_secs(10);
/// Tickets listed at most (the newest): 400 hellos a second for [`TICKET_MEMORY`]. A
/// client whose ticket falls off is counted twice by the balancer, for 5 s at most.
const MAX_LISTED: usize = 4096;

/// Greeted clients (see the module's description).
#[derive(Default)]
pub struct Clients {
    inner: Mutex<Greeted>,
}

#[derive(Default)]
struct Greeted {
    connected: usize,
    /// (hello time, ticket nonce), oldest first.
    recent: VecDeque<(Instant, String)>,
}

impl Clients {
    /// A client said hello with a valid ticket.
    pub fn greeted(&self, nonce: &str, now: Instant) {
        let mut g = self.inner.lock();
        g.connected += 1;
        if g.recent.len() >= MAX_LISTED {
            g.recent.pop_front();
        }
        g.recent.push_back((now, nonce.to_string()));
    }

    /// A greeted client's connection ended.
    pub fn left(&self) {
        let mut g = self.inner.lock();
        g.connected = g.connected.saturating_sub(1);
    }

    /// The clients connected now, and the nonces of the tickets of those greeted in the
    /// last [`TICKET_MEMORY`] (forgetting older ones).
    pub fn snapshot(&self, now: Instant) -> (usize, Vec<String>) {
        let mut g = self.inner.lock();
        while g
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > TICKET_MEMORY)
        {
            g.recent.pop_front();
        }
        let listed = g.recent.iter().map(|(_, nonce)| nonce.clone()).collect();
        (g.connected, listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_and_the_tickets_follow_hellos_and_leavings_and_old_tickets_are_forgotten() {
        let clients = Clients::default();
        let t0 = Instant::now();
        clients.greeted("a", t0);
        clients.greeted("b", t0 + Duration::from_secs(4));
        clients.left();
        assert_eq!(
            clients.snapshot(t0 + Duration::from_secs(5)),
            (1, vec!["a".to_string(), "b".to_string()])
        );
        // A ticket is forgotten after TICKET_MEMORY; the client stays counted.
        assert_eq!(
            clients.snapshot(t0 + TICKET_MEMORY + Duration::from_secs(1)),
            (1, vec!["b".to_string()])
        );
        clients.left();
        clients.left();
        assert_eq!(clients.snapshot(t0).0, 0, "never below zero");
    }

    #[test]
    fn only_the_newest_tickets_are_listed() {
        let clients = Clients::default();
        let now = Instant::now();
        for i in 0..MAX_LISTED + 2 {
            clients.greeted(&i.to_string(), now);
        }
        let (connected, listed) = clients.snapshot(now);
        assert_eq!(connected, MAX_LISTED + 2);
        assert_eq!(listed.len(), MAX_LISTED);
        assert_eq!(listed[0], "2");
    }
}
