//! `ServerState`: everything the server's threads share, behind one `Arc`.

use crate::config::Config;
use crate::inflight::{InFlight, Via};
use crate::reply::ReplyTo;
use crate::router::{Location, PeerLink, Router};
use crate::session_handle::{Origin, SessionHandle};
use crate::store::StoreJob;
use crate::tls::ServerTls;
use crossbeam_channel::Sender;
use fastchat_common::protocol::peer::PeerFrame;
use fastchat_common::protocol::{DeliverOut, RelayedOut};
use fastchat_common::ticket::TicketVerifier;
use fastchat_common::Blob;
use fastchat_sql::{NewPending, Pool};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared server state.
pub struct ServerState {
    /// Flags.
    pub config: Config,
    /// This start's incarnation (from the servers table).
    pub incarnation: i64,
    /// Database connections.
    pub pool: Pool,
    /// Users and peers.
    pub router: Router,
    /// Messages awaiting their recipient's acknowledgement, and per recipient what is
    /// on its way to storage.
    pub inflight: InFlight,
    /// Queue of the pending-store thread (group commit).
    pub store: Sender<StoreJob>,
    /// Queue of the stored-message fetchers.
    pub fetch: Sender<SessionHandle>,
    /// Checks balancer tickets.
    pub tickets: TicketVerifier,
    /// TLS contexts for clients, peers and dialling.
    pub tls: ServerTls,
    /// Set when the server is stopping.
    pub stopping: AtomicBool,
    /// Connection ids.
    pub next_conn_id: AtomicU64,
    /// Greeted clients, and the tickets they came with lately.
    pub clients: crate::clients::Clients,
    /// Users known to exist (accounts are never deleted, so a hit is final).
    pub known_users: RwLock<HashSet<String>>,
    /// Group memberships for `group_send`, forgotten at every change.
    pub group_cache: crate::group_cache::GroupCache,
    /// Queue of the `group-refresh` thread: groups whose cached membership is to be
    /// read again.
    pub group_refresh: Sender<String>,
    /// Users we stored messages for while we knew no server for them: when one shows up
    /// on a peer, that peer is told to fetch.
    pub orphaned: Mutex<HashSet<String>>,
    /// Fences awaiting acknowledgement: token -> where each ack (the peer's name) goes.
    pub fences: Mutex<HashMap<u64, Sender<String>>>,
    /// The other live servers, as of the maintenance loop's last listing.
    pub live_servers: RwLock<HashSet<String>>,
    /// Whether this server's presence rows may be wrong (a write failed).
    pub presence: crate::presence::PresenceRows,
}

/// How long a push may wait on a congested peer link before the message is stored.
pub const LINK_WAIT: Duration = Duration::from_millis(500);

impl ServerState {
    /// This server's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The acceptance order of a new message: monotonic in this incarnation and above
    /// every earlier incarnation's (it shares the in-flight token counter).
    pub fn next_order_key(&self) -> i64 {
        self.inflight.new_token() as i64
    }

    /// A fresh connection id.
    pub fn conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the server is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Routes a direct message accepted from `sender` (request `req`). The sender is
    /// answered later, from whichever thread ends the message's flight.
    ///
    /// A message goes the way its recipient's older ones went, or to storage behind
    /// them: [`InFlight::route`] decides under the lock that every move from flight to
    /// storage takes too.
    pub fn route_message(&self, reply: ReplyTo, message: NewPending) {
        /// What a local push needs of the message, shared with the copy `route` keeps.
        struct Shared {
            id: Arc<str>,
            from: Arc<str>,
            body: Blob,
            group: Option<Arc<str>>,
        }
        /// Where the message is pushed, and in what form.
        enum Push {
            Local(SessionHandle, Shared),
            Peer(PeerLink, Option<u64>, Vec<u8>),
        }
        let token = self.inflight.new_token();
        let push = match self.router.locate(&message.recipient) {
            Some(Location::Local(session)) => {
                let shared = Shared {
                    id: message.msg_id.clone(),
                    from: message.sender.clone(),
                    body: message.body.clone(),
                    group: message.group.clone(),
                };
                Some(Push::Local(session, shared))
            }
            Some(Location::Remote { server, session }) => self.router.peer(&server).map(|link| {
                let frame = deliver_frame(token, &message, session, link.binary_bodies);
                Push::Peer(link, session, frame)
            }),
            None => None,
        };
        let via = match &push {
            Some(Push::Local(session, _)) => Some(Via::Local(session.conn_id())),
            Some(Push::Peer(link, session, _)) => Some(Via::Peer {
                link: link.link_id,
                session: *session,
            }),
            None => None,
        };
        let sent_at = message.sent_at;
        // A group message's copies leave one after another: a burst for each link.
        let in_burst = matches!(reply, ReplyTo::Group(_));
        if !self
            .inflight
            .route(token, reply, message, via, self.store_queue())
        {
            return;
        }
        let pushed = match push {
            Some(Push::Local(session, shared)) => {
                let message = RelayedOut {
                    id: &shared.id,
                    from: &shared.from,
                    to: session.user(),
                    body: &shared.body,
                    sent_at,
                    group: shared.group.as_deref(),
                };
                session.push_live(&message, Origin::Local(token)).is_ok()
            }
            Some(Push::Peer(link, _, frame)) if in_burst => {
                link.send_body_in_burst(frame, LINK_WAIT)
            }
            Some(Push::Peer(link, _, frame)) => link.send_body(frame, LINK_WAIT),
            None => false,
        };
        if !pushed {
            self.fail_flight(token);
        }
    }

    /// Where `InFlight` hands the messages it sends to storage: the store thread's queue.
    pub fn store_queue(&self) -> impl FnMut(ReplyTo, NewPending) + '_ {
        |reply, message| {
            let _ = self.store.send(StoreJob::Store { message, reply });
        }
    }

    /// Runs `then` on the store thread once it has done every job queued before this
    /// call (stores and deletes committed, or failed); at once if that thread is gone.
    /// `then` must not wait: every store of the server waits behind it.
    pub fn after_store(&self, then: impl FnOnce() + Send + 'static) {
        if let Err(crossbeam_channel::SendError(StoreJob::Flush(then))) =
            self.store.send(StoreJob::Flush(Box::new(then)))
        {
            then();
        }
    }

    /// Queues a flush of the store: the answer comes once every job queued before this
    /// call is done (see [`ServerState::after_store`]).
    pub fn queue_flush(&self) -> crossbeam_channel::Receiver<()> {
        let (done, flushed) = crossbeam_channel::bounded(1);
        self.after_store(move || {
            let _ = done.send(());
        });
        flushed
    }

    /// Waits, at most `wait`, until the store thread has done every job queued before
    /// this call; `false` if it had not by then.
    pub fn flush_store(&self, wait: Duration) -> bool {
        self.queue_flush().recv_timeout(wait).is_ok()
    }

    /// The recipient acknowledged the message with this token: answer its sender.
    pub fn complete_flight(&self, token: u64) {
        if let Some(entry) = self.inflight.take(token) {
            entry
                .reply
                .settled(&entry.message.msg_id, entry.message.sent_at, false);
        }
    }

    /// The message with this token did not reach its recipient: store it, with every
    /// other message in flight to that recipient, then answer their senders.
    pub fn fail_flight(&self, token: u64) {
        self.inflight.store_failed(token, self.store_queue());
    }

    /// Handles the acknowledgement of pushed messages by a local client.
    pub fn on_acked(&self, origins: Vec<Origin>) {
        for origin in origins {
            match origin {
                Origin::Local(token) => self.complete_flight(token),
                Origin::Peer(server, token) => {
                    if let Some(link) = self.router.peer(&server) {
                        link.delivered(token, LINK_WAIT);
                    }
                }
                Origin::Stored(seq) => {
                    let _ = self.store.send(StoreJob::Delete(seq));
                }
            }
        }
    }

    /// Handles a session's unacknowledged messages when it closes: live ones go back to
    /// their origin to be stored; stored ones stay stored.
    pub fn on_unacked(&self, origins: Vec<Origin>) {
        for origin in origins {
            match origin {
                Origin::Local(token) => self.fail_flight(token),
                Origin::Peer(server, token) => {
                    if let Some(link) = self.router.peer(&server) {
                        link.send(&PeerFrame::NotDelivered { token }, LINK_WAIT);
                    }
                }
                Origin::Stored(_) => {}
            }
        }
    }

    /// Asks the server holding `user` to fetch its stored messages (they were stored
    /// after its login began, or while we could not reach it).
    pub fn hint_pending(&self, user: &str) {
        let location = match self.router.locate(user) {
            Some(location) => Some(location),
            None => {
                // Re-check under the lock `user_appeared` takes: a presence applied
                // after this check finds the user in `orphaned` and hints.
                let mut orphaned = self.orphaned.lock();
                let location = self.router.locate(user);
                if location.is_none() {
                    orphaned.insert(user.to_string());
                }
                location
            }
        };
        match location {
            Some(Location::Local(session)) => self.request_fetch(&session),
            Some(Location::Remote { server, .. }) => {
                if let Some(link) = self.router.peer(&server) {
                    link.send(
                        &PeerFrame::PendingHint {
                            user: user.to_string(),
                        },
                        LINK_WAIT,
                    );
                } else {
                    self.orphaned.lock().insert(user.to_string());
                }
            }
            None => {}
        }
    }

    /// Starts a fetch of stored messages for a local session unless one is running.
    pub fn request_fetch(&self, session: &SessionHandle) {
        if session.want_fetch() {
            let _ = self.fetch.send(session.clone());
        }
    }

    /// A user appeared on `server`: if we stored messages for it while it was
    /// unreachable, tell that server to fetch them.
    pub fn user_appeared(&self, user: &str) {
        if self.orphaned.lock().remove(user) {
            self.hint_pending(user);
        }
    }
}

/// The form of a message sent to the peer that has its recipient.
fn deliver_frame(token: u64, message: &NewPending, session: Option<u64>, binary: bool) -> Vec<u8> {
    let frame = DeliverOut {
        token,
        message: RelayedOut {
            id: &message.msg_id,
            from: &message.sender,
            to: &message.recipient,
            body: &message.body,
            sent_at: message.sent_at,
            group: message.group.as_deref(),
        },
        session,
    };
    frame.to_frame(binary)
}
