//! `Client`: one connection to a FastChat server, with a reader thread that dispatches
//! replies and events and a writer thread that batches frames and acknowledgements.

use crate::balancer::ask_balancer;
use crate::error::ClientError;
use crate::transport::{connect, TlsConn, TlsRead, TlsWrite, Trust, NET_TIMEOUT};
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::frame::{encode_frame, read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::ids::new_message_id;
use fastchat_common::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use fastchat_common::protocol::{UnixMillis, MAX_TEXT_BYTES, PROTOCOL_VERSION};
use fastchat_common::{Blob, ErrorCode};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
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
    pub(crate) trust: Trust,
}

impl ClientConfig {
    /// The balancer's address and the cluster CA certificate (PEM) that every server
    /// and the balancer must present a certificate from.
    pub fn new(balancer: impl Into<String>, ca_pem: &[u8]) -> Result<ClientConfig, ClientError> {
        Ok(ClientConfig {
            balancer: balancer.into(),
            trust: Trust::from_ca_pem(ca_pem)?,
        })
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
    /// A direct message (each `(from, id)` is reported once).
    Message {
        /// Sender's message id.
        id: String,
        /// Sender.
        from: String,
        /// Recipient (us).
        to: String,
        /// The body's bytes.
        body: Vec<u8>,
        /// Server timestamp.
        sent_at: UnixMillis,
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

enum Out {
    Frame(Vec<u8>),
    Ack(u64),
}

struct Inner {
    next_req: AtomicU64,
    waiting: Mutex<HashMap<u64, Sender<Reply>>>,
    out: Sender<Out>,
    closed: AtomicBool,
    stream: TcpStream,
}

/// A connection to one server of the cluster.
pub struct Client {
    inner: Arc<Inner>,
    events: Receiver<Event>,
    server: String,
}

/// How many message ids the reader remembers to drop duplicates.
const DEDUP_MEMORY: usize = 1 << 20;

impl Client {
    /// Asks the balancer for a server, connects and says hello.
    pub fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let assignment = ask_balancer(config)?;
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
        Self::start(conn, assignment.server)
    }

    fn start(conn: TlsConn, server: String) -> Result<Client, ClientError> {
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
        });
        thread::Builder::new()
            .name("fastchat-writer".into())
            .stack_size(128 * 1024)
            .spawn(move || write_loop(writer, socket, out_rx))
            .map_err(ClientError::disconnected)?;
        let reader_inner = inner.clone();
        thread::Builder::new()
            .name("fastchat-reader".into())
            .stack_size(256 * 1024)
            .spawn(move || read_loop(reader, reader_inner, events_tx))
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
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.inner.closed.load(Ordering::Acquire) {
            return ReplyHandle::ready(Err(ClientError::disconnected("connection closed")));
        }
        self.inner.waiting.lock().insert(req, tx);
        let frame = serde_json::to_vec(&Request { req, body }).expect("serializes");
        if self.inner.out.send(Out::Frame(frame)).is_err() {
            self.inner.waiting.lock().remove(&req);
            return ReplyHandle::ready(Err(ClientError::disconnected("connection closed")));
        }
        // The reader may have failed every waiter just before we registered.
        if self.inner.closed.load(Ordering::Acquire) {
            if let Some(tx) = self.inner.waiting.lock().remove(&req) {
                let _ = tx.send(Err(ClientError::disconnected("connection closed")));
            }
        }
        ReplyHandle { rx }
    }

    /// Creates an account and logs in (blocking).
    pub fn signup(&self, user: &str, password: &str) -> Reply {
        self.request(RequestBody::Signup {
            user: user.into(),
            password: password.into(),
        })
        .wait(NET_TIMEOUT * 3)
    }

    /// Logs in (blocking).
    pub fn login(&self, user: &str, password: &str) -> Reply {
        self.request(RequestBody::Login {
            user: user.into(),
            password: password.into(),
        })
        .wait(NET_TIMEOUT * 3)
    }

    /// Logs out (blocking).
    pub fn logout(&self) -> Reply {
        self.request(RequestBody::Logout).wait(NET_TIMEOUT)
    }

    /// Sends a direct text message with a fresh id; returns the id and the reply handle.
    pub fn send_text(&self, to: &str, text: &str) -> (String, ReplyHandle) {
        let id = new_message_id();
        if text.len() > MAX_TEXT_BYTES {
            let err = ClientError::new(
                ErrorCode::TooLarge,
                format!("a message is at most {MAX_TEXT_BYTES} bytes"),
            );
            return (id, ReplyHandle::ready(Err(err)));
        }
        let handle = self.send_body(&id, to, text.as_bytes());
        (id, handle)
    }

    /// Sends a direct message with the given id and raw body.
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

/// Remembers recently seen `(sender, id)` pairs, forgetting the oldest beyond a bound.
struct Dedup {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Dedup {
    fn first_time(&mut self, from: &str, id: &str) -> bool {
        let key = (from.to_string(), id.to_string());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= DEDUP_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

fn read_loop(stream: TlsRead, inner: Arc<Inner>, events: Sender<Event>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut dedup = Dedup {
        seen: HashSet::new(),
        order: VecDeque::new(),
    };
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
            ServerFrame::Ok { req, result } => reply(&inner, req, Ok(result)),
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
                if dedup.first_time(&from, &id) {
                    let body = body.to_bytes().unwrap_or_default();
                    let _ = events.send(Event::Message {
                        id,
                        from,
                        to,
                        body,
                        sent_at,
                    });
                }
                let _ = inner.out.send(Out::Ack(tag));
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
