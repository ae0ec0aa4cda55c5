//! In-flight messages: accepted from a local sender, pushed towards their recipient, and
//! waiting for the recipient's acknowledgement. Each ends exactly once: `delivered`
//! (the sender gets `ok`), or failed (the message is stored, then the sender gets `ok`).
//!
//! All of one recipient's messages in flight went the same way (one local session, or
//! one link), so that none overtakes another: a message that would go another way is
//! diverted to storage together with them ([`InFlight::insert`]), and when one of them
//! fails, all of them are stored, in acceptance order ([`InFlight::take_failed`]).

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    /// To the session on this server with this connection id.
    Local(u64),
    /// Over the link to a peer with this id (a newer link to the same peer has another).
    Peer(u64),
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

/// A message that must not go the way it was to go: older messages to its recipient
/// went another way. Store them, in this order, then it.
pub struct Diverted<R = ReplyTo> {
    /// The recipient's messages that were in flight, oldest first.
    pub earlier: Vec<InFlightEntry<R>>,
    /// Who waits for the diverted message.
    pub reply: R,
    /// The diverted message.
    pub message: NewPending,
}

/// The table of in-flight messages, keyed by token.
pub struct InFlight<R = ReplyTo> {
    next_token: AtomicU64,
    table: Mutex<Table<R>>,
}

struct Table<R> {
    entries: HashMap<u64, InFlightEntry<R>>,
    /// Per recipient with messages in flight: the way they went, and their tokens.
    recipients: HashMap<String, Way>,
}

struct Way {
    via: Via,
    tokens: Vec<u64>,
}

impl<R> Table<R> {
    fn remove(&mut self, token: u64) -> Option<InFlightEntry<R>> {
        let entry = self.entries.remove(&token)?;
        if let Some(way) = self.recipients.get_mut(&entry.message.recipient) {
            way.tokens.retain(|&t| t != token);
            if way.tokens.is_empty() {
                self.recipients.remove(&entry.message.recipient);
            }
        }
        Some(entry)
    }

    /// Removes every entry to `recipient`.
    fn remove_recipient(&mut self, recipient: &str) -> Vec<InFlightEntry<R>> {
        let Some(way) = self.recipients.remove(recipient) else {
            return Vec::new();
        };
        way.tokens
            .iter()
            .filter_map(|t| self.entries.remove(t))
            .collect()
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
            }),
        }
    }

    /// A fresh token, for a message about to be inserted.
    pub fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a message before it is pushed `via` that way, unless messages to its
    /// recipient are in flight another way: then they are taken and returned with it,
    /// to be stored in that order instead.
    pub fn insert(
        &self,
        token: u64,
        reply: R,
        message: NewPending,
        via: Via,
    ) -> Result<(), Box<Diverted<R>>> {
        let mut table = self.table.lock();
        match table.recipients.get_mut(&message.recipient) {
            Some(way) if way.via == via => way.tokens.push(token),
            Some(_) => {
                let mut earlier = table.remove_recipient(&message.recipient);
                oldest_first(&mut earlier);
                return Err(Box::new(Diverted {
                    earlier,
                    reply,
                    message,
                }));
            }
            None => {
                let way = Way {
                    via,
                    tokens: vec![token],
                };
                table.recipients.insert(message.recipient.clone(), way);
            }
        }
        let entry = InFlightEntry {
            reply,
            message,
            via,
            deadline: Instant::now() + DELIVERY_TIMEOUT,
        };
        table.entries.insert(token, entry);
        Ok(())
    }

    /// Ends the entry: its recipient acknowledged it.
    pub fn take(&self, token: u64) -> Option<InFlightEntry<R>> {
        self.table.lock().remove(token)
    }

    /// The entry failed to reach its recipient: takes it and every other message in
    /// flight to that recipient, oldest first, to be stored in that order. Empty when
    /// the entry has ended already.
    pub fn take_failed(&self, token: u64) -> Vec<InFlightEntry<R>> {
        let mut table = self.table.lock();
        let Some(recipient) = table
            .entries
            .get(&token)
            .map(|e| e.message.recipient.clone())
        else {
            return Vec::new();
        };
        let mut taken = table.remove_recipient(&recipient);
        oldest_first(&mut taken);
        taken
    }

    /// Takes every entry sent over the link `link_id` (it went down, or a newer link
    /// replaced it), oldest first.
    pub fn take_via(&self, link_id: u64) -> Vec<InFlightEntry<R>> {
        self.table
            .lock()
            .remove_with_recipients(|e| e.via == Via::Peer(link_id))
    }

    /// Takes every entry whose deadline has passed, and the others to their
    /// recipients, oldest first.
    pub fn take_expired(&self, now: Instant) -> Vec<InFlightEntry<R>> {
        self.table
            .lock()
            .remove_with_recipients(|e| e.deadline <= now)
    }

    /// Takes every entry (shutdown: store them all), oldest first.
    pub fn take_all(&self) -> Vec<InFlightEntry<R>> {
        let mut table = self.table.lock();
        table.recipients.clear();
        let mut taken: Vec<_> = table.entries.drain().map(|(_, e)| e).collect();
        oldest_first(&mut taken);
        taken
    }

    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(to: &str, order_key: i64) -> NewPending {
        NewPending {
            recipient: to.to_string(),
            sender: "alice".to_string(),
            msg_id: format!("m{order_key}"),
            body: String::new(),
            sent_at: 0,
            order_key,
            group: None,
        }
    }

    /// Inserts a message with order key and token `k`.
    fn insert(f: &InFlight<()>, to: &str, k: u64, via: Via) -> Result<(), Box<Diverted<()>>> {
        f.insert(k, (), message(to, k as i64), via)
    }

    fn keys(entries: &[InFlightEntry<()>]) -> Vec<i64> {
        entries.iter().map(|e| e.message.order_key).collect()
    }

    #[test]
    fn a_message_that_would_go_another_way_is_diverted_with_those_in_flight() {
        let f = InFlight::<()>::new(0);
        for k in [3, 1, 2] {
            assert!(insert(&f, "bob", k, Via::Peer(7)).is_ok());
        }
        assert!(insert(&f, "carol", 4, Via::Local(9)).is_ok());
        // Bob logged in here: his next message must not overtake those on the link.
        let Err(diverted) = insert(&f, "bob", 5, Via::Local(9)) else {
            panic!("not diverted")
        };
        assert_eq!(keys(&diverted.earlier), [1, 2, 3], "oldest first");
        assert_eq!(diverted.message.order_key, 5);
        assert_eq!(f.len(), 1, "carol's message stays");
        // Nothing of bob's is in flight now: his next message goes its way.
        assert!(insert(&f, "bob", 6, Via::Local(9)).is_ok());
    }

    #[test]
    fn a_new_link_or_session_is_another_way() {
        let f = InFlight::<()>::new(0);
        assert!(insert(&f, "bob", 1, Via::Peer(7)).is_ok());
        assert!(insert(&f, "bob", 2, Via::Peer(7)).is_ok());
        assert!(insert(&f, "bob", 3, Via::Peer(8)).is_err());
        assert!(insert(&f, "carol", 4, Via::Local(1)).is_ok());
        assert!(insert(&f, "carol", 5, Via::Local(2)).is_err());
    }

    #[test]
    fn one_failure_takes_all_of_that_recipients_messages_in_order() {
        let f = InFlight::<()>::new(0);
        for k in [1, 2, 3] {
            assert!(insert(&f, "bob", k, Via::Local(9)).is_ok());
        }
        assert!(insert(&f, "carol", 4, Via::Local(10)).is_ok());
        // The newest fails first (a session's unacknowledged messages come in any order).
        assert_eq!(keys(&f.take_failed(3)), [1, 2, 3]);
        assert!(f.take_failed(1).is_empty(), "ended already");
        assert!(f.take(2).is_none());
        assert!(f.take(4).is_some(), "carol's is delivered");
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_link_going_down_takes_what_went_through_it_oldest_first() {
        let f = InFlight::<()>::new(0);
        for (to, k) in [("bob", 5), ("carol", 2), ("bob", 1), ("dave", 3)] {
            assert!(insert(&f, to, k, Via::Peer(7)).is_ok());
        }
        assert!(insert(&f, "erin", 4, Via::Peer(8)).is_ok());
        assert!(insert(&f, "fred", 6, Via::Peer(11)).is_ok());
        assert_eq!(keys(&f.take_via(11)), [6]);
        assert_eq!(keys(&f.take_via(7)), [1, 2, 3, 5]);
        assert_eq!(keys(&f.take_all()), [4]);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn an_expired_message_takes_the_newer_ones_to_its_recipient_with_it() {
        let f = InFlight::<()>::new(0);
        for (to, k) in [("bob", 1), ("carol", 2), ("bob", 3)] {
            assert!(insert(&f, to, k, Via::Local(9)).is_ok());
        }
        let now = Instant::now();
        assert!(f.take_expired(now).is_empty());
        f.table.lock().entries.get_mut(&1).unwrap().deadline = now;
        assert_eq!(keys(&f.take_expired(now)), [1, 3]);
        assert_eq!(f.len(), 1, "carol's has not expired");
    }
}
