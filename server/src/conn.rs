//! Connection plumbing shared by client sessions and peer links: the outgoing queue and
//! the writer thread that drains it, batching every queued frame into one write.

use crossbeam_channel::{Receiver, Sender};
use fastchat_common::frame::encode_frame;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;

/// What a connection's writer thread is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Send this frame body.
    Frame(Vec<u8>),
    /// Send what is queued before this, then close the connection.
    Close,
}

/// Serializes a frame body; our own types always serialize.
pub fn to_body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
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
    rx: Receiver<Outgoing>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let mut buf = Vec::with_capacity(64 * 1024);
        'outer: while let Ok(first) = rx.recv() {
            buf.clear();
            let mut closing = false;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Frame(body) => encode_frame(&body, &mut buf),
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
            if closing {
                break;
            }
        }
        let _ = socket.shutdown(Shutdown::Both);
    })
}

/// A queue towards one connection's writer.
pub type OutQueue = Sender<Outgoing>;
