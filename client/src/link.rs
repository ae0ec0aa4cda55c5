//! One connection (a *link*) to a server: opening it (balancer, TLS, hello), its writer
//! thread, and its reader thread, which dispatches replies and pushes. A `Client`
//! outlives its links: when the installed link ends, its reader starts the reconnection
//! (`connection.rs`), which opens the next one and resumes the session on it.

use crate::balancer::ask_balancer;
use crate::connection::{ClientConfig, Event, Inner, Out};
use crate::error::ClientError;
use crate::inbox::Incoming;
use crate::transport::{connect, SharedSocket, TlsConn, TlsRead, TlsWrite};
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::frame::{encode_frame, read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use fastchat_common::protocol::PROTOCOL_VERSION;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// A running link: where its writer's queue is, and its socket (to cut it).
pub(crate) struct Link {
    /// Distinguishes this link from earlier and later ones.
    pub id: u64,
    /// The server's name.
    pub server: String,
    /// The writer thread's queue.
    pub out: Sender<Out>,
    /// A handle on the socket, to shut it down.
    pub socket: SharedSocket,
    /// Cleared by the reader when the link has ended (checked by whoever installs it,
    /// in case it ended before it was installed).
    pub alive: Arc<AtomicBool>,
}

impl Link {
    /// Shuts the socket down; the reader then ends the link.
    pub fn cut(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Asks the balancer for a server, connects to it over TLS and says hello.
fn open(config: &ClientConfig) -> Result<(String, TlsConn), ClientError> {
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
    Ok((assignment.server, conn))
}

/// Opens a link and starts its threads. The link is not installed: the caller does
/// that (at once for a first connection, after `resume` for a later one).
pub(crate) fn start(inner: &Arc<Inner>, id: u64) -> Result<Link, ClientError> {
    let (server, conn) = open(&inner.config)?;
    let TlsConn {
        socket,
        reader,
        writer,
    } = conn;
    let (out, out_rx) = crossbeam_channel::unbounded();
    let alive = Arc::new(AtomicBool::new(true));
    // Shared by the writer thread and the reader, which writes its acknowledgements.
    let writer = Arc::new(Mutex::new(writer));
    let reader_writer = writer.clone();
    let link = Link {
        id,
        server,
        out,
        socket: socket.clone(),
        alive: alive.clone(),
    };
    thread::Builder::new()
        .name("fastchat-writer".into())
        .stack_size(128 * 1024)
        .spawn(move || write_loop(writer, socket, out_rx))
        .map_err(ClientError::disconnected)?;
    let reader_inner = inner.clone();
    thread::Builder::new()
        .name("fastchat-reader".into())
        .stack_size(256 * 1024)
        .spawn(move || read_loop(reader, reader_writer, id, reader_inner, alive))
        .map_err(ClientError::disconnected)?;
    Ok(link)
}

thread_local! {
    /// On a link's reader thread: the acknowledgements it will write itself once it has
    /// read everything the server sent so far. Without it, every message received woke
    /// the writer thread just to send its acknowledgement.
    static READER_ACKS: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

/// Keeps `tag` for the reader thread to acknowledge; `false` on any other thread.
pub(crate) fn take_reader_ack(tag: u64) -> bool {
    READER_ACKS.with(|acks| match acks.borrow_mut().as_mut() {
        Some(acks) => {
            acks.push(tag);
            true
        }
        None => false,
    })
}

/// Writes the acknowledgements the reader thread kept, as one frame; when the writer
/// thread is in the middle of a write (a file upload may hold it for long), they go to
/// it instead, so the reader never waits on the socket's write side.
fn write_reader_acks(writer: &Mutex<TlsWrite>, inner: &Inner) {
    let mut acks = READER_ACKS.with(|acks| acks.borrow_mut().as_mut().map(std::mem::take));
    let Some(acks) = acks.as_mut().filter(|a| !a.is_empty()) else {
        return;
    };
    let Some(mut writer) = writer.try_lock() else {
        for tag in acks.drain(..) {
            inner.ack_through_writer(tag);
        }
        return;
    };
    let mut buf = Vec::new();
    flush_acks(acks, &mut buf);
    // A failed write ends the link, which the reader sees next.
    let _ = writer.write_all(&buf);
}

fn write_loop(stream: Arc<Mutex<TlsWrite>>, socket: SharedSocket, rx: Receiver<Out>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Ok(first) = fastchat_common::channel::recv(&rx) {
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
        if stream.lock().write_all(&buf).is_err() {
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

fn read_loop(
    stream: TlsRead,
    writer: Arc<Mutex<TlsWrite>>,
    link_id: u64,
    inner: Arc<Inner>,
    alive: Arc<AtomicBool>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    READER_ACKS.with(|acks| *acks.borrow_mut() = Some(Vec::new()));
    let reason = loop {
        if reader.buffer().is_empty() {
            // All that was read is handled: acknowledge it before waiting for more.
            write_reader_acks(&writer, &inner);
        }
        let body = match read_frame(&mut reader, MAX_CLIENT_FRAME) {
            Ok(Some(body)) => body,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let frame = match ServerFrame::from_json(&body) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("unreadable frame from the server: {e}");
                continue;
            }
        };
        match frame {
            ServerFrame::Ok { req, result } => {
                if let Some(OkResult::Session {
                    user, resume_token, ..
                }) = &result
                {
                    inner.session.fetch_add(1, Ordering::AcqRel);
                    *inner.resume.lock() = resume_token.clone().map(|t| (user.clone(), t));
                }
                inner.reply(req, Ok(result))
            }
            ServerFrame::Error {
                req: Some(req),
                code,
                message,
            } => inner.reply(req, Err(ClientError::new(code, message))),
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
                group,
                stored,
            } => {
                crate::inbox::receive(
                    &inner,
                    Incoming {
                        stored,
                        session: inner.session.load(Ordering::Acquire),
                        tag,
                        id,
                        from,
                        to,
                        body,
                        sent_at,
                        group,
                    },
                );
            }
            ServerFrame::Group {
                group,
                change,
                user,
                epoch,
            } => {
                inner.keyring.group_changed(&group);
                inner.events.send(Event::Group {
                    group,
                    change,
                    user,
                    epoch,
                });
            }
            ServerFrame::Presence { user, online } => {
                inner.events.send(Event::Presence { user, online });
            }
            ServerFrame::SessionReplaced => {
                // Another login took over: this session must not come back by itself.
                *inner.resume.lock() = None;
                inner.events.send(Event::SessionReplaced);
            }
            ServerFrame::Reconnect { reason } => {
                inner.events.send(Event::Reconnect { reason });
            }
        }
    };
    READER_ACKS.with(|acks| *acks.borrow_mut() = None);
    alive.store(false, Ordering::Release);
    crate::connection::link_ended(&inner, link_id, reason);
}
