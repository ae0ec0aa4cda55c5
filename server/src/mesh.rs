//! The server mesh: one link per pair of servers (the later-started one dials), the
//! hello exchange, and the link reader that applies what peers tell us.

use crate::conn::{out_queue, spawn_writer, to_body, Outgoing, Writes};
use crate::router::{Heard, PeerLink};
use crate::state::{ServerState, LINK_WAIT};
use crate::tls::{TlsRead, TlsWrite};
use fastchat_common::frame::{read_frame, write_frame, MAX_PEER_FRAME};
use fastchat_common::protocol::peer::PeerFrame;
use fastchat_common::protocol::{RelayedOut, PROTOCOL_VERSION};
use fastchat_sql::ServerRow;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Frames a link's writer queue holds.
const LINK_QUEUE: usize = 65536;
/// Bytes of unwritten frames a link's queue holds.
const LINK_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// A frame for a peer that comes less than this after the one before it is part of a
/// burst (a group message's copies for that server's members), left to the link's
/// writer to pack; one that comes alone is written by the thread that sends it, which
/// saves waking the writer (`Writes::DirectWhenAlone`).
const ALONE_GAP: Duration = Duration::from_micros(200);
/// Time allowed for connecting and for the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a peer's hello says.
struct PeerHello {
    /// The peer's name.
    name: String,
    /// Its incarnation.
    incarnation: i64,
    /// Whether it reads binary frames.
    binary_bodies: bool,
}

fn read_hello(stream: &mut impl Read) -> Result<PeerHello, String> {
    let body = read_frame(stream, MAX_PEER_FRAME)
        .map_err(|e| e.to_string())?
        .ok_or("closed before hello")?;
    match PeerFrame::from_frame(&body) {
        Ok(PeerFrame::Hello {
            version,
            server,
            incarnation,
            binary_bodies,
        }) if version == PROTOCOL_VERSION => Ok(PeerHello {
            name: server,
            incarnation,
            binary_bodies,
        }),
        Ok(PeerFrame::Hello { version, .. }) => Err(format!("peer speaks version {version}")),
        _ => Err("first frame is not a hello".into()),
    }
}

fn write_hello(state: &ServerState, stream: &mut impl Write) -> std::io::Result<()> {
    let hello = PeerFrame::Hello {
        version: PROTOCOL_VERSION,
        server: state.name().to_string(),
        incarnation: state.incarnation,
        binary_bodies: true,
    };
    write_frame(stream, &to_body(&hello))?;
    stream.flush()
}

/// Handles a connection on the peer listener: mutual TLS, hello both ways, then the link.
/// The peer's certificate must name the server its hello claims to be.
pub fn accept_peer(state: Arc<ServerState>, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let from = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (mut reader, mut writer) = match state.tls.accept_peer(&stream) {
        Ok(halves) => halves,
        Err(e) => {
            log::warn!("peer connection from {from} refused: {e}");
            return;
        }
    };
    let hello = match read_hello(&mut reader) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("peer connection refused: {e}");
            return;
        }
    };
    let name = &hello.name;
    if name == state.name() {
        log::warn!("refusing a link from a server that calls itself {name}");
        return;
    }
    if !reader.peer_names().contains(name) {
        log::warn!("refusing {from}: it says it is {name} but its certificate does not");
        return;
    }
    if let Err(e) = write_hello(&state, &mut writer) {
        log::warn!("hello to {name} failed: {e}");
        return;
    }
    run_link(state, stream, reader, writer, hello);
}

/// Dials a peer (we started after it) and runs the link; its certificate must name it.
pub fn dial_peer(state: Arc<ServerState>, row: ServerRow) {
    let addr: SocketAddr = match row.peer_addr.parse() {
        Ok(a) => a,
        Err(e) => {
            log::warn!("{}: bad peer address {:?}: {e}", row.name, row.peer_addr);
            return;
        }
    };
    let stream = match TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            log::info!("cannot reach {} at {addr}: {e}", row.name);
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let (mut reader, mut writer) = match state.tls.connect_peer(&stream, &row.name) {
        Ok(halves) => halves,
        Err(e) => {
            log::warn!("TLS to {} at {addr} failed: {e}", row.name);
            return;
        }
    };
    if let Err(e) = write_hello(&state, &mut writer) {
        log::info!("hello to {} failed: {e}", row.name);
        return;
    }
    match read_hello(&mut reader) {
        Ok(hello) if hello.name == row.name => run_link(state, stream, reader, writer, hello),
        Ok(hello) => log::warn!("{addr} answered as {}, expected {}", hello.name, row.name),
        Err(e) => log::info!("hello from {} failed: {e}", row.name),
    }
}

fn run_link(
    state: Arc<ServerState>,
    stream: TcpStream,
    tls_read: TlsRead,
    tls_write: TlsWrite,
    hello: PeerHello,
) {
    let PeerHello {
        name: peer,
        incarnation,
        binary_bodies,
    } = hello;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_nodelay(true);
    let link_id = state.conn_id();
    let (out, rx) = out_queue(
        LINK_QUEUE,
        LINK_QUEUE_BYTES,
        Writes::DirectWhenAlone(ALONE_GAP),
    );
    let writer = match stream
        .try_clone()
        .and_then(|s| spawn_writer(format!("peer-{peer}-w"), tls_write, s, rx))
    {
        Ok(w) => w,
        Err(e) => {
            log::error!("cannot start writer for {peer}: {e}");
            return;
        }
    };
    let heard = Heard::new();
    let link = PeerLink {
        name: peer.as_str().into(),
        link_id,
        out: out.clone(),
        heard: heard.clone(),
        acks: Default::default(),
        binary_bodies,
    };
    // Changes made while there was no link were not heard of.
    state.group_cache.forget_all();
    // Install, then snapshot: a login racing with this is told twice, never missed.
    if let Some(old) = state.router.add_peer(link) {
        let _ = old.out.try_send(Outgoing::Close);
    }
    let (users, sessions) = state.router.local_users();
    let snapshot = PeerFrame::Snapshot { users, sessions };
    let _ = out.send(Outgoing::Frame(to_body(&snapshot)));
    log::info!("mesh link up: {peer} (incarnation {incarnation})");

    let mut reader = BufReader::with_capacity(64 * 1024, tls_read);
    // Whether a frame of this peer closed a local session since its last fence.
    let mut replaced_since_fence = false;
    loop {
        match read_frame(&mut reader, MAX_PEER_FRAME) {
            Ok(Some(body)) => {
                heard.touch();
                match PeerFrame::from_frame(&body) {
                    Ok(frame) => handle_peer_frame(&state, &peer, frame, &mut replaced_since_fence),
                    Err(e) => log::warn!("{peer}: unreadable frame: {e}"),
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::info!("{peer}: link read failed: {e}");
                break;
            }
        }
    }
    let _ = out.send_timeout(Outgoing::Close, Duration::from_secs(1));
    drop(out);
    let _ = writer.join();
    if state.router.remove_peer(&peer, link_id) {
        link_down(&state, &peer, link_id);
    } else {
        // Dropped by the heartbeat (which ran `link_down`), or replaced by a newer link:
        // then a `group_changed` still unread on this one is lost. Either way, messages
        // sent through it since may never have left.
        if state
            .router
            .peer(&peer)
            .is_some_and(|newer| newer.link_id != link_id)
        {
            state.group_cache.forget_all();
        }
        state.inflight.store_via(link_id, state.store_queue());
    }
}

/// A link is gone: the peer's users are unreachable until it comes back, and messages
/// in flight through it are stored.
pub fn link_down(state: &ServerState, peer: &str, link_id: u64) {
    // Until a link is up again, changes made there go unheard.
    state.group_cache.forget_all();
    let users = state.router.remove_server_users(peer);
    let flights = state.inflight.store_via(link_id, state.store_queue());
    log::info!("mesh link down: {peer} ({users} users unreachable, {flights} messages to store)");
}

/// Answers a peer's fence that follows a `presence` that closed a session here which
/// had acknowledged stored messages, once this server's store thread has done every job
/// queued before it: their deletes are then done before the peer's login fetches, which
/// would push them again. The store thread must not wait: on a link whose queue is full
/// the answer is not queued and the link is closed as congested.
fn answer_fence_after_store(state: &Arc<ServerState>, peer: &str, token: u64) {
    let weak = Arc::downgrade(state);
    let peer = peer.to_string();
    state.after_store(move || {
        if let Some(link) = weak.upgrade().and_then(|state| state.router.peer(&peer)) {
            link.send(&PeerFrame::FenceAck { token }, Duration::ZERO);
        }
    });
}

/// Handles one frame of `peer`. `replaced` is set when the frame closed a local session
/// that had acknowledged stored messages (the user logged in on the peer), and taken by
/// the next fence, which the peer's login sends after its presence.
fn handle_peer_frame(state: &Arc<ServerState>, peer: &str, frame: PeerFrame, replaced: &mut bool) {
    match frame {
        PeerFrame::Hello { .. } => log::warn!("{peer}: second hello ignored"),
        PeerFrame::Snapshot { users, sessions } => {
            for (k, user) in users.into_iter().enumerate() {
                if let Some(old) = state
                    .router
                    .set_remote(&user, peer, sessions.get(k).copied())
                {
                    old.replace();
                }
                state.user_appeared(&user);
            }
        }
        PeerFrame::Presence {
            user,
            online,
            session,
        } => {
            if online {
                if let Some(old) = state.router.set_remote(&user, peer, session) {
                    log::info!("{user} logged in on {peer}; closing the session here");
                    old.replace();
                    *replaced |= old.acked_stored();
                }
                state.known_users.write().insert(user.clone());
                state.user_appeared(&user);
            } else {
                state.router.remove_remote(&user, peer);
            }
        }
        PeerFrame::Deliver {
            token,
            id,
            from,
            to,
            body,
            sent_at,
            group,
            session: meant_for,
        } => {
            let delivered = match state.router.locate(&to) {
                // Not into another session than the sender meant: older messages may
                // still be unacknowledged in that one, and must come first.
                Some(crate::router::Location::Local(session))
                    if meant_for.is_none_or(|id| id == session.conn_id()) =>
                {
                    let message = RelayedOut {
                        id: &id,
                        from: &from,
                        to: &to,
                        body: &body,
                        sent_at,
                        group: group.as_deref(),
                    };
                    let origin = crate::session_handle::Origin::Peer(peer.to_string(), token);
                    session.push_live(&message, origin).is_ok()
                }
                _ => false,
            };
            if !delivered {
                if let Some(link) = state.router.peer(peer) {
                    link.send(&PeerFrame::NotDelivered { token }, LINK_WAIT);
                }
            }
        }
        PeerFrame::Delivered { token } => state.complete_flight(token),
        PeerFrame::DeliveredMany { tokens } => {
            for token in tokens {
                state.complete_flight(token);
            }
        }
        PeerFrame::NotDelivered { token } => state.fail_flight(token),
        PeerFrame::PendingHint { user } => {
            if let Some(crate::router::Location::Local(session)) = state.router.locate(&user) {
                state.request_fetch(&session);
            }
        }
        PeerFrame::Notify { users, frame } => crate::notify::on_notify(state, &users, &frame),
        PeerFrame::GroupChanged { group } => state.group_cache.forget(&group),
        PeerFrame::Fence { token } if std::mem::take(replaced) => {
            answer_fence_after_store(state, peer, token)
        }
        PeerFrame::Fence { token } => {
            if let Some(link) = state.router.peer(peer) {
                link.send(&PeerFrame::FenceAck { token }, LINK_WAIT);
            }
        }
        PeerFrame::FenceAck { token } => {
            if let Some(waiter) = state.fences.lock().get(&token) {
                let _ = waiter.try_send(peer.to_string());
            }
        }
    }
}
