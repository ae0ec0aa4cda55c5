//! The pending store: one thread that writes undelivered messages to PostgreSQL in
//! batches (group commit: one transaction for everything queued), and fetcher threads
//! that push stored messages to sessions that log in or are hinted.

use crate::inflight::Stored;
use crate::reply::ReplyTo;
use crate::session_handle::{PushError, SessionHandle};
use crate::state::ServerState;
use crossbeam_channel::Receiver;
use fastchat_common::protocol::RelayedOut;
use fastchat_common::ErrorCode;
use fastchat_sql::NewPending;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Most jobs taken into one transaction.
const BATCH: usize = 1000;
/// Stored messages read per query when fetching.
const FETCH_PAGE: i64 = 1000;
/// How long the fetcher waits for room in one session's queue.
const FETCH_WAIT: Duration = Duration::from_secs(10);
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
/// has not yet been given, in order, then releases the live messages held meanwhile.
pub fn run_fetcher(state: Weak<ServerState>, sessions: Receiver<SessionHandle>) {
    while let Ok(session) = sessions.recv() {
        let Some(state) = state.upgrade() else { break };
        loop {
            fetch_until_done(&state, &session);
            if !session.fetch_done(FETCH_WAIT) {
                break;
            }
        }
    }
}

/// Runs fetch passes until one completes, the session ends, or the database has been
/// out of reach for [`FETCH_RETRY_FOR`]. The session stays syncing meanwhile, so live
/// messages are held instead of overtaking the stored ones.
fn fetch_until_done(state: &Arc<ServerState>, session: &SessionHandle) {
    let deadline = std::time::Instant::now() + FETCH_RETRY_FOR;
    loop {
        match fetch_once(state, session) {
            Ok(()) => return,
            Err(e) => log::warn!("fetching stored messages for {}: {e}", session.user()),
        }
        if session.is_closed() || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn fetch_once(state: &Arc<ServerState>, session: &SessionHandle) -> Result<(), String> {
    let mut after = None;
    loop {
        let rows = {
            let mut client = state.pool.get().map_err(|e| e.to_string())?;
            fastchat_sql::take_pending(&mut client, session.user(), after, FETCH_PAGE)
                .map_err(|e| e.to_string())?
        };
        let full_page = rows.len() as i64 == FETCH_PAGE;
        for row in rows {
            after = Some((row.sent_at, row.order_key));
            let message = RelayedOut {
                id: &row.msg_id,
                from: &row.sender,
                to: &row.recipient,
                body: &row.body,
                sent_at: row.sent_at,
                group: row.group.as_deref(),
            };
            match session.push_stored(&message, row.seq, FETCH_WAIT) {
                Ok(()) => {}
                Err(PushError::Closed | PushError::SlowConsumer) => return Ok(()),
            }
        }
        if !full_page {
            return Ok(());
        }
    }
}
