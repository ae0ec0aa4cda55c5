//! Client <-> server frames: requests from the client, replies and pushed events back.

use crate::blob::Blob;
use crate::e2e::{ConversationKeyRecord, GroupKeyRecord};
use crate::error::ErrorCode;
use crate::protocol::UnixMillis;
use crate::ticket::Ticket;
use serde::{Deserialize, Serialize};

/// A request from a client. `req` is chosen by the client and echoed in the reply, so
/// that replies can be matched to requests when several are in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen request number, echoed in the `ok` or `error` reply.
    pub req: u64,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// The kinds of request. Each gets exactly one `ok` or `error` reply, except `ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// First frame on a connection: the protocol version and the balancer's ticket.
    Hello {
        /// [`crate::protocol::PROTOCOL_VERSION`] of the client.
        version: u32,
        /// The ticket the balancer signed for this server.
        ticket: Ticket,
        /// Whether the client reads binary frames (`binary.rs`): then the server sends
        /// it `message`s in that form. Absent from older clients: JSON only.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary_bodies: bool,
    },
    /// Create an account and log in.
    Signup {
        /// The new user name.
        user: String,
        /// The password (sent over the link; stored only as a salted scrypt hash).
        password: String,
        /// The user's RSA public key (SubjectPublicKeyInfo PEM), made by the client.
        public_key: String,
        /// The private key sealed under the password (`fcbackup1$...`), opaque to the
        /// server; returned at login so that a new machine can restore it.
        key_backup: String,
    },
    /// Log in to an existing account.
    Login {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// Log back in with the resumption token of an earlier session (after its server
    /// went away), without the password. The token is used up; the `ok` carries a new one.
    Resume {
        /// The user name.
        user: String,
        /// The token from the last `session` result.
        token: String,
    },
    /// End the session (the connection stays open for another login); revokes the
    /// session's resumption token.
    Logout,
    /// Change the password: `old` must be right; `key_backup` is the private key
    /// re-sealed under `new`, replacing the old backup in the same transaction.
    Passwd {
        /// The current password.
        old: String,
        /// The new password.
        new: String,
        /// The private key sealed under the new password.
        key_backup: String,
    },
    /// Create a group with us as admin and `members` in it.
    GroupCreate {
        /// Its name (1-32 of `A-Z a-z 0-9 _ - .`, unique among groups).
        group: String,
        /// The other members.
        #[serde(default)]
        members: Vec<String>,
    },
    /// Add a member (admin only).
    GroupAdd {
        /// The group.
        group: String,
        /// Who.
        user: String,
    },
    /// Remove a member (admin only).
    GroupRemove {
        /// The group.
        group: String,
        /// Who.
        user: String,
    },
    /// Leave a group.
    GroupLeave {
        /// The group.
        group: String,
    },
    /// A group's members and epoch (members only).
    GroupMembers {
        /// The group.
        group: String,
    },
    /// The groups we are in.
    Groups,
    /// A group key record: of `epoch`, or the current one. With `offer` (for the current
    /// epoch), it is stored unless the epoch has a key already; the reply is the record
    /// now stored, so members who make one at the same time agree.
    GroupKey {
        /// The group.
        group: String,
        /// The epoch wanted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// A record for the current epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<GroupKeyRecord>,
    },
    /// A group message, sealed under the key of `epoch` (which must be current).
    /// Answered `ok {kind: sent}` once every other member's copy is delivered or stored.
    GroupSend {
        /// The sender's message id.
        id: String,
        /// The group.
        group: String,
        /// The key epoch it is sealed under.
        epoch: u64,
        /// The opaque body.
        body: Blob,
    },
    /// Ask whether a file of `size` bytes may be sent (`too_large` above the server's
    /// `--max-file-size`). The file itself travels as sealed messages.
    FileOffer {
        /// Its size in bytes.
        size: u64,
    },
    /// Add a user to our friends (we are then told when it comes and goes).
    FriendAdd {
        /// Who.
        user: String,
    },
    /// Remove a user from our friends.
    FriendRemove {
        /// Who.
        user: String,
    },
    /// Our friends, with their presence.
    Friends,
    /// Fetch a user's public key.
    PublicKey {
        /// Whose key.
        user: String,
    },
    /// Fetch the conversation key record shared with `peer`: the one with `key_id`, or
    /// the conversation's current one. With `offer` (made by us, when we write first),
    /// the offer is stored unless the conversation already has a key, and the reply is
    /// whichever record is now current, so two first writers agree on one key.
    ConversationKey {
        /// The other user.
        peer: String,
        /// A specific key (as named by a message envelope).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        /// A new key record to store if there is none yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<ConversationKeyRecord>,
    },
    /// A direct message. Answered `ok` only once it is delivered or durably stored.
    Send {
        /// Client-made message id (unique per sender); receivers drop duplicates by it.
        id: String,
        /// The recipient's user name.
        to: String,
        /// The opaque body (ciphertext from the encryption issue on).
        body: Blob,
    },
    /// The client has durably taken these deliveries (by their `tag`); no reply.
    Ack {
        /// Delivery tags from `message` events.
        tags: Vec<u64>,
    },
    /// Liveness check; answered `ok`.
    Ping,
}

/// A frame from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The request numbered `req` succeeded.
    Ok {
        /// The request's number.
        req: u64,
        /// What the success carries, for requests that return something.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<OkResult>,
    },
    /// The request numbered `req` was refused (`req` is absent for a frame that could
    /// not be parsed far enough to read it).
    Error {
        /// The request's number, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A direct message pushed to its recipient. Acknowledge with `ack { tags: [tag] }`.
    Message {
        /// Delivery tag, unique within this connection.
        tag: u64,
        /// The sender's message id.
        id: String,
        /// The sender.
        from: String,
        /// The recipient (this session's user).
        to: String,
        /// The opaque body.
        body: Blob,
        /// When the first server accepted it.
        sent_at: UnixMillis,
        /// For a member's copy of a group message: the group (`to` is the member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Whether it comes from storage (it waited for us): the client then tells the
        /// sender it was delivered.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stored: bool,
    },
    /// A membership change in one of our groups (not stored: sent to members online).
    Group {
        /// The group.
        group: String,
        /// `created`, `added`, `removed`, `left` or `admin`.
        change: String,
        /// Whom it is about.
        user: String,
        /// The key epoch it began.
        epoch: u64,
    },
    /// A friend came online or went offline.
    Presence {
        /// The friend.
        user: String,
        /// Whether it is online now.
        online: bool,
    },
    /// This session was replaced by a login of the same user elsewhere; the server
    /// closes the connection after this frame.
    SessionReplaced,
    /// The server is going away; reconnect through the balancer.
    Reconnect {
        /// Why.
        reason: String,
    },
}

/// The payload of an `ok` reply, for requests that return something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OkResult {
    /// Answer to `hello`.
    Hello {
        /// The server's name.
        server: String,
        /// The server's protocol version.
        version: u32,
        /// Whether the server reads binary frames: then the client may send its
        /// `send`s and `group_send`s in that form. Absent from older servers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary_bodies: bool,
    },
    /// Answer to `signup` and `login`.
    Session {
        /// The logged-in user.
        user: String,
        /// The user's sealed private key, as stored at signup or the last `passwd`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_backup: Option<String>,
        /// The user's registered public key (login only), so that a client can tell a
        /// stale cached private key from the account's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
        /// A resumption token: `resume` with it logs back in once, without the password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    /// A group and its members (longest-standing first).
    Group {
        /// The group.
        group: String,
        /// Its key epoch.
        epoch: u64,
        /// Members.
        members: Vec<GroupMember>,
    },
    /// Our groups.
    Groups {
        /// By name.
        groups: Vec<GroupSummary>,
    },
    /// A group key record.
    GroupKey {
        /// Its epoch.
        epoch: u64,
        /// The record.
        record: GroupKeyRecord,
    },
    /// Our friends.
    Friends {
        /// By name.
        friends: Vec<FriendStatus>,
    },
    /// A user's public key.
    PublicKey {
        /// Whose key.
        user: String,
        /// SubjectPublicKeyInfo PEM.
        public_key: String,
    },
    /// A conversation key record (wrapped copies for both users, signed by its maker).
    ConversationKey {
        /// The record.
        record: ConversationKeyRecord,
    },
    /// Answer to `send`.
    Sent {
        /// The message id.
        id: String,
        /// Server timestamp given to the message.
        sent_at: UnixMillis,
        /// `true` when the recipient was not reached and the message waits in storage.
        stored: bool,
    },
}

/// A member, in a group listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The user.
    pub user: String,
    /// Whether it is the admin.
    pub admin: bool,
}

/// A friend and its presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendStatus {
    /// The friend.
    pub user: String,
    /// Whether it is online.
    pub online: bool,
}

/// One of our groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: String,
    /// Its key epoch.
    pub epoch: u64,
    /// Whether we are its admin.
    pub admin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let r = Request {
            req: 7,
            body: RequestBody::Send {
                id: "m1".into(),
                to: "bob".into(),
                body: Blob::from_bytes(b"hi"),
            },
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"req":7,"type":"send","id":"m1","to":"bob","body":"aGk="})
        );
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_type_does_not_parse() {
        assert!(serde_json::from_str::<Request>(r#"{"req":1,"type":"fly"}"#).is_err());
    }
}
