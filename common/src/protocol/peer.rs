//! Server <-> server frames on a mesh link.

use crate::blob::Blob;
use crate::protocol::UnixMillis;
use serde::{Deserialize, Serialize};

/// A frame between two servers. Both directions use the same type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerFrame {
    /// First frame from each side.
    Hello {
        /// Protocol version.
        version: u32,
        /// The sender's server name.
        server: String,
        /// The sender's incarnation (changes at every start).
        incarnation: i64,
        /// Whether the sender reads binary frames: then `deliver`s to it may be sent in
        /// that form. Absent from older servers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary_bodies: bool,
    },
    /// All users logged in on the sender, sent once right after the hellos.
    Snapshot {
        /// User names.
        users: Vec<String>,
        /// Each user's session on the sender (its connection id), in the same order;
        /// empty from a sender that does not say.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sessions: Vec<u64>,
    },
    /// A user logged in on (`online`) or left (`!online`) the sending server.
    Presence {
        /// The user.
        user: String,
        /// Whether the user is now on the sender.
        online: bool,
        /// The user's new session on the sender (its connection id), when online.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// Deliver a direct message to `to`, who is on the receiving server.
    Deliver {
        /// The sender's in-flight token, echoed in `delivered`/`not_delivered`.
        token: u64,
        /// Message id.
        id: String,
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
        /// Opaque body.
        body: Blob,
        /// Server timestamp.
        sent_at: UnixMillis,
        /// For a member's copy of a group message: the group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// The recipient's session on the receiver that the sender routed it to (from
        /// `presence` or `snapshot`). A receiver whose session for `to` is another one
        /// answers `not_delivered`, so that the message cannot overtake older ones still
        /// unacknowledged in that session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// Push `frame` (a membership change, a friend's presence) to those of `users`
    /// who are logged in on the receiver.
    Notify {
        /// Who to tell.
        users: Vec<String>,
        /// What to tell them.
        frame: crate::protocol::client::ServerFrame,
    },
    /// The recipient's client acknowledged the message with this token.
    Delivered {
        /// Token from `deliver`.
        token: u64,
    },
    /// The recipients' clients acknowledged the messages with these tokens: several
    /// `delivered` in one frame, as many as came while the link's writer was busy.
    DeliveredMany {
        /// Tokens from `deliver`.
        tokens: Vec<u64>,
    },
    /// The message with this token could not be delivered (recipient gone); the origin
    /// stores it.
    NotDelivered {
        /// Token from `deliver`.
        token: u64,
    },
    /// Messages for `user` were stored after its login began; fetch them.
    PendingHint {
        /// The user.
        user: String,
    },
    /// The membership of `group` changed: forget what is cached of it.
    GroupChanged {
        /// The group.
        group: String,
    },
    /// Answer with `fence_ack` once every frame before this one is processed.
    Fence {
        /// Echoed in the ack.
        token: u64,
    },
    /// Answer to `fence`.
    FenceAck {
        /// The fence's token.
        token: u64,
    },
}
