//! One client connection: its reader loop and one handler per request type.
//!
//! The reader thread parses frames and acts; everything it sends goes through the
//! connection's writer queue. Bad input gets an error reply (or, where no reply can be
//! framed, a closed connection) and never reaches anything beyond this connection.

use crate::conn::{out_queue, spawn_writer, to_body, OutQueue, Outgoing, Writes};
use crate::friends;
use crate::groups;
use crate::keys;
use crate::passwords;
use crate::presence;
use crate::reply::ReplyTo;
use crate::resume;
use crate::router::Location;
use crate::session_handle::SessionHandle;
use crate::state::{ServerState, LINK_WAIT};
use crossbeam_channel::TrySendError;
use fastchat_common::frame::{read_frame, FrameError, MAX_CLIENT_FRAME};
use fastchat_common::names::is_valid_name;
use fastchat_common::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use fastchat_common::protocol::peer::PeerFrame;
use fastchat_common::protocol::{now_millis, MAX_BODY_BYTES, PROTOCOL_VERSION};
use fastchat_common::{Blob, ErrorCode};
use fastchat_sql::{NewPending, StoreError};
use std::collections::HashSet;
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames a client's writer queue holds before the client counts as a slow consumer.
/// Each slot costs 32 bytes up front (32 KiB per connection, the largest single part of
/// an idle connection's memory); 1024 frames is still seconds of traffic for one client,
/// and the byte bound below is the one that matters for large messages.
pub const CLIENT_QUEUE: usize = 1024;
/// Bytes of unwritten frames a client's queue holds before the client counts as a slow
/// consumer (about 120 of the largest messages).
pub const CLIENT_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How long a refused message holds back later ones to the same target (see
/// `ClientConn::in_order`); longer than the client library keeps re-sending.
const REFUSED_HEAD_FOR: Duration = Duration::from_secs(90);
/// Time allowed for the hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD: usize = 1024;
/// Longest message id accepted.
const MAX_ID: usize = 64;
/// How long a login waits for the peers to confirm they saw its presence.
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ending a session waits for the deletion of the stored messages it
/// acknowledged (within the client's 3 s for a graceful close).
const STORE_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// An error reply: a stable code and a message for people.
/// A refusal: the code and message of an `error` reply.
pub type Refusal = (ErrorCode, String);

/// Refuses with `code`.
pub fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err((code, message.into()))
}

/// The refusal for a database failure (details go to the log, not the wire).
pub fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Unavailable(_) => {
            log::warn!("database unavailable: {e}");
            (
                ErrorCode::Unavailable,
                "the database is unavailable; try again".into(),
            )
        }
        other => {
            log::error!("database error: {other}");
            (ErrorCode::Internal, "internal error".into())
        }
    }
}

/// What the reader does after a frame.
enum Next {
    Continue,
    Close,
}

struct ClientConn {
    state: Arc<ServerState>,
    conn_id: u64,
    out: OutQueue,
    /// A clone of the socket, to cut the connection when its queue is full.
    socket: TcpStream,
    greeted: bool,
    /// Whether the client said, in its hello, that it reads binary frames.
    binary_bodies: bool,
    session: Option<SessionHandle>,
    /// The hash of the resumption token issued to this session (revoked at logout).
    resume_hash: Option<String>,
}

/// Serves one client connection until it ends; runs on the connection's reader thread.
pub fn serve_client(state: Arc<ServerState>, stream: TcpStream) {
    let conn_id = state.conn_id();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    // The handshake and the hello share one deadline.
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let (tls_read, tls_write) = match state.tls.accept_client(&stream) {
        Ok(halves) => halves,
        Err(e) => {
            log::info!("client {peer}: {e}");
            return;
        }
    };
    let (out, rx) = out_queue(CLIENT_QUEUE, CLIENT_QUEUE_BYTES, Writes::Direct);
    let writer = match stream
        .try_clone()
        .and_then(|s| spawn_writer(format!("client-{conn_id}-w"), tls_write, s, rx))
    {
        Ok(w) => w,
        Err(e) => {
            log::error!("cannot start writer for {peer}: {e}");
            return;
        }
    };
    let socket = stream;
    let mut reader = BufReader::with_capacity(16 * 1024, tls_read);
    let mut conn = ClientConn {
        state: state.clone(),
        conn_id,
        out: out.clone(),
        socket,
        greeted: false,
        binary_bodies: false,
        session: None,
        resume_hash: None,
    };
    loop {
        match read_frame(&mut reader, MAX_CLIENT_FRAME) {
            Ok(Some(body)) => {
                let was_greeted = conn.greeted;
                let next = conn.handle_frame(&body);
                if !was_greeted && conn.greeted {
                    let _ = reader.get_ref().get_ref().set_read_timeout(None);
                }
                if let Next::Close = next {
                    break;
                }
            }
            Ok(None) => break,
            Err(FrameError::TooLarge { len, max }) => {
                log::warn!("client {peer}: frame of {len} bytes (max {max}); closing");
                conn.reply(ServerFrame::Error {
                    req: None,
                    code: ErrorCode::BadFrame,
                    message: format!("frame of {len} bytes exceeds the maximum of {max}"),
                });
                break;
            }
            Err(e) => {
                log::debug!("client {peer}: {e}");
                break;
            }
        }
    }
    conn.end_session();
    if conn.greeted {
        state.clients.left();
    }
    let _ = out.send_timeout(Outgoing::Close, Duration::from_secs(1));
    drop(conn);
    drop(out);
    let _ = writer.join();
}

impl ClientConn {
    fn reply(&self, frame: ServerFrame) {
        match self.out.try_send(Outgoing::Frame(to_body(&frame))) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                log::warn!("connection {}: queue full; closing", self.conn_id);
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn ok(&self, req: u64, result: Option<OkResult>) {
        self.reply(ServerFrame::Ok { req, result });
    }

    fn handle_frame(&mut self, body: &[u8]) -> Next {
        let request = match Request::from_frame(body) {
            Ok(r) => r,
            Err(e) => {
                // Answer with the request number if the frame has one.
                let json = Request::json_part(body);
                let (code, req) = match serde_json::from_slice::<serde_json::Value>(json) {
                    Ok(v) => (ErrorCode::BadRequest, v.get("req").and_then(|r| r.as_u64())),
                    Err(_) => (ErrorCode::BadJson, None),
                };
                log::info!("connection {}: {code}: {e}", self.conn_id);
                self.reply(ServerFrame::Error {
                    req,
                    code,
                    message: format!("unreadable request: {e}"),
                });
                // Before the hello, a stranger gets no second chance.
                return if self.greeted {
                    Next::Continue
                } else {
                    Next::Close
                };
            }
        };
        let req = request.req;
        if !self.greeted && !matches!(request.body, RequestBody::Hello { .. }) {
            self.reply(ServerFrame::Error {
                req: Some(req),
                code: ErrorCode::BadRequest,
                message: "the first request must be hello".into(),
            });
            return Next::Close;
        }
        let outcome = match request.body {
            RequestBody::Hello {
                version,
                ticket,
                binary_bodies,
            } => self.hello(req, version, &ticket, binary_bodies),
            RequestBody::Signup {
                user,
                password,
                public_key,
                key_backup,
            } => self.signup(req, &user, &password, &public_key, &key_backup),
            RequestBody::Login { user, password } => self.login(req, &user, &password),
            RequestBody::Logout => self.logout(req),
            RequestBody::Resume { user, token } => self.resume(req, &user, &token),
            RequestBody::Passwd {
                old,
                new,
                key_backup,
            } => self.logged_in().and_then(|me| {
                keys::change_password(&self.state, &me, &old, &new, &key_backup)?;
                self.ok(req, None);
                Ok(())
            }),
            RequestBody::GroupCreate { group, members } => self.logged_in().and_then(|me| {
                let result = groups::create(&self.state, &me, &group, &members)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::GroupAdd { group, user } => self.logged_in().and_then(|me| {
                let result = groups::add(&self.state, &me, &group, &user)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::GroupRemove { group, user } => self.logged_in().and_then(|me| {
                let result = groups::remove(&self.state, &me, &group, &user)?;
                self.ok(req, result);
                Ok(())
            }),
            RequestBody::GroupLeave { group } => self.logged_in().and_then(|me| {
                groups::remove(&self.state, &me, &group, &me)?;
                self.ok(req, None);
                Ok(())
            }),
            RequestBody::GroupMembers { group } => self.logged_in().and_then(|me| {
                let result = groups::members(&self.state, &me, &group)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::Groups => self.logged_in().and_then(|me| {
                let result = groups::list(&self.state, &me)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::GroupKey {
                group,
                epoch,
                offer,
            } => self.logged_in().and_then(|me| {
                let result = groups::key(&self.state, &me, &group, epoch, offer.as_ref())?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::GroupSend {
                id,
                group,
                epoch,
                body,
            } => {
                let target = format!("g:{group}");
                self.in_order(&target, &id, |conn| {
                    let session = conn.check_message(&id, &body)?;
                    groups::send(&conn.state, &session, req, id.clone(), &group, epoch, body)
                })
            }
            RequestBody::FileOffer { size } => self.logged_in().and_then(|_| {
                let max = self.state.config.max_file_size;
                if size > max {
                    return refuse(
                        ErrorCode::TooLarge,
                        format!("a file is at most {max} bytes (--max-file-size)"),
                    );
                }
                self.ok(req, None);
                Ok(())
            }),
            RequestBody::FriendAdd { user } => self.logged_in().and_then(|me| {
                friends::add(&self.state, &me, &user)?;
                self.ok(req, None);
                Ok(())
            }),
            RequestBody::FriendRemove { user } => self.logged_in().and_then(|me| {
                friends::remove(&self.state, &me, &user)?;
                self.ok(req, None);
                Ok(())
            }),
            RequestBody::Friends => self.logged_in().and_then(|me| {
                let result = friends::list(&self.state, &me)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::PublicKey { user } => self.logged_in().and_then(|_| {
                let result = keys::public_key(&self.state, &user)?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::ConversationKey {
                peer,
                key_id,
                offer,
            } => self.logged_in().and_then(|me| {
                let result = keys::conversation_key(
                    &self.state,
                    &me,
                    &peer,
                    key_id.as_deref(),
                    offer.as_ref(),
                )?;
                self.ok(req, Some(result));
                Ok(())
            }),
            RequestBody::Send { id, to, body } => {
                let target = format!("u:{to}");
                self.in_order(&target, &id.clone(), |conn| conn.send(req, id, to, body))
            }
            RequestBody::Ack { tags } => {
                if let Some(session) = &self.session {
                    self.state.on_acked(session.acked(&tags));
                }
                Ok(())
            }
            RequestBody::Ping => {
                self.ok(req, None);
                Ok(())
            }
        };
        match outcome {
            Ok(()) => Next::Continue,
            Err((code, message)) => {
                self.reply(ServerFrame::Error {
                    req: Some(req),
                    code,
                    message,
                });
                if matches!(code, ErrorCode::BadTicket | ErrorCode::BadVersion) {
                    Next::Close
                } else {
                    Next::Continue
                }
            }
        }
    }

    fn hello(
        &mut self,
        req: u64,
        version: u32,
        ticket: &fastchat_common::ticket::Ticket,
        binary_bodies: bool,
    ) -> Result<(), Refusal> {
        if self.greeted {
            return refuse(ErrorCode::BadRequest, "hello was already said");
        }
        if version != PROTOCOL_VERSION {
            return refuse(
                ErrorCode::BadVersion,
                format!("protocol version {version} is not supported (this server speaks {PROTOCOL_VERSION})"),
            );
        }
        if let Err(e) = self.state.tickets.verify(ticket, self.state.name()) {
            log::info!("connection {}: bad ticket: {e}", self.conn_id);
            return refuse(ErrorCode::BadTicket, e.to_string());
        }
        if self.state.is_stopping() {
            return refuse(ErrorCode::Unavailable, "this server is shutting down");
        }
        self.greeted = true;
        self.binary_bodies = binary_bodies;
        self.state.clients.greeted(&ticket.nonce, Instant::now());
        self.ok(
            req,
            Some(OkResult::Hello {
                server: self.state.name().to_string(),
                version: PROTOCOL_VERSION,
                binary_bodies: true,
            }),
        );
        Ok(())
    }

    /// Runs a message request to `target` so that a refusal for want of the database
    /// cannot let a later message overtake it: once message `id` is refused
    /// `unavailable`, later ones to the same target are refused too, until `id` itself
    /// comes again (the client re-sends refused messages in order).
    fn in_order(
        &mut self,
        target: &str,
        id: &str,
        handle: impl FnOnce(&mut Self) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let Some(session) = self.session.clone() else {
            return handle(self); // it will be refused: not logged in
        };
        if !session.take_turn(target, id, REFUSED_HEAD_FOR) {
            return refuse(
                ErrorCode::Unavailable,
                "an earlier message to the same recipient is waiting to be sent again",
            );
        }
        let result = handle(self);
        if matches!(&result, Err((ErrorCode::Unavailable, _))) {
            // Refused again: it keeps its place at the head.
            session.mark_refused(target, id);
        } else {
            session.turn_done(target, id);
        }
        result
    }

    /// The logged-in user's name, or `not_logged_in`.
    fn logged_in(&self) -> Result<String, Refusal> {
        match &self.session {
            Some(s) => Ok(s.user().to_string()),
            None => refuse(ErrorCode::NotLoggedIn, "log in first"),
        }
    }

    fn signup(
        &mut self,
        req: u64,
        user: &str,
        password: &str,
        public_key: &str,
        key_backup: &str,
    ) -> Result<(), Refusal> {
        if self.session.is_some() {
            return refuse(ErrorCode::AlreadyLoggedIn, "log out first");
        }
        if !is_valid_name(user) {
            return refuse(
                ErrorCode::BadName,
                "a user name is 1-32 letters, digits, '_', '-' or '.'",
            );
        }
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return refuse(ErrorCode::BadPassword, "a password is 1-1024 bytes");
        }
        keys::check_public_key(public_key)?;
        keys::check_backup(key_backup)?;
        let hash = passwords::hash(password)?;
        let mut db = self.state.pool.get().map_err(|e| store_refusal(e.into()))?;
        let new_user = fastchat_sql::NewUser {
            name: user,
            password_hash: &hash,
            public_key,
            key_backup,
        };
        match fastchat_sql::create_user(&mut db, &new_user) {
            Ok(()) => {}
            Err(StoreError::NameTaken) => {
                return refuse(ErrorCode::NameTaken, format!("the name {user:?} is taken"))
            }
            Err(e) => return Err(store_refusal(e)),
        }
        drop(db);
        let token = resume::issue(&self.state, user);
        self.start_session(req, user, None, token)
    }

    fn login(&mut self, req: u64, user: &str, password: &str) -> Result<(), Refusal> {
        if self.session.is_some() {
            return refuse(ErrorCode::AlreadyLoggedIn, "log out first");
        }
        let wrong = || refuse(ErrorCode::BadPassword, "wrong user name or password");
        if !is_valid_name(user) || password.len() > MAX_PASSWORD {
            return wrong();
        }
        let stored = {
            let mut db = self.state.pool.get().map_err(|e| store_refusal(e.into()))?;
            fastchat_sql::account(&mut db, user).map_err(store_refusal)?
        };
        match stored {
            Some(a) if passwords::verify(password, &a.credentials.password_hash)? => {
                let token = resume::issue(&self.state, user);
                let keys = Some((a.credentials.key_backup, a.public_key));
                self.start_session(req, user, keys, token)
            }
            Some(_) => wrong(),
            None => {
                // Spend the same time as a real check, so timing does not tell
                // unknown users from wrong passwords.
                passwords::verify(password, DUMMY_HASH)?;
                wrong()
            }
        }
    }

    /// Starts the session; after a login the `ok` carries the key backup and the public
    /// key (the client that signed up has its keys already).
    fn start_session(
        &mut self,
        req: u64,
        user: &str,
        keys: Option<(String, String)>,
        resume_token: Option<(String, String)>,
    ) -> Result<(), Refusal> {
        self.resume_hash = resume_token.as_ref().map(|(_, hash)| hash.clone());
        let state = &self.state;
        let socket = self.socket.try_clone().map_err(|e| {
            log::error!("cannot clone a socket: {e}");
            (ErrorCode::Internal, "internal error".to_string())
        })?;
        let session = SessionHandle::new(
            self.conn_id,
            user.to_string(),
            self.out.clone(),
            socket,
            self.binary_bodies,
        );
        // The deletes of the stored messages a replaced session acknowledged are
        // queued: done before this session's fetch, which would push them again. (A
        // session replaced on a peer: its answer to our fence waits likewise.)
        let mut replaced_deletes = None;
        if let Some(Location::Local(old)) = state.router.set_local(session.clone()) {
            log::info!("{user}: new login replaces connection {}", old.conn_id());
            old.replace();
            replaced_deletes = old.acked_stored().then(|| state.queue_flush());
        }
        state.known_users.write().insert(user.to_string());
        state.orphaned.lock().remove(user);
        self.session = Some(session.clone());
        presence::record(state, user, true);
        state.router.broadcast(&PeerFrame::Presence {
            user: user.to_string(),
            online: true,
            session: Some(self.conn_id),
        });
        fence_peers(state);
        if let Some(flushed) = replaced_deletes {
            if flushed.recv_timeout(STORE_FLUSH_WAIT).is_err() {
                log::warn!("{user}: the replaced session's deletes not done in time");
            }
        }
        friends::announce_presence(state, user, true);
        log::info!("{user} logged in (connection {})", self.conn_id);
        self.ok(
            req,
            Some(OkResult::Session {
                user: user.to_string(),
                key_backup: keys.as_ref().map(|k| k.0.clone()),
                public_key: keys.map(|k| k.1),
                resume_token: resume_token.map(|(token, _)| token),
            }),
        );
        // The new session is syncing: the fetcher pushes stored messages, then the live
        // ones that arrived meanwhile.
        let _ = state.fetch.send(session);
        Ok(())
    }

    fn logout(&mut self, req: u64) -> Result<(), Refusal> {
        if self.session.is_none() {
            return refuse(ErrorCode::NotLoggedIn, "not logged in");
        }
        self.end_session();
        if let Some(hash) = self.resume_hash.take() {
            resume::revoke(&self.state, &hash);
        }
        self.ok(req, None);
        Ok(())
    }

    /// `resume`: a login with a resumption token instead of the password.
    fn resume(&mut self, req: u64, user: &str, token: &str) -> Result<(), Refusal> {
        if self.session.is_some() {
            return refuse(ErrorCode::AlreadyLoggedIn, "log out first");
        }
        if !is_valid_name(user) || token.len() > 128 {
            return refuse(ErrorCode::ResumeRefused, "unknown resumption token");
        }
        let next = resume::redeem(&self.state, user, token)?;
        self.start_session(req, user, None, Some(next))
    }

    /// Ends the session, if any: unacknowledged live messages go back to be stored, and
    /// the user goes offline unless it has meanwhile logged in elsewhere.
    fn end_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let state = &self.state;
        state.on_unacked(session.close());
        let user = session.user();
        if state.router.remove_local(user, self.conn_id) {
            presence::record(state, user, false);
            state.router.broadcast(&PeerFrame::Presence {
                user: user.to_string(),
                online: false,
                session: None,
            });
            friends::announce_presence(state, user, false);
        }
        // The stored messages it acknowledged are deleted before the logout is answered
        // or the connection closed: a login right after would be pushed them again.
        if session.acked_stored() && !state.flush_store(STORE_FLUSH_WAIT) {
            log::warn!("{user}: acknowledged stored messages not yet deleted at logout");
        }
        log::info!("{user} logged out (connection {})", self.conn_id);
    }

    /// The session, if the request's message id and body are acceptable.
    fn check_message(&self, id: &str, body: &Blob) -> Result<SessionHandle, Refusal> {
        let Some(session) = self.session.clone() else {
            return refuse(ErrorCode::NotLoggedIn, "log in first");
        };
        if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
            return refuse(
                ErrorCode::BadRequest,
                "a message id is 1-64 bytes, without control characters",
            );
        }
        // Checked here, not when stored: a body PostgreSQL refuses (a NUL byte in the
        // text) would fail the whole batch of everyone's messages stored with it.
        if !body.is_base64_alphabet() {
            return refuse(ErrorCode::BadRequest, "a message body is base64 text");
        }
        if body.decoded_len() > MAX_BODY_BYTES {
            return refuse(
                ErrorCode::TooLarge,
                format!("a message body is at most {MAX_BODY_BYTES} bytes"),
            );
        }
        Ok(session)
    }

    fn send(&mut self, req: u64, id: String, to: String, body: Blob) -> Result<(), Refusal> {
        let session = self.check_message(&id, &body)?;
        if !self.user_exists(&to)? {
            return refuse(ErrorCode::UnknownUser, format!("no user named {to:?}"));
        }
        let message = NewPending {
            recipient: to,
            sender: session.user().into(),
            msg_id: id.into(),
            body,
            sent_at: now_millis(),
            order_key: self.state.next_order_key(),
            group: None,
        };
        let reply = ReplyTo::Direct {
            session: session.clone(),
            req,
            target: format!("u:{}", message.recipient),
        };
        self.state.route_message(reply, message);
        Ok(())
    }

    fn user_exists(&self, user: &str) -> Result<bool, Refusal> {
        if !is_valid_name(user) {
            return Ok(false);
        }
        if self.state.router.locate(user).is_some() || self.state.known_users.read().contains(user)
        {
            return Ok(true);
        }
        let mut db = self.state.pool.get().map_err(|e| store_refusal(e.into()))?;
        let exists = fastchat_sql::user_exists(&mut db, user).map_err(store_refusal)?;
        if exists {
            self.state.known_users.write().insert(user.to_string());
        }
        Ok(exists)
    }
}

/// A valid hash of a password nobody has, to spend a real check's time on unknown users.
const DUMMY_HASH: &str =
    "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Waits (bounded) until every peer has processed everything this server sent it before
/// now, so that a presence change is known across the mesh before we go on. Returns the
/// names of the peers that answered in time.
pub fn fence_peers(state: &ServerState) -> HashSet<String> {
    let mut answered = HashSet::new();
    let peers = state.router.peers();
    if peers.is_empty() {
        return answered;
    }
    let token = state.conn_id();
    let (tx, rx) = crossbeam_channel::bounded(peers.len());
    state.fences.lock().insert(token, tx);
    let mut expected = 0;
    for link in &peers {
        if link.send(&PeerFrame::Fence { token }, LINK_WAIT) {
            expected += 1;
        }
    }
    let deadline = Instant::now() + FENCE_TIMEOUT;
    for _ in 0..expected {
        match rx.recv_deadline(deadline) {
            Ok(peer) => {
                answered.insert(peer);
            }
            Err(_) => {
                log::warn!("fence {token}: not every peer answered in time");
                break;
            }
        }
    }
    state.fences.lock().remove(&token);
    answered
}
