//! `SessionHandle`: how the rest of the server reaches a logged-in client. It owns the
//! delivery bookkeeping: which pushed messages await the client's `ack`, and the
//! messages held back while stored ones are being fetched, so that order is kept.

use crate::conn::{to_body, OutQueue, Outgoing};
use crate::refused::RefusedQueues;
use crossbeam_channel::{SendTimeoutError, TrySendError};
use fastchat_common::protocol::client::ServerFrame;
use fastchat_common::protocol::{MessageOut, RelayedOut};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Where a pushed message came from, to tell its origin when the client acknowledges it.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Sent by a client of this server: the in-flight token.
    Local(u64),
    /// Forwarded by a peer: its name and its in-flight token.
    Peer(String, u64),
    /// Taken from the pending store: its sequence number.
    Stored(i64),
}

/// Live messages' bytes a session may have been handed and not acknowledged: each is
/// kept in flight (its body in memory, here or on the server it came from) until its
/// acknowledgement or 30 s. A client that reads but never acknowledges is closed at
/// this, like one that stops reading, and what it had is stored. A client that
/// acknowledges as it reads has at most its queue (8 MiB) and the socket buffers out.
const MAX_UNACKED_LIVE_BYTES: usize = 64 << 20;

/// A message handed to the client and not yet acknowledged.
struct Pushed {
    origin: Origin,
    /// The body's size, for a live message (its body is kept in flight); 0 for a
    /// stored one (its body is in the database).
    live_bytes: usize,
}

struct DeliveryState {
    closed: bool,
    next_tag: u64,
    /// Pushed, not yet acknowledged.
    outstanding: HashMap<u64, Pushed>,
    /// The sum of `outstanding`'s `live_bytes`.
    unacked_live_bytes: usize,
    /// The client acknowledged a stored message: its delete is queued, and whoever
    /// comes after this session waits for it (see [`SessionHandle::acked_stored`]).
    acked_stored: bool,
    /// `true` while stored messages are being fetched; live ones wait in `held`.
    syncing: bool,
    held: Vec<Vec<u8>>,
    /// A fetch was asked for while one ran: run another after it.
    fetch_again: bool,
    /// Stored messages pushed in this session (by sequence number). Rows can commit
    /// out of sequence order when several servers store for one user, so a fetch pass
    /// reads the whole queue and skips these rather than trusting a cursor.
    pushed_seqs: HashSet<i64>,
}

struct Shared {
    conn_id: u64,
    user: String,
    out: OutQueue,
    /// A clone of the connection's socket, to cut it when the queue cannot take `Close`.
    socket: TcpStream,
    /// Whether the client reads binary frames.
    binary_bodies: bool,
    state: Mutex<DeliveryState>,
    /// The messages refused for want of the database, per target, in order.
    refused: Mutex<RefusedQueues>,
}

/// A cheap, clonable reference to one logged-in session.
#[derive(Clone)]
pub struct SessionHandle(Arc<Shared>);

/// Why a push failed.
#[derive(Debug, PartialEq)]
pub enum PushError {
    /// The session is closed or closing.
    Closed,
    /// The client does not read fast enough; the session has been closed.
    SlowConsumer,
    /// The session's queue stayed full for the time given: nothing was pushed, and the
    /// session is still open ([`Patience::StallAfter`]).
    Stalled,
}

/// How long the fetcher's pushes wait for room in a session's queue, and what then.
#[derive(Debug, Clone, Copy)]
pub enum Patience {
    /// Then close the session as a slow consumer (a session's own fetch thread).
    CloseAfter(Duration),
    /// Then give up, the session still open: [`PushError::Stalled`] (a shared fetcher,
    /// which hands the session to a thread of its own).
    StallAfter(Duration),
}

impl SessionHandle {
    /// A new session for `user`, syncing: live messages wait until the first fetch of
    /// stored ones has been pushed.
    pub fn new(
        conn_id: u64,
        user: String,
        out: OutQueue,
        socket: TcpStream,
        binary_bodies: bool,
    ) -> SessionHandle {
        SessionHandle(Arc::new(Shared {
            conn_id,
            user,
            out,
            socket,
            binary_bodies,
            state: Mutex::new(DeliveryState {
                closed: false,
                next_tag: 1,
                outstanding: HashMap::new(),
                unacked_live_bytes: 0,
                acked_stored: false,
                syncing: true,
                held: Vec::new(),
                fetch_again: false,
                pushed_seqs: HashSet::new(),
            }),
            refused: Mutex::new(RefusedQueues::default()),
        }))
    }

    /// The connection this session lives on.
    pub fn conn_id(&self) -> u64 {
        self.0.conn_id
    }

    /// The logged-in user.
    pub fn user(&self) -> &str {
        &self.0.user
    }

    /// Queues a frame that is not a message (a reply, a notice). On a full queue the
    /// session is closed as a slow consumer.
    pub fn send_frame(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.try_queue(to_body(frame))
    }

    fn try_queue(&self, body: Vec<u8>) -> Result<(), PushError> {
        let result = self.queue_or_cut(body);
        if result == Err(PushError::SlowConsumer) {
            self.0.state.lock().closed = true;
        }
        result
    }

    /// Queues without waiting. A full queue means a slow consumer: it cannot take
    /// `Close` either, so the socket is shut down, which fails the writer's pending
    /// write and ends the reader (whose cleanup stores what was not acknowledged).
    /// Takes no lock; the caller marks the session closed.
    fn queue_or_cut(&self, body: Vec<u8>) -> Result<(), PushError> {
        match self.0.out.try_send(Outgoing::Frame(body)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                log::warn!(
                    "{}: outgoing queue full, closing slow consumer",
                    self.0.user
                );
                let _ = self.0.socket.shutdown(Shutdown::Both);
                Err(PushError::SlowConsumer)
            }
            Err(TrySendError::Disconnected(_)) => Err(PushError::Closed),
        }
    }

    /// Marks the session closed and cuts its socket.
    fn close_queue(&self) {
        self.0.state.lock().closed = true;
        let _ = self.0.socket.shutdown(Shutdown::Both);
    }

    /// The `message` frame pushing `message` (borrowed from wherever it is kept: an
    /// in-flight message, a peer's frame, a stored row) to this session's `user`.
    fn message_frame(&self, tag: u64, message: &RelayedOut, stored: bool) -> Vec<u8> {
        let frame = MessageOut {
            tag,
            message: RelayedOut {
                to: &self.0.user,
                ..*message
            },
            stored,
        };
        frame.to_frame(self.0.binary_bodies)
    }

    /// Pushes a live message. On `Err` the message was not handed to the client and
    /// the caller must store it.
    pub fn push_live(&self, message: &RelayedOut, origin: Origin) -> Result<(), PushError> {
        let mut st = self.0.state.lock();
        if st.closed {
            return Err(PushError::Closed);
        }
        let live_bytes = message.body.decoded_len();
        if st.unacked_live_bytes + live_bytes > MAX_UNACKED_LIVE_BYTES {
            log::warn!(
                "{}: {} MiB of messages not acknowledged, closing",
                self.0.user,
                st.unacked_live_bytes >> 20
            );
            let _ = self.0.socket.shutdown(Shutdown::Both);
            st.closed = true;
            return Err(PushError::SlowConsumer);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        let body = self.message_frame(tag, message, false);
        let pushed = Pushed { origin, live_bytes };
        if st.syncing {
            st.outstanding.insert(tag, pushed);
            st.unacked_live_bytes += live_bytes;
            st.held.push(body);
            return Ok(());
        }
        // Queued under the lock, so frames keep the order of their tags.
        let result = self.queue_or_cut(body);
        match result {
            Ok(()) => {
                st.outstanding.insert(tag, pushed);
                st.unacked_live_bytes += live_bytes;
            }
            Err(PushError::SlowConsumer) => st.closed = true,
            Err(PushError::Closed | PushError::Stalled) => {}
        }
        result
    }

    /// Pushes a stored message unless this session was given it already, waiting for
    /// room as `patience` says (the fetcher may wait on one session; live traffic
    /// never does). A message that stalled is not counted as given: a later push of it
    /// goes out.
    pub fn push_stored(
        &self,
        message: &RelayedOut,
        seq: i64,
        patience: Patience,
    ) -> Result<(), PushError> {
        let Some((tag, body)) = self.stored_frame(message, seq)? else {
            return Ok(());
        };
        self.queue_within(body, patience).map_err(|(e, _)| {
            if e == PushError::Stalled {
                // Not sent, so no acknowledgement can name the tag: take both back.
                let mut st = self.0.state.lock();
                st.pushed_seqs.remove(&seq);
                st.outstanding.remove(&tag);
            }
            e
        })
    }

    /// The tag and frame of stored message `seq`, counted as given to this session;
    /// `None` if it was given already.
    fn stored_frame(
        &self,
        message: &RelayedOut,
        seq: i64,
    ) -> Result<Option<(u64, Vec<u8>)>, PushError> {
        let mut st = self.0.state.lock();
        if st.closed {
            return Err(PushError::Closed);
        }
        if !st.pushed_seqs.insert(seq) {
            return Ok(None);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        let origin = Origin::Stored(seq);
        st.outstanding.insert(
            tag,
            Pushed {
                origin,
                live_bytes: 0,
            },
        );
        Ok(Some((tag, self.message_frame(tag, message, true))))
    }

    /// Queues `body`, waiting for room as `patience` says; on `Err`, why, and the body
    /// back.
    fn queue_within(&self, body: Vec<u8>, patience: Patience) -> Result<(), (PushError, Vec<u8>)> {
        let wait = match patience {
            Patience::CloseAfter(wait) | Patience::StallAfter(wait) => wait,
        };
        // What comes back is the frame sent.
        let body_of = |item| match item {
            Outgoing::Frame(body) => body,
            _ => Vec::new(),
        };
        match self.0.out.send_timeout(Outgoing::Frame(body), wait) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(item)) => match patience {
                Patience::StallAfter(_) => Err((PushError::Stalled, body_of(item))),
                Patience::CloseAfter(_) => {
                    log::warn!("{}: no room for stored messages, closing", self.0.user);
                    self.close_queue();
                    Err((PushError::SlowConsumer, body_of(item)))
                }
            },
            Err(SendTimeoutError::Disconnected(item)) => Err((PushError::Closed, body_of(item))),
        }
    }

    /// Asks for a fetch of stored messages. Returns `true` when the caller must start
    /// one; `false` when one is running (it will run again) or the session is closed.
    pub fn want_fetch(&self) -> bool {
        let mut st = self.0.state.lock();
        if st.closed {
            return false;
        }
        if st.syncing {
            st.fetch_again = true;
            false
        } else {
            st.syncing = true;
            true
        }
    }

    /// Called by the fetcher when a fetch pass is done. `Ok(true)` when another pass was
    /// asked for meanwhile; otherwise pushes the held live messages (in order), each
    /// waiting for room as `patience` says, and leaves the syncing state: `Ok(false)`.
    /// One that stalled is kept, with those after it, and the session stays syncing.
    pub fn fetch_done(&self, patience: Patience) -> Result<bool, PushError> {
        loop {
            let held = {
                let mut st = self.0.state.lock();
                if st.fetch_again {
                    st.fetch_again = false;
                    return Ok(true);
                }
                if st.held.is_empty() || st.closed {
                    st.held.clear();
                    st.syncing = false;
                    return Ok(false);
                }
                std::mem::take(&mut st.held)
            };
            let mut held = held.into_iter();
            while let Some(body) = held.next() {
                if let Err((e, body)) = self.queue_within(body, patience) {
                    if e == PushError::Stalled {
                        // Back in front of what was held since, in the same order.
                        let mut st = self.0.state.lock();
                        let newer = std::mem::take(&mut st.held);
                        st.held = std::iter::once(body).chain(held).chain(newer).collect();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The client acknowledged these tags; returns their origins.
    pub fn acked(&self, tags: &[u64]) -> Vec<Origin> {
        let mut st = self.0.state.lock();
        let mut origins = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some(pushed) = st.outstanding.remove(tag) {
                st.unacked_live_bytes -= pushed.live_bytes;
                origins.push(pushed.origin);
            }
        }
        st.acked_stored |= origins.iter().any(|o| matches!(o, Origin::Stored(_)));
        origins
    }

    /// Whether the client acknowledged a stored message in this session. Its end, and
    /// a login replacing it, wait until the store thread has done the deletes (a
    /// login would otherwise be pushed those messages again).
    pub fn acked_stored(&self) -> bool {
        self.0.state.lock().acked_stored
    }

    /// Records that message `id` to `target` (`u:USER`, `g:GROUP`) was refused for want
    /// of the database: the client will send it again, and until then (and in that
    /// order) later messages to the target are refused too (see `ClientConn::in_order`).
    pub fn mark_refused(&self, target: &str, id: &str) {
        self.0.refused.lock().mark(target, id);
    }

    /// Whether message `id` to `target` may go now (see [`RefusedQueues::take_turn`]).
    pub fn take_turn(&self, target: &str, id: &str, patience: Duration) -> bool {
        self.0.refused.lock().take_turn(target, id, patience)
    }

    /// Message `id` to `target` went through, or was refused for good.
    pub fn turn_done(&self, target: &str, id: &str) {
        self.0.refused.lock().done(target, id);
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closed
    }

    /// Marks the session closed and returns every unacknowledged origin, so that live
    /// ones can be stored. Idempotent: a second call returns nothing.
    pub fn close(&self) -> Vec<Origin> {
        let mut st = self.0.state.lock();
        st.closed = true;
        st.held.clear();
        st.unacked_live_bytes = 0;
        st.outstanding.drain().map(|(_, p)| p.origin).collect()
    }

    /// Tells the client its session was replaced and closes the connection.
    pub fn replace(&self) {
        let _ = self.send_frame(&ServerFrame::SessionReplaced);
        self.0.state.lock().closed = true;
        let _ = self.0.out.try_send(Outgoing::Close);
    }

    /// Asks the client to reconnect elsewhere and closes the connection.
    pub fn send_reconnect(&self, reason: &str) {
        let _ = self.send_frame(&ServerFrame::Reconnect {
            reason: reason.to_string(),
        });
        let _ = self.0.out.try_send(Outgoing::Close);
    }
}
