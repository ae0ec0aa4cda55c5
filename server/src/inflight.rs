//! In-flight messages: accepted from a local sender, pushed towards their recipient, and
//! waiting for the recipient's acknowledgement. Each ends exactly once: `delivered`
//! (the sender gets `ok`), or failed (the message is stored, then the sender gets `ok`).
//!
//! All of one recipient's messages in flight went the same way (one local session, or
//! one link), so that none overtakes another: a message that would go another way is
//! stored, after those in flight, which are taken from flight for it
//! ([`InFlight::route`]); when one of them fails, all of them are stored, in acceptance
//! order ([`InFlight::store_failed`]). The same lock counts what is on its way to
//! storage per recipient, and new messages to such a recipient follow into storage.

use crate::reply::ReplyTo;
use fastchat_sql::NewPending;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a pushed message may wait for its recipient's acknowledgement before it is
/// stored instead.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    /// To the session on this server with this connection id.
    Local(u64),
    /// Over a link to a peer, to the recipient's session there.
    Peer {
        /// The link's id (a newer link to the same peer has another).
        link: u64,
        /// The recipient's session on the peer, as last heard.
        session: Option<u64>,
    },
}

/// One in-flight message.
pub struct InFlightEntry<R = ReplyTo> {
    /// Who is answered when it ends.
    pub reply: R,
    /// The message, ready to store if delivery fails.
    pub message: NewPending,
    /// Where it went.
    pub via: Via,
    deadline: Instant,
}

/// What became of messages handed to the store thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed, and their recipients hinted.
    Committed,
    /// The store failed: refused to their senders.
    Failed,
    /// Refused unattempted, queued behind a failed one.
    Skipped,
}

/// The table of in-flight messages, keyed by token, and the store backlog.
pub struct InFlight<R = ReplyTo> {
    next_token: AtomicU64,
    table: Mutex<Table<R>>,
}

struct Table<R> {
    entries: HashMap<u64, InFlightEntry<R>>,
    /// Per recipient with messages in flight: the way they went, and their tokens in
    /// the order they went (acknowledgements come mostly in that order: the one
    /// acknowledged is found at the front).
    recipients: HashMap<String, Way>,
    /// Messages handed to the store thread and not yet committed and hinted.
    queued: HashMap<String, usize>,
    /// The order key at the last failed store. Messages accepted before it and still
    /// queued are refused unattempted (`Stored::Skipped`), so none is stored ahead of
    /// the refused one, which its sender sends again.
    failed: HashMap<String, i64>,
}

struct Way {
    via: Via,
    tokens: VecDeque<u64>,
}

impl<R> Table<R> {
    /// Whether new messages to `user` must follow older ones into storage: some are on
    /// their way there, or its last store failed (while the database is out of reach,
    /// they are refused `unavailable` rather than going live ahead of refused ones).
    fn holds(&self, user: &str) -> bool {
        self.queued.contains_key(user) || self.failed.contains_key(user)
    }

    /// Hands a message to `store` (the store thread's queue) and counts it.
    fn queue(&mut self, reply: R, message: NewPending, store: &mut impl FnMut(R, NewPending)) {
        *self.queued.entry(message.recipient.clone()).or_default() += 1;
        store(reply, message);
    }

    /// Queues taken entries for storage, in their order; returns how many.
    fn queue_all(
        &mut self,
        entries: Vec<InFlightEntry<R>>,
        store: &mut impl FnMut(R, NewPending),
    ) -> usize {
        let count = entries.len();
        for entry in entries {
            self.queue(entry.reply, entry.message, store);
        }
        count
    }

    fn remove(&mut self, token: u64) -> Option<InFlightEntry<R>> {
        let entry = self.entries.remove(&token)?;
        if let Some(way) = self.recipients.get_mut(&entry.message.recipient) {
            if let Some(at) = way.tokens.iter().position(|&t| t == token) {
                way.tokens.remove(at);
            }
            if way.tokens.is_empty() {
                self.recipients.remove(&entry.message.recipient);
            }
        }
        Some(entry)
    }

    /// Removes every entry to `recipient`, oldest first.
    fn remove_recipient(&mut self, recipient: &str) -> Vec<InFlightEntry<R>> {
        let Some(way) = self.recipients.remove(recipient) else {
            return Vec::new();
        };
        let mut taken: Vec<InFlightEntry<R>> = way
            .tokens
            .iter()
            .filter_map(|t| self.entries.remove(t))
            .collect();
        oldest_first(&mut taken);
        taken
    }

    /// Removes the entries `pick` chooses and every other entry to their recipients,
    /// oldest first.
    fn remove_with_recipients(
        &mut self,
        pick: impl Fn(&InFlightEntry<R>) -> bool,
    ) -> Vec<InFlightEntry<R>> {
        let mut recipients: Vec<String> = self
            .entries
            .values()
            .filter(|e| pick(e))
            .map(|e| e.message.recipient.clone())
            .collect();
        recipients.sort_unstable();
        recipients.dedup();
        let mut taken: Vec<InFlightEntry<R>> = recipients
            .iter()
            .flat_map(|r| self.remove_recipient(r))
            .collect();
        oldest_first(&mut taken);
        taken
    }
}

fn oldest_first<R>(entries: &mut [InFlightEntry<R>]) {
    entries.sort_unstable_by_key(|e| e.message.order_key);
}

impl<R> InFlight<R> {
    /// An empty table whose tokens start at `incarnation << 32`, so that a late
    /// `delivered` meant for an earlier start of this server never matches a token of
    /// this one.
    pub fn new(incarnation: i64) -> InFlight<R> {
        InFlight {
            next_token: AtomicU64::new((incarnation as u64) << 32),
            table: Mutex::new(Table {
                entries: HashMap::new(),
                recipients: HashMap::new(),
                queued: HashMap::new(),
                failed: HashMap::new(),
            }),
        }
    }

    /// A fresh token, for a message about to be routed.
    pub fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Decides a new message's way under the lock. It goes in flight `via` that way
    /// (`true`: push it now) unless there is no such way, older messages to its
    /// recipient are on their way to storage, or some are in flight another way: then
    /// any in flight and it are handed to `store`, in that order (`false`).
    pub fn route(
        &self,
        token: u64,
        reply: R,
        message: NewPending,
        via: Option<Via>,
        mut store: impl FnMut(R, NewPending),
    ) -> bool {
        let mut table = self.table.lock();
        // It goes live only its older ones' way, and not while some wait for storage.
        let held = table.holds(&message.recipient);
        let via = match (via, table.recipients.get_mut(&message.recipient)) {
            (Some(via), Some(way)) if !held && way.via == via => {
                way.tokens.push_back(token);
                via
            }
            (Some(via), None) if !held => {
                let way = Way {
                    via,
                    tokens: VecDeque::from([token]),
                };
                table.recipients.insert(message.recipient.clone(), way);
                via
            }
            _ => {
                // Whatever is still in flight to the recipient goes first (its way may
                // be gone: a link down, a session closing), so that while messages to
                // it wait for storage, none is in flight.
                let earlier = table.remove_recipient(&message.recipient);
                table.queue_all(earlier, &mut store);
                table.queue(reply, message, &mut store);
                return false;
            }
        };
        let entry = InFlightEntry {
            reply,
            message,
            via,
            deadline: Instant::now() + DELIVERY_TIMEOUT,
        };
        table.entries.insert(token, entry);
        true
    }

    /// Ends the entry: its recipient acknowledged it.
    pub fn take(&self, token: u64) -> Option<InFlightEntry<R>> {
        self.table.lock().remove(token)
    }

    /// The entry failed to reach its recipient: hands it and every other message in
    /// flight to that recipient to `store`, oldest first. None when it has ended
    /// already. Returns how many.
    pub fn store_failed(&self, token: u64, mut store: impl FnMut(R, NewPending)) -> usize {
        let mut table = self.table.lock();
        let Some(recipient) = table
            .entries
            .get(&token)
            .map(|e| e.message.recipient.clone())
        else {
            return 0;
        };
        let taken = table.remove_recipient(&recipient);
        table.queue_all(taken, &mut store)
    }

    /// Hands every entry sent over the link `link_id` (it went down, or a newer link
    /// replaced it) to `store`, oldest first. Returns how many.
    pub fn store_via(&self, link_id: u64, mut store: impl FnMut(R, NewPending)) -> usize {
        let mut table = self.table.lock();
        let taken = table
            .remove_with_recipients(|e| matches!(e.via, Via::Peer { link, .. } if link == link_id));
        table.queue_all(taken, &mut store)
    }

    /// Hands every entry whose deadline has passed, and the others to their
    /// recipients, to `store`, oldest first. Returns how many.
    pub fn store_expired(&self, now: Instant, mut store: impl FnMut(R, NewPending)) -> usize {
        let mut table = self.table.lock();
        let taken = table.remove_with_recipients(|e| e.deadline <= now);
        table.queue_all(taken, &mut store)
    }

    /// Hands every entry to `store` (shutdown), oldest first. Returns how many.
    pub fn store_all(&self, mut store: impl FnMut(R, NewPending)) -> usize {
        let mut table = self.table.lock();
        table.recipients.clear();
        let mut taken: Vec<_> = table.entries.drain().map(|(_, e)| e).collect();
        oldest_first(&mut taken);
        table.queue_all(taken, &mut store)
    }

    /// The store thread is done with messages to these recipients (one name per
    /// message). Call it after the hints of a commit: a newer message may go live then.
    pub fn done_storing<'a>(&self, recipients: impl Iterator<Item = &'a str>, outcome: Stored) {
        let mut table = self.table.lock();
        for user in recipients {
            match outcome {
                Stored::Committed => {
                    table.failed.remove(user);
                }
                Stored::Failed => {
                    let at = self.new_token() as i64;
                    table.failed.insert(user.to_string(), at);
                }
                Stored::Skipped => {}
            }
            if let Some(n) = table.queued.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    table.queued.remove(user);
                }
            }
        }
    }

    /// Splits messages about to be stored into those that may be and those accepted
    /// before their recipient's last failed store, which must be refused unattempted
    /// so that none is stored ahead of a refused one.
    pub fn split_behind_failures<T>(
        &self,
        stores: Vec<T>,
        message: impl Fn(&T) -> &NewPending,
    ) -> (Vec<T>, Vec<T>) {
        let table = self.table.lock();
        stores.into_iter().partition(|item| {
            let m = message(item);
            table
                .failed
                .get(&m.recipient)
                .is_none_or(|&at| m.order_key > at)
        })
    }

    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing went to storage.
    const NOTHING: [i64; 0] = [];

    fn message(to: &str, order_key: i64) -> NewPending {
        NewPending {
            recipient: to.to_string(),
            sender: "alice".into(),
            msg_id: format!("m{order_key}").into(),
            body: fastchat_common::Blob::default(),
            sent_at: 0,
            order_key,
            group: None,
        }
    }

    /// A way over link `link` to the recipient's session 1 there.
    fn peer(link: u64) -> Via {
        Via::Peer {
            link,
            session: Some(1),
        }
    }

    /// Runs `act` with a store that records order keys; returns them in order.
    fn stored_by(act: impl FnOnce(&mut dyn FnMut((), NewPending))) -> Vec<i64> {
        let mut keys = Vec::new();
        act(&mut |_, m: NewPending| keys.push(m.order_key));
        keys
    }

    /// Routes a message with order key and token `k`; returns what went to storage
    /// (nothing: it is in flight).
    fn route(f: &InFlight<()>, to: &str, k: u64, via: Option<Via>) -> Vec<i64> {
        stored_by(|store| {
            f.route(k, (), message(to, k as i64), via, store);
        })
    }

    #[test]
    fn a_message_that_would_go_another_way_is_stored_after_those_in_flight() {
        let f = InFlight::<()>::new(0);
        for k in [3, 1, 2] {
            assert_eq!(route(&f, "bob", k, Some(peer(7))), NOTHING);
        }
        assert_eq!(route(&f, "carol", 4, Some(Via::Local(9))), NOTHING);
        // Bob logged in here: his next message must not overtake those on the link.
        assert_eq!(route(&f, "bob", 5, Some(Via::Local(9))), [1, 2, 3, 5]);
        assert_eq!(f.len(), 1, "carol's message stays");
        // Until those are stored, bob's next ones follow them.
        assert_eq!(route(&f, "bob", 6, Some(Via::Local(9))), [6]);
        f.done_storing(["bob"; 5].into_iter(), Stored::Committed);
        assert_eq!(route(&f, "bob", 7, Some(Via::Local(9))), NOTHING);
    }

    #[test]
    fn a_message_with_no_way_out_is_stored_after_those_still_in_flight() {
        let f = InFlight::<()>::new(0);
        assert_eq!(route(&f, "bob", 1, Some(peer(7))), NOTHING);
        assert_eq!(route(&f, "bob", 2, Some(peer(7))), NOTHING);
        // The link is gone from the router, and its entries not yet taken.
        assert_eq!(route(&f, "bob", 3, None), [1, 2, 3]);
        assert_eq!(stored_by(|s| _ = f.store_via(7, s)), NOTHING);
    }

    #[test]
    fn a_new_link_or_session_is_another_way() {
        let f = InFlight::<()>::new(0);
        assert_eq!(route(&f, "bob", 1, Some(peer(7))), NOTHING);
        assert_eq!(route(&f, "bob", 2, Some(peer(7))), NOTHING);
        assert_eq!(route(&f, "bob", 3, Some(peer(8))), [1, 2, 3]);
        assert_eq!(route(&f, "carol", 4, Some(Via::Local(1))), NOTHING);
        assert_eq!(route(&f, "carol", 5, Some(Via::Local(2))), [4, 5]);
        // Dave logged in again on the peer: same link, another session there.
        let on_link_9 = |session| Via::Peer { link: 9, session };
        assert_eq!(route(&f, "dave", 6, Some(on_link_9(Some(1)))), NOTHING);
        assert_eq!(route(&f, "dave", 7, Some(on_link_9(Some(2)))), [6, 7]);
    }

    #[test]
    fn one_failure_stores_all_of_that_recipients_messages_in_order() {
        let f = InFlight::<()>::new(0);
        for k in [1, 2, 3] {
            assert_eq!(route(&f, "bob", k, Some(Via::Local(9))), NOTHING);
        }
        assert_eq!(route(&f, "carol", 4, Some(Via::Local(10))), NOTHING);
        // The newest fails first (a session's unacknowledged messages come in any order).
        assert_eq!(stored_by(|s| _ = f.store_failed(3, s)), [1, 2, 3]);
        assert_eq!(
            stored_by(|s| _ = f.store_failed(1, s)),
            NOTHING,
            "ended already"
        );
        assert!(f.take(2).is_none());
        assert!(f.take(4).is_some(), "carol's is delivered");
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_link_going_down_stores_what_went_through_it_oldest_first() {
        let f = InFlight::<()>::new(0);
        for (to, k) in [("bob", 5), ("carol", 2), ("bob", 1), ("dave", 3)] {
            assert_eq!(route(&f, to, k, Some(peer(7))), NOTHING);
        }
        assert_eq!(route(&f, "erin", 4, Some(peer(8))), NOTHING);
        assert_eq!(route(&f, "fred", 6, Some(peer(11))), NOTHING);
        assert_eq!(stored_by(|s| _ = f.store_via(11, s)), [6]);
        assert_eq!(stored_by(|s| _ = f.store_via(7, s)), [1, 2, 3, 5]);
        assert_eq!(stored_by(|s| _ = f.store_all(s)), [4]);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn an_expired_message_takes_the_newer_ones_to_its_recipient_with_it() {
        let f = InFlight::<()>::new(0);
        for (to, k) in [("bob", 1), ("carol", 2), ("bob", 3)] {
            assert_eq!(route(&f, to, k, Some(Via::Local(9))), NOTHING);
        }
        let now = Instant::now();
        assert_eq!(stored_by(|s| _ = f.store_expired(now, s)), NOTHING);
        f.table.lock().entries.get_mut(&1).unwrap().deadline = now;
        assert_eq!(stored_by(|s| _ = f.store_expired(now, s)), [1, 3]);
        assert_eq!(f.len(), 1, "carol's has not expired");
    }

    #[test]
    fn after_a_failed_store_older_messages_are_refused_and_newer_ones_follow_into_storage() {
        let f = InFlight::<()>::new(0);
        let order_keys = |ms: &[NewPending]| ms.iter().map(|m| m.order_key).collect::<Vec<_>>();
        // Bob is offline: 1 and 2 go to storage.
        let (k1, k2) = (f.new_token(), f.new_token());
        assert_eq!(route(&f, "bob", k1, None), [k1 as i64]);
        assert_eq!(route(&f, "bob", k2, None), [k2 as i64]);
        // The store thread took 1 alone, and the commit failed.
        f.done_storing(["bob"].into_iter(), Stored::Failed);
        // Bob is back, but a new message must not go live ahead of the refused one.
        let k3 = f.new_token();
        assert_eq!(route(&f, "bob", k3, Some(Via::Local(9))), [k3 as i64]);
        // 2 was accepted before the failure: refused unattempted. 3 may be stored.
        let queued = vec![message("bob", k2 as i64), message("bob", k3 as i64)];
        let (go, refuse) = f.split_behind_failures(queued, |m| m);
        assert_eq!(
            (order_keys(&go), order_keys(&refuse)),
            (vec![k3 as i64], vec![k2 as i64])
        );
        f.done_storing(["bob"].into_iter(), Stored::Skipped);
        f.done_storing(["bob"].into_iter(), Stored::Committed);
        let k4 = f.new_token();
        assert_eq!(
            route(&f, "bob", k4, Some(Via::Local(9))),
            NOTHING,
            "live again"
        );
    }
}
