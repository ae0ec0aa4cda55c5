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
use fastchat_common::burst::SendGaps;
use fastchat_common::frame::{encode_frame, read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::protocol::binary::BINARY_FRAME;
use fastchat_common::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use fastchat_common::protocol::PROTOCOL_VERSION;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A running link: where its frames go, and whether it is still up.
pub(crate) struct Link {
    /// Distinguishes this link from earlier and later ones.
    pub id: u64,
    /// The server's name.
    pub server: String,
    /// Where its frames go (and its socket, to cut it).
    pub out: Arc<LinkOut>,
    /// Cleared by the reader when the link has ended (checked by whoever installs it,
    /// in case it ended before it was installed).
    pub alive: Arc<AtomicBool>,
    /// Disconnected when the reader thread ends.
    reader_done: Receiver<()>,
}

impl Link {
    /// Shuts the socket down; the reader then ends the link.
    pub fn cut(&self) {
        self.out.cut();
    }

    /// Ends the link gracefully: the writer writes what it holds and shuts the sending
    /// side; the server reads to that end, ends the session and closes; the reader reads
    /// what the server sent until then (leaving nothing unread, whose closing would reset
    /// the connection). Waits for the reader until `deadline` at most, then cuts.
    pub fn finish(&self, deadline: Instant) {
        self.out.finish();
        let _ = fastchat_common::channel::recv_deadline(&self.reader_done, deadline);
        self.cut();
    }
}

/// A frame sent less than this after the one before goes through the writer thread.
const BURST_GAP: Duration = Duration::from_millis(20);

/// Where a link's frames go: a frame that comes alone (none sent in the [`BURST_GAP`]
/// before it) is written by the sending thread itself when the writer thread has nothing
/// queued and the socket is free; the others are queued for the writer thread, which
/// writes what piles up as one record and one system call. In the order they were sent
/// either way.
///
/// Why both: handing every frame to the writer cost a thread wake-up per message when
/// messages go out one at a time (the load tester's 1,000 clients at 10 messages/s each:
/// 8,500-9,200 carried of 10,000/s with the writer, 9,950-10,050 with this), and
/// writing every frame directly lost the writer's batching when they come in bursts
/// (100 clients with 16 in flight each: 38,600-40,400 msg/s against 41,300-45,600).
///
/// Order: a frame is written directly only while `queued` is 0 with the stream locked;
/// the writer thread takes queued frames (and acknowledgements) off `queued` only once
/// written, with the stream still locked. So a frame sent after one that was queued is
/// queued behind it.
pub(crate) struct LinkOut {
    /// When frames were sent ([`LinkOut::send`]).
    gaps: SendGaps,
    queue: Sender<Out>,
    stream: Arc<Mutex<TlsWrite>>,
    /// Frames queued for the writer thread and not yet written.
    queued: Arc<AtomicUsize>,
    socket: SharedSocket,
    /// Whether the server said it reads binary frames.
    binary_bodies: bool,
}

/// The writer thread's side of a [`LinkOut`]: [`LinkWriter::run`] writes what is queued.
struct LinkWriter {
    stream: Arc<Mutex<TlsWrite>>,
    queued: Arc<AtomicUsize>,
    socket: SharedSocket,
    rx: Receiver<Out>,
}

impl LinkOut {
    /// A link's outlet over its write half, and the writer thread's side of it (not
    /// started: the caller runs it on a thread of its own).
    fn new(stream: TlsWrite, socket: SharedSocket, binary_bodies: bool) -> (LinkOut, LinkWriter) {
        let (queue, rx) = crossbeam_channel::unbounded();
        let stream = Arc::new(Mutex::new(stream));
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = LinkWriter {
            stream: stream.clone(),
            queued: queued.clone(),
            socket: socket.clone(),
            rx,
        };
        let out = LinkOut {
            gaps: SendGaps::new(),
            queue,
            stream,
            queued,
            socket,
            binary_bodies,
        };
        (out, writer)
    }

    /// Shuts the socket down; the link's reader then ends the link.
    pub fn cut(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// The frame in a form this link's server reads. Requests are made binary whatever
    /// the link (they are made before the link is chosen, and kept to be sent again on
    /// the next one); a server that reads JSON only gets them as JSON.
    fn readable(&self, frame: Vec<u8>) -> Vec<u8> {
        if self.binary_bodies || frame.first() != Some(&BINARY_FRAME) {
            return frame;
        }
        match Request::from_frame(&frame) {
            Ok(request) => request.to_json(),
            // Only a hand-made frame (`send_raw_frame`, for tests) is unreadable: sent as
            // it is, it gets the server's error reply instead of waiting for none.
            Err(_) => frame,
        }
    }

    /// Writes `bytes` on the locked write half; a failed write cuts the link.
    fn write_locked(&self, stream: &mut TlsWrite, bytes: &[u8]) {
        if stream.write_all(bytes).is_err() {
            self.cut();
        }
    }

    /// Sends a frame: at once from this thread if it can, else through the writer. A
    /// failed write cuts the link (its reader then ends it, and reconnection sends the
    /// frame again if its request is one that can be). Written here, it waits until the
    /// socket takes it: for a server that stopped reading, up to
    /// [`crate::transport::WRITE_STALL`], after which the write fails. Callers hold no
    /// lock that `close` or the link's reader needs.
    pub fn send(&self, frame: Vec<u8>) {
        let frame = self.readable(frame);
        if self.gaps.alone(BURST_GAP) && self.queued.load(Ordering::Acquire) == 0 {
            if let Some(mut stream) = self.stream.try_lock() {
                if self.queued.load(Ordering::Acquire) == 0 {
                    let mut buf = Vec::with_capacity(frame.len() + 4);
                    encode_frame(&frame, &mut buf);
                    self.write_locked(&mut stream, &buf);
                    return;
                }
            }
        }
        self.queue(frame);
    }

    /// Queues a frame for the writer thread (for callers holding locks, which must not
    /// wait on the socket).
    pub fn queue(&self, frame: Vec<u8>) {
        let frame = self.readable(frame);
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Out::Frame(frame)).is_err() {
            // The writer has ended (and so has the link): nothing will take it off.
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Queues an acknowledgement for the writer thread. Counted like a frame, so that
    /// a frame sent after it is not written directly before it: a `logout` must not
    /// overtake the acknowledgements of messages handed over before it (the server
    /// ignores them once the session has ended, and pushes those messages again at the
    /// next login).
    pub fn ack(&self, tag: u64) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Out::Ack(tag)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Has the writer thread write all queued before this, then shut the sending side.
    fn finish(&self) {
        let _ = self.queue.send(Out::Finish);
    }

    /// Writes `acks` (taking them) as one `ack` frame when the write half is free, and
    /// otherwise queues them for the writer thread, so that the caller (the link's
    /// reader) never waits for a write in progress, a file upload's say.
    fn write_acks(&self, acks: &mut Vec<u64>) {
        let Some(mut stream) = self.stream.try_lock() else {
            for tag in acks.drain(..) {
                self.ack(tag);
            }
            return;
        };
        let mut buf = Vec::new();
        flush_acks(acks, &mut buf);
        self.write_locked(&mut stream, &buf);
    }
}

/// Asks the balancer for a server, connects to it over TLS and says hello.
fn open(config: &ClientConfig) -> Result<(Hello, TlsConn), ClientError> {
    let assignment = ask_balancer(config)?;
    let mut conn = connect(&config.trust, &assignment.addr)?;
    let hello = Request {
        req: 0,
        body: RequestBody::Hello {
            version: PROTOCOL_VERSION,
            ticket: assignment.ticket,
            binary_bodies: true,
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
    let binary_bodies = match serde_json::from_slice::<ServerFrame>(&reply) {
        Ok(ServerFrame::Ok {
            result: Some(OkResult::Hello { binary_bodies, .. }),
            ..
        }) => binary_bodies,
        Ok(ServerFrame::Ok { .. }) => false,
        Ok(ServerFrame::Error { code, message, .. }) => {
            return Err(ClientError::new(code, message))
        }
        other => {
            return Err(ClientError::disconnected(format!(
                "unexpected answer to hello: {other:?}"
            )))
        }
    };
    let _ = conn.socket.set_read_timeout(None);
    let hello = Hello {
        server: assignment.server,
        binary_bodies,
    };
    Ok((hello, conn))
}

/// A server's answer to `hello`: its name and whether it reads binary frames.
struct Hello {
    server: String,
    binary_bodies: bool,
}

/// Opens a link and starts its threads. The link is not installed: the caller does
/// that (at once for a first connection, after `resume` for a later one).
pub(crate) fn start(inner: &Arc<Inner>, id: u64) -> Result<Link, ClientError> {
    let (
        Hello {
            server,
            binary_bodies,
        },
        conn,
    ) = open(&inner.config)?;
    let TlsConn {
        socket,
        reader,
        writer,
    } = conn;
    let alive = Arc::new(AtomicBool::new(true));
    let (reader_running, reader_done) = crossbeam_channel::bounded::<()>(0);
    // Used by the writer thread, the reader (its acknowledgements), and the threads
    // that send frames directly.
    let (out, link_writer) = LinkOut::new(writer, socket, binary_bodies);
    let out = Arc::new(out);
    let link = Link {
        id,
        server,
        out: out.clone(),
        alive: alive.clone(),
        reader_done,
    };
    thread::Builder::new()
        .name("fastchat-writer".into())
        .stack_size(128 * 1024)
        .spawn(move || link_writer.run())
        .map_err(ClientError::disconnected)?;
    let reader_inner = inner.clone();
    thread::Builder::new()
        .name("fastchat-reader".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            read_loop(reader, out, id, reader_inner, alive);
            drop(reader_running);
        })
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

/// Writes the acknowledgements the reader thread kept (see [`LinkOut::write_acks`]).
fn write_reader_acks(out: &LinkOut) {
    let mut acks = READER_ACKS.with(|acks| acks.borrow_mut().as_mut().map(std::mem::take));
    if let Some(acks) = acks.as_mut().filter(|a| !a.is_empty()) {
        out.write_acks(acks);
    }
}

impl LinkWriter {
    /// The writer thread: writes what is queued, in order, until the link ends, or
    /// until [`Out::Finish`], after which it shuts only the sending side.
    fn run(self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut acks = Vec::new();
        while let Ok(first) = fastchat_common::channel::recv(&self.rx) {
            buf.clear();
            // Frames and acknowledgements taken off the queue (see `LinkOut`).
            let mut items = 0;
            let mut finish = false;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Out::Frame(body) => {
                        flush_acks(&mut acks, &mut buf);
                        encode_frame(&body, &mut buf);
                        items += 1;
                    }
                    Out::Ack(tag) => {
                        acks.push(tag);
                        items += 1;
                    }
                    Out::Finish => {
                        finish = true;
                        break;
                    }
                }
                if buf.len() < 256 * 1024 {
                    next = self.rx.try_recv().ok();
                }
            }
            flush_acks(&mut acks, &mut buf);
            let mut stream = self.stream.lock();
            let written = stream.write_all(&buf);
            // Only now, and with the stream still locked, may a frame sent after these be
            // written directly (see `LinkOut`).
            self.queued.fetch_sub(items, Ordering::AcqRel);
            if finish && written.is_ok() {
                // Under the lock: nothing written directly can follow the end.
                let _ = self.socket.shutdown(Shutdown::Write);
                return;
            }
            drop(stream);
            if written.is_err() || finish {
                break;
            }
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
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
    out: Arc<LinkOut>,
    link_id: u64,
    inner: Arc<Inner>,
    alive: Arc<AtomicBool>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    READER_ACKS.with(|acks| *acks.borrow_mut() = Some(Vec::new()));
    // Held from the first message handled after the reader's acknowledgements were
    // written until they are written again: a closing client waits for it, so that what
    // was handed over is acknowledged before the link ends.
    let mut handing_over = None;
    let reason = loop {
        if reader.buffer().is_empty() {
            // All that was read is handled: acknowledge it before waiting for more.
            write_reader_acks(&out);
            handing_over = None;
        }
        let body = match read_frame(&mut reader, MAX_CLIENT_FRAME) {
            Ok(Some(body)) => body,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let frame = match ServerFrame::from_frame(&body) {
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
                if handing_over.is_none() {
                    handing_over = inner.handovers.begin();
                }
                if handing_over.is_none() {
                    // The client is closing: left unacknowledged, for the next login.
                    continue;
                }
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
        if handing_over.is_some() && inner.handovers.closing() {
            // Let the closing client go on without waiting for the buffer to empty.
            write_reader_acks(&out);
            handing_over = None;
        }
    };
    // Acknowledgements still kept go nowhere: the link is gone. Those messages come again.
    drop(handing_over);
    READER_ACKS.with(|acks| *acks.borrow_mut() = None);
    alive.store(false, Ordering::Release);
    crate::connection::link_ended(&inner, link_id, reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{connect, Trust};
    use fastchat_common::frame::FrameError;
    use fastchat_common::tls::{self, pki, TlsIdentity};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A TLS server on loopback that returns the first `n` frames it reads; and a
    /// `LinkOut` connected to it whose writer thread is not started yet.
    fn link_to_reader(n: usize) -> (LinkOut, impl FnOnce(), thread::JoinHandle<Vec<Vec<u8>>>) {
        link_to_reader_of(n, true)
    }

    /// [`link_to_reader`], to a server that reads binary frames or not.
    fn link_to_reader_of(
        n: usize,
        binary_bodies: bool,
    ) -> (LinkOut, impl FnOnce(), thread::JoinHandle<Vec<Vec<u8>>>) {
        link_to_server(binary_bodies, move |mut reader| {
            (0..n)
                .map(|_| read_frame(&mut reader, 1024).unwrap().expect("a frame"))
                .collect()
        })
    }

    /// A TLS server on loopback that answers what `read` makes of the frames it reads;
    /// and a `LinkOut` connected to it whose writer thread is not started yet.
    fn link_to_server<T: Send + 'static>(
        binary_bodies: bool,
        read: impl FnOnce(&mut dyn std::io::Read) -> T + Send + 'static,
    ) -> (LinkOut, impl FnOnce(), thread::JoinHandle<T>) {
        let ca = pki::make_ca("link-test").unwrap();
        let pair = pki::issue(&ca, "server-1").unwrap();
        let identity = TlsIdentity::from_pem(
            pair.cert.as_bytes(),
            pair.key.as_bytes(),
            ca.cert.as_bytes(),
        )
        .unwrap();
        let acceptor = tls::acceptor(&identity, false).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let (reader, _writer) = tls::accept(&acceptor, &socket, &socket).unwrap();
            read(&mut BufReader::new(reader))
        });
        let trust = Trust::from_ca_pem(ca.cert.as_bytes()).unwrap();
        let conn = connect(&trust, &addr).unwrap();
        let (out, writer) = LinkOut::new(conn.writer, conn.socket, binary_bodies);
        let start_writer = move || {
            thread::spawn(move || writer.run());
        };
        (out, start_writer, server)
    }

    fn after_a_gap() {
        thread::sleep(BURST_GAP + Duration::from_millis(5));
    }

    #[test]
    fn a_lone_frame_is_written_by_the_sending_thread() {
        let (out, _writer_never_started, server) = link_to_reader(1);
        after_a_gap();
        out.send(b"alone".to_vec());
        assert_eq!(server.join().unwrap(), vec![b"alone".to_vec()]);
    }

    #[test]
    fn a_lone_frame_never_overtakes_one_still_queued() {
        let (out, start_writer, server) = link_to_reader(3);
        // Queued, and nothing takes it off the queue yet.
        out.queue(b"first".to_vec());
        after_a_gap();
        // Alone, and the write half is free: but one frame is still queued.
        out.send(b"second".to_vec());
        // Part of a burst: queued whatever the queue holds.
        out.send(b"third".to_vec());
        start_writer();
        assert_eq!(
            server.join().unwrap(),
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn acknowledgements_keep_their_place_and_finish_writes_everything_before_the_end() {
        let (out, start_writer, server) = link_to_server(true, |mut reader| {
            let mut frames = Vec::new();
            // Up to the end of the stream (or an error: a timeout is one).
            loop {
                match read_frame(&mut reader, 1024) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => return (frames, None),
                    Err(FrameError::Io(e)) => return (frames, Some(e.kind())),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        out.ack(1);
        out.ack(2);
        after_a_gap();
        // Alone, and the write half is free: but the acknowledgements are still queued.
        out.send(b"after the acks".to_vec());
        out.ack(3);
        out.finish();
        start_writer();
        let (frames, end) = server.join().unwrap();
        let ack = |tags: Vec<u64>| {
            Request {
                req: 0,
                body: RequestBody::Ack { tags },
            }
            .to_json()
        };
        assert_eq!(
            frames,
            vec![ack(vec![1, 2]), b"after the acks".to_vec(), ack(vec![3])]
        );
        assert!(
            !matches!(
                end,
                Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ),
            "the stream ended after them: {end:?}"
        );
        assert_eq!(
            out.queued.load(Ordering::Acquire),
            0,
            "nothing counted as queued"
        );
    }

    #[test]
    fn a_server_that_reads_only_json_gets_binary_requests_as_json() {
        use fastchat_common::Blob;
        let send = Request {
            req: 4,
            body: RequestBody::Send {
                id: "m".into(),
                to: "bob".into(),
                body: Blob::from_bytes(b"sealed"),
            },
        };
        let binary = send.to_frame(true);
        assert_eq!(binary[0], BINARY_FRAME);
        for (binary_bodies, expected) in [(false, send.to_json()), (true, binary.clone())] {
            let (out, start_writer, server) = link_to_reader_of(2, binary_bodies);
            out.queue(binary.clone());
            start_writer();
            after_a_gap();
            out.send(binary.clone());
            assert_eq!(server.join().unwrap(), vec![expected.clone(), expected]);
        }
    }
}
