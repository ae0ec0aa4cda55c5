//! `Client`: a logged-in presence in the cluster that survives its connections. Each
//! connection is a `Link` (`link.rs`); when the installed link ends, the client asks the
//! balancer for a server again, resumes the session with its resumption token, and
//! re-sends what was not answered, in order. Requests made meanwhile wait for it.

use crate::error::ClientError;
use crate::files::{OutgoingFile, CHUNK_BYTES};
use crate::handover::HandOvers;
use crate::history::{Conversation, ConversationRef, EntryRef, History, HistoryEntry};
use crate::inbox::Inbox;
use crate::keyring::{Identity, Keyring};
use crate::link::{self, Link};
use crate::payload::Payload;
use crate::transport::{Trust, NET_TIMEOUT};
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::e2e::{
    open_key_backup, seal_direct, seal_group, seal_key_backup, PublicKey, UserKeys,
};
use fastchat_common::ids::new_message_id;
use fastchat_common::password::login_secret;
use fastchat_common::protocol::client::{OkResult, Request, RequestBody};
use fastchat_common::protocol::{UnixMillis, MAX_TEXT_BYTES};
use fastchat_common::{Blob, ErrorCode};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A function that takes pushed events instead of [`Client::events`]; see
/// [`ClientConfig::with_event_handler`].
pub type EventHandler = Arc<dyn Fn(Event) + Send + Sync>;

/// How to reach the cluster, and whom to trust there.
#[derive(Clone)]
pub struct ClientConfig {
    /// The balancer's `HOST:PORT`.
    pub balancer: String,
    /// Where this user's private key is cached (`HOME/keys/USER.key`, mode 0600) and
    /// other users' key fingerprints are pinned; `None` keeps them in memory only.
    pub home: Option<std::path::PathBuf>,
    pub(crate) trust: Trust,
    pub(crate) handler: Option<EventHandler>,
}

impl ClientConfig {
    /// The balancer's address and the cluster CA certificate (PEM) that every server
    /// and the balancer must present a certificate from.
    pub fn new(balancer: impl Into<String>, ca_pem: &[u8]) -> Result<ClientConfig, ClientError> {
        Ok(ClientConfig {
            balancer: balancer.into(),
            home: None,
            trust: Trust::from_ca_pem(ca_pem)?,
            handler: None,
        })
    }

    /// Hands every pushed event to `handler`, called on the client's own thread that
    /// produced it (the connection's reader, mostly), instead of queueing it for
    /// [`Client::events`], which then stays empty. It saves a thread wake-up per event:
    /// for a client receiving messages one by one, the largest cost after the kernel's.
    /// The handler must return quickly and must not call this client (a send may wait
    /// for a key, whose reply is read by the very thread that would be waiting): pass
    /// work on to a thread of your own. No lock of the client's is held while it runs.
    /// A panic in it is caught and logged; the event is lost.
    pub fn with_event_handler(mut self, handler: impl Fn(Event) + Send + Sync + 'static) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Keeps keys in `home` (see [`ClientConfig::home`]).
    pub fn with_home(mut self, home: impl Into<std::path::PathBuf>) -> ClientConfig {
        self.home = Some(home.into());
        self
    }

    /// Like [`ClientConfig::new`], reading the CA from a PEM file.
    pub fn with_ca_file(
        balancer: impl Into<String>,
        ca_file: &std::path::Path,
    ) -> Result<ClientConfig, ClientError> {
        let pem = std::fs::read(ca_file).map_err(|e| {
            ClientError::new(
                ErrorCode::LocalError,
                format!("cannot read the cluster CA {}: {e}", ca_file.display()),
            )
        })?;
        ClientConfig::new(balancer, &pem)
    }
}

/// What the server pushes, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A direct message, opened (each `(from, id)` is reported once).
    Message {
        /// Sender's message id.
        id: String,
        /// Sender.
        from: String,
        /// Recipient (us).
        to: String,
        /// The text.
        text: String,
        /// Server timestamp.
        sent_at: UnixMillis,
    },
    /// A group message, opened (each `(from, id)` is reported once).
    GroupMessage {
        /// The group.
        group: String,
        /// Sender's message id.
        id: String,
        /// Sender.
        from: String,
        /// The text.
        text: String,
        /// Server timestamp.
        sent_at: UnixMillis,
    },
    /// A membership change in one of our groups (`change`: `created`, `added`,
    /// `removed`, `left` or `admin`), which began key epoch `epoch`.
    Group {
        /// The group.
        group: String,
        /// What happened.
        change: String,
        /// To whom.
        user: String,
        /// The new epoch.
        epoch: u64,
    },
    /// A file arrived whole: checked against its SHA-256 and saved under `path`
    /// (in `HOME/downloads/`, with a safe name that overwrote nothing).
    File {
        /// The sender.
        from: String,
        /// The group, for a file sent to a group.
        group: Option<String>,
        /// The name the sender gave it.
        name: String,
        /// Where it was saved.
        path: std::path::PathBuf,
        /// Its size.
        bytes: u64,
        /// Its hex SHA-256.
        sha256: String,
    },
    /// A file that arrived damaged (or could not be saved): nothing was kept.
    FileFailed {
        /// The sender.
        from: String,
        /// The name the sender gave it (empty if unknown).
        name: String,
        /// Why (`damaged_file`, or `local_error`).
        error: ClientError,
    },
    /// A friend came online or went offline.
    Presence {
        /// The friend.
        user: String,
        /// Whether it is online now.
        online: bool,
    },
    /// A direct message we sent has reached the recipient's client.
    Delivered {
        /// Our message id.
        id: String,
        /// The recipient.
        to: String,
    },
    /// A message that does not open (tampered, wrong key, addressed to someone else):
    /// never shown as a message. `error.code` is `undecryptable` (or `key_changed`).
    Undecryptable {
        /// The message id the server gave.
        id: String,
        /// The sender the server named.
        from: String,
        /// Why.
        error: ClientError,
    },
    /// Our session was replaced by a login elsewhere.
    SessionReplaced,
    /// The server asked us to reconnect (it is shutting down).
    Reconnect {
        /// The server's reason.
        reason: String,
    },
    /// The connection to the server was lost; the client is reconnecting and will
    /// resume the session (requests wait meanwhile).
    Reconnecting {
        /// Why the connection ended.
        reason: String,
    },
    /// The session resumed on `server`; what was not answered has been sent again.
    Reconnected {
        /// The server now in use.
        server: String,
    },
    /// The connection ended for good (not logged in, the session was replaced, the
    /// resumption was refused, or reconnecting failed for too long).
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// The outcome of one request.
pub type Reply = Result<Option<OkResult>, ClientError>;

/// Makes the request again (a group message sealed under an epoch that has changed).
type Retry = Box<dyn FnOnce() -> ReplyHandle + Send>;

/// A reply that will arrive later.
pub struct ReplyHandle {
    rx: Receiver<Reply>,
    on_stale_epoch: Mutex<Option<Retry>>,
}

impl ReplyHandle {
    fn new(rx: Receiver<Reply>) -> ReplyHandle {
        ReplyHandle {
            rx,
            on_stale_epoch: Mutex::new(None),
        }
    }

    /// A handle whose reply is already known.
    pub fn ready(reply: Reply) -> ReplyHandle {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(reply);
        ReplyHandle::new(rx)
    }

    /// Waits for the reply, at most `timeout` (then `timeout` is the error). A group
    /// message refused `stale_epoch` is sealed again under the new epoch and re-sent
    /// once, with the same id.
    pub fn wait(&self, timeout: Duration) -> Reply {
        let reply = self.wait_once(timeout);
        if matches!(&reply, Err(e) if e.code == ErrorCode::StaleEpoch) {
            if let Some(retry) = self.on_stale_epoch.lock().take() {
                return retry().wait(timeout);
            }
        }
        reply
    }

    fn wait_once(&self, timeout: Duration) -> Reply {
        match fastchat_common::channel::recv_timeout(&self.rx, timeout) {
            Ok(reply) => reply,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(ClientError::new(ErrorCode::Timeout, "no reply in time"))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(ClientError::disconnected("connection closed"))
            }
        }
    }

    /// The channel the reply arrives on, for `select!`.
    pub fn receiver(&self) -> &Receiver<Reply> {
        &self.rx
    }
}

/// What a link's writer thread sends.
pub(crate) enum Out {
    Frame(Vec<u8>),
    Ack(u64),
    /// Write what came before, then shut the connection's sending side (a graceful close).
    Finish,
}

/// A request waiting for its reply.
struct Waiter {
    tx: Sender<Reply>,
    /// The frame, kept to send again after a reconnect (`None`: a request whose outcome
    /// would be ambiguous after a lost connection, such as `login`; it fails instead).
    resend: Option<Vec<u8>>,
    /// The link it was sent on (0: not sent yet).
    sent_on: u64,
    /// Times it was refused `unavailable` and sent again.
    retries: u32,
    /// Refused `unavailable`: the next retry pass sends it again.
    retry_due: bool,
    /// For a direct message: its recipient, told of as `Delivered` when the `ok` says
    /// the recipient's client took it.
    to: Option<String>,
}

/// How long after an `unavailable` refusal a request is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How many times (about a minute) before `unavailable` is reported to the caller.
const MAX_RETRIES: u32 = 120;

/// How long the client keeps trying to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// How long [`Client::close`] waits, in all, for the messages being handed over and for
/// the server to read the last acknowledgements.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Until when `close` and `logout` wait for the messages being handed over: not at all
/// on a thread handing one over (an event handler calling them cannot wait for itself).
fn hand_over_deadline() -> Instant {
    match HandOvers::on_this_thread() {
        true => Instant::now(),
        false => Instant::now() + CLOSE_WAIT,
    }
}

/// What the client's threads share, across links.
pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    next_req: AtomicU64,
    waiting: Mutex<BTreeMap<u64, Waiter>>,
    /// The installed link; `None` while reconnecting or closed.
    link: Mutex<Option<Link>>,
    next_link: AtomicU64,
    /// The server last connected to.
    server: Mutex<String>,
    /// Set when the client is closed or has given up: no more reconnects.
    closed: AtomicBool,
    pub(crate) keyring: Keyring,
    pub(crate) history: History,
    /// Counts the sessions begun (each `ok {kind: session}` a reader sees). Pushed
    /// messages carry the count they arrived under; the inbox drops, unacknowledged,
    /// those of an earlier session, whose tags mean nothing now.
    pub(crate) session: AtomicU64,
    /// (user, token) to resume the session with after losing the link.
    pub(crate) resume: Mutex<Option<(String, String)>>,
    pub(crate) events: EventSink,
    pub(crate) inbox: Inbox,
    /// Messages being handed over; shut by `close`.
    pub(crate) handovers: HandOvers,
    /// Set while a retry pass is scheduled.
    retry_scheduled: AtomicBool,
}

impl Inner {
    /// Hands a reply to its waiter. A re-sendable request refused `unavailable` (the
    /// database is out of reach) is sent again instead, by a retry pass that re-sends
    /// every such request in order, so a conversation keeps its order.
    pub(crate) fn reply(self: &Arc<Self>, req: u64, reply: Reply) {
        let unavailable = matches!(&reply, Err(e) if e.code == ErrorCode::Unavailable);
        let mut waiting = self.waiting.lock();
        if unavailable {
            if let Some(w) = waiting.get_mut(&req) {
                if w.resend.is_some() && w.retries < MAX_RETRIES {
                    w.retries += 1;
                    w.retry_due = true;
                    drop(waiting);
                    self.schedule_retry();
                    return;
                }
            }
        }
        let waiter = waiting.remove(&req);
        // Events go out with no lock held (an event handler runs right here).
        drop(waiting);
        let Some(w) = waiter else {
            return;
        };
        if let (
            Ok(Some(OkResult::Sent {
                id, stored: false, ..
            })),
            Some(to),
        ) = (&reply, &w.to)
        {
            self.events.send(Event::Delivered {
                id: id.clone(),
                to: to.clone(),
            });
        }
        let _ = w.tx.send(reply);
    }

    /// Starts a retry pass in [`RETRY_AFTER`] unless one is scheduled.
    fn schedule_retry(self: &Arc<Self>) {
        if self.retry_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = thread::Builder::new()
            .name("fastchat-retry".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                thread::sleep(RETRY_AFTER);
                inner.retry_scheduled.store(false, Ordering::Release);
                let link = inner.link.lock();
                let Some(link) = link.as_ref() else {
                    return; // reconnecting: the resume pass re-sends everything
                };
                let mut waiting = inner.waiting.lock();
                for w in waiting.values_mut().filter(|w| w.retry_due) {
                    w.retry_due = false;
                    w.sent_on = link.id;
                    if let Some(frame) = &w.resend {
                        link.out.queue(frame.clone());
                    }
                }
            });
        if spawned.is_err() {
            self.retry_scheduled.store(false, Ordering::Release);
        }
    }

    /// Acknowledges a pushed message, if the session it came in is still the current
    /// one (otherwise its tag would name another message). On a link's reader thread
    /// the reader writes the acknowledgements itself when it has read all it was sent
    /// (`crate::link::take_reader_ack`); elsewhere they go through the writer thread.
    pub(crate) fn ack(&self, session: u64, tag: u64) {
        if self.session.load(Ordering::Acquire) != session {
            return;
        }
        if crate::link::take_reader_ack(tag) {
            return;
        }
        self.ack_through_writer(tag);
    }

    /// Queues an acknowledgement for the installed link's writer thread.
    fn ack_through_writer(&self, tag: u64) {
        if let Some(link) = self.link.lock().as_ref() {
            link.out.ack(tag);
        }
    }

    /// Fails every waiter, and stops reconnecting.
    fn give_up(&self, reason: &str) {
        self.closed.store(true, Ordering::Release);
        if let Some(link) = self.link.lock().take() {
            link.cut();
        }
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for (_, w) in waiting {
            let _ = w.tx.send(Err(ClientError::disconnected(reason)));
        }
    }
}

/// Whether a request can be sent again after a lost connection without changing its
/// meaning: messages (the recipient drops duplicates by id) and reads.
fn resendable(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::Send { .. }
            | RequestBody::GroupSend { .. }
            | RequestBody::GroupMembers { .. }
            | RequestBody::GroupKey { .. }
            | RequestBody::PublicKey { .. }
            | RequestBody::ConversationKey { .. }
            | RequestBody::Ping
    )
}

/// Sends a request on the installed link, or keeps it for the next one while
/// reconnecting; the reply arrives on the handle.
fn send_request(inner: &Inner, body: RequestBody) -> ReplyHandle {
    send_request_to(inner, body, None)
}

/// [`send_request`], reporting the delivery to `to` as `Event::Delivered` when the `ok`
/// says the message reached it (only a text does: not a file's chunks, not a receipt).
fn send_request_to(inner: &Inner, body: RequestBody, to: Option<String>) -> ReplyHandle {
    if inner.closed.load(Ordering::Acquire) {
        return ReplyHandle::ready(Err(ClientError::disconnected("connection closed")));
    }
    let req = inner.next_req.fetch_add(1, Ordering::Relaxed);
    let resend = resendable(&body);
    let frame = Request { req, body }.to_frame(true);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let link = inner.link.lock();
    let mut send_on = None;
    match link.as_ref() {
        Some(link) => {
            let waiter = Waiter {
                tx,
                resend: resend.then(|| frame.clone()),
                sent_on: link.id,
                retries: 0,
                retry_due: false,
                to,
            };
            inner.waiting.lock().insert(req, waiter);
            send_on = Some((link.out.clone(), frame));
        }
        None if resend => {
            let waiter = Waiter {
                tx,
                resend: Some(frame),
                sent_on: 0,
                retries: 0,
                retry_due: false,
                to,
            };
            inner.waiting.lock().insert(req, waiter);
        }
        None => {
            return ReplyHandle::ready(Err(ClientError::disconnected(
                "reconnecting; try again shortly",
            )))
        }
    }
    drop(link);
    // Sent at once even while an earlier message to the same target waits for its retry:
    // the server refuses it and keeps their order (`take_turn`), and the same retry pass
    // re-sends both, in order. Sent with no lock held: it may write to the socket, and
    // `close` must be able to cut the link meanwhile. Had the link ended since, the write
    // fails and the reconnection re-sends the frame from its waiter.
    if let Some((out, frame)) = send_on {
        out.send(frame);
    }
    // The client may have given up just before we registered.
    if inner.closed.load(Ordering::Acquire) {
        if let Some(w) = inner.waiting.lock().remove(&req) {
            let _ =
                w.tx.send(Err(ClientError::disconnected("connection closed")));
        }
    }
    ReplyHandle::new(rx)
}

/// Sends a request and waits for its reply, at most `timeout`.
pub(crate) fn call(inner: &Inner, body: RequestBody, timeout: Duration) -> Reply {
    send_request(inner, body).wait(timeout)
}

/// Called by a link's reader when the link ends. Requests sent on it that cannot be
/// re-sent fail. If it was the installed link, the client reconnects (on this thread)
/// when it has a session to resume, and otherwise reports `Disconnected`.
pub(crate) fn link_ended(inner: &Arc<Inner>, link_id: u64, reason: String) {
    {
        let mut waiting = inner.waiting.lock();
        let failed: Vec<u64> = waiting
            .iter()
            .filter(|(_, w)| w.sent_on == link_id && w.resend.is_none())
            .map(|(req, _)| *req)
            .collect();
        for req in failed {
            if let Some(w) = waiting.remove(&req) {
                let _ = w.tx.send(Err(ClientError::disconnected(&reason)));
            }
        }
    }
    {
        let mut link = inner.link.lock();
        if link.as_ref().map(|l| l.id) != Some(link_id) {
            return; // a link that was never installed, or already replaced
        }
        if let Some(old) = link.take() {
            old.cut();
        }
    }
    if inner.closed.load(Ordering::Acquire) || inner.resume.lock().is_none() {
        inner.give_up(&reason);
        inner.events.send(Event::Disconnected { reason });
        return;
    }
    inner.events.send(Event::Reconnecting {
        reason: reason.clone(),
    });
    reconnect(inner);
}

/// Reconnects and resumes, retrying with backoff for up to [`RECONNECT_FOR`].
fn reconnect(inner: &Arc<Inner>) {
    let deadline = Instant::now() + RECONNECT_FOR;
    let mut delay = Duration::from_millis(100);
    let reason = loop {
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        match resume_on_new_link(inner) {
            Ok(server) => {
                inner.events.send(Event::Reconnected { server });
                return;
            }
            Err(e)
                if e.code == ErrorCode::ResumeRefused || e.code == ErrorCode::UntrustedServer =>
            {
                break e.to_string();
            }
            Err(e) => {
                log::info!("reconnect failed: {e}");
                if Instant::now() + delay > deadline {
                    break e.to_string();
                }
            }
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    };
    inner.give_up(&reason);
    inner.events.send(Event::Disconnected { reason });
}

/// One attempt: a new link, `resume` on it, then install it and send again, in order,
/// every request still waiting.
fn resume_on_new_link(inner: &Arc<Inner>) -> Result<String, ClientError> {
    let (user, token) = inner
        .resume
        .lock()
        .clone()
        .ok_or_else(|| ClientError::new(ErrorCode::ResumeRefused, "no session to resume"))?;
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed) + 1;
    let link = link::start(inner, id)?;
    let req = inner.next_req.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(1);
    inner.waiting.lock().insert(
        req,
        Waiter {
            tx,
            resend: None,
            sent_on: id,
            retries: 0,
            retry_due: false,
            to: None,
        },
    );
    let frame = serde_json::to_vec(&Request {
        req,
        body: RequestBody::Resume { user, token },
    })
    .expect("serializes");
    link.out.send(frame);
    let resumed = ReplyHandle::new(rx).wait(NET_TIMEOUT);
    if let Err(e) = resumed {
        inner.waiting.lock().remove(&req);
        link.cut();
        return Err(e);
    }
    let server = link.server.clone();
    let mut installed = inner.link.lock();
    let mut waiting = inner.waiting.lock();
    for w in waiting.values_mut() {
        if let Some(frame) = &w.resend {
            w.sent_on = id;
            w.retry_due = false;
            link.out.queue(frame.clone());
        }
    }
    drop(waiting);
    if !link.alive.load(Ordering::Acquire) {
        // It ended before it was installed: its reader did not reconnect; we try again.
        return Err(ClientError::disconnected(
            "the new connection ended at once",
        ));
    }
    if inner.closed.load(Ordering::Acquire) {
        // Closed meanwhile (`give_up` sets the flag before it takes the installed link).
        link.cut();
        return Err(ClientError::disconnected("connection closed"));
    }
    *installed = Some(link);
    *inner.server.lock() = server.clone();
    Ok(server)
}

/// Seals `payload` as the direct message `id` from `me` to `to`, under their
/// conversation key (fetched or made first if need be, each request waiting at most
/// `timeout`).
fn seal_direct_payload(
    inner: &Inner,
    me: &Identity,
    to: &str,
    id: &str,
    payload: &Payload,
    deadline: Instant,
) -> Result<Vec<u8>, ClientError> {
    // Finding the key may take several calls: together they end by `deadline`.
    let fetch = |body: RequestBody| {
        call(
            inner,
            body,
            deadline.saturating_duration_since(Instant::now()),
        )
    };
    let (key_id, key) = inner.keyring.sending_key(&fetch, me, to)?;
    seal_direct(&key, &key_id, &me.user, to, id, &payload.encode())
        .map_err(|e| ClientError::new(ErrorCode::LocalError, e.to_string()))
}

/// Sends the sealed direct message `id` to `to`; with `report`, its delivery becomes an
/// `Event::Delivered` when the `ok` says it reached `to`.
fn send_sealed(inner: &Inner, id: &str, to: &str, body: Vec<u8>, report: bool) -> ReplyHandle {
    let send = RequestBody::Send {
        id: id.to_string(),
        to: to.to_string(),
        body: Blob::from_vec(body),
    };
    send_request_to(inner, send, report.then(|| to.to_string()))
}

/// Seals one receipt for the messages `ids` (all from `to`) and sends it to their
/// sender, without waiting for the reply (the write itself may wait on the socket, see
/// `link::LinkOut::send`; a key to fetch first, at most `timeout`).
pub(crate) fn send_receipt(
    inner: &Inner,
    me: &Identity,
    to: &str,
    ids: Vec<String>,
    deadline: Instant,
) {
    let receipt_id = new_message_id();
    let count = ids.len();
    // One id alone goes in the form earlier clients read too.
    let payload = match <[String; 1]>::try_from(ids) {
        Ok([id]) => Payload::Receipt {
            id: Some(id),
            ids: Vec::new(),
        },
        Err(ids) => Payload::Receipt { id: None, ids },
    };
    match seal_direct_payload(inner, me, to, &receipt_id, &payload, deadline) {
        // No `Delivered` event for the receipt itself.
        Ok(body) => drop(send_sealed(inner, &receipt_id, to, body, false)),
        Err(e) => log::warn!("no receipt to {to} for {count} messages: {e}"),
    }
}

/// Chunks of a file sent but not yet acknowledged, at most.
pub const FILE_WINDOW: usize = 32;

/// A file sent whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFile {
    /// Its name.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Its hex SHA-256.
    pub sha256: String,
}

/// The payload of a text message, if it is not too long.
fn text_payload(text: &str) -> Result<Payload, ClientError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ClientError::new(
            ErrorCode::TooLarge,
            format!("a message is at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    Ok(Payload::Text { text: text.into() })
}

/// Seals `payload` for `group` under its current epoch and sends it with `id`.
fn send_group_payload(inner: &Inner, id: &str, group: &str, payload: &Payload) -> ReplyHandle {
    let Some(me) = inner.keyring.identity() else {
        return ReplyHandle::ready(Err(ClientError::new(
            ErrorCode::NotLoggedIn,
            "log in first",
        )));
    };
    let fetch = |body: RequestBody| call(inner, body, NET_TIMEOUT);
    let sealed = inner
        .keyring
        .group_sending_key(&fetch, &me, group)
        .and_then(|(epoch, key)| {
            let plaintext = payload.encode();
            seal_group(&key, group, epoch, &me.user, id, &plaintext)
                .map(|body| (epoch, body))
                .map_err(|e| ClientError::new(ErrorCode::LocalError, e.to_string()))
        });
    match sealed {
        Ok((epoch, body)) => send_request(
            inner,
            RequestBody::GroupSend {
                id: id.to_string(),
                group: group.to_string(),
                epoch,
                body: Blob::from_vec(body),
            },
        ),
        Err(e) => ReplyHandle::ready(Err(e)),
    }
}

/// Longest password accepted, in bytes (the server's limit on what it is sent).
const MAX_PASSWORD: usize = 1024;

/// Refuses an empty or over-long new password before any work is done.
fn check_password(password: &str) -> Result<(), ClientError> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(ClientError::new(
            ErrorCode::BadPassword,
            "a password is 1-1024 bytes",
        ));
    }
    Ok(())
}

/// Where pushed events go: the channel behind [`Client::events`], or the configured
/// handler.
pub(crate) enum EventSink {
    Channel(Sender<Event>),
    Handler(EventHandler),
}

impl EventSink {
    /// Queues or hands over `event` (dropped if nobody holds the channel's end).
    pub(crate) fn send(&self, event: Event) {
        match self {
            EventSink::Channel(tx) => {
                let _ = tx.send(event);
            }
            EventSink::Handler(handler) => {
                let call = std::panic::AssertUnwindSafe(|| handler(event));
                if std::panic::catch_unwind(call).is_err() {
                    log::error!("the event handler panicked; that event is lost");
                }
            }
        }
    }
}

/// A client of the cluster: connected through the balancer, reconnecting by itself.
pub struct Client {
    inner: Arc<Inner>,
    events: Receiver<Event>,
}

impl Client {
    /// Asks the balancer for a server, connects and says hello.
    pub fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            config: config.clone(),
            next_req: AtomicU64::new(1),
            waiting: Mutex::new(BTreeMap::new()),
            link: Mutex::new(None),
            next_link: AtomicU64::new(1),
            server: Mutex::new(String::new()),
            closed: AtomicBool::new(false),
            keyring: Keyring::new(config.home.clone()),
            history: History::new(config.home.clone()),
            session: AtomicU64::new(0),
            resume: Mutex::new(None),
            events: match &config.handler {
                Some(handler) => EventSink::Handler(handler.clone()),
                None => EventSink::Channel(events_tx),
            },
            inbox: Inbox::new(),
            handovers: HandOvers::default(),
            retry_scheduled: AtomicBool::new(false),
        });
        let first = link::start(&inner, 1)?;
        *inner.server.lock() = first.server.clone();
        {
            let mut installed = inner.link.lock();
            if !first.alive.load(Ordering::Acquire) {
                return Err(ClientError::disconnected("the connection ended at once"));
            }
            *installed = Some(first);
        }
        Ok(Client {
            inner,
            events: events_rx,
        })
    }

    /// The name of the server we are (or were last) connected to.
    pub fn server(&self) -> String {
        self.inner.server.lock().clone()
    }

    /// Pushed events, in arrival order (nothing, with an event handler configured).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Sends a request; the reply arrives on the returned handle.
    pub fn request(&self, body: RequestBody) -> ReplyHandle {
        send_request(&self.inner, body)
    }

    /// Creates an account and logs in (blocking). Makes the user's RSA key pair here;
    /// the server gets the public key and the private key sealed under the password.
    /// The server never gets the password itself: it gets a login secret derived from
    /// it ([`login_secret`]), from which the backup's key cannot be derived.
    pub fn signup(&self, user: &str, password: &str) -> Reply {
        self.not_logged_in()?;
        check_password(password)?;
        let keys = UserKeys::generate()
            .map_err(|e| ClientError::new(ErrorCode::LocalError, e.to_string()))?;
        let key_backup = seal_key_backup(&keys, password);
        self.inner.keyring.begin_login();
        let reply = self
            .request(RequestBody::Signup {
                user: user.into(),
                password: login_secret(user, password),
                public_key: keys.public_pem(),
                key_backup,
            })
            .wait(NET_TIMEOUT * 3);
        self.after_login(user, reply, |_| Ok(keys))
    }

    /// Logs in (blocking). The private key comes from `HOME` when cached there and it
    /// matches the account's public key, else from the backup the server returns,
    /// opened with the password.
    pub fn login(&self, user: &str, password: &str) -> Reply {
        self.not_logged_in()?;
        self.inner.keyring.begin_login();
        let reply = self
            .request(RequestBody::Login {
                user: user.into(),
                password: login_secret(user, password),
            })
            .wait(NET_TIMEOUT * 3);
        let keyring = &self.inner.keyring;
        self.after_login(user, reply, |result| {
            let Some(OkResult::Session {
                key_backup: Some(backup),
                public_key,
                ..
            }) = result
            else {
                return Err(ClientError::new(
                    ErrorCode::Undecryptable,
                    "the server sent no key backup",
                ));
            };
            let registered = public_key
                .as_deref()
                .and_then(|pem| PublicKey::from_pem(pem).ok());
            if let Some(keys) = keyring.cached_keys(user) {
                if registered.as_ref() == Some(&keys.public()) {
                    return Ok(keys);
                }
                log::warn!("the key cached for {user} is not the account's; using the backup");
            }
            let keys = open_key_backup(backup, password).map_err(|e| {
                ClientError::new(
                    ErrorCode::Undecryptable,
                    format!("the key backup does not open: {e}"),
                )
            })?;
            if registered.is_some_and(|r| r != keys.public()) {
                return Err(ClientError::new(
                    ErrorCode::Undecryptable,
                    "the key backup does not hold the account's key",
                ));
            }
            Ok(keys)
        })
    }

    /// Refuses a signup or login on a connection that is logged in already (the
    /// server would too, but the keys in use must stay untouched).
    fn not_logged_in(&self) -> Result<(), ClientError> {
        match self.inner.keyring.identity() {
            Some(me) => Err(ClientError::new(
                ErrorCode::AlreadyLoggedIn,
                format!("logged in as {} already; log out first", me.user),
            )),
            None => Ok(()),
        }
    }

    /// Installs the keys after a successful signup or login. If the server accepted
    /// the login but the keys cannot be installed, the session is ended again: a
    /// session whose messages cannot be opened would only hold them back.
    fn after_login(
        &self,
        user: &str,
        reply: Reply,
        keys: impl FnOnce(&Option<OkResult>) -> Result<UserKeys, ClientError>,
    ) -> Reply {
        let keyring = &self.inner.keyring;
        let result = match reply {
            Ok(result) => result,
            Err(e) => {
                keyring.clear();
                return Err(e);
            }
        };
        match keys(&result).and_then(|k| keyring.set_identity(user, k)) {
            Ok(()) => Ok(result),
            Err(e) => {
                keyring.clear();
                let _ = self.request(RequestBody::Logout).wait(NET_TIMEOUT);
                Err(e)
            }
        }
    }

    /// Logs out (blocking). Messages being handed over finish first, and their
    /// acknowledgements reach the server before the logout; messages arriving meanwhile
    /// are not handed over: they come at the next login.
    pub fn logout(&self) -> Reply {
        *self.inner.resume.lock() = None;
        // The server ignores acknowledgements that come after the logout and pushes
        // those messages again at the next login: so nothing is handed over until the
        // session is over, and the acknowledgements of what was go first (queued
        // acknowledgements are written before a frame sent after them, `LinkOut`).
        let paused = self.inner.handovers.pause(hand_over_deadline());
        let reply = self.request(RequestBody::Logout).wait(NET_TIMEOUT);
        self.inner.keyring.clear();
        drop(paused);
        reply
    }

    /// Changes the password (blocking): the private key is re-sealed under the new one,
    /// so the old password opens nothing afterwards.
    pub fn passwd(&self, old: &str, new: &str) -> Reply {
        let me = self.identity()?;
        check_password(new)?;
        self.request(RequestBody::Passwd {
            old: login_secret(&me.user, old),
            new: login_secret(&me.user, new),
            key_backup: seal_key_backup(&me.keys, new),
        })
        .wait(NET_TIMEOUT * 3)
    }

    fn identity(&self) -> Result<Identity, ClientError> {
        self.inner
            .keyring
            .identity()
            .ok_or_else(|| ClientError::new(ErrorCode::NotLoggedIn, "log in first"))
    }

    /// Sends a direct text message with a fresh id, sealed end to end; returns the id
    /// and the reply handle. The first message to a user fetches (or makes) the
    /// conversation key, which blocks for a round trip or two.
    pub fn send_text(&self, to: &str, text: &str) -> (String, ReplyHandle) {
        let id = new_message_id();
        let payload = match text_payload(text) {
            Ok(p) => p,
            Err(e) => return (id, ReplyHandle::ready(Err(e))),
        };
        let handle = match self.seal_direct(&id, to, &payload) {
            Ok(body) => {
                self.record_sent(ConversationRef::User(to), &id, text);
                send_sealed(&self.inner, &id, to, body, true)
            }
            Err(e) => ReplyHandle::ready(Err(e)),
        };
        (id, handle)
    }

    fn seal_direct(&self, id: &str, to: &str, payload: &Payload) -> Result<Vec<u8>, ClientError> {
        seal_direct_payload(
            &self.inner,
            &self.identity()?,
            to,
            id,
            payload,
            Instant::now() + NET_TIMEOUT,
        )
    }

    /// Sends a text to `group`, sealed under the group's current key epoch; returns the
    /// id and the handle, which re-seals and re-sends once if the epoch changed.
    pub fn send_group_text(&self, group: &str, text: &str) -> (String, ReplyHandle) {
        let id = new_message_id();
        let payload = match text_payload(text) {
            Ok(p) => p,
            Err(e) => return (id, ReplyHandle::ready(Err(e))),
        };
        self.record_sent(ConversationRef::Group(group), &id, text);
        let handle = send_group_payload(&self.inner, &id, group, &payload);
        let (inner, retry_id, group, retry_payload) =
            (self.inner.clone(), id.clone(), group.to_string(), payload);
        *handle.on_stale_epoch.lock() = Some(Box::new(move || {
            inner.keyring.group_changed(&group);
            send_group_payload(&inner, &retry_id, &group, &retry_payload)
        }));
        (id, handle)
    }

    fn record_sent(&self, conversation: ConversationRef<'_>, id: &str, text: &str) {
        if let Some(me) = self.inner.keyring.identity() {
            let entry = EntryRef {
                id,
                from: &me.user,
                text,
                sent_at: fastchat_common::protocol::now_millis(),
            };
            self.inner.history.record(&me.user, conversation, &entry);
        }
    }

    /// The last `n` messages of a conversation that this client has seen (sent or
    /// opened), oldest first, from its local history in `HOME` (empty without one).
    pub fn history(
        &self,
        conversation: &Conversation,
        n: usize,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        let me = self.identity()?;
        self.inner.history.last(&me.user, conversation, n)
    }

    /// Whether this client has history for a group of that name (to tell `/history NAME`
    /// of a group from one of a user).
    pub fn has_group_history(&self, group: &str) -> bool {
        self.inner
            .keyring
            .identity()
            .is_some_and(|me| self.inner.history.has_group(&me.user, group))
    }

    /// Sends the file at `path` to a user or a group, end to end, in chunks (blocking):
    /// at most [`FILE_WINDOW`] chunks are unacknowledged at a time, so memory stays
    /// bounded whatever the size. `progress(sent, total)` is called after each chunk.
    pub fn send_file(
        &self,
        to: &Conversation,
        path: &std::path::Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SentFile, ClientError> {
        self.send_file_as(to, path, None, progress)
    }

    /// [`Client::send_file`], announcing the file under `name` instead of its own (tests
    /// use it to check what receivers make of hostile names).
    pub fn send_file_as(
        &self,
        to: &Conversation,
        path: &std::path::Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SentFile, ClientError> {
        let mut file = OutgoingFile::open(path, u64::MAX)?;
        if let Some(name) = name {
            file.header.name = name.to_string();
        }
        let size = file.header.size;
        self.request(RequestBody::FileOffer { size })
            .wait(NET_TIMEOUT)?;
        let mut window: std::collections::VecDeque<ReplyHandle> = std::collections::VecDeque::new();
        let settle = |window: &mut std::collections::VecDeque<ReplyHandle>, keep: usize| {
            while window.len() > keep {
                let h = window.pop_front().expect("not empty");
                h.wait(Duration::from_secs(120))?;
            }
            Ok::<(), ClientError>(())
        };
        window.push_back(self.send_payload(to, &Payload::FileStart(file.header.clone())));
        let mut sent = 0u64;
        while let Some(chunk) = file.next_chunk()? {
            let len = (chunk.index + 1).min(file.header.chunks);
            window.push_back(self.send_payload(to, &Payload::FileChunk(chunk)));
            settle(&mut window, FILE_WINDOW)?;
            sent = (len * CHUNK_BYTES as u64).min(size);
            progress(sent, size);
        }
        settle(&mut window, 0)?;
        progress(sent.max(size), size);
        Ok(SentFile {
            name: file.header.name.clone(),
            bytes: size,
            sha256: file.header.sha256.clone(),
        })
    }

    /// Seals a payload for a user or a group and sends it.
    fn send_payload(&self, to: &Conversation, payload: &Payload) -> ReplyHandle {
        let id = new_message_id();
        match to {
            Conversation::User(user) => match self.seal_direct(&id, user, payload) {
                Ok(body) => send_sealed(&self.inner, &id, user, body, false),
                Err(e) => ReplyHandle::ready(Err(e)),
            },
            Conversation::Group(group) => send_group_payload(&self.inner, &id, group, payload),
        }
    }

    /// Adds a user to our friends (blocking).
    pub fn friend_add(&self, user: &str) -> Reply {
        self.request(RequestBody::FriendAdd { user: user.into() })
            .wait(NET_TIMEOUT)
    }

    /// Removes a user from our friends (blocking).
    pub fn friend_remove(&self, user: &str) -> Reply {
        self.request(RequestBody::FriendRemove { user: user.into() })
            .wait(NET_TIMEOUT)
    }

    /// Our friends and their presence (blocking).
    pub fn friends(&self) -> Reply {
        self.request(RequestBody::Friends).wait(NET_TIMEOUT)
    }

    /// Creates a group with us as admin (blocking).
    pub fn group_create(&self, group: &str, members: &[String]) -> Reply {
        self.request(RequestBody::GroupCreate {
            group: group.into(),
            members: members.to_vec(),
        })
        .wait(NET_TIMEOUT)
    }

    /// Adds a member (admin only; blocking).
    pub fn group_add(&self, group: &str, user: &str) -> Reply {
        self.request(RequestBody::GroupAdd {
            group: group.into(),
            user: user.into(),
        })
        .wait(NET_TIMEOUT)
    }

    /// Removes a member (admin only; blocking).
    pub fn group_remove(&self, group: &str, user: &str) -> Reply {
        self.request(RequestBody::GroupRemove {
            group: group.into(),
            user: user.into(),
        })
        .wait(NET_TIMEOUT)
    }

    /// Leaves a group (blocking).
    pub fn group_leave(&self, group: &str) -> Reply {
        self.request(RequestBody::GroupLeave {
            group: group.into(),
        })
        .wait(NET_TIMEOUT)
    }

    /// A group's members (blocking).
    pub fn group_members(&self, group: &str) -> Reply {
        self.request(RequestBody::GroupMembers {
            group: group.into(),
        })
        .wait(NET_TIMEOUT)
    }

    /// Our groups (blocking).
    pub fn groups(&self) -> Reply {
        self.request(RequestBody::Groups).wait(NET_TIMEOUT)
    }

    /// Sends a direct message whose body is exactly `body` (already sealed; tests use
    /// it to send what a real client never would).
    pub fn send_body(&self, id: &str, to: &str, body: &[u8]) -> ReplyHandle {
        send_sealed(&self.inner, id, to, body.to_vec(), false)
    }

    /// Sends raw bytes as one frame (tests use it to send malformed requests).
    pub fn send_raw_frame(&self, body: Vec<u8>) {
        let out = self.inner.link.lock().as_ref().map(|link| link.out.clone());
        // With the link lock released: the write may wait on the socket.
        if let Some(out) = out {
            out.send(body);
        }
    }

    /// Whether the client is closed for good (closed, or it gave up reconnecting).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Cuts the current connection as if the network had failed: a logged-in client
    /// reconnects and resumes (tests use it).
    pub fn drop_connection(&self) {
        if let Some(link) = self.inner.link.lock().as_ref() {
            link.cut();
        }
    }

    /// Closes the client; it does not reconnect. Requests still waiting fail. Messages
    /// being handed over (to [`Client::events`] or the event handler) finish and no new
    /// ones are; then the link writes what it holds, acknowledgements included, and ends
    /// once the server has read it all. So a message handed over is not pushed again at
    /// the next login, and one that was not stays stored for it. Waits three seconds at
    /// most for all that (a hung server), and not at all when called from the event
    /// handler.
    pub fn close(&self) {
        let inner = &self.inner;
        if !inner.closed.load(Ordering::Acquire) {
            let deadline = hand_over_deadline();
            if !inner.handovers.close(deadline) {
                log::info!("closing during a hand-over: it comes again at the next login");
            }
            if !HandOvers::on_this_thread() {
                // Sealing one may fetch a key, whose reply a handler's thread would
                // have to read itself.
                crate::inbox::send_last_receipts(inner, deadline);
            }
            if !inner.closed.swap(true, Ordering::AcqRel) {
                let link = inner.link.lock().take();
                if let Some(link) = link {
                    link.finish(deadline);
                }
            }
        }
        inner.give_up("closed by the client");
        inner.history.flush();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
