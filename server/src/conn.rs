//! Connection plumbing shared by client sessions and peer links: the outgoing queue,
//! bounded in frames and in bytes, and the writer thread that drains it, batching every
//! queued frame into one write.

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use fastchat_common::frame::encode_frame;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
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
    /// Send what is queued before this, then close the connection.
    Close,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outgoing::Frame(body) => write!(f, "Frame({} bytes)", body.len()),
            Outgoing::Made(_) => write!(f, "Made"),
            Outgoing::Close => write!(f, "Close"),
        }
    }
}

/// Serializes a frame body; our own types always serialize.
pub fn to_body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
}

/// Room a relayed message's frame needs beyond its body (tag or token, names, id,
/// times): with it, the frame is written into one allocation rather than grown from
/// 128 bytes by doubling, three reallocations for a typical message.
pub const FRAME_OVERHEAD: usize = 256;

/// Like [`to_body`], into a buffer of `capacity` bytes to start with.
pub fn to_body_sized<T: serde::Serialize>(value: &T, capacity: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, value).expect("wire types serialize");
    body
}

/// Bytes the writer gathers before it writes, so one syscall carries many frames.
const WRITE_BATCH: usize = 256 * 1024;

/// Starts the writer thread for `stream` (the TLS writing half of `socket`): it drains
/// `rx`, writes frames in batches (sealed as one), and shuts the socket down (waking the reader) on `Close`, on a write error, or when every
/// sender is gone.
pub fn spawn_writer<W: Write + Send + 'static>(
    name: String,
    mut stream: W,
    socket: TcpStream,
    queue: OutReceiver,
) -> std::io::Result<thread::JoinHandle<()>> {
    let OutReceiver { rx, bytes } = queue;
    thread::Builder::new().name(name).spawn(move || {
        // Grows with the batches it carries: an idle connection keeps little.
        let mut buf = Vec::new();
        'outer: while let Ok(first) = rx.recv() {
            buf.clear();
            let mut closing = false;
            let mut taken = 0;
            let mut next = Some(first);
            while let Some(item) = next.take() {
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
                    Outgoing::Close => {
                        closing = true;
                        break;
                    }
                }
                if buf.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !buf.is_empty() {
                if let Err(e) = stream.write_all(&buf) {
                    log::debug!("write failed: {e}");
                    break 'outer;
                }
            }
            bytes.fetch_sub(taken, Ordering::AcqRel);
            if closing {
                break;
            }
        }
        let _ = socket.shutdown(Shutdown::Both);
    })
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
}

/// The writer's end of an [`OutQueue`].
pub struct OutReceiver {
    rx: Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
}

#[cfg(test)]
impl OutReceiver {
    /// What is queued next, if anything (tests read a queue without a writer).
    pub fn try_next(&self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }
}

/// A queue of at most `frames` frames and `max_bytes` bytes of frame bodies.
pub fn out_queue(frames: usize, max_bytes: usize) -> (OutQueue, OutReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(frames);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        OutQueue {
            tx,
            bytes: bytes.clone(),
            max_bytes,
        },
        OutReceiver { rx, bytes },
    )
}

fn size_of(item: &Outgoing) -> usize {
    match item {
        Outgoing::Frame(body) => body.len(),
        // Made later, and not counted: a peer link's acknowledgements, a few bytes each.
        Outgoing::Made(_) | Outgoing::Close => 0,
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

    /// Queues without waiting.
    pub fn try_send(&self, item: Outgoing) -> Result<(), TrySendError<Outgoing>> {
        let n = size_of(&item);
        if !self.reserve(n) {
            return Err(TrySendError::Full(item));
        }
        self.tx.try_send(item).inspect_err(|_| {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
        })
    }

    /// Queues, waiting at most `wait` for room (in frames and in bytes).
    pub fn send_timeout(
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
        self.tx.send_timeout(item, left).inspect_err(|_| {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
        })
    }

    /// Queues, waiting as long as it takes (small control frames only).
    pub fn send(&self, item: Outgoing) -> Result<(), SendTimeoutError<Outgoing>> {
        self.send_timeout(item, Duration::from_secs(3600))
    }
}
