//! In-flight messages: accepted from a local sender, pushed towards their recipient, and
//! waiting for the recipient's acknowledgement. Each ends exactly once: `delivered`
//! (the sender gets `ok`), or failed (the message is stored, then the sender gets `ok`).

use crate::reply::ReplyTo;
use fastchat_sql::NewPending;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a pushed message may wait for its recipient's acknowledgement before it is
/// stored instead.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which way a message went.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    /// To a session on this server.
    Local,
    /// Over the link to this peer.
    Peer(String),
}

/// One in-flight message.
pub struct InFlightEntry {
    /// Who is answered when it ends.
    pub reply: ReplyTo,
    /// The message, ready to store if delivery fails.
    pub message: NewPending,
    /// Where it went.
    pub via: Via,
    deadline: Instant,
}

/// The table of in-flight messages, keyed by token.
pub struct InFlight {
    next_token: AtomicU64,
    entries: Mutex<HashMap<u64, InFlightEntry>>,
}

impl InFlight {
    /// An empty table whose tokens start at `incarnation << 32`, so that a late
    /// `delivered` meant for an earlier start of this server never matches a token of
    /// this one.
    pub fn new(incarnation: i64) -> InFlight {
        InFlight {
            next_token: AtomicU64::new((incarnation as u64) << 32),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token, for a message about to be inserted.
    pub fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a message before it is pushed.
    pub fn insert(&self, token: u64, reply: ReplyTo, message: NewPending, via: Via) {
        let entry = InFlightEntry {
            reply,
            message,
            via,
            deadline: Instant::now() + DELIVERY_TIMEOUT,
        };
        self.entries.lock().insert(token, entry);
    }

    /// Ends the entry (delivered, or to be stored): whoever takes it acts on it.
    pub fn take(&self, token: u64) -> Option<InFlightEntry> {
        self.entries.lock().remove(&token)
    }

    /// Takes every entry sent over the link to `peer` (the link went down).
    pub fn take_via(&self, peer: &str) -> Vec<InFlightEntry> {
        self.take_where(|e| matches!(&e.via, Via::Peer(p) if p == peer))
    }

    /// Takes every entry whose deadline has passed.
    pub fn take_expired(&self, now: Instant) -> Vec<InFlightEntry> {
        self.take_where(|e| e.deadline <= now)
    }

    fn take_where(&self, pick: impl Fn(&InFlightEntry) -> bool) -> Vec<InFlightEntry> {
        let mut entries = self.entries.lock();
        let tokens: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| pick(e))
            .map(|(t, _)| *t)
            .collect();
        tokens
            .into_iter()
            .filter_map(|t| entries.remove(&t))
            .collect()
    }

    /// Takes every entry (shutdown: store them all).
    pub fn take_all(&self) -> Vec<InFlightEntry> {
        self.entries.lock().drain().map(|(_, e)| e).collect()
    }

    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }
}
