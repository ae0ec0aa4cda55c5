//! Connection plumbing shared by client sessions and peer links: the outgoing queue,
//! bounded in frames and in bytes, the writer thread that drains it, batching every
//! queued frame into one write, and the direct write of a frame that finds the queue
//! empty and the write half free.

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use fastchat_common::burst::SendGaps;
use fastchat_common::frame::encode_frame;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Makes frame bodies when the writer reaches it (none: nothing to send by then).
pub type FrameMaker = Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>;

/// What a connection's writer thread is asked to do.
pub enum Outgoing {
    /// Send this frame body.
    Frame(Vec<u8>),
    /// Send the frame this makes, made only now: what accumulated while the writer was
    /// busy goes as one frame (a peer link's acknowledgements).
    Made(FrameMaker),
    /// Write what a direct write left in the [`Sink`] (the socket would not take it
    /// then).
    Kept,
    /// Send what is queued before this, then close the connection.
    Close,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outgoing::Frame(body) => write!(f, "Frame({} bytes)", body.len()),
            Outgoing::Made(_) => write!(f, "Made"),
            Outgoing::Kept => write!(f, "Kept"),
            Outgoing::Close => write!(f, "Close"),
        }
    }
}

/// Serializes a frame body; our own types always serialize.
pub fn to_body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
}

/// Bytes the writer gathers before it writes, so one syscall carries many frames.
const WRITE_BATCH: usize = 256 * 1024;

/// Starts the writer thread for `stream` (the TLS writing half of `socket`): it drains
/// the queue, writes frames in batches (sealed as one), and shuts the socket down
/// (waking the reader) on `Close`, on a write error, or when every sender is gone. For a
/// queue made with [`Writes::Direct`] (or [`Writes::DirectWhenAlone`], for a frame that
/// comes alone), from now on a frame that finds nothing queued and the write half free
/// is written by the thread that sends it ([`OutQueue::try_send`]).
pub fn spawn_writer<W: WriteHalf + 'static>(
    name: String,
    stream: W,
    socket: TcpStream,
    queue: OutReceiver,
) -> std::io::Result<thread::JoinHandle<()>> {
    let OutReceiver { rx, bytes, turn } = queue;
    *turn.stream.lock() = Some(Box::new(stream));
    thread::Builder::new().name(name).spawn(move || {
        // Grows with the batches it carries: an idle connection keeps little.
        let mut buf = Vec::new();
        'outer: while let Ok(first) = rx.recv() {
            buf.clear();
            let mut closing = false;
            let mut taken = 0;
            let mut items = 0;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                items += 1;
                match item {
                    Outgoing::Frame(body) => {
                        taken += body.len();
                        encode_frame(&body, &mut buf);
                    }
                    Outgoing::Made(make) => {
                        for body in make() {
                            encode_frame(&body, &mut buf);
                        }
                    }
                    // Written below, with the batch: `flush` writes what the sink kept.
                    Outgoing::Kept => {}
                    Outgoing::Close => {
                        closing = true;
                        break;
                    }
                }
                if buf.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let mut held = turn.stream.lock();
            let Some(stream) = held.as_mut() else {
                break;
            };
            let written = if buf.is_empty() {
                Ok(())
            } else {
                stream.write_all(&buf)
            };
            let written = written.and_then(|()| stream.flush());
            // Lowered only once written, the write half still held: a direct write
            // that sees nothing queued comes after all of this on the wire.
            turn.queued.fetch_sub(items, Ordering::AcqRel);
            drop(held);
            if let Err(e) = written {
                log::debug!("write failed: {e}");
                break 'outer;
            }
            bytes.fetch_sub(taken, Ordering::AcqRel);
            if closing {
                break;
            }
        }
        let _ = socket.shutdown(Shutdown::Both);
    })
}

/// Who writes a connection's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// The sending thread when it can ([`OutQueue::write_now`]), else the writer
    /// thread: a client connection, which gets a frame or two at a time.
    Direct,
    /// Like `Direct` for a frame that comes alone (none sent on the connection in the
    /// given microseconds before it); the frames of a burst go to the writer thread,
    /// which packs them into one record and one system call. A mesh link: a group
    /// message to remote members is a burst of `deliver` frames (written one by one,
    /// they made `group`'s tail several times longer), while a thousand clients sending
    /// one message at a time make a frame every millisecond or so, each of which woke
    /// the writer thread for itself.
    DirectWhenAlone(Duration),
    /// Always the writer thread (tests that read what a queue holds).
    #[cfg(test)]
    Queued,
}

/// A connection's writing half, as its writer thread and direct writes use it.
pub trait WriteHalf: Write + Send {
    /// Writes `buf` without waiting, unless another thread is writing to the socket
    /// (`None`: nothing was written). `Some(Ok(true))`: what the socket would not take
    /// was kept, for the next [`Write::flush`].
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<bool>>;
}

impl WriteHalf for fastchat_common::tls::TlsWriter<Sink> {
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<bool>> {
        self.try_write_with(buf, Sink::send_or_keep)
    }
}

/// Who writes to a connection, and in which order. A frame sent while nothing is
/// queued and the write half is free is written by the sending thread at once (a
/// reader routing a message, a session answering its client), which saves waking the
/// writer thread for it; everything else goes through the queue, whose writer packs
/// what has piled up into one write. `queued` counts what is in the channel and is
/// lowered by the writer only after writing it, holding the write half, so a frame
/// written directly never overtakes one queued before it.
struct WriteTurn {
    /// The connection's TLS writing half, once its writer thread runs.
    stream: Mutex<Option<Box<dyn WriteHalf>>>,
    /// Items in the channel not yet written.
    queued: AtomicUsize,
    /// When frames were sent (`Writes::DirectWhenAlone` only).
    gaps: SendGaps,
}

thread_local! {
    /// A direct write's frame (length prefix and body in one buffer, so one TLS record).
    static FRAME: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A direct write's buffer above this size is not kept for the thread's next one: ten
/// thousand client readers each keeping their largest frame would cost more memory per
/// connection than the allocation saves (a chat message's frame is well below it).
const FRAME_KEPT_MAX: usize = 4 * 1024;

/// The socket end of a server connection's TLS writing half. As a `Write` it writes
/// and waits like the socket, after what it kept. [`Sink::send_or_keep`] never waits:
/// what the socket will not take at once is kept, and written before anything else by
/// the next write that may wait (the writer thread's at the latest, which an
/// [`Outgoing::Kept`] asks for).
pub struct Sink {
    socket: TcpStream,
    kept: Vec<u8>,
}

impl Sink {
    /// A sink writing to `socket`.
    pub fn new(socket: TcpStream) -> Sink {
        Sink {
            socket,
            kept: Vec::new(),
        }
    }

    /// Sends what the socket takes now and keeps the rest; `true` if it kept any.
    /// Behind bytes already kept, it keeps all of `buf`.
    pub fn send_or_keep(&mut self, buf: &[u8]) -> io::Result<bool> {
        let sent = if self.kept.is_empty() {
            self.send_now(buf)?
        } else {
            0
        };
        self.kept.extend_from_slice(&buf[sent..]);
        Ok(!self.kept.is_empty())
    }

    fn write_kept(&mut self) -> io::Result<()> {
        if !self.kept.is_empty() {
            self.socket.write_all(&self.kept)?;
            self.kept = Vec::new();
        }
        Ok(())
    }

    /// Sends what the socket takes without waiting.
    fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the descriptor is this sink's open socket, and `buf` is valid for
            // `buf.len()` bytes for the duration of the call.
            let n = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_kept()?;
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_kept()
    }
}

/// A queue towards one connection's writer, bounded both in frames (the channel) and in
/// the bytes of the frames not yet written, so a peer that stops reading pins a known
/// amount of memory whatever the frame sizes. The channel is an array that allocates
/// and touches all its slots up front (32 bytes each), so the frame bound is also a
/// fixed memory cost per connection; an unbounded (linked) channel avoids that but
/// measured 15% slower in `dm`.
#[derive(Clone)]
pub struct OutQueue {
    tx: Sender<Outgoing>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    turn: Arc<WriteTurn>,
    /// Whether a frame may be written by the thread that sends it.
    writes: Writes,
}

/// The writer's end of an [`OutQueue`].
pub struct OutReceiver {
    rx: Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
    turn: Arc<WriteTurn>,
}

#[cfg(test)]
impl OutReceiver {
    /// What is queued next, if anything (tests read a queue without a writer).
    pub fn try_next(&self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }
}

/// A queue of at most `frames` frames and `max_bytes` bytes of frame bodies, written as
/// `writes` says once its writer thread runs.
pub fn out_queue(frames: usize, max_bytes: usize, writes: Writes) -> (OutQueue, OutReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(frames);
    let bytes = Arc::new(AtomicUsize::new(0));
    let turn = Arc::new(WriteTurn {
        stream: Mutex::new(None),
        queued: AtomicUsize::new(0),
        gaps: SendGaps::new(),
    });
    (
        OutQueue {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            turn: turn.clone(),
            writes,
        },
        OutReceiver { rx, bytes, turn },
    )
}

fn size_of(item: &Outgoing) -> usize {
    match item {
        Outgoing::Frame(body) => body.len(),
        // Made later, and not counted: a peer link's acknowledgements, a few bytes each.
        Outgoing::Made(_) | Outgoing::Kept | Outgoing::Close => 0,
    }
}

impl OutQueue {
    /// Reserves room for `n` bytes; `false` when the byte bound would be passed. A frame
    /// larger than the whole bound still goes into an empty queue.
    fn reserve(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Writes a frame at once if nothing is queued and the write half is free; `true`
    /// if it did (what the socket would not take without waiting is kept for the
    /// writer thread, queued behind a [`Outgoing::Kept`]). Never waits: a frame it did
    /// not write goes into the queue.
    fn write_now(&self, body: &[u8]) -> bool {
        let turn = &*self.turn;
        let may = match self.writes {
            Writes::Direct => true,
            Writes::DirectWhenAlone(gap) => turn.gaps.alone(gap),
            #[cfg(test)]
            Writes::Queued => false,
        };
        if !may || turn.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(mut held) = turn.stream.try_lock() else {
            return false;
        };
        // Checked again with the write half held: the writer lowers it only then.
        if turn.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(stream) = held.as_mut() else {
            return false; // no writer thread (yet)
        };
        let written = FRAME.with_borrow_mut(|frame| {
            frame.clear();
            encode_frame(body, frame);
            let result = stream.write_now(frame);
            if frame.capacity() > FRAME_KEPT_MAX {
                *frame = Vec::new();
            }
            result
        });
        let kept = match written {
            // The reader is writing (a TLS control record): queued.
            None => return false,
            Some(Ok(kept)) => kept,
            Some(Err(e)) => {
                // Queued instead: the writer meets the error too, and closes the
                // connection.
                log::debug!("direct write failed: {e}");
                return false;
            }
        };
        if kept {
            // Queued before the write half is let go, so later frames queue behind it.
            turn.queued.fetch_add(1, Ordering::AcqRel);
            if self.tx.try_send(Outgoing::Kept).is_err() {
                // Nothing else is queued, so the channel is not full: the writer is gone
                // and the connection is ending.
                turn.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
        true
    }

    /// Puts `item` in the channel with `send`, counting it as queued.
    fn enqueue<E>(
        &self,
        item: Outgoing,
        send: impl FnOnce(&Sender<Outgoing>, Outgoing) -> Result<(), E>,
    ) -> Result<(), E> {
        self.turn.queued.fetch_add(1, Ordering::AcqRel);
        send(&self.tx, item).inspect_err(|_| {
            self.turn.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Writes a frame at once when it can ([`OutQueue::write_now`]), else queues it;
    /// never waits.
    pub fn try_send(&self, item: Outgoing) -> Result<(), TrySendError<Outgoing>> {
        if matches!(&item, Outgoing::Frame(body) if self.write_now(body)) {
            return Ok(());
        }
        let n = size_of(&item);
        if !self.reserve(n) {
            return Err(TrySendError::Full(item));
        }
        self.enqueue(item, |tx, item| tx.try_send(item))
            .inspect_err(|_| {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
            })
    }

    /// Writes a frame at once when it can ([`OutQueue::write_now`]), else queues it,
    /// waiting at most `wait` for room (in frames and in bytes).
    pub fn send_timeout(
        &self,
        item: Outgoing,
        wait: Duration,
    ) -> Result<(), SendTimeoutError<Outgoing>> {
        if matches!(&item, Outgoing::Frame(body) if self.write_now(body)) {
            return Ok(());
        }
        self.queue_timeout(item, wait)
    }

    /// Queues `item` for the writer thread, never writing it from this one, waiting at
    /// most `wait` for room: for the frames of a burst, which the writer packs together.
    pub fn queue_timeout(
        &self,
        item: Outgoing,
        wait: Duration,
    ) -> Result<(), SendTimeoutError<Outgoing>> {
        let n = size_of(&item);
        let deadline = Instant::now() + wait;
        while !self.reserve(n) {
            if Instant::now() >= deadline {
                return Err(SendTimeoutError::Timeout(item));
            }
            // Room in bytes comes back only as the writer writes: poll briefly.
            thread::sleep(Duration::from_millis(1));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.enqueue(item, |tx, item| tx.send_timeout(item, left))
            .inspect_err(|_| {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
            })
    }

    /// Queues, waiting as long as it takes (small control frames only).
    pub fn send(&self, item: Outgoing) -> Result<(), SendTimeoutError<Outgoing>> {
        self.send_timeout(item, Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::{out_queue, spawn_writer, OutQueue, Outgoing, Sink, WriteHalf, Writes};
    use fastchat_common::frame::read_frame;
    use parking_lot::Mutex;
    use std::io::{self, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    /// A connected pair on loopback: (the end a writer writes to, the end the test reads).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (near, far)
    }

    /// A sink that records the name of each thread that writes through it.
    struct Recording {
        sink: Sink,
        writers: Arc<Mutex<Vec<String>>>,
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let name = thread::current().name().unwrap_or("?").to_string();
            self.writers.lock().push(name);
            self.sink.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.sink.flush()
        }
    }

    impl WriteHalf for Recording {
        fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<bool>> {
            let name = thread::current().name().unwrap_or("?").to_string();
            self.writers.lock().push(name);
            self.sink.write_now(buf)
        }
    }

    /// The sink alone, without TLS: direct writes go straight to `send_or_keep`.
    impl WriteHalf for Sink {
        fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<bool>> {
            Some(self.send_or_keep(buf))
        }
    }

    /// A client connection's queue (16 frames, `max_bytes`) with its writer thread
    /// running, and the far end to read what it writes.
    fn direct_writer(max_bytes: usize) -> (OutQueue, TcpStream) {
        let (near, far) = socket_pair();
        let (out, rx) = out_queue(16, max_bytes, Writes::Direct);
        let sink = Sink::new(near.try_clone().unwrap());
        spawn_writer("test-w".into(), sink, near, rx).unwrap();
        (out, far)
    }

    fn next_frame(far: &mut TcpStream) -> Vec<u8> {
        read_frame(far, 64 << 20).unwrap().expect("a frame")
    }

    #[test]
    fn a_frame_for_an_idle_connection_is_written_by_the_thread_that_sends_it() {
        let (near, mut far) = socket_pair();
        let writers = Arc::new(Mutex::new(Vec::new()));
        let stream = Recording {
            sink: Sink::new(near.try_clone().unwrap()),
            writers: writers.clone(),
        };
        let (out, rx) = out_queue(16, 1 << 20, Writes::Direct);
        spawn_writer("test-w".into(), stream, near, rx).unwrap();
        let sender = thread::Builder::new()
            .name("router".into())
            .spawn(move || out.try_send(Outgoing::Frame(b"hello".to_vec())).unwrap())
            .unwrap();
        sender.join().unwrap();
        assert_eq!(next_frame(&mut far), b"hello");
        assert_eq!(*writers.lock(), ["router"]);
    }

    #[test]
    fn on_a_mesh_link_a_frame_alone_is_written_by_its_sender_and_a_burst_by_the_writer() {
        let (near, mut far) = socket_pair();
        let writers = Arc::new(Mutex::new(Vec::new()));
        let stream = Recording {
            sink: Sink::new(near.try_clone().unwrap()),
            writers: writers.clone(),
        };
        // A long gap, so that a test thread held up between two frames of a burst
        // does not make the second one alone.
        const GAP: Duration = Duration::from_millis(50);
        let (out, rx) = out_queue(16, 1 << 20, Writes::DirectWhenAlone(GAP));
        spawn_writer("test-w".into(), stream, near, rx).unwrap();
        let sender = thread::Builder::new()
            .name("router".into())
            .spawn(move || {
                // Alone (the queue is older than the gap, nothing sent before it).
                thread::sleep(GAP * 2);
                out.try_send(Outgoing::Frame(b"alone".to_vec())).unwrap();
                // Then a burst, as a group message to several remote members makes.
                thread::sleep(GAP * 2);
                for body in [&b"first"[..], b"second", b"third"] {
                    out.try_send(Outgoing::Frame(body.to_vec())).unwrap();
                }
            })
            .unwrap();
        sender.join().unwrap();
        for body in [&b"alone"[..], b"first", b"second", b"third"] {
            assert_eq!(next_frame(&mut far), body);
        }
        let writers = writers.lock().clone();
        // The burst's first frame came alone too; the others went to the writer.
        assert_eq!(writers[..2], ["router", "router"], "{writers:?}");
        assert!(writers[2..].iter().all(|w| w == "test-w"), "{writers:?}");
        assert!(writers.len() > 2, "{writers:?}");
    }

    #[test]
    fn a_frame_sent_directly_never_overtakes_one_queued_before_it() {
        let (out, mut far) = direct_writer(1 << 20);
        // The writer takes this from the queue and is held while making its frame,
        // before it holds the write half: only the count of queued items keeps the
        // next frame from being written first.
        let (release, held) = crossbeam_channel::bounded::<()>(1);
        out.try_send(Outgoing::Made(Box::new(move || {
            let _ = held.recv_timeout(Duration::from_secs(10));
            vec![b"first".to_vec()]
        })))
        .unwrap();
        thread::sleep(Duration::from_millis(100));
        out.try_send(Outgoing::Frame(b"second".to_vec())).unwrap();
        release.send(()).unwrap();
        assert_eq!(next_frame(&mut far), b"first");
        assert_eq!(next_frame(&mut far), b"second");
    }

    #[test]
    fn a_direct_write_never_waits_for_a_peer_that_does_not_read() {
        let (out, mut far) = direct_writer(64 << 20);
        // Far more than the socket buffers hold while nobody reads.
        let big: Vec<u8> = (0..32 << 20).map(|i| (i % 251) as u8).collect();
        let (done, sent) = crossbeam_channel::bounded(1);
        let frame = big.clone();
        thread::spawn(move || {
            out.try_send(Outgoing::Frame(frame)).unwrap();
            out.try_send(Outgoing::Frame(b"after".to_vec())).unwrap();
            done.send(()).unwrap();
        });
        assert!(
            sent.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the sending thread waited on the socket"
        );
        // What the socket did not take was kept and is written by the writer thread,
        // before the frame queued after it.
        assert!(
            next_frame(&mut far) == big,
            "the large frame arrived damaged"
        );
        assert_eq!(next_frame(&mut far), b"after");
    }
}
