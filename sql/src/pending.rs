//! Undelivered messages: stored in batches (one commit for many), taken in order, and
//! deleted once the recipient's client has acknowledged them.

use crate::error::StoreError;
use fastchat_common::Blob;
use std::sync::Arc;

/// A message to store for a recipient who could not be reached (and, in a server, a
/// message in flight). What every member's copy of a group message has in common is
/// shared, not copied.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPending {
    /// The recipient.
    pub recipient: String,
    /// The sender.
    pub sender: Arc<str>,
    /// The sender's message id.
    pub msg_id: Arc<str>,
    /// Opaque body (stored as its base64 text).
    pub body: Blob,
    /// Server timestamp, Unix milliseconds.
    pub sent_at: i64,
    /// The accepting server's monotonic acceptance counter: with `sent_at`, the
    /// delivery order.
    pub order_key: i64,
    /// The group, for a member's copy of a group message.
    pub group: Option<Arc<str>>,
}

/// A stored message, as taken for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingMessage {
    /// Storage order; delete by it after the acknowledgement.
    pub seq: i64,
    /// The recipient.
    pub recipient: String,
    /// The sender.
    pub sender: String,
    /// The sender's message id.
    pub msg_id: String,
    /// Opaque body, as stored: base64 text.
    pub body: Blob,
    /// Server timestamp, Unix milliseconds.
    pub sent_at: i64,
    /// See [`NewPending::order_key`].
    pub order_key: i64,
    /// See [`NewPending::group`].
    pub group: Option<String>,
}

/// Where a fetch has got to: the delivery order key of the last message taken.
pub type PendingCursor = (i64, i64);

/// Stores every message in one transaction (one commit, one fsync) and returns their
/// sequence numbers in the same order. All or nothing.
pub fn store_pending(
    client: &mut postgres::Client,
    messages: &[NewPending],
) -> Result<Vec<i64>, StoreError> {
    let mut tx = client.transaction()?;
    let insert = tx.prepare(
        "INSERT INTO pending (recipient, sender, msg_id, body, sent_at, order_key, group_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
    )?;
    let mut seqs = Vec::with_capacity(messages.len());
    for m in messages {
        let body = m.body.as_base64();
        let row = tx.query_one(
            &insert,
            &[
                &m.recipient,
                &&*m.sender,
                &&*m.msg_id,
                &&*body,
                &m.sent_at,
                &m.order_key,
                &m.group.as_deref(),
            ],
        )?;
        seqs.push(row.get(0));
    }
    tx.commit()?;
    Ok(seqs)
}

/// Up to `limit` stored messages for `recipient` after `after` (`None`: from the
/// start), in delivery order: acceptance time, then the accepting server's counter.
///
/// Always along `pending_recipient_order`, which yields the rows in that order: the
/// query runs with sorting and bitmap scans disabled. Left to its statistics, the
/// planner took a bitmap scan and a sort whenever they were older than a burst of
/// stores (autovacuum analyzes the table a minute later at best, when it is already
/// drained): it then believed a recipient with 100,000 queued messages had about 170,
/// and every page read and sorted all of them (70 ms a page, against under 2 ms).
pub fn take_pending(
    client: &mut postgres::Client,
    recipient: &str,
    after: Option<PendingCursor>,
    limit: i64,
) -> Result<Vec<PendingMessage>, StoreError> {
    let (sent_at, order_key) = after.unwrap_or((i64::MIN, i64::MIN));
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")?;
    let rows = tx.query(
        "SELECT seq, recipient, sender, msg_id, body, sent_at, order_key, group_name FROM pending
         WHERE recipient = $1 AND (sent_at, order_key) > ($2, $3)
         ORDER BY sent_at, order_key LIMIT $4",
        &[&recipient, &sent_at, &order_key, &limit],
    )?;
    tx.commit()?;
    Ok(rows
        .iter()
        .map(|r| PendingMessage {
            seq: r.get(0),
            recipient: r.get(1),
            sender: r.get(2),
            msg_id: r.get(3),
            body: Blob::from_base64(r.get(4)),
            sent_at: r.get(5),
            order_key: r.get(6),
            group: r.get(7),
        })
        .collect())
}

/// Deletes acknowledged messages by sequence number.
pub fn delete_pending(client: &mut postgres::Client, seqs: &[i64]) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    Ok(client.execute("DELETE FROM pending WHERE seq = ANY($1)", &[&seqs])?)
}
