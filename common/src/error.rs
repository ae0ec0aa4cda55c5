//! Stable error codes: the words that cross the wire in `error` replies.
//!
//! A code is a contract with users' scripts: never rename one, only add.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every refusal the system can answer with. Serialized as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bytes that are not a frame, or a frame longer than the maximum.
    BadFrame,
    /// A frame whose body is not valid JSON for any known request.
    BadJson,
    /// A well-formed request of an unknown type or with invalid fields.
    BadRequest,
    /// The peer speaks a protocol version we do not.
    BadVersion,
    /// A forged, expired or other server's ticket.
    BadTicket,
    /// The request needs a logged-in session.
    NotLoggedIn,
    /// `signup`/`login` on a session that is already logged in.
    AlreadyLoggedIn,
    /// The name (user or group) exists already.
    NameTaken,
    /// A user name that is not 1-32 letters, digits, `_`, `-`, `.`.
    BadName,
    /// Unknown user or wrong password: deliberately the same answer for both.
    BadPassword,
    /// The named user does not exist.
    UnknownUser,
    /// A message or file larger than allowed.
    TooLarge,
    /// Too many requests; try again later.
    RateLimited,
    /// The server cannot reach its database (or another needed part) right now; retry.
    Unavailable,
    /// The balancer knows no live server.
    NoServer,
    /// The command needs the group admin.
    NotAdmin,
    /// The command needs a group member.
    NotMember,
    /// The named group does not exist.
    UnknownGroup,
    /// The user is in the group already.
    AlreadyMember,
    /// The group has reached its maximum size.
    GroupFull,
    /// A `resume` with a token that is unknown, used up, expired or another user's: log
    /// in with the password.
    ResumeRefused,
    /// A group message sealed under an epoch that is no longer current (membership
    /// changed): fetch the new key and seal it again.
    StaleEpoch,
    /// A file that arrived damaged: a chunk missing, out of order, tampered with, or a
    /// size or SHA-256 that does not match; it is not saved (reported by the client).
    DamagedFile,
    /// The key asked for (a conversation key, a group epoch) is not stored.
    UnknownKey,
    /// A message that fails to decrypt or verify (reported by the client).
    Undecryptable,
    /// The server's TLS certificate is not signed by the cluster CA the client trusts,
    /// or does not name the address (reported by the client).
    UntrustedServer,
    /// A user's public key differs from the one this client saw for them before
    /// (reported by the client; it refuses to encrypt to or accept from the new key).
    KeyChanged,
    /// The connection to the cluster was lost and the request's outcome is unknown
    /// (reported by the client).
    Disconnected,
    /// No answer came in time (reported by the client).
    Timeout,
    /// A user command the client does not understand (reported by the client).
    UnknownCommand,
    /// A local problem on the client (a file that cannot be read, ...).
    LocalError,
    /// A fault inside the server; details are in its log, not on the wire.
    Internal,
}

impl ErrorCode {
    /// The code's wire name, e.g. `"unknown_user"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::BadTicket => "bad_ticket",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::AlreadyLoggedIn => "already_logged_in",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::BadName => "bad_name",
            ErrorCode::BadPassword => "bad_password",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoServer => "no_server",
            ErrorCode::NotAdmin => "not_admin",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::ResumeRefused => "resume_refused",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::DamagedFile => "damaged_file",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::Undecryptable => "undecryptable",
            ErrorCode::UntrustedServer => "untrusted_server",
            ErrorCode::KeyChanged => "key_changed",
            ErrorCode::Disconnected => "disconnected",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::LocalError => "local_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_as_str() {
        for code in [
            ErrorCode::UnknownUser,
            ErrorCode::BadTicket,
            ErrorCode::GroupFull,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
