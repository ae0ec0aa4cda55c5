//! The pending store: one thread that writes undelivered messages to PostgreSQL in
//! batches (group commit: one transaction for everything queued), and fetcher threads
//! that push stored messages to sessions that log in or are hinted.

use crate::inflight::Stored;
use crate::reply::ReplyTo;
use crate::session_handle::{Patience, PushError, SessionHandle};
use crate::state::ServerState;
use crossbeam_channel::Receiver;
use fastchat_common::protocol::RelayedOut;
use fastchat_common::ErrorCode;
use fastchat_sql::{NewPending, PendingCursor};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Most jobs taken into one transaction.
const BATCH: usize = 1000;
/// Stored messages read per query when fetching.
const FETCH_PAGE: i64 = 1000;
/// How long a session's own fetch waits for room in its queue before closing it.
const FETCH_WAIT: Duration = Duration::from_secs(10);
/// How long a shared fetcher waits for room in one session's queue before it leaves
/// that session's fetch to a thread of its own: one client reading slowly must not
/// hold up the stored messages of every other login on the server.
const FETCH_STALL: Duration = Duration::from_millis(100);
/// How long a fetch keeps retrying while the database is out of reach.
const FETCH_RETRY_FOR: Duration = Duration::from_secs(60);

/// Work for the store thread.
pub enum StoreJob {
    /// Store this message, then answer.
    Store {
        /// The message.
        message: NewPending,
        /// Who waits for the commit.
        reply: ReplyTo,
    },
    /// The recipient acknowledged this stored message: delete it.
    Delete(i64),
    /// Run this once every job queued before it is done (its stores and deletes
    /// committed, or failed): a session's end, a peer's fence, the shutdown.
    Flush(Box<dyn FnOnce() + Send>),
}

/// Runs the store thread until every sender of `jobs` is gone.
pub fn run_store(state: Weak<ServerState>, jobs: Receiver<StoreJob>) {
    while let Ok(first) = jobs.recv() {
        let mut stores = Vec::new();
        let mut deletes = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                StoreJob::Store { message, reply } => stores.push((message, reply)),
                StoreJob::Delete(seq) => deletes.push(seq),
                StoreJob::Flush(done) => flushes.push(done),
            }
            if stores.len() + deletes.len() < BATCH {
                next = jobs.try_recv().ok();
            }
        }
        let Some(state) = state.upgrade() else { break };
        commit_batch(&state, stores, deletes);
        for done in flushes {
            done();
        }
    }
}

fn commit_batch(state: &ServerState, stores: Vec<(NewPending, ReplyTo)>, deletes: Vec<i64>) {
    if !deletes.is_empty() {
        // A failed delete only means a duplicate later, which receivers drop by id.
        if let Err(e) = state
            .pool
            .get()
            .map_err(fastchat_sql::StoreError::from)
            .and_then(|mut c| fastchat_sql::delete_pending(&mut c, &deletes))
        {
            log::warn!(
                "could not delete {} acknowledged messages: {e}",
                deletes.len()
            );
        }
    }
    // Messages queued behind one whose store failed must not be stored ahead of it.
    let (stores, behind_a_failure) = state.inflight.split_behind_failures(stores, |(m, _)| m);
    if !behind_a_failure.is_empty() {
        refuse_stores(
            state,
            behind_a_failure,
            ErrorCode::Unavailable,
            Stored::Skipped,
        );
    }
    if stores.is_empty() {
        return;
    }
    let (messages, replies): (Vec<NewPending>, Vec<ReplyTo>) = stores.into_iter().unzip();
    let result = state
        .pool
        .get()
        .map_err(fastchat_sql::StoreError::from)
        .and_then(|mut c| fastchat_sql::store_pending(&mut c, &messages));
    match result {
        Ok(_) => {
            let mut recipients: Vec<&str> = Vec::new();
            for (message, reply) in messages.iter().zip(&replies) {
                reply.settled(&message.msg_id, message.sent_at, true);
                if !recipients.contains(&message.recipient.as_str()) {
                    recipients.push(&message.recipient);
                }
            }
            // A recipient may have come online while we stored: make sure it fetches.
            for user in recipients {
                state.hint_pending(user);
            }
            // Only after the hints: a newer message may go live now, behind them.
            state.inflight.done_storing(
                messages.iter().map(|m| m.recipient.as_str()),
                Stored::Committed,
            );
        }
        Err(e) => {
            log::error!("could not store {} messages: {e}", messages.len());
            let code = if e.is_unavailable() {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Internal
            };
            refuse_stores(
                state,
                messages.into_iter().zip(replies).collect(),
                code,
                Stored::Failed,
            );
        }
    }
}

/// Answers the senders of messages that were not stored, and records the outcome.
fn refuse_stores(
    state: &ServerState,
    stores: Vec<(NewPending, ReplyTo)>,
    code: ErrorCode,
    outcome: Stored,
) {
    // First: a later message from the same sender accepted after the failure is
    // recorded would be stored (its order key is past the failure's) ahead of these.
    // Marked refused, these make the session refuse it until they come again.
    for (message, reply) in &stores {
        reply.hold_back_later(&message.msg_id, code);
    }
    state
        .inflight
        .done_storing(stores.iter().map(|(m, _)| m.recipient.as_str()), outcome);
    for (_, reply) in stores {
        reply.failed(code);
    }
}

/// Runs a fetcher thread: for each session it is given, pushes the stored messages it
/// has not yet been given, in order, then releases the live messages held meanwhile. A
/// session whose queue stays full for [`FETCH_STALL`] is handed, still syncing, to a
/// thread of its own, which goes on from the message that found no room and may wait
/// on it.
pub fn run_fetcher(state: Weak<ServerState>, sessions: Receiver<SessionHandle>) {
    while let Ok(session) = sessions.recv() {
        let Some(state) = state.upgrade() else { break };
        let shared = Patience::StallAfter(FETCH_STALL);
        let Some(step) = serve_fetch(&state, &session, Step::Fetch(None), shared) else {
            continue;
        };
        log::info!(
            "{}: no room for stored messages; fetching on a thread of its own",
            session.user()
        );
        let own = Patience::CloseAfter(FETCH_WAIT);
        let (own_state, own_session) = (state.clone(), session.clone());
        let spawned = std::thread::Builder::new()
            .name("fetch-slow".into())
            .stack_size(256 * 1024)
            .spawn(move || serve_fetch(&own_state, &own_session, step, own));
        if spawned.is_err() {
            serve_fetch(&state, &session, step, own);
        }
    }
}

/// Where a session's fetch goes on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// A fetch pass, after this cursor (`None`: from the start).
    Fetch(Option<PendingCursor>),
    /// The release of the live messages held during the passes.
    Release,
}

/// How a fetch pass ended.
#[derive(Debug, PartialEq)]
enum Fetched {
    /// Everything stored was pushed (or the session ended, or the database stayed out
    /// of reach).
    Done,
    /// A push stalled. The pass goes on after this cursor.
    Stalled(Option<PendingCursor>),
}

/// Runs `session`'s fetch from `step`: passes until no other was asked for, then the
/// release of its held live messages. A push that stalls ([`Patience::StallAfter`])
/// stops it: it returns where to go on, the session still syncing.
fn serve_fetch(
    state: &Arc<ServerState>,
    session: &SessionHandle,
    mut step: Step,
    patience: Patience,
) -> Option<Step> {
    loop {
        step = match step {
            Step::Fetch(from) => match fetch_until_done(state, session, from, patience) {
                Fetched::Done => Step::Release,
                Fetched::Stalled(at) => return Some(Step::Fetch(at)),
            },
            Step::Release => match session.fetch_done(patience) {
                Ok(true) => Step::Fetch(None),
                Ok(false) | Err(PushError::Closed | PushError::SlowConsumer) => return None,
                Err(PushError::Stalled) => return Some(Step::Release),
            },
        }
    }
}

/// Runs fetch passes until one completes, the session ends, or the database has been
/// out of reach for [`FETCH_RETRY_FOR`]. The session stays syncing meanwhile, so live
/// messages are held instead of overtaking the stored ones.
fn fetch_until_done(
    state: &Arc<ServerState>,
    session: &SessionHandle,
    from: Option<PendingCursor>,
    patience: Patience,
) -> Fetched {
    let deadline = std::time::Instant::now() + FETCH_RETRY_FOR;
    loop {
        match fetch_once(state, session, from, patience) {
            Ok(fetched) => return fetched,
            Err(e) => log::warn!("fetching stored messages for {}: {e}", session.user()),
        }
        if session.is_closed() || std::time::Instant::now() >= deadline {
            return Fetched::Done;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn fetch_once(
    state: &Arc<ServerState>,
    session: &SessionHandle,
    from: Option<PendingCursor>,
    patience: Patience,
) -> Result<Fetched, String> {
    let mut after = from;
    loop {
        let rows = {
            let mut client = state.pool.get().map_err(|e| e.to_string())?;
            fastchat_sql::take_pending(&mut client, session.user(), after, FETCH_PAGE)
                .map_err(|e| e.to_string())?
        };
        let full_page = rows.len() as i64 == FETCH_PAGE;
        for row in rows {
            let before = after;
            after = Some((row.sent_at, row.order_key));
            let message = RelayedOut {
                id: &row.msg_id,
                from: &row.sender,
                to: &row.recipient,
                body: &row.body,
                sent_at: row.sent_at,
                group: row.group.as_deref(),
            };
            match session.push_stored(&message, row.seq, patience) {
                Ok(()) => {}
                Err(PushError::Stalled) => return Ok(Fetched::Stalled(before)),
                Err(PushError::Closed | PushError::SlowConsumer) => return Ok(Fetched::Done),
            }
        }
        if !full_page {
            return Ok(Fetched::Done);
        }
    }
}
