//! The machine's ceiling: a minimal relay with the same thread-per-connection design as
//! FastChat (a reader and a writer thread per connection, channels between them) over
//! plain TCP, with no TLS, no crypto and no database, and its clients. A message is
//! answered to its sender when the recipient acknowledges it, as in FastChat. A group
//! message is fanned out by the relay, one copy per other member, and answered when the
//! last copy is acknowledged, as in FastChat.
//!
//! Frame: u32 length, then u8 kind (1 message, 2 ack, 3 hello, 4 group message), u32
//! from, u32 to (a client; a group for kind 4), u64 number, and for a message its text.

use crate::traffic::{Answer, Endpoint, SinkSlot};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const MESSAGE: u8 = 1;
const ACK: u8 = 2;
const HELLO: u8 = 3;
const GROUP: u8 = 4;

/// Where the relay sends: each client's writer.
type Routes = Arc<Mutex<HashMap<u32, Sender<Vec<u8>>>>>;
/// Group messages waiting for acknowledgements: (sender, number) -> copies unanswered.
type Fanouts = Arc<Mutex<HashMap<(u32, u64), usize>>>;

fn frame(kind: u8, from: u32, to: u32, number: u64, text: &[u8]) -> Vec<u8> {
    let len = 1 + 4 + 4 + 8 + text.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&from.to_be_bytes());
    f.extend_from_slice(&to.to_be_bytes());
    f.extend_from_slice(&number.to_be_bytes());
    f.extend_from_slice(text);
    f
}

struct Frame {
    kind: u8,
    from: u32,
    to: u32,
    number: u64,
    raw: Vec<u8>,
}

fn read_one(r: &mut impl Read) -> Option<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if !(17..=1 << 20).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let kind = body[0];
    let from = u32::from_be_bytes(body[1..5].try_into().ok()?);
    let to = u32::from_be_bytes(body[5..9].try_into().ok()?);
    let number = u64::from_be_bytes(body[9..17].try_into().ok()?);
    let mut raw = Vec::with_capacity(4 + len);
    raw.extend_from_slice(&(len as u32).to_be_bytes());
    raw.extend_from_slice(&body);
    Some(Frame {
        kind,
        from,
        to,
        number,
        raw,
    })
}

/// Writes every queued frame, batching what is queued into one write.
fn writer(stream: TcpStream, rx: Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(256 * 1024, stream);
    while let Ok(first) = rx.recv() {
        if w.write_all(&first).is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).is_err() {
                return;
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
}

/// Starts the relay on a free loopback port, with these groups (each a list of clients,
/// numbered as in the frames); returns its address.
pub fn start_relay(groups: Vec<Vec<u32>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("relay listens");
    let addr = listener.local_addr().expect("address").to_string();
    let routes: Routes = Arc::default();
    let fanouts: Fanouts = Arc::default();
    let groups = Arc::new(groups);
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (routes, fanouts, groups) = (routes.clone(), fanouts.clone(), groups.clone());
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(write_half) = stream.try_clone() else {
                    return;
                };
                let (tx, rx) = crossbeam_channel::unbounded();
                thread::spawn(move || writer(write_half, rx));
                let mut r = BufReader::with_capacity(64 * 1024, stream);
                while let Some(f) = read_one(&mut r) {
                    match f.kind {
                        HELLO => {
                            routes.lock().insert(f.from, tx.clone());
                        }
                        GROUP => fan_out(&f, &groups, &routes, &fanouts),
                        // (In `dm` there are no groups, and no lock to take.)
                        ACK if !groups.is_empty() => {
                            let mut waiting = fanouts.lock();
                            if let Some(left) = waiting.get_mut(&(f.to, f.number)) {
                                // A copy of a group message: answer the sender once,
                                // with the last acknowledgement.
                                *left -= 1;
                                if *left > 0 {
                                    continue;
                                }
                                waiting.remove(&(f.to, f.number));
                            }
                            drop(waiting);
                            forward(&routes, f.to, f.raw);
                        }
                        _ => forward(&routes, f.to, f.raw),
                    }
                }
            });
        }
    });
    addr
}

fn forward(routes: &Routes, to: u32, raw: Vec<u8>) {
    let dest = routes.lock().get(&to).cloned();
    if let Some(dest) = dest {
        let _ = dest.send(raw);
    }
}

/// One copy of a group message per other member; the sender is answered at once when
/// there is none.
fn fan_out(f: &Frame, groups: &[Vec<u32>], routes: &Routes, fanouts: &Fanouts) {
    let members = groups.get(f.to as usize).map_or(&[][..], Vec::as_slice);
    let others: Vec<u32> = members.iter().copied().filter(|&m| m != f.from).collect();
    if others.is_empty() {
        forward(routes, f.from, frame(ACK, f.to, f.from, f.number, b""));
        return;
    }
    fanouts.lock().insert((f.from, f.number), others.len());
    let text = &f.raw[4 + 17..];
    for member in others {
        forward(
            routes,
            member,
            frame(MESSAGE, f.from, member, f.number, text),
        );
    }
}

/// A client of the relay.
pub struct RelayClient {
    me: u32,
    /// Whether a target is a group (`group`) or a client (`dm`).
    groups: bool,
    out: Sender<Vec<u8>>,
    sinks: Arc<SinkSlot>,
    waiting: Arc<Mutex<HashMap<u64, Sender<()>>>>,
    next: Mutex<u64>,
}

impl RelayClient {
    /// Connects client number `me` to the relay at `addr`; its targets are groups when
    /// `groups`, clients otherwise.
    pub fn connect(addr: &str, me: u32, groups: bool) -> RelayClient {
        let stream = TcpStream::connect(addr).expect("relay reachable");
        let _ = stream.set_nodelay(true);
        let (out, rx) = crossbeam_channel::unbounded();
        let write_half = stream.try_clone().expect("clone");
        thread::spawn(move || writer(write_half, rx));
        let _ = out.send(frame(HELLO, me, 0, 0, b""));
        let sinks: Arc<SinkSlot> = Arc::default();
        let waiting: Arc<Mutex<HashMap<u64, Sender<()>>>> = Arc::default();
        let (reader_out, reader_waiting, reader_sinks) =
            (out.clone(), waiting.clone(), sinks.clone());
        thread::spawn(move || {
            let mut r = BufReader::with_capacity(64 * 1024, stream);
            while let Some(f) = read_one(&mut r) {
                match f.kind {
                    MESSAGE => {
                        reader_sinks.deliver(&String::from_utf8_lossy(&f.raw[4 + 17..]));
                        let _ = reader_out.send(frame(ACK, me, f.from, f.number, b""));
                    }
                    ACK => {
                        if let Some(tx) = reader_waiting.lock().remove(&f.number) {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        // Give the relay the hello before anyone sends to us.
        thread::sleep(Duration::from_millis(5));
        RelayClient {
            me,
            groups,
            out,
            sinks,
            waiting,
            next: Mutex::new(0),
        }
    }
}

impl Endpoint for RelayClient {
    fn send(&self, to: usize, text: &str) -> Answer {
        let number = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.waiting.lock().insert(number, tx);
        let kind = if self.groups { GROUP } else { MESSAGE };
        let _ = self
            .out
            .send(frame(kind, self.me, to as u32, number, text.as_bytes()));
        Box::new(move |timeout| rx.recv_timeout(timeout).map_err(|_| "timeout".to_string()))
    }

    fn sinks(&self) -> &SinkSlot {
        &self.sinks
    }
}
