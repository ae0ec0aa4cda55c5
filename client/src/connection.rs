//! `Client`: one connection to a FastChat server, with a reader thread that dispatches
//! replies and events and a writer thread that batches frames and acknowledgements.

use crate::balancer::ask_balancer;
use crate::error::ClientError;
use crate::inbox::{run_inbox, Incoming};
use crate::keyring::{Identity, Keyring};
use crate::payload::Payload;
use crate::transport::{connect, TlsConn, TlsRead, TlsWrite, Trust, NET_TIMEOUT};
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::e2e::{open_key_backup, seal_direct, seal_key_backup, PublicKey, UserKeys};
use fastchat_common::frame::{encode_frame, read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::ids::new_message_id;
use fastchat_common::password::login_secret;
use fastchat_common::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use fastchat_common::protocol::{UnixMillis, MAX_TEXT_BYTES, PROTOCOL_VERSION};
use fastchat_common::{Blob, ErrorCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How to reach the cluster, and whom to trust there.
#[derive(Clone)]
pub struct ClientConfig {
    /// The balancer's `HOST:PORT`.
    pub balancer: String,
    /// Where this user's private key is cached (`HOME/keys/USER.key`, mode 0600) and
    /// other users' key fingerprints are pinned; `None` keeps them in memory only.
    pub home: Option<std::path::PathBuf>,
    pub(crate) trust: Trust,
}

impl ClientConfig {
    /// The balancer's address and the cluster CA certificate (PEM) that every server
    /// and the balancer must present a certificate from.
    pub fn new(balancer: impl Into<String>, ca_pem: &[u8]) -> Result<ClientConfig, ClientError> {
        Ok(ClientConfig {
            balancer: balancer.into(),
            home: None,
            trust: Trust::from_ca_pem(ca_pem)?,
        })
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
    /// The connection ended.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// The outcome of one request.
pub type Reply = Result<Option<OkResult>, ClientError>;

/// A reply that will arrive later.
pub struct ReplyHandle {
    rx: Receiver<Reply>,
}

impl ReplyHandle {
    /// A handle whose reply is already known.
    pub fn ready(reply: Reply) -> ReplyHandle {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(reply);
        ReplyHandle { rx }
    }

    /// Waits for the reply, at most `timeout` (then `timeout` is the error).
    pub fn wait(&self, timeout: Duration) -> Reply {
        match self.rx.recv_timeout(timeout) {
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

/// What the writer thread sends.
pub(crate) enum Out {
    Frame(Vec<u8>),
    Ack(u64),
}

/// What the threads of one connection share.
pub(crate) struct Inner {
    next_req: AtomicU64,
    waiting: Mutex<HashMap<u64, Sender<Reply>>>,
    pub(crate) out: Sender<Out>,
    closed: AtomicBool,
    stream: TcpStream,
    pub(crate) keyring: Keyring,
    /// Counts the sessions begun on this connection (each `ok {kind: session}` the
    /// reader sees). Pushed messages carry the count they arrived under; the inbox
    /// drops, unacknowledged, those of an earlier session, whose tags mean nothing now.
    pub(crate) session: AtomicU64,
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

/// Sends a request on the connection; the reply arrives on the handle.
fn send_request(inner: &Inner, body: RequestBody) -> ReplyHandle {
    let req = inner.next_req.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(1);
    if inner.closed.load(Ordering::Acquire) {
        return ReplyHandle::ready(Err(ClientError::disconnected("connection closed")));
    }
    inner.waiting.lock().insert(req, tx);
    let frame = serde_json::to_vec(&Request { req, body }).expect("serializes");
    if inner.out.send(Out::Frame(frame)).is_err() {
        inner.waiting.lock().remove(&req);
        return ReplyHandle::ready(Err(ClientError::disconnected("connection closed")));
    }
    // The reader may have failed every waiter just before we registered.
    if inner.closed.load(Ordering::Acquire) {
        if let Some(tx) = inner.waiting.lock().remove(&req) {
            let _ = tx.send(Err(ClientError::disconnected("connection closed")));
        }
    }
    ReplyHandle { rx }
}

/// Sends a request and waits for its reply, at most `timeout`.
pub(crate) fn call(inner: &Inner, body: RequestBody, timeout: Duration) -> Reply {
    send_request(inner, body).wait(timeout)
}

/// A connection to one server of the cluster.
pub struct Client {
    inner: Arc<Inner>,
    events: Receiver<Event>,
    server: String,
}

impl Client {
    /// Asks the balancer for a server, connects and says hello.
    pub fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let assignment = ask_balancer(config)?;
        let keyring = Keyring::new(config.home.clone());
        let mut conn = connect(&config.trust, &assignment.addr)?;
        let hello = Request {
            req: 0,
            body: RequestBody::Hello {
                version: PROTOCOL_VERSION,
                ticket: assignment.ticket,
            },
        };
        write_frame(
            &mut conn.writer,
            &serde_json::to_vec(&hello).expect("serializes"),
        )
        .and_then(|_| conn.writer.flush())
        .map_err(ClientError::disconnected)?;
        let reply = read_frame(&mut conn.reader, MAX_CLIENT_FRAME)
            .map_err(ClientError::disconnected)?
            .ok_or_else(|| ClientError::disconnected("the server closed the connection"))?;
        match serde_json::from_slice::<ServerFrame>(&reply) {
            Ok(ServerFrame::Ok { .. }) => {}
            Ok(ServerFrame::Error { code, message, .. }) => {
                return Err(ClientError::new(code, message))
            }
            other => {
                return Err(ClientError::disconnected(format!(
                    "unexpected answer to hello: {other:?}"
                )))
            }
        }
        let _ = conn.socket.set_read_timeout(None);
        Self::start(conn, assignment.server, keyring)
    }

    fn start(conn: TlsConn, server: String, keyring: Keyring) -> Result<Client, ClientError> {
        let TlsConn {
            socket,
            reader,
            writer,
        } = conn;
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            next_req: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            out: out_tx,
            closed: AtomicBool::new(false),
            stream: socket.try_clone().map_err(ClientError::disconnected)?,
            keyring,
            session: AtomicU64::new(0),
        });
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let inbox_inner = inner.clone();
        let inbox_events = events_tx.clone();
        thread::Builder::new()
            .name("fastchat-inbox".into())
            .stack_size(256 * 1024)
            .spawn(move || run_inbox(inbox_inner, inbox_rx, inbox_events))
            .map_err(ClientError::disconnected)?;
        thread::Builder::new()
            .name("fastchat-writer".into())
            .stack_size(128 * 1024)
            .spawn(move || write_loop(writer, socket, out_rx))
            .map_err(ClientError::disconnected)?;
        let reader_inner = inner.clone();
        thread::Builder::new()
            .name("fastchat-reader".into())
            .stack_size(256 * 1024)
            .spawn(move || read_loop(reader, reader_inner, inbox_tx, events_tx))
            .map_err(ClientError::disconnected)?;
        Ok(Client {
            inner,
            events: events_rx,
            server,
        })
    }

    /// The name of the server we are connected to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Pushed events, in arrival order.
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

    /// Logs out (blocking).
    pub fn logout(&self) -> Reply {
        let reply = self.request(RequestBody::Logout).wait(NET_TIMEOUT);
        self.inner.keyring.clear();
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
        if text.len() > MAX_TEXT_BYTES {
            let err = ClientError::new(
                ErrorCode::TooLarge,
                format!("a message is at most {MAX_TEXT_BYTES} bytes"),
            );
            return (id, ReplyHandle::ready(Err(err)));
        }
        let payload = Payload::Text { text: text.into() };
        let handle = match self.seal_direct(&id, to, &payload) {
            Ok(body) => self.send_body(&id, to, &body),
            Err(e) => ReplyHandle::ready(Err(e)),
        };
        (id, handle)
    }

    fn seal_direct(&self, id: &str, to: &str, payload: &Payload) -> Result<Vec<u8>, ClientError> {
        let me = self.identity()?;
        let inner = &self.inner;
        let fetch = |body: RequestBody| call(inner, body, NET_TIMEOUT);
        let (key_id, key) = inner.keyring.sending_key(&fetch, &me, to)?;
        let plaintext = serde_json::to_vec(payload).expect("payloads serialize");
        seal_direct(&key, &key_id, &me.user, to, id, &plaintext)
            .map_err(|e| ClientError::new(ErrorCode::LocalError, e.to_string()))
    }

    /// Sends a direct message whose body is exactly `body` (already sealed; tests use
    /// it to send what a real client never would).
    pub fn send_body(&self, id: &str, to: &str, body: &[u8]) -> ReplyHandle {
        self.request(RequestBody::Send {
            id: id.into(),
            to: to.into(),
            body: Blob::from_bytes(body),
        })
    }

    /// Sends raw bytes as one frame (tests use it to send malformed requests).
    pub fn send_raw_frame(&self, body: Vec<u8>) {
        let _ = self.inner.out.send(Out::Frame(body));
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Closes the connection now.
    pub fn close(&self) {
        let _ = self.inner.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(mut stream: TlsWrite, socket: TcpStream, rx: Receiver<Out>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.clear();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Out::Frame(body) => {
                    flush_acks(&mut acks, &mut buf);
                    encode_frame(&body, &mut buf);
                }
                Out::Ack(tag) => acks.push(tag),
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        flush_acks(&mut acks, &mut buf);
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
    let _ = socket.shutdown(Shutdown::Both);
}

fn flush_acks(acks: &mut Vec<u64>, buf: &mut Vec<u8>) {
    if acks.is_empty() {
        return;
    }
    let ack = Request {
        req: 0,
        body: RequestBody::Ack {
            tags: std::mem::take(acks),
        },
    };
    encode_frame(&serde_json::to_vec(&ack).expect("serializes"), buf);
}

fn read_loop(stream: TlsRead, inner: Arc<Inner>, inbox: Sender<Incoming>, events: Sender<Event>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let reason = loop {
        let body = match read_frame(&mut reader, MAX_CLIENT_FRAME) {
            Ok(Some(body)) => body,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let frame = match serde_json::from_slice::<ServerFrame>(&body) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("unreadable frame from the server: {e}");
                continue;
            }
        };
        match frame {
            ServerFrame::Ok { req, result } => {
                if matches!(result, Some(OkResult::Session { .. })) {
                    inner.session.fetch_add(1, Ordering::AcqRel);
                }
                reply(&inner, req, Ok(result))
            }
            ServerFrame::Error {
                req: Some(req),
                code,
                message,
            } => reply(&inner, req, Err(ClientError::new(code, message))),
            ServerFrame::Error {
                req: None,
                code,
                message,
            } => log::warn!("server error: {code}: {message}"),
            ServerFrame::Message {
                tag,
                id,
                from,
                to,
                body,
                sent_at,
            } => {
                let _ = inbox.send(Incoming {
                    session: inner.session.load(Ordering::Acquire),
                    tag,
                    id,
                    from,
                    to,
                    body,
                    sent_at,
                });
            }
            ServerFrame::SessionReplaced => {
                let _ = events.send(Event::SessionReplaced);
            }
            ServerFrame::Reconnect { reason } => {
                let _ = events.send(Event::Reconnect { reason });
            }
        }
    };
    inner.closed.store(true, Ordering::Release);
    let waiting: Vec<Sender<Reply>> = inner.waiting.lock().drain().map(|(_, tx)| tx).collect();
    for tx in waiting {
        let _ = tx.send(Err(ClientError::disconnected(&reason)));
    }
    let _ = inner.stream.shutdown(Shutdown::Both);
    let _ = events.send(Event::Disconnected { reason });
}

fn reply(inner: &Inner, req: u64, reply: Reply) {
    if let Some(tx) = inner.waiting.lock().remove(&req) {
        let _ = tx.send(reply);
    }
}
