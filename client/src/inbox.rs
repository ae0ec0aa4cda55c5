//! Pushed messages: each is de-duplicated, opened (fetching keys as needed), turned into
//! an event and acknowledged. The link's reader does it at once when that needs no
//! request to the server; otherwise the inbox thread does, apart from the reader, so that
//! waiting on a key fetch never stops replies from being read.

use crate::connection::{call, send_receipt, Event, Inner};
use crate::error::ClientError;
use crate::files::{ChunkOutcome, Downloads, FileChunk, FileHeader};
use crate::history::{ConversationRef, EntryRef};
use crate::keyring::{Call, Identity};
use crate::payload::Payload;
use crate::transport::NET_TIMEOUT;
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::e2e::{Envelope, EnvelopeKind};
use fastchat_common::protocol::client::RequestBody;
use fastchat_common::protocol::UnixMillis;
use fastchat_common::{Blob, ErrorCode};
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How many message ids the inbox remembers to drop duplicates.
const DEDUP_MEMORY: usize = 1 << 20;
/// How long a pushed message waits for a login to restore the keys.
const IDENTITY_WAIT: Duration = Duration::from_secs(30);
/// How long a key fetch may take.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A pushed message, as the server sent it.
pub(crate) struct Incoming {
    /// The session it was pushed to (see `Inner::session`).
    pub session: u64,
    pub tag: u64,
    pub id: String,
    pub from: String,
    pub to: String,
    pub body: Blob,
    pub sent_at: UnixMillis,
    /// The group, for a group message.
    pub group: Option<String>,
    /// Whether it came from storage (then the sender gets a receipt).
    pub stored: bool,
}

/// Remembers recently seen `(sender, id)` pairs, forgetting the oldest beyond a bound.
/// A pair is kept as one string, `sender NUL id`: user names hold no NUL, so the first
/// one separates the two (`common::names` checks them). A message's pair is put
/// together and hashed once ([`Dedup::check`]), and kept as it is ([`Dedup::insert`]):
/// one allocation per message, shared by the table and the order.
struct Dedup {
    seen: HashTable<Arc<str>>,
    order: VecDeque<Arc<str>>,
    hasher: RandomState,
    /// Where a pair is put together to be looked up.
    scratch: String,
    /// How many pairs it remembers.
    limit: usize,
}

/// A pair not seen yet, ready to be remembered once its message is done with.
struct Unseen {
    hash: u64,
    key: Arc<str>,
}

impl Default for Dedup {
    fn default() -> Dedup {
        Dedup::remembering(DEDUP_MEMORY)
    }
}

impl Dedup {
    fn remembering(limit: usize) -> Dedup {
        Dedup {
            seen: HashTable::new(),
            order: VecDeque::new(),
            hasher: RandomState::new(),
            scratch: String::new(),
            limit,
        }
    }

    /// `None` when the pair was seen; otherwise the pair, for [`Dedup::insert`].
    fn check(&mut self, from: &str, id: &str) -> Option<Unseen> {
        self.scratch.clear();
        self.scratch.push_str(from);
        self.scratch.push('\0');
        self.scratch.push_str(id);
        let hash = self.hasher.hash_one(self.scratch.as_str());
        if self.seen.find(hash, |k| **k == *self.scratch).is_some() {
            return None;
        }
        Some(Unseen {
            hash,
            key: Arc::from(self.scratch.as_str()),
        })
    }

    /// Remembers a pair that [`Dedup::check`] found unseen (under the same lock, so it
    /// still is).
    fn insert(&mut self, pair: Unseen) {
        if self.order.len() >= self.limit {
            if let Some(old) = self.order.pop_front() {
                let hash = self.hasher.hash_one(&*old);
                if let Ok(entry) = self.seen.find_entry(hash, |k| Arc::ptr_eq(k, &old)) {
                    entry.remove();
                }
            }
        }
        let hasher = &self.hasher;
        self.seen
            .insert_unique(pair.hash, pair.key.clone(), |k| hasher.hash_one(&**k));
        self.order.push_back(pair.key);
    }
}

/// What became of one message.
enum Outcome {
    /// Show it.
    Opened(String),
    /// A receipt for our messages with these ids.
    Receipt(Vec<String>),
    /// A file announced.
    FileStart(FileHeader),
    /// A chunk of a file.
    FileChunk(FileChunk),
    /// It can never be opened: report it, and acknowledge it so it is not sent again.
    Refused(ClientError),
    /// It could not be opened now (connection trouble, keys not restored): leave it
    /// unacknowledged, so the server stores it and delivers it again later.
    Retry(ClientError),
}

/// Whether a failure to get a key says the message can never open. Anything else
/// (connection trouble, a logout meanwhile, a local disk problem) may pass.
fn is_final(e: &ClientError) -> bool {
    matches!(
        e.code,
        ErrorCode::Undecryptable
            | ErrorCode::KeyChanged
            | ErrorCode::UnknownKey
            | ErrorCode::UnknownUser
    )
}

fn open(inner: &Inner, me: &Identity, m: &Incoming, fetch: Call<'_>) -> Outcome {
    let refused =
        |why: &str| Outcome::Refused(ClientError::new(ErrorCode::Undecryptable, why.to_string()));
    if m.to != me.user {
        return refused("the message is addressed to someone else");
    }
    let Some(bytes) = m.body.bytes() else {
        return refused("the body is not base64");
    };
    let envelope = match Envelope::parse(&bytes) {
        Ok(e) => e,
        Err(e) => return refused(&e.to_string()),
    };
    let plaintext = match envelope.kind() {
        EnvelopeKind::Direct { .. } if m.group.is_some() => {
            return refused("a direct envelope in a group message");
        }
        EnvelopeKind::Direct { key_id } => {
            let peer = if m.from == me.user { &m.to } else { &m.from };
            let key = match inner.keyring.key_by_id(fetch, me, peer, key_id) {
                Ok(k) => k,
                Err(e) if is_final(&e) => return Outcome::Refused(undecryptable(e)),
                Err(e) => return Outcome::Retry(e),
            };
            envelope.open_direct(&key, &m.from, &m.to, &m.id)
        }
        EnvelopeKind::Group { group, epoch } => {
            if m.group.as_deref() != Some(group.as_str()) {
                return refused("a group envelope for another group");
            }
            let key = match inner.keyring.group_key(fetch, me, group, *epoch) {
                Ok(k) => k,
                Err(e) if is_final(&e) => return Outcome::Refused(undecryptable(e)),
                Err(e) => return Outcome::Retry(e),
            };
            envelope.open_group(&key, group, &m.from, &m.id)
        }
    };
    let plaintext = match plaintext {
        Ok(p) => p,
        Err(e) => return refused(&e.to_string()),
    };
    match Payload::decode(&plaintext) {
        Ok(Payload::Text { text }) => Outcome::Opened(text),
        Ok(Payload::Receipt { id, ids }) if m.group.is_none() => {
            Outcome::Receipt(id.into_iter().chain(ids).collect())
        }
        Ok(Payload::Receipt { .. }) => refused("a receipt in a group message"),
        Ok(Payload::FileStart(header)) => Outcome::FileStart(header),
        Ok(Payload::FileChunk(chunk)) => Outcome::FileChunk(chunk),
        Err(e) => refused(&format!("unknown content: {e}")),
    }
}

/// A failure to get a key, reported as `undecryptable` unless it has a code of its own
/// that says more (`key_changed`).
fn undecryptable(e: ClientError) -> ClientError {
    if e.code == ErrorCode::KeyChanged {
        e
    } else {
        ClientError::new(ErrorCode::Undecryptable, e.message)
    }
}

/// What the inbox keeps between messages. The reader thread and the inbox thread both
/// open messages, one at a time: the reader only while the inbox thread has nothing.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    /// Messages handed to the inbox thread and not yet done with.
    queued: AtomicUsize,
    tx: Sender<Incoming>,
    /// The inbox thread's end, until the first hand-off starts it: most clients of a
    /// load test never need one (ten thousand idle clients, ten thousand threads fewer).
    rx: Mutex<Option<Receiver<Incoming>>>,
}

#[derive(Default)]
struct InboxState {
    dedup: Dedup,
    /// What the histories read in this run say was opened: see
    /// [`opened_by_an_earlier_run`].
    from_history: HistoryIds,
    /// Where a conversation's key is put together to be looked up.
    seeded_key: String,
    downloads: Option<Downloads>,
    /// Stored messages opened whose receipts are not sent yet, by (recipient, sender):
    /// the recipient is who we were logged in as.
    receipts: HashMap<(String, String), ReceiptIds>,
    /// When the oldest of those was opened.
    receipts_since: Option<Instant>,
    /// Some sender's receipt is as large as one may be.
    receipts_full: bool,
}

/// The ids gathered for one receipt, and their bytes.
#[derive(Default)]
struct ReceiptIds {
    ids: Vec<String>,
    bytes: usize,
}

/// Receipts to send: (recipient, sender) and the ids.
type Receipts = Vec<((String, String), Vec<String>)>;

/// Ids in one receipt at most.
const RECEIPT_IDS: usize = 512;
/// Bytes of ids in one receipt at most: an id is 1-64 bytes, and even escaped for JSON
/// (six bytes for one at worst) a receipt stays under the message size limit.
const RECEIPT_ID_BYTES: usize = 8 * 1024;
/// How long a receipt may wait for more ids while the inbox stays busy.
const RECEIPT_WAIT: Duration = Duration::from_millis(200);

impl InboxState {
    /// Keeps `id` (a stored message from `from` to `me`, opened) for the next receipt.
    fn add_receipt(&mut self, me: &str, from: &str, id: &str) {
        self.receipts_since.get_or_insert_with(Instant::now);
        let ids = self
            .receipts
            .entry((me.to_string(), from.to_string()))
            .or_default();
        ids.ids.push(id.to_string());
        ids.bytes += id.len();
        self.receipts_full |= ids.ids.len() >= RECEIPT_IDS || ids.bytes >= RECEIPT_ID_BYTES;
    }

    /// The receipts gathered, if they should go now: the inbox has nothing more queued,
    /// the oldest has waited long enough, or one is full.
    fn take_due_receipts(&mut self, idle: bool) -> Receipts {
        let due = self
            .receipts_since
            .is_some_and(|since| idle || self.receipts_full || since.elapsed() >= RECEIPT_WAIT);
        if !due {
            return Vec::new();
        }
        self.receipts_since = None;
        self.receipts_full = false;
        self.receipts
            .drain()
            .map(|(to, ids)| (to, ids.ids))
            .collect()
    }
}

/// Sends receipts, one per sender, with no lock held (sealing one may have to fetch a
/// key). Those gathered under another login than the current one are dropped: the
/// receipt is a courtesy, the message itself is delivered and acknowledged.
/// Each receipt's key is fetched by `deadline`, or within `NET_TIMEOUT` of its start
/// when there is none.
fn send_receipts(inner: &Inner, receipts: Receipts, deadline: Option<Instant>) {
    if receipts.is_empty() {
        return;
    }
    let me = inner.keyring.identity();
    for ((recipient, to), ids) in receipts {
        match &me {
            Some(me) if me.user == recipient => {
                let by = deadline.unwrap_or_else(|| Instant::now() + NET_TIMEOUT);
                send_receipt(inner, me, &to, ids, by)
            }
            _ => log::info!("{} receipts to {to} dropped: logged out", ids.len()),
        }
    }
}

/// Sends the receipts gathered and not sent yet (a closing client, once no message is
/// being handed over any more), fetching no key past `deadline`.
pub(crate) fn send_last_receipts(inner: &Inner, deadline: Instant) {
    let due = inner.inbox.state.lock().take_due_receipts(true);
    send_receipts(inner, due, Some(deadline));
}

impl Inbox {
    /// An inbox; its thread starts with the first message handed to it.
    pub fn new() -> Inbox {
        let (tx, rx) = crossbeam_channel::unbounded();
        Inbox {
            state: Mutex::new(InboxState::default()),
            queued: AtomicUsize::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the inbox thread if it is not running yet.
    fn start_thread(inner: &Arc<Inner>) {
        let mut rx = inner.inbox.rx.lock();
        let Some(receiver) = rx.take() else { return };
        // Weak: the inbox must not keep the client alive (it ends when the client goes).
        let weak = Arc::downgrade(inner);
        let spawned = thread::Builder::new()
            .name("fastchat-inbox".into())
            .stack_size(256 * 1024)
            .spawn({
                let receiver = receiver.clone();
                move || run_inbox(weak, receiver)
            });
        if let Err(e) = spawned {
            // Queued messages wait for the next attempt (at the next hand-off); unacked,
            // they are stored and sent again by the server meanwhile if need be.
            log::error!("no inbox thread: {e}");
            *rx = Some(receiver);
        }
    }
}

/// Takes a pushed message on the reader thread. A live message whose keys are at hand,
/// with nothing ahead of it in the inbox thread, is opened here and now: one thread
/// hand-off fewer per message. Anything that may have to wait (a key to fetch, keys being
/// restored by a login, a receipt to seal for a stored message) goes to the inbox thread,
/// and so does everything after it until that thread is done, so the order holds.
pub(crate) fn receive(inner: &Arc<Inner>, m: Incoming) {
    let m = if !m.stored && inner.inbox.queued.load(Ordering::Acquire) == 0 {
        // A panic here would end the reader without ending the link (no more replies,
        // no reconnection): it costs this message instead, which stays unacknowledged
        // and comes back from storage.
        let (id, from) = (m.id.clone(), m.from.clone());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_at_once(inner, m))) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(_) => {
                log::error!("message {id} from {from}: opening it panicked; left for later");
                return;
            }
        }
    } else {
        m
    };
    inner.inbox.queued.fetch_add(1, Ordering::AcqRel);
    let _ = inner.inbox.tx.send(m);
    Inbox::start_thread(inner);
}

/// Opens `m` on the calling thread if that needs no request to the server. Gives it
/// back untouched if it would.
fn open_at_once(inner: &Inner, m: Incoming) -> Option<Incoming> {
    let Some(me) = inner.keyring.identity() else {
        return Some(m);
    };
    let mut state = inner.inbox.state.lock();
    let pair = still_to_open(inner, &mut state, &m)?;
    let wanted_a_request = Cell::new(false);
    let no_requests = |_: RequestBody| {
        wanted_a_request.set(true);
        Err(ClientError::new(
            ErrorCode::Internal,
            "not on the reader thread",
        ))
    };
    let outcome = open(inner, &me, &m, &no_requests);
    if wanted_a_request.get() {
        return Some(m);
    }
    let (session, tag) = (m.session, m.tag);
    let events = act(inner, &mut state, &me, m, pair, outcome);
    drop(state);
    hand_over(inner, events, session, tag);
    None
}

/// Runs until the reader stops sending (the connection ended).
pub(crate) fn run_inbox(inner: Weak<Inner>, rx: Receiver<Incoming>) {
    while let Ok(m) = fastchat_common::channel::recv(&rx) {
        let Some(inner) = inner.upgrade() else { break };
        let Some(handing_over) = inner.handovers.begin() else {
            // The client is closing: left unacknowledged, for the next login.
            inner.inbox.queued.fetch_sub(1, Ordering::AcqRel);
            continue;
        };
        let (session, tag) = (m.session, m.tag);
        let events = {
            let mut state = inner.inbox.state.lock();
            match still_to_open(&inner, &mut state, &m) {
                None => None,
                Some(pair) => match inner.keyring.wait_identity(IDENTITY_WAIT) {
                    Some(me) => {
                        let fetch = |body: RequestBody| call(&inner, body, KEY_FETCH_TIMEOUT);
                        let outcome = open(&inner, &me, &m, &fetch);
                        act(&inner, &mut state, &me, m, pair, outcome)
                    }
                    None => {
                        log::warn!(
                            "message {} from {} left for later: no keys loaded",
                            m.id,
                            m.from
                        );
                        None
                    }
                },
            }
        };
        hand_over(&inner, events, session, tag);
        // A stored queue arrives in a burst: one receipt per sender for the whole
        // burst (or every 200 ms of it), not one per message (100,000 queued messages
        // were 100,000 receipts, each a message of its own). Sent before the hand-over
        // ends, so that a closing client sends them before its link ends.
        let due = inner.inbox.state.lock().take_due_receipts(rx.is_empty());
        send_receipts(&inner, due, None);
        drop(handing_over);
        inner.inbox.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends, without opening it, a message pushed to an earlier session (the server stored it
/// again when that session ended, and will push it to a later one) or one already
/// received (acknowledged again). Otherwise gives its `(sender, id)` pair, to remember
/// once it is done with.
fn still_to_open(inner: &Inner, state: &mut InboxState, m: &Incoming) -> Option<Unseen> {
    if m.session != inner.session.load(Ordering::Acquire) {
        return None;
    }
    let Some(pair) = state.dedup.check(&m.from, &m.id) else {
        inner.ack(m.session, m.tag);
        return None;
    };
    if m.stored && opened_by_an_earlier_run(inner, state, m, &pair) {
        // Shown before, and not acknowledged in time: acknowledged now, not shown again.
        // The run that showed it may not have sent its receipt either: the sender gets
        // one (perhaps a second).
        if m.group.is_none() {
            state.add_receipt(&m.to, &m.from, &m.id);
        }
        state.dedup.insert(pair);
        inner.ack(m.session, m.tag);
        return None;
    }
    Some(pair)
}

/// History lines read per conversation by [`opened_by_an_earlier_run`].
const HISTORY_SEED: usize = 4096;

/// Most `(from, id)` pairs kept from the histories read: past it, the conversations
/// read earliest are forgotten (and read again at their next stored message), so that
/// a client pushed stored messages from very many conversations keeps its memory
/// bounded (about 20 MiB at most).
const FROM_HISTORY_CAP: usize = 1 << 18;

/// The `(from, id)` pairs of the last history lines that others wrote, by conversation
/// (`me NUL (u|g) NUL name`), each as `from NUL id` (as [`Dedup`] keeps pairs).
#[derive(Default)]
struct HistoryIds {
    by_conversation: HashMap<String, HashSet<String>>,
    /// The conversations in the order they were read.
    order: VecDeque<String>,
    /// The pairs kept, in all.
    pairs: usize,
}

impl HistoryIds {
    fn get(&self, conversation: &str) -> Option<&HashSet<String>> {
        self.by_conversation.get(conversation)
    }

    /// Keeps a conversation's pairs, forgetting those read earliest while more than
    /// `cap` are kept (never the one just read).
    fn insert(&mut self, conversation: String, pairs: HashSet<String>, cap: usize) {
        self.pairs += pairs.len();
        if let Some(old) = self.by_conversation.insert(conversation.clone(), pairs) {
            self.pairs -= old.len();
        } else {
            self.order.push_back(conversation);
        }
        while self.pairs > cap && self.order.len() > 1 {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(forgotten) = self.by_conversation.remove(&oldest) {
                self.pairs -= forgotten.len();
            }
        }
    }
}

/// Whether the history has `m`, a message from storage: one an earlier run of this
/// client opened and did not get acknowledged (it was killed, or the server did not
/// delete it in time). The first stored message of a conversation in a run reads the
/// `(from, id)` of the conversation's last [`HISTORY_SEED`] lines (from the end of its
/// file). Only with a home: no home, no history.
fn opened_by_an_earlier_run(
    inner: &Inner,
    state: &mut InboxState,
    m: &Incoming,
    pair: &Unseen,
) -> bool {
    // A pushed message's `to` is the session's user: who we are logged in as, known
    // before our keys are (the first messages of a login may arrive before them).
    let me = &m.to;
    let (kind, name) = match &m.group {
        Some(group) => ("g", group),
        None => ("u", &m.from),
    };
    let key = &mut state.seeded_key;
    key.clear();
    for part in [me.as_str(), kind, name] {
        key.push_str(part);
        key.push('\0');
    }
    if state.from_history.get(key).is_none() {
        let conversation = match &m.group {
            Some(group) => ConversationRef::Group(group),
            None => ConversationRef::User(&m.from),
        };
        match inner.history.recent_ids(me, conversation, HISTORY_SEED) {
            Ok(ids) => {
                let others = ids.into_iter().filter(|(from, _)| from != me);
                let pairs = others.map(|(from, id)| format!("{from}\0{id}")).collect();
                let conversation = state.seeded_key.clone();
                state
                    .from_history
                    .insert(conversation, pairs, FROM_HISTORY_CAP);
            }
            // Tried again at the conversation's next stored message.
            Err(e) => log::warn!("history not read to drop repeats: {e}"),
        }
    }
    // The pair's key is `from NUL id` too.
    state
        .from_history
        .get(&state.seeded_key)
        .is_some_and(|pairs| pairs.contains(&*pair.key))
}

/// Hands a message's events over, then acknowledges it, with no inbox lock held (an
/// event handler runs right here). `None`: it is to be delivered again later.
fn hand_over(inner: &Inner, events: Option<Vec<Event>>, session: u64, tag: u64) {
    let Some(events) = events else { return };
    for event in events {
        inner.events.send(event);
    }
    inner.ack(session, tag);
}

/// Acts on what opening a message gave: downloads, history, receipts to send, and the
/// events to hand over. `None` when it is to be delivered again later (then it is not
/// remembered as received, nor acknowledged).
fn act(
    inner: &Inner,
    state: &mut InboxState,
    me: &Identity,
    m: Incoming,
    pair: Unseen,
    outcome: Outcome,
) -> Option<Vec<Event>> {
    let downloads = state
        .downloads
        .get_or_insert_with(|| Downloads::new(inner.config.home.as_deref()));
    let mut events = Vec::with_capacity(1);
    match outcome {
        Outcome::FileStart(header) => {
            let name = header.name.clone();
            if let Err(error) = downloads.start(&m.from, header, m.sent_at) {
                events.push(Event::FileFailed {
                    from: m.from,
                    name,
                    error,
                });
            }
        }
        Outcome::FileChunk(chunk) => {
            let name = downloads
                .name_of(&m.from, &chunk.file_id)
                .unwrap_or_default();
            match downloads.chunk(&m.from, chunk, m.sent_at) {
                Ok(ChunkOutcome::Progress) => {}
                Ok(ChunkOutcome::Done(file)) => events.push(Event::File {
                    from: m.from,
                    group: m.group,
                    name: file.name,
                    path: file.path,
                    bytes: file.bytes,
                    sha256: file.sha256,
                }),
                Err(error) => events.push(Event::FileFailed {
                    from: m.from,
                    name,
                    error,
                }),
            }
        }
        Outcome::Receipt(ids) => {
            events.extend(ids.into_iter().map(|id| Event::Delivered {
                id,
                to: m.from.clone(),
            }));
        }
        Outcome::Opened(text) => {
            if m.stored && m.group.is_none() {
                // It waited in storage: tell the sender it has arrived now, in one
                // receipt for all the inbox opens in a row (`run_inbox` sends it).
                state.add_receipt(&me.user, &m.from, &m.id);
            }
            let conversation = match &m.group {
                Some(g) => ConversationRef::Group(g),
                None => ConversationRef::User(&m.from),
            };
            let entry = EntryRef {
                id: &m.id,
                from: &m.from,
                text: &text,
                sent_at: m.sent_at,
            };
            inner.history.record(&me.user, conversation, &entry);
            events.push(match m.group {
                Some(group) => Event::GroupMessage {
                    group,
                    id: m.id,
                    from: m.from,
                    text,
                    sent_at: m.sent_at,
                },
                None => Event::Message {
                    id: m.id,
                    from: m.from,
                    to: m.to,
                    text,
                    sent_at: m.sent_at,
                },
            });
        }
        Outcome::Refused(error) => events.push(Event::Undecryptable {
            id: m.id,
            from: m.from,
            error,
        }),
        Outcome::Retry(e) => {
            log::warn!("message {} from {} left for later: {e}", m.id, m.from);
            return None;
        }
    }
    state.dedup.insert(pair);
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histories_read_earliest_are_forgotten_past_the_cap() {
        let pairs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let mut ids = HistoryIds::default();
        ids.insert("a".into(), pairs(&["a\0m1", "a\0m2"]), 4);
        ids.insert("b".into(), pairs(&["b\0m1", "b\0m2"]), 4);
        assert!(ids.get("a").is_some() && ids.get("b").is_some(), "four fit");
        ids.insert("c".into(), pairs(&["c\0m1"]), 4);
        assert!(ids.get("a").is_none(), "read earliest: forgotten");
        assert!(ids.get("b").is_some_and(|p| p.contains("b\0m2")));
        assert!(ids.get("c").is_some_and(|p| p.contains("c\0m1")));
        assert_eq!(ids.pairs, 3);
        // One conversation alone over the cap is kept: it was just read.
        ids.insert(
            "d".into(),
            pairs(&["d\0m1", "d\0m2", "d\0m3", "d\0m4", "d\0m5"]),
            4,
        );
        assert!(ids.get("d").is_some() && ids.get("b").is_none() && ids.get("c").is_none());
        assert_eq!(ids.pairs, 5);
    }

    /// Checks a pair and remembers it if it was new; returns whether it was.
    fn remember(dedup: &mut Dedup, from: &str, id: &str) -> bool {
        let pair = dedup.check(from, id);
        let new = pair.is_some();
        if let Some(pair) = pair {
            dedup.insert(pair);
        }
        new
    }

    #[test]
    fn dedup_tells_pairs_apart_and_forgets_the_oldest() {
        let mut dedup = Dedup::remembering(2);
        let seen = |dedup: &mut Dedup, from: &str, id: &str| dedup.check(from, id).is_none();
        assert!(remember(&mut dedup, "ann", "1"));
        assert!(seen(&mut dedup, "ann", "1"));
        assert!(!seen(&mut dedup, "ann", "2"));
        assert!(!seen(&mut dedup, "bob", "1"));
        // Ids may hold anything (names hold no NUL, so the first one separates).
        assert!(remember(&mut dedup, "a", "b\0c"));
        assert!(!seen(&mut dedup, "a", "b") && !seen(&mut dedup, "ab", "c"));
        assert!(seen(&mut dedup, "a", "b\0c"));
        // A repeat is not remembered again, and pushes nothing out.
        assert!(!remember(&mut dedup, "a", "b\0c"));
        assert!(seen(&mut dedup, "ann", "1"), "a repeat takes no room");
        assert!(remember(&mut dedup, "bob", "9"));
        assert!(!seen(&mut dedup, "ann", "1"), "the oldest is forgotten");
        assert!(seen(&mut dedup, "a", "b\0c") && seen(&mut dedup, "bob", "9"));
        assert_eq!((dedup.seen.len(), dedup.order.len()), (2, 2));
    }

    #[test]
    fn receipts_go_when_the_inbox_is_idle_or_one_is_full() {
        let mut state = InboxState::default();
        assert!(state.take_due_receipts(true).is_empty(), "nothing gathered");
        state.add_receipt("bob", "alice", "m1");
        state.add_receipt("bob", "alice", "m2");
        state.add_receipt("bob", "carol", "m3");
        assert!(state.take_due_receipts(false).is_empty(), "busy: they wait");
        let mut due = state.take_due_receipts(true);
        due.sort();
        assert_eq!(
            due,
            vec![
                (
                    ("bob".into(), "alice".into()),
                    vec!["m1".into(), "m2".into()]
                ),
                (("bob".into(), "carol".into()), vec!["m3".into()]),
            ]
        );
        assert!(state.take_due_receipts(true).is_empty(), "sent once");

        for i in 0..RECEIPT_IDS {
            state.add_receipt("bob", "alice", &i.to_string());
        }
        let due = state.take_due_receipts(false);
        assert_eq!(due.len(), 1, "a full receipt goes even while busy");
        assert_eq!(due[0].1.len(), RECEIPT_IDS);

        // Long ids fill a receipt by their bytes first.
        let long = "x".repeat(64);
        for _ in 0..RECEIPT_ID_BYTES / 64 - 1 {
            state.add_receipt("bob", "alice", &long);
        }
        assert!(state.take_due_receipts(false).is_empty(), "not full yet");
        state.add_receipt("bob", "alice", &long);
        let due = state.take_due_receipts(false);
        assert_eq!(due[0].1.len(), RECEIPT_ID_BYTES / 64, "full by bytes");
    }
}
