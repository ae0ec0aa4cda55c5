//! The JSON bodies of frames on each kind of link, and the binary form of the frames
//! that carry a message body; see docs/PROTOCOL.md for prose.
//!
//! Every enum is internally tagged by `"type"` with snake_case names. Unknown fields are
//! ignored so that a newer peer can add fields without breaking an older one; unknown
//! types are a `bad_request`.

pub mod balancer;
pub mod binary;
pub mod client;
mod fast;
pub mod peer;
mod write;

pub use write::{DeliverOut, MessageOut, RelayedOut};

/// The protocol version every hello carries. Bumped on an incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message body a server accepts, in raw bytes: 64 KiB of text plus room for the
/// end-to-end envelope (nonce, tag, key reference).
pub const MAX_BODY_BYTES: usize = 64 * 1024 + 4 * 1024;

/// Largest message text a client sends, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Milliseconds since the Unix epoch: the wire's representation of a point in time.
pub type UnixMillis = i64;

/// The current time as [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
