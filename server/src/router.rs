//! The router: where each user is (a local session or another server) and the links to
//! the other servers. Locks are held only for map work, never across I/O.

use crate::conn::{to_body, OutQueue, Outgoing};
use crate::session_handle::SessionHandle;
use crossbeam_channel::SendTimeoutError;
use fastchat_common::protocol::peer::PeerFrame;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a user is.
#[derive(Clone)]
pub enum Location {
    /// Logged in on this server.
    Local(SessionHandle),
    /// Logged in on another server.
    Remote {
        /// The server's name (shared: a lookup clones it for every message).
        server: Arc<str>,
        /// The session there (its connection id), when that server said.
        session: Option<u64>,
    },
}

/// A live link to another server.
#[derive(Clone)]
pub struct PeerLink {
    /// The peer's name (shared: a lookup clones the link for every message).
    pub name: Arc<str>,
    /// Distinguishes this link from an older or newer one to the same peer.
    pub link_id: u64,
    /// The link's writer queue.
    pub out: OutQueue,
    /// When the link last brought a frame.
    pub heard: Heard,
    /// Acknowledgements not yet written: see [`PeerLink::delivered`].
    pub acks: AckBatch,
    /// Whether the peer reads binary frames (it said so in its hello).
    pub binary_bodies: bool,
}

/// A link's acknowledgements waiting for its writer, which sends all of them when it
/// reaches the marker queued with the first of them.
#[derive(Clone, Default)]
pub struct AckBatch(Arc<parking_lot::Mutex<Acks>>);

#[derive(Default)]
struct Acks {
    tokens: Vec<u64>,
    /// A marker is in the writer's queue and has not been reached yet.
    marker_queued: bool,
}

/// Tokens per `delivered_many` frame: 4096 of them are about 60 KB of JSON, far below
/// a peer frame's limit however long the writer was held up.
const ACKS_PER_FRAME: usize = 4096;

impl AckBatch {
    /// The frames for the tokens gathered so far (`delivered` for one alone,
    /// `delivered_many` for more), leaving none; the next token queues a new marker.
    fn take_frames(&self) -> Vec<Vec<u8>> {
        let tokens = {
            let mut acks = self.0.lock();
            acks.marker_queued = false;
            std::mem::take(&mut acks.tokens)
        };
        tokens
            .chunks(ACKS_PER_FRAME)
            .map(|chunk| match chunk {
                [token] => to_body(&PeerFrame::Delivered { token: *token }),
                _ => to_body(&PeerFrame::DeliveredMany {
                    tokens: chunk.to_vec(),
                }),
            })
            .collect()
    }
}

/// When a link last brought a frame. A peer whose database heartbeat is late (a
/// database slowed down by an overloaded machine) but whose link keeps bringing frames
/// is alive, and is not dropped as dead.
#[derive(Clone)]
pub struct Heard(Arc<AtomicU64>);

/// Milliseconds on a monotonic clock that starts with the process.
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Heard {
    /// Heard now.
    pub fn new() -> Heard {
        Heard(Arc::new(AtomicU64::new(monotonic_ms())))
    }

    /// A frame arrived.
    pub fn touch(&self) {
        self.0.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Whether a frame arrived within `window`.
    pub fn within(&self, window: Duration) -> bool {
        monotonic_ms().saturating_sub(self.0.load(Ordering::Relaxed)) < window.as_millis() as u64
    }
}

impl Default for Heard {
    fn default() -> Heard {
        Heard::new()
    }
}

impl PeerLink {
    /// Queues a frame, waiting at most `wait` when the link is congested.
    pub fn send(&self, frame: &PeerFrame, wait: Duration) -> bool {
        self.send_body(to_body(frame), wait)
    }

    /// Like [`PeerLink::send`], for a frame body already serialized.
    pub fn send_body(&self, body: Vec<u8>, wait: Duration) -> bool {
        self.queue(Outgoing::Frame(body), wait)
    }

    /// Like [`PeerLink::send_body`], but always through the link's writer thread: for a
    /// frame of a burst (a group message's copy for a member on that server), which the
    /// writer packs with the others into one record and one system call.
    pub fn send_body_in_burst(&self, body: Vec<u8>, wait: Duration) -> bool {
        self.answer(self.out.queue_timeout(Outgoing::Frame(body), wait))
    }

    /// Tells the peer that the message with `token` was acknowledged by its recipient.
    /// Acknowledgements trickle in one by one from many clients: each would wake the
    /// writer for a frame of its own. They gather instead, and the writer sends what
    /// has gathered when it reaches the marker queued with the first one.
    pub fn delivered(&self, token: u64, wait: Duration) -> bool {
        {
            let mut acks = self.acks.0.lock();
            acks.tokens.push(token);
            if acks.marker_queued {
                // The queued marker, not yet reached, takes this one too.
                return true;
            }
            acks.marker_queued = true;
        }
        let acks = self.acks.clone();
        let queued = self.queue(Outgoing::Made(Box::new(move || acks.take_frames())), wait);
        if !queued {
            // The tokens stay: the next acknowledgement tries a marker again. (Until
            // then, or if the link is closing, the origin stores those messages after
            // its timeout and they come again; the clients drop the repeats.)
            self.acks.0.lock().marker_queued = false;
        }
        queued
    }

    fn queue(&self, item: Outgoing, wait: Duration) -> bool {
        self.answer(self.out.send_timeout(item, wait))
    }

    /// `true` if the item was written or queued; a link that stayed full closes.
    fn answer(&self, sent: Result<(), SendTimeoutError<Outgoing>>) -> bool {
        match sent {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(_)) => {
                log::warn!("link to {} congested; closing it", self.name);
                let _ = self.out.try_send(Outgoing::Close);
                false
            }
            Err(SendTimeoutError::Disconnected(_)) => false,
        }
    }
}

/// Users and peers.
#[derive(Default)]
pub struct Router {
    users: RwLock<HashMap<String, Location>>,
    peers: RwLock<HashMap<String, PeerLink>>,
}

impl Router {
    /// Where `user` is, if online anywhere we know of.
    pub fn locate(&self, user: &str) -> Option<Location> {
        self.users.read().get(user).cloned()
    }

    /// Records a local session for its user; returns what was there before.
    pub fn set_local(&self, session: SessionHandle) -> Option<Location> {
        self.users
            .write()
            .insert(session.user().to_string(), Location::Local(session))
    }

    /// Removes the user's entry if it is still this very session; returns whether it was.
    pub fn remove_local(&self, user: &str, conn_id: u64) -> bool {
        let mut users = self.users.write();
        match users.get(user) {
            Some(Location::Local(s)) if s.conn_id() == conn_id => {
                users.remove(user);
                true
            }
            _ => false,
        }
    }

    /// Records that `user` is on `server` in `session`; returns the local session it
    /// displaces, if any.
    pub fn set_remote(
        &self,
        user: &str,
        server: &str,
        session: Option<u64>,
    ) -> Option<SessionHandle> {
        let location = Location::Remote {
            server: server.into(),
            session,
        };
        let previous = self.users.write().insert(user.to_string(), location);
        match previous {
            Some(Location::Local(session)) => Some(session),
            _ => None,
        }
    }

    /// Forgets `user` if it is recorded on `server`.
    pub fn remove_remote(&self, user: &str, server: &str) {
        let mut users = self.users.write();
        if matches!(users.get(user), Some(Location::Remote { server: s, .. }) if **s == *server) {
            users.remove(user);
        }
    }

    /// Forgets every user recorded on `server`; returns how many.
    pub fn remove_server_users(&self, server: &str) -> usize {
        let mut users = self.users.write();
        let before = users.len();
        users.retain(|_, loc| !matches!(loc, Location::Remote { server: s, .. } if **s == *server));
        before - users.len()
    }

    /// The users logged in here, and their sessions' connection ids.
    pub fn local_users(&self) -> (Vec<String>, Vec<u64>) {
        self.users
            .read()
            .iter()
            .filter_map(|(name, loc)| match loc {
                Location::Local(s) => Some((name.clone(), s.conn_id())),
                Location::Remote { .. } => None,
            })
            .unzip()
    }

    /// Every local session.
    pub fn local_sessions(&self) -> Vec<SessionHandle> {
        self.users
            .read()
            .values()
            .filter_map(|loc| match loc {
                Location::Local(s) => Some(s.clone()),
                Location::Remote { .. } => None,
            })
            .collect()
    }

    /// The link to `server`, if up.
    pub fn peer(&self, server: &str) -> Option<PeerLink> {
        self.peers.read().get(server).cloned()
    }

    /// Every live link.
    pub fn peers(&self) -> Vec<PeerLink> {
        self.peers.read().values().cloned().collect()
    }

    /// Installs a link, returning the one it replaces.
    pub fn add_peer(&self, link: PeerLink) -> Option<PeerLink> {
        self.peers.write().insert(link.name.to_string(), link)
    }

    /// Removes the link if it is still this one; returns whether it was.
    pub fn remove_peer(&self, name: &str, link_id: u64) -> bool {
        let mut peers = self.peers.write();
        if peers.get(name).is_some_and(|p| p.link_id == link_id) {
            peers.remove(name);
            true
        } else {
            false
        }
    }

    /// Sends a frame to every peer (presence events).
    pub fn broadcast(&self, frame: &PeerFrame) {
        let body = to_body(frame);
        for link in self.peers() {
            let _ = link
                .out
                .send_timeout(Outgoing::Frame(body.clone()), Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{out_queue, Writes};
    use fastchat_common::frame::MAX_PEER_FRAME;

    fn link_over(out: OutQueue) -> PeerLink {
        PeerLink {
            name: "server-2".into(),
            link_id: 1,
            out,
            heard: Heard::new(),
            acks: AckBatch::default(),
            binary_bodies: true,
        }
    }

    fn made_frames(item: Outgoing) -> Vec<PeerFrame> {
        match item {
            Outgoing::Made(make) => make()
                .iter()
                .map(|body| PeerFrame::from_frame(body).expect("a peer frame"))
                .collect(),
            other => panic!("not a made frame: {other:?}"),
        }
    }

    #[test]
    fn acknowledgements_gathered_while_the_writer_is_busy_go_as_one_frame() {
        let (out, rx) = out_queue(16, 1 << 20, Writes::Queued);
        let link = link_over(out);
        let wait = Duration::from_millis(10);
        for token in [7, 8, 9] {
            assert!(link.delivered(token, wait));
        }
        // One marker for the three, which makes one frame with all of them.
        let marker = rx.try_next().expect("a marker");
        assert!(rx.try_next().is_none(), "one marker only");
        assert_eq!(
            made_frames(marker),
            vec![PeerFrame::DeliveredMany {
                tokens: vec![7, 8, 9]
            }]
        );
        // Once taken, the next one queues a marker of its own, sent in the single form.
        assert!(link.delivered(10, wait));
        assert_eq!(
            made_frames(rx.try_next().expect("a marker")),
            vec![PeerFrame::Delivered { token: 10 }]
        );
        // However many gather, each frame stays small.
        let many = ACKS_PER_FRAME as u64 + 1;
        for token in 0..many {
            assert!(link.delivered(token, wait));
        }
        let Some(Outgoing::Made(make)) = rx.try_next() else {
            panic!("no marker");
        };
        assert!(rx.try_next().is_none(), "one marker only");
        let bodies = make();
        assert!(
            bodies.iter().all(|b| b.len() <= MAX_PEER_FRAME),
            "frames fit"
        );
        let frames: Vec<PeerFrame> = bodies
            .iter()
            .map(|b| PeerFrame::from_frame(b).unwrap())
            .collect();
        let first: Vec<u64> = (0..ACKS_PER_FRAME as u64).collect();
        assert_eq!(
            frames,
            vec![
                PeerFrame::DeliveredMany { tokens: first },
                PeerFrame::Delivered { token: many - 1 }
            ]
        );
    }

    #[test]
    fn a_marker_that_could_not_be_queued_is_tried_again_with_the_tokens_kept() {
        let (out, rx) = out_queue(1, 1 << 20, Writes::Queued);
        let link = link_over(out.clone());
        // The queue is full: the marker cannot go in.
        out.try_send(Outgoing::Frame(b"{}".to_vec())).unwrap();
        assert!(!link.delivered(1, Duration::from_millis(5)));
        assert!(matches!(rx.try_next(), Some(Outgoing::Frame(_))));
        // Room again: the next acknowledgement queues a marker that carries both.
        assert!(link.delivered(2, Duration::from_millis(5)));
        assert_eq!(
            made_frames(rx.try_next().expect("a marker")),
            vec![PeerFrame::DeliveredMany { tokens: vec![1, 2] }]
        );
    }
}
